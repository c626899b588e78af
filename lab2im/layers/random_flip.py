"""Random left/right flip that also swaps the values of lateralised labels."""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from lab2im import ops as lops
from lab2im.layers.base import LABELS, RandomLayer, tensor_kinds


@keras.saving.register_keras_serializable(package="lab2im")
class RandomFlip(RandomLayer):
    """Flip label maps and images along ``axis`` with probability ``prob``, per sample.

    In a flipped label map each left label becomes its right counterpart and vice versa, so
    "left hippocampus" still lies in the left hemisphere after the flip.

    Args:
        lr_pairs: ``(left, right)`` label pairs to swap when flipping; other labels are kept.
        axis: spatial axis to flip (0 is left-right for RAS-oriented volumes).
        prob: probability of flipping each sample.
        seed: see :class:`~lab2im.layers.base.RandomLayer`.

        kinds: what each input holds, ``"image"`` or ``"labels"`` (label maps get their
            left/right labels swapped); ``None``: integer tensors are label maps.

    Inputs: one tensor or a list ``(B, *spatial, C)``.
    Transformation dict: ``flip``: ``(B,)`` bool.
    """

    def __init__(self, lr_pairs=(), axis=0, prob=0.5, kinds=None, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.kinds = None if kinds is None else list(kinds)
        self.lr_pairs = [(int(a), int(b)) for a, b in lr_pairs]
        self.axis = int(axis)
        self.prob = float(prob)
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        labels = [v for pair in self.lr_pairs for v in pair]
        if len(set(labels)) != len(labels) or min(labels, default=0) < 0:
            raise ValueError("lr_pairs must hold distinct non-negative labels, each in one pair")
        size = max(labels, default=0) + 1
        table = np.arange(size, dtype=np.int32)
        for left, right in self.lr_pairs:
            table[left], table[right] = right, left
        self.swap_table = table

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_random_transformation(self, batch_size):
        return {"flip": self._bernoulli((batch_size,), self.prob)}

    def gated(self, transformation, on):
        """No flip for the samples where ``on`` is false."""
        return {"flip": ops.logical_and(transformation["flip"], self._part(on, "flip"))}

    def swap_labels(self, labels):
        """Swap left/right label values (labels beyond the table are kept)."""
        n = self.swap_table.shape[0]
        swapped = lops.lookup(ops.convert_to_tensor(self.swap_table), labels)
        return ops.where(labels < n, ops.cast(swapped, labels.dtype), labels)

    def transform(self, inputs, transformation):
        tensors = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        outs = []
        for t, kind in zip(tensors, tensor_kinds(tensors, self.kinds)):
            flipped = ops.flip(t, axis=self.axis + 1)
            if kind == LABELS and self.lr_pairs:
                flipped = self.swap_labels(flipped)
            mask = ops.reshape(transformation["flip"], (-1,) + (1,) * (len(t.shape) - 1))
            outs.append(ops.where(mask, flipped, t))
        return outs if isinstance(inputs, (list, tuple)) else outs[0]

    def get_config(self):
        config = super().get_config()
        config.update(lr_pairs=self.lr_pairs, axis=self.axis, prob=self.prob, kinds=self.kinds)
        return config
