"""The generator in 2D: every layer and the composed model on (batch, H, W, 1) label maps."""
import keras
import numpy as np
import pytest
from keras import ops

from lab2im.layers import (
    IntensityAugmentation,
    RandomBiasField,
    RandomBlur,
    RandomFlip,
    RandomSpatialDeformation,
    SampleConditionalGMM,
    SimulateResolution,
)
from lab2im.model import labels_to_image_model
from lab2im.options import GeneratorOptions
from tests.layer_helpers import assert_config_round_trip, run

pytestmark = pytest.mark.backends

LABELS = [0, 2, 3, 41, 42]
OPTIONS = dict(generation_labels=LABELS, segmentation_labels=[0, 2, 0, 41, 0], generation_classes=[0, 1, 2, 1, 2],
               lr_pairs=[(2, 41), (3, 42)], output_shape=(24, 20), max_res_aniso=4.0, blur_sigma=0.5,
               noise_std=3.0, bias_prob=1.0)


@pytest.fixture
def slice_labels():
    """A 2D label map ``(28, 24)``: left (2, 3) for rows < 14, right (41, 42) below."""
    lab = np.zeros((28, 24), np.int32)
    lab[2:26, 3:21] = 2
    lab[14:26, 3:21] = 41
    lab[5:10, 8:16] = 3
    lab[17:22, 8:16] = 42
    return lab


# ---------------------------------------------------------------------------- the model
def test_2d_model_runs_every_stage_with_static_2d_shapes(slice_labels):
    model = labels_to_image_model(GeneratorOptions(**OPTIONS), slice_labels.shape, batch_size=2, seed=0)
    names = [layer.name for layer in model.layers]
    assert names == ["labels", "deformation", "flip", "gmm", "bias_field", "resolution", "blur", "intensity",
                     "convert_labels"]
    for layer in model.layers[1:]:
        assert tuple(layer.output.shape) == (2, 24, 20, 1), layer.name
    x = np.stack([slice_labels] * 2)[..., None]
    image, labels = (np.asarray(t) for t in model.predict_on_batch(x))
    assert image.shape == labels.shape == (2, 24, 20, 1)
    assert image.dtype == np.float32 and labels.dtype == np.int32
    assert 0.0 <= image.min() and image.max() <= 1.0 + 1e-6 and image.std() > 0.05
    assert set(np.unique(labels)) <= {0, 2, 41} and {2, 41} <= set(np.unique(labels))  # 3, 42: generation only
    assert not np.array_equal(image[0], image[1])  # each sample draws its own parameters
    assert not np.allclose(np.asarray(model.predict_on_batch(x)[0]), image)  # and each minibatch


def test_2d_same_seed_same_images_and_config_round_trip(slice_labels):
    model = labels_to_image_model(GeneratorOptions(**OPTIONS), slice_labels.shape, seed=4)
    clone = keras.Model.from_config(model.get_config())  # same layers, same seeds
    x = slice_labels[None, ..., None]
    for _ in range(2):
        for u, v in zip(model.predict_on_batch(x), clone.predict_on_batch(x)):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


# ---------------------------------------------------------------------------- the layers
def test_2d_rotation_by_90_degrees_is_rot90():
    lab = np.arange(15 * 15, dtype=np.int32).reshape(15, 15)
    layer = RandomSpatialDeformation(scaling=0, rotation=(90, 90), shearing=0, nonlin_std=0, seed=0)
    out, t = run(layer, lab[None, ..., None])
    assert ops.convert_to_numpy(t["affine"]).shape == (1, 2, 3)
    # output voxel x reads the input at R(90) x: out[i, j] = in[n - 1 - j, i]
    np.testing.assert_array_equal(out[0, ..., 0], np.rot90(lab, k=-1))


def test_2d_deformation_is_diffeomorphic():
    layer = RandomSpatialDeformation(scaling=0.2, rotation=15, shearing=0.05, nonlin_std=4.0, nonlin_scale=0.1,
                                     seed=3)
    layer.build((2, 48, 40, 1))
    t = layer.get_random_transformation(2)
    assert tuple(t["velocity"].shape) == (2, 5, 4, 2)
    coords = ops.convert_to_numpy(layer.coordinates(t))
    for b in range(2):
        grads = [np.gradient(coords[b, ..., i], axis=(0, 1)) for i in range(2)]
        det = np.linalg.det(np.stack([np.stack(g, axis=-1) for g in grads], axis=-2))[1:-1, 1:-1]
        assert det.min() > 0 and det.std() > 0.01


def test_2d_labels_are_resampled_nearest_and_structures_survive(slice_labels):
    layer = RandomSpatialDeformation(scaling=0.2, rotation=20, shearing=0.05, nonlin_std=3, seed=3)
    for _ in range(3):
        out, _ = run(layer, slice_labels[None, ..., None])
        assert out.dtype == slice_labels.dtype and not np.array_equal(out[0, ..., 0], slice_labels)
        assert set(np.unique(out)) == set(LABELS)  # no new values, every structure kept


def test_2d_flip_swaps_lateral_labels(slice_labels):
    x = slice_labels[None, ..., None]
    out, _ = run(RandomFlip(lr_pairs=[(2, 41), (3, 42)], axis=0, prob=1.0, seed=0), x)
    swap = np.vectorize({0: 0, 2: 41, 41: 2, 3: 42, 42: 3}.get)
    np.testing.assert_array_equal(out[0, ..., 0], swap(np.flip(slice_labels, 0)))


def test_2d_gmm_bias_and_intensity(slice_labels):
    x = slice_labels[None, ..., None]
    gmm = SampleConditionalGMM(LABELS, prior_stds=(0.0, 0.0), n_channels=2, seed=0)
    image, t = run(gmm, x)
    means = ops.convert_to_numpy(t["means"])[0]  # (labels, channels)
    assert image.shape == (1, 28, 24, 2)
    for i, label in enumerate(LABELS):
        np.testing.assert_allclose(image[0][slice_labels == label], means[i][None].repeat(
            (slice_labels == label).sum(), 0), rtol=1e-5)

    bias = RandomBiasField(std=0.5, scale=0.2, prob=1.0, seed=0)
    biased, t = run(bias, image)
    field = ops.convert_to_numpy(bias.field(t))
    assert field.shape == (1, 28, 24, 1) and field.min() > 0
    np.testing.assert_allclose(biased, image * field, rtol=1e-5)

    out, _ = run(IntensityAugmentation(noise_std=2.0, clip=(0, 300), gamma_std=0.3, seed=0), biased)
    assert out.shape == image.shape and out.min() >= 0 and out.max() <= 1 + 1e-6


def test_2d_resolution_draws_one_thick_axis_and_keeps_sampled_voxels():
    image = np.random.default_rng(0).normal(100, 20, size=(4, 30, 26, 1)).astype("float32")
    layer = SimulateResolution(voxel_size=1.0, max_res_aniso=6.0, prob_isotropic=0.0, seed=2)
    layer.build(image.shape)
    t = layer.get_random_transformation(4)
    factor = ops.convert_to_numpy(t["factor"])
    assert factor.shape == (4, 2) and np.all(np.sum(factor > 1 + 1e-3, axis=1) <= 1)
    # resolution loss along axis 1 only, no blur: every 3rd column is kept, the others interpolated
    fixed = {"factor": np.array([[1.0, 3.0]], "float32"), "sigma": np.zeros((1, 2), "float32"),
             "phase": np.zeros((1, 2), "float32")}
    out, _ = run(layer, image[:1], transformation={k: ops.convert_to_tensor(v) for k, v in fixed.items()})
    np.testing.assert_allclose(out[0, :, ::3], image[0, :, ::3], rtol=1e-5)
    np.testing.assert_allclose(out[0, :, 1], image[0, :, 0] + (image[0, :, 3] - image[0, :, 0]) / 3, rtol=1e-4)
    blurred, _ = run(RandomBlur(2.0, seed=0), image)
    assert blurred.shape == image.shape and blurred.std() < image.std()


def test_2d_layer_configs_round_trip(slice_labels):
    x = slice_labels[None, ..., None]
    image = np.random.default_rng(1).normal(100, 20, size=(1, 28, 24, 1)).astype("float32")
    assert_config_round_trip(RandomSpatialDeformation(rotation=10, output_shape=(20, 20), seed=1), x)
    assert_config_round_trip(SimulateResolution([1.0, 1.5], 3.0, 6.0, 0.3, seed=1), image)
