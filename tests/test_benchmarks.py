"""The benchmark scripts run end to end (smoke runs; the real numbers come from running them by hand)."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from synthseg.data.datasets import cache_root

ROOT = Path(__file__).resolve().parent.parent


def _small_labels_args(tmp_path, blocks_labels, voxel_mm=1.0):
    """``--labels`` of a small synthetic map unless the real training maps are in the data cache."""
    cached = cache_root() / ("training_labels" if voxel_mm == 1.0 else "training_labels_2mm")
    if len(list(cached.glob("*.nii.gz"))) >= 2:
        return []
    labels = np.kron(blocks_labels, np.ones((3, 3, 3), np.int32))  # (72, 84, 60)
    nib.save(nib.Nifti1Image(labels, np.eye(4)), str(tmp_path / "labels.nii.gz"))
    return ["--labels", str(tmp_path / "labels.nii.gz")]


@pytest.mark.slow
def test_generation_benchmark_quick(tmp_path, blocks_labels):
    """``benchmarks/generation.py --quick --no-torchio`` writes positive volumes/s for our pipeline
    and, in the same interleaved run, cornucopia's ``matched`` configuration with its ratio and
    per-step breakdown; without cornucopia installed, the cornucopia row says so and the rest runs.

    It uses the real training label maps when they are in the data cache; otherwise a small
    synthetic map (so the test needs neither the network nor torch).
    """
    args = _small_labels_args(tmp_path, blocks_labels)
    out = tmp_path / "generation.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "generation.py"), "--quick",
                        "--no-torchio", "--threads", "1", "--out", str(out), *args],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(out.read_text())
    ours = [row for row in data["results"] if row["pipeline"] == "ours" and row["status"] == "ok"]
    assert ours and all(row["volumes_per_second"] > 0 for row in ours)
    assert all(row["size"] == 64 for row in ours)
    assert not [row for row in data["results"] if row["pipeline"] == "torchio"]
    assert data["machine"]["cpu_count"] >= 1 and data["date"]
    assert "ours" in data["breakdown_s"]["64"]
    assert not list(tmp_path.glob(".generation.json.*"))  # atomic write left nothing behind
    assert "volumes/s" in r.stdout
    assert data["settings"]["gpu"]["note"] in r.stdout  # says whether a GPU was there
    (cc,) = [row for row in data["results"] if row["pipeline"] == "cornucopia"]
    assert cc["variant"] == "matched" and cc["size"] == 64
    if importlib.util.find_spec("cornucopia") is None:
        assert cc["status"] == "unavailable" and "not installed" in cc["reason"]
        return
    assert cc["status"] == "ok" and cc["volumes_per_second"] > 0 and cc["repeats"] == 3
    assert cc["settings"]["order"] == 1 and cc["settings"]["gmm_fwhm"] == 0 and cc["flip"]
    ratio = data["ratio_ours_over_peers"]["64"]["default"]["cornucopia_matched"]
    assert ratio == pytest.approx(ours[0]["volumes_per_second"] / cc["volumes_per_second"])
    steps = data["breakdown_s"]["64"]["cornucopia_matched"]
    assert {"deform: field", "gmm", "target_labels", "flip"} <= set(steps) and all(t >= 0 for t in steps.values())
    assert data["cornucopia_notes"] and "x" in r.stdout


def test_generation_benchmark_cornucopia_matched_settings(blocks_labels):
    """benchmarks/generation.py: the cornucopia configuration matched to ours groups left and
    right labels into one intensity class, keeps our targets, and takes our ranges."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.generation import cornucopia_matched_settings
    from synthseg import brain_options

    opts = brain_options()
    s = cornucopia_matched_settings(96, opts, np.unique(blocks_labels), blocks_labels.shape)
    assert s["synth_labels"] == [(2, 41), (3, 42)]  # our generation classes: left = right
    assert s["target_labels"] == [(2,), (3,), (41,), (42,)]
    assert s["patch"] == 96 and s["order"] == 1 and s["gmm_fwhm"] == 0 and not s["snr"]
    assert s["elastic_steps"] == opts.integration_steps and s["rotation"] == opts.rotation
    assert s["elastic_nodes"] == 4 and s["bias"] == 3  # ceil(0.04 * 96), ceil(0.025 * 96)


def test_generation_benchmark_ratios_and_uneven_repeats():
    """Ratios ours / peer for every peer; ``time_interleaved`` gives a slow peer fewer calls."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.common import time_interleaved
    from benchmarks.generation import peer_ratios, ratios

    rows = [{"pipeline": "ours", "variant": "default", "size": 96, "status": "ok", "volumes_per_second": 10.0},
            {"pipeline": "torchio", "variant": "torchio", "size": 96, "status": "ok", "volumes_per_second": 0.5},
            {"pipeline": "cornucopia", "variant": "matched", "size": 96, "status": "ok", "volumes_per_second": 2.0},
            {"pipeline": "cornucopia", "variant": "defaults", "size": 96, "status": "unavailable"}]
    assert peer_ratios(rows) == {"96": {"default": {"torchio": 20.0, "cornucopia_matched": 5.0}}}
    assert ratios(rows) == {"96": {"default": 20.0}}
    calls = {"a": 0, "b": 0}
    stats = time_interleaved({"a": lambda: calls.__setitem__("a", calls["a"] + 1),
                              "b": lambda: calls.__setitem__("b", calls["b"] + 1)},
                             repeats={"a": 3, "b": 1}, warmup={"a": 1, "b": 0})
    assert calls == {"a": 4, "b": 1} and len(stats["a"]["times_s"]) == 3 and len(stats["b"]["times_s"]) == 1
    assert stats["b"]["first_call_s"] is None and stats["a"]["first_call_s"] is not None


@pytest.mark.slow
def test_generation_training_benchmark_quick(tmp_path, blocks_labels):
    """``benchmarks/generation_training.py --quick``: training steps (generation + U-Net
    forward/backward, Keras' torch backend) for ours, the U-Net alone and cornucopia's loader
    (reported unavailable without cornucopia); without torch it refuses clearly."""
    out = tmp_path / "generation_training.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "generation_training.py"), "--quick",
                        "--no-torchio", "--threads", "1", "--out", str(out),
                        *_small_labels_args(tmp_path, blocks_labels, voxel_mm=2.0)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    if importlib.util.find_spec("torch") is None:
        assert r.returncode == 1 and "needs torch" in r.stderr
        return
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["settings"]["keras_backend"] == "torch" and data["settings"]["threads"] == 1
    rows = {row["peer"]: row for row in data["results"]}
    assert set(rows) == {"unet_only", "ours", "cornucopia_matched"}
    for peer in ("unet_only", "ours"):
        row = rows[peer]
        assert row["status"] == "ok" and row["crop"] == 32 and row["volumes_per_second"] > 0
        assert row["step_s"] >= row["unet_s"] > 0 and 0 <= row["generation_share"] < 1
    assert rows["ours"]["ratio_ours_over_this"] == 1.0
    cc = rows["cornucopia_matched"]
    if importlib.util.find_spec("cornucopia") is None:
        assert cc["status"] == "unavailable" and "not installed" in cc["reason"]
    else:
        assert cc["status"] == "ok" and cc["generation_s"] > 0 and cc["ratio_ours_over_this"] > 0
    assert "generation share" in r.stdout and data["settings"]["gpu"]["note"] in r.stdout


def test_learning_curve_extend_keeps_earlier_points(tmp_path):
    """benchmarks/learning_curve.py --extend: a run's new points join its kept curve in step order,
    a point at a step already kept replaces it; without --keep it is refused (exit 1)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.learning_curve import extended, main

    kept = [{"step": 250, "mean_dice": 0.5}, {"step": 500, "mean_dice": 0.55}]
    new = [{"step": 750, "mean_dice": 0.6}, {"step": 500, "mean_dice": 0.56}]
    assert [(p["step"], p["mean_dice"]) for p in extended(kept, new)] == [(250, 0.5), (500, 0.56), (750, 0.6)]
    assert extended([], new) == sorted(new, key=lambda p: p["step"])
    start = {"step": 250, "mean_dice": 0.5, "continued": "a:250"}  # --after a:250, then --init at the same step
    init = {"step": 250, "mean_dice": 0.4}
    assert extended([start, init], [start, new[0]]) == [start, init, new[0]]
    assert main([str(tmp_path / "run"), "--extend", "--out", str(tmp_path / "lc.json")]) == 1


def test_learning_curve_counts_cpu_time_and_wall_time_times_cores_where_not_logged(tmp_path):
    """benchmarks/learning_curve.py: a checkpoint's CPU minutes are the run's process CPU time
    to that step; steps logged before that column existed count wall time x --cores."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.learning_curve import cpu_seconds

    (tmp_path / "training_log.csv").write_text("step,loss,dice,learning_rate,seconds,cpu_seconds\n"
                                               "1,0.9,0.1,1e-4,3.0,\n2,0.8,0.2,1e-4,6.0,\n"
                                               "3,0.7,0.3,1e-4,60.0,5.0\n")  # step 3: paused 50 s
    assert cpu_seconds(tmp_path, cores=2) == {1: 6.0, 2: 12.0, 3: 17.0}


def test_accuracy_tissue_helpers():
    """benchmarks/accuracy.py: ground truth = most likely class above 0.5; structures merge into
    GM/WM/CSF as synthseg.data.labels.tissue_groups says; Dice per tissue from hand-made maps."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.accuracy import structures_to_tissues, tissue_dice, tissue_map
    from synthseg.data.labels import tissue_groups

    p = np.zeros((2, 2, 1, 3), np.float32)
    p[0, 0, 0] = [0.6, 0.3, 0.1]  # GM
    p[0, 1, 0] = [0.2, 0.7, 0.1]  # WM
    p[1, 0, 0] = [0.3, 0.3, 0.4]  # no class above 0.5: background
    p[1, 1, 0] = [0.0, 0.1, 0.9]  # CSF
    np.testing.assert_array_equal(tissue_map(p)[..., 0], [[1, 2], [0, 3]])
    groups = tissue_groups()
    seg = np.array([groups["GM"][0], groups["WM"][0], 0, groups["CSF"][-1], 165])
    np.testing.assert_array_equal(structures_to_tissues(seg, [0, *groups["GM"]]), [1, 2, 0, 3, 0])
    truth = np.array([1, 1, 2, 2, 3, 0])
    pred = np.array([1, 2, 2, 2, 0, 0])
    d = tissue_dice(truth, pred)
    assert d["GM"] == pytest.approx(2 * 1 / 3) and d["WM"] == pytest.approx(2 * 2 / 5) and d["CSF"] == 0.0
    assert tissue_dice(np.zeros(3), np.zeros(3)) == {"GM": 1.0, "WM": 1.0, "CSF": 1.0}


def test_accuracy_confusion_volumes():
    """benchmarks/accuracy.py: the confusion table counts each voxel once, in mL, rows the truth."""
    from benchmarks.accuracy import confusion_ml

    truth = np.array([[[0, 1, 1, 3]]])
    predicted = np.array([[[0, 1, 3, 3]]])
    table = confusion_ml(truth, predicted, (2.0, 2.0, 2.0))  # 8 uL per voxel
    assert table["GM"]["CSF"] == pytest.approx(0.008) and table["CSF"]["CSF"] == pytest.approx(0.008)
    assert table["GM"]["GM"] == pytest.approx(0.008) and table["WM"]["WM"] == 0.0
    assert sum(v for row in table.values() for v in row.values()) == pytest.approx(4 * 0.008)


def test_accuracy_outside_brain_volume():
    """benchmarks/accuracy.py: brain labels farther than 10 mm from the brain mask, in mL, with
    the voxel size taken from the affine."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.accuracy import outside_brain_ml

    mask = np.zeros((40, 10, 10), bool)
    mask[:10] = True
    predicted = np.zeros((40, 10, 10), np.int32)
    predicted[:10] = 3  # inside the mask: not counted
    predicted[15:20] = 2  # 6-10 mm away at 1 mm voxels: not counted
    predicted[30:35, :2, :2] = 42  # 21-25 mm away: 20 voxels
    assert outside_brain_ml(predicted, mask, np.eye(4)) == pytest.approx(20 / 1000)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])  # 2 mm voxels: rows 15-19 are 12-20 mm away
    assert outside_brain_ml(predicted, mask, affine) == pytest.approx((5 * 100 + 20) * 8 / 1000)


def test_qc_degradations_and_true_quality():
    from benchmarks import qc

    rng = np.random.default_rng(0)
    image = rng.random((12, 12, 12)).astype(np.float32)
    truth = np.zeros((12, 12, 12), np.int32)
    truth[3:9, 3:9, 3:9] = 2
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for condition in qc.CONDITIONS:
        img, tru, aff = qc.degrade(condition, image, truth, affine, rng)
        assert img.shape == tru.shape, condition
    thick, thick_truth, thick_affine = qc.degrade("thick", image, truth, affine, rng)
    assert thick.shape == (12, 12, 4) and thick_affine[2, 2] == 6.0
    assert not qc.degrade("not a brain", image, truth, affine, rng)[1].any()
    quality, per = qc.true_quality(truth, truth)
    assert quality == 1.0 and per["white matter"] == 1.0 and per["thalamus"] is None
    assert qc.true_quality(np.zeros_like(truth), truth)[0] == 0.0  # no brain: quality 0
    threshold, accuracy = qc.best_threshold([0.9, 0.8, 0.3, 0.2], [True, True, False, False])
    assert accuracy == 1.0 and threshold == pytest.approx(0.55)  # the middle of the gap


@pytest.mark.slow
@pytest.mark.network
def test_qc_benchmark_runs_on_the_shipped_model(tmp_path):
    out = tmp_path / "qc.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "qc.py"), "--n", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    assert len(results["scans"]) == 8 and -1 <= results["spearman"] <= 1
    assert out.with_suffix(".png").stat().st_size > 10_000


@pytest.mark.slow
def test_allocator_benchmark_quick(tmp_path):
    """``benchmarks/allocator.py --quick`` times the system allocator and glibc's tunables (and
    jemalloc where installed) in one run and writes each one's seconds and speed-up."""
    out = tmp_path / "allocator.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "allocator.py"), "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    data = json.loads(out.read_text())
    rows = {row["setting"]: row for row in data["results"]}
    assert {"system", "glibc"} <= set(rows)
    assert all(row["seconds_per_step"] > 0 for row in rows.values())
    assert rows["system"]["speedup_over_system"] == pytest.approx(1.0)
    assert rows["glibc"]["speedup_over_system"] == pytest.approx(
        rows["system"]["seconds_per_step"] / rows["glibc"]["seconds_per_step"])
    assert "GLIBC_TUNABLES" in rows["glibc"]["environment"] and "speed-up over system" in r.stdout


def test_sharp_subjects_region_dice():
    """benchmarks/sharp_subjects.py: cortex is labels 3/42, the tissues merge as tissue_groups
    says, the brain is every label but 0; a region in neither volume scores 1."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.sharp_subjects import region_dice

    truth = np.array([3, 42, 2, 24, 0, 0])
    pred = np.array([3, 17, 2, 0, 0, 41])
    d = region_dice(truth, pred)
    assert d["cortex"] == pytest.approx(2 / 3)  # 17 (hippocampus) is GM but not cortex
    assert d["GM"] == pytest.approx(1.0) and d["WM"] == pytest.approx(2 / 3) and d["CSF"] == 0.0
    assert d["brain"] == pytest.approx(2 * 3 / 8)
    assert region_dice(np.zeros(3, int), np.zeros(3, int))["cortex"] == 1.0


@pytest.mark.slow
def test_sharp_subjects_benchmark_quick(tmp_path, blocks_labels):
    """``benchmarks/sharp_subjects.py --quick`` segments a synthetic subject with each model,
    refined and not, and compares every model with the first scan by scan (a model against
    itself is never better)."""
    args = _small_labels_args(tmp_path, blocks_labels)
    out = tmp_path / "sharp.json"
    from synthseg.inference.model import default_model_path

    shipped = str(default_model_path())
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sharp_subjects.py"), "--quick", "--shape",
                        "64", "64", "64", "--model", shipped, "--model", shipped, "--out", str(out), *args],
                       capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    assert [x["refined"] for x in results] == [False, True, False, True]
    for x in results:
        assert len(x["per_scan"]) == 1 and all(0.0 <= v <= 1.0 for v in x["mean"].values())
    assert "better_than_first" not in results[0] and "better_than_first" not in results[1]
    assert results[2]["better_than_first"] == results[3]["better_than_first"] == {"cortex": 0, "brain": 0}
    assert results[2]["mean"] == pytest.approx(results[0]["mean"])  # same model, same subject
    assert "cortex better than first" in r.stdout
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sharp_subjects.py"), "--quick",
                        "--model", str(tmp_path / "missing"), "--out", str(out), *args],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 1 and "error:" in r.stderr and "Traceback" not in r.stderr


def test_real_subject_contrasts_dice_and_ceiling():
    """benchmarks/real_subject.py: the inverted scan reverses the T1's order inside the head and
    is 0 outside; the PD-like one is bright for grey matter and CSF, dark for white matter;
    cortex Dice counts both cortex labels against both ribbons and each side against its own;
    a ribbon survives a round trip through 1 mm voxels unchanged and loses Dice through 3 mm."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.real_subject import CASES, ceiling, contrasts, cortex_dice

    t1 = np.zeros((40, 40, 40), np.float32)
    t1[5:35, 5:35, 5:35] = 30.0  # CSF
    t1[10:30, 10:30, 10:30] = 70.0  # GM
    t1[15:25, 15:25, 15:25] = 110.0  # WM
    scans = contrasts(t1)
    inverted, pd = scans[CASES[1]], scans[CASES[2]]
    assert inverted[20, 20, 20] < inverted[12, 12, 12] < inverted[7, 7, 7] and inverted[0, 0, 0] == 0
    assert pd[20, 20, 20] < pd[12, 12, 12] and pd[12, 12, 12] == pytest.approx(pd[7, 7, 7], abs=0.15)
    assert pd[0, 0, 0] == 0 and scans[CASES[0]] is t1

    lh = np.zeros((8, 8, 8), bool)
    rh = lh.copy()
    lh[:4, :4] = True
    rh[4:, 4:] = True
    seg = np.zeros((8, 8, 8), np.int32)
    seg[lh] = 42  # right label on the left ribbon
    seg[rh] = 42
    d = cortex_dice({"lh": lh, "rh": rh}, seg)
    assert d["cortex"] == 1.0 and d["lh"] == 0.0 and d["rh"] == pytest.approx(2 * 128 / (128 + 256))

    ribbon = np.zeros((40, 40, 40), bool)
    ribbon[8:32, 8:32, 18:21] = True  # a 3 mm sheet
    assert ceiling({"lh": ribbon, "rh": np.zeros_like(ribbon)}, np.eye(4), 1.0) == 1.0
    assert ceiling({"lh": ribbon, "rh": np.zeros_like(ribbon)}, np.eye(4), 3.0) < 0.95


@pytest.mark.slow
@pytest.mark.network
def test_real_subject_benchmark_quick(tmp_path):
    """``benchmarks/real_subject.py --quick`` fetches S1 (pycortex's sdist), builds its ribbons
    from its surfaces (about 270 mL per hemisphere) and scores the shipped network on its T1."""
    out = tmp_path / "real.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "real_subject.py"), "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    assert all(200 < ml < 350 for ml in data["settings"]["ribbon_ml"].values())
    (result,) = data["results"]
    assert list(result["per_case"]) == ["T1"] and 0.5 < result["per_case"]["T1"]["cortex"] < result["ceiling_cortex"]
    assert 0.9 < result["ceiling_cortex"] < 1.0


def test_sharp_subjects_thick_slices():
    """benchmarks/sharp_subjects.py --slice-mm: each thick slice is the mean of its 1 mm slices,
    its truth is the middle one's, the affine puts it there; the remainder is dropped; 1 mm is
    the subject itself."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.sharp_subjects import thick_slices

    image = np.arange(2 * 2 * 11, dtype=np.float32).reshape(2, 2, 11)
    truth = np.tile(np.arange(11), (2, 2, 1))
    thick, labels, affine = thick_slices(image, truth, 5)
    assert thick.shape == labels.shape == (2, 2, 2)
    assert thick[0, 0].tolist() == [2.0, 7.0]  # slices 0-4 and 5-9 averaged; slice 10 dropped
    assert labels[0, 0].tolist() == [2, 7]
    centre = affine @ np.array([0, 0, 1, 1.0])
    assert affine[2, 2] == 5.0 and centre[2] == 7.0  # the second thick slice sits on 1 mm slice 7
    same = thick_slices(image, truth, 1)
    assert np.array_equal(same[0], image) and np.array_equal(same[1], truth) and np.array_equal(same[2], np.eye(4))
    thick, labels, affine = thick_slices(image, truth, 2)
    assert labels[0, 0].tolist() == [0, 2, 4, 6, 8] and affine[2, 3] == 0.5
    with pytest.raises(ValueError, match="whole number"):
        thick_slices(image, truth, 0)
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sharp_subjects.py"), "--slice-mm", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--slice-mm must be" in r.stderr and "Traceback" not in r.stderr


def _paired_run(folder, own_losses, dice, seed=0, spc=3):
    """A run folder as benchmarks/paired_runs.py reads it: options, a log of running means."""
    folder.mkdir()
    (folder / "options.json").write_text(json.dumps({"training": {"seed": seed, "batch_size": 1,
                                                                  "steps_per_checkpoint": spc},
                                                     "generator": {"flip_prob": 0.5}}))
    rows, total = ["step,loss,dice,learning_rate,seconds"], 0.0
    for step, loss in enumerate(own_losses, start=1):
        k = (step - 1) % spc + 1
        total = loss if k == 1 else total + loss
        rows.append(f"{step},{total / k:.6g},{dice},1e-4,{step}")
    (folder / "training_log.csv").write_text("\n".join(rows) + "\n")
    (folder / "dice_per_label.csv").write_text(f"step,Left-Cortex,Right-Cortex\n{spc},{dice},0.5\n")


def test_paired_runs(tmp_path):
    """benchmarks/paired_runs.py: each step's own loss is compared (not the log's running
    means), B's lower losses count as better, per-label changes are listed; runs that do not
    draw the same samples, or are not runs, are refused with a clear error."""
    a = [0.5, 0.3, 0.7, 0.4, 0.6, 0.2]
    _paired_run(tmp_path / "a", a, 0.70)
    _paired_run(tmp_path / "b", [x - 0.01 * (i + 1) for i, x in enumerate(a)], 0.75)
    out = tmp_path / "paired.json"
    script = str(ROOT / "benchmarks" / "paired_runs.py")
    r = subprocess.run([sys.executable, script, str(tmp_path / "a"), str(tmp_path / "b"), "--window", "3",
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    first, second = results["windows"]
    assert first["difference"] == pytest.approx(-0.02, abs=1e-5)
    assert second["difference"] == pytest.approx(-0.05, abs=1e-5)
    assert first["b_better_share"] == 1.0 and first["ci95"] == pytest.approx(1.96 * 0.01 / 3 ** 0.5, rel=1e-3)
    assert results["intervals"][0]["difference"] == pytest.approx(0.05)
    assert results["label_changes"] == pytest.approx({"Left-Cortex": 0.05, "Right-Cortex": 0.0})
    assert "B lower" in r.stdout and out.with_suffix(".png").is_file()
    _paired_run(tmp_path / "c", a, 0.70, seed=1)
    r = subprocess.run([sys.executable, script, str(tmp_path / "a"), str(tmp_path / "c"), "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "training.seed differ" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, script, str(tmp_path / "a"), str(tmp_path / "none"), "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "none/options.json: missing" in r.stderr and "Traceback" not in r.stderr


def test_normalisation_gap_helpers():
    """benchmarks/normalisation_gap.py: blur smooths and rescales to [0, 1] (0 gives the crop
    back), the score ignores background and labels absent from the truth, and the summary pairs
    modes and blurs crop by crop."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.normalisation_gap import blurred, mean_label_dice, summarise

    image = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
    assert np.array_equal(blurred(image, 0), image)
    smooth = blurred(image, 2.0)
    assert smooth.min() >= 0 and smooth.max() <= 1 and smooth.max() == 1.0
    assert np.abs(np.diff(smooth, axis=0)).mean() < 0.5 * np.abs(np.diff(image, axis=0)).mean()

    truth = np.array([0, 0, 2, 2, 3, 3])
    assert mean_label_dice(truth, np.array([5, 5, 2, 2, 3, 3])) == 1.0  # background wrong: not scored
    assert mean_label_dice(truth, np.array([0, 0, 2, 3, 3, 3])) == pytest.approx((2 / 3 + 0.8) / 2)
    assert mean_label_dice(np.zeros(4, int), np.ones(4, int)) == 1.0

    scores = {"0": {"moving": [0.6, 0.7, 0.8], "per-crop": [0.7, 0.7, 0.9]},
              "2": {"moving": [0.5, 0.6, 0.6], "per-crop": [0.6, 0.7, 0.8]}}
    rows = summarise(scores)
    assert rows[0]["gap"] == pytest.approx(0.2 / 3) and rows[0]["gap_better"] == 2
    assert "blur_cost_moving" not in rows[0]
    assert rows[1]["blur_cost_moving"] == pytest.approx(-0.4 / 3) and rows[1]["blur_cost_per-crop"] == pytest.approx(-0.2 / 3)
    assert rows[1]["gap_95"] > 0


@pytest.mark.slow
def test_normalisation_gap_benchmark_quick(tmp_path, blocks_labels):
    """``benchmarks/normalisation_gap.py --quick`` scores the shipped model on small crops of a
    label map in both modes and at every blur (the same model twice scores the same), and refuses
    a missing model cleanly."""
    labels = np.kron(blocks_labels, np.ones((2, 2, 2), np.int32))  # (48, 56, 40) at 1.5 mm
    nib.save(nib.Nifti1Image(labels, np.diag([1.5, 1.5, 1.5, 1.0])), str(tmp_path / "labels.nii.gz"))
    from synthseg.inference.model import default_model_path

    shipped = str(default_model_path())
    out = tmp_path / "gap.json"
    script = str(ROOT / "benchmarks" / "normalisation_gap.py")
    args = ["--quick", "--shape", "32", "32", "32", "--labels", str(tmp_path / "labels.nii.gz"), "--out", str(out)]
    r = subprocess.run([sys.executable, script, *args, "--model", shipped, "--model", shipped],
                       capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    first, second = json.loads(out.read_text())["results"]
    assert [row["blur_voxels"] for row in first["rows"]] == [0.0, 1.0, 2.0]
    for row in first["rows"]:
        assert 0 <= row["moving"] <= 1 and 0 <= row["per-crop"] <= 1 and 0 <= row["gap_better"] <= 2
    assert first["per_crop_scores"] == second["per_crop_scores"]
    assert "per-crop - moving" in r.stdout
    r = subprocess.run([sys.executable, script, *args, "--model", str(tmp_path / "missing")],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 1 and "error:" in r.stderr and "Traceback" not in r.stderr


def test_normalisation_gap_per_crop_mode_restores_moving_statistics():
    """Segmenting with a crop's own statistics (training mode) leaves every batch-normalisation
    layer's moving statistics as they were, so the next crop's ``moving`` score is unaffected."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.normalisation_gap import segment
    from synthseg.nn.unet import UNetOptions, batch_norm_layers, build_unet

    network = build_unet(3, 1, UNetOptions(n_levels=2, base_features=4))
    before = [v.numpy().copy() for layer in batch_norm_layers(network) for v in layer.non_trainable_variables]
    image = np.random.default_rng(1).random((8, 8, 8)).astype(np.float32) * 5 + 3  # far from the initial stats
    moving = segment(network, np.array([0, 2, 3]), image, per_crop=False)
    per_crop = segment(network, np.array([0, 2, 3]), image, per_crop=True)
    after = [v.numpy() for layer in batch_norm_layers(network) for v in layer.non_trainable_variables]
    assert before and all(np.array_equal(a, b) for a, b in zip(before, after))
    assert moving.shape == per_crop.shape == (8, 8, 8) and set(np.unique(per_crop)) <= {0, 2, 3}
    assert np.array_equal(segment(network, np.array([0, 2, 3]), image, per_crop=False), moving)
