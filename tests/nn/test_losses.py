"""Segmentation losses and metrics against NumPy references."""
import keras
import numpy as np
import pytest
from keras import ops

from lab2im.errors import InputError
from synthseg.nn.losses import (
    MeanDice,
    SegmentationLoss,
    WarmupCallback,
    hard_dice,
    soft_dice_loss,
    soft_dice_per_label,
    weighted_cross_entropy,
)


def one_hot(labels, k):
    return np.eye(k, dtype="float32")[labels]


def random_probs(rng, shape):
    logits = rng.normal(size=shape)
    p = np.exp(logits)
    return (p / p.sum(-1, keepdims=True)).astype("float32")


def np_(x):
    return ops.convert_to_numpy(x)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.backends
def test_perfect_and_disjoint_predictions(rng):
    labels = rng.integers(0, 4, size=(2, 8, 8, 8))
    y = one_hot(labels, 4)
    assert float(np_(soft_dice_loss(y, y))) == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(hard_dice(labels, labels, [0, 1, 2, 3]), 1.0)
    shifted = one_hot((labels + 1) % 4, 4)  # every voxel wrong
    assert float(np_(soft_dice_loss(y, shifted))) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(hard_dice(labels, (labels + 1) % 4, [0, 1, 2, 3]), 0.0)


@pytest.mark.backends
def test_soft_dice_per_label_matches_numpy(rng):
    y = one_hot(rng.integers(0, 5, size=(3, 6, 7, 4)), 5)
    p = random_probs(rng, y.shape)
    inter = (y * p).sum((0, 1, 2, 3))
    expected = (2 * inter + 1e-5) / (y.sum((0, 1, 2, 3)) + p.sum((0, 1, 2, 3)) + 1e-5)
    got = np_(soft_dice_per_label(y, p))
    assert got.shape == (5,)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(np_(soft_dice_loss(y, p)), 1 - expected.mean(), rtol=1e-5)
    np.testing.assert_allclose(np_(soft_dice_loss(y, p, include_background=False)), 1 - expected[1:].mean(),
                               rtol=1e-5)
    # 2D inputs too: (B, H, W, K)
    np.testing.assert_allclose(np_(soft_dice_per_label(y[:, 0], p[:, 0])),
                               (2 * (y[:, 0] * p[:, 0]).sum((0, 1, 2)) + 1e-5)
                               / (y[:, 0].sum((0, 1, 2)) + p[:, 0].sum((0, 1, 2)) + 1e-5), rtol=1e-5)


def test_hard_dice_empty_labels():
    a = np.array([[0, 1, 1], [2, 2, 0]])
    b = np.array([[0, 1, 0], [2, 0, 0]])
    np.testing.assert_allclose(hard_dice(a, b, [0, 1, 2]), [2 * 2 / 6, 2 / 3, 2 / 3])
    assert hard_dice(a, b, [7]).tolist() == [1.0]  # absent from both
    assert hard_dice(a, np.zeros_like(a), [1]).tolist() == [0.0]  # absent from the prediction
    assert hard_dice(np.zeros_like(a), a, [1]).tolist() == [0.0]  # absent from the truth
    with pytest.raises(InputError, match="different shapes"):
        hard_dice(a, b[:1], [0])


@pytest.mark.backends
def test_weighted_cross_entropy(rng):
    labels = rng.choice(3, p=[0.8, 0.15, 0.05], size=(2, 10, 10))
    y = one_hot(labels, 3)
    p = random_probs(rng, y.shape)
    ce = -np.log(p)
    # explicit weights: plain weighted mean
    w = np.array([0.5, 1.0, 2.0])
    expected = (y * ce * w).sum(-1).mean()
    np.testing.assert_allclose(np_(weighted_cross_entropy(y, p, w)), expected, rtol=1e-5)
    np.testing.assert_allclose(np_(weighted_cross_entropy(y, p, [1, 1, 1])), (y * ce).sum(-1).mean(), rtol=1e-5)
    # inverse frequency: mean over labels of each label's mean CE (mean voxel weight 1)
    per_label = [ce[..., k][labels == k].mean() for k in range(3)]
    np.testing.assert_allclose(np_(weighted_cross_entropy(y, p)), np.mean(per_label), rtol=1e-5)
    # absent label: weight 0, the others share the normalisation
    y2 = one_hot(np.where(labels == 2, 0, labels), 3)
    per_label = [ce[..., k][y2[..., k] > 0].mean() for k in range(2)]
    np.testing.assert_allclose(np_(weighted_cross_entropy(y2, p)), np.mean(per_label), rtol=1e-5)
    # clipping: a zero probability on the true label gives a large but finite loss
    hard = one_hot((labels + 1) % 3, 3)
    value = float(np_(weighted_cross_entropy(y, hard)))
    assert np.isfinite(value) and value == pytest.approx(-np.log(1e-7), rel=1e-3)


@pytest.mark.backends
def test_segmentation_loss_warmup_switches_from_ce_to_dice(rng):
    y = one_hot(rng.integers(0, 3, size=(1, 6, 6, 6)), 3)
    p = random_probs(rng, y.shape)
    ce, dice = float(np_(weighted_cross_entropy(y, p))), float(np_(soft_dice_loss(y, p)))
    loss = SegmentationLoss(warmup_steps=3)
    callback = WarmupCallback(loss)
    for step in range(5):
        callback.on_train_batch_begin(step)  # no model attached: epoch start 0, step = batch
        expected = ce if step < 3 else dice
        assert float(np_(loss(y, p))) == pytest.approx(expected, rel=1e-5), step
    assert SegmentationLoss()(y, p) is not None and float(np_(SegmentationLoss()(y, p))) == pytest.approx(dice)
    assert loss.set_step(0) is True and loss.set_step(1) is False  # back to CE, then no change
    # config round trip (the blend weight is state, not config)
    config = SegmentationLoss(warmup_steps=10, include_background=False, ce_weights=[1, 2, 3]).get_config()
    clone = SegmentationLoss.from_config(config)
    assert (clone.warmup_steps, clone.include_background, clone.ce_weights) == (10, False, [1.0, 2.0, 3.0])
    assert keras.losses.deserialize(keras.losses.serialize(clone)).get_config() == config
    with pytest.raises(InputError, match="warmup_steps"):
        SegmentationLoss(warmup_steps=-1)


@pytest.mark.backends
def test_cross_entropy_can_stay_in_the_loss_after_the_warm_up(rng):
    """``ce_after_warmup``: the blend is 1 in the warm-up, then that share of cross-entropy
    stays (0.1 revived the first shipped model's dead CSF label: Dice 0.000 -> 0.108 in 150 steps
    from its step-9,000 checkpoint, where Dice alone left it at 0.000)."""
    y = one_hot(rng.integers(0, 3, size=(1, 6, 6, 6)), 3)
    p = random_probs(rng, y.shape)
    ce, dice = float(np_(weighted_cross_entropy(y, p))), float(np_(soft_dice_loss(y, p)))
    loss = SegmentationLoss(warmup_steps=2, ce_after_warmup=0.25)
    callback = WarmupCallback(loss)
    for step, expected in enumerate([ce, ce, 0.25 * ce + 0.75 * dice, 0.25 * ce + 0.75 * dice]):
        callback.on_train_batch_begin(step)
        assert float(np_(loss(y, p))) == pytest.approx(expected, rel=1e-5), step
    no_warmup = SegmentationLoss(ce_after_warmup=0.5)  # from the first step
    assert float(np_(no_warmup(y, p))) == pytest.approx(0.5 * ce + 0.5 * dice, rel=1e-5)
    clone = SegmentationLoss.from_config(loss.get_config())
    assert clone.ce_after_warmup == 0.25 and clone.blend_for_step(5) == 0.25
    for bad in (-0.1, 1.5, True, "some"):
        with pytest.raises(InputError, match="ce_after_warmup must be a number in"):
            SegmentationLoss(ce_after_warmup=bad)


@pytest.mark.backends
@pytest.mark.slow
def test_warmup_inside_compiled_fit():
    """The switch reaches a compiled train step (TF: live variable; JAX: retrace)."""
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 4, 4, 1)).astype("float32")
    y = one_hot(rng.integers(0, 2, size=(1, 4, 4)), 2)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 1, activation="softmax")])
    loss = SegmentationLoss(warmup_steps=2)
    # frozen model (learning rate 0): the loss changes by the blend only
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss, metrics=[MeanDice(2, include_background=True)])
    p = np.asarray(model.predict_on_batch(x))
    ce, dice = float(np_(weighted_cross_entropy(y, p))), float(np_(soft_dice_loss(y, p)))
    assert abs(ce - dice) > 0.05
    history = model.fit(x, y, epochs=4, verbose=0, callbacks=[WarmupCallback(loss)]).history
    np.testing.assert_allclose(history["loss"], [ce, ce, dice, dice], rtol=1e-4)
    np.testing.assert_allclose(history["mean_dice"], hard_dice(y.argmax(-1), p.argmax(-1), [0, 1]).mean(), rtol=1e-5)
    assert int(np_(model.optimizer.iterations)) == 4


@pytest.mark.backends
def test_mean_dice_metric_matches_hard_dice(rng):
    truth = rng.integers(0, 3, size=(2, 6, 6, 6))  # label 3 only predicted, label 4 nowhere
    probs = random_probs(rng, truth.shape + (5,))
    probs[..., 4] = 0.0
    pred = probs.argmax(-1)
    assert 3 in pred and 4 not in pred
    expected = hard_dice(truth, pred, [0, 1, 2, 3, 4])
    assert expected[3] == 0.0 and expected[4] == 1.0
    metric = MeanDice(5, include_background=True)
    metric.update_state(one_hot(truth[:1], 5), probs[:1])
    metric.update_state(truth[1:, ..., None], probs[1:])  # integer labels with a channel axis work too
    np.testing.assert_allclose(np_(metric.per_label()), expected, rtol=1e-6)
    assert float(np_(metric.result())) == pytest.approx(expected.mean(), rel=1e-6)
    no_bg = MeanDice(5)
    no_bg.update_state(one_hot(truth, 5), probs)
    assert float(np_(no_bg.result())) == pytest.approx(expected[1:].mean(), rel=1e-6)
    no_bg.reset_state()
    assert float(np_(no_bg.result())) == 1.0  # nothing seen: every label absent from both
    perfect = MeanDice(5)
    perfect.update_state(one_hot(truth, 5), one_hot(truth, 5))
    assert float(np_(perfect.result())) == 1.0
    assert MeanDice.from_config(no_bg.get_config()).n_labels == 5


@pytest.mark.backends
def test_uniform_cross_entropy_weighs_labels_by_their_volume(rng):
    """``ce_weighting="uniform"`` (nnU-Net's Dice + cross-entropy): every voxel counts the same,
    so a large label's errors outweigh a small one's; the default gives each label present the
    same total weight."""
    from synthseg.training.options import make_loss
    from synthseg.training.synthetic import TrainingOptions

    labels = np.zeros((1, 8, 8, 8), int)
    labels[0, :2] = 1  # a small label (1/4 of the voxels), the rest background
    y = one_hot(labels, 2)
    p = np.where(y > 0, 0.9, 0.1).astype(np.float32)
    p_bad_background = p.copy()
    p_bad_background[0, 2:] = [0.4, 0.6]  # the large label misclassified
    p_bad_small = p.copy()
    p_bad_small[0, :2] = [0.6, 0.4]  # the small label misclassified
    uniform = make_loss(TrainingOptions(ce_after_warmup=1.0, ce_weighting="uniform"), 2)
    balanced = make_loss(TrainingOptions(ce_after_warmup=1.0), 2)
    assert uniform.ce_weights == [1.0, 1.0] and balanced.ce_weights is None
    # uniform: the mean voxel cross-entropy, the large label's errors cost more
    expected = float(np.mean(-np.sum(y * np.log(p_bad_background), axis=-1)))
    assert float(np_(uniform(y, p_bad_background))) == pytest.approx(expected, rel=1e-5)
    assert float(np_(uniform(y, p_bad_background))) > 2 * float(np_(uniform(y, p_bad_small)))
    # inverse frequency: both mistakes cost the same
    assert float(np_(balanced(y, p_bad_background))) == pytest.approx(float(np_(balanced(y, p_bad_small))), rel=1e-5)
    with pytest.raises(InputError, match="ce_weighting must be one of"):
        TrainingOptions(ce_weighting="volume")
