"""The benchmark scripts run end to end (smoke runs; the real numbers come from running them by hand)."""
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from synthseg.data.datasets import cache_root

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_generation_benchmark_quick(tmp_path, blocks_labels):
    """``benchmarks/generation.py --quick --no-torchio`` writes positive volumes/s for our pipeline.

    It uses the real training label maps when they are in the data cache; otherwise a small
    synthetic map (so the test needs neither the network nor torch).
    """
    cached = cache_root() / "training_labels"
    args = []
    if len(list(cached.glob("*.nii.gz"))) < 2:
        labels = np.kron(blocks_labels, np.ones((3, 3, 3), np.int32))  # (72, 84, 60)
        nib.save(nib.Nifti1Image(labels, np.eye(4)), str(tmp_path / "labels.nii.gz"))
        args = ["--labels", str(tmp_path / "labels.nii.gz")]
    out = tmp_path / "generation.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "generation.py"), "--quick",
                        "--no-torchio", "--out", str(out), *args],
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
