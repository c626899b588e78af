"""Prediction on real-looking scans: geometry round trips, flip averaging, volumes, batches, bad input."""
import csv
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations as ornt

import synthseg.inference as P
from lab2im.errors import InputError
from lab2im.io import Volume
from lab2im.options import GeneratorOptions
from synthseg.cli import main
from synthseg.inference import model as model_module
from synthseg.inference.tiling import _tile_starts
from synthseg.nn.unet import UNetOptions, build_unet
from synthseg.training.synthetic import TrainingOptions, save_options

ROOT = Path(__file__).resolve().parents[2]
LABELS = [0, 2, 3, 41, 42]
INTENSITY = {0: 0.0, 2: 25.0, 3: 50.0, 41: 75.0, 42: 100.0}


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A training run folder with a tiny untrained U-Net (2 levels, 4 features, 5 labels)."""
    d = tmp_path_factory.mktemp("run")
    unet = UNetOptions(n_levels=2, base_features=4)
    keras.utils.set_random_seed(3)
    build_unet(5, 1, unet).save(d / "unet_last.keras")
    np.save(d / "labels.npy", np.asarray(LABELS, np.int32))
    save_options(d, GeneratorOptions(generation_labels=LABELS, lr_pairs=[(2, 41), (3, 42)]), unet,
                 TrainingOptions())
    return d


@pytest.fixture(scope="session")
def unet_model(run_dir):
    return P.load_model(run_dir)


def conv_network(kernel_weights, bias):
    """A one-convolution softmax network with the given weights (kernel ``(kx, ky, kz, 1, K)``)."""
    kernel_weights = np.asarray(kernel_weights, np.float32)
    inp = keras.Input((None, None, None, 1))
    conv = keras.layers.Conv3D(kernel_weights.shape[-1], kernel_weights.shape[:3], padding="same")
    out = keras.layers.Activation("softmax")(conv(inp))
    net = keras.Model(inp, out)
    conv.set_weights([kernel_weights, np.asarray(bias, np.float32)])
    return net


def band_network(scale=200.0):
    """Voxel-wise: label ``LABELS[k]`` where the normalised intensity is near ``k / 4`` (near one-hot).

    Intensity alone cannot tell left from right, so flip averaging would mix them: tests using
    it pass ``flip=False``."""
    centres = np.linspace(0, 1, len(LABELS))
    w = (2 * scale * centres).reshape(1, 1, 1, 1, -1)
    return conv_network(w, -scale * centres ** 2)


@pytest.fixture(scope="session")
def band_model_file(tmp_path_factory):
    """A ``.keras`` file beside ``labels.npy`` (no options.json): the band network."""
    d = tmp_path_factory.mktemp("band")
    band_network().save(d / "band.keras")
    np.save(d / "labels.npy", np.asarray(LABELS, np.int32))
    return d / "band.keras"


@pytest.fixture
def band_model(band_model_file):
    return P.load_model(band_model_file)


@pytest.fixture
def phantom(blocks_labels):
    """Intensity image ``(24, 28, 20)`` whose blocks the band model labels as ``blocks_labels``."""
    image = np.zeros(blocks_labels.shape, np.float32)
    for label, value in INTENSITY.items():
        image[blocks_labels == label] = value
    return image


def save(tmp_path, name, data, affine=None):
    path = Path(tmp_path) / name
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path


def reorient(data, affine, codes):
    """The same image with its array axes in orientation ``codes`` (same world geometry)."""
    transform = ornt.ornt_transform(ornt.io_orientation(affine), ornt.axcodes2ornt(codes))
    return (np.ascontiguousarray(ornt.apply_orientation(data, transform)),
            affine @ ornt.inv_ornt_aff(transform, data.shape[:3]))


def leftovers(folder):
    return [p for p in Path(folder).rglob("*") if ".tmp" in p.name or p.name.startswith(".write-test")]


# ----------------------------------------------------------------------------- model loading
def test_load_model_from_run_folder_and_keras_file(run_dir, band_model_file, tmp_path):
    m = P.load_model(run_dir)
    assert m.labels.tolist() == LABELS and m.lr_pairs == [(2, 41), (3, 42)]
    assert m.voxel_size.tolist() == [1, 1, 1] and m.multiple == 2 and m.path.name == "unet_last.keras"
    assert m.flip_permutation().tolist() == [0, 3, 4, 1, 2]
    # a .keras file with labels.npy only: protocol pairs, 1 mm, multiple from the pooling layers
    b = P.load_model(band_model_file)
    assert b.lr_pairs == [(2, 41), (3, 42)] and b.multiple == 1 and b.voxel_size.tolist() == [1, 1, 1]
    # unet_best.keras wins over unet_last.keras; the generator's voxel size is the model's
    d = tmp_path / "run"
    d.mkdir()
    for name in ("labels.npy", "options.json", "unet_last.keras"):
        (d / name).write_bytes((run_dir / name).read_bytes())
    (d / "unet_best.keras").write_bytes((run_dir / "unet_last.keras").read_bytes())
    opts = json.loads((d / "options.json").read_text())
    opts["generator"]["voxel_size"] = [1.0, 1.0, 2.0]
    (d / "options.json").write_text(json.dumps(opts))
    m2 = P.load_model(d)
    assert m2.path.name == "unet_best.keras" and m2.voxel_size.tolist() == [1, 1, 2]
    assert m.qc_threshold == P.QC_THRESHOLD == 0.5  # no prediction section: the default
    # the network's own QC threshold (scripts/ship_model.py --qc), checked before the network loads
    opts["prediction"] = {"qc_threshold": 0.42}
    (d / "options.json").write_text(json.dumps(opts))
    assert P.load_model(d).qc_threshold == 0.42
    for bad in (1.5, "high", True):
        opts["prediction"] = {"qc_threshold": bad}
        (d / "options.json").write_text(json.dumps(opts))
        with pytest.raises(InputError, match=r"options.json: qc_threshold .* between 0 and 1"):
            P.load_model(d)


def test_lr_permutation():
    assert P.lr_permutation([0, 2, 3, 41, 42], [(2, 41), (3, 42)]).tolist() == [0, 3, 4, 1, 2]
    assert P.lr_permutation([0, 41, 2, 17], [(2, 41), (17, 53)]).tolist() == [0, 2, 1, 3]  # 53 absent


def test_load_model_errors(run_dir, tmp_path, monkeypatch, capsys):
    with pytest.raises(InputError, match="nope: no such model file or folder"):
        P.load_model(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="empty: model folder holds no unet_best.keras or unet_last.keras"):
        P.load_model(empty)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "unet_last.keras").write_bytes(b"not a zip file")
    np.save(bad / "labels.npy", np.asarray(LABELS))
    with pytest.raises(InputError, match="unet_last.keras: cannot load the network"):
        P.load_model(bad)
    (bad / "unet_last.keras").write_bytes((run_dir / "unet_last.keras").read_bytes())
    np.save(bad / "labels.npy", np.asarray([0, 2, 3]))
    with pytest.raises(InputError, match="5 output channels but labels.npy lists 3 labels"):
        P.load_model(bad)
    (bad / "labels.npy").unlink()
    with pytest.raises(InputError, match="no labels.npy beside the model"):
        P.load_model(bad)
    # no model given and none shipped
    monkeypatch.setattr(model_module, "MODELS_DIR", tmp_path / "models")
    with pytest.raises(InputError, match=r"no trained model shipped yet; pass --model RUN_DIR"):
        P.load_model()
    scan = save(tmp_path, "scan.nii.gz", np.random.rand(16, 16, 16).astype(np.float32))
    assert main(["predict", "--i", str(scan), "--o", str(tmp_path / "out")]) == 1
    assert "no trained model shipped yet; pass --model RUN_DIR" in capsys.readouterr().err


# ----------------------------------------------------------------------------- flip averaging and tiles
def test_flip_averaging_swaps_left_and_right_channels(band_model):
    labels = np.asarray(LABELS)
    # a network that calls everything "left white matter": flipped, it says "right" everywhere
    everywhere_left = P.SegmentationModel(conv_network(np.zeros((1, 1, 1, 1, 5)), [0, 10, 0, 0, 0]),
                                          labels, [(2, 41), (3, 42)])
    image = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    p = everywhere_left.posteriors(image, flip=False)
    assert np.all(p[..., 1] > 0.99)
    p = everywhere_left.posteriors(image, flip=True)
    np.testing.assert_allclose(p[..., 1], 0.5, atol=1e-3)  # label 2
    np.testing.assert_allclose(p[..., 3], 0.5, atol=1e-3)  # label 41, its counterpart
    np.testing.assert_allclose(p.sum(-1), 1, atol=1e-5)

    # a flip-equivariant network: a rising edge along x (entering an object from the left) is
    # "left" (2), a falling edge "right" (41); flip averaging must give the same answer
    s = 20.0
    w = np.zeros((3, 1, 1, 1, 5), np.float32)
    w[2, ..., 1], w[0, ..., 1] = s, -s  # label 2: x[i+1] - x[i-1]
    w[2, ..., 3], w[0, ..., 3] = -s, s  # label 41: the opposite
    edges = P.SegmentationModel(conv_network(w, [2, 0, -20, 0, -20]), labels, [(2, 41), (3, 42)])
    blob = np.zeros((24, 8, 8), np.float32)
    blob[6:15] = 1  # not centred: the flipped image differs
    direct = edges.posteriors(blob, flip=False)
    averaged = edges.posteriors(blob, flip=True)
    np.testing.assert_allclose(averaged, direct, atol=1e-5)
    seg = labels[np.argmax(averaged, -1)][:, 4, 4]
    assert seg[5] == seg[6] == 2 and seg[14] == seg[15] == 41  # left label on the left (RAS: low x)
    assert set(seg[[0, 10, 20]]) == {0}


def test_tiles_blend_to_the_whole_volume_prediction(band_model, unet_model):
    image = np.random.default_rng(1).random((20, 26, 12)).astype(np.float32)
    whole = band_model.posteriors(image, flip=True, tile_size=None)
    tiled = band_model.posteriors(image, flip=True, tile_size=(8, 10, 12), tile_overlap=3)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)  # a voxel-wise network: exact
    for size, tile, overlap, m in [(208, 128, 16, 16), (240, 128, 16, 16), (20, 8, 3, 1), (96, 128, 16, 16)]:
        length, starts = _tile_starts(size, tile, overlap, m)
        assert length % m == 0 and (length <= tile or (starts == [0] and length == size))
        covered = np.zeros(size, bool)
        for s0 in starts:
            covered[s0:s0 + length] = True
        assert covered.all() and starts[-1] + length == size
    # the U-Net (every tile a multiple of 2) runs tiled too
    p = unet_model.posteriors(np.random.default_rng(2).random((24, 28, 20)).astype(np.float32), tile_size=12)
    assert p.shape == (24, 28, 20, 5) and np.allclose(p.sum(-1), 1, atol=1e-5)


def test_clean_posteriors_keeps_one_component_per_label_and_fills_holes():
    rng = np.random.default_rng(0)
    post = rng.random((20, 20, 20, 3)).astype(np.float32) * 0.1
    post[..., 0] += 0.5  # background
    post[4:16, 4:16, 4:16, 1] += 1.0  # a cube of label 1 ...
    post[8:11, 8:11, 8:11, 1] = 0  # ... with a background hole
    post[1:3, 1:3, 1:3, 1] += 1.0  # a stray island of label 1
    post[16:18, 16:18, 16:18, 2] += 1.0  # label 2: one small component, touching the cube
    post /= post.sum(-1, keepdims=True)
    idx = P.clean_posteriors(post, background=0)
    assert np.all(idx[1:3, 1:3, 1:3] == 0)  # the island went to its next most likely label
    assert np.all(idx[8:11, 8:11, 8:11] == 1)  # the hole is filled
    assert np.all(idx[16:18, 16:18, 16:18] == 2)
    np.testing.assert_array_equal(np.argmax(post, -1), idx)  # posteriors consistent
    np.testing.assert_allclose(post.sum(-1), 1, atol=1e-5)
    from scipy import ndimage

    for c in (1, 2):
        assert ndimage.label(idx == c, np.ones((3, 3, 3)))[1] == 1


def test_clean_posteriors_keeps_the_brain_in_one_piece():
    # label 2 in one piece, but far from the brain (cortex in the neck): only the brain-level
    # step removes it; a weak brain posterior (sum 0.3 > 0.25) still links a part to the brain
    post = np.zeros((30, 20, 20, 3), np.float32)
    post[..., 0] = 1.0
    post[4:16, 4:16, 4:16] = (0.1, 0.8, 0.1)  # the brain
    post[22:27, 8:12, 8:12] = (0.2, 0.1, 0.7)  # a separate blob of label 2
    post[16:19, 9:11, 9:11] = (0.7, 0.3, 0.0)  # a faint bridge: brain mask, background label
    post[19:22, 9:11, 9:11] = (0.2, 0.1, 0.7)  # label 2 beyond the bridge, touching the blob
    far = post.copy()
    far[16:19] = (1.0, 0.0, 0.0)  # no bridge: the blob is a component of its own
    assert P.keep_largest_brain(far, background=0) == 5 * 4 * 4 + 3 * 2 * 2
    idx = P.clean_posteriors(far, background=0)
    assert np.all(idx[22:27] == 0) and np.all(idx[4:16, 4:16, 4:16] == 1)
    np.testing.assert_allclose(far.sum(-1), 1, atol=1e-6)
    assert P.keep_largest_brain(post, background=0) == 0  # connected through the bridge
    assert np.all(P.clean_posteriors(post, background=0)[22:27, 8:12, 8:12] == 2)
    empty = np.zeros((5, 5, 5, 3), np.float32)
    empty[..., 0] = 1
    assert P.keep_largest_brain(empty) == 0


def test_soft_volumes_count_only_segmented_voxels_near_their_structure():
    # two structures side by side with a blurry boundary, a thin posterior of structure 1 spread
    # everywhere (background and far side included): only the boundary's share counts
    post = np.zeros((30, 10, 10, 3), np.float32)
    post[..., 0] = 1.0
    post[5:15, ..., :] = (0.0, 1.0, 0.0)
    post[15:25, ..., :] = (0.0, 0.0, 1.0)
    post[14] = (0.0, 0.6, 0.4)  # partial volume across the boundary
    post[15] = (0.0, 0.4, 0.6)
    post[..., 1] += 0.05  # posterior spread thinly, far from structure 1 too
    post /= post.sum(-1, keepdims=True)
    channels = np.argmax(post, -1).astype(np.int32)
    sums = P.structure_volumes(post, channels, background=0)
    counts = np.bincount(channels.ravel(), minlength=3)
    assert sums.sum() == pytest.approx(channels.size)  # every voxel counted once
    assert sums[0] == counts[0]  # the background: its voxel count, posteriors of others ignored
    assert sums[1] + sums[2] == pytest.approx(counts[1] + counts[2])  # = the segmented volume
    # structure 1 keeps its share of the two boundary slabs (100 voxels each), not its spread
    assert sums[1] == pytest.approx(900 + 100 * (0.65 + 0.45) / 1.05, rel=1e-5)
    assert post[..., 1].sum() > sums[1] + 80  # the raw sum: 0.05/1.05 in 19 slabs (background, far side)
    assert sums[1] - counts[1] == pytest.approx(-(sums[2] - counts[2]))


def test_qc_scores_confidence_times_coherence_per_group():
    from synthseg.data.labels import QC_GROUPS

    labels = np.array([0, 2, 3, 17, 41], np.int32)  # background, WM, cortex, hippocampus, WM
    post = np.zeros((10, 10, 10, 5), np.float32)
    post[..., 0] = 1.0
    post[2:8, 2:8, 2:5] = (0.0, 0.9, 0.1, 0.0, 0.0)  # left WM: margin 0.8
    post[2:8, 2:8, 5:8] = (0.0, 0.0, 0.0, 0.0, 1.0)  # right WM: margin 1
    prep = None
    channels = np.argmax(post, -1).astype(np.int32)
    raw = np.bincount(channels.ravel(), minlength=5)
    raw[4] *= 2  # the clean-up removed half of the right WM the network predicted
    seg = P.Segmentation(prepared=prep, channels=channels, posteriors=post, labels=labels, raw_counts=raw)
    overall, per = seg.qc_scores()
    assert set(per) == set(QC_GROUPS)
    assert per["white matter"] == pytest.approx((108 * 0.8 + 108 * 1.0) / 216 * (216 / 324))
    assert per["cerebral cortex"] == 0.0 and per["hippocampus+amygdala"] == 0.0  # segmented by the model, not found
    assert per["thalamus"] is None  # not a label of this model
    assert overall == pytest.approx(per["white matter"] / 3)
    # refined posteriors: the confidence is the network's own margin, not theirs
    margin = np.full(channels.shape, 0.5, np.float32)
    refined = P.Segmentation(prepared=prep, channels=channels, posteriors=post, labels=labels, raw_counts=raw,
                             refined=True, network_margin=margin)
    assert refined.qc_scores()[1]["white matter"] == pytest.approx(0.5 * (216 / 324))


def test_qc_of_a_refined_segmentation_is_the_networks_confidence():
    """segment_volume keeps the margin of the network's posteriors from before the refinement."""
    from synthseg.inference.segmentation import posterior_margin

    net = conv_network(np.reshape([0.0, 4.0, 5.0], (1, 1, 1, 1, 3)), [0.0, -1.0, -2.5])
    model = P.SegmentationModel(net, labels=[0, 2, 41], voxel_size=1.0, refine=True)
    rng = np.random.default_rng(0)
    data = rng.normal(5, 1, (24, 24, 24)).astype(np.float32)
    data[4:20, 4:20, 4:12] = 50 + rng.normal(0, 2, (16, 16, 8))
    data[4:20, 4:20, 12:20] = 90 + rng.normal(0, 2, (16, 16, 8))
    seg = P.segment_volume(Volume(data, np.eye(4)), model, flip=False)
    plain = P.segment_volume(Volume(data, np.eye(4)), model, flip=False, refine=False)
    assert seg.refined and not plain.refined and plain.network_margin is None
    np.testing.assert_allclose(seg.network_margin, posterior_margin(plain.posteriors), atol=1e-5)
    assert not np.allclose(seg.posteriors, plain.posteriors, atol=0.05)  # the refinement changed them


def test_posterior_margin_is_the_gap_between_the_two_highest_posteriors(monkeypatch):
    """Exact against a sort, across chunk boundaries, 0 where the highest value is shared."""
    import synthseg.inference.segmentation as S

    monkeypatch.setattr(S, "MARGIN_CHUNK", 7)
    rng = np.random.default_rng(1)
    post = rng.random((5, 4, 3, 6)).astype(np.float32)
    post[0, 0, 0] = [0.3, 0.1, 0.3, 0.2, 0.0, 0.1]  # a shared maximum
    top = np.sort(post, axis=-1)
    got = S.posterior_margin(post)
    assert got.shape == (5, 4, 3) and got.dtype == np.float32
    np.testing.assert_array_equal(got, top[..., -1] - top[..., -2])
    assert got[0, 0, 0] == 0.0
    np.testing.assert_array_equal(S.posterior_margin(post[..., :2]), np.abs(post[..., 0] - post[..., 1]))


def test_native_labels_are_one_piece_per_structure():
    from lab2im.volumes import merge_stray_components

    labels = np.zeros((20, 20, 20), np.int32)
    labels[4:16, 4:16, 4:16] = 1
    labels[8:12, 8:12, 8:12] = 2
    labels[6, 6, 6] = 2  # an island of 2 inside 1: becomes 1
    labels[1:3, 1:3, 1:3] = 2  # an island of 2 in the background: becomes background
    labels[10, 10, 10] = 1  # a hole-like island of 1 inside 2: becomes 2
    out = merge_stray_components(labels, background=0)
    assert out[6, 6, 6] == 1 and np.all(out[1:3, 1:3, 1:3] == 0) and out[10, 10, 10] == 2
    from scipy import ndimage

    for c in (1, 2):
        assert ndimage.label(out == c, np.ones((3, 3, 3)))[1] == 1
    np.testing.assert_array_equal(merge_stray_components(out, background=0), out)  # nothing left
    assert labels[6, 6, 6] == 2  # the input is not modified


# ----------------------------------------------------------------------------- geometry
def test_orientation_round_trip(unet_model, tmp_path, phantom):
    rng = np.random.default_rng(0)
    image = phantom + rng.normal(0, 5, phantom.shape).astype(np.float32)
    affine = np.array([[1.0, 0, 0, -12], [0, 1, 0, -30], [0, 0, 1, 7], [0, 0, 0, 1]])
    results = {}
    for codes in ("RAS", "LPS", "LIA", "ASR"):
        data, aff = reorient(image, affine, codes)
        src = save(tmp_path, f"{codes}.nii.gz", data, aff)
        out = tmp_path / f"{codes}_seg.nii.gz"
        report = P.predict(src, out, unet_model, progress=False)
        assert report.ok and report.done == [src]
        seg = nib.load(str(out))
        assert seg.shape == data.shape and np.allclose(seg.affine, aff)  # the input's own grid
        assert seg.get_data_dtype() == np.int32
        results[codes] = reorient(np.asarray(seg.dataobj), seg.affine, "RAS")[0]
    assert len(np.unique(results["RAS"])) > 1  # a non-trivial segmentation
    for codes, seg in results.items():
        np.testing.assert_array_equal(seg, results["RAS"], err_msg=codes)


def test_anisotropic_input_comes_back_on_its_native_grid(unet_model, tmp_path, phantom):
    thick = np.concatenate([phantom[:, :, ::3], phantom[:, :, -1:]], axis=2)  # (24, 28, 8) slices
    thick = thick + np.random.default_rng(1).normal(0, 3, thick.shape).astype(np.float32)
    affine = np.diag([1.0, 1.0, 5.0, 1.0])
    affine[:3, 3] = (-10, 4, -20)
    data, aff = reorient(thick, affine, "LIA")  # and not canonical
    src = save(tmp_path, "thick.nii.gz", data, aff)
    report = P.predict(src, tmp_path / "native", unet_model, post=tmp_path / "native",
                       resample=tmp_path / "native", progress=False)
    assert report.ok
    seg = nib.load(str(tmp_path / "native" / "thick_synthseg.nii.gz"))
    assert seg.shape == data.shape and np.allclose(seg.affine, aff)
    assert set(np.unique(np.asarray(seg.dataobj))) <= set(LABELS)
    post = nib.load(str(tmp_path / "native" / "thick_posteriors.nii.gz"))
    assert post.shape == data.shape + (5,) and np.allclose(post.affine, aff)
    np.testing.assert_allclose(np.asarray(post.dataobj).sum(-1), 1, atol=1e-4)
    resampled = nib.load(str(tmp_path / "native" / "thick_resampled.nii.gz"))
    assert resampled.shape == (24, 28, 40) and np.allclose(nib.affines.voxel_sizes(resampled.affine), 1)
    # --network-grid (keep_native=False): everything on the network grid (canonical, 1 mm)
    report = P.predict(src, tmp_path / "grid", unet_model, keep_native=False, progress=False)
    grid = nib.load(str(tmp_path / "grid" / "thick_synthseg.nii.gz"))
    assert grid.shape == (24, 28, 40) and np.allclose(grid.affine, resampled.affine)
    assert nib.aff2axcodes(grid.affine) == ("R", "A", "S")


# ----------------------------------------------------------------------------- volumes, qc, png, crop
def test_volumes_agree_with_the_segmentation(band_model, tmp_path, phantom, blocks_labels):
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    src = save(tmp_path, "sub-01.nii.gz", phantom, affine)
    out = tmp_path / "out"
    report = P.predict(src, out, band_model, vol=out / "vol.csv", qc=out / "qc.csv", post=out, png=out,
                       flip=False, progress=False)
    assert report.ok
    seg = np.asarray(nib.load(str(out / "sub-01_synthseg.nii.gz")).dataobj)
    np.testing.assert_array_equal(seg, blocks_labels)  # the band network finds the blocks
    post = np.asarray(nib.load(str(out / "sub-01_posteriors.nii.gz")).dataobj)
    with open(out / "vol.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["subject"] == "sub-01"
    names = ["Left-Cerebral-White-Matter", "Left-Cerebral-Cortex", "Right-Cerebral-White-Matter",
             "Right-Cerebral-Cortex"]
    assert list(rows[0]) == ["subject", "total intracranial"] + names
    volumes = [float(rows[0][n]) for n in names]
    # soft volumes: posterior sums (x 1 mm^3) over the segmented voxels ...
    inside = (seg > 0)[..., None]
    np.testing.assert_allclose(volumes, (post[..., 1:] * inside).sum(axis=(0, 1, 2)), rtol=1e-3)
    # ... equal to the voxel counts for a confident network, and TIV is their sum
    np.testing.assert_allclose(volumes, [np.sum(seg == v) for v in LABELS[1:]], rtol=1e-3)
    assert float(rows[0]["total intracranial"]) == pytest.approx(sum(volumes), abs=0.01)
    with open(out / "qc.csv") as f:
        qc = list(csv.DictReader(f))[0]
    # per QC group of the model's labels (white matter: 2, 41; cortex: 3, 42), near 1 for a confident network
    assert list(qc) == ["subject", "qc", "white matter", "cerebral cortex"]
    assert 0.98 < float(qc["qc"]) <= 1.0 and 0.98 < float(qc["white matter"]) <= 1.0
    assert (out / "sub-01_synthseg.png").stat().st_size > 1000
    # a 2 mm scan (resampled to the model's 1 mm): volumes in mm^3 on the 1 mm grid
    coarse = save(tmp_path, "coarse.nii.gz", phantom[::2, ::2, ::2], np.diag([2.0, 2.0, 2.0, 1.0]))
    P.predict(coarse, out, band_model, vol=out / "vol2.csv", flip=False, progress=False)
    with open(out / "vol2.csv") as f:
        row = list(csv.DictReader(f))[0]
    tiv = float(row["total intracranial"])
    assert tiv == pytest.approx(sum(float(row[n]) for n in names), abs=0.01)
    # the same head, measured in mm^3 (the boundary layer of the 1 mm network grid counts in full)
    assert tiv == pytest.approx(np.sum(blocks_labels > 0), rel=0.2)


def test_a_scan_scoring_below_the_models_qc_threshold_is_reported(band_model, tmp_path, phantom):
    """With --qc, a scan scoring below the model's threshold is a warning naming it (on stderr and
    in the report); its outputs are still written."""
    import dataclasses

    src = save(tmp_path, "sub-02.nii.gz", phantom)
    out = tmp_path / "out"
    report = P.predict(src, out / "sure", band_model, qc=out / "sure.csv", flip=False, progress=False)
    assert report.ok and not report.warnings  # it scores near 1 (see above)
    unsure = P.SegmentationModel(band_network(scale=3.0), labels=np.asarray(LABELS))  # soft posteriors: low margins
    assert unsure.qc_threshold == 0.5
    report = P.predict(src, out / "unsure", unsure, qc=out / "unsure.csv", flip=False, progress=False)
    with open(out / "unsure.csv") as f:
        score = float(next(csv.DictReader(f))["qc"])
    assert report.ok and (out / "unsure" / "sub-02_synthseg.nii.gz").is_file() and score < 0.5
    assert [(p.name, "below the model's threshold 0.50" in w) for p, w in report.warnings] == [("sub-02.nii.gz", True)]
    lenient = dataclasses.replace(unsure, qc_threshold=score / 2)  # the model's own threshold
    assert not P.predict(src, out / "again", lenient, qc=out / "again.csv", flip=False, progress=False).warnings
    assert not P.predict(src, out / "noqc", unsure, flip=False, progress=False).warnings  # only with --qc


def test_crop_keeps_the_centre_only(band_model, tmp_path, phantom):
    src = save(tmp_path, "a.nii.gz", phantom)
    P.predict(src, tmp_path / "a_seg.nii.gz", band_model, crop=8, flip=False, progress=False)
    seg = np.asarray(nib.load(str(tmp_path / "a_seg.nii.gz")).dataobj)
    assert seg.shape == phantom.shape
    inside = np.zeros(seg.shape, bool)
    inside[8:16, 10:18, 6:14] = True
    assert np.all(seg[~inside] == 0) and np.any(seg[inside] > 0)
    with pytest.raises(InputError, match="crop must be 1 or 3 positive integers"):
        P.predict(src, tmp_path / "b.nii.gz", band_model, crop=(8, 8))


def test_in_memory_segmentation(band_model, phantom, blocks_labels):
    result = P.segment_volume(Volume(phantom, np.eye(4)), band_model, flip=False)
    np.testing.assert_array_equal(result.native_segmentation(), blocks_labels)
    assert result.total_intracranial_volume() == pytest.approx(np.sum(blocks_labels > 0), rel=1e-3)


# ----------------------------------------------------------------------------- batches
def test_batch_with_a_bad_scan_goes_on_and_reruns_skip_finished_scans(band_model_file, tmp_path, phantom, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    save(scans, "a.nii.gz", phantom)
    good = (scans / "a.nii.gz").read_bytes()
    (scans / "b.nii.gz").write_bytes(good[: len(good) // 2])  # truncated
    save(scans, "c.nii.gz", phantom[::-1])
    out = tmp_path / "out"
    model = P.load_model(band_model_file)
    report = P.predict(scans, out, model, vol=out / "vol.csv", flip=False, progress=False)
    assert report.done == [scans / "a.nii.gz", scans / "c.nii.gz"]
    assert [p for p, _ in report.failed] == [scans / "b.nii.gz"]
    assert "truncated or corrupt" in report.failed[0][1]
    assert sorted(p.name for p in out.iterdir()) == ["a_synthseg.nii.gz", "c_synthseg.nii.gz", "vol.csv"]
    assert not leftovers(tmp_path)
    with open(out / "vol.csv") as f:
        assert [r["subject"] for r in csv.DictReader(f)] == ["a", "c"]
    with pytest.raises(InputError, match="b.nii.gz: image data is truncated"):
        report.check()
    # a re-run skips the finished scans and keeps their CSV rows
    stamp = (out / "a_synthseg.nii.gz").stat().st_mtime_ns
    report = P.predict(scans, out, model, vol=out / "vol.csv", skip_existing=True, flip=False, progress=False)
    assert report.skipped == [scans / "a.nii.gz", scans / "c.nii.gz"] and len(report.failed) == 1
    assert (out / "a_synthseg.nii.gz").stat().st_mtime_ns == stamp
    # a re-run on one scan updates its row and keeps the others
    (out / "vol.csv").write_text((out / "vol.csv").read_text().replace("\na,", "\na-old,"))
    P.predict(scans / "c.nii.gz", out / "c_synthseg.nii.gz", model, vol=out / "vol.csv", flip=False,
              progress=False)
    with open(out / "vol.csv") as f:
        assert [r["subject"] for r in csv.DictReader(f)] == ["a-old", "c"]
    # a table with other columns (another model's) is left alone, with a clear error
    (tmp_path / "other.csv").write_text("subject,total intracranial,Left-Hippocampus\nx,1,2\n")
    with pytest.raises(InputError, match="other.csv: volumes: the existing table has other columns"):
        P.predict(scans / "c.nii.gz", out / "c_synthseg.nii.gz", model, vol=tmp_path / "other.csv",
                  progress=False)
    assert (tmp_path / "other.csv").read_text().endswith("x,1,2\n")
    # a missing CSV row means the scan is not finished
    (out / "vol.csv").write_text((out / "vol.csv").read_text().splitlines()[0] + "\n")
    report = P.predict(scans, out, model, vol=out / "vol.csv", skip_existing=True, flip=False, progress=False)
    assert len(report.done) == 2 and not report.skipped
    # the CLI finishes the batch and exits 1, naming the bad scan
    code = main(["predict", "--input", str(scans), "--output", str(tmp_path / "cli"), "--model",
                 str(band_model_file), "--no-flip"])
    captured = capsys.readouterr()
    assert code == 1 and f"{scans / 'b.nii.gz'}: image data is truncated or corrupt" in captured.err
    assert "segmented 2 scan(s), skipped 0 (outputs exist), failed 1" in captured.out
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["a_synthseg.nii.gz", "c_synthseg.nii.gz"]
    assert not leftovers(tmp_path)


def test_batch_inputs_are_reported_and_named_without_collisions(band_model, tmp_path, phantom, blocks_labels,
                                                                capsys):
    import nrrd

    scans = tmp_path / "scans"
    scans.mkdir()
    save(scans, "a.nii.gz", phantom)
    (scans / "notes.txt").write_text("x")
    (scans / "a.png").write_bytes(b"x")
    (scans / "sub").mkdir()
    # an NRRD scan (LPS space) is read with its geometry: same labels as the NIfTI
    nrrd.write(str(scans / "b.nrrd"), phantom, {"space": "left-posterior-superior",
                                                "space directions": np.diag([-1.0, -1.0, 1.0]),
                                                "space origin": np.zeros(3)}, index_order="F")
    report = P.predict(scans, tmp_path / "out", band_model, flip=False, progress=False)
    assert report.done == [scans / "a.nii.gz", scans / "b.nrrd"]
    err = capsys.readouterr().err
    assert "skipped 2 file(s): a.png, notes.txt (not a scan" in err and "skipped 1 folder(s): sub/" in err
    assert len(report.warnings) == 2
    b = nib.load(str(tmp_path / "out" / "b_synthseg.nii.gz"))
    np.testing.assert_array_equal(np.asarray(b.dataobj), blocks_labels)
    np.testing.assert_allclose(b.affine, np.eye(4), atol=1e-6)  # LPS diag(-1,-1,1) is RAS identity
    # a FreeSurfer-style list: same file names in different subject folders
    for sub in ("sub-01", "sub-02"):
        (tmp_path / "fs" / sub / "mri").mkdir(parents=True)
        save(tmp_path / "fs" / sub / "mri", "orig.nii.gz", phantom)
    listing = tmp_path / "fs" / "list.txt"
    listing.write_text("sub-01/mri/orig.nii.gz\nsub-02/mri/orig.nii.gz\n")
    report = P.predict(listing, tmp_path / "fsout", band_model, vol=tmp_path / "fsout" / "v.csv", flip=False,
                       progress=False)
    assert report.ok and sorted(p.name for p in (tmp_path / "fsout").iterdir()) == [
        "sub-01_mri_orig_synthseg.nii.gz", "sub-02_mri_orig_synthseg.nii.gz", "v.csv"]
    with open(tmp_path / "fsout" / "v.csv") as f:
        assert [r["subject"] for r in csv.DictReader(f)] == ["sub-01_mri_orig", "sub-02_mri_orig"]
    listing.write_text("sub-01/mri/orig.nii.gz\nsub-01/mri/../mri/orig.nii.gz\n")
    with pytest.raises(InputError, match="the same scan is listed twice"):
        P.predict(listing, tmp_path / "twice", band_model, progress=False)
    # outputs named as files of another kind are refused before anything is made
    src = scans / "a.nii.gz"
    for kwargs, message in (({"outputs": tmp_path / "x.png"}, "segmentation: expected a NIfTI/MGZ file"),
                            ({"outputs": tmp_path / "o", "png": tmp_path / "o.nii.gz"}, "overlay: expected a .png"),
                            ({"outputs": tmp_path / "o", "post": tmp_path / "p.csv"}, "posteriors: expected")):
        with pytest.raises(InputError, match=message):
            P.predict(src, model=band_model, progress=False, **kwargs)
        assert not (tmp_path / "x.png").exists() and not (tmp_path / "o").exists()


def test_cli_predict_one_scan(band_model_file, tmp_path, phantom, blocks_labels):
    src = save(tmp_path, "t1.nii.gz", phantom)
    out = tmp_path / "t1_seg.nii.gz"
    assert main(["predict", "--i", str(src), "--o", str(out), "--model", str(band_model_file), "--vol",
                 str(tmp_path / "v.csv"), "--qc", str(tmp_path / "q.csv"), "--png", str(tmp_path / "t1.png"),
                 "--threads", "2", "--skip-existing", "--no-flip"]) == 0
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj), blocks_labels)
    assert (tmp_path / "t1.png").is_file() and (tmp_path / "v.csv").is_file() and (tmp_path / "q.csv").is_file()
    # FreeSurfer .mgz in and out
    affine = np.array([[-1.0, 0, 0, 12], [0, 0, 1, -14], [0, -1, 0, 10], [0, 0, 0, 1]])  # LIA, as FreeSurfer's
    nib.save(nib.MGHImage(phantom, affine), str(tmp_path / "t1.mgz"))
    assert main(["predict", "--i", str(tmp_path / "t1.mgz"), "--o", str(tmp_path / "t1_seg.mgz"), "--model",
                 str(band_model_file), "--no-flip"]) == 0
    seg = nib.load(str(tmp_path / "t1_seg.mgz"))
    assert seg.shape == phantom.shape and np.allclose(seg.affine, affine)
    np.testing.assert_array_equal(np.asarray(seg.dataobj), blocks_labels)


# ----------------------------------------------------------------------------- bad input
def _bad_inputs(tmp_path, phantom):
    good = save(tmp_path, "good.nii.gz", phantom).read_bytes()
    cases = {}
    cases["missing.nii.gz"] = (None, "missing.nii.gz: no such file")
    (tmp_path / "truncated.nii.gz").write_bytes(good[: len(good) // 2])
    cases["truncated.nii.gz"] = (1, "truncated.nii.gz: image data is truncated or corrupt")
    (tmp_path / "text.nii.gz").write_bytes(gzip.compress(b"hello, I am not an image\n" * 20))
    cases["text.nii.gz"] = (1, "text.nii.gz: not a readable NIfTI/MGZ image")
    save(tmp_path, "flat.nii.gz", phantom[:, :, 10])
    cases["flat.nii.gz"] = (1, "flat.nii.gz: image is 2D (shape (24, 28))")
    save(tmp_path, "slice.nii.gz", phantom[:, :, 10:11])
    cases["slice.nii.gz"] = (1, "slice.nii.gz: image is 2D (shape (24, 28, 1))")
    save(tmp_path, "small.nii.gz", phantom[:, :, :5])
    cases["small.nii.gz"] = (1, "small.nii.gz: image is too small (shape (24, 28, 5))")
    nan = phantom.copy()
    nan[3, 4, 5], nan[0, 0, 0] = np.nan, np.inf
    save(tmp_path, "nan.nii.gz", nan)
    cases["nan.nii.gz"] = (1, "nan.nii.gz: image has 2 NaN or infinite voxel(s)")
    save(tmp_path, "zero.nii.gz", np.zeros_like(phantom))
    cases["zero.nii.gz"] = (1, "zero.nii.gz: image is empty (every voxel is 0)")
    return cases


def test_bad_inputs_are_reported_by_name_and_nothing_is_written(band_model_file, tmp_path, phantom, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, (_, message) in _bad_inputs(inputs, phantom).items():
        out = tmp_path / f"out_{name}"
        code = main(["predict", "--i", str(inputs / name), "--o", str(out), "--model", str(band_model_file),
                     "--vol", str(out / "v.csv")])
        err = capsys.readouterr().err
        assert code == 1, name
        assert message in err, (name, err)
        assert "Traceback" not in err
        assert not out.exists() or not list(out.iterdir()), name  # nothing partial
    # unwritable output location: refused before any scan is read
    (tmp_path / "afile").write_text("x")
    for target in ("afile/sub/out", "afile/seg.nii.gz"):
        code = main(["predict", "--i", str(inputs / "good.nii.gz"), "--o", str(tmp_path / target), "--model",
                     str(band_model_file)])
        err = capsys.readouterr().err
        assert code == 1 and "cannot be created" in err and "afile is a file" in err
    with pytest.raises(InputError, match="2 input scans but one output file; give a folder"):
        P.predict([inputs / "good.nii.gz", inputs / "zero.nii.gz"], tmp_path / "one.nii.gz", band_model_file)
    with pytest.raises(InputError, match="an output would overwrite an input"):
        P.predict(inputs / "good.nii.gz", inputs / "good.nii.gz", band_model_file)
    assert not leftovers(tmp_path)


def test_4d_input_uses_its_first_volume(band_model, tmp_path, phantom, blocks_labels):
    data = np.stack([phantom, np.random.default_rng(0).random(phantom.shape) * 100, phantom[::-1]], axis=-1)
    src = save(tmp_path, "dwi.nii.gz", data.astype(np.float32))
    report = P.predict(src, tmp_path / "dwi_seg.nii.gz", band_model, flip=False, progress=False)
    assert report.ok and len(report.warnings) == 1
    assert "segmenting its first volume only" in report.warnings[0][1]
    seg = nib.load(str(tmp_path / "dwi_seg.nii.gz"))
    assert seg.shape == phantom.shape
    np.testing.assert_array_equal(np.asarray(seg.dataobj), blocks_labels)
    # a 4th axis of length 1 is just a 3D image
    src = save(tmp_path, "one.nii.gz", phantom[..., None])
    report = P.predict(src, tmp_path / "one_seg.nii.gz", band_model, flip=False, progress=False)
    assert report.ok and not report.warnings


# ----------------------------------------------------------------------------- benchmark
@pytest.mark.slow
def test_predict_benchmark_quick(tmp_path):
    """``benchmarks/predict.py --quick`` (small synthetic scan, tiny U-Net) writes its JSON."""
    out = tmp_path / "predict.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "predict.py"), "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = data["results"]
    assert {row["flip"] for row in rows} == {True, False}
    for row in rows:
        assert row["status"] == "ok", row
        assert row["wall_s"] > 0 and row["predict_s"] > 0 and row["peak_rss_mib"] > 100
        assert row["shape"] == [48, 56, 40]
    assert data["machine"]["cpu_count"] >= 1 and data["settings"]["quick"] is True
    assert "peak RSS" in r.stdout
