"""The benchmark scripts run end to end (smoke runs; the real numbers come from running them by hand)."""
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from synthseg.datasets import cache_root

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
