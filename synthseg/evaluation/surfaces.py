"""Sub-voxel surfaces of label masks (constrained surface nets, optionally bent to least curvature) and the distances (mm) between two of them; see :mod:`synthseg.evaluation` for the method and its measured accuracy."""
from __future__ import annotations

import functools
import itertools
import math

import numpy as np
from scipy import ndimage, sparse
from scipy.spatial import KDTree

#: Surfaces between which distances are measured (see the module documentation): ``"smooth"``
#: (least squared curvature, the default) or ``"fast"`` (area-minimising relaxation only).
SURFACES = ("smooth", "fast")

#: Relaxation steps of the surface nets (see the module documentation); 0 keeps the points at
#: the cell centres (the surface elements of DeepMind's ``surface-distance``).
SURFACE_RELAXATION = 10

#: Smooth surfaces: at most this many steps; stop once no point moved more than
#: ``SMOOTH_TOLERANCE`` voxel over the last ``SMOOTH_CHECK`` steps.
SMOOTH_MAX_STEPS = 1000

SMOOTH_TOLERANCE = 0.01

SMOOTH_CHECK = 10


def surface_points(mask: np.ndarray, spacing=(1.0, 1.0, 1.0), surfaces: str = "smooth") -> tuple[np.ndarray, np.ndarray]:
    """Sub-voxel surface of a 2D or 3D mask: the relaxed surface-net points and their areas.

    See the module documentation for the definition.

    Args:
        mask: boolean array, non-empty.
        spacing: voxel size (mm) along each array axis.
        surfaces: ``"smooth"`` or ``"fast"``.

    Returns:
        ``(points, areas)``: ``(n, ndim)`` positions in mm (the centre of voxel ``(0, 0, 0)`` at
        the origin, axes as the array's) and ``(n,)`` areas in mm^2 (lengths in mm in 2D).
    """
    check_surfaces(surfaces)
    mask = np.asarray(mask, bool)
    return _surface_net(mask, spacing_array(spacing, mask.ndim), (0,) * mask.ndim, surfaces)


def directed_distances(mask_a: np.ndarray, mask_b: np.ndarray, spacing,
                       surfaces: str = "smooth") -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from every surface point of ``mask_a`` to the surface of ``mask_b``, and back.

    The surfaces are those of :func:`surface_points`, computed on the arrays as given (callers
    crop them to the masks' bounding box first); both masks must be non-empty.

    Returns:
        ``(d_ab, d_ba)``: 1D float arrays, one distance per surface point of ``mask_a`` and of
        ``mask_b`` respectively (in the order of :func:`surface_points`).
    """
    check_surfaces(surfaces)
    mask_a, mask_b = np.asarray(mask_a, bool), np.asarray(mask_b, bool)
    d_ab, _, d_ba, _ = two_way_distances(mask_a, mask_b, spacing_array(spacing, mask_a.ndim), (0,) * mask_a.ndim, surfaces)
    return d_ab, d_ba


def two_way_distances(mask_a: np.ndarray, mask_b: np.ndarray, spacing: np.ndarray, origin,
               surfaces: str = "smooth") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(d_ab, areas_a, d_ba, areas_b)``: each surface point's distance (mm) to the other
    surface and its area (mm^2); ``origin``: index of the masks' first voxel in the whole grid."""
    points_a, areas_a = _surface_net(mask_a, spacing, origin, surfaces)
    points_b, areas_b = _surface_net(mask_b, spacing, origin, surfaces)
    d_ab = _nearest_distances(points_b, points_a)
    d_ba = _nearest_distances(points_a, points_b)
    return d_ab, areas_a, d_ba, areas_b


def _surface_net(mask: np.ndarray, spacing: np.ndarray, origin,
                 surfaces: str = "smooth") -> tuple[np.ndarray, np.ndarray]:
    """Surface-net points (mm, whole-grid coordinates) and areas (mm^2) of a non-empty mask."""
    if mask.ndim not in (2, 3):
        raise ValueError(f"surface distances need 2D or 3D masks, got {mask.ndim}D")
    code = _cell_codes(mask)
    full = (1 << 2 ** mask.ndim) - 1
    on_surface = (code != 0) & (code != full)
    n = int(np.count_nonzero(on_surface))
    index = np.full(code.shape, -1, np.intp)
    index[on_surface] = np.arange(n)
    # links: two cells sharing a face with inside and outside voxels (both are then on the surface)
    ends_a, ends_b = [], []
    for axis in range(mask.ndim):
        face = sum(1 << bit for bit, offset in enumerate(_cell_offsets(mask.ndim)) if offset[axis] == 1)
        low = tuple(slice(0, -1) if i == axis else slice(None) for i in range(mask.ndim))
        high = tuple(slice(1, None) if i == axis else slice(None) for i in range(mask.ndim))
        shared = code[low] & face
        linked = (shared != 0) & (shared != face)
        ends_a.append(index[low][linked])
        ends_b.append(index[high][linked])
    a, b = np.concatenate(ends_a), np.concatenate(ends_b)
    links = sparse.csr_matrix((np.ones(2 * a.size), (np.concatenate([a, b]), np.concatenate([b, a]))), shape=(n, n))
    # every surface cell has such a face, and the padding makes it an inner one: degree >= 1
    mean_of_neighbours = (sparse.diags(1.0 / links.sum(axis=1).A1) @ links).tocsr()
    # cell (i, j, k) of the padded mask lies between voxels i - 1 and i (unpadded) on each axis;
    # the net is computed relative to the first cell's corner, so that the same mask gives the
    # same bits wherever it lies in a grid (bounding box or whole grid)
    cells = np.stack(np.nonzero(on_surface), axis=1)
    start = cells.min(axis=0)
    low_corner = (cells - start).astype(float)
    high_corner = low_corner + 1.0
    points = low_corner + 0.5
    for _ in range(SURFACE_RELAXATION):
        points = np.clip(mean_of_neighbours @ points, low_corner, high_corner, out=points)
    if surfaces == "smooth":  # (checked by the public functions: "smooth" or "fast")
        points = _bend_to_smoothest(mean_of_neighbours, points, low_corner, high_corner)
    offset = start + (np.asarray(origin, float) - 1.0)
    return (points + offset) * spacing, _cell_areas(tuple(spacing))[code[on_surface]]


def _bend_to_smoothest(mean_of_neighbours: sparse.csr_matrix, points: np.ndarray, low: np.ndarray,
                       high: np.ndarray) -> np.ndarray:
    """Points (voxel units) minimising ``||L x||^2`` with each point in its cell (``low`` to
    ``high``), ``L`` the umbrella Laplacian (mean of the neighbours minus the point): the net
    of least squared curvature. Accelerated projected gradient from ``points`` (FISTA with
    adaptive restart) until no point moves more than :data:`SMOOTH_TOLERANCE` voxel over
    :data:`SMOOTH_CHECK` steps, or :data:`SMOOTH_MAX_STEPS` steps."""
    n = points.shape[0]
    lap = (mean_of_neighbours - sparse.identity(n, format="csr")).tocsr()
    lap_t = lap.T.tocsr()
    absolute = abs(lap)
    # ||L||_2^2 <= ||L||_1 ||L||_inf: a safe step for the gradient L^T L x
    step = 1.0 / float(absolute.sum(axis=0).max() * absolute.sum(axis=1).max())
    x = points
    y, t, reference = x.copy(), 1.0, x.copy()
    for k in range(1, SMOOTH_MAX_STEPS + 1):
        new = y - step * (lap_t @ (lap @ y))
        np.clip(new, low, high, out=new)
        moved = new - x
        t_new = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        # (einsum, not vdot: BLAS threads would fight the label threads of evaluate_arrays)
        if np.einsum("ij,ij->", y - new, moved) > 0:  # momentum against the descent: restart
            t_new, y = 1.0, new.copy()
        else:
            y = moved
            y *= (t - 1.0) / t_new
            y += new
        x, t = new, t_new
        if k % SMOOTH_CHECK == 0:
            if np.abs(x - reference).max() < SMOOTH_TOLERANCE:
                break
            reference = x.copy()
    return x


def _nearest_distances(targets: np.ndarray, queries: np.ndarray) -> np.ndarray:
    # an unbalanced tree without shrunk nodes, 16 points a leaf: the fastest to build and query
    # on brain label surfaces (the answers are exact whatever the tree)
    return KDTree(targets, leafsize=16, balanced_tree=False, compact_nodes=False).query(queries)[0]


@functools.cache
def _cell_offsets(ndim: int) -> tuple[tuple[int, ...], ...]:
    """Bit ``b`` of a cell code is the voxel at offset ``_cell_offsets(ndim)[b]`` in the cell."""
    return tuple(itertools.product((0, 1), repeat=ndim))


def _cell_codes(mask: np.ndarray) -> np.ndarray:
    """Code of every cell of 2^ndim voxels of the mask padded by one outside voxel: shape + 1."""
    padded = np.pad(mask, 1)
    shape = tuple(n + 1 for n in mask.shape)
    code = np.zeros(shape, np.uint8)
    for bit, offset in enumerate(_cell_offsets(mask.ndim)):
        code |= padded[tuple(slice(o, o + n) for o, n in zip(offset, shape))].view(np.uint8) << bit
    return code


@functools.cache
def _cell_face_counts(ndim: int) -> np.ndarray:
    """``(codes, 2, parts, ndim)`` net counts of oriented inside/outside voxel faces in a cell,
    per axis, for each connected part (face-connected) of its inside voxels (``[:, 0]``) and of
    its outside voxels (``[:, 1]``). A face counts +1 along an axis when its part is on the
    low side."""
    offsets = _cell_offsets(ndim)
    counts = np.zeros((2 ** len(offsets), 2, 2 ** (ndim - 1), ndim), np.int64)
    for code in range(counts.shape[0]):
        inside = np.zeros((2,) * ndim, bool)
        for bit, offset in enumerate(offsets):
            inside[offset] = bool(code >> bit & 1)
        for side, voxels in enumerate((inside, ~inside)):
            parts, n_parts = ndimage.label(voxels)
            for part in range(n_parts):
                this = parts == part + 1
                for axis in range(ndim):
                    low, high = np.take(this, 0, axis), np.take(this, 1, axis)
                    counts[code, side, part, axis] = (np.count_nonzero(low & ~np.take(voxels, 1, axis))
                                                      - np.count_nonzero(high & ~np.take(voxels, 0, axis)))
    return counts


@functools.cache
def _cell_areas(spacing: tuple[float, ...]) -> np.ndarray:
    """Surface area (mm^2) of each cell code: per connected part, the norm of its oriented face
    areas (a face's area shared by its 2^(ndim-1) corners); the larger of the inside and the
    outside readings (they differ only for cells where two sheets of surface meet)."""
    s = np.asarray(spacing, float)
    face = np.prod(s) / s / 2 ** (s.size - 1)
    areas = np.linalg.norm(_cell_face_counts(s.size) * face, axis=-1).sum(axis=-1).max(axis=-1)
    areas.setflags(write=False)
    return areas


def check_surfaces(surfaces: str) -> None:
    if surfaces not in SURFACES:
        raise ValueError(f"surfaces must be one of {SURFACES}, got {surfaces!r}")


def spacing_array(spacing, ndim: int) -> np.ndarray:
    s = np.asarray(spacing, dtype=float).ravel()
    if s.size == 1:
        s = np.repeat(s, ndim)
    if s.size != ndim or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"spacing must be {ndim} positive voxel sizes (mm), got {spacing!r}")
    return s
