"""synthseg.generation.estimate_priors: intensity statistics of labelled scans -> generator priors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lab2im.errors import InputError
from lab2im.io import save_volume
from synthseg.generation.estimate_priors import (
    estimate_intensity_stats,
    estimate_priors,
    main,
    priors_from_stats,
)

REPO = Path(__file__).resolve().parents[2]
TRUTH = {1: (30.0, 3.0), 2: (80.0, 5.0), 3: (150.0, 10.0)}  # label: (mean, std)
SHAPE = (60, 20, 20)


def _label_map():
    """Three 20^3 blocks side by side: labels 1, 2, 3 (no background)."""
    lab = np.zeros(SHAPE, np.int32)
    lab[:20], lab[20:40], lab[40:] = 1, 2, 3
    return lab


def _image(lab, truth=TRUTH, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    img = np.zeros(lab.shape, np.float32)
    for label, (m, s) in truth.items():
        mask = lab == label
        img[mask] = rng.normal(m + shift, s, mask.sum())
    return img


@pytest.fixture
def subject(tmp_path):
    lab = _label_map()
    img_path = save_volume(_image(lab), tmp_path / "img.nii.gz")
    lab_path = save_volume(lab, tmp_path / "lab.nii.gz")
    return img_path, lab_path


def test_recovers_known_means_and_stds(subject):
    img, lab = subject
    stats = estimate_intensity_stats([img], [lab], labels=[1, 2, 3])
    assert stats.means.shape == stats.stds.shape == (1, 1, 3)
    for k, (m, s) in enumerate(TRUTH.values()):
        assert stats.means[0, 0, k] == pytest.approx(m, rel=0.01)
        assert stats.stds[0, 0, k] == pytest.approx(s, rel=0.03)
        assert stats.counts[0, 0, k] == 20 ** 3
    # robust estimates agree on clean Gaussian data
    robust = estimate_intensity_stats([img], [lab], labels=[1, 2, 3], robust=True)
    np.testing.assert_allclose(robust.means, stats.means, rtol=0.02)
    np.testing.assert_allclose(robust.stds, stats.stds, rtol=0.05)


def test_default_labels_are_all_labels_found(tmp_path):
    lab = _label_map()
    lab[:2] = 0
    img = save_volume(_image(lab), tmp_path / "img.nii")
    labp = save_volume(lab, tmp_path / "lab.nii")
    stats = estimate_intensity_stats(img, labp)  # single paths work too
    assert stats.labels.tolist() == [0, 1, 2, 3]
    assert stats.means[0, 0, 0] == 0.0


def test_robust_resists_outliers(tmp_path):
    lab = _label_map()
    img = _image(lab)
    rng = np.random.default_rng(1)
    outliers = rng.random(lab.shape) < 0.05
    img[outliers] = 1000.0
    imgp, labp = save_volume(img, tmp_path / "img.nii.gz"), save_volume(lab, tmp_path / "lab.nii.gz")
    plain = estimate_intensity_stats([imgp], [labp], labels=[1, 2, 3])
    robust = estimate_intensity_stats([imgp], [labp], labels=[1, 2, 3], robust=True)
    for k, (m, s) in enumerate(TRUTH.values()):
        assert plain.means[0, 0, k] > m * 1.2  # the mean is pulled far away
        assert plain.stds[0, 0, k] > 10 * s
        assert robust.means[0, 0, k] == pytest.approx(m, rel=0.02)
        assert robust.stds[0, 0, k] == pytest.approx(s, rel=0.12)


def test_classes_pool_labels(tmp_path):
    lab = _label_map()
    lab[:10] = 4  # label 4: half of label 1's block, same distribution (e.g. the right side)
    lab[20:30] = 5  # label 5: half of label 2's block, but brighter
    img = _image(lab, {**TRUTH, 4: TRUTH[1], 5: (100.0, 5.0)})
    imgp, labp = save_volume(img, tmp_path / "img.nii.gz"), save_volume(lab, tmp_path / "lab.nii.gz")
    labels, classes = [1, 2, 3, 4, 5], [0, 1, 2, 0, 1]
    stats = estimate_intensity_stats([imgp], [labp], labels=labels, classes=classes)
    assert stats.means.shape == (1, 1, 3)
    assert stats.counts[0, 0].tolist() == [8000, 8000, 8000]
    assert stats.means[0, 0, 0] == pytest.approx(30.0, rel=0.01)
    pooled = img[(lab == 2) | (lab == 5)]
    assert stats.means[0, 0, 1] == pytest.approx(pooled.mean(), rel=1e-5)
    assert stats.stds[0, 0, 1] == pytest.approx(pooled.std(), rel=1e-4)
    assert stats.column_labels() == [(1, 4), (2, 5), (3,)]
    # a {label: class} dict works too and gives the labels
    same = estimate_intensity_stats([imgp], [labp], classes=dict(zip(labels, classes)))
    np.testing.assert_allclose(same.means, stats.means)
    with pytest.raises(InputError, match="classes has 2 entries"):
        estimate_intensity_stats([imgp], [labp], labels=labels, classes=[0, 1])


def test_two_channels_give_4_rows(tmp_path):
    lab = _label_map()
    labp = save_volume(lab, tmp_path / "lab.nii.gz")
    t1 = save_volume(_image(lab), tmp_path / "t1.nii.gz")
    t2 = save_volume(_image(lab, {1: (150.0, 10.0), 2: (60.0, 4.0), 3: (20.0, 2.0)}, seed=3),
                     tmp_path / "t2.nii.gz")
    stats = estimate_intensity_stats([[t1], [t2]], [labp], labels=[1, 2, 3])
    assert stats.means.shape == (1, 2, 3)
    np.testing.assert_allclose(stats.means[0, 1], [150, 60, 20], rtol=0.02)
    pm, ps = priors_from_stats(stats)
    assert pm.shape == ps.shape == (4, 3) and pm.dtype == np.float32
    np.testing.assert_allclose(pm[0], stats.means[0, 0], rtol=1e-5)
    np.testing.assert_allclose(pm[2], stats.means[0, 1], rtol=1e-5)
    np.testing.assert_allclose(ps[2], stats.stds[0, 1], rtol=1e-5)
    # a 4D image is read as its channels
    both = save_volume(np.stack([_image(lab), _image(lab, seed=3)], axis=-1), tmp_path / "both.nii.gz")
    assert estimate_intensity_stats([both], [labp], labels=[1, 2, 3]).n_channels == 2


def test_multi_subject_priors(tmp_path):
    lab = _label_map()
    labs, imgs = [], []
    for i, shift in enumerate([0.0, 5.0, 10.0]):
        labs.append(save_volume(lab, tmp_path / f"lab{i}.nii.gz"))
        imgs.append(save_volume(_image(lab, seed=i, shift=shift), tmp_path / f"img{i}.nii.gz"))
    stats = estimate_intensity_stats(imgs, labs, labels=[1, 2, 3])
    assert stats.means.shape == (3, 1, 3)
    pm, ps = priors_from_stats(stats, kind="normal")
    np.testing.assert_allclose(pm[0], stats.means[:, 0].mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(pm[0], [35, 85, 155], rtol=0.01)
    between = stats.means[:, 0].std(axis=0)
    np.testing.assert_allclose(between, 4.08, rtol=0.05)
    # floor: 5% of the mean, so label 3 (155 * 0.05 = 7.75 > 4.08) is floored
    np.testing.assert_allclose(pm[1], np.maximum(between, 0.05 * pm[0]), rtol=1e-5)
    np.testing.assert_allclose(ps[0], stats.stds[:, 0].mean(axis=0), rtol=1e-5)
    # spread widens, min_std floors
    pm2, _ = priors_from_stats(stats, spread=3.0, min_rel_std=0.0)
    np.testing.assert_allclose(pm2[1], 3 * between, rtol=1e-5)
    pm3, _ = priors_from_stats(stats, min_std=50.0)
    np.testing.assert_allclose(pm3[1], 50.0)
    # uniform: min/max over subjects widened by the margin
    um, us = priors_from_stats(stats, kind="uniform", min_rel_std=0.0)
    np.testing.assert_allclose(um[0], stats.means[:, 0].min(axis=0) - between, rtol=1e-5)
    np.testing.assert_allclose(um[1], stats.means[:, 0].max(axis=0) + between, rtol=1e-5)
    assert np.all(us[0] >= 0) and np.all(us[1] > us[0])
    # one subject: between-subject std 0 -> floored at 5% of the mean
    one = estimate_intensity_stats(imgs[:1], labs[:1], labels=[1, 2, 3])
    pm1, ps1 = priors_from_stats(one)
    np.testing.assert_allclose(pm1[1], 0.05 * pm1[0], rtol=1e-5)
    np.testing.assert_allclose(ps1[1], 0.05 * ps1[0], rtol=1e-5)
    with pytest.raises(InputError, match="kind"):
        priors_from_stats(stats, kind="gamma")


def test_written_files_are_accepted_by_generator_options(tmp_path, subject):
    from lab2im.options import GeneratorOptions

    img, lab = subject
    out = tmp_path / "priors"
    paths = estimate_priors([img], [lab], out, labels=[1, 2, 3], classes=[0, 1, 0])
    for key in ("prior_means", "prior_stds", "labels", "classes", "summary"):
        assert paths[key].is_file()
    pm = np.load(paths["prior_means"], allow_pickle=False)
    ps = np.load(paths["prior_stds"], allow_pickle=False)
    assert pm.shape == ps.shape == (2, 2) and pm.dtype == ps.dtype == np.float32
    assert np.load(paths["labels"], allow_pickle=False).tolist() == [1, 2, 3]
    assert np.load(paths["classes"], allow_pickle=False).tolist() == [0, 1, 0]
    assert not list(out.glob(".*tmp*")), "temporary files left behind"
    opts = GeneratorOptions(generation_labels=paths["labels"], generation_classes=paths["classes"],
                            prior_means=paths["prior_means"], prior_stds=paths["prior_stds"],
                            prior_distribution="normal")
    np.testing.assert_allclose(opts.prior_array("prior_means"), pm)
    summary = json.loads(paths["summary"].read_text())
    assert summary["prior_distribution"] == "normal" and summary["n_subjects"] == 1
    assert summary["prior_means"] == pm.tolist()

    # uniform priors, one class per label
    paths = estimate_priors([img], [lab], tmp_path / "u", labels=[1, 2, 3], kind="uniform")
    assert np.load(paths["classes"], allow_pickle=False).tolist() == [0, 1, 2]
    GeneratorOptions(generation_labels=[1, 2, 3], prior_means=paths["prior_means"],
                     prior_stds=paths["prior_stds"], prior_distribution="uniform")


def test_nan_voxels_are_ignored(tmp_path):
    lab = _label_map()
    img = _image(lab)
    img[:5] = np.nan
    imgp, labp = save_volume(img, tmp_path / "img.nii.gz"), save_volume(lab, tmp_path / "lab.nii.gz")
    stats = estimate_intensity_stats([imgp], [labp], labels=[1, 2, 3])
    assert stats.counts[0, 0, 0] == 15 * 400
    assert stats.means[0, 0, 0] == pytest.approx(30.0, rel=0.01)
    assert np.all(np.isfinite(stats.means))


def test_grid_mismatch_names_both_files(tmp_path):
    lab = _label_map()
    img = save_volume(_image(lab), tmp_path / "image_a.nii.gz")
    small = save_volume(lab[:50], tmp_path / "labels_b.nii.gz")
    with pytest.raises(InputError) as err:
        estimate_intensity_stats([img], [small])
    assert "image_a.nii.gz" in str(err.value) and "labels_b.nii.gz" in str(err.value)
    shifted = np.eye(4)
    shifted[0, 3] = 3.0
    moved = save_volume(lab, tmp_path / "labels_c.nii.gz", affine=shifted)
    with pytest.raises(InputError, match="labels_c.nii.gz.*image_a.nii.gz.*resample"):
        estimate_intensity_stats([img], [moved])


def test_resample_label_map_onto_image_grid(tmp_path, subject):
    img, lab = subject
    coarse = np.diag([2.0, 2.0, 2.0, 1.0])
    coarse[:3, 3] = 0.5  # 2 mm voxel i covers 1 mm voxels 2i and 2i + 1
    lab2 = save_volume(_label_map()[::2, ::2, ::2], tmp_path / "lab_2mm.nii.gz", affine=coarse)
    with pytest.raises(InputError, match="not on the grid"):
        estimate_intensity_stats([img], [lab2], labels=[1, 2, 3])
    resampled = estimate_intensity_stats([img], [lab2], labels=[1, 2, 3], resample=True)
    direct = estimate_intensity_stats([img], [lab], labels=[1, 2, 3])
    np.testing.assert_array_equal(resampled.counts, direct.counts)
    np.testing.assert_allclose(resampled.means, direct.means)


def test_missing_files_and_counts(tmp_path, subject):
    img, lab = subject
    with pytest.raises(InputError, match="nope.nii.gz"):
        estimate_intensity_stats([tmp_path / "nope.nii.gz"], [lab])
    with pytest.raises(InputError, match="nope_labels.nii.gz"):
        estimate_intensity_stats([img], [tmp_path / "nope_labels.nii.gz"])
    with pytest.raises(InputError, match="2 images in channel 0 but 1 label maps"):
        estimate_intensity_stats([img, img], [lab])


def test_label_absent_everywhere_warns_and_is_nan(tmp_path):
    lab = _label_map()
    lab_partial = lab.copy()
    lab_partial[lab_partial == 3] = 0  # subject 2 has no label 3
    paths = []
    for i, l in enumerate([lab, lab_partial]):
        paths.append((save_volume(_image(lab, seed=i), tmp_path / f"img{i}.nii.gz"),
                      save_volume(l, tmp_path / f"sub{i}.nii.gz")))
    imgs, labs = [p[0] for p in paths], [p[1] for p in paths]
    with pytest.warns(UserWarning, match=r"(?s)label 3: no voxels in sub1.nii.gz.*label 7: no voxels in any subject"):
        stats = estimate_intensity_stats(imgs, labs, labels=[1, 2, 3, 7])
    assert np.isnan(stats.means[1, 0, 2]) and np.isfinite(stats.means[0, 0, 2])
    assert np.all(np.isnan(stats.means[:, 0, 3])) and np.all(np.isnan(stats.stds[:, 0, 3]))
    assert (labs[1].as_posix(), 2) in [(Path(s).as_posix(), k) for s, k in stats.missing]
    # label 7 has no data at all: an error by default, a wide finite prior on request
    with pytest.raises(InputError, match="label 7"):
        priors_from_stats(stats)
    pm, ps = priors_from_stats(stats, missing="wide")
    assert np.all(np.isfinite(pm)) and np.all(np.isfinite(ps))
    # label 3 comes from subject 0 only (NaN subject ignored)
    assert pm[0, 2] == pytest.approx(stats.means[0, 0, 2])
    assert pm[0, 3] == pytest.approx(np.mean(pm[0, :3]))
    um, _ = priors_from_stats(stats, kind="uniform", missing="wide")
    assert um[0, 3] == pytest.approx(um[0, :3].min()) and um[1, 3] == pytest.approx(um[1, :3].max())
    with pytest.warns(UserWarning), pytest.raises(InputError, match="label 7"):
        estimate_priors(imgs, labs, tmp_path / "out", labels=[1, 2, 3, 7])


def test_cli(tmp_path, subject, capsys):
    img, lab = subject
    np.save(tmp_path / "classes.npy", np.array([0, 1, 0]))
    rc = main(["--images", str(img), "--images", str(img), "--labels", str(lab), "--out",
               str(tmp_path / "o"), "--robust", "--classes", str(tmp_path / "classes.npy")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "class 0 (labels 1, 3)" in out and "wrote" in out
    assert np.load(tmp_path / "o" / "prior_means.npy", allow_pickle=False).shape == (4, 2)
    folder = tmp_path / "imgs"
    folder.mkdir()
    save_volume(_image(_label_map()), folder / "a.nii.gz")
    rc = main(["--images", str(folder), "--labels", str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "missing.nii.gz" in err
    assert not (tmp_path / "o2").exists()


@pytest.mark.slow
@pytest.mark.network
def test_tutorial_on_mni_template(tmp_path):
    """The tutorial measures the expected tissue orderings in the MNI 2009c T1, T2 and PD."""
    out = tmp_path / "tutorial"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "tutorials" / "4_estimate_priors.py"),
                             "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    m = {c: summary["contrasts"][c]["means"] for c in ("T1", "T2", "PD")}
    assert m["T1"]["WM"] > m["T1"]["GM"] > m["T1"]["CSF"]
    assert m["T2"]["CSF"] > m["T2"]["GM"] > m["T2"]["WM"]
    assert m["PD"]["CSF"] > m["PD"]["WM"] and m["PD"]["GM"] > m["PD"]["WM"]
    assert abs(m["PD"]["CSF"] - m["PD"]["GM"]) < abs(m["T2"]["CSF"] - m["T2"]["GM"])  # CSF ~ GM in PD
    for folder, shape in (("t1", (2, 3)), ("t2", (2, 3)), ("pd", (2, 3)), ("t1_t2_pd", (6, 3))):
        assert np.load(out / folder / "prior_means.npy", allow_pickle=False).shape == shape
    assert (out / "means_per_tissue.png").stat().st_size > 1000
    assert summary["generator_prior_shapes"]["t1_t2_pd"] == [6, 3]
