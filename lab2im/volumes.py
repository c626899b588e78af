"""numpy/scipy utilities on volumes and label maps: crop/pad, bounding box, label look-up
tables, connected components, hole filling.

Spatial arrays are ``(X, Y, Z)``, optionally with trailing (channel) axes that are left alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lab2im.errors import InputError


# ----------------------------------------------------------------------------- crop / pad
@dataclass(frozen=True)
class CropPad:
    """A centred crop and/or pad of the leading spatial axes, and how to undo it.

    Attributes:
        offset: per spatial axis, the index in the original array of the new array's first
            voxel (voxels; negative where the axis was padded): ``new[i] == old[i + offset]``.
        original_shape: spatial shape of the original array (voxels).
        shape: spatial shape of the new array (voxels).
    """

    offset: tuple[int, ...]
    original_shape: tuple[int, ...]
    shape: tuple[int, ...]

    def apply(self, array: np.ndarray, value=0) -> np.ndarray:
        """Crop/pad another array on the original grid the same way (padding with ``value``)."""
        _check_spatial_shape(array, self.original_shape)
        return _window(array, self.offset, self.shape, value)

    def undo(self, array: np.ndarray, value=0) -> np.ndarray:
        """Put an array on the new grid back on the original grid (cropped-away parts get ``value``)."""
        _check_spatial_shape(array, self.shape)
        return _window(array, tuple(-o for o in self.offset), self.original_shape, value)

    def apply_to_affine(self, affine: np.ndarray) -> np.ndarray:
        """``(4, 4)`` affine (mm) of the new grid, given the original grid's affine."""
        affine = np.asarray(affine, dtype=np.float64)
        shift = np.zeros(3)
        shift[: len(self.offset)] = self.offset
        new = affine.copy()
        new[:3, 3] = affine[:3, 3] + affine[:3, :3] @ shift
        return new


def crop_or_pad(array: np.ndarray, shape, value=0) -> tuple[np.ndarray, CropPad]:
    """Centre-crop and/or pad the leading ``len(shape)`` axes of ``array`` to ``shape``.

    Where the size difference is odd, the extra voxel is cropped from (or padded at) the end.

    Args:
        array: array whose leading axes are spatial, e.g. ``(X, Y, Z)`` or ``(X, Y, Z, C)``.
        shape: target spatial shape (voxels); ``None`` entries keep that axis' size.
        value: padding value.

    Returns:
        The new array (a copy) and the :class:`CropPad` that maps back.
    """
    if len(shape) > array.ndim:
        raise ValueError(f"target shape {tuple(shape)} has more axes than the array {array.shape}")
    old = tuple(int(s) for s in array.shape[: len(shape)])
    new = tuple(o if s is None else int(s) for o, s in zip(old, shape))
    if any(s < 1 for s in new):
        raise ValueError(f"target shape must be positive, got {tuple(shape)}")
    offset = tuple((o - n) // 2 if o >= n else -((n - o) // 2) for o, n in zip(old, new))
    record = CropPad(offset=offset, original_shape=old, shape=new)
    return _window(array, offset, new, value), record


def pad_to_multiple(array: np.ndarray, multiple, value=0, n_spatial: int | None = None
                    ) -> tuple[np.ndarray, CropPad]:
    """Pad (centred) each spatial axis up to the next multiple of ``multiple`` voxels.

    Args:
        array: array with leading spatial axes.
        multiple: an integer, or one per spatial axis (voxels).
        value: padding value.
        n_spatial: number of leading spatial axes; by default ``min(array.ndim, 3)``.
    """
    n_spatial = min(array.ndim, 3) if n_spatial is None else n_spatial
    multiple = np.broadcast_to(np.asarray(multiple, dtype=np.int64), (n_spatial,))
    if np.any(multiple < 1):
        raise ValueError(f"multiple must be a positive integer, got {multiple}")
    spatial = np.asarray(array.shape[:n_spatial], dtype=np.int64)
    target = -(-spatial // multiple) * multiple
    return crop_or_pad(array, tuple(int(t) for t in target), value)


def _window(array: np.ndarray, start, size, value) -> np.ndarray:
    """``array[start : start + size]`` on the leading axes, with out-of-range voxels set to ``value``."""
    out = np.full(tuple(size) + array.shape[len(size):], value, dtype=array.dtype)
    src, dst = [], []
    for s, n, m in zip(start, size, array.shape):
        lo, hi = max(s, 0), min(s + n, m)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = array[tuple(src)]
    return out


def _check_spatial_shape(array: np.ndarray, expected: tuple[int, ...]) -> None:
    if tuple(array.shape[: len(expected)]) != tuple(expected):
        raise ValueError(f"array has shape {array.shape}; expected spatial shape {expected}")


# ----------------------------------------------------------------------------- bounding box
def bounding_box(labels: np.ndarray, margin=0) -> tuple[slice, ...] | None:
    """Slices (one per axis) of the smallest box holding all nonzero voxels.

    Args:
        labels: array of any dimension.
        margin: voxels added on each side, a number or one per axis; clipped to the array.

    Returns:
        A tuple of slices usable as ``labels[box]``, or ``None`` when all voxels are zero.
    """
    nonzero = np.nonzero(labels)
    if nonzero[0].size == 0:
        return None
    margin = np.broadcast_to(np.asarray(margin, dtype=np.int64), (labels.ndim,))
    return tuple(slice(max(int(idx.min()) - int(m), 0), min(int(idx.max()) + 1 + int(m), size))
                 for idx, m, size in zip(nonzero, margin, labels.shape))


# ----------------------------------------------------------------------------- labels
def unique_labels(array: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a label map, as an int64 array.

    Raises:
        InputError: the array holds non-integer values (e.g. an intensity image).
    """
    values = np.unique(np.asarray(array))
    if not np.issubdtype(values.dtype, np.integer) and not np.issubdtype(values.dtype, np.bool_):
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
            raise InputError("label map has non-integer values")
    return values.astype(np.int64)


def make_lut(source_labels, dest_labels, default: int = 0) -> np.ndarray:
    """Look-up table mapping each of ``source_labels`` to the matching ``dest_labels``.

    Args:
        source_labels: 1D sequence of distinct non-negative labels.
        dest_labels: 1D sequence of the same length (labels they map to).
        default: value for every label not in ``source_labels``.

    Returns:
        int32 array of length ``max(source_labels) + 1`` with ``lut[source[i]] == dest[i]``.

    Raises:
        InputError: negative, non-integer or duplicated source labels, or lengths differ.
    """
    source = _as_labels(source_labels, "source labels")
    dest = _as_labels(dest_labels, "destination labels", allow_negative=True)
    if source.shape != dest.shape:
        raise InputError(f"{source.size} source labels but {dest.size} destination labels")
    if np.unique(source).size != source.size:
        raise InputError("source labels contain duplicates")
    lut = np.full(int(source.max(initial=-1)) + 1, default, dtype=np.int32)
    lut[source] = dest
    return lut


def convert_labels(labels: np.ndarray, source_labels, dest_labels, default: int = 0) -> np.ndarray:
    """Relabel a label map: ``source_labels[i] -> dest_labels[i]``, any other label -> ``default``.

    Returns:
        int32 array of the same shape.

    Raises:
        InputError: the label map has negative or non-integer values, or see :func:`make_lut`.
    """
    labels = np.asarray(labels)
    present = unique_labels(labels)
    if present.size and present[0] < 0:
        raise InputError(f"label map has negative labels (min {present[0]})")
    lut = make_lut(source_labels, dest_labels, default)
    needed = int(present.max(initial=0)) + 1
    if needed > lut.size:
        lut = np.concatenate([lut, np.full(needed - lut.size, default, dtype=lut.dtype)])
    return lut[labels.astype(np.int64, copy=False)]


def _as_labels(values, what: str, allow_negative: bool = False) -> np.ndarray:
    array = np.asarray(values).ravel()
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise InputError(f"{what} must be integers")
    array = array.astype(np.int64)
    if not allow_negative and array.size and array.min() < 0:
        raise InputError(f"{what} must be non-negative (got {array.min()})")
    return array


# ----------------------------------------------------------------------------- morphology
def largest_connected_component(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Boolean mask of the largest connected component of ``mask`` (all False if empty).

    Args:
        mask: boolean (or nonzero-as-True) array, typically ``(X, Y, Z)``.
        connectivity: neighbours considered connected: 1 faces, 2 faces and edges, 3 also
            corners (up to ``mask.ndim``).
    """
    mask = np.asarray(mask, dtype=bool)
    if not 1 <= connectivity <= mask.ndim:
        raise ValueError(f"connectivity must be in 1..{mask.ndim}, got {connectivity}")
    components, count = ndimage.label(mask, ndimage.generate_binary_structure(mask.ndim, connectivity))
    if count <= 1:
        return mask.copy()
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Boolean ``mask`` with its enclosed background cavities filled (3D, face connectivity)."""
    return ndimage.binary_fill_holes(np.asarray(mask, dtype=bool))


def keep_largest_component_per_label(labels: np.ndarray, label_list, connectivity: int = 1) -> np.ndarray:
    """Set to 0 every voxel of the listed labels that is outside its label's largest component.

    Args:
        labels: integer label map, typically ``(X, Y, Z)``.
        label_list: labels to clean (0 and labels absent from the map are ignored).
        connectivity: as in :func:`largest_connected_component`.

    Returns:
        A cleaned copy of ``labels``.
    """
    out = np.array(labels, copy=True)
    wanted = {int(v) for v in np.asarray(label_list).ravel() if int(v) > 0}
    present = unique_labels(out)
    wanted &= {int(v) for v in present if v > 0}
    if not wanted:
        return out
    boxes = ndimage.find_objects(np.where(out > 0, out, 0).astype(np.int64, copy=False), max_label=max(wanted))
    for label in sorted(wanted):
        box = boxes[label - 1]
        region = out[box]
        mask = region == label
        region[mask & ~largest_connected_component(mask, connectivity)] = 0
    return out


def merge_stray_components(labels: np.ndarray, background: int = 0, connectivity: int = 3) -> np.ndarray:
    """Make every label but ``background`` one connected component: each piece outside its
    label's largest component takes the label most common on its border (so it joins that
    label's main piece, or the background).

    Unlike :func:`keep_largest_component_per_label`, nothing becomes a hole: a stray piece of
    cortex inside the white matter becomes white matter. Used on label maps interpolated from
    a cleaner coarse grid, whose boundaries leave small islands.

    Args:
        labels: integer label map ``(X, Y, Z)`` (any non-negative values).
        background: the label left in as many pieces as it comes.
        connectivity: as in :func:`largest_connected_component` (for pieces and borders).

    Returns:
        A cleaned copy of ``labels``: every other label present is one component
        (``connectivity``), and the set of labels can only shrink.
    """
    out = np.array(labels, copy=True)
    structure = ndimage.generate_binary_structure(out.ndim, connectivity)
    shifted = (out.astype(np.int64) + 1)
    boxes = ndimage.find_objects(shifted)
    stray = np.zeros(out.shape, bool)
    for index, box in enumerate(boxes):
        label = index  # find_objects of labels + 1: entry i is label i
        if box is None or label == background:
            continue
        mask = out[box] == label
        stray[box] |= mask & ~largest_connected_component(mask, connectivity)
    if not stray.any():
        return out
    pieces, count = ndimage.label(stray, structure)
    for piece, box in enumerate(ndimage.find_objects(pieces), start=1):
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        mask = pieces[box] == piece
        border = ndimage.binary_dilation(mask, structure) & ~stray[box]
        values = out[box][border]
        if values.size == 0:  # the piece fills its whole box (no known neighbour)
            out[box][mask] = background
            continue
        choices, counts = np.unique(values, return_counts=True)
        out[box][mask] = choices[int(np.argmax(counts))]
    return out
