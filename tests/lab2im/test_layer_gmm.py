import numpy as np
import pytest
from keras import ops

from lab2im.layers import SampleConditionalGMM
from lab2im.layers.gmm import normalise_prior
from tests.layer_helpers import assert_config_round_trip, run

pytestmark = pytest.mark.backends


def test_labelwise_means_and_stds_match_sampled_parameters(blocks_labels):
    labels = [0, 2, 3, 41, 42]
    layer = SampleConditionalGMM(labels, prior_means=(20, 200), prior_stds=(1, 10), seed=4)
    x = np.stack([blocks_labels, blocks_labels])[..., None]
    img, t = run(layer, x)
    means, stds = ops.convert_to_numpy(t["means"]), ops.convert_to_numpy(t["stds"])
    assert img.shape == (2, *blocks_labels.shape, 1)
    for b in range(2):
        for k, lab in enumerate(labels):
            vox = img[b, ..., 0][blocks_labels == lab]
            se = stds[b, k, 0] / np.sqrt(vox.size)
            assert abs(vox.mean() - means[b, k, 0]) < 5 * se + 1e-3
            assert abs(vox.std() - stds[b, k, 0]) < 0.1 * stds[b, k, 0] + 1e-3
    assert not np.allclose(means[0], means[1])  # each sample gets its own contrast


def test_classes_share_one_gaussian(blocks_labels):
    layer = SampleConditionalGMM([0, 2, 3, 41, 42], generation_classes=[0, 1, 2, 1, 2], seed=0)
    _, t = run(layer, blocks_labels[None, ..., None])
    means = ops.convert_to_numpy(t["means"])[0, :, 0]
    assert means[1] == means[3] and means[2] == means[4] and means[1] != means[2]


def test_per_channel_priors(blocks_labels):
    # channel 0 bright, channel 1 dark for every class
    prior = np.array([[200, 200], [210, 210], [10, 10], [20, 20]], "float32")
    layer = SampleConditionalGMM([2, 41], generation_classes=[0, 1], prior_means=prior,
                                 prior_stds=(0, 0.001), n_channels=2, seed=0)
    lab = np.where(blocks_labels == 41, 41, 2)[None, ..., None]
    img, _ = run(layer, lab)
    assert img.shape[-1] == 2
    assert 199 < img[..., 0].min() and img[..., 0].max() < 211
    assert 9 < img[..., 1].min() and img[..., 1].max() < 21


def test_normal_prior_distribution(blocks_labels):
    layer = SampleConditionalGMM([0, 2, 3, 41, 42], prior_means=(100, 1e-3), prior_stds=(1, 1e-3),
                                 prior_distribution="normal", seed=0)
    img, _ = run(layer, blocks_labels[None, ..., None])
    assert abs(img.mean() - 100) < 0.5


@pytest.mark.parametrize("prior", [np.zeros((3, 5)), np.zeros((2, 4)), np.zeros(3)])
def test_wrong_prior_shape_is_rejected(prior):
    with pytest.raises(ValueError, match=r"expected \(2,\), \(2, 5\)"):
        normalise_prior(prior, n_classes=5, n_channels=1, name="prior_means")


def test_config_round_trip(blocks_labels):
    assert_config_round_trip(SampleConditionalGMM([0, 2, 3, 41, 42], seed=1), blocks_labels[None, ..., None])
