"""Backend-agnostic tensor helpers for the random layers (``keras.ops`` only).

Conventions used throughout lab2im:

* Volumes are channels-last with a batch axis: ``(B, *spatial, C)``, ``spatial`` of length
  ``ndim`` (2 or 3).
* Coordinates are in *voxels* of the volume being sampled, shape ``(B, *out_spatial, ndim)``.
* Per-axis linear operators (interpolation, Gaussian blur, resolution loss) are applied as
  dense ``(n_out, n_in)`` matrices, shared ``(n_out, n_in)`` or per-sample ``(B, n_out, n_in)``.
  This keeps every shape static, lets parameters differ per sample, and maps onto matrix
  multiplication, which every backend runs fast on CPU and GPU.
"""
from __future__ import annotations

import itertools
import string

import numpy as np
from keras import ops

from lab2im.volumes import make_lut  # noqa: F401  (re-exported for the layers)


# --------------------------------------------------------------------------- separable operators
def apply_along_axes(x, matrices):
    """Apply one linear operator per spatial axis of ``x``.

    Args:
        x: ``(B, *spatial, C)`` tensor.
        matrices: one entry per spatial axis, each ``None`` (identity), a shared matrix
            ``(n_out, n_in)`` or a per-sample matrix ``(B, n_out, n_in)``; ``n_in`` is the
            size of that axis.

    Returns:
        ``(B, *spatial_out, C)`` tensor.
    """
    ndim = len(matrices)
    letters = string.ascii_lowercase[: ndim]  # spatial axes
    for axis, m in enumerate(matrices):
        if m is None:
            continue
        src = "Z" + letters + "Y"
        dst = "Z" + letters[:axis] + "W" + letters[axis + 1:] + "Y"
        if len(m.shape) == 2:
            spec = f"W{letters[axis]},{src}->{dst}"
        else:
            spec = f"ZW{letters[axis]},{src}->{dst}"
        x = ops.einsum(spec, m, x)
    return x


def linear_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` matrix of linear interpolation with aligned end points.

    Sample ``i`` of the output lies at input position ``i * (n_in - 1) / (n_out - 1)``; used to
    upsample coarse random fields (velocity, bias) over a volume.
    """
    if n_in == 1 or n_out == 1:
        return np.full((n_out, n_in), 1.0 / n_in, dtype=np.float32)
    pos = np.arange(n_out) * (n_in - 1) / (n_out - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    w = pos - lo
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[np.arange(n_out), lo] = 1 - w
    m[np.arange(n_out), lo + 1] += w
    return m


def resize_linear(x, out_spatial):
    """Linearly resize ``(B, *spatial, C)`` to ``(B, *out_spatial, C)`` (aligned corners)."""
    in_spatial = tuple(x.shape[1:-1])
    mats = [None if a == b else ops.convert_to_tensor(linear_resize_matrix(a, b))
            for a, b in zip(in_spatial, out_spatial)]
    return apply_along_axes(x, mats)


def gaussian_matrices(n: int, sigma):
    """Per-sample row-normalised Gaussian blur matrices.

    Args:
        n: axis length (voxels).
        sigma: ``(B,)`` standard deviations in voxels; 0 gives the identity.

    Returns:
        ``(B, n, n)`` float32 tensor; rows sum to one (edges renormalised, no dark border).
    """
    sigma = ops.maximum(ops.cast(sigma, "float32"), 1e-3)
    pos = ops.arange(n, dtype="float32")
    d2 = ops.square(pos[:, None] - pos[None, :])  # (n, n)
    w = ops.exp(-d2[None] / (2.0 * ops.square(sigma)[:, None, None]))
    return w / ops.sum(w, axis=-1, keepdims=True)


def downsample_upsample_matrices(n: int, factor, phase):
    """Per-sample matrices that sample an axis every ``factor`` voxels and interpolate back.

    Low-resolution samples sit at positions ``phase + j * factor`` (rounded to the nearest
    voxel, as a scanner's slices would); each output voxel is the linear interpolation of its
    two neighbouring samples. Together with a Gaussian blur this simulates acquisition at a
    coarser resolution while keeping the output grid (and every tensor shape) fixed.

    Args:
        n: axis length (voxels).
        factor: ``(B,)`` spacing of the low-resolution samples, in voxels (>= 1).
        phase: ``(B,)`` offset of the first sample, in voxels, in ``[0, factor)``.

    Returns:
        ``(B, n, n)`` float32 tensor; rows sum to one.
    """
    factor = ops.maximum(ops.cast(factor, "float32"), 1.0)[:, None]
    phase = ops.cast(phase, "float32")[:, None]
    x = ops.arange(n, dtype="float32")[None, :]
    j0 = ops.floor((x - phase) / factor)
    # the voxels actually sampled on either side of x; weights are relative to them, so the
    # sampled voxels keep their value exactly (and factor 1 gives the identity)
    p0 = ops.clip(ops.round(phase + j0 * factor), 0, n - 1)
    p1 = ops.clip(ops.round(phase + (j0 + 1) * factor), 0, n - 1)
    w = ops.clip((x - p0) / ops.maximum(p1 - p0, 1.0), 0.0, 1.0)
    return (ops.one_hot(ops.cast(p0, "int32"), n) * (1.0 - w)[..., None]
            + ops.one_hot(ops.cast(p1, "int32"), n) * w[..., None])


# --------------------------------------------------------------------------- grids and sampling
def identity_grid(spatial, dtype="float32"):
    """``(*spatial, ndim)`` tensor of voxel coordinates."""
    axes = [ops.arange(n, dtype=dtype) for n in spatial]
    return ops.stack(ops.meshgrid(*axes, indexing="ij"), axis=-1)


def _flat_index(idx, spatial):
    """Row-major flat index of integer coordinates ``(..., ndim)`` into ``spatial``."""
    strides = np.cumprod((1,) + tuple(spatial[::-1]))[:-1][::-1]
    flat = idx[..., 0] * int(strides[0])
    for d in range(1, len(spatial)):
        flat = flat + idx[..., d] * int(strides[d])
    return flat


def _batch_offsets(batch, n_vox, out_rank):
    b = ops.arange(batch, dtype="int32") * n_vox
    return ops.reshape(b, (batch,) + (1,) * out_rank)


def sample(volume, coords, method: str = "linear", padding: str = "zeros"):
    """Sample ``volume`` at real-valued voxel coordinates.

    Args:
        volume: ``(B, *spatial, C)`` tensor.
        coords: ``(B, *out_spatial, ndim)`` coordinates in voxels of ``volume``.
        method: ``"linear"`` (images, fields) or ``"nearest"`` (label maps: no new values).
        padding: ``"zeros"`` (outside the volume is 0) or ``"border"`` (clamp to the edge).

    Returns:
        ``(B, *out_spatial, C)`` tensor with ``volume``'s dtype for ``"nearest"``, float32 for
        ``"linear"``.
    """
    spatial = tuple(volume.shape[1:-1])
    ndim = len(spatial)
    batch = ops.shape(volume)[0]
    n_vox = int(np.prod(spatial))
    channels = volume.shape[-1]
    flat = ops.reshape(volume, (-1, channels))
    out_rank = len(coords.shape) - 2
    offsets = _batch_offsets(batch, n_vox, out_rank)
    upper = ops.convert_to_tensor(np.array(spatial, dtype=np.float32) - 1.0)
    coords = ops.cast(coords, "float32")

    if padding == "zeros":
        inside = ops.all((coords > -0.5) & (coords < upper + 0.5), axis=-1)
    elif padding != "border":
        raise ValueError(f"padding must be 'zeros' or 'border', got {padding!r}")

    if method == "nearest":
        idx = ops.cast(ops.clip(ops.round(coords), 0.0, upper), "int32")
        out = ops.take(flat, _flat_index(idx, spatial) + offsets, axis=0)
        if padding == "zeros":
            out = ops.where(inside[..., None], out, ops.zeros_like(out))
        return out
    if method != "linear":
        raise ValueError(f"method must be 'linear' or 'nearest', got {method!r}")

    flat = ops.cast(flat, "float32")
    coords = ops.clip(coords, 0.0, upper)
    lo = ops.floor(coords)
    frac = coords - lo
    lo = ops.cast(lo, "int32")
    hi_lim = ops.convert_to_tensor(np.array(spatial, dtype=np.int32) - 1)
    hi = ops.minimum(lo + 1, hi_lim)
    out = None
    for corner in itertools.product((0, 1), repeat=ndim):
        idx = ops.stack([hi[..., d] if c else lo[..., d] for d, c in enumerate(corner)], axis=-1)
        weight = None
        for d, c in enumerate(corner):
            wd = frac[..., d] if c else 1.0 - frac[..., d]
            weight = wd if weight is None else weight * wd
        term = ops.take(flat, _flat_index(idx, spatial) + offsets, axis=0) * weight[..., None]
        out = term if out is None else out + term
    if padding == "zeros":
        out = out * ops.cast(inside, "float32")[..., None]
    return out


def integrate_velocity(velocity, steps: int):
    """Integrate a stationary velocity field by scaling and squaring.

    Args:
        velocity: ``(B, *spatial, ndim)`` velocity in voxels of its own grid.
        steps: number of squarings (the field is first divided by ``2**steps``).

    Returns:
        ``(B, *spatial, ndim)`` displacement field (voxels) of a diffeomorphism.
    """
    grid = identity_grid(tuple(velocity.shape[1:-1]))[None]

    def square(_, disp):
        return disp + sample(disp, grid + disp, "linear", padding="border")

    # a loop, not an unrolled chain: XLA would otherwise fuse the steps and recompute
    # each one 2**ndim times per later step (exponential time on the JAX backend)
    return ops.fori_loop(0, steps, square, velocity / float(2 ** steps))


def lookup(table, labels):
    """Map integer ``labels`` (any shape) through a 1-D ``table`` (values beyond it -> 0)."""
    n = table.shape[0]
    labels = ops.cast(labels, "int32")
    valid = (labels >= 0) & (labels < n)
    out = ops.take(table, ops.clip(labels, 0, n - 1), axis=0)
    return ops.where(valid, out, ops.zeros_like(out))
