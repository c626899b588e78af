"""synthseg.inference.cascade: a coarse model finds a region, a fine model segments the crop at a finer
voxel size, and the result lands on the scan's exact native grid (one-convolution networks)."""
import keras
import nibabel as nib
import numpy as np
import pytest

from lab2im.errors import InputError
from lab2im.io import Volume
from synthseg.inference.cascade import crop_volume, region_box, segment_cascade
from synthseg.inference.model import SegmentationModel
from synthseg.inference.segmentation import segment_volume

SHAPE = (32, 28, 30)


def voxelwise_network(weights, bias):
    """Softmax of ``weights * x + bias`` per voxel (a 1x1x1 convolution)."""
    inp = keras.Input((None, None, None, 1))
    conv = keras.layers.Conv3D(len(bias), 1)
    net = keras.Model(inp, keras.layers.Activation("softmax")(conv(inp)))
    conv.set_weights([np.asarray(weights, np.float32).reshape(1, 1, 1, 1, -1), np.asarray(bias, np.float32)])
    return net


def coarse_model(never=False):
    """Label 1 where the normalised intensity is above 0.3; with ``never``, a label 2 never predicted."""
    w, b = [0.0, 60.0], [0.0, -18.0]
    if never:
        w, b = w + [0.0], b + [-100.0]
    return SegmentationModel(voxelwise_network(w, b), labels=[0, 1] + ([2] if never else []), voxel_size=1.0)


def fine_model():
    """0.5 mm voxels; labels 0, 5, 6, 7 in bands of the normalised intensity (centres 0, 1/3, 2/3, 1)."""
    centres = np.linspace(0, 1, 4)
    return SegmentationModel(voxelwise_network(80 * centres, -40 * centres ** 2), labels=[0, 5, 6, 7],
                             voxel_size=0.5)


def scan(bright=True, seed=0):
    """A 1 mm LAS scan: noise, and a ball with an intensity ramp off the centre."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    ball = (x - 20) ** 2 + (y - 12) ** 2 + (z - 14) ** 2 <= 36
    data = rng.normal(10, 2, SHAPE).astype(np.float32)
    if bright:
        data[ball] = 60 + 4 * (x[ball] - 20)
    affine = np.array([[-1.0, 0, 0, 40], [0, 1, 0, -20], [0, 0, 1, 5], [0, 0, 0, 1]])
    return Volume(data, affine), ball


def test_the_cascade_pastes_back_onto_the_exact_native_grid():
    vol, ball = scan()
    coarse, fine = coarse_model(), fine_model()
    result = segment_cascade(vol, coarse, fine, margin_mm=3, flip=False)
    seg = result.segmentation
    assert seg.shape == SHAPE and seg.dtype == np.int32
    # the region is the ball; the box is its bounding box plus 3 voxels (1 mm) per side
    assert np.array_equal(result.region == 1, ball)
    lo, hi = np.argwhere(ball).min(axis=0), np.argwhere(ball).max(axis=0) + 1
    assert [(s.start, s.stop) for s in result.box] == [(max(a - 3, 0), min(b + 3, n)) for a, b, n in zip(lo, hi, SHAPE)]
    outside = np.ones(SHAPE, bool)
    outside[result.box] = False
    assert np.all(seg[outside] == 0)
    # inside: the fine model's segmentation of the crop, mapped back from its 0.5 mm grid
    assert result.fine.prepared.resampled and np.allclose(np.abs(np.diag(result.fine.affine))[:3], 0.5)
    expected = segment_volume(crop_volume(vol, result.box), fine, flip=False).native_segmentation()
    np.testing.assert_array_equal(seg[result.box], expected)
    assert {5, 6, 7} <= set(np.unique(seg[ball]).tolist())
    # the crop keeps world positions: its first voxel is the scan's voxel box.start
    start = np.array([s.start for s in result.box] + [1.0])
    np.testing.assert_allclose(result.crop_affine[:, 3], vol.affine @ start)


def test_an_empty_region_is_an_error_or_background(tmp_path):
    vol, _ = scan()
    with pytest.raises(InputError, match=r"the first model found no region \(labels \[2\]\)"):
        segment_cascade(vol, coarse_model(never=True), fine_model(), region_labels=[2], flip=False)
    result = segment_cascade(vol, coarse_model(never=True), fine_model(), region_labels=[2], flip=False,
                             on_empty="background")
    assert result.box is None and not result.segmentation.any() and result.segmentation.shape == SHAPE
    with pytest.raises(InputError, match="region labels must be labels of the first model"):
        segment_cascade(vol, coarse_model(), fine_model(), region_labels=[4])


def test_region_box_margin_in_mm_and_minimum_size():
    mask = np.zeros((20, 20, 20), bool)
    mask[10, 10, 10] = True
    box = region_box(mask, (1.0, 2.0, 0.5), margin_mm=2.0, min_voxels=1)
    assert [(s.start, s.stop) for s in box] == [(8, 13), (9, 12), (6, 15)]
    box = region_box(mask, 1.0, margin_mm=0, min_voxels=8)
    assert [s.stop - s.start for s in box] == [8, 8, 8]
    mask[:] = False
    mask[0, 19, 5] = True  # at the edges: grown inwards
    box = region_box(mask, 1.0, margin_mm=0, min_voxels=8)
    assert [(s.start, s.stop) for s in box] == [(0, 8), (12, 20), (2, 10)]
    assert region_box(np.zeros((4, 4, 4), bool), 1.0, 1.0) is None


def test_cascade_files_and_command_line(tmp_path, capsys):
    from synthseg.cli import main

    vol, ball = scan()
    nib.save(nib.Nifti1Image(vol.data, vol.affine), str(tmp_path / "scan.nii.gz"))
    for name, model in (("coarse", coarse_model()), ("fine", fine_model())):
        (tmp_path / name).mkdir()
        model.network.save(tmp_path / name / "net.keras")
        np.save(tmp_path / name / "labels.npy", model.labels)
    code = main(["cascade", "--i", str(tmp_path / "scan.nii.gz"), "--o", str(tmp_path / "out"),
                 "--coarse", str(tmp_path / "coarse" / "net.keras"), "--fine", str(tmp_path / "fine" / "net.keras"),
                 "--fine-voxel-size", "0.5", "--margin", "3", "--region", str(tmp_path / "region"), "--no-flip"])
    assert code == 0
    out = nib.load(tmp_path / "out" / "scan_synthseg.nii.gz")
    assert out.shape == SHAPE and np.allclose(out.affine, vol.affine)
    expected = segment_cascade(vol, coarse_model(), fine_model(), margin_mm=3, flip=False).segmentation
    np.testing.assert_array_equal(np.asarray(out.dataobj), expected)
    assert np.array_equal(np.asarray(nib.load(tmp_path / "region" / "scan_region.nii.gz").dataobj) == 1, ball)
    # a re-run with --skip-existing leaves finished scans alone; --threads and --tile are accepted
    stamp = (tmp_path / "out" / "scan_synthseg.nii.gz").stat().st_mtime_ns
    code = main(["cascade", "--i", str(tmp_path / "scan.nii.gz"), "--o", str(tmp_path / "out"),
                 "--coarse", str(tmp_path / "coarse" / "net.keras"), "--fine", str(tmp_path / "fine" / "net.keras"),
                 "--region", str(tmp_path / "region"), "--skip-existing", "--threads", "2", "--tile", "64"])
    assert code == 0 and (tmp_path / "out" / "scan_synthseg.nii.gz").stat().st_mtime_ns == stamp
    # volumes, quality scores and an overlay, as predict writes them
    capsys.readouterr()
    code = main(["cascade", "--i", str(tmp_path / "scan.nii.gz"), "--o", str(tmp_path / "out2"),
                 "--model", str(tmp_path / "coarse" / "net.keras"), "--fine", str(tmp_path / "fine" / "net.keras"),
                 "--fine-voxel-size", "0.5", "--margin", "3", "--no-flip", "--vol", str(tmp_path / "out2" / "v.csv"),
                 "--qc", str(tmp_path / "out2" / "q.csv"), "--png", str(tmp_path / "out2")])
    assert code == 0
    import csv

    with open(tmp_path / "out2" / "v.csv") as f:
        row = list(csv.DictReader(f))[0]
    assert row["subject"] == "scan" and float(row["total intracranial"]) > 0
    with open(tmp_path / "out2" / "q.csv") as f:
        score = float(list(csv.DictReader(f))[0]["qc"])
    assert 0 <= score <= 1
    # the fine model's threshold (0.5: no prediction section) decides the warning, as in predict
    assert ("below the model's threshold 0.50" in capsys.readouterr().err) == (score < 0.5)
    assert (tmp_path / "out2" / "scan_synthseg.png").stat().st_size > 10_000
