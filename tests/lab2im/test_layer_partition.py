"""RandomPartition: coarse labels split into smooth random parts, reproducibly."""
import numpy as np
import pytest

from lab2im.layers import RandomPartition
from tests.layer_helpers import assert_config_round_trip, run

pytestmark = pytest.mark.backends

LABELS = np.zeros((2, 24, 20, 16, 1), np.int32)
LABELS[:, 6:18, 5:15, 4:12] = 7  # a "brain" that is not split
LABELS[:, :, :, :4] = 258  # a slab of "soft tissue" that is
LABELS[:, :3] = 165


def test_only_listed_labels_are_split_into_their_parts():
    layer = RandomPartition([[258, 506, 507, 508], [0, 502]], scale=0.25, seed=0)
    out, _ = run(layer, LABELS)
    assert out.dtype == np.int32 and out.shape == LABELS.shape
    np.testing.assert_array_equal(out[LABELS == 7], 7)
    np.testing.assert_array_equal(out[LABELS == 165], 165)  # not listed: unchanged
    assert set(np.unique(out[LABELS == 258])) <= {258, 506, 507, 508}
    assert len(np.unique(out[LABELS == 258])) >= 3  # several parts in a slab of 1,680 voxels
    assert set(np.unique(out[LABELS == 0])) <= {0, 502}
    for b in range(2):  # smooth parts, not salt and pepper: neighbours mostly share their part
        split = LABELS[b, ..., 0] == 258
        both = split[1:] & split[:-1]
        same = (out[b, 1:, ..., 0] == out[b, :-1, ..., 0])[both].mean()
        assert same > 0.6, same  # independent draws per voxel would give about 1/4


def test_same_seed_same_parts_and_replay():
    a, t = run(RandomPartition([[258, 506, 507]], seed=3), LABELS)
    b, _ = run(RandomPartition([[258, 506, 507]], seed=3), LABELS)
    c, _ = run(RandomPartition([[258, 506, 507]], seed=4), LABELS)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    replay, _ = run(RandomPartition([[258, 506, 507]], seed=99), LABELS, transformation=t)
    np.testing.assert_array_equal(replay, a)  # the drawn scores alone decide the parts
    assert not np.array_equal(a[0], a[1])  # each sample of the batch draws its own


def test_prob_zero_leaves_labels_and_config_round_trips():
    off, _ = run(RandomPartition([[258, 506]], prob=0.0, seed=0), LABELS)
    np.testing.assert_array_equal(off, LABELS)
    assert_config_round_trip(RandomPartition([[258, 506, 507], [165, 504]], scale=0.2, prob=0.7, seed=1), LABELS)


def test_bad_partitions_are_refused():
    for bad in ([], [[258]], [[258, 506], [506, 507]], [[-1, 3]]):
        with pytest.raises(ValueError):
            RandomPartition(bad)
    with pytest.raises(ValueError):
        RandomPartition([[258, 506]], scale=0)


def test_works_in_2d():
    labels = LABELS[:, :, :, 0]
    out, _ = run(RandomPartition([[258, 506, 507, 508]], scale=0.25, seed=0), labels)
    assert out.shape == labels.shape and set(np.unique(out)) <= {0, 7, 165, 258, 506, 507, 508}
