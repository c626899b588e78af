"""Build the whole-head training label maps (see :mod:`synthseg.data.training_labels`).

    python scripts/build_training_labels.py OUT_DIR [--cache-dir DIR]
"""
import sys

from synthseg.data.training_labels import build_training_labels, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
