import numpy as np
import pytest

from lab2im.layers import ConvertLabels, RandomCrop, RandomFlip
from tests.layer_helpers import assert_config_round_trip, run

pytestmark = pytest.mark.backends


def test_flip_swaps_left_and_right_labels(blocks_labels):
    # in blocks_labels, 2/3 occupy x < 12 (left) and 41/42 x >= 12 (right)
    layer = RandomFlip(lr_pairs=[(2, 41), (3, 42)], axis=0, prob=1.0, seed=0)
    x = blocks_labels[None, ..., None]
    img = blocks_labels[None, ..., None].astype("float32")
    (lab, im), _ = run(layer, x, img)
    lab = lab[0, ..., 0]
    expected = np.flip(blocks_labels, 0)
    swap = {0: 0, 2: 41, 41: 2, 3: 42, 42: 3}
    np.testing.assert_array_equal(lab, np.vectorize(swap.get)(expected))
    np.testing.assert_array_equal(im[0, ..., 0], expected)  # images flip without swapping
    # a flipped brain still has its left labels on the left
    assert set(np.unique(lab[:12])) <= {0, 2, 3} and set(np.unique(lab[12:])) <= {0, 41, 42}


def test_flip_probability_is_per_sample(blocks_labels):
    layer = RandomFlip(lr_pairs=[(2, 41)], prob=0.5, seed=3)
    x = np.repeat(blocks_labels[None, ..., None], 64, axis=0)
    out, t = run(layer, x)
    flipped = np.array([not np.array_equal(o, x[0]) for o in out])
    np.testing.assert_array_equal(flipped, np.asarray(t["flip"]))
    assert 10 < flipped.sum() < 54


def test_flip_rejects_overlapping_pairs():
    with pytest.raises(ValueError, match="distinct"):
        RandomFlip(lr_pairs=[(2, 41), (41, 3)])


def test_crop_is_an_exact_window(blocks_labels):
    layer = RandomCrop((10, 12, 8), seed=0)
    x = blocks_labels[None, ..., None]
    out, t = run(layer, x)
    o = np.asarray(t["offset"])[0]
    np.testing.assert_array_equal(out[0], x[0, o[0]:o[0] + 10, o[1]:o[1] + 12, o[2]:o[2] + 8])


def test_crop_pads_when_input_is_smaller(blocks_labels):
    out, _ = run(RandomCrop((30, 28, 20), seed=0), blocks_labels[None, ..., None])
    assert out.shape == (1, 30, 28, 20, 1)
    np.testing.assert_array_equal(out[0, 3:27, :, :, 0], blocks_labels)


def test_convert_labels_maps_and_drops_unlisted(blocks_labels):
    layer = ConvertLabels([0, 2, 3, 41], [0, 2, 2, 41])
    out, _ = run_convert(layer, blocks_labels)
    assert set(np.unique(out)) == {0, 2, 41}  # 3 -> 2, 42 unlisted -> 0
    assert np.all(out[blocks_labels == 42] == 0) and np.all(out[blocks_labels == 3] == 2)


def run_convert(layer, lab):
    from keras import ops
    return ops.convert_to_numpy(layer(ops.convert_to_tensor(lab[None, ..., None])))[0, ..., 0], None


def test_config_round_trips(blocks_labels):
    x = blocks_labels[None, ..., None]
    assert_config_round_trip(RandomFlip([(2, 41)], prob=0.7, seed=1), x)
    assert_config_round_trip(RandomCrop((8, 8, 8), seed=1), x)
    clone = ConvertLabels.from_config(ConvertLabels([1, 2], [3, 4], default=5).get_config())
    assert clone.get_config()["dest"] == [3, 4] and clone.default == 5
