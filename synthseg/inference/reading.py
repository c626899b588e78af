"""Reading a scan for prediction (NIfTI, MGZ, NRRD, DICOM): the first volume of a 4D image, refused when it cannot be segmented."""
from __future__ import annotations

import numpy as np

from lab2im.errors import InputError
from lab2im.io import (
    Volume,
    dimension_problem,
    load_volume,
)
from lab2im.io import check_image as check_scan

MIN_VOXELS = 8


def read_scan(path) -> tuple[Volume, list[str]]:
    """Read a scan as a 3D float32 :class:`~lab2im.io.Volume`, applying the input rules.

    Returns:
        ``(volume, warnings)``: a 4D image gives its first volume, the only one read from the
        file (a warning says so when the 4th axis has more than one).

    Raises:
        InputError: unreadable file, more voxels than :data:`lab2im.io.MAX_VOXELS` in the first
            volume, 2D image (or a single voxel), an axis under :data:`MIN_VOXELS` voxels, NaN
            or infinite voxels, an empty image.
    """
    vol = load_volume(path, dtype=np.float32, first_volume=True)
    get_shape = getattr(vol.header, "get_data_shape", None)
    full = tuple(int(n) for n in get_shape()) if get_shape is not None else vol.data.shape
    data, warnings = first_volume(vol.data, vol.path)
    if len(full) > 3 and int(np.prod(full[3:])) > 1 and not warnings:
        warnings.append(f"image is {len(full)}D (shape {full}); segmenting its first volume only")
    vol.data = data
    check_image(data, vol.path)
    return vol, warnings


def first_volume(data: np.ndarray, path=None) -> tuple[np.ndarray, list[str]]:
    """The 3D image of ``data``: itself, or the first volume of a 4D (or more) image."""
    warnings = []
    if data.ndim > 3:
        extra = int(np.prod(data.shape[3:]))
        if extra > 1:
            warnings.append(f"image is {data.ndim}D (shape {data.shape}); segmenting its first volume only")
        data = data.reshape(data.shape[:3] + (extra,))[..., 0]
    problem = dimension_problem(data.shape)
    if problem:
        raise InputError(problem, path)
    return np.ascontiguousarray(data), warnings


def check_image(data: np.ndarray, path=None) -> None:
    """Raise :class:`InputError` for an image too small (an axis under :data:`MIN_VOXELS`
    voxels), with NaN/Inf voxels, or empty (:func:`lab2im.io.check_image`)."""
    check_scan(data, path, min_voxels=MIN_VOXELS)
