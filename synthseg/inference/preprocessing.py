"""From a scan to the network grid: canonical orientation, resampling to the model's voxel size (mm), intensity normalisation, crop or pad to the U-Net's multiple (voxels)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lab2im.errors import InputError
from lab2im.geometry import (
    Reorientation,
    reorient_to_canonical,
    resample_volume,
    resampled_grid,
)
from lab2im.io import (
    Volume,
    strip_volume_suffix,
)
from lab2im.normalisation import normalise_intensities
from lab2im.volumes import CropPad, crop_or_pad, pad_to_multiple
from synthseg.inference.model import SegmentationModel
from synthseg.inference.reading import MIN_VOXELS, check_image, first_volume

VOXEL_SIZE_TOLERANCE = 0.05

MAX_FIELD_OF_VIEW_MM = 512.0


@dataclass
class Prepared:
    """A scan ready for the network, and the record of every geometric change.

    Attributes:
        name: the scan's name (file name without suffix).
        path: where it was read from (``None`` for in-memory volumes).
        image: normalised image on the network grid, ``(X, Y, Z)`` float32 in [0, 1].
        affine: ``(4, 4)`` affine of the network grid (canonical RAS, model voxel size).
        window: the crop/pad from the network grid to the network's input.
        reorientation: how the native array was reoriented.
        resampled: whether the canonical grid was resampled (else the network grid is it).
        native_shape, native_affine, native_header: the input's own grid.
        warnings: messages about the input (e.g. the 4D rule).
        canonical_image: the input's intensities reoriented to RAS, not resampled (the grid
            of :meth:`Segmentation.canonical_segmentation`; for figures at the scan's own resolution).
    """

    name: str
    path: Path | None
    image: np.ndarray
    affine: np.ndarray
    window: CropPad
    reorientation: Reorientation
    resampled: bool
    native_shape: tuple
    native_affine: np.ndarray
    native_header: object
    warnings: list = field(default_factory=list)
    canonical_image: np.ndarray | None = None


def prepare_volume(volume: Volume, model: SegmentationModel, crop=None, name: str | None = None,
                   warnings=()) -> Prepared:
    """Steps 2-5 of the pipeline (reorient, resample, crop/pad, normalise) on a 3D volume."""
    path = volume.path
    data, more = first_volume(np.asarray(volume.data, dtype=np.float32), path)
    check_image(data, path)
    native = Volume(data=data, affine=np.asarray(volume.affine, np.float64), header=volume.header, path=path)
    canonical, reo = reorient_to_canonical(native)
    canonical_image = canonical.data
    ratio = canonical.voxel_size / model.voxel_size
    resampled = bool(np.any(np.abs(ratio - 1) > VOXEL_SIZE_TOLERANCE))
    fov = np.asarray(canonical.shape[:3]) * canonical.voxel_size
    if np.any(fov > MAX_FIELD_OF_VIEW_MM):
        raise InputError(f"field of view {np.round(fov, 1).tolist()} mm is larger than {MAX_FIELD_OF_VIEW_MM:g} "
                         "mm: check the voxel size in the header, or crop the scan", path)
    if resampled:
        shape, _ = resampled_grid(canonical.shape, canonical.affine, model.voxel_size)
        if min(shape) < MIN_VOXELS:
            raise InputError(f"field of view {np.round(fov, 1).tolist()} mm is too small for "
                             f"{model.voxel_size.tolist()} mm voxels: check the voxel size in the header", path)
        canonical = resample_volume(canonical, model.voxel_size, order=1, anti_alias=True)
    image = normalise_intensities(canonical.data, model.normalisation)
    window = _window(image.shape, model.multiples, crop)
    return Prepared(name=name or (strip_volume_suffix(Path(path).name) if path else "scan"),
                    path=Path(path) if path else None, image=image, affine=canonical.affine,
                    window=window, reorientation=reo, resampled=resampled, native_shape=tuple(data.shape),
                    native_affine=native.affine, native_header=volume.header,
                    warnings=list(warnings) + more, canonical_image=canonical_image)


def _window(shape, multiple, crop) -> CropPad:
    """The centred crop/pad from a grid of ``shape`` to the network's input shape (``multiple``:
    one number, or one per axis)."""
    if crop is None:
        return pad_to_multiple(np.zeros(shape, np.uint8), multiple)[1]
    sizes = np.broadcast_to(np.asarray(crop, dtype=np.int64), (3,))
    multiples = np.broadcast_to(np.asarray(multiple, dtype=np.int64), (3,))
    target = tuple(int(-(-s // m) * m) for s, m in zip(sizes, multiples))
    return crop_or_pad(np.zeros(shape, np.uint8), target)[1]


def parse_crop(crop) -> tuple[int, int, int] | None:
    """``crop`` as three positive ints (``None`` stays ``None``)."""
    if crop is None:
        return None
    try:
        values = [int(v) for v in np.atleast_1d(np.asarray(crop)).ravel()]
    except (TypeError, ValueError):
        raise InputError(f"crop must be 1 or 3 positive integers, got {crop!r}") from None
    if len(values) not in (1, 3) or min(values) < 1:
        raise InputError(f"crop must be 1 or 3 positive integers (voxels), got {crop!r}")
    return tuple(values * 3 if len(values) == 1 else values)
