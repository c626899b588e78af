"""The U-Net on a whole network grid, in overlapping tiles (voxels) blended linearly at their edges, with optional left/right flip averaging; slice by slice for 2D models."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from lab2im.volumes import CropPad

if TYPE_CHECKING:  # annotations only: the model module runs its tiles through this one
    from synthseg.inference.model import SegmentationModel


DEFAULT_TILE = 112

DEFAULT_TILE_OVERLAP = 16


def _tile_starts(size: int, tile: int, overlap: int, multiple: int) -> tuple[int, list[int]]:
    """Tile length and start positions covering ``[0, size)`` with tiles of at most ``tile``."""
    if tile <= 0 or size <= tile:
        return size, [0]
    overlap = min(max(int(overlap), 0), tile - multiple)
    n = math.ceil((size - overlap) / (tile - overlap))
    length = min(tile, -(-math.ceil((size + (n - 1) * overlap) / n) // multiple) * multiple)
    starts = np.round(np.linspace(0, size - length, n)).astype(int).tolist()
    return length, starts


def _ramp(length: int, overlap: int, whole: bool) -> np.ndarray:
    """1D blending weights of a tile: 1 inside, falling linearly (to ~0) over ``overlap`` voxels."""
    if whole or overlap <= 0:
        return np.ones(length, np.float32)
    i = np.arange(length)
    return np.minimum(1.0, (np.minimum(i, length - 1 - i) + 1) / (overlap + 1)).astype(np.float32)


def tiled_posteriors(model: SegmentationModel, image: np.ndarray, window: CropPad | None, flip: bool,
                      tile_size, tile_overlap: int) -> np.ndarray:
    """Posteriors of ``image`` (the network input), on the grid ``window`` maps from (or on the
    input's grid); voxels no tile covers (cropped away) are background."""
    m = model.multiple
    tiles = np.broadcast_to(np.asarray(0 if tile_size is None else tile_size, dtype=np.int64), (3,))
    tiles = [int(t) // m * m if t > 0 else 0 for t in tiles]
    tiles = [max(t, m) if t > 0 else 0 for t in tiles]
    out_shape = tuple(image.shape if window is None else window.original_shape)
    offset = (0, 0, 0) if window is None else window.offset
    K = model.n_labels
    acc = np.zeros(out_shape + (K,), np.float32)  # the only full-size array
    plan = [_tile_starts(s, t, tile_overlap, m) for s, t in zip(image.shape, tiles)]
    # per axis, blending weights of each tile normalised to sum to 1 over the tiles (a partition
    # of unity): their outer products then sum to 1 at every voxel, no division needed
    weights, covered = [], []
    for (length, starts), size, o, n in zip(plan, image.shape, offset, out_shape):
        ramp = _ramp(length, tile_overlap, len(starts) == 1)
        total = np.zeros(size, np.float32)
        for s0 in starts:
            total[s0:s0 + length] += ramp
        weights.append([ramp / total[s0:s0 + length] for s0 in starts])
        inside = np.zeros(n, bool)  # output voxels under a tile (false: cropped away)
        inside[max(0, o):min(n, size + o)] = True
        covered.append(inside)
    perm = model.flip_permutation()
    for ix, sx in enumerate(plan[0][1]):
        for iy, sy in enumerate(plan[1][1]):
            for iz, sz in enumerate(plan[2][1]):
                start = (sx, sy, sz)
                src = tuple(slice(s, s + length) for s, (length, _) in zip(start, plan))
                # the tile's part that lands inside the output grid
                lo = [max(0, -(s + o)) for s, o in zip(start, offset)]
                hi = [min(length, n - (s + o)) for (length, _), s, o, n in zip(plan, start, offset, out_shape)]
                if any(b <= a for a, b in zip(lo, hi)):
                    continue
                part = tuple(slice(a, b) for a, b in zip(lo, hi))
                dst = tuple(slice(s + o + a, s + o + b) for s, o, a, b in zip(start, offset, lo, hi))
                wx, wy, wz = (weights[a][i][lo[a]:hi[a]] for a, i in enumerate((ix, iy, iz)))
                w = wx[:, None, None] * wy[None, :, None] * wz[None, None, :]
                if flip:
                    w *= 0.5
                x = image[src][None, ..., None]
                # accumulate each prediction before the next network call: the network's
                # activations are the memory peak, nothing else of size tile x K is alive then
                p = model._predict(x)[0][part]
                p *= w[..., None]
                acc[dst] += p
                del p
                if flip:
                    x = np.ascontiguousarray(x[:, ::-1])
                    # back to the input's orientation, left and right channels swapped: one
                    # gather (a channel at a time would stride through the tile K times)
                    p = np.take(model._predict(x)[0][::-1][part], perm, axis=-1)
                    p *= w[..., None]
                    acc[dst] += p
                    del p
    for axis, inside in enumerate(covered):  # cropped away: background
        if not inside.all():
            index = [slice(None)] * 3
            index[axis] = ~inside
            acc[tuple(index)] = 0
            acc[tuple(index) + (model.background_channel,)] = 1
    return acc
