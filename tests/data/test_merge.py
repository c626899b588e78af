"""synthseg.data.merge: datasets in different label protocols merged into one training set, with a
deterministic per-dataset split (tiny 10^3 volumes written by the tests)."""
import csv
import json

import nibabel as nib
import numpy as np
import pytest

from lab2im.errors import InputError
from synthseg.data.merge import (
    load_merged,
    merge_datasets,
    read_dataset,
    read_protocol,
    same_grid,
    split_subjects,
)

SHAPE = (10, 10, 10)
PROTOCOL_YAML = """\
labels: {0: background, 1: white matter, 2: grey matter, 3: csf}
datasets:
  aseg:              # FreeSurfer IDs: hemispheres merged
    2: 1
    41: 1
    3: 2
    42: 2
    4: 3
  tissues: {1: 3, 2: 2, 3: 1}   # 1 csf, 2 grey, 3 white
"""


def label_map(values, seed):
    """Random blocks of ``values`` (and background)."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(SHAPE, np.int32)
    lab[2:8, 2:8, 2:8] = rng.choice(values, size=(6, 6, 6))
    return lab


def save(path, data, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path


def aseg_manifest(root, n=4, values=(2, 41, 3, 42, 4)):
    """A CSV manifest with relative paths, a subject column, and label maps in FreeSurfer IDs."""
    rows = []
    for i in range(n):
        lab = label_map(values, i)
        save(root / "scans" / f"s{i}" / "t1.nii.gz", lab.astype(np.float32) * 10)
        save(root / "segs" / f"s{i}.nii.gz", lab)
        rows.append(f"s{i},scans/s{i}/t1.nii.gz,segs/s{i}.nii.gz")
    (root / "manifest.csv").write_text("subject,image,label\n" + "\n".join(rows) + "\n")
    return root / "manifest.csv"


def tissue_folders(root, n=5):
    """images/ + labels/ matched by name (labels with a _seg suffix), labels 1-3."""
    for i in range(n):
        lab = label_map([1, 2, 3], 100 + i)
        save(root / "images" / f"case{i}.nii.gz", lab.astype(np.float32))
        save(root / "labels" / f"case{i}_seg.nii.gz", lab.astype(np.uint8))
    return root


@pytest.fixture
def sources(tmp_path):
    return {"aseg": aseg_manifest(tmp_path / "aseg"), "tissues": tissue_folders(tmp_path / "tissues")}


@pytest.fixture
def protocol(tmp_path):
    (tmp_path / "protocol.yaml").write_text(PROTOCOL_YAML)
    return tmp_path / "protocol.yaml"


# ---------------------------------------------------------------------------- merging
def test_label_maps_are_converted_to_the_common_protocol(sources, protocol, tmp_path):
    merged = merge_datasets(sources, protocol, tmp_path / "merged", fractions=(0.6, 0.2, 0.2), seed=1)
    assert merged.labels == [0, 1, 2, 3] and merged.datasets == ["aseg", "tissues"]
    assert len(merged.pairs) == 9
    lut = {"aseg": {0: 0, 2: 1, 41: 1, 3: 2, 42: 2, 4: 3}, "tissues": {0: 0, 1: 3, 2: 2, 3: 1}}
    for pair in merged.pairs:
        src, out = nib.load(pair.source_label), nib.load(pair.label)
        expected = np.vectorize(lut[pair.dataset].get)(np.asarray(src.dataobj))
        np.testing.assert_array_equal(np.asarray(out.dataobj), expected)
        np.testing.assert_allclose(out.affine, src.affine)
        assert out.get_data_dtype() == np.uint8
        assert pair.label == tmp_path / "merged" / "labels" / pair.dataset / f"{pair.subject}.nii.gz"
    assert sorted(p.subject for p in merged.select(dataset="aseg")) == ["s0", "s1", "s2", "s3"]
    assert merged.select(dataset="aseg")[0].image == (tmp_path / "aseg" / "scans" / "s0" / "t1.nii.gz").resolve()

    images, labels = merged.files("train")
    assert len(images) == len(labels) == sum(c["train"] for c in merged.counts().values())
    assert merged.counts() == {"aseg": {"train": 2, "val": 1, "test": 1}, "tissues": {"train": 3, "val": 1, "test": 1}}

    again = load_merged(tmp_path / "merged")  # what evaluation reads: the same pairs and split
    assert again.pairs == merged.pairs and again.labels == merged.labels and again.seed == 1
    with open(tmp_path / "merged" / "split.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["dataset"], r["subject"], r["split"]) for r in rows] == [
        (p.dataset, p.subject, p.split) for p in merged.pairs]
    listed = (tmp_path / "merged" / "lists" / "tissues_test_images.txt").read_text().split()
    assert listed == [str(p) for p in merged.files("test", "tissues")[0]]


def test_json_protocol_and_background_mapping(sources, tmp_path):
    spec = {"datasets": {"aseg": {"2": 1, "41": 1, "3": 0, "42": 0, "4": 0}, "tissues": {"1": 0, "2": 0, "3": 1}}}
    (tmp_path / "p.json").write_text(json.dumps(spec))
    merged = merge_datasets(sources, tmp_path / "p.json", tmp_path / "out", fractions=(1, 0, 0))
    assert merged.labels == [0, 1]  # dropped structures are background
    for pair in merged.pairs:
        assert set(np.unique(np.asarray(nib.load(pair.label).dataobj)).tolist()) == {0, 1}
    assert all(p.split == "train" for p in merged.pairs)


def test_unmapped_labels_are_refused_naming_file_dataset_and_values(sources, tmp_path):
    text = PROTOCOL_YAML.replace("    42: 2\n", "").replace("    4: 3\n", "")
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(InputError, match=r"segs/s0.nii.gz: dataset 'aseg': label value\(s\) \[4, 42\] are not in "
                                         r"the protocol map .*p.yaml.*map each to a common label, or to 0"):
        merge_datasets(sources, tmp_path / "p.yaml", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_protocol_errors(sources, tmp_path):
    with pytest.raises(InputError, match="maps to common label\\(s\\) \\[7\\] that 'labels' does not list"):
        read_protocol({"labels": {0: "bg", 1: "wm"}, "datasets": {"a": {1: 7}}})
    with pytest.raises(InputError, match="label of dataset 'a' 'x' is not an integer"):
        read_protocol({"datasets": {"a": {"x": 1}}})
    with pytest.raises(InputError, match="unknown key\\(s\\) \\['dataset'\\]"):
        read_protocol({"dataset": {}})
    (tmp_path / "bad.yaml").write_text("datasets: [unclosed\n")
    with pytest.raises(InputError, match="bad.yaml: protocol map is not valid YAML"):
        read_protocol(tmp_path / "bad.yaml")
    with pytest.raises(InputError, match=r"dataset\(s\) \['tissues'\] have no entry in the protocol map"):
        merge_datasets(sources, {"datasets": {"aseg": {2: 1}}}, tmp_path / "out")


# ---------------------------------------------------------------------------- split
def test_split_is_deterministic_and_per_dataset(sources, protocol, tmp_path):
    subjects = [f"sub-{i:02d}" for i in range(20)]
    a = split_subjects(subjects, (0.7, 0.15, 0.15), seed=0, dataset="x")
    assert a == split_subjects(list(reversed(subjects)), (0.7, 0.15, 0.15), seed=0, dataset="x")
    assert sorted(a.values()).count("train") == 14 and list(a.values()).count("test") == 3
    assert a != split_subjects(subjects, (0.7, 0.15, 0.15), seed=1, dataset="x")
    assert a != split_subjects(subjects, (0.7, 0.15, 0.15), seed=0, dataset="y")  # each dataset its own draw
    assert list(split_subjects(["a", "b", "c"], (0.6, 0.2, 0.2)).values()).count("train") == 1  # >= 1 each
    with pytest.raises(InputError, match="dataset 'tiny' has 1 subject\\(s\\): too few"):
        split_subjects(["a"], (0.5, 0.5, 0.0), dataset="tiny")
    with pytest.raises(InputError, match="fractions must be 3 numbers"):
        split_subjects(subjects, (0.5, 0.2, 0.2))

    both = merge_datasets(sources, protocol, tmp_path / "both", seed=3)
    alone = merge_datasets({"tissues": sources["tissues"]}, protocol, tmp_path / "alone", seed=3)
    key = [(p.subject, p.split) for p in both.select(dataset="tissues")]
    assert key == [(p.subject, p.split) for p in alone.pairs]  # another dataset changes nothing


# ---------------------------------------------------------------------------- sources
def test_bids_like_folder(tmp_path, protocol):
    root = tmp_path / "bids"
    lab = label_map([1, 2, 3], 0)
    save(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz", lab * 1.0)
    save(root / "derivatives" / "manual" / "sub-01" / "anat" / "sub-01_dseg.nii.gz", lab)
    save(root / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T1w.nii.gz", lab * 1.0)
    save(root / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T2w.nii.gz", lab * 2.0)  # another modality
    save(root / "derivatives" / "manual" / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_desc-tissue_dseg.nii.gz", lab)
    save(root / "sub-03" / "anat" / "sub-03_T1w.nii.gz", lab * 1.0)  # no label map: skipped
    warnings = []
    pairs = read_dataset(root, "bids", warn=warnings.append)
    assert [p.subject for p in pairs] == ["sub-01", "sub-02_ses-1"]
    assert pairs[1].label.name == "sub-02_ses-1_desc-tissue_dseg.nii.gz" and pairs[1].image.name.endswith("_T1w.nii.gz")
    assert len(warnings) == 1 and "sub-03_T1w.nii.gz" in warnings[0] and "skipped" in warnings[0]
    assert [p.image.name for p in read_dataset(root, "bids", modality="T2w", warn=warnings.append)] == [
        "sub-02_ses-1_T2w.nii.gz"]
    merged = merge_datasets({"tissues": root}, protocol, tmp_path / "out", fractions=(1, 0, 0))
    assert [p.subject for p in merged.pairs] == ["sub-01", "sub-02_ses-1"]


def test_missing_files_and_grid_mismatch_are_named(sources, protocol, tmp_path):
    manifest = sources["aseg"]
    text = manifest.read_text().replace("segs/s1.nii.gz", "segs/nope.nii.gz")
    manifest.write_text(text)
    with pytest.raises(InputError, match=r"segs/nope.nii.gz: dataset 'aseg': label listed on line 3 of .*manifest.csv "
                                         r"does not exist"):
        merge_datasets(sources, protocol, tmp_path / "out")

    folder = sources["tissues"]
    shifted = np.eye(4)
    shifted[:3, 3] = 1.5
    save(folder / "labels" / "case2_seg.nii.gz", label_map([1, 2, 3], 0), shifted)
    with pytest.raises(InputError, match=r"images/case2.nii.gz: dataset 'tissues': image and its label map "
                                         r".*case2_seg.nii.gz are not on the same voxel grid"):
        read_and_merge = merge_datasets({"tissues": folder}, protocol, tmp_path / "out")  # noqa: F841
    (folder / "labels" / "case2_seg.nii.gz").unlink()
    with pytest.raises(InputError, match=r"case2.nii.gz: dataset 'tissues': no label map for this image"):
        read_dataset(folder, "tissues")

    (tmp_path / "m.csv").write_text("img,seg\na.nii.gz,b.nii.gz\n")
    with pytest.raises(InputError, match=r"m.csv: dataset 'x': manifest lacks column\(s\) \['image', 'label'\]"):
        read_dataset(tmp_path / "m.csv", "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="dataset 'y': unknown layout"):
        read_dataset(tmp_path / "empty", "y")
    with pytest.raises(InputError, match="dataset 'z': no such file or folder"):
        read_dataset(tmp_path / "missing", "z")


def test_same_grid_up_to_axis_order_and_direction():
    ras = np.diag([2.0, 2.0, 2.0, 1.0])
    las = ras.copy()
    las[0, 0], las[0, 3] = -2.0, 2.0 * 9  # x flipped: the same voxel centres, stored the other way
    assert same_grid((10, 10, 10), ras, (10, 10, 10), las)
    swapped = ras[:, [1, 0, 2, 3]]
    assert same_grid((10, 12, 10), ras, (12, 10, 10), swapped)
    assert not same_grid((10, 10, 10), ras, (10, 10, 9), ras)
    half = ras.copy()
    half[:3, 3] = 1.0  # half a voxel off
    assert not same_grid((10, 10, 10), ras, (10, 10, 10), half)


def test_merge_command_line(sources, protocol, tmp_path, capsys):
    from synthseg.cli import main

    args = ["merge", "--dataset", f"aseg={sources['aseg']}", "--dataset", f"tissues={sources['tissues']}",
            "--protocol", str(protocol), "--out", str(tmp_path / "cli"), "--seed", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "aseg" in out and "common labels [0, 1, 2, 3]" in out
    assert load_merged(tmp_path / "cli" / "split.json").seed == 2
    assert main(["merge", "--dataset", "oops", "--protocol", str(protocol), "--out", str(tmp_path / "x")]) == 1
    assert "--dataset must be NAME=SOURCE" in capsys.readouterr().err
