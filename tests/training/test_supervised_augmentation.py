"""Augmentation extras of supervised training: mixup, per-augmentation probabilities, and the
one intensity standardisation shared by training and prediction (tiny volumes)."""
import json

import nibabel as nib
import numpy as np
import pytest

import synthseg.inference as P
from lab2im.errors import InputError
from lab2im.io import Volume
from lab2im.normalisation import (
    normalise_intensities,
    zscore_foreground,
    zscore_in_mask,
)
from synthseg.data.pairs import robust_normalise
from synthseg.inference import preprocessing
from synthseg.nn.losses import SegmentationLoss, weighted_cross_entropy
from synthseg.nn.unet import UNetOptions
from synthseg.training.augmentation import AugmentationOptions, Mixup, PairAugmentation
from synthseg.training.supervised import SupervisedOptions, supervised_training
from tests.training.test_supervised import LABELS, apply, block_map, write_pairs


def mixup_inputs(batch=6, seed=0):
    rng = np.random.default_rng(seed)
    x1, x2 = (rng.random((batch, 8, 8, 8, 1)).astype(np.float32) for _ in range(2))
    y1, y2 = (np.eye(3, dtype=np.float32)[rng.integers(0, 3, (batch, 8, 8, 8))] for _ in range(2))
    return x1, y1, x2, y2


# ---------------------------------------------------------------------------- mixup
@pytest.mark.backends
def test_mixup_is_a_convex_combination_with_the_drawn_weight():
    x1, y1, x2, y2 = mixup_inputs()
    layer = Mixup(prob=1.0, alpha=0.4, seed=3)
    t = layer.get_random_transformation(6)
    w = np.asarray(t["weight"])
    assert w.shape == (6,) and np.all((w >= 0) & (w <= 1)) and np.ptp(w) > 0.05
    image, target = (np.asarray(v) for v in layer.transform([x1, y1, x2, y2], t))
    wb = w.reshape(-1, 1, 1, 1, 1)
    np.testing.assert_allclose(image, wb * x1 + (1 - wb) * x2, atol=1e-6)
    np.testing.assert_allclose(target, wb * y1 + (1 - wb) * y2, atol=1e-6)
    np.testing.assert_allclose(target.sum(-1), 1.0, atol=1e-6)  # still a distribution per voxel


@pytest.mark.backends
def test_mixup_probability_zero_is_the_identity_and_a_seed_replays():
    x1, y1, x2, y2 = mixup_inputs()
    image, target = (np.asarray(v) for v in Mixup(prob=0.0, seed=1)([x1, y1, x2, y2]))
    np.testing.assert_array_equal(image, x1)
    np.testing.assert_array_equal(target, y1)
    a = [np.asarray(v) for v in Mixup(prob=0.5, alpha=1.0, seed=7)([x1, y1, x2, y2])]
    b = [np.asarray(v) for v in Mixup(prob=0.5, alpha=1.0, seed=7)([x1, y1, x2, y2])]
    c = [np.asarray(v) for v in Mixup(prob=0.5, alpha=1.0, seed=8)([x1, y1, x2, y2])]
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])
    w = np.asarray(Mixup(prob=0.5, alpha=1.0, seed=2).get_random_transformation(400)["weight"])
    assert 0.35 < np.mean(w < 1) < 0.65  # prob: the share of samples mixed
    with pytest.raises(ValueError, match="alpha > 0"):
        Mixup(alpha=0.0)


def test_the_losses_take_soft_targets():
    """Mixup targets are soft: cross-entropy (fixed weights) is linear in them, soft Dice finite."""
    x1, y1, x2, y2 = mixup_inputs(batch=2)
    probs = np.random.default_rng(1).dirichlet(np.ones(3), size=(2, 8, 8, 8)).astype(np.float32)
    w = 0.3
    soft = w * y1 + (1 - w) * y2
    ce = [float(weighted_cross_entropy(y, probs, weights=[1.0, 2.0, 3.0])) for y in (soft, y1, y2)]
    assert ce[0] == pytest.approx(w * ce[1] + (1 - w) * ce[2], rel=1e-5)
    loss = float(SegmentationLoss()(soft, probs))
    assert 0.0 < loss < 1.0


# ---------------------------------------------------------------------------- per-augmentation probabilities
def test_new_options_keep_old_runs_readable_and_are_checked():
    old = AugmentationOptions().to_dict()
    for key in ("affine_prob", "elastic_prob", "bias_prob", "gamma_prob", "mixup_prob", "mixup_alpha",
                "normalisation"):
        del old[key]
    o = AugmentationOptions.from_dict(old)  # an options.json written before these options
    assert (o.affine_prob, o.elastic_prob, o.bias_prob, o.gamma_prob, o.mixup_prob) == (1, 1, 1, 1, 0)
    assert o.normalisation == "percentile"
    with pytest.raises(InputError, match="augmentation elastic_prob must be in"):
        AugmentationOptions(elastic_prob=2)
    with pytest.raises(InputError, match="mixup_alpha must be > 0"):
        AugmentationOptions(mixup_alpha=0)
    with pytest.raises(InputError, match="normalisation must be one of"):
        AugmentationOptions(normalisation="minmax")


@pytest.mark.backends
def test_each_augmentation_has_its_own_probability():
    lab = np.stack([block_map(0), block_map(2)])[..., None]
    img = (lab / 42.0).astype(np.float32)
    base = dict(prob=1.0, rotation=30, scaling=0.2, nonlin_std=3.0, bias_std=0.0, gamma_std=0.0, flip_prob=0.0)
    # geometry off: only the crop is left, exact voxels
    none = PairAugmentation((16, 16, 16), AugmentationOptions(**base, affine_prob=0.0, elastic_prob=0.0), seed=1)
    out_img, out_lab = apply(none, img, lab)
    np.testing.assert_allclose(out_img * 42.0, out_lab, atol=1e-4)
    for i in range(2):  # a window of the input
        assert any(np.array_equal(out_lab[i, ..., 0], lab[i, x:x + 16, y:y + 16, z:z + 16, 0])
                   for x in range(9) for y in range(9) for z in range(9))
    # each part alone changes the geometry
    for kw in (dict(affine_prob=1.0, elastic_prob=0.0), dict(affine_prob=0.0, elastic_prob=1.0)):
        layer = PairAugmentation((24, 24, 24), AugmentationOptions(**base, **kw), seed=2)
        assert not np.array_equal(apply(layer, img, lab)[1], lab), kw
    # gamma_prob 0: the image is only min-max normalised (the gamma draws are replaced by 1)
    scan = np.random.default_rng(0).random((2, 16, 16, 16, 1)).astype(np.float32) * 3 + 1
    flat = dict(prob=1.0, affine_prob=0.0, elastic_prob=0.0, bias_std=0.0, flip_prob=0.0, gamma_std=1.0)
    out, _ = apply(PairAugmentation((16, 16, 16), AugmentationOptions(**flat, gamma_prob=0.0), seed=3),
                   scan, lab[:, :16, :16, :16])
    lo, hi = scan.min(axis=(1, 2, 3, 4), keepdims=True), scan.max(axis=(1, 2, 3, 4), keepdims=True)
    np.testing.assert_allclose(out, (scan - lo) / (hi - lo), atol=1e-5)
    out, _ = apply(PairAugmentation((16, 16, 16), AugmentationOptions(**flat, gamma_prob=1.0), seed=3),
                   scan, lab[:, :16, :16, :16])
    assert np.abs(out - (scan - lo) / (hi - lo)).max() > 0.05


# ---------------------------------------------------------------------------- intensity standardisation
def old_predict_normalise(data):
    """predict.normalise_intensities before it moved to lab2im.normalisation (reference)."""
    data = np.asarray(data, dtype=np.float32)
    lo, hi = (float(v) for v in np.percentile(data, (0.5, 99.5)))
    if hi <= lo:
        lo, hi = float(data.min()), float(data.max())
    if hi <= lo:
        return np.zeros_like(data)
    return np.clip((data - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)


def test_one_percentile_normalisation_for_training_and_prediction():
    rng = np.random.default_rng(0)
    scan = rng.gamma(2.0, 30.0, (20, 20, 20)).astype(np.float32)
    np.testing.assert_array_equal(normalise_intensities(scan), old_predict_normalise(scan))
    np.testing.assert_array_equal(preprocessing.normalise_intensities(scan), old_predict_normalise(scan))
    np.testing.assert_array_equal(robust_normalise(scan), old_predict_normalise(scan))
    mostly_flat = np.zeros((20, 20, 20), np.float32)
    mostly_flat[0, 0, :3] = [5, 10, 20]  # the percentiles coincide: min and max are used (both)
    np.testing.assert_array_equal(robust_normalise(mostly_flat), old_predict_normalise(mostly_flat))
    assert robust_normalise(mostly_flat).max() == 1.0
    two = np.stack([scan, 2 * scan + 7], axis=-1)  # channels separately
    np.testing.assert_allclose(normalise_intensities(two)[..., 1], old_predict_normalise(scan), atol=1e-6)


def test_zscore_within_the_foreground():
    rng = np.random.default_rng(1)
    scan = np.zeros((24, 24, 24), np.float32)
    scan[4:20, 4:20, 4:20] = rng.normal(100, 20, (16, 16, 16))
    z = normalise_intensities(scan, "zscore")
    inside = np.zeros(scan.shape, bool)
    inside[4:20, 4:20, 4:20] = True
    fg = z[inside & (z != 0)]
    assert np.all(z[~inside] == 0)
    assert abs(fg.mean()) < 0.05 and 0.9 < fg.std() < 1.1
    # an increasing linear map of the intensities (another scanner's units) changes nothing
    np.testing.assert_allclose(normalise_intensities(3 * scan + 0, "zscore"), z, atol=1e-5)
    # the in-graph version agrees with NumPy
    x = normalise_intensities(scan)
    graph = np.asarray(zscore_in_mask(x[None, ..., None], x[None, ..., None] > 0))[0, ..., 0]
    np.testing.assert_allclose(graph, zscore_foreground(x), atol=1e-4)
    assert np.all(zscore_foreground(np.zeros((8, 8, 8))) == 0)


@pytest.mark.slow
def test_mixup_and_zscore_training_and_prediction_use_the_same_standardisation(tmp_path):
    images, labels = write_pairs(tmp_path / "d", [0, 1, 2])
    aug = AugmentationOptions(prob=0.5, mixup_prob=1.0, mixup_alpha=0.4, normalisation="zscore",
                              flip_prob=0.0, elastic_prob=0.5)
    result = supervised_training(images, labels, tmp_path / "run", unet=UNetOptions(n_levels=2, base_features=4),
                                 augmentation=aug, validation=(images, labels),
                                 options=SupervisedOptions(steps=4, steps_per_checkpoint=2, learning_rate=1e-3,
                                                           progress=False, tensorboard=False))
    assert result.step == 4 and np.isfinite(result.last_loss) and result.best_dice is not None
    saved = json.loads((tmp_path / "run" / "options.json").read_text())["augmentation"]
    assert saved["mixup_prob"] == 1.0 and saved["normalisation"] == "zscore"

    model = P.load_model(tmp_path / "run")
    assert model.normalisation == "zscore" and model.labels.tolist() == LABELS
    nii = nib.load(images / "sub-00.nii.gz")
    vol = Volume(np.asarray(nii.dataobj, np.float32), nii.affine)
    prep = P.prepare_volume(vol, model)
    np.testing.assert_array_equal(prep.image, normalise_intensities(vol.data, "zscore"))
    seg = P.segment_volume(vol, model, flip=False)
    assert seg.native_segmentation().shape == vol.shape

    resumed = supervised_training(images, labels, tmp_path / "run", resume=True, validation=(images, labels),
                                  options=SupervisedOptions(steps=6, steps_per_checkpoint=2, progress=False,
                                                            tensorboard=False))
    assert resumed.step == 6


def test_augmentation_streams_are_seeded_by_name_and_keep_their_seeds():
    from lab2im.model import named_seed
    from synthseg.training.augmentation import AUGMENTATION_SEED_ORDER

    before = [int(s) % (2**31 - 1) for s in np.random.SeedSequence([5, 17]).generate_state(5)]  # by position
    assert [named_seed([5, 17], n, AUGMENTATION_SEED_ORDER) for n in AUGMENTATION_SEED_ORDER] == before
    added = named_seed([5, 17], "a_new_stage", AUGMENTATION_SEED_ORDER)
    assert added not in before and added == named_seed([5, 17], "a_new_stage", ())
    layer = PairAugmentation((8, 8, 8), seed=5)
    seeds = {stage.name: sub.seed for stage, sub in layer.stages}
    assert [seeds["deformation"], seeds["bias_field"], seeds["intensity"]] == [before[1], before[3], before[4]]


def test_the_pair_augmentation_runs_the_generators_stage_table():
    """Its layers are the generator's stages marked for pairs, in the table's order and built by
    the same builders; a stage marked for pairs in the table is used here without other code."""
    import dataclasses

    import lab2im.model as M
    import synthseg.training.augmentation as A

    layer = PairAugmentation((8, 8, 8), AugmentationOptions(noise_std=0.02), seed=5)
    assert [s.name for s, _ in layer.stages] == [s.name for s in M.STAGE_TABLE if s.pairs]
    assert [s.name for s, _ in layer.stages] == ["deformation", "flip", "bias_field", "intensity"]
    assert all(sub.name == stage.name for stage, sub in layer.stages)
    # the blur stage offered to pairs: one row's flag and the options field
    blur_row = next(s for s in M.STAGE_TABLE if s.name == "blur")
    table = tuple(dataclasses.replace(s, pairs=True) if s is blur_row else s for s in M.STAGE_TABLE)

    @dataclasses.dataclass
    class WithBlur(AugmentationOptions):
        blur_sigma: float = 1.0

    pairs = tuple(s for s in table if s.pairs)
    old = A.PAIR_STAGES
    try:
        A.PAIR_STAGES = pairs
        blurred = PairAugmentation((8, 8, 8), WithBlur(prob=1.0), seed=5)
    finally:
        A.PAIR_STAGES = old
    assert [s.name for s, _ in blurred.stages] == ["deformation", "flip", "bias_field", "blur", "intensity"]
    rng = np.random.default_rng(0)
    image = rng.random((2, 10, 10, 10, 1)).astype("float32")
    labels = rng.integers(0, 3, (2, 10, 10, 10, 1)).astype("int32")
    out_image, out_labels = (np.asarray(t) for t in blurred([image, labels]))
    assert out_image.shape == (2, 8, 8, 8, 1) and out_labels.shape == (2, 8, 8, 8, 1)
    assert np.isfinite(out_image).all()
