"""Consistency of the segmentation protocol (synthseg.data.labels)."""
from __future__ import annotations

import numpy as np
import pytest

from synthseg.data import labels

SPEC_NEUTRAL = [0, 14, 15, 16, 24]
SPEC_LEFT = [2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 17, 18, 26, 28]
SPEC_RIGHT = [41, 42, 43, 44, 46, 47, 49, 50, 51, 52, 53, 54, 58, 60]


def test_segmentation_labels_are_neutral_then_left_then_right():
    seg = labels.segmentation_labels()
    assert seg.dtype == np.int32
    assert seg.tolist() == SPEC_NEUTRAL + SPEC_LEFT + SPEC_RIGHT
    assert labels.n_neutral() == len(SPEC_NEUTRAL)
    assert len(set(seg.tolist())) == len(seg)


def test_lr_pairs_are_counterparts_in_list_order():
    pairs = labels.lr_pairs()
    seg = labels.segmentation_labels().tolist()
    n = labels.n_neutral()
    n_pairs = (len(seg) - n) // 2
    assert len(seg) - n == 2 * n_pairs
    assert pairs == list(zip(seg[n:n + n_pairs], seg[n + n_pairs:]))
    names = labels.label_names()
    for left, right in pairs:
        assert names[left].startswith("Left-") and names[right].startswith("Right-")
        assert names[left][len("Left-"):] == names[right][len("Right-"):]


def test_lr_swap_is_an_involution_fixing_neutral_labels():
    swap = labels.lr_swap()
    assert set(swap) == set(labels.generation_labels().tolist())
    assert all(swap[swap[k]] == k for k in swap)
    gen = labels.generation_labels()
    assert all(swap[int(k)] == k for k in gen[:labels.n_neutral(generation=True)])
    assert swap[17] == 53 and swap[53] == 17


def test_every_generation_label_has_a_name_and_a_colour():
    gen = labels.generation_labels().tolist()
    names, colours = labels.label_names(), labels.label_colours()
    assert set(names) == set(gen) == set(colours)
    assert len(set(names.values())) == len(gen)
    for rgb in colours.values():
        assert len(rgb) == 3 and all(0 <= c <= 255 for c in rgb)
    # spot checks against FreeSurferColorLUT.txt
    assert names[17] == "Left-Hippocampus" and colours[17] == (220, 216, 20)
    assert colours[52] == (13, 48, 255) and colours[13] == (12, 48, 255)
    assert names[labels.SKULL] == "Skull" and names[labels.SOFT_TISSUE] == "Head-ExtraCerebral"


def test_tissue_groups_partition_non_background_labels():
    groups = labels.tissue_groups()
    assert set(groups) == {"GM", "WM", "CSF"}
    members = [label for ids in groups.values() for label in ids]
    assert len(members) == len(set(members))
    assert set(members) == set(labels.segmentation_labels().tolist()) - {0}
    assert set(groups["WM"]) == {2, 41, 7, 46, 16}
    assert set(groups["CSF"]) == {4, 43, 5, 44, 14, 15, 24}
    assert {3, 42, 8, 47, 10, 49, 28, 60} <= set(groups["GM"])
    for left, right in labels.lr_pairs():  # counterparts are in the same group
        assert [left in g for g in groups.values()] == [right in g for g in groups.values()]


def test_generation_labels_extend_the_neutral_part():
    seg = labels.segmentation_labels().tolist()
    gen = labels.generation_labels().tolist()
    n_seg, n_gen = labels.n_neutral(), labels.n_neutral(generation=True)
    assert gen[:n_seg] == seg[:n_seg]
    parts = [v for p in labels.EXTRA_CEREBRAL_PARTS.values() for v in p]
    assert gen[n_seg:n_gen] == [labels.SKULL, labels.SOFT_TISSUE, *parts]
    assert gen[n_gen:] == seg[n_seg:]


def test_extra_cerebral_partitions_split_only_generation_labels():
    """Background, skull and soft tissue are split into parts that are generation-only labels
    (mapped to background, each its own intensity class) and that the brain options use."""
    from synthseg import brain_options

    partitions = labels.extra_cerebral_partitions()
    assert [p[0] for p in partitions] == [labels.BACKGROUND, labels.SKULL, labels.SOFT_TISSUE]
    parts = [v for p in partitions for v in p[1:]]
    to_seg, classes = labels.generation_to_segmentation(), labels.tissue_classes()
    assert all(to_seg[v] == 0 for v in parts) and len({classes[v] for v in parts}) == len(parts)
    assert not set(parts) & set(labels.segmentation_labels().tolist())
    assert brain_options().partitions == partitions


def test_boundary_morphology_rules_keep_each_hemisphere_apart():
    """Each rule moves one hemisphere's boundary (a voxel takes the largest neighbouring label
    of a group, so a group holding left and right would push the midline to the right), and
    the options accept them for the brain generator."""
    from synthseg import brain_options

    rules = labels.boundary_morphology_rules()
    left, right = set(SPEC_LEFT), set(SPEC_RIGHT)
    for grow, into in rules:
        together = set(grow) | set(into)
        assert not (together & left and together & right), (grow, into)
    assert {(3,), (42,)} <= {tuple(g) for g, _ in rules}  # both cortices move
    assert brain_options(morphology_rules=rules).morphology_rules == [(g, i) for g, i in rules]


def test_generation_to_segmentation_covers_every_generation_label():
    mapping = labels.generation_to_segmentation()
    assert set(mapping) == set(labels.generation_labels().tolist())
    seg = set(labels.segmentation_labels().tolist())
    assert set(mapping.values()) <= seg
    for label in seg:
        assert mapping[label] == label
    assert mapping[labels.SKULL] == 0 and mapping[labels.SOFT_TISSUE] == 0


def test_tissue_classes_share_between_counterparts_only():
    classes = labels.tissue_classes()
    gen = labels.generation_labels().tolist()
    assert set(classes) == set(gen)
    assert classes[0] == 0
    for left, right in labels.lr_pairs():
        assert classes[left] == classes[right]
    n_structures = labels.n_neutral(generation=True) + len(labels.lr_pairs())
    assert sorted(set(classes.values())) == list(range(n_structures))
    assert len(labels.tissue_class_names()) == n_structures


@pytest.mark.parametrize("generation", [False, True])
def test_structures_table_ids_are_unique(generation):
    ids = [i for s in labels.structures(generation) for i in s.ids]
    assert len(ids) == len(set(ids))
