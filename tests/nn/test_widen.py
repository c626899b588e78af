"""synthseg.nn.widen: a trained U-Net embedded in a wider one computes the same function, and
the new channels start learning at the first step."""
import keras
import numpy as np
import pytest

from lab2im.errors import InputError
from synthseg.nn.unet import UNetOptions, build_unet
from synthseg.nn.widen import widen_weights


def _trained_like(model, seed: int = 0):
    """Random weights everywhere, batch-norm moving statistics included (a fresh network's
    zero means and unit variances would hide a misplaced statistic)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if not layer.weights:
            continue
        weights = [rng.normal(0.0, 0.3, w.shape).astype(w.dtype) for w in layer.get_weights()]
        if "_bn" in layer.name:
            weights[3] = rng.uniform(0.5, 2.0, weights[3].shape).astype(weights[3].dtype)  # variances
        layer.set_weights(weights)
    return model


@pytest.mark.parametrize("ndim, narrow, wide", [
    (3, dict(n_levels=3, base_features=4), dict(n_levels=3, base_features=7)),
    (2, dict(n_levels=3, base_features=4, convs_per_level=1),
     dict(n_levels=3, base_features=4, convs_per_level=1, feature_multiplier=3)),
])
def test_the_wider_network_computes_the_same_function(ndim, narrow, wide):
    source = _trained_like(build_unet(5, options=UNetOptions(ndim=ndim, **narrow)))
    target = build_unet(5, options=UNetOptions(ndim=ndim, **wide))
    x = np.random.default_rng(1).normal(size=(2,) + (16,) * ndim + (1,)).astype("float32")
    before = np.asarray(target(x))
    widened = widen_weights(source, target)
    assert {"unet_down1_conv0", "unet_down1_bn0", "unet_up1_conv0"} <= set(widened)
    for training in (False, True):  # moving statistics and batch statistics alike
        expected = np.asarray(source(x, training=training))
        np.testing.assert_allclose(np.asarray(target(x, training=training)), expected, atol=2e-5)
    assert np.abs(before - np.asarray(source(x))).max() > 1e-3  # the untouched wide network differs
    # a new channel keeps its random weights: it computes something from the first step
    kernel = target.get_layer("unet_down1_conv0").get_weights()[0]
    assert np.abs(kernel[..., source.get_layer("unet_down1_conv0").get_weights()[0].shape[-1]:]).max() > 0


def test_decoder_inputs_keep_their_skip_and_upsampled_order():
    """The first decoder convolution reads [skip, upsampled]: each old input channel lands where
    the widened concatenation puts it, and the new positions feed nothing old."""
    source = _trained_like(build_unet(3, options=UNetOptions(n_levels=2, base_features=2, convs_per_level=1)))
    target = build_unet(3, options=UNetOptions(n_levels=2, base_features=3, convs_per_level=1))
    widen_weights(source, target)
    old = source.get_layer("unet_up0_conv0").get_weights()[0]  # (3, 3, 3, 2 + 4, 2)
    new = target.get_layer("unet_up0_conv0").get_weights()[0]  # (3, 3, 3, 3 + 6, 3)
    np.testing.assert_array_equal(new[..., [0, 1, 3, 4, 5, 6], :2], old)
    assert not new[..., [2, 7, 8], :2].any()


def test_new_channels_learn_at_the_first_step():
    source = _trained_like(build_unet(4, options=UNetOptions(n_levels=2, base_features=3)))
    target = build_unet(4, options=UNetOptions(n_levels=2, base_features=5))
    widen_weights(source, target)
    logits = target.get_layer("unet_logits")
    assert not logits.get_weights()[0][..., 3:, :].any()
    target.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 8, 8, 8, 1)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 4, (2, 8, 8, 8)), 4)
    target.train_on_batch(x, y)
    assert np.abs(logits.get_weights()[0][..., 3:, :]).max() > 1e-6


def test_other_networks_are_refused():
    source = build_unet(5, options=UNetOptions(n_levels=3, base_features=4))
    with pytest.raises(InputError, match="at least as wide"):
        widen_weights(source, build_unet(5, options=UNetOptions(n_levels=3, base_features=3)))
    with pytest.raises(InputError, match="different layers"):
        widen_weights(source, build_unet(5, options=UNetOptions(n_levels=2, base_features=8)))
    with pytest.raises(InputError, match="5 labels, the target 6"):
        widen_weights(source, build_unet(6, options=UNetOptions(n_levels=3, base_features=8)))
    with pytest.raises(InputError, match="kernel"):
        widen_weights(source, build_unet(5, options=UNetOptions(n_levels=3, base_features=8, kernel_size=5)))
