"""Volume geometry: reorientation to canonical RAS, resampling, and mapping between grids.

Conventions: affines are ``(4, 4)`` voxel-to-world matrices in mm; voxel ``i`` covers
``[i - 0.5, i + 0.5]`` along each axis (its centre sits at integer coordinates); spatial
arrays are ``(X, Y, Z)`` or ``(X, Y, Z, C)`` with the channel axis last.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel import orientations as ornt_lib
from scipy import ndimage

from lab2im.io import Volume, voxel_size_of

_RAS = ornt_lib.axcodes2ornt("RAS")
_TOL = 1e-6


# ----------------------------------------------------------------------------- reorientation
@dataclass(frozen=True, eq=False)
class Reorientation:
    """What :func:`reorient_to_canonical` did, so that it can be undone.

    Attributes:
        transform: ``(3, 2)`` nibabel orientation transform applied to the original array
            (row ``i``: destination axis and flip (+1/-1) of original axis ``i``).
        original_shape: spatial shape ``(X, Y, Z)`` of the original array (voxels).
        original_affine: ``(4, 4)`` affine of the original grid (mm).
    """

    transform: np.ndarray
    original_shape: tuple[int, int, int]
    original_affine: np.ndarray

    @property
    def is_identity(self) -> bool:
        """True when the original volume was already canonical (nothing was moved)."""
        return bool(np.array_equal(self.transform, _RAS))

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        """Spatial shape (voxels) of the canonical array."""
        shape = [0, 0, 0]
        for size, (axis, _) in zip(self.original_shape, self.transform):
            shape[int(axis)] = size
        return tuple(shape)

    @property
    def canonical_affine(self) -> np.ndarray:
        """``(4, 4)`` affine (mm) of the canonical array."""
        return np.asarray(self.original_affine, np.float64) @ ornt_lib.inv_ornt_aff(self.transform,
                                                                                    self.original_shape)

    def undo(self, data: np.ndarray) -> np.ndarray:
        """Map an array on the canonical grid back to the original array axes (exact, no resampling).

        Args:
            data: array of shape ``canonical_shape`` or ``canonical_shape + (C,)``.

        Returns:
            A C-contiguous array of shape ``original_shape`` (plus the trailing channel axis).
        """
        if tuple(data.shape[:3]) != self.canonical_shape:
            raise ValueError(f"array has spatial shape {tuple(data.shape[:3])}; "
                             f"expected the canonical shape {self.canonical_shape}")
        inverse = ornt_lib.ornt_transform(_RAS, ornt_lib.io_orientation(self.original_affine))
        return np.array(ornt_lib.apply_orientation(data, inverse), order="C", copy=True)


def reorient_to_canonical(volume: Volume) -> tuple[Volume, Reorientation]:
    """Permute and flip the array axes so they point (as closely as possible) to R, A, S.

    No resampling: voxel values are only moved, and the world position (mm) of every voxel
    is unchanged. Oblique volumes go to the closest canonical orientation.

    Args:
        volume: 3D ``(X, Y, Z)`` or 4D ``(X, Y, Z, C)`` volume.

    Returns:
        The reoriented volume (a copy; header and path are kept) and the :class:`Reorientation`
        to map results on its grid back to the original array axes.
    """
    affine = np.asarray(volume.affine, dtype=np.float64)
    shape = tuple(int(s) for s in volume.shape[:3])
    transform = ornt_lib.ornt_transform(ornt_lib.io_orientation(affine), _RAS)
    data = np.array(ornt_lib.apply_orientation(volume.data, transform), order="C", copy=True)
    new_affine = affine @ ornt_lib.inv_ornt_aff(transform, shape)
    record = Reorientation(transform=transform, original_shape=shape, original_affine=affine.copy())
    return Volume(data=data, affine=new_affine, header=volume.header, path=volume.path), record


# ----------------------------------------------------------------------------- resampling
def resampled_grid(shape, affine: np.ndarray, voxel_size_mm) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of a grid with the given voxel size covering the same field of view.

    The new shape is ``round(shape * old_voxel_size / voxel_size_mm)`` (at least 1), and the
    new grid is centred on the old one: the centre of the field of view (midpoint of the
    corner voxels' centres) keeps its world position, and the axes keep their directions.
    Every new voxel centre lies within the old grid's voxel extent.

    Args:
        shape: spatial shape ``(X, Y, Z)`` of the old grid (voxels).
        affine: ``(4, 4)`` affine of the old grid (mm).
        voxel_size_mm: target voxel size, a number or one per axis (mm).

    Returns:
        ``(new_shape, new_affine)``.
    """
    affine = np.asarray(affine, dtype=np.float64)
    old_size = voxel_size_of(affine)
    new_size = np.broadcast_to(np.asarray(voxel_size_mm, dtype=np.float64), (3,))
    if np.any(new_size <= 0) or not np.all(np.isfinite(new_size)):
        raise ValueError(f"voxel size must be positive, got {voxel_size_mm}")
    old_shape = np.asarray(shape[:3], dtype=np.float64)
    new_shape = np.maximum(np.round(old_shape * old_size / new_size), 1)
    zoom = new_size / old_size  # old voxels per new voxel
    offset = (old_shape - 1) / 2 - zoom * (new_shape - 1) / 2
    new_to_old = np.eye(4)
    new_to_old[:3, :3] = np.diag(zoom)
    new_to_old[:3, 3] = offset
    return tuple(int(s) for s in new_shape), affine @ new_to_old


def resample_volume(volume: Volume, voxel_size_mm, order: int, anti_alias: bool = True) -> Volume:
    """Resample a volume to a new voxel size, keeping its field of view and orientation.

    Args:
        volume: 3D ``(X, Y, Z)`` or 4D ``(X, Y, Z, C)`` volume.
        voxel_size_mm: target voxel size, a number (isotropic) or one per axis (mm).
        order: 0 (nearest neighbour, for label maps: keeps the dtype and creates no new
            values) or 1 (linear, for images; spline orders up to 5 also work).
        anti_alias: for ``order >= 1``, blur along each axis that is downsampled by a zoom
            factor ``f > 1`` (old voxels per new voxel) with a Gaussian of sigma
            ``(f - 1) / 2`` old voxels before interpolating.

    Returns:
        The resampled volume (header and path kept), on the grid of :func:`resampled_grid`.
    """
    new_shape, new_affine = resampled_grid(volume.shape, volume.affine, voxel_size_mm)
    data = volume.data
    if order > 0 and anti_alias:
        zoom = voxel_size_of(new_affine) / voxel_size_of(volume.affine)
        data = _smooth(data, np.maximum(zoom - 1, 0) / 2)
    out = resample_to_grid(data, volume.affine, new_shape, new_affine, order)
    return Volume(data=out, affine=new_affine, header=volume.header, path=volume.path)


def resample_to_grid(data: np.ndarray, source_affine: np.ndarray, target_shape, target_affine: np.ndarray,
                     order: int, fill=0) -> np.ndarray:
    """Resample an array from its grid onto another grid, matching world coordinates (mm).

    Target voxels whose centre falls within the source grid's voxel extent (up to half a
    voxel beyond the corner voxels' centres) get interpolated values, extending the edge
    values there; the others get ``fill``.

    Args:
        data: array on the source grid, ``(X, Y, Z)`` or ``(X, Y, Z, C)``.
        source_affine: ``(4, 4)`` affine of ``data``'s grid (mm).
        target_shape: spatial shape of the target grid (voxels); a trailing channel axis of
            ``data`` is carried over.
        target_affine: ``(4, 4)`` affine of the target grid (mm).
        order: interpolation order: 0 nearest neighbour (keeps the dtype), 1 linear (float
            output: the input's float dtype, float32 for other inputs).
        fill: value for target voxels outside the source grid.

    Returns:
        Array of shape ``target_shape[:3] + data.shape[3:]``.
    """
    data = np.asarray(data)
    target_shape = tuple(int(s) for s in target_shape[:3])
    source_affine = np.asarray(source_affine, dtype=np.float64)
    target_affine = np.asarray(target_affine, dtype=np.float64)
    if data.ndim not in (3, 4):
        raise ValueError(f"expected a 3D or 4D array, got shape {data.shape}")
    if target_shape == data.shape[:3] and np.allclose(source_affine, target_affine, rtol=0, atol=_TOL):
        return data.copy() if order == 0 else data.astype(_float_dtype(data.dtype))
    target_to_source = np.linalg.solve(source_affine, target_affine)
    out_dtype = data.dtype if order == 0 else _float_dtype(data.dtype)
    work = data.view(np.uint8) if data.dtype == bool else data
    channels = [work] if data.ndim == 3 else [work[..., c] for c in range(data.shape[3])]
    out = np.stack([_affine_transform(ch, target_to_source, target_shape, order, out_dtype)
                    for ch in channels], axis=-1)
    out = out[..., 0] if data.ndim == 3 else out
    out = out.view(bool) if data.dtype == bool and order == 0 else out
    out[~_inside_mask(target_to_source, target_shape, data.shape[:3])] = fill
    return out


def _affine_transform(channel, target_to_source, target_shape, order, out_dtype) -> np.ndarray:
    """Sample one 3D channel at the source coordinates of every target voxel (edge extended)."""
    matrix = target_to_source[:3, :3]
    if np.allclose(matrix, np.diag(np.diag(matrix)), rtol=0, atol=1e-12):
        matrix = np.diag(matrix)  # scipy's faster zoom-and-shift path
    work_dtype = out_dtype if order == 0 else np.result_type(out_dtype, np.float32)
    return ndimage.affine_transform(channel.astype(work_dtype, copy=False), matrix,
                                    offset=target_to_source[:3, 3], output_shape=target_shape,
                                    order=order, mode="nearest").astype(out_dtype, copy=False)


def _inside_mask(target_to_source, target_shape, source_shape) -> np.ndarray:
    """Boolean ``target_shape`` mask of target voxels whose centre is inside the source grid's extent."""
    low = -0.5 - _TOL
    high = np.asarray(source_shape, dtype=np.float64) - 0.5 + _TOL
    j, k = np.meshgrid(np.arange(target_shape[1]), np.arange(target_shape[2]), indexing="ij")
    mask = np.empty(target_shape, dtype=bool)
    for i in range(target_shape[0]):  # one slice at a time keeps memory at O(Y * Z)
        coords = (target_to_source[:3, :3] @ np.stack([np.full_like(j, i), j, k]).reshape(3, -1)
                  + target_to_source[:3, 3:4])
        mask[i] = np.all((coords >= low) & (coords <= high[:, None]), axis=0).reshape(j.shape)
    return mask


def _smooth(data: np.ndarray, sigma_voxels: np.ndarray) -> np.ndarray:
    """Gaussian blur of the spatial axes (sigma in voxels per axis); the input is returned if all are 0."""
    if not np.any(sigma_voxels > 0):
        return data
    sigma = tuple(sigma_voxels) + (0,) * (data.ndim - 3)
    return ndimage.gaussian_filter(data.astype(_float_dtype(data.dtype), copy=False), sigma, mode="nearest")


def _float_dtype(dtype) -> np.dtype:
    return np.dtype(dtype) if np.issubdtype(dtype, np.floating) else np.dtype(np.float32)


def argmax_on_grid(scores: np.ndarray, source_affine: np.ndarray, target_shape, target_affine: np.ndarray,
                   fill: int = 0, slab: int = 16) -> np.ndarray:
    """Index of the largest channel of ``scores`` interpolated linearly at every target voxel.

    Equal to ``np.argmax(resample_to_grid(scores, ..., order=1), axis=-1)`` (with ``fill`` outside
    the source grid's extent), without holding the resampled ``(X, Y, Z, C)`` array: the target
    is done in slabs (:func:`interpolated_slabs`, whose two taps per axis, when the grids' axes
    are parallel, are much faster than a general affine resampling of every channel).

    Args:
        scores, source_affine, target_shape, target_affine, slab: as in :func:`interpolated_slabs`.
        fill: channel index given to target voxels outside the source grid.

    Returns:
        ``target_shape`` int32 array of channel indices.
    """
    out = np.empty(tuple(int(s) for s in target_shape[:3]), np.int32)
    for sl, part, inside in interpolated_slabs(scores, source_affine, target_shape, target_affine, slab):
        channels = np.argmax(part, axis=-1).astype(np.int32)
        channels[~inside] = fill
        out[sl] = channels
    return out


def interpolated_slabs(scores: np.ndarray, source_affine: np.ndarray, target_shape, target_affine: np.ndarray,
                       slab: int = 16):
    """``scores`` interpolated linearly on the target grid, one slab of ``slab`` voxels along its
    first axis at a time (memory: about ``slab * Y * Z * C * 8`` bytes), for passes that need
    every channel of every target voxel once (:func:`argmax_on_grid`).

    The grids' axes parallel (``inv(source_affine) @ target_affine`` diagonal): two taps per
    axis, separably; otherwise :func:`resample_to_grid` on each slab.

    Args:
        scores: ``(X, Y, Z, C)`` array on the source grid.
        source_affine, target_affine: ``(4, 4)`` voxel-to-world affines (mm).
        target_shape: spatial shape of the target grid (voxels).

    Yields:
        ``(slice, values, inside)``: the slab's slice of the target's first axis, its ``(n, Y,
        Z, C)`` float values, and bool ``(n, Y, Z)``: the voxels inside the source grid's
        extent (the values elsewhere are meaningless).
    """
    scores = np.asarray(scores)
    if scores.ndim != 4:
        raise ValueError(f"expected an (X, Y, Z, C) array, got shape {scores.shape}")
    target_shape = tuple(int(s) for s in target_shape[:3])
    t2s = np.linalg.solve(np.asarray(source_affine, np.float64), np.asarray(target_affine, np.float64))
    if np.allclose(t2s[:3, :3], np.diag(np.diag(t2s[:3, :3])), rtol=0, atol=1e-9):
        yield from _separable_slabs(scores, t2s, target_shape, slab)
        return
    for start in range(0, target_shape[0], slab):  # general case: resample every channel, one slab at a time
        stop = min(start + slab, target_shape[0])
        shift = np.eye(4)
        shift[0, 3] = start
        part = resample_to_grid(scores, source_affine, (stop - start,) + target_shape[1:],
                                np.asarray(target_affine, np.float64) @ shift, order=1, fill=0)
        yield slice(start, stop), part, _inside_mask(t2s @ shift, part.shape[:3], scores.shape[:3])


def _separable_slabs(scores, t2s, target_shape, slab: int):
    """``(slice, values, inside)`` per slab of the target's first axis: ``scores`` interpolated
    linearly (two taps per axis; ``t2s`` maps target to source voxels and must be diagonal)."""
    taps = [_linear_taps(scores.shape[d], t2s[d, d] * np.arange(target_shape[d]) + t2s[d, 3]) for d in range(3)]
    work = scores.astype(np.result_type(scores.dtype, np.float32), copy=False)
    (y0, y1, wy, iny), (z0, z1, wz, inz) = taps[1], taps[2]
    wy, wz = wy[None, :, None, None], wz[None, None, :, None]
    inside_yz = iny[:, None] & inz[None, :]
    x0, x1, wx, inx = taps[0]
    for start in range(0, target_shape[0], slab):
        sl = slice(start, min(start + slab, target_shape[0]))
        w = wx[sl, None, None, None]
        part = work[x0[sl]] * (1 - w) + work[x1[sl]] * w
        part = part[:, y0] * (1 - wy) + part[:, y1] * wy
        part = part[:, :, z0] * (1 - wz) + part[:, :, z1] * wz
        yield sl, part, inx[sl, None, None] & inside_yz[None]


def _linear_taps(n: int, coords: np.ndarray):
    """Two-tap linear interpolation along one axis of ``n`` source voxels at source coordinates
    ``coords`` (edge values extended up to half a voxel out): ``(i0, i1, weight of i1, inside)``."""
    inside = (coords >= -0.5 - _TOL) & (coords <= n - 0.5 + _TOL)
    c = np.clip(coords, 0, n - 1)
    i0 = np.minimum(np.floor(c).astype(np.intp), max(n - 2, 0))
    i1 = np.minimum(i0 + 1, n - 1)
    weight = np.where(i1 > i0, c - i0, 0.0).astype(np.float32)
    return i0, i1, weight, inside


def mesh_interior(vertices_mm, faces, shape, affine: np.ndarray) -> np.ndarray:
    """Voxels of a grid whose centres lie inside a closed triangle mesh (a brain surface).

    Each row of voxel centres along the first axis is a ray; the mesh's triangles crossing it
    toggle inside/outside for every centre beyond the crossing (the parity rule), so a surface
    of ``F`` triangles costs ``O(F)`` plus one cumulative sum over the grid. The rays are
    shifted by 1e-4 voxel so that none passes exactly through an edge or a vertex.

    Args:
        vertices_mm: ``(V, 3)`` vertex positions in world coordinates (mm).
        faces: ``(F, 3)`` vertex indices of each triangle; the mesh must be closed.
        shape: the grid (voxels).
        affine: ``(4, 4)`` voxel-to-world affine of the grid (mm).

    Returns:
        bool array of ``shape``.
    """
    shape = tuple(int(s) for s in shape)
    to_voxel = np.linalg.inv(np.asarray(affine, np.float64))
    v = np.asarray(vertices_mm, np.float64) @ to_voxel[:3, :3].T + to_voxel[:3, 3]
    tri = v[np.asarray(faces, np.int64)] - np.array([0.0, 1.234567e-4, 2.345678e-4])  # (F, 3 corners, 3)
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    det = (b[:, 1] - a[:, 1]) * (c[:, 2] - a[:, 2]) - (c[:, 1] - a[:, 1]) * (b[:, 2] - a[:, 2])
    lo = np.ceil(tri[..., 1:].min(axis=1)).astype(np.int64)  # first ray (y, z) in each triangle's box
    hi = np.floor(tri[..., 1:].max(axis=1)).astype(np.int64)
    toggles = np.zeros((shape[0] + 1,) + shape[1:], np.uint8)  # crossings mod 256 keep the parity
    span = np.maximum(hi - lo + 1, 0).max(axis=0) if len(tri) else np.zeros(2, np.int64)
    for dy in range(int(span[0])):
        for dz in range(int(span[1])):
            qy, qz = lo[:, 0] + dy, lo[:, 1] + dz
            i = np.flatnonzero((det != 0) & (qy <= hi[:, 0]) & (qz <= hi[:, 1])
                               & (qy >= 0) & (qy < shape[1]) & (qz >= 0) & (qz < shape[2]))
            qy, qz, A, B, C, D = qy[i], qz[i], a[i], b[i], c[i], det[i]
            # barycentric coordinates of the ray in the triangle's (y, z) projection
            u = ((qy - A[:, 1]) * (C[:, 2] - A[:, 2]) - (C[:, 1] - A[:, 1]) * (qz - A[:, 2])) / D
            w = ((B[:, 1] - A[:, 1]) * (qz - A[:, 2]) - (qy - A[:, 1]) * (B[:, 2] - A[:, 2])) / D
            hit = (u >= 0) & (w >= 0) & (u + w <= 1)
            u, w, qy, qz, A, B, C = u[hit], w[hit], qy[hit], qz[hit], A[hit], B[hit], C[hit]
            x = A[:, 0] + u * (B[:, 0] - A[:, 0]) + w * (C[:, 0] - A[:, 0])
            first = np.clip(np.floor(x).astype(np.int64) + 1, 0, shape[0])  # first centre beyond it
            np.add.at(toggles, (first, qy, qz), 1)
    return (np.cumsum(toggles[:-1], axis=0, dtype=np.uint8) & 1).astype(bool)
