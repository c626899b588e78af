"""Deterministic conversion of generation labels into segmentation labels."""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from lab2im import ops as lops


@keras.saving.register_keras_serializable(package="lab2im")
class ConvertLabels(keras.layers.Layer):
    """Map each value ``source[i]`` to ``dest[i]``; values not in ``source`` become ``default``.

    Used to turn generation labels (e.g. skull, lesions) into the labels the network learns
    (skull -> background, lesions -> white matter).

    Args:
        source: label values to convert.
        dest: what each becomes (same length as ``source``).
        default: value of unlisted labels.
    """

    def __init__(self, source, dest, default=0, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.source = [int(v) for v in source]
        self.dest = [int(v) for v in dest]
        self.default = int(default)
        self.table = lops.make_lut(self.source, self.dest, self.default)

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, labels):
        out = lops.lookup(ops.convert_to_tensor(self.table), labels)
        # labels beyond the table are unlisted too
        return ops.where(ops.cast(labels, "int32") < self.table.shape[0], out,
                         ops.full_like(out, self.default))

    def get_config(self):
        config = super().get_config()
        config.update(source=self.source, dest=self.dest, default=self.default)
        return config


@keras.saving.register_keras_serializable(package="lab2im")
class OneHotLabels(keras.layers.Layer):
    """Integer label map ``(B, *spatial, 1)`` -> one-hot ``(B, *spatial, K)`` over ``labels``.

    Channel ``k`` is 1 where the map equals ``labels[k]``; values not listed give all zeros.

    Args:
        labels: the K label values, in channel order.
    """

    def __init__(self, labels, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.labels = [int(v) for v in labels]
        self.table = lops.make_lut(self.labels, np.arange(len(self.labels)) + 1)  # 0 = unlisted

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], len(self.labels))

    def call(self, labels):
        idx = lops.lookup(ops.convert_to_tensor(self.table), labels[..., 0]) - 1
        return ops.one_hot(idx, len(self.labels), dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config["labels"] = self.labels
        return config
