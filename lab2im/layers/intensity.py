"""Intensity augmentation: additive noise, clipping, min-max normalisation, random gamma."""
from __future__ import annotations

import keras
from keras import ops

from lab2im.layers.base import RandomLayer, spatial_shape


@keras.saving.register_keras_serializable(package="lab2im")
class IntensityAugmentation(RandomLayer):
    """Noise, clipping, per-sample min-max normalisation to [0, 1], then ``x ** exp(g)``.

    Args:
        noise_std: standard deviation of additive Gaussian noise, drawn per sample from
            ``U(0, noise_std)``, in input intensity units.
        clip: ``(min, max)`` intensities to clip to before normalising, or ``None``.
        normalise: min-max normalise each sample and channel to [0, 1].
        gamma_std: ``g ~ N(0, gamma_std)``; 0 disables the gamma transform (needs ``normalise``).
        seed: see :class:`~lab2im.layers.base.RandomLayer`.

    Input and output: float images ``(B, *spatial, C)``.
    Transformation dict: ``noise``: ``(B, *spatial, C)`` noise already scaled by its std;
    ``gamma``: ``(B, 1, ..., 1)`` exponents ``exp(g)``.
    """

    def __init__(self, noise_std=0.0, clip=(0.0, 300.0), normalise=True, gamma_std=0.5, seed=None,
                 **kwargs):
        super().__init__(seed=seed, **kwargs)
        if noise_std < 0 or gamma_std < 0:
            raise ValueError("noise_std and gamma_std must be >= 0")
        if clip is not None and (len(clip) != 2 or clip[0] >= clip[1]):
            raise ValueError(f"clip must be a (min, max) pair with min < max, got {clip}")
        if gamma_std > 0 and not normalise:
            raise ValueError("gamma needs normalised [0, 1] intensities: set normalise=True")
        self.noise_std = float(noise_std)
        self.clip = None if clip is None else (float(clip[0]), float(clip[1]))
        self.normalise = bool(normalise)
        self.gamma_std = float(gamma_std)

    def build(self, input_shape):
        self.spatial = spatial_shape(input_shape)
        self.channels = int(input_shape[-1])
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_random_transformation(self, batch_size):
        rank = (1,) * (len(self.spatial) + 1)
        t = {"gamma": ops.exp(self._normal((batch_size,) + rank, 0.0, self.gamma_std))}
        if self.noise_std > 0:
            std = self._uniform((batch_size,) + rank, 0.0, self.noise_std)
            t["noise"] = self._normal((batch_size, *self.spatial, self.channels)) * std
        return t

    GATED_PARTS = ("gamma", "noise")

    def gated(self, transformation, on):
        """Gamma 1 and no noise for the samples where ``on`` (or its part ``"gamma"`` /
        ``"noise"``) is false; clipping and normalisation are not random and stay."""
        out = {"gamma": self._where(self._part(on, "gamma"), transformation["gamma"],
                                    ops.ones_like(transformation["gamma"]))}
        if "noise" in transformation:
            noise = transformation["noise"]
            out["noise"] = self._where(self._part(on, "noise"), noise, ops.zeros_like(noise))
        return out

    def transform(self, images, transformation):
        x = images
        if "noise" in transformation:
            x = x + transformation["noise"]
        if self.clip is not None:
            x = ops.clip(x, self.clip[0], self.clip[1])
        if self.normalise:
            axes = tuple(range(1, len(self.spatial) + 1))
            lo = ops.min(x, axis=axes, keepdims=True)
            hi = ops.max(x, axis=axes, keepdims=True)
            x = (x - lo) / ops.maximum(hi - lo, 1e-6)
            if self.gamma_std > 0:
                x = ops.power(ops.maximum(x, 0.0), transformation["gamma"])
        return x

    def get_config(self):
        config = super().get_config()
        config.update(noise_std=self.noise_std, clip=self.clip, normalise=self.normalise,
                      gamma_std=self.gamma_std)
        return config
