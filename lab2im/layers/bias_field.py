"""Smooth multiplicative bias field (intensity inhomogeneity)."""
from __future__ import annotations

import keras
from keras import ops

from lab2im import ops as lops
from lab2im.layers.base import CoarseFieldLayer


@keras.saving.register_keras_serializable(package="lab2im")
class RandomBiasField(CoarseFieldLayer):
    """Multiply images by ``exp(f)``, ``f`` a coarse Gaussian noise field upsampled linearly.

    Args:
        std: the field's standard deviation (log-intensity units) is drawn per sample from
            ``U(0, std)``.
        scale: ``f`` is sampled on a grid of ``scale`` times the image shape (>= 2 per axis).
        prob: probability of applying a field to each sample.
        seed: see :class:`~lab2im.layers.base.RandomLayer`.

    Input and output: float images ``(B, *spatial, C)`` (one field shared by the channels).
    Transformation dict: ``log_field``: ``(B, *coarse, 1)``, zero for samples left unchanged.
    """

    def __init__(self, std=0.7, scale=0.025, prob=0.95, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if std < 0 or scale <= 0 or not 0 <= prob <= 1:
            raise ValueError("std >= 0, scale > 0 and 0 <= prob <= 1 are required")
        self.std, self.scale, self.prob = float(std), float(scale), float(prob)

    def get_random_transformation(self, batch_size):
        rank = (1,) * (len(self.spatial) + 1)
        std = self._uniform((batch_size,) + rank, 0.0, self.std)
        on = ops.cast(self._bernoulli((batch_size,) + rank, self.prob), "float32")
        return {"log_field": self._normal((batch_size, *self.coarse, 1)) * std * on}

    def gated(self, transformation, on):
        """A flat field (log field 0) for the samples where ``on`` is false."""
        log_field = transformation["log_field"]
        return {"log_field": self._where(self._part(on, "log_field"), log_field, ops.zeros_like(log_field))}

    def field(self, transformation):
        """The multiplicative field ``(B, *spatial, 1)``."""
        return ops.exp(lops.resize_linear(transformation["log_field"], self.spatial))

    def transform(self, images, transformation):
        return images * self.field(transformation)

    def get_config(self):
        config = super().get_config()
        config.update(std=self.std, scale=self.scale, prob=self.prob)
        return config
