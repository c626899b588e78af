"""Resolution loss (random acquisition resolution and slice thickness) and plain random blur."""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from lab2im import ops as lops
from lab2im.layers.base import RandomLayer, spatial_shape


def _per_axis(value, ndim, name):
    v = np.broadcast_to(np.asarray(value, dtype=np.float32), (ndim,)).copy()
    if np.any(v <= 0):
        raise ValueError(f"{name} must be positive, got {value}")
    return v


def _apply_blur_and_sampling(images, sigma, factor=None, phase=None):
    """Blur each axis with ``sigma`` (B, ndim) voxels, then (optionally) resample every ``factor``."""
    mats = []
    for axis, n in enumerate(images.shape[1:-1]):
        m = lops.gaussian_matrices(n, sigma[:, axis])
        if factor is not None:
            m = ops.matmul(lops.downsample_upsample_matrices(n, factor[:, axis], phase[:, axis]), m)
        mats.append(m)
    return lops.apply_along_axes(images, mats)


@keras.saving.register_keras_serializable(package="lab2im")
class SimulateResolution(RandomLayer):
    """Make images look acquired at a random, possibly anisotropic, lower resolution.

    Per sample, with probability ``prob_isotropic`` all axes get one resolution drawn from
    ``U(voxel, max_res_iso)`` mm; otherwise one random axis gets ``U(voxel, max_res_aniso)`` mm
    (a thick-slice scan) and the others stay at the voxel size. The slice thickness is drawn
    from ``U(voxel, resolution)``. The image is blurred with a Gaussian of
    ``sigma = 0.75 * thickness / voxel`` voxels along each degraded axis, sampled every
    ``resolution / voxel`` voxels (random phase), and linearly interpolated back onto the
    input grid, so shapes never change.

    Args:
        voxel_size: voxel size of the input images (mm), scalar or per axis.
        max_res_iso: upper bound (mm) of the isotropic resolution.
        max_res_aniso: upper bound (mm) of the single degraded axis.
        prob_isotropic: probability of the isotropic case.
        prob: probability of degrading a sample at all.
        seed: see :class:`~lab2im.layers.base.RandomLayer`.

    Input and output: float images ``(B, *spatial, C)``.
    Transformation dict (all ``(B, ndim)``, voxels): ``factor`` (resolution / voxel size, 1 for
    untouched axes), ``sigma`` (blur), ``phase`` (offset of the first low-resolution sample).
    """

    def __init__(self, voxel_size=1.0, max_res_iso=4.0, max_res_aniso=8.0, prob_isotropic=0.1,
                 prob=1.0, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.voxel_size = voxel_size
        self.max_res_iso = float(max_res_iso)
        self.max_res_aniso = float(max_res_aniso)
        self.prob_isotropic = float(prob_isotropic)
        self.prob = float(prob)
        if not (0 <= self.prob_isotropic <= 1 and 0 <= self.prob <= 1):
            raise ValueError("prob_isotropic and prob must be in [0, 1]")

    def build(self, input_shape):
        self.spatial = spatial_shape(input_shape)
        self.voxel = _per_axis(self.voxel_size, len(self.spatial), "voxel_size")
        if self.max_res_iso < self.voxel.max() or self.max_res_aniso < self.voxel.max():
            raise ValueError(f"max_res_iso / max_res_aniso must be >= the voxel size {self.voxel.tolist()} mm")
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_random_transformation(self, batch_size):
        nd = len(self.spatial)
        vox = ops.convert_to_tensor(self.voxel[None])
        iso = self._uniform((batch_size, 1), 0.0, 1.0) * (self.max_res_iso - vox) + vox
        aniso = self._uniform((batch_size, 1), 0.0, 1.0) * (self.max_res_aniso - vox) + vox
        axis = keras.random.randint((batch_size, 1), 0, nd, seed=self.seed_generator)
        one_axis = ops.where(ops.arange(nd)[None] == axis, aniso, vox)
        is_iso = self._bernoulli((batch_size, 1), self.prob_isotropic)
        res = ops.where(is_iso, iso, one_axis)
        res = ops.where(self._bernoulli((batch_size, 1), self.prob), res, vox)
        thickness = vox + self._uniform((batch_size, nd), 0.0, 1.0) * (res - vox)
        factor = res / vox
        degraded = factor > 1.0 + 1e-3
        sigma = ops.where(degraded, 0.75 * thickness / vox, 0.0)
        phase = self._uniform((batch_size, nd), 0.0, 1.0) * factor
        return {"factor": factor, "sigma": sigma, "phase": phase}

    def transform(self, images, transformation):
        return _apply_blur_and_sampling(images, transformation["sigma"], transformation["factor"],
                                        transformation["phase"])

    def get_config(self):
        config = super().get_config()
        vs = self.voxel_size
        config.update(voxel_size=vs.tolist() if isinstance(vs, np.ndarray) else vs,
                      max_res_iso=self.max_res_iso, max_res_aniso=self.max_res_aniso,
                      prob_isotropic=self.prob_isotropic, prob=self.prob)
        return config


@keras.saving.register_keras_serializable(package="lab2im")
class RandomBlur(RandomLayer):
    """Gaussian blur with a random standard deviation ``U(0, max_sigma)`` voxels per axis.

    Input and output: float images ``(B, *spatial, C)``.
    Transformation dict: ``sigma``: ``(B, ndim)`` voxels.
    """

    def __init__(self, max_sigma=1.0, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if max_sigma < 0:
            raise ValueError(f"max_sigma must be >= 0, got {max_sigma}")
        self.max_sigma = float(max_sigma)

    def build(self, input_shape):
        self.spatial = spatial_shape(input_shape)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_random_transformation(self, batch_size):
        return {"sigma": self._uniform((batch_size, len(self.spatial)), 0.0, self.max_sigma)}

    def gated(self, transformation, on):
        """No blur (sigma 0) for the samples where ``on`` is false."""
        sigma = transformation["sigma"]
        return {"sigma": self._where(self._part(on, "sigma"), sigma, ops.zeros_like(sigma))}

    def transform(self, images, transformation):
        return _apply_blur_and_sampling(images, transformation["sigma"])

    def get_config(self):
        config = super().get_config()
        config["max_sigma"] = self.max_sigma
        return config
