"""The U-Net: shapes, softmax output, parameter count, input-shape check, options, training."""
import json

import keras
import numpy as np
import pytest

from lab2im.errors import InputError
from synthseg.nn.losses import soft_dice_loss
from synthseg.nn.unet import (
    UNetOptions,
    build_unet,
    check_input_shape,
    required_multiple,
)

SMALL = dict(n_levels=3, base_features=4, convs_per_level=1)


def expected_parameter_count(n_labels: int, n_channels: int, o: UNetOptions) -> int:
    """Closed form of the U-Net's parameter count (BN: 4 per channel, of which 2 trainable)."""
    k = o.kernel_size ** o.ndim
    f = [o.features(level) for level in range(o.n_levels)]
    bias_or_bn = 4 if o.batch_norm else 1

    def block(c_in, c_out):
        n = 0
        for _ in range(o.convs_per_level):
            n += c_in * c_out * k + bias_or_bn * c_out
            c_in = c_out
        return n

    total, c_in = 0, n_channels
    for level in range(o.n_levels):
        total += block(c_in, f[level])
        c_in = f[level]
    for level in range(o.n_levels - 2, -1, -1):
        total += block(c_in + f[level], f[level])
        c_in = f[level]
    return total + c_in * n_labels + n_labels


@pytest.mark.backends
@pytest.mark.parametrize("ndim", [2, 3])
def test_output_shape_and_softmax(ndim):
    options = UNetOptions(ndim=ndim, **SMALL)
    model = build_unet(5, n_channels=2, options=options)
    assert model.input_shape == (None,) + (None,) * ndim + (2,)
    assert model.output_shape == (None,) + (None,) * ndim + (5,)
    spatial = (16, 8, 12)[:ndim]  # any multiple of 4 per axis
    x = np.random.default_rng(0).normal(size=(2, *spatial, 2)).astype("float32")
    y = np.asarray(model.predict_on_batch(x))
    assert y.shape == (2, *spatial, 5) and y.dtype == np.float32
    assert np.all(y >= 0)
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
    assert model.count_params() == expected_parameter_count(5, 2, options)


def test_default_parameter_count_matches_synthseg():  # architecture only: TF suffices (JAX inits slowly)
    model = build_unet(33)
    n = model.count_params()
    print(f"default 3D U-Net, 33 labels: {n:,} parameters")
    assert n == expected_parameter_count(33, 1, UNetOptions())  # 13,245,057
    assert 12e6 < n < 14.5e6  # SynthSeg reference: ~13M
    assert len(model.layers) > 0 and model.layers[-1].name == "unet_softmax"


def test_parameter_count_without_batch_norm_and_other_options():
    options = UNetOptions(ndim=2, n_levels=4, base_features=8, feature_multiplier=1.5, convs_per_level=3,
                          kernel_size=5, batch_norm=False, activation="relu", final_activation="linear")
    model = build_unet(7, 3, options)
    assert model.count_params() == expected_parameter_count(7, 3, options)
    assert [options.features(level) for level in range(4)] == [8, 12, 18, 27]


def test_required_multiple_and_check_input_shape():
    assert required_multiple(UNetOptions()) == 16
    assert required_multiple(UNetOptions(n_levels=1)) == 1
    assert check_input_shape([160, 192, 160]) == (160, 192, 160)
    assert check_input_shape((8, 12), UNetOptions(ndim=2, n_levels=3)) == (8, 12)
    with pytest.raises(InputError, match=r"\(30, 32, 33\).*multiple of 16.*\(32, 32, 48\)"):
        check_input_shape((30, 32, 33))
    with pytest.raises(InputError, match="has 4 axes"):
        check_input_shape((32, 32, 32, 1))
    with pytest.raises(InputError, match="multiple of 4"):
        check_input_shape((0, 8), UNetOptions(ndim=2, n_levels=3))


def test_options_round_trip_and_unknown_keys():
    options = UNetOptions(ndim=2, n_levels=4, base_features=16, activation="relu", batch_norm=False)
    d = json.loads(json.dumps(options.to_dict()))
    assert UNetOptions.from_dict(d) == options
    assert set(d) == {"ndim", "n_levels", "base_features", "feature_multiplier", "convs_per_level",
                      "kernel_size", "activation", "batch_norm", "final_activation"}
    with pytest.raises(InputError, match=r"unknown U-Net option\(s\) \['n_level'\]") as info:
        UNetOptions.from_dict({"n_level": 3}, source="unet.json")
    assert info.value.path == "unet.json"
    model = build_unet(3, options={"ndim": 2, **SMALL})  # a dict is accepted too
    assert model.output_shape == (None, None, None, 3)


@pytest.mark.parametrize("bad, message", [
    (dict(ndim=4), "ndim must be 2 or 3"),
    (dict(n_levels=0), "n_levels must be >= 1"),
    (dict(base_features=2.5), "base_features must be an integer"),
    (dict(convs_per_level=True), "convs_per_level must be an integer"),
    (dict(kernel_size=4), "kernel_size must be odd"),
    (dict(feature_multiplier=0.5), "feature_multiplier must be a number >= 1"),
    (dict(activation="nope"), "'nope' is not a Keras activation"),
    (dict(batch_norm="yes"), "batch_norm must be true or false"),
    (dict(final_activation="tanh"), "final_activation must be one of"),
])
def test_bad_options_are_input_errors(bad, message):
    with pytest.raises(InputError, match=message):
        UNetOptions(**bad)


def test_bad_build_arguments():
    with pytest.raises(InputError, match="n_labels >= 2"):
        build_unet(1)
    with pytest.raises(InputError, match="n_labels and n_channels must be >= 1"):
        build_unet(3, n_channels=0, options=UNetOptions(ndim=2, **SMALL))


@pytest.mark.backends
@pytest.mark.slow
def test_training_smoke_dice_decreases():
    """A 2-level 3D U-Net learns to threshold one smooth synthetic image."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 16)] * 3, indexing="ij"))
    image = np.sin(2 * grid[0]) + np.cos(3 * grid[1]) * grid[2] + 0.05 * rng.normal(size=grid.shape[1:])
    labels = np.digitize(image, np.quantile(image, [0.33, 0.66]))  # 3 labels, thresholds of intensity
    x = image[None, ..., None].astype("float32")
    y = np.eye(3, dtype="float32")[labels][None]
    model = build_unet(3, options=UNetOptions(n_levels=2, base_features=4))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=soft_dice_loss)
    history = model.fit(x, y, epochs=30, verbose=0).history["loss"]  # one step per epoch
    print(f"soft Dice loss: {history[0]:.3f} -> {history[-1]:.3f}")
    assert history[-1] < 0.7 * history[0]
