"""Per-label Gaussian intensities: the heart of contrast randomisation."""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from lab2im import ops as lops
from lab2im.layers.base import RandomLayer, spatial_shape

DISTRIBUTIONS = ("uniform", "normal")


def normalise_prior(prior, n_classes: int, n_channels: int, name: str) -> np.ndarray:
    """Bring a prior to shape ``(2 * n_channels, n_classes)``.

    Accepted: a pair ``(a, b)`` shared by all classes and channels, ``(2, n_classes)`` shared by
    all channels, or ``(2 * n_channels, n_classes)`` (rows ``2c`` and ``2c + 1`` for channel
    ``c``). For a uniform prior ``(a, b)`` are (min, max); for a normal prior (mean, std).

    Raises:
        ValueError: any other shape (the message gives the expected ones).
    """
    p = np.asarray(prior, dtype=np.float32)
    if p.ndim == 1 and p.shape[0] == 2:
        p = np.repeat(p[:, None], n_classes, axis=1)
    if p.ndim == 2 and p.shape == (2, n_classes):
        p = np.tile(p, (n_channels, 1))
    if p.shape != (2 * n_channels, n_classes):
        raise ValueError(
            f"{name} has shape {np.asarray(prior).shape}; expected (2,), (2, {n_classes}) or "
            f"({2 * n_channels}, {n_classes}) for {n_classes} classes and {n_channels} channel(s)")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return p


@keras.saving.register_keras_serializable(package="lab2im")
class SampleConditionalGMM(RandomLayer):
    """Turn a label map into an image: voxel intensity ~ N(mean[label], std[label]).

    Labels are grouped into classes that share one Gaussian (e.g. left and right cortex), and
    for each sample and class a mean and a standard deviation are drawn from priors, per
    channel, so every minibatch has a new random contrast.

    Args:
        generation_labels: all label values that may appear in the input label maps.
        generation_classes: class index of each generation label (same length); ``None``
            gives each label its own class.
        prior_means: prior of the class means, see :func:`normalise_prior` for shapes;
            ``(25, 225)`` by default (uniform min/max).
        prior_stds: prior of the class standard deviations; ``(5, 25)`` by default.
        prior_distribution: ``"uniform"`` (rows are min, max) or ``"normal"`` (mean, std).
        n_channels: number of image channels (e.g. 2 for a T1 + T2 pair).
        seed: see :class:`~lab2im.layers.base.RandomLayer`.

    Input: int label map ``(B, *spatial, 1)``; output: float32 image ``(B, *spatial, n_channels)``.
    Transformation dict: ``means`` and ``stds``: ``(B, n_labels, n_channels)`` per generation
    label; ``noise``: ``(B, *spatial, n_channels)`` standard normal field.
    """

    def __init__(self, generation_labels, generation_classes=None, prior_means=(25.0, 225.0),
                 prior_stds=(5.0, 25.0), prior_distribution="uniform", n_channels=1, seed=None,
                 **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.generation_labels = [int(v) for v in generation_labels]
        if len(set(self.generation_labels)) != len(self.generation_labels):
            raise ValueError("generation_labels contains duplicates")
        if generation_classes is None:
            generation_classes = list(range(len(self.generation_labels)))
        self.generation_classes = [int(v) for v in generation_classes]
        if len(self.generation_classes) != len(self.generation_labels):
            raise ValueError(f"generation_classes has {len(self.generation_classes)} entries for "
                             f"{len(self.generation_labels)} generation labels")
        if min(self.generation_classes) < 0:
            raise ValueError("generation_classes must be non-negative")
        self.n_classes = max(self.generation_classes) + 1
        self.n_channels = int(n_channels)
        if prior_distribution not in DISTRIBUTIONS:
            raise ValueError(f"prior_distribution must be one of {DISTRIBUTIONS}, got {prior_distribution!r}")
        self.prior_distribution = prior_distribution
        self.prior_means = normalise_prior(prior_means, self.n_classes, self.n_channels, "prior_means")
        self.prior_stds = normalise_prior(prior_stds, self.n_classes, self.n_channels, "prior_stds")
        self.label_to_index = lops.make_lut(self.generation_labels,
                                            np.arange(len(self.generation_labels)))

    def build(self, input_shape):
        self.spatial = spatial_shape(input_shape)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.n_channels)

    def _draw(self, prior, batch_size):
        a = ops.convert_to_tensor(prior[0::2].T)  # (n_classes, n_channels)
        b = ops.convert_to_tensor(prior[1::2].T)
        shape = (batch_size, self.n_classes, self.n_channels)
        if self.prior_distribution == "uniform":
            return a + (b - a) * self._uniform(shape, 0.0, 1.0)
        return a + b * self._normal(shape)

    def get_random_transformation(self, batch_size):
        classes = ops.convert_to_tensor(np.array(self.generation_classes, np.int32))
        means = ops.take(self._draw(self.prior_means, batch_size), classes, axis=1)
        stds = ops.abs(ops.take(self._draw(self.prior_stds, batch_size), classes, axis=1))
        noise = self._normal((batch_size, *self.spatial, self.n_channels))
        return {"means": means, "stds": stds, "noise": noise}

    def transform(self, labels, transformation):
        idx = lops.lookup(ops.convert_to_tensor(self.label_to_index), labels[..., 0])
        n = len(self.generation_labels)
        batch = ops.shape(idx)[0]
        offsets = ops.reshape(ops.arange(batch, dtype="int32") * n, (-1,) + (1,) * len(self.spatial))
        flat_idx = idx + offsets
        means = ops.take(ops.reshape(transformation["means"], (-1, self.n_channels)), flat_idx, axis=0)
        stds = ops.take(ops.reshape(transformation["stds"], (-1, self.n_channels)), flat_idx, axis=0)
        return means + stds * transformation["noise"]

    def get_config(self):
        config = super().get_config()
        config.update(generation_labels=self.generation_labels,
                      generation_classes=self.generation_classes,
                      prior_means=self.prior_means.tolist(), prior_stds=self.prior_stds.tolist(),
                      prior_distribution=self.prior_distribution, n_channels=self.n_channels)
        return config
