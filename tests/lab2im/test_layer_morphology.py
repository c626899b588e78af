"""RandomLabelMorphology: one-voxel boundary moves in smooth random regions, reproducibly."""
import json

import numpy as np
import pytest

from lab2im.layers import RandomLabelMorphology
from tests.layer_helpers import assert_config_round_trip, run

pytestmark = pytest.mark.backends

# a "white matter | cortex | CSF" slab along the first axis, 3 voxels of cortex; left (3) and
# right (42) cortex side by side along the second axis; a "skull" (165) plane at the far end
SLAB = np.zeros((2, 16, 12, 10, 1), np.int32)
SLAB[:, :6] = 2
SLAB[:, 6:9, :6], SLAB[:, 6:9, 6:] = 3, 42
SLAB[:, 9:15] = 24
SLAB[:, 15] = 165
RULES = [([3, 42], [24])]


def _constant(value, threshold=0.0, batch=2, coarse=(2, 2, 2), n_rules=1):
    """A transformation whose field is ``value`` everywhere."""
    return {"field": np.full((batch, *coarse, n_rules), value, np.float32),
            "threshold": np.full((batch, n_rules), threshold, np.float32)}


def test_a_positive_field_grows_the_first_group_by_exactly_one_voxel():
    layer = RandomLabelMorphology(RULES, scale=0.1, seed=0)
    out, _ = run(layer, SLAB, transformation=_constant(0.5))
    np.testing.assert_array_equal(out[:, 9, :5], 3)  # the first CSF layer became the cortex beside it
    np.testing.assert_array_equal(out[:, 9, 6:], 42)  # ... on each side its own hemisphere's label (at the
    # midline, where both are neighbours, the larger value)
    np.testing.assert_array_equal(out[:, 10:15], 24)  # one voxel only
    np.testing.assert_array_equal(out[:, :9], SLAB[:, :9])  # white matter and cortex unchanged
    np.testing.assert_array_equal(out[:, 15], 165)  # labels of no rule are never touched


def test_a_negative_field_shrinks_it_and_a_high_threshold_changes_nothing():
    layer = RandomLabelMorphology(RULES, seed=0)
    out, _ = run(layer, SLAB, transformation=_constant(-0.5))
    np.testing.assert_array_equal(out[:, 8], 24)  # the outer cortex layer became CSF
    np.testing.assert_array_equal(out[:, 6:8], SLAB[:, 6:8])
    np.testing.assert_array_equal(out[:, 9:], SLAB[:, 9:])
    same, _ = run(layer, SLAB, transformation=_constant(0.9, threshold=1.0))
    np.testing.assert_array_equal(same, SLAB)


def test_rules_apply_in_order_so_cortex_can_move_on_both_sides():
    layer = RandomLabelMorphology([([3, 42], [24]), ([3, 42], [2])], seed=0)
    out, _ = run(layer, SLAB, transformation=_constant(0.5, n_rules=2))
    cortex = np.isin(out, [3, 42])
    assert cortex[:, 5:10].all() and not cortex[:, :5].any() and not cortex[:, 10:].any()  # 3 -> 5 voxels


def test_random_draws_move_part_of_the_boundary_both_ways_and_replay():
    layer = RandomLabelMorphology(RULES, scale=0.3, threshold=(0.0, 0.2), seed=3)
    out, t = run(layer, SLAB)
    grown = (np.isin(out, [3, 42]) & (SLAB == 24)).sum()
    shrunk = ((out == 24) & np.isin(SLAB, [3, 42])).sum()
    assert grown > 0 and shrunk > 0 and grown + shrunk < 2 * 2 * 12 * 10  # parts, not the whole plane
    assert np.isin(out, [0, 2, 3, 24, 42, 165]).all()
    twin, _ = run(RandomLabelMorphology(RULES, scale=0.3, threshold=(0.0, 0.2), seed=3), SLAB)
    np.testing.assert_array_equal(twin, out)
    replay, _ = run(RandomLabelMorphology(RULES, scale=0.3, seed=99), SLAB, transformation=t)
    np.testing.assert_array_equal(replay, out)


def test_prob_zero_and_gated_off_samples_are_unchanged():
    off, _ = run(RandomLabelMorphology(RULES, prob=0.0, seed=0), SLAB)
    np.testing.assert_array_equal(off, SLAB)
    layer = RandomLabelMorphology(RULES, seed=0)
    gated = layer.gated(_constant(0.5), np.array([False, True]))
    out, _ = run(layer, SLAB, transformation=gated)
    np.testing.assert_array_equal(out[0], SLAB[0])
    assert not np.array_equal(out[1], SLAB[1])


def test_config_round_trips_also_through_json_and_bad_rules_are_refused():
    layer = RandomLabelMorphology([([3], [24]), ([4, 43], [2])], scale=0.2, threshold=(0.1, 0.9), prob=0.5, seed=1)
    assert_config_round_trip(layer, SLAB)
    config = json.loads(json.dumps(layer.get_config()))  # tuples come back as lists, as from a saved model
    clone = RandomLabelMorphology.from_config(config)
    assert clone.rules == layer.rules and clone.threshold == layer.threshold
    out, t = run(layer, SLAB)
    np.testing.assert_array_equal(run(clone, SLAB, transformation=t)[0], out)
    for bad in ([], [([3], [3])], [([], [24])], [([-1], [2])]):
        with pytest.raises(ValueError):
            RandomLabelMorphology(bad)
    with pytest.raises(ValueError):
        RandomLabelMorphology(RULES, threshold=(0.8, 0.2))
