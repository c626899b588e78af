"""Random crop of label maps and images to a fixed spatial shape (exact voxel copy)."""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from lab2im import ops as lops
from lab2im.layers.base import RandomLayer, first_shape, is_shape_list, spatial_shape


@keras.saving.register_keras_serializable(package="lab2im")
class RandomCrop(RandomLayer):
    """Crop (or zero-pad, where the input is smaller) all inputs with one random window.

    Args:
        output_shape: spatial shape of the crop, voxels.
        seed: see :class:`~lab2im.layers.base.RandomLayer`.

    Transformation dict: ``offset``: ``(B, ndim)`` int32 corner of the window in input voxels
    (negative where the input is padded).
    """

    def __init__(self, output_shape, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.output_shape = tuple(int(n) for n in output_shape)

    def build(self, input_shape):
        first = first_shape(input_shape)
        self.in_spatial = spatial_shape(first)
        if len(self.output_shape) != len(self.in_spatial):
            raise ValueError(f"output_shape {self.output_shape} does not match input {self.in_spatial}")
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        def one(s):
            return (s[0], *self.output_shape, s[-1])
        return [one(s) for s in input_shape] if is_shape_list(input_shape) else one(input_shape)

    def get_random_transformation(self, batch_size):
        diff = np.array(self.in_spatial) - np.array(self.output_shape)
        low = np.minimum(diff, 0) // 2  # centred padding where the input is smaller
        high = np.maximum(diff, 0) + low
        u = self._uniform((batch_size, len(diff)), 0.0, 1.0)
        offset = ops.floor(u * (high - low + 1).astype("float32")) + low.astype("float32")
        return {"offset": ops.cast(ops.minimum(offset, high.astype("float32")), "int32")}

    def transform(self, inputs, transformation):
        grid = lops.identity_grid(self.output_shape)[None]
        offset = ops.cast(transformation["offset"], "float32")
        offset = ops.reshape(offset, (-1,) + (1,) * len(self.output_shape) + (len(self.output_shape),))
        coords = grid + offset
        tensors = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        outs = [lops.sample(t, coords, "nearest") for t in tensors]
        return outs if isinstance(inputs, (list, tuple)) else outs[0]

    def get_config(self):
        config = super().get_config()
        config["output_shape"] = self.output_shape
        return config
