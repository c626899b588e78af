"""Random affine + diffeomorphic nonlinear deformation, with an optional random crop."""
from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from lab2im import ops as lops
from lab2im.layers.base import (
    LABELS,
    RandomLayer,
    first_shape,
    is_shape_list,
    spatial_shape,
    symmetric_range,
    tensor_kinds,
)


@keras.saving.register_keras_serializable(package="lab2im")
class RandomSpatialDeformation(RandomLayer):
    """Deform label maps (nearest) and images (linear) with one random smooth diffeomorphism.

    The output voxel ``x`` (centred coordinates, voxels) is read from the input at
    ``A (x + u(x)) + c + t``, where ``A`` is a random affine (rotation, shearing, scaling),
    ``u`` the displacement obtained by integrating a random stationary velocity field (SVF)
    with scaling and squaring (a diffeomorphism: its Jacobian determinant is positive),
    ``c`` the input centre and ``t`` a random translation plus, when ``output_shape`` is
    smaller than the input, a random crop offset. Outside the input the output is 0.

    Inputs may be one tensor or a list of tensors ``(B, *spatial, C)`` on the same grid;
    integer tensors (label maps) are resampled nearest, so no new label values appear, and
    floating-point tensors (images) linearly.

    Args:
        scaling: scaling factors are drawn from ``U(1 - s, 1 + s)`` per axis (or a ``(min, max)``
            pair of factors).
        rotation: rotation angles (degrees) drawn from ``U(-r, r)`` about each axis (one angle
            in 2D).
        shearing: shear coefficients drawn from ``U(-s, s)``.
        translation: translation drawn from ``U(-t, t)`` voxels per axis.
        nonlin_std: the SVF's standard deviation (voxels) is drawn per sample from
            ``U(0, nonlin_std)``; 0 disables the nonlinear part.
        nonlin_scale: the SVF is sampled on a coarse grid of ``nonlin_scale`` times the output
            shape (at least 2 per axis), then upsampled linearly.
        integration_steps: number of scaling-and-squaring steps.
        integration_downsample: the SVF is integrated on a grid this many times coarser than
            the output (it is smooth, so little is lost), then the displacement is upsampled.
        output_shape: spatial output shape (voxels); ``None`` keeps the input shape. A smaller
            shape takes a random crop (the deformation is computed for the crop only).
        kinds: what each input holds, ``"image"`` (interpolated linearly) or ``"labels"``
            (nearest neighbour); ``None``: integer tensors are label maps.
        seed: see :class:`~lab2im.layers.base.RandomLayer`.

    Transformation dict (``get_random_transformation``):
        ``affine``: ``(B, ndim, ndim + 1)`` matrix from centred output to centred input
        coordinates, translation and crop offset included; ``velocity``: ``(B, *coarse, ndim)``
        SVF in output voxels.
    """

    def __init__(self, scaling=0.2, rotation=15.0, shearing=0.012, translation=0.0,
                 nonlin_std=4.0, nonlin_scale=0.04, integration_steps=7,
                 integration_downsample=4, output_shape=None, kinds=None, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.kinds = None if kinds is None else list(kinds)
        self.scaling = symmetric_range(scaling, "scaling", center=1.0)
        if self.scaling[0] <= 0:
            raise ValueError(f"scaling factors must stay positive, got range {self.scaling}")
        self.rotation = symmetric_range(rotation, "rotation")
        self.shearing = symmetric_range(shearing, "shearing")
        self.translation = symmetric_range(translation, "translation")
        if nonlin_std < 0 or nonlin_scale <= 0 or integration_steps < 0 or integration_downsample < 1:
            raise ValueError("nonlin_std >= 0, nonlin_scale > 0, integration_steps >= 0 and "
                             "integration_downsample >= 1 are required")
        self.nonlin_std = float(nonlin_std)
        self.nonlin_scale = float(nonlin_scale)
        self.integration_steps = int(integration_steps)
        self.integration_downsample = int(integration_downsample)
        self.output_shape = None if output_shape is None else tuple(int(n) for n in output_shape)

    def build(self, input_shape):
        first = first_shape(input_shape)
        self.in_spatial = spatial_shape(first)
        self.ndim = len(self.in_spatial)
        self.out_spatial = self.output_shape or self.in_spatial
        if len(self.out_spatial) != self.ndim:
            raise ValueError(f"output_shape {self.out_spatial} does not match {self.ndim}D inputs")
        self.coarse_spatial = tuple(max(2, math.ceil(n * self.nonlin_scale)) for n in self.out_spatial)
        self.integration_spatial = tuple(max(2, math.ceil(n / self.integration_downsample))
                                         for n in self.out_spatial)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        def one(s):
            return (s[0], *self.out_spatial, s[-1])
        if is_shape_list(input_shape):
            return [one(s) for s in input_shape]
        return one(input_shape)

    # ------------------------------------------------------------------ sampling
    def get_random_transformation(self, batch_size):
        nd = self.ndim
        n_rot = 3 if nd == 3 else 1
        angles = self._uniform((batch_size, n_rot), *self.rotation) * (math.pi / 180.0)
        shears = self._uniform((batch_size, nd * (nd - 1)), *self.shearing)
        scales = self._uniform((batch_size, nd), *self.scaling)
        translation = self._uniform((batch_size, nd), *self.translation)
        # random crop: the window centre is offset from the input centre by an integer number
        # of voxels, so a crop without deformation is an exact copy of input voxels
        delta = ((np.array(self.in_spatial) - np.array(self.out_spatial)) / 2.0).astype("float32")
        slack = ops.convert_to_tensor(np.maximum(delta, 0.0))
        delta = ops.convert_to_tensor(delta)
        crop = ops.round(self._uniform((batch_size, nd), -1.0, 1.0) * slack + delta) - delta
        linear = ops.matmul(ops.matmul(_rotation_matrix(angles, nd), _shear_matrix(shears, nd)),
                            _diag(scales))
        affine = ops.concatenate([linear, (translation + crop)[..., None]], axis=-1)
        std = self._uniform((batch_size,) + (1,) * (nd + 1), 0.0, self.nonlin_std)
        velocity = self._normal((batch_size, *self.coarse_spatial, nd)) * std
        return {"affine": affine, "velocity": velocity}

    GATED_PARTS = ("affine", "velocity")

    def gated(self, transformation, on):
        """For the samples where ``on`` (or its part ``"affine"`` / ``"velocity"``) is false: the
        identity linear part (the translation column, which holds the random crop window, stays:
        a crop is not an augmentation) and a zero velocity field."""
        nd = self.ndim
        affine = transformation["affine"]
        linear = self._where(self._part(on, "affine"), affine[:, :, :nd],
                             ops.broadcast_to(ops.eye(nd, dtype=affine.dtype)[None], ops.shape(affine[:, :, :nd])))
        velocity = transformation["velocity"]
        return {"affine": ops.concatenate([linear, affine[:, :, nd:]], axis=-1),
                "velocity": self._where(self._part(on, "velocity"), velocity, ops.zeros_like(velocity))}

    # ------------------------------------------------------------------ application
    def displacement(self, velocity):
        """Integrate the SVF ``(B, *coarse, ndim)`` into a ``(B, *out, ndim)`` displacement (voxels)."""
        if self.nonlin_std == 0:
            return None
        # express the velocity in voxels of the integration grid, integrate, and map back
        ratio = np.array([(m - 1) / (n - 1) if n > 1 else 1.0
                          for m, n in zip(self.integration_spatial, self.out_spatial)], "float32")
        v = lops.resize_linear(velocity, self.integration_spatial) * ratio
        d = lops.integrate_velocity(v, self.integration_steps)
        return lops.resize_linear(d / ratio, self.out_spatial)

    def coordinates(self, transformation):
        """``(B, *out, ndim)`` input voxel coordinates read by each output voxel."""
        centre_out = (np.array(self.out_spatial, "float32") - 1) / 2
        centre_in = (np.array(self.in_spatial, "float32") - 1) / 2
        x = lops.identity_grid(self.out_spatial)[None] - centre_out
        disp = self.displacement(transformation["velocity"])
        if disp is not None:
            x = x + disp
        affine = transformation["affine"]
        nd = self.ndim
        linear = affine[:, :, :nd]
        shift = affine[:, :, nd]
        b = ops.shape(affine)[0]
        flat = ops.reshape(x, (b, -1, nd)) if disp is not None else ops.reshape(
            ops.broadcast_to(x, (b, *self.out_spatial, nd)), (b, -1, nd))
        src = ops.matmul(flat, ops.transpose(linear, (0, 2, 1))) + shift[:, None, :] + centre_in
        return ops.reshape(src, (b, *self.out_spatial, nd))

    def transform(self, inputs, transformation):
        coords = self.coordinates(transformation)
        tensors = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        outs = []
        for t, kind in zip(tensors, tensor_kinds(tensors, self.kinds)):
            outs.append(lops.sample(t, coords, "nearest" if kind == LABELS else "linear"))
        return outs if isinstance(inputs, (list, tuple)) else outs[0]

    def get_config(self):
        config = super().get_config()
        config.update(scaling=self.scaling, rotation=self.rotation, shearing=self.shearing,
                      translation=self.translation, nonlin_std=self.nonlin_std,
                      nonlin_scale=self.nonlin_scale, integration_steps=self.integration_steps,
                      integration_downsample=self.integration_downsample,
                      output_shape=self.output_shape, kinds=self.kinds)
        return config


def _diag(v):
    """``(B, n)`` -> ``(B, n, n)`` diagonal matrices."""
    n = v.shape[-1]
    return v[:, :, None] * ops.eye(n, dtype="float32")[None]


def _shear_matrix(s, nd):
    """``(B, nd*(nd-1))`` shears -> ``(B, nd, nd)`` unit-diagonal matrices."""
    off = [(i, j) for i in range(nd) for j in range(nd) if i != j]
    eye = ops.eye(nd, dtype="float32")[None]
    m = eye
    for k, (i, j) in enumerate(off):
        e = np.zeros((nd, nd), "float32")
        e[i, j] = 1.0
        m = m + s[:, k, None, None] * e[None]
    return m


def _rotation_matrix(angles, nd):
    """``(B, 1)`` angles (2D) or ``(B, 3)`` angles about x, y, z (3D), radians -> ``(B, nd, nd)``."""
    c, s = ops.cos(angles), ops.sin(angles)
    one, zero = ops.ones_like(c[:, 0]), ops.zeros_like(c[:, 0])

    def mat(rows):
        return ops.stack([ops.stack(r, axis=-1) for r in rows], axis=-2)

    if nd == 2:
        return mat([[c[:, 0], -s[:, 0]], [s[:, 0], c[:, 0]]])
    rx = mat([[one, zero, zero], [zero, c[:, 0], -s[:, 0]], [zero, s[:, 0], c[:, 0]]])
    ry = mat([[c[:, 1], zero, s[:, 1]], [zero, one, zero], [-s[:, 1], zero, c[:, 1]]])
    rz = mat([[c[:, 2], -s[:, 2], zero], [s[:, 2], c[:, 2], zero], [zero, zero, one]])
    return ops.matmul(ops.matmul(rz, ry), rx)
