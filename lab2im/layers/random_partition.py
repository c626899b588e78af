"""Random partition of chosen labels into smooth random parts (variety where labels are coarse)."""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from lab2im import ops as lops
from lab2im.layers.base import CoarseFieldLayer


@keras.saving.register_keras_serializable(package="lab2im")
class RandomPartition(CoarseFieldLayer):
    """Split each listed label into random smooth parts, each part a label of its own.

    A label map's coarse classes (e.g. "soft tissue" around a head) become a random patchwork
    of sub-labels that the Gaussian-mixture layer then paints with independent intensities, so
    a network trained on the images learns that such regions can look like anything. For each
    sample and each split label, ``len(parts)`` smooth random scores are drawn on a coarse grid
    and upsampled linearly; every voxel of the label takes the part with the highest score.

    Args:
        partitions: one list per split label, ``[label, part_1, ..., part_n]``: voxels of
            ``label`` become ``label`` itself or one of the ``part_i`` labels (so ``n + 1``
            parts in all).
        scale: the scores are drawn on a grid of ``scale`` times the label map's shape (at
            least 2 per axis), so parts are about ``1 / scale`` of the field of view apart.
        prob: probability that a sample is partitioned at all (else it is left unchanged).
        seed: see :class:`~lab2im.layers.base.RandomLayer`.

    Input and output: int32 label maps ``(B, *spatial, 1)``.
    Transformation dict: ``scores``: ``(B, *coarse, n_split * n_parts)`` float32, where
    ``n_parts`` is the largest ``n + 1``; ``on``: ``(B,)`` bool.
    """

    def __init__(self, partitions, scale=0.125, prob=1.0, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.partitions = [[int(v) for v in p] for p in partitions]
        if not self.partitions or any(len(p) < 2 for p in self.partitions):
            raise ValueError("partitions must be a non-empty list of [label, part_1, ...] lists")
        every = [v for p in self.partitions for v in p]
        if len(set(every)) != len(every):
            raise ValueError(f"partitions must not repeat a label, got {self.partitions}")
        if min(every) < 0:
            raise ValueError("partition labels must be >= 0")
        if scale <= 0 or not 0 <= prob <= 1:
            raise ValueError("scale > 0 and 0 <= prob <= 1 are required")
        self.scale, self.prob = float(scale), float(prob)
        self.n_parts = max(len(p) for p in self.partitions)
        # split label -> 1 + its row; part k of row r -> table[r * n_parts + k] (short rows
        # repeat their own label, so every part index is valid)
        row_of = np.zeros(max(every) + 1, np.int32)
        table = np.zeros((len(self.partitions), self.n_parts), np.int32)
        for r, p in enumerate(self.partitions):
            row_of[p[0]] = r + 1
            table[r] = (p + [p[0]] * self.n_parts)[:self.n_parts]
        self._row_of, self._table = row_of, table.reshape(-1)

    def get_random_transformation(self, batch_size):
        channels = len(self.partitions) * self.n_parts
        return {"scores": self._normal((batch_size, *self.coarse, channels)),
                "on": self._bernoulli((batch_size,), self.prob)}

    def transform(self, labels, transformation):
        labels = ops.cast(labels, "int32")
        n_rows = len(self.partitions)
        scores = lops.resize_linear(transformation["scores"], self.spatial)
        scores = ops.reshape(scores, (-1, *self.spatial, n_rows, self.n_parts))
        part = ops.cast(ops.argmax(scores, axis=-1), "int32")  # (B, *spatial, n_rows)
        row = lops.lookup(ops.convert_to_tensor(self._row_of), labels)  # (B, *spatial, 1), 0: not split
        # the part drawn for the voxel's own row
        row_onehot = ops.cast(ops.equal(row, ops.arange(1, n_rows + 1, dtype="int32")), "int32")
        own_part = ops.sum(part * row_onehot, axis=-1, keepdims=True)
        index = ops.maximum(row - 1, 0) * self.n_parts + own_part
        new = ops.take(ops.convert_to_tensor(self._table), index, axis=0)
        on = ops.reshape(transformation["on"], (-1,) + (1,) * (len(self.spatial) + 1))
        return ops.where(ops.logical_and(row > 0, on), new, labels)

    def get_config(self):
        config = super().get_config()
        config.update(partitions=self.partitions, scale=self.scale, prob=self.prob)
        return config
