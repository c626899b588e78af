import numpy as np
import pytest
from keras import ops

from lab2im import ops as lops
from lab2im.layers import (
    IntensityAugmentation,
    RandomBiasField,
    RandomBlur,
    SimulateResolution,
)
from tests.layer_helpers import assert_config_round_trip, run

pytestmark = pytest.mark.backends

rng = np.random.default_rng(0)
NOISE = rng.normal(100, 20, size=(2, 20, 22, 18, 1)).astype("float32")


def test_bias_field_is_smooth_positive_and_optional():
    layer = RandomBiasField(std=0.5, scale=0.2, prob=1.0, seed=0)
    out, t = run(layer, NOISE)
    field = ops.convert_to_numpy(layer.field(t))
    assert field.min() > 0
    np.testing.assert_allclose(out, NOISE * field, rtol=1e-5)
    assert np.abs(np.diff(np.log(field), axis=1)).max() < 0.5  # smooth: small neighbour changes
    off, _ = run(RandomBiasField(std=0.5, prob=0.0, seed=0), NOISE)
    np.testing.assert_allclose(off, NOISE, rtol=1e-6)


def test_intensity_clip_normalise_gamma():
    layer = IntensityAugmentation(noise_std=0, clip=(80, 120), gamma_std=0.5, seed=0)
    out, t = run(layer, NOISE)
    gamma = ops.convert_to_numpy(t["gamma"]).reshape(-1)
    clipped = np.clip(NOISE, 80, 120)
    for b in range(2):
        norm = (clipped[b] - clipped[b].min()) / (clipped[b].max() - clipped[b].min())
        np.testing.assert_allclose(out[b], norm ** gamma[b], atol=1e-5)
    assert out.min() >= 0 and out.max() <= 1


def test_additive_noise_has_sampled_std():
    layer = IntensityAugmentation(noise_std=10, clip=None, normalise=False, gamma_std=0, seed=1)
    flat = np.full_like(NOISE, 50.0)
    out, t = run(layer, flat)
    np.testing.assert_allclose(out - flat, ops.convert_to_numpy(t["noise"]), atol=1e-4)
    assert 0 < (out - 50).std() < 10


def test_resolution_identity_when_not_degraded():
    layer = SimulateResolution(voxel_size=1.0, prob=0.0, seed=0)
    out, t = run(layer, NOISE)
    np.testing.assert_allclose(ops.convert_to_numpy(t["factor"]), 1.0)
    np.testing.assert_allclose(out, NOISE, rtol=1e-5)


def test_resolution_degrades_only_the_thick_axis():
    layer = SimulateResolution(voxel_size=1.0, seed=0)
    layer.build(NOISE.shape)
    t = {"factor": ops.convert_to_tensor(np.array([[1, 1, 4.0]] * 2, "float32")),
         "sigma": ops.convert_to_tensor(np.array([[0, 0, 2.0]] * 2, "float32")),
         "phase": ops.convert_to_tensor(np.zeros((2, 3), "float32"))}
    out, _ = run(layer, NOISE, transformation=t)
    rough = lambda a, ax: np.abs(np.diff(a, axis=ax)).mean()  # noqa: E731
    assert rough(out, 3) < 0.2 * rough(NOISE, 3)  # axis 2 (tensor axis 3) is smooth now
    # the other axes keep their detail: each output line along x is a mix of input lines
    assert rough(out, 1) > 0.2 * rough(NOISE, 1)


def test_downsample_upsample_is_piecewise_linear_through_samples():
    x = np.arange(20, dtype="float32") ** 2
    m = ops.convert_to_numpy(lops.downsample_upsample_matrices(20, np.array([3.0], "float32"),
                                                               np.array([0.0], "float32")))[0]
    y = m @ x
    np.testing.assert_allclose(y[[0, 3, 6, 9, 12, 15, 18]], x[[0, 3, 6, 9, 12, 15, 18]])
    np.testing.assert_allclose(y[1], x[0] + (x[3] - x[0]) / 3, rtol=1e-5)
    np.testing.assert_allclose(m.sum(1), 1.0, rtol=1e-6)


def test_blur_reduces_variance_and_keeps_mean():
    out, t = run(RandomBlur(max_sigma=3.0, seed=0), NOISE)
    assert out.std() < NOISE.std()
    assert abs(out.mean() - NOISE.mean()) < 1.0


def test_config_round_trips():
    assert_config_round_trip(RandomBiasField(0.3, 0.1, 0.8, seed=1), NOISE)
    assert_config_round_trip(IntensityAugmentation(2.0, (0, 150), True, 0.3, seed=1), NOISE)
    assert_config_round_trip(SimulateResolution([1.0, 1.0, 1.5], 3.0, 6.0, 0.3, seed=1), NOISE)
    assert_config_round_trip(RandomBlur(1.5, seed=1), NOISE)
