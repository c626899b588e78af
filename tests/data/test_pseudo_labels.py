"""Training anatomies beyond the public maps: pseudo-label maps of real scans
(synthseg.data.pseudo_labels), the committed Colin27 map, and how recipes use them."""
from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lab2im.errors import InputError
from lab2im.io import Volume
from synthseg.data import datasets, pseudo_labels
from synthseg.data import labels as protocol
from synthseg.data import training_labels as tl


def _save(path: Path, labels: np.ndarray, voxel_mm: float = 1.0, origin=(-6.0, -6.0, -6.0)) -> Path:
    affine = np.diag([voxel_mm] * 3 + [1.0])
    affine[:3, 3] = origin
    nib.save(nib.Nifti1Image(labels.astype(np.int32), affine), path)
    return path


def _head(n: int = 12) -> np.ndarray:
    labels = np.full((n, n, n), protocol.SOFT_TISSUE, np.int32)
    labels[2:-2, 2:-2, 2:-2] = protocol.CSF
    labels[3:-3, 3:-3, 3:-3] = 3
    labels[n // 2:, 3:-3, 3:-3] = 42  # world x >= 0: the right side
    return labels


def test_extra_label_map_is_resampled_once_and_checked(tmp_path):
    source = _save(tmp_path / "anatomy.nii.gz", _head())
    assert tl.extra_label_map(source, 1.0, tmp_path / "cache") == source
    small = tl.extra_label_map(source, 2.0, tmp_path / "cache")
    assert small.parent.name == "training_labels_extra_2mm" and small.name == "anatomy.nii.gz"
    image = nib.load(small)
    assert image.shape == (6, 6, 6) and np.allclose(np.diag(image.affine)[:3], 2.0)
    assert set(np.unique(np.asarray(image.dataobj)).tolist()) <= {protocol.SOFT_TISSUE, protocol.CSF, 3, 42}
    written = small.stat().st_mtime_ns
    assert tl.extra_label_map(source, 2.0, tmp_path / "cache") == small
    assert small.stat().st_mtime_ns == written  # cached

    with pytest.raises(InputError, match="missing.nii.gz.*not found"):
        tl.extra_label_map(tmp_path / "missing.nii.gz", 2.0, tmp_path / "cache")
    bad = _head()
    bad[0, 0, 0] = 999
    with pytest.raises(InputError, match=r"bad.nii.gz.*999"):
        tl.extra_label_map(_save(tmp_path / "bad.nii.gz", bad), 2.0, tmp_path / "cache")
    with pytest.raises(InputError, match="1 mm"):
        tl.extra_label_map(_save(tmp_path / "coarse.nii.gz", _head(), voxel_mm=2.0), 1.5, tmp_path / "cache")


def _tpm(shape) -> Volume:
    """A 6-class TPM (GM, WM, CSF, bone, soft tissue, air): brain classes in a central block,
    bone around it, air elsewhere."""
    p = np.zeros((*shape, 6), np.float32)
    p[..., 5] = 1.0
    p[2:-2, 2:-2, 2:-2, 5], p[2:-2, 2:-2, 2:-2, 3] = 0.0, 1.0
    p[3:-3, 3:-3, 3:-3, 3], p[3:-3, 3:-3, 3:-3, 0] = 0.0, 1.0
    affine = np.eye(4)
    affine[:3, 3] = -(np.array(shape) - 1) / 2
    return Volume(p, affine)


def test_whole_head_map_keeps_the_brain_and_fills_the_head_as_the_public_maps():
    shape = (20, 20, 20)
    tpm = _tpm(shape)
    seg = np.zeros((12, 12, 12), np.int32)
    seg[3:9, 3:9, 3:9] = 2
    seg[6:9, 3:9, 3:9] = 41
    seg_affine = np.eye(4)
    seg_affine[:3, 3] = -5.5  # centred on the grid: voxel 6 of 12 sits at x = 0.5
    labels = pseudo_labels.whole_head_map(seg, seg_affine, shape, tpm.affine, tpm)
    assert labels.shape == shape and labels.dtype == np.int32
    assert (labels == 2).sum() == (seg == 2).sum() and (labels == 41).sum() == (seg == 41).sum()
    # the TPM's brain outside the segmented brain: CSF near it, soft tissue beyond 3 mm
    brain = np.isin(labels, (2, 41))
    from scipy import ndimage
    distance = ndimage.distance_transform_edt(~brain)
    assert (labels == protocol.CSF).any() and distance[labels == protocol.CSF].max() <= tl.MAX_CSF_MM
    assert (labels == protocol.SOFT_TISSUE).any() and (labels == protocol.SKULL).any()
    assert labels[0, 0, 0] == protocol.BACKGROUND
    with pytest.raises(RuntimeError, match="wrong side"):
        pseudo_labels.whole_head_map(seg[::-1], seg_affine, shape, tpm.affine, tpm)


def test_pseudo_label_map_checks_its_paths_before_segmenting(tmp_path, capsys):
    scan = _save(tmp_path / "scan.nii.gz", _head())
    with pytest.raises(InputError, match="no_such_folder.*does not exist"):
        pseudo_labels.pseudo_label_map(scan, tmp_path / "no_such_folder" / "map.nii.gz")
    assert pseudo_labels.main([str(tmp_path / "missing.nii.gz"), str(tmp_path / "map.nii.gz")]) == 1
    assert "missing.nii.gz" in capsys.readouterr().err and not (tmp_path / "map.nii.gz").exists()


def test_committed_colin27_map_is_a_whole_head_training_map():
    image = nib.load(tl.COLIN27_MAP)
    labels = np.asarray(image.dataobj).astype(np.int32)
    assert np.allclose(np.abs(np.diag(image.affine)[:3]), 1.0)
    present = set(np.unique(labels).tolist())
    assert present <= set(protocol.generation_labels().tolist())
    assert set(protocol.segmentation_labels().tolist()) - {0} <= present  # every structure, both sides
    assert {protocol.SKULL, protocol.SOFT_TISSUE} <= present
    tl.check_sides(labels, image.affine, "colin27")
    assert tl.bound_csf(labels, 1.0)[1] == 0  # CSF at most 3 mm from the brain, as the public maps
    brain_ml = (~np.isin(labels, tl._NOT_UNDER_CORTEX)).sum() / 1000
    assert 1000 < brain_ml < 1800
    # a ribbon with sulci between the gyri, not a shell (the Neuromorphometrics shell was 0.93)
    assert 0.4 < tl.cortex_ratio(labels) < 0.85


@pytest.fixture(scope="module")
def network_cache(tmp_path_factory):
    return Path(os.environ.get(datasets.ENV_VAR) or tmp_path_factory.mktemp("synthseg_data"))


@pytest.mark.slow
@pytest.mark.network
def test_cpu11_trains_on_the_public_maps_and_colin27_on_one_grid(network_cache, monkeypatch):
    from synthseg.training.recipes import recipe

    monkeypatch.setenv(datasets.ENV_VAR, str(network_cache))
    paths = recipe("cpu11").label_maps()
    assert [p.name for p in paths] == ["desikan_killiany.nii.gz", "neuromorphometrics.nii.gz", "colin27.nii.gz"]
    images = [nib.load(p) for p in paths]
    assert len({im.shape for im in images}) == 1
    assert all(np.allclose(im.affine, images[0].affine) for im in images)
    assert np.allclose(np.diag(images[0].affine)[:3], 1.5)
    shape, affine = pseudo_labels.training_grid(network_cache)
    colin = nib.load(tl.COLIN27_MAP)
    assert colin.shape == shape and np.allclose(colin.affine, affine)


@pytest.mark.slow
@pytest.mark.network
def test_pseudo_label_map_of_a_scan_recovers_its_anatomy(network_cache, tmp_path):
    """A T1-like 2 mm scan drawn from the Colin27 map (cropped to 10 mm around the brain), segmented into
    a training map: on the training grid, with the brain and cortex of the map it was drawn from."""
    from lab2im.geometry import resample_volume
    from lab2im.io import load_volume
    from lab2im.volumes import bounding_box

    source = load_volume(tl.COLIN27_MAP)
    rng = np.random.default_rng(0)
    means = {2: 110.0, 41: 110.0, 7: 105.0, 46: 105.0, protocol.SKULL: 20.0, protocol.SOFT_TISSUE: 90.0,
             protocol.CSF: 30.0, 4: 30.0, 43: 30.0, 14: 30.0, 15: 30.0, 5: 30.0, 44: 30.0, 0: 0.0}
    lut = np.full(int(source.data.max()) + 1, 75.0, np.float32)  # grey matter
    for label, mean in means.items():
        lut[label] = mean
    image = lut[np.asarray(source.data)] + rng.normal(0, 3, source.shape).astype(np.float32)
    box = bounding_box(~np.isin(np.asarray(source.data), tl._NOT_UNDER_CORTEX), margin=10)
    affine = source.affine.copy()
    affine[:3, 3] += [s.start for s in box]
    scan = resample_volume(Volume(image[box], affine), 2.0, order=1)
    nib.save(nib.Nifti1Image(scan.data, scan.affine), tmp_path / "scan.nii.gz")

    out = pseudo_labels.pseudo_label_map(tmp_path / "scan.nii.gz", tmp_path / "map.nii.gz", cache_dir=network_cache,
                                         flip=False)
    made = np.asarray(nib.load(out).dataobj)
    truth = np.asarray(source.data)
    assert made.shape == truth.shape and set(np.unique(made).tolist()) <= set(protocol.generation_labels().tolist())

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    brain = lambda m: ~np.isin(m, tl._NOT_UNDER_CORTEX)  # noqa: E731
    assert dice(brain(made), brain(truth)) > 0.9
    assert dice(np.isin(made, (3, 42)), np.isin(truth, (3, 42))) > 0.6


def test_build_colin27_map_reports_a_bad_output_path_before_segmenting(tmp_path, monkeypatch, capsys):
    """scripts/build_colin27_map.py: the scan is fetched, then an output folder that does not
    exist is an error naming it (exit status 1), before the network runs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "build_colin27_map", Path(__file__).resolve().parents[2] / "scripts" / "build_colin27_map.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    scan = _save(tmp_path / "ch2.nii.gz", _head())
    fetched = []
    monkeypatch.setattr(datasets, "fetch", lambda name, cache_dir=None: fetched.append(name) or scan)
    out = tmp_path / "no_such_folder" / "colin27.nii.gz"
    assert script.main(["--out", str(out), "--cache-dir", str(tmp_path)]) == 1
    assert fetched == ["colin27_t1"]
    assert "no_such_folder" in capsys.readouterr().err and not out.exists()

    def offline(name, cache_dir=None):
        raise datasets.DatasetError(f"{name}: offline")

    monkeypatch.setattr(datasets, "fetch", offline)
    assert script.main(["--out", str(tmp_path / "colin27.nii.gz")]) == 1
    assert "colin27_t1: offline" in capsys.readouterr().err
