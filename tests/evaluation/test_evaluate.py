"""Segmentation evaluation: metrics against hand-computed values, files, paired tests, CLI."""
import csv
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage, stats
from scipy.spatial import KDTree

import synthseg.evaluation as ev
from lab2im.errors import InputError
from synthseg.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _save(path, data, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, np.int32), np.eye(4) if affine is None else affine), str(path))
    return path


def _by_metric(rows, label):
    return {r["metric"]: r["value"] for r in rows if r["label"] == label}


def _spheres(shape, spacing, centre, radii):
    """Label maps (1 inside the sphere, 0 outside) built in world mm on a grid of ``spacing``."""
    axes = [np.arange(n) * s for n, s in zip(shape, spacing)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    r = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
    return [(r <= radius).astype(np.int32) for radius in radii]


# ----------------------------------------------------------------------------- metrics
def test_dice_of_two_cubes():
    """4^3 cubes overlapping 3 x 4 x 4: Dice = 2 * 48 / (64 + 64) = 0.75; absent label: 1."""
    a = np.zeros((10, 10, 10), np.int32)
    b = np.zeros_like(a)
    a[2:6, 2:6, 2:6] = 3
    b[3:7, 2:6, 2:6] = 3
    a[7:9, 7:9, 7:9] = 5  # 8 voxels; b has 4 of them
    b[7:9, 7:9, 7:8] = 5
    assert ev.dice(a, b, [3, 5, 9]) == {3: 0.75, 5: pytest.approx(2 * 4 / 12), 9: 1.0}
    rows = ev.evaluate_arrays(a, b, [3, 5], spacing=(1, 1, 1))
    assert _by_metric(rows, 3)["dice"] == 0.75
    assert len(rows) == 2 * len(ev.METRICS)


def test_distances_are_in_mm_at_anisotropic_spacing():
    """A 5 x 5 x 4 voxel box and its copy shifted by whole voxels at 1 x 1 x 2 mm: the Hausdorff
    distance is the shift in mm (3 voxels along x: 3 mm; 1 along z: 2 mm), and the volumes use
    the voxel volume (2 mm^3). A single voxel's surface shrinks to its centre."""
    spacing = (1, 1, 2)
    a = np.zeros((14, 9, 10), np.int32)
    a[2:7, 2:7, 3:7] = 7
    for shift, axis, mm in ((3, 0, 3.0), (1, 2, 2.0)):
        b = np.roll(a, shift, axis=axis)
        for d in (ev.surface_distances(a, b, 7, spacing), ev.surface_distances(b, a, 7, spacing)):
            assert d["hausdorff"] == pytest.approx(mm, rel=1e-12)
            assert 0 < d["mean_surface"] < d["hd95"] <= d["hausdorff"]
    b = a.copy()
    b[7, 2:7, 3:7] = 7  # one more 5 x 4 voxel slab: 20 voxels of 2 mm^3
    assert ev.volume_difference(a, b, 7, spacing) == {"volume_true_mm3": 200.0, "volume_pred_mm3": 240.0,
                                                      "volume_diff_mm3": 40.0, "volume_diff_rel": 0.2}
    one, other = np.zeros((6, 4, 5), np.int32), np.zeros((6, 4, 5), np.int32)
    one[1, 1, 1] = other[4, 1, 2] = 1  # 3 mm along x, 2 mm along z: sqrt(13) mm
    d = ev.surface_distances(one, other, 1, spacing)
    assert all(value == pytest.approx(math.sqrt(13), abs=1e-3) for value in d.values())


# (spacing, (inner radius, outer radius)) in mm
SPHERE_CASES = [(spacing, radii) for spacing in ((1.0, 1.0, 2.0), (0.8, 1.0, 1.5), (1.0, 1.0, 3.0))
                for radii in ((10.0, 14.0), (12.0, 20.0), (20.0, 25.0))]


def _concentric(spacing, radii, centre=None):
    r, big_r = radii
    shape = tuple(int(math.ceil((2 * big_r + 8) / s)) for s in spacing)
    centre = centre or (big_r + 4.3, big_r + 3.7, big_r + 4.1)  # off the voxel centres on every axis
    return _spheres(shape, spacing, centre, radii)


@pytest.mark.parametrize("spacing, radii", SPHERE_CASES)
def test_concentric_spheres_match_analytic_distances_at_anisotropic_spacing(spacing, radii):
    """Concentric spheres sampled at voxel centres: analytically every surface distance is
    ``R - r`` (each point of one sphere is ``R - r`` from the other), so the Hausdorff distance,
    HD95 and mean surface distance all equal ``R - r``.

    Tolerance: half a voxel, taken as half the *mean* voxel side (0.67 mm at 1 x 1 x 2 mm,
    0.55 mm at 0.8 x 1 x 1.5 mm, 0.83 mm at 1 x 1 x 3 mm), stricter than half the largest
    side. Measured errors with the default smooth surfaces (mm; HD, HD95, MSD):
    1 x 1 x 2: 10/14 +0.32 +0.16 +0.02, 12/20 +0.35 +0.16 +0.03, 20/25 +0.25 +0.12 +0.03;
    0.8 x 1 x 1.5: 10/14 +0.26 +0.13 +0.03, 12/20 +0.30 +0.13 +0.02, 20/25 +0.25 +0.08 +0.01;
    1 x 1 x 3: 10/14 +0.42 +0.16 -0.01, 12/20 +0.38 +0.23 +0.02, 20/25 +0.66 +0.24 +0.04.
    """
    a, b = _concentric(spacing, radii)
    expected = radii[1] - radii[0]
    half_voxel = float(np.mean(spacing)) / 2
    for d in (ev.surface_distances(a, b, 1, spacing), ev.surface_distances(b, a, 1, spacing),
              _by_metric(ev.evaluate_arrays(a, b, [1], spacing), 1)):
        for metric in ("hausdorff", "hd95", "mean_surface"):
            assert d[metric] == pytest.approx(expected, abs=half_voxel), metric
        assert d["mean_surface"] <= d["hd95"] <= d["hausdorff"]
    # the spacing matters: the same arrays read with the spacings reversed are off by 0.5 mm or
    # more (0.54 to 1.03 mm measured), against 0.03 to 0.05 mm with the right spacing
    wrong = ev.surface_distances(a, b, 1, spacing[::-1])
    assert abs(wrong["mean_surface"] - expected) > 0.5


def test_smooth_surfaces_keep_the_hausdorff_distance_within_half_a_voxel_where_fast_ones_do_not():
    """The poles of the spheres face the coarse axis: the area-minimising (fast) net leaves
    them flat in mid-cell, up to half a voxel from the true pole on each sphere, and the
    Hausdorff distance adds the two errors (measured +0.89 mm at 0.8 x 1 x 1.5 mm, radii
    12/20, and +1.07 mm at 1 x 1 x 3 mm); the smooth net bends the caps to the curvature of
    their surroundings (+0.30 and +0.38 mm)."""
    errors = {}
    for spacing in ((0.8, 1.0, 1.5), (1.0, 1.0, 3.0)):
        a, b = _concentric(spacing, (12.0, 20.0))
        errors[spacing] = [ev.surface_distances(a, b, 1, spacing, surfaces=kind)["hausdorff"] - 8.0
                           for kind in ("fast", "smooth")]
    fast, smooth = errors[(0.8, 1.0, 1.5)]
    assert fast > 0.75 > 0.4 > abs(smooth)  # half a voxel: 0.75 mm
    fast, smooth = errors[(1.0, 1.0, 3.0)]
    assert fast - abs(smooth) > 0.5 and abs(smooth) < 0.5
    with pytest.raises(ValueError, match="surfaces must be one of"):
        ev.surface_distances(a, b, 1, spacing, surfaces="voxel")


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 2.0), (1.0, 1.0, 3.0)])
def test_random_concentric_spheres_stay_within_half_a_voxel(spacing):
    """12 random pairs (radii 4-24 mm, gap 1-8 mm, random sub-voxel centres): every metric
    within half the largest voxel side of ``R - r`` (benchmarks/surface_accuracy.py measures
    100 pairs at four voxel sizes)."""
    rng = np.random.default_rng(7)
    worst = 0.0
    for _ in range(12):
        r = rng.uniform(4, 24)
        big_r = r + rng.uniform(1, 8)
        centre = tuple(big_r + 4 + rng.uniform(0, 1) * s for s in spacing)
        a, b = _concentric(spacing, (r, big_r), centre)
        d = ev.surface_distances(a, b, 1, spacing)
        worst = max(worst, *(abs(d[m] - (big_r - r)) for m in ("hausdorff", "hd95", "mean_surface")))
    assert worst <= max(spacing) / 2


def test_surface_points_lie_on_a_sphere_and_carry_its_area():
    """The surface net of a voxelised sphere (r = 9 mm at 1 x 1 x 2 mm): every smooth point
    within 0.5 mm of the sphere (measured 0.38 mm) and on average on it (measured -0.04 mm);
    the fast net is taut, a little inside the sphere (measured -0.39 mm on average, up to
    0.71 mm); the areas add up to the sphere's area within 10%."""
    spacing, centre, radius = (1.0, 1.0, 2.0), (12.2, 11.7, 12.4), 9.0
    (mask,) = _spheres((25, 25, 13), spacing, centre, (radius,))
    points, areas = ev.surface_points(mask.astype(bool), spacing)
    radial = np.linalg.norm(points - centre, axis=1) - radius
    assert points.shape == (areas.size, 3) and np.all(areas > 0)
    assert np.abs(radial).max() < 0.5 and abs(np.average(radial, weights=areas)) < 0.1
    fast_points, fast_areas = ev.surface_points(mask.astype(bool), spacing, surfaces="fast")
    fast_radial = np.linalg.norm(fast_points - centre, axis=1) - radius
    assert np.abs(fast_radial).max() < 1.0 and -0.5 < np.average(fast_radial, weights=fast_areas) < -0.2
    assert np.array_equal(fast_areas, areas)
    assert areas.sum() == pytest.approx(4 * math.pi * radius ** 2, rel=0.1)
    d_ab, d_ba = ev.directed_distances(mask, mask, spacing)
    assert d_ab.size == d_ba.size == areas.size and not d_ab.any() and not d_ba.any()


def test_empty_labels_are_reported_not_raised():
    a = np.zeros((8, 8, 8), np.int32)
    b = np.zeros_like(a)
    a[2:5, 2:5, 2:5] = 2
    rows = ev.evaluate_arrays(a, b, [2, 3], spacing=(1, 1, 1))
    both = _by_metric(rows, 3)  # in neither map
    assert both["dice"] == 1.0 and both["hausdorff"] == both["hd95"] == both["mean_surface"] == 0.0
    assert both["volume_diff_rel"] == 0.0
    one = _by_metric(rows, 2)  # only in the ground truth
    assert one["dice"] == 0.0 and all(math.isinf(one[m]) for m in ("hausdorff", "hd95", "mean_surface"))
    assert one["volume_diff_mm3"] == -27.0 and one["volume_diff_rel"] == -1.0
    only_pred = _by_metric(ev.evaluate_arrays(b, a, [2], (1, 1, 1)), 2)
    assert only_pred["dice"] == 0.0 and math.isinf(only_pred["hd95"]) and math.isinf(only_pred["volume_diff_rel"])
    assert ev.surface_distances(a, b, 3, (1, 1, 1))["hausdorff"] == 0.0
    assert math.isinf(ev.surface_distances(a, b, 2, (1, 1, 1))["mean_surface"])


def _full_grid_reference(gt, pred, label, spacing):
    """The same surfaces on the whole grid and the area-weighted statistics written out
    plainly: a reference for the bounding-box computation."""
    ma, mb = gt == label, pred == label
    (pa, wa), (pb, wb) = ev.surface_points(ma, spacing), ev.surface_points(mb, spacing)
    d_ab, d_ba = KDTree(pb).query(pa)[0], KDTree(pa).query(pb)[0]
    d, w = np.concatenate([d_ab, d_ba]), np.concatenate([wa, wb])
    order = np.argsort(d)
    hd95 = d[order][np.cumsum(w[order]) >= 0.95 * w.sum()][0]
    return {"dice": 2 * np.sum(ma & mb) / (ma.sum() + mb.sum()), "hausdorff": d.max(), "hd95": hd95,
            "mean_surface": np.sum(w * d) / w.sum()}


def test_bounding_box_computation_equals_full_grid():
    rng = np.random.default_rng(3)
    shape, spacing = (34, 30, 22), (1.2, 0.9, 2.0)

    def random_map():
        noise = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
        out = np.digitize(noise, np.quantile(noise, [0.3, 0.5, 0.7, 0.85]))  # labels 0..4, touching the edges
        out[out == 4] = 41
        return out.astype(np.int32)

    gt = random_map()
    pred = np.where(rng.random(shape) < 0.05, np.roll(gt, 1, axis=2), gt)
    pred[:5] = np.where(pred[:5] == 3, 0, pred[:5])
    labels = [1, 2, 3, 41]
    rows = ev.evaluate_arrays(gt, pred, labels, spacing)
    for label in labels:
        ref = _full_grid_reference(gt, pred, label, spacing)
        got = _by_metric(rows, label)
        for metric, value in ref.items():
            assert got[metric] == pytest.approx(value, rel=1e-12, abs=1e-12), (label, metric)
        assert ev.surface_distances(gt, pred, label, spacing)["hd95"] == pytest.approx(ref["hd95"], rel=1e-12)
    assert ev.dice(gt, pred, labels) == {lab: pytest.approx(_by_metric(rows, lab)["dice"]) for lab in labels}
    # labels run in parallel threads: the same rows, in the same order, on 1 or 3 threads
    assert ev.evaluate_arrays(gt, pred, labels, spacing, threads=1) == rows
    assert ev.evaluate_arrays(gt, pred, labels, spacing, threads=3) == rows
    with pytest.raises(InputError, match="threads must be >= 1"):
        ev.evaluate_arrays(gt, pred, labels, spacing, threads=0)


# ----------------------------------------------------------------------------- paired test
def test_paired_test_equals_scipy_and_gives_the_direction():
    a = [0.91, 0.85, 0.78, 0.88, 0.69, 0.93, 0.81, 0.74]
    b = [0.88, 0.86, 0.70, 0.80, 0.60, 0.90, 0.75, 0.73]
    ref = stats.wilcoxon(a, b)
    t = ev.paired_test(a, b, higher_is_better=True, names=("ours", "theirs"))
    assert t["statistic"] == ref.statistic and t["p_value"] == ref.pvalue
    assert t["n"] == 8 and t["median_difference"] == pytest.approx(np.median(np.subtract(a, b)))
    assert t["better"] == "ours"
    assert ev.paired_test(a, b, higher_is_better=False, names=("ours", "theirs"))["better"] == "theirs"
    assert ev.paired_test(b, a, names=("x", "y"))["better"] == "y"


def test_paired_test_edge_cases():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from scipy either
        same = ev.paired_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same["p_value"] == 1.0 and same["statistic"] == 0.0 and same["better"] is None
    assert "zero" in same["note"]
    both_inf = ev.paired_test([math.inf, 2.0, 3.0], [math.inf, 1.0, 1.0], higher_is_better=False)
    assert both_inf["n"] == 3 and not math.isnan(both_inf["p_value"])
    # two non-zero differences cannot be significant: no winner, the note says which way it leaned
    assert both_inf["better"] is None and "not significant" in both_inf["note"] and "favours B" in both_inf["note"]
    one = ev.paired_test([0.9], [0.5], names=("ours", "theirs"))
    assert one["p_value"] == 1.0 and one["better"] is None and "too few subjects" in one["note"]
    lenient = ev.paired_test([0.9, 0.8, 0.7], [0.5, 0.4, 0.3], names=("ours", "theirs"), alpha=1.01)
    assert lenient["better"] == "ours"
    nan = ev.paired_test([math.nan, 2.0], [1.0, 1.0])
    assert nan["n"] == 1
    empty = ev.paired_test([], [])
    assert empty["n"] == 0 and math.isnan(empty["p_value"])
    with pytest.raises(ValueError, match="same length"):
        ev.paired_test([1.0, 2.0], [1.0])


# ----------------------------------------------------------------------------- files
def test_prediction_on_another_grid_is_resampled_with_a_warning_or_refused(tmp_path):
    spacing = (1.0, 1.0, 1.0)
    (gt,) = _spheres((24, 24, 24), spacing, (12, 12, 12), (7.0,))
    gt_path = _save(tmp_path / "gt" / "s1.nii.gz", gt)
    # the prediction: the same sphere on a 2 mm grid shifted by 1 mm (different shape and affine)
    affine2 = np.diag([2.0, 2.0, 2.0, 1.0])
    affine2[:3, 3] = -1.0
    (pred2mm,) = _spheres((14, 14, 14), (2.0, 2.0, 2.0), (13, 13, 13), (7.0,))
    pred_path = _save(tmp_path / "pred" / "s1_synthseg.nii.gz", pred2mm, affine2)
    with pytest.warns(UserWarning, match="resampled onto the ground-truth grid"):
        rows = ev.evaluate_pair(gt_path, pred_path, [1])
    got = _by_metric(rows, 1)
    assert got["dice"] > 0.8 and got["hausdorff"] <= 2.5
    with pytest.raises(InputError) as err:
        ev.evaluate_pair(gt_path, pred_path, [1], on_mismatch="error")
    assert str(gt_path) in str(err.value) and str(pred_path) in str(err.value)
    # same grid: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _by_metric(ev.evaluate_pair(gt_path, gt_path, [1]), 1)["dice"] == 1.0


def test_subject_names_and_matching():
    assert ev.subject_key("pred/sub-01_T1w_synthseg.nii.gz") == "sub-01_T1w"
    assert ev.subject_key("sub-02.seg.mgz") == "sub-02"
    assert ev.subject_key("gt/sub-03_aseg.nii") == "sub-03"
    assert ev.subject_key("seg.nii.gz") == "seg"  # never stripped to nothing
    pairs, gt_only, pred_only = ev.match_subjects(
        ["gt/a.nii.gz", "gt/b_labels.nii.gz", "gt/c.nii.gz"],
        ["p/a_synthseg.nii.gz", "p/b_SynthSeg.nii.gz", "p/d_synthseg.nii.gz"])
    assert list(pairs) == ["a", "b"] and pairs["b"] == (Path("gt/b_labels.nii.gz"), Path("p/b_SynthSeg.nii.gz"))
    assert gt_only == ["c"] and pred_only == ["d"]
    with pytest.raises(InputError, match="same subject name|subject name 'a'"):
        ev.match_subjects(["gt/a.nii.gz"], ["p/a.nii.gz", "p/a_synthseg.nii.gz"])


def _study(tmp_path, n=5):
    """Ground truth (two boxes, labels 2 and 41), method A (1-voxel shift), method B (2-voxel shift)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        gt = np.zeros((16, 14, 12), np.int32)
        x0 = 2 + int(rng.integers(0, 3))
        gt[x0:x0 + 5, 3:10, 3:9] = 2
        gt[x0 + 6:x0 + 10, 3:10, 3:9] = 41
        _save(tmp_path / "gt" / f"sub-{i:02d}.nii.gz", gt)
        _save(tmp_path / "predA" / f"sub-{i:02d}_synthseg.nii.gz", np.roll(gt, 1 if i % 2 else -1, axis=1))
        _save(tmp_path / "predB" / f"sub-{i:02d}_synthseg.nii.gz", np.roll(gt, 2, axis=1))


def test_evaluate_folders_reports_missing_subjects_and_writes_outputs(tmp_path):
    _study(tmp_path)
    _save(tmp_path / "predA" / "sub-99_synthseg.nii.gz", np.zeros((16, 14, 12)))  # no ground truth
    (tmp_path / "predB" / "sub-04_synthseg.nii.gz").unlink()  # B misses a subject
    with pytest.warns(UserWarning) as record:
        res = ev.evaluate_folders(tmp_path / "gt", tmp_path / "predA", [2, 41], pred2_dir=tmp_path / "predB",
                                  out_dir=tmp_path / "out")
    messages = " ".join(str(w.message) for w in record)
    assert "sub-99" in messages and "sub-04" in messages
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["methods"]["predA"]["predictions_without_gt"] == ["sub-99"]
    assert summary["methods"]["predB"]["gt_without_prediction"] == ["sub-04"]
    assert summary["methods"]["predA"]["n_matched"] == 5
    assert summary["paired_subjects"] == [f"sub-0{i}" for i in range(4)]
    assert summary["mean_dice"]["predA"]["2"] > summary["mean_dice"]["predB"]["2"]
    with open(tmp_path / "out" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == ev.CSV_COLUMNS
    assert len(rows) == (5 + 4) * 2 * len(ev.METRICS)
    assert {r["name"] for r in rows} == {"Left-Cerebral-White-Matter", "Right-Cerebral-White-Matter"}
    paired = {(t["label"], t["metric"]): t for t in res.paired}
    # four subjects cannot make a Wilcoxon test significant (smallest p 0.125): no winner is named
    for metric in ("dice", "hd95"):
        assert paired[(2, metric)]["better"] is None and "the median favours predA" in paired[(2, metric)]["note"]
    assert paired[(2, "dice")]["n"] == 4
    assert (tmp_path / "out" / "paired_tests.csv").read_text().startswith(",".join(ev.PAIRED_COLUMNS))
    for png in ("dice_boxplot.png", "hd95_boxplot.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left


def test_evaluate_folders_without_any_match_is_an_input_error(tmp_path):
    _save(tmp_path / "gt" / "a.nii.gz", np.zeros((4, 4, 4)))
    _save(tmp_path / "pred" / "b.nii.gz", np.zeros((4, 4, 4)))
    with pytest.raises(InputError, match="no prediction matches"), pytest.warns(UserWarning):
        ev.evaluate_folders(tmp_path / "gt", tmp_path / "pred", [1])


# ----------------------------------------------------------------------------- command line
def test_cli_end_to_end(tmp_path, capsys):
    _study(tmp_path, n=4)
    np.save(tmp_path / "labels.npy", np.array([2, 41]))
    out = tmp_path / "eval"
    rc = main(["evaluate", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "predA"), "--pred2",
               str(tmp_path / "predB"), "--labels", str(tmp_path / "labels.npy"), "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "Left-Cerebral-White-Matter" in captured.out and "p Dice" in captured.out
    for name in ("metrics.csv", "paired_tests.csv", "summary.json", "dice_boxplot.png", "hd95_boxplot.png"):
        assert (out / name).is_file(), name
    rc = main(["evaluate", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "predA"), "--labels", "2", "41",
               "--out", str(tmp_path / "eval1"), "--on-mismatch", "error", "--surfaces", "fast", "--threads", "1"])
    assert rc == 0 and (tmp_path / "eval1" / "metrics.csv").is_file()
    assert not (tmp_path / "eval1" / "paired_tests.csv").exists()
    summaries = [json.loads((folder / "summary.json").read_text()) for folder in (out, tmp_path / "eval1")]
    assert [s["surfaces"] for s in summaries] == ["smooth", "fast"]


@pytest.mark.parametrize("args, expected", [
    (["--gt", "{tmp}/missing", "--pred", "{tmp}/predA", "--labels", "2"], "missing: no such file or directory"),
    (["--gt", "{tmp}/gt", "--pred", "{tmp}/predA", "--labels", "two"], "--labels must be integers"),
    (["--gt", "{tmp}/gt", "--pred", "{tmp}/predA", "--labels", "{tmp}/nope.npy"], "no such label list file"),
    (["--gt", "{tmp}/gt", "--pred", "{tmp}/predA", "--labels", "2", "--threads", "0"], "error: threads must be >= 1"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, args, expected):
    _study(tmp_path, n=1)
    rc = main(["evaluate", *[a.format(tmp=tmp_path) for a in args], "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("synthseg: error: ") and expected in err and err.count("\n") == 1


def test_cli_grid_mismatch_error_mode_names_both_files(tmp_path, capsys):
    _save(tmp_path / "gt" / "s.nii.gz", np.ones((6, 6, 6)))
    _save(tmp_path / "pred" / "s_synthseg.nii.gz", np.ones((3, 3, 3)), np.diag([2.0, 2.0, 2.0, 1.0]))
    rc = main(["evaluate", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"), "--labels", "1",
               "--out", str(tmp_path / "out"), "--on-mismatch", "error"])
    err = capsys.readouterr().err
    assert rc == 1 and "s.nii.gz" in err and "s_synthseg.nii.gz" in err and err.count("\n") == 1
    rc = main(["evaluate", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"), "--labels", "1",
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 0 and err.startswith("synthseg: warning: ") and "resampled" in err


def test_benchmark_quick(tmp_path):
    """``benchmarks/evaluate.py --quick`` on a small synthetic map: both implementations agree."""
    rng = np.random.default_rng(1)
    noise = ndimage.gaussian_filter(rng.normal(size=(40, 44, 36)), 2.0)
    labels = np.array([0, 2, 3, 41])[np.digitize(noise, np.quantile(noise, [0.4, 0.6, 0.8]))]
    _save(tmp_path / "labels.nii.gz", labels)
    out = tmp_path / "evaluate.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "evaluate.py"), "--quick", "--labels",
                        str(tmp_path / "labels.nii.gz"), "--out", str(out)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["benchmark"] == "evaluate" and data["results"]["max_abs_difference"] < 1e-9
    assert data["results"]["bounding_box"]["median_s"] > 0 and data["results"]["full_grid"]["median_s"] > 0
