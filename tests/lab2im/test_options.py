import json

import numpy as np
import pytest

from lab2im.errors import InputError
from lab2im.options import GeneratorOptions


def test_json_round_trip(tmp_path):
    o = GeneratorOptions(generation_labels=[0, 2, 41], lr_pairs=[(2, 41)], output_shape=(8, 8, 8),
                         prior_means=np.array([[10, 20, 30], [40, 50, 60]]))
    o.save(tmp_path / "opts.json")
    back = GeneratorOptions.load(tmp_path / "opts.json")
    assert back.to_dict() == o.to_dict()
    np.testing.assert_array_equal(back.prior_array("prior_means"), o.prior_array("prior_means"))


def test_unknown_keys_are_rejected(tmp_path):
    p = tmp_path / "opts.json"
    p.write_text(json.dumps({"generation_labels": [0, 1], "rotaton": 10}))
    with pytest.raises(InputError, match=r"opts.json: unknown generator option\(s\) \[.rotaton.\]"):
        GeneratorOptions.load(p)


def test_broken_json_names_the_file(tmp_path):
    p = tmp_path / "opts.json"
    p.write_text("{not json")
    with pytest.raises(InputError, match="opts.json: not a valid JSON"):
        GeneratorOptions.load(p)


def test_priors_from_npy_and_their_shape_errors(tmp_path):
    good, bad = tmp_path / "means.npy", tmp_path / "bad.npy"
    np.save(good, np.array([[0, 10, 20], [5, 15, 25]], "float32"))
    np.save(bad, np.zeros((3, 7)))
    o = GeneratorOptions(generation_labels=[0, 2, 3], prior_means=str(good))
    assert o.prior_array("prior_means").shape == (2, 3)
    with pytest.raises(InputError, match=r"bad.npy: prior_stds has shape \(3, 7\); expected"):
        GeneratorOptions(generation_labels=[0, 2, 3], prior_stds=str(bad))
    with pytest.raises(InputError, match="missing.npy: prior_means file does not exist"):
        GeneratorOptions(generation_labels=[0, 2, 3], prior_means=str(tmp_path / "missing.npy"))


def test_pickled_npy_is_refused(tmp_path):
    p = tmp_path / "evil.npy"
    np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="evil.npy: prior_means file is not a plain numeric"):
        GeneratorOptions(generation_labels=[0, 1], prior_means=str(p))


@pytest.mark.parametrize("kwargs, message", [
    (dict(generation_labels=[]), "generation_labels is empty"),
    (dict(generation_labels=[0, 1, 1]), "duplicates"),
    (dict(generation_labels=[0, 1], segmentation_labels=[0]), "segmentation_labels has 1 entries"),
    (dict(generation_labels=[0, 1], lr_pairs=[(1, 5)]), r"not generation labels: \[5\]"),
    (dict(generation_labels=[0, 1], flip_prob=2), "flip_prob must be in"),
    (dict(generation_labels=[0, 1], rotation=-1), "rotation must be >= 0"),
    (dict(generation_labels=[0.5, 1]), "must hold integers"),
    (dict(generation_labels=[0, 1, 2], partitions=[[0, 5]]), r"not generation labels: \[5\]"),
    (dict(generation_labels=[0, 1, 2], partitions=[[0]]), "each partition must be"),
    (dict(generation_labels=[0, 1, 2], partitions=[[0, 1], [1, 2]]), "repeat a label"),
    (dict(generation_labels=[0, 1, 2], partitions=[[0, 1]], partition_prob=1.5), "partition_prob must be in"),
    (dict(generation_labels=[0, 1, 2], partitions=[[0, 1]], partition_scale=0), "partition_scale must be > 0"),
    (dict(generation_labels=[0, 1, 2], morphology_rules=[([1], [7])]), r"not generation labels: \[7\]"),
    (dict(generation_labels=[0, 1, 2], morphology_rules=[([1], [1, 2])]), "two disjoint, non-empty"),
    (dict(generation_labels=[0, 1, 2], morphology_rules=[[1, 2]]), r"a \(grow_labels, into_labels\) pair"),
    (dict(generation_labels=[0, 1, 2], morphology_threshold=0.5), "morphology_threshold must be"),
    (dict(generation_labels=[0, 1, 2], morphology_rules=[([1], [2])], morphology_prob=-1), "morphology_prob must be in"),
    (dict(generation_labels=[0, 1, 2], morphology_threshold=(0.9, 0.1)), "morphology_threshold must be"),
    (dict(generation_labels=[0, 1, 2], morphology_scale=0), "morphology_scale must be > 0"),
])
def test_invalid_options(kwargs, message):
    with pytest.raises(InputError, match=message):
        GeneratorOptions(**kwargs)
