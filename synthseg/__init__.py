"""synthseg: contrast-agnostic segmentation trained on synthetic scans generated from label maps.

    >>> from synthseg import BrainGenerator
    >>> image, labels = BrainGenerator("training_labels/").generate_image()
"""
from synthseg.generation.brain_generator import BrainGenerator, brain_options

__version__ = "0.1.0"
__all__ = ["BrainGenerator", "brain_options", "__version__"]
