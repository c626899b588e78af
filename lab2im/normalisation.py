"""Intensity standardisation of scans: one definition, used at training and at prediction.

Two methods (:data:`METHODS`), each applied to every channel separately:

* ``"percentile"`` (the default): the 0.5th and 99.5th percentiles go linearly to 0 and 1,
  and the result is clipped to [0, 1]. Where the two percentiles coincide (a mostly constant
  image) the minimum and maximum are used instead; a constant channel becomes all zeros.
* ``"zscore"``: the ``"percentile"`` result (hot voxels clipped), then a z-score within the
  *foreground*: the voxels above the lower percentile (those not 0 after the first step; for
  a scan with a zero background, e.g. skull-stripped, its non-zero voxels). Foreground voxels
  get ``(x - mean) / std`` of the foreground; the others are 0. A z-score is unchanged by any
  increasing linear map of the intensities, so the first step only removes outliers.

Non-finite voxels count as 0. :func:`normalise_intensities` is the NumPy version (the
prediction pipeline, :mod:`synthseg.inference`, and the training pairs, :mod:`synthseg.training.supervised`,
both call it); :func:`zscore_in_mask` is the in-graph z-score (``keras.ops``) that the
supervised augmentation applies after changing intensities.

    >>> x = normalise_intensities(scan)                    # float32 in [0, 1]
    >>> z = normalise_intensities(scan, method="zscore")   # foreground mean 0, std 1; background 0
"""
from __future__ import annotations

import numpy as np

from lab2im.errors import InputError

METHODS = ("percentile", "zscore")
PERCENTILES = (0.5, 99.5)


def check_method(method: str) -> str:
    """``method`` if it is one of :data:`METHODS`, else :class:`InputError`."""
    if method not in METHODS:
        raise InputError(f"intensity normalisation must be one of {list(METHODS)}, got {method!r}")
    return method


def normalise_intensities(data: np.ndarray, method: str = "percentile", percentiles=PERCENTILES) -> np.ndarray:
    """Standardise a scan's intensities (see the module docstring).

    Args:
        data: ``(X, Y, Z)`` or ``(X, Y, Z, C)`` (channels last; each channel on its own).
        method: ``"percentile"`` or ``"zscore"``.
        percentiles: the lower and upper percentiles of the first step.

    Returns:
        float32 array of ``data``'s shape: in [0, 1] (``"percentile"``), or z-scores with the
        background at 0 (``"zscore"``).
    """
    check_method(method)
    x = np.asarray(data, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    if x.ndim == 3:
        out = _percentile(x, percentiles)
        return zscore_foreground(out) if method == "zscore" else out
    out = np.empty(x.shape, np.float32)
    for c in range(x.shape[-1]):
        y = _percentile(x[..., c], percentiles)
        out[..., c] = zscore_foreground(y) if method == "zscore" else y
    return out


def _percentile(data: np.ndarray, percentiles) -> np.ndarray:
    lo, hi = (float(v) for v in np.percentile(data, percentiles))
    if hi <= lo:
        lo, hi = float(data.min()), float(data.max())
    if hi <= lo:
        return np.zeros(data.shape, np.float32)
    out = (data - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def zscore_foreground(image: np.ndarray) -> np.ndarray:
    """Z-score of one channel within its foreground (voxels > 0); background 0 (float32).

    Applied to the output of the ``"percentile"`` step, this is the ``"zscore"`` method. An
    image with no foreground, or a constant one, becomes all zeros.
    """
    x = np.asarray(image, dtype=np.float32)
    mask = x > 0
    n = int(np.count_nonzero(mask))
    out = np.zeros(x.shape, np.float32)
    if n == 0:
        return out
    values = x[mask].astype(np.float64)
    mean, std = values.mean(), values.std()
    if std > 0:
        out[mask] = ((values - mean) / std).astype(np.float32)
    return out


def zscore_in_mask(images, mask, eps: float = 1e-6):
    """In-graph z-score of each sample and channel within ``mask`` (``keras.ops``); 0 outside.

    Args:
        images: float ``(B, *spatial, C)``.
        mask: bool, same shape (the foreground).
        eps: smallest standard deviation divided by (a flat foreground gives zeros).
    """
    from keras import ops

    images = ops.convert_to_tensor(images)
    m = ops.cast(mask, images.dtype)
    axes = tuple(range(1, len(images.shape) - 1))
    n = ops.maximum(ops.sum(m, axis=axes, keepdims=True), 1.0)
    mean = ops.sum(images * m, axis=axes, keepdims=True) / n
    var = ops.sum(ops.square(images - mean) * m, axis=axes, keepdims=True) / n
    std = ops.sqrt(var)
    z = (images - mean) / ops.maximum(std, eps)
    return ops.where(ops.logical_and(mask, std > eps), z, ops.zeros_like(z))
