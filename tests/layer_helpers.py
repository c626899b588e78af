"""Helpers shared by the layer tests: run a layer eagerly, round-trip its config."""
import numpy as np
from keras import ops


def run(layer, *inputs, transformation=None):
    """Call ``layer`` on numpy inputs; return numpy output(s) and the transformation used."""
    tensors = [ops.convert_to_tensor(x) for x in inputs]
    arg = tensors if len(tensors) > 1 else tensors[0]
    layer.build([t.shape for t in tensors] if len(tensors) > 1 else tensors[0].shape)
    if transformation is None:
        transformation = layer.get_random_transformation(tensors[0].shape[0])
    out = layer(arg, transformation=transformation)
    if isinstance(out, (list, tuple)):
        return [ops.convert_to_numpy(o) for o in out], transformation
    return ops.convert_to_numpy(out), transformation


def assert_config_round_trip(layer, *inputs):
    """``from_config(get_config())`` rebuilds an identical layer: same config, same output
    for the same transformation."""
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    out, t = run(layer, *inputs)
    out2, _ = run(clone, *inputs, transformation=t)
    for a, b in zip(out if isinstance(out, list) else [out], out2 if isinstance(out2, list) else [out2]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
