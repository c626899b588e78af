"""lab2im: a generic, anatomy-free toolkit to turn label maps into random synthetic images.

Submodules:
    io        -- read/write NIfTI and MGZ, reorient to canonical (RAS), resample.
    volumes   -- numpy/scipy utilities on label maps and volumes (crop/pad, bbox, LCC, ...).
    normalisation -- intensity standardisation shared by training and prediction (percentile, z-score).
    layers    -- Keras 3 random layers (one per file), backend-agnostic.
    model     -- ``labels_to_image_model`` composing the layers, driven by ``GeneratorOptions``.
"""
from lab2im.errors import InputError, OutputError

__all__ = ["InputError", "OutputError"]
