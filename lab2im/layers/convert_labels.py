"""Deterministic conversion of generation labels into segmentation labels."""
from __future__ import annotations

import keras
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
