import numpy as np
import pytest
from keras import ops

from lab2im.layers import RandomSpatialDeformation
from tests.layer_helpers import assert_config_round_trip, run

pytestmark = pytest.mark.backends


def test_no_deformation_is_identity(blocks_labels):
    layer = RandomSpatialDeformation(scaling=0, rotation=0, shearing=0, nonlin_std=0, seed=1)
    x = blocks_labels[None, ..., None]
    out, _ = run(layer, x, x.astype("float32"))
    np.testing.assert_array_equal(out[0], x)
    np.testing.assert_allclose(out[1], x, atol=1e-5)


def test_labels_are_nearest_resampled_no_new_values(blocks_labels):
    layer = RandomSpatialDeformation(scaling=0.2, rotation=20, shearing=0.05, nonlin_std=3, seed=3)
    x = blocks_labels[None, ..., None]
    for _ in range(3):
        out, _ = run(layer, x)
        assert out.dtype == x.dtype
        assert set(np.unique(out)) <= set(np.unique(x))
        assert not np.array_equal(out, x)  # it did deform
        # every structure survives a moderate deformation
        assert set(np.unique(out)) == set(np.unique(x))


@pytest.mark.parametrize("shape, nonlin_scale", [((40, 40, 40), 0.1), ((96, 96, 96), 0.04)])
def test_jacobian_determinant_is_positive_everywhere(shape, nonlin_scale):
    # the second case is the default grid and integration resolution at a realistic size
    layer = RandomSpatialDeformation(scaling=0.2, rotation=15, shearing=0.012, nonlin_std=4.0,
                                     nonlin_scale=nonlin_scale, seed=7)
    layer.build((2, *shape, 1))
    t = layer.get_random_transformation(2)
    assert float(ops.convert_to_numpy(ops.max(ops.abs(t["velocity"])))) > 2  # a strong field
    coords = ops.convert_to_numpy(layer.coordinates(t))
    for b in range(2):
        grads = [np.gradient(coords[b, ..., i], axis=(0, 1, 2)) for i in range(3)]
        jac = np.stack([np.stack(g, axis=-1) for g in grads], axis=-2)  # d coord_i / d x_j
        det = np.linalg.det(jac[1:-1, 1:-1, 1:-1])
        assert det.min() > 0, f"folding: min det {det.min()}"
        assert det.std() > 0.01  # and it is not just an affine map


def test_crop_window_is_exact_copy_without_deformation(blocks_labels):
    layer = RandomSpatialDeformation(scaling=0, rotation=0, shearing=0, nonlin_std=0,
                                     output_shape=(16, 20, 12), seed=5)
    x = blocks_labels[None, ..., None]
    out, t = run(layer, x)
    assert out.shape == (1, 16, 20, 12, 1)
    # find the window: the crop is an exact sub-array of the input
    shift = ops.convert_to_numpy(t["affine"])[0, :, 3] + (np.array(x.shape[1:4]) - 1) / 2 \
        - (np.array([16, 20, 12]) - 1) / 2
    lo = np.round(shift).astype(int)
    np.testing.assert_allclose(shift, lo, atol=1e-5)
    np.testing.assert_array_equal(out[0, ..., 0], x[0, lo[0]:lo[0] + 16, lo[1]:lo[1] + 20, lo[2]:lo[2] + 12, 0])


def test_2d_inputs():
    x = np.zeros((1, 30, 30, 1), np.int32)
    x[0, 5:25, 10:20] = 4
    out, _ = run(RandomSpatialDeformation(rotation=30, nonlin_std=2, seed=0), x)
    assert out.shape == x.shape and set(np.unique(out)) == {0, 4}


def test_config_round_trip(blocks_labels):
    layer = RandomSpatialDeformation(scaling=(0.9, 1.3), rotation=10, output_shape=(16, 16, 16), seed=2)
    assert_config_round_trip(layer, blocks_labels[None, ..., None])


def test_rejects_bad_ranges():
    with pytest.raises(ValueError, match="scaling"):
        RandomSpatialDeformation(scaling=1.5)
    with pytest.raises(ValueError, match="rotation"):
        RandomSpatialDeformation(rotation=-3)
