"""The composed labels-to-image model: outputs, seeding and serialisation."""
import numpy as np
import pytest

from lab2im.model import StageContext, labels_to_image_model, stage_seeds
from lab2im.options import GeneratorOptions

pytestmark = pytest.mark.backends

OPTIONS = dict(generation_labels=[0, 2, 3, 41, 42], segmentation_labels=[0, 2, 0, 41, 0],
               generation_classes=[0, 1, 2, 1, 2], lr_pairs=[(2, 41), (3, 42)],
               output_shape=(16, 20, 16), max_res_aniso=4.0)


def generate(blocks_labels, seed, n=1, **overrides):
    model = labels_to_image_model(GeneratorOptions(**{**OPTIONS, **overrides}), blocks_labels.shape, seed=seed)
    x = blocks_labels[None, ..., None]
    return [[np.asarray(t) for t in model.predict_on_batch(x)] for _ in range(n)]


def test_outputs_shapes_ranges_and_segmentation_labels(blocks_labels):
    (image, labels), = generate(blocks_labels, seed=0)
    assert image.shape == (1, 16, 20, 16, 1) and image.dtype == np.float32
    assert labels.shape == (1, 16, 20, 16, 1) and labels.dtype == np.int32
    assert 0.0 <= image.min() and image.max() <= 1.0 + 1e-6
    assert set(np.unique(labels)) <= {0, 2, 41}  # 3 and 42 are generation-only here


def test_same_seed_same_images_different_seed_different_images(blocks_labels):
    a = generate(blocks_labels, seed=11, n=2)
    b = generate(blocks_labels, seed=11, n=2)
    c = generate(blocks_labels, seed=12, n=2)
    for (ia, la), (ib, lb) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(la, lb)
    assert not np.allclose(a[0][0], c[0][0])
    assert not np.allclose(a[0][0], a[1][0])  # successive minibatches differ too


def test_stage_seeds_are_distinct_and_reproducible():
    s = stage_seeds(3)
    assert s == stage_seeds(3) and len(set(s.values())) == len(s)
    assert stage_seeds(None)["gmm"] is None


def test_model_config_round_trip_rebuilds_identical_model(blocks_labels):
    import keras

    model = labels_to_image_model(GeneratorOptions(**OPTIONS), blocks_labels.shape, seed=5)
    clone = keras.Model.from_config(model.get_config())
    assert [type(layer).__name__ for layer in clone.layers] == [type(layer).__name__ for layer in model.layers]
    for a, b in zip(model.layers, clone.layers):
        assert a.get_config() == b.get_config()
    x = blocks_labels[None, ..., None]
    for u, v in zip(model.predict_on_batch(x), clone.predict_on_batch(x)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=1e-5)


def test_2d_label_map():
    lab = np.zeros((40, 36), np.int32)
    lab[5:35, 5:18], lab[5:35, 18:31] = 2, 41
    opts = GeneratorOptions(generation_labels=[0, 2, 41], lr_pairs=[(2, 41)], output_shape=(32, 32))
    image, labels = labels_to_image_model(opts, lab.shape, seed=0).predict_on_batch(lab[None, ..., None])
    assert np.asarray(image).shape == (1, 32, 32, 1) and set(np.unique(labels)) <= {0, 2, 41}


# ---------------------------------------------------------------------------- the stage table
ALL_ON = dict(OPTIONS, generation_labels=[0, 2, 3, 41, 42, 100, 101], segmentation_labels=[0, 2, 0, 41, 0, 0, 0],
              generation_classes=[0, 1, 2, 1, 2, 3, 4], partitions=[[0, 100, 101]], partition_prob=1.0,
              blur_sigma=0.5, bias_prob=1.0, flip_prob=0.5)
#: ALL_ON with the stage the reference composition predates (boundary moves) switched on too
EVERY_STAGE = dict(ALL_ON, morphology_rules=[([41], [2]), ([3, 42], [2])])


def reference_model(options, input_shape, seed):
    """The composition as it was written before the stage table (positional seeds): the table
    must give the same images for today's seeds."""
    import keras

    from lab2im import layers as L

    o = options
    states = np.random.SeedSequence(int(seed)).generate_state(8)
    seeds = {n: int(s) % (2**31 - 1) for n, s in zip(
        ("deformation", "flip", "gmm", "bias_field", "resolution", "blur", "intensity", "partition"), states)}
    x = keras.Input(shape=(*input_shape, 1), batch_size=1, dtype="int32", name="labels")
    lab = L.RandomSpatialDeformation(
        scaling=o.scaling, rotation=o.rotation, shearing=o.shearing, translation=o.translation,
        nonlin_std=o.nonlin_std, nonlin_scale=o.nonlin_scale, integration_steps=o.integration_steps,
        integration_downsample=o.integration_downsample, output_shape=o.output_shape,
        seed=seeds["deformation"], name="deformation")(x)
    lab = L.RandomFlip(o.lr_pairs, axis=o.flip_axis, prob=o.flip_prob, seed=seeds["flip"], name="flip")(lab)
    lab = L.RandomPartition(o.partitions, o.partition_scale, o.partition_prob, seed=seeds["partition"],
                            name="partition")(lab)
    img = L.SampleConditionalGMM(o.generation_labels, o.generation_classes, prior_means=o.prior_array("prior_means"),
                                 prior_stds=o.prior_array("prior_stds"), prior_distribution=o.prior_distribution,
                                 n_channels=o.n_channels, seed=seeds["gmm"], name="gmm")(lab)
    img = L.RandomBiasField(o.bias_std, o.bias_scale, o.bias_prob, seed=seeds["bias_field"], name="bias_field")(img)
    img = L.SimulateResolution(o.voxel_size, o.max_res_iso, o.max_res_aniso, o.prob_isotropic,
                               seed=seeds["resolution"], name="resolution")(img)
    img = L.RandomBlur(o.blur_sigma, seed=seeds["blur"], name="blur")(img)
    img = L.IntensityAugmentation(o.noise_std, o.clip, normalise=True, gamma_std=o.gamma_std,
                                  seed=seeds["intensity"], name="intensity")(img)
    out = L.ConvertLabels(o.generation_labels, o.segmentation_labels or o.generation_labels,
                          name="convert_labels")(lab)
    return keras.Model(x, [img, out])


def test_todays_seeds_give_todays_images(blocks_labels):
    options = GeneratorOptions(**ALL_ON)
    new = labels_to_image_model(options, blocks_labels.shape, seed=7)
    old = reference_model(options, blocks_labels.shape, seed=7)
    x = blocks_labels[None, ..., None]
    for _ in range(2):  # and the next minibatch of the stream
        for a, b in zip(new.predict_on_batch(x), old.predict_on_batch(x)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_seeds_come_from_stage_names_not_positions():
    from lab2im.model import LEGACY_SEED_ORDER, STAGE_TABLE, stage_seed

    states = np.random.SeedSequence(3).generate_state(len(LEGACY_SEED_ORDER))
    assert [stage_seed(3, n) for n in LEGACY_SEED_ORDER] == [int(s) % (2**31 - 1) for s in states]
    # a new stage's seed depends on its name only: the same wherever it would be inserted
    new = stage_seed(3, "new_stage")
    assert new == stage_seed(3, "new_stage") and new not in stage_seeds(3).values()
    assert stage_seed(4, "new_stage") != new and stage_seed(3, "other_stage") != new
    assert set(stage_seeds(3)) == {s.name for s in STAGE_TABLE} and stage_seed(None, "gmm") is None


def test_generate_with_parameters_explains_and_replays_a_minibatch(blocks_labels):
    from lab2im.model import generate_with_parameters, replay

    options = GeneratorOptions(**EVERY_STAGE)
    x = blocks_labels[None, ..., None]
    plain = labels_to_image_model(options, blocks_labels.shape, seed=5)
    explained = labels_to_image_model(options, blocks_labels.shape, seed=5)
    image, labels = plain.predict_on_batch(x)
    image2, labels2, params = generate_with_parameters(explained, x)
    np.testing.assert_allclose(image2, np.asarray(image), atol=1e-5)  # the same draw of the stream
    np.testing.assert_array_equal(labels2, np.asarray(labels))
    assert {"deformation", "flip", "morphology", "partition", "gmm", "bias_field", "resolution", "blur",
            "intensity"} <= set(params)
    assert all(isinstance(v, np.ndarray) for t in params.values() for v in t.values())
    again, labels3 = replay(explained, x, params)
    np.testing.assert_array_equal(again, image2)
    np.testing.assert_array_equal(labels3, labels2)
    # the stream went on: the next minibatch differs, its replay does not
    image4, _, params4 = generate_with_parameters(explained, x)
    assert not np.allclose(image4, image2)
    np.testing.assert_array_equal(replay(explained, x, params4)[0], image4)


def _stage_input(stage, shape):
    from lab2im.model import LABELS

    rng = np.random.default_rng(0)
    if stage.reads == LABELS:
        lab = np.zeros(shape, np.int32)
        lab[tuple(slice(2, n - 2) for n in shape)] = 2
        lab[tuple(slice(n // 2, n - 2) for n in shape)] = 41
        return lab[None, ..., None]
    return rng.random((1, *shape, 1)).astype(np.float32)


def _stage_layer(stage, ndim, seed):
    shape = (24, 20, 16)[:ndim]
    options = GeneratorOptions(**{**EVERY_STAGE, "output_shape": (16, 16, 16)[:ndim]})
    return stage.build(options, seed, StageContext(output_shape=options.output_shape)), shape


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("name", ["deformation", "flip", "morphology", "partition", "gmm", "bias_field", "resolution",
                                  "blur", "intensity"])
def test_every_stage_round_trips_is_seeded_and_replays(name, ndim):
    """One test over every row of the stage table: config round trip, the same seed draws the
    same parameters, parameters replay exactly, in 2D and 3D."""
    from lab2im.model import STAGE_TABLE
    from tests.layer_helpers import assert_config_round_trip, run

    stage = next(s for s in STAGE_TABLE if s.name == name)
    layer, shape = _stage_layer(stage, ndim, seed=11)
    x = _stage_input(stage, shape)
    assert layer is not None and layer.name == name
    twin, _ = _stage_layer(stage, ndim, seed=11)
    out, t = run(layer, x)
    out_twin, t_twin = run(twin, x)
    for key in t:
        np.testing.assert_array_equal(np.asarray(t[key]), np.asarray(t_twin[key]))
    np.testing.assert_array_equal(out, out_twin)
    replayed, _ = run(layer, x, transformation=t)
    np.testing.assert_array_equal(replayed, out)
    assert_config_round_trip(_stage_layer(stage, ndim, seed=11)[0], x)


@pytest.mark.parametrize("name", ["deformation", "flip", "bias_field", "intensity"])
def test_a_gated_off_sample_gets_the_identity_and_a_gated_on_one_its_draw(name):
    """``gated``: the samples switched off get the layer's identity (a deformation keeps only
    its crop window: an exact copy of voxels), the others exactly the drawn parameters."""
    from lab2im.model import IMAGE, STAGE_TABLE

    stage = next(s for s in STAGE_TABLE if s.name == name)
    assert stage.pairs
    options = GeneratorOptions(**{**ALL_ON, "noise_std": 0.1, "flip_prob": 1.0, "bias_prob": 1.0})
    layer = stage.build(options, 3, StageContext(kinds=(IMAGE,), output_shape=(12, 12, 12)))
    rng = np.random.default_rng(0)
    x = rng.random((2, 16, 14, 12, 1)).astype(np.float32)
    layer.build(x.shape)
    t = layer.get_random_transformation(2)
    on = np.array([True, False])
    if layer.GATED_PARTS:  # every part switched together, as a dict or as one gate
        out_dict = np.asarray(layer.transform(x, layer.gated(t, dict.fromkeys(layer.GATED_PARTS, on))))
    out = np.asarray(layer.transform(x, layer.gated(t, on)))
    drawn = np.asarray(layer.transform(x, t))
    identity = np.asarray(layer.transform(x, layer.gated(t, np.array([False, False]))))
    np.testing.assert_allclose(out[0], drawn[0], atol=1e-6)
    np.testing.assert_allclose(out[1], identity[1], atol=1e-6)
    if layer.GATED_PARTS:
        np.testing.assert_allclose(out_dict, out, atol=1e-6)
    if name == "deformation":  # only the crop window remains: voxels copied
        window = x[1]
        assert any(np.array_equal(identity[1], window[i:i + 12, j:j + 12, :12])
                   for i in range(5) for j in range(3))
    elif name in ("flip", "bias_field"):
        np.testing.assert_allclose(identity, x, atol=1e-6)
    else:  # intensity: gamma 1 and no noise leave min-max normalisation only
        lo, hi = x[1].min(), x[1].max()
        np.testing.assert_allclose(identity[1], (x[1] - lo) / (hi - lo), atol=1e-5)
    assert not np.allclose(drawn[1], identity[1])  # the draw did change that sample


def test_resolution_prob_leaves_that_share_of_samples_at_full_resolution(blocks_labels):
    """``resolution_prob``: the share of samples degraded at all; the others keep the label
    maps' voxel size (no blur). Its draw is made either way, so other stages' draws are unchanged."""
    from lab2im.errors import InputError
    from lab2im.model import generate_with_parameters

    def factors(prob):
        options = GeneratorOptions(**{**ALL_ON, "resolution_prob": prob})
        model = labels_to_image_model(options, blocks_labels.shape, batch_size=64, seed=3)
        _, _, drawn = generate_with_parameters(model, np.repeat(blocks_labels[None, ..., None], 64, 0))
        return drawn

    every, none, half = factors(1.0), factors(0.0), factors(0.5)
    degraded = lambda d: np.any(np.asarray(d["resolution"]["factor"]) > 1.001, axis=1)  # noqa: E731
    assert degraded(every).mean() > 0.9 and not degraded(none).any()
    assert 0.25 < degraded(half).mean() < 0.75
    np.testing.assert_array_equal(np.asarray(every["gmm"]["means"]), np.asarray(half["gmm"]["means"]))
    with pytest.raises(InputError, match="resolution_prob must be in"):
        GeneratorOptions(**{**ALL_ON, "resolution_prob": 1.5})
