"""supervised_training(): learning on real pairs, validation / best model / early stopping,
transfer learning with a frozen encoder, resume, and bad input (tiny 24^3 volumes)."""
import csv
import json
import shutil
from pathlib import Path

import keras
import nibabel as nib
import numpy as np
import pytest

from lab2im.errors import InputError
from synthseg.nn.unet import UNetOptions, build_unet
from synthseg.training.augmentation import AugmentationOptions
from synthseg.training.checkpoints import read_header
from synthseg.training.supervised import SupervisedOptions, supervised_training

LABELS = [0, 2, 3, 41, 42]
INTENSITY = {0: 10.0, 2: 110.0, 3: 60.0, 41: 160.0, 42: 210.0}
TINY = UNetOptions(n_levels=2, base_features=4)
NO_BN = UNetOptions(n_levels=2, base_features=8, batch_norm=False)
WITH_BN = UNetOptions(n_levels=2, base_features=8, batch_norm=True)
LIGHT = AugmentationOptions(prob=0.5, scaling=0.05, rotation=5, nonlin_std=1.0, flip_prob=0.0, bias_std=0.2,
                            gamma_std=0.2)


def quiet(**kw):
    return SupervisedOptions(progress=False, tensorboard=False, **kw)


def block_map(shift: int, shape=(24, 24, 24)) -> np.ndarray:
    lab = np.zeros(shape, np.int32)
    s = shift
    lab[2 + s:22, 3:21 + s, 2:20] = 2
    lab[12:22, 3:21 + s, 2:20] = 41
    lab[4 + s:10, 7:16, 6 + s:14] = 3
    lab[14:20 - s, 7:16, 6:14 + s] = 42
    return lab


def scan_of(lab: np.ndarray, rng) -> np.ndarray:
    img = np.vectorize(INTENSITY.get, otypes=[np.float32])(lab)
    return (img + rng.normal(0, 12, lab.shape)).astype(np.float32)


def write_pairs(folder: Path, shifts, seed=0, affine=None, block=None):
    """Image/label pairs ``images/sub-XX.nii.gz`` + ``labels/sub-XX.nii.gz``, one per shift,
    from ``block(shift)`` (default :func:`block_map`)."""
    block = block or block_map
    rng = np.random.default_rng(seed)
    affine = np.eye(4) if affine is None else affine
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir(parents=True)
    for i, s in enumerate(shifts):
        lab = block(s)
        nib.save(nib.Nifti1Image(scan_of(lab, rng), affine), str(folder / "images" / f"sub-{i:02d}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, affine), str(folder / "labels" / f"sub-{i:02d}.nii.gz"))
    return folder / "images", folder / "labels"


def read_csv(path):
    with open(path) as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("supervised")
    train = write_pairs(root / "train", [0, 1, 2], seed=0)
    val = write_pairs(root / "val", [1], seed=1)
    return root, train, val


@pytest.fixture(scope="module")
def trained(data):
    """One small run shared by the tests that only read it (the resume test works on a copy)."""
    root, train, val = data
    result = supervised_training(*train, root / "run", validation=val, unet=NO_BN, augmentation=LIGHT,
                                 options=quiet(steps=80, steps_per_checkpoint=20, validate_every=20,
                                               learning_rate=3e-3, warmup_steps=10, seed=0))
    return root / "run", result


# ---------------------------------------------------------------------------- learning
@pytest.mark.slow
def test_validation_dice_goes_up_and_the_run_folder_is_complete(trained):
    run, result = trained
    val = read_csv(run / "validation_log.csv")
    assert [r["step"] for r in val] == [20, 40, 60, 80]
    assert result.best_dice > 0.7 and result.best_dice > val[0]["dice"] + 0.2, val
    assert result.best_dice == pytest.approx(max(r["dice"] for r in val), 1e-5)
    assert val[-1]["best_dice"] == pytest.approx(result.best_dice, 1e-5)
    assert result.step == 80 and not result.stopped_early and result.last_loss is not None
    assert [r["step"] for r in read_csv(run / "training_log.csv")] == list(range(1, 81))
    for name in ("last.npz", "best.npz", "unet_last.keras", "unet_best.keras", "options.json"):
        assert (run / name).exists(), name
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-0000020.npz", "step-0000040.npz", "step-0000060.npz", "step-0000080.npz"]
    assert np.load(run / "labels.npy").tolist() == LABELS
    assert read_header(run / "best.npz")["step"] == result.best_step
    assert read_header(run / "last.npz")["meta"]["best_dice"] == pytest.approx(result.best_dice)
    unet = keras.saving.load_model(run / "unet_best.keras", safe_mode=True, compile=False)
    assert unet.output_shape[-1] == len(LABELS)
    saved = json.loads((run / "options.json").read_text())
    assert saved["kind"] == "supervised" and saved["supervised"]["crop_shape"] == [24, 24, 24]
    assert saved["augmentation"]["lr_pairs"] == []  # flip_prob=0: no pairs needed


@pytest.mark.slow
def test_batch_norm_validation_tracks_training(data, tmp_path):
    """With batch norm, the moving statistics (momentum 0.99) lag far behind in a short run;
    they are recalibrated on the training scans before each validation and save, so the
    validation Dice on held-out pairs of the same distribution tracks the training Dice."""
    import synthseg.inference as P
    from lab2im.io import load_volume
    from synthseg.nn.unet import recalibrate_batch_norm

    root, train, val = data
    result = supervised_training(*train, tmp_path / "run", validation=val, unet=WITH_BN, augmentation=LIGHT,
                                 options=quiet(steps=80, steps_per_checkpoint=20, validate_every=20,
                                               learning_rate=3e-3, warmup_steps=10, seed=0))
    train_dice = read_csv(tmp_path / "run" / "training_log.csv")[-1]["dice"]
    assert result.best_dice > 0.7 and result.best_dice > train_dice - 0.15, (result.best_dice, train_dice)
    # prediction with the saved network agrees (the statistics were saved with it)
    model = P.load_model(tmp_path / "run")
    seg = P.segment_volume(load_volume(val[0] / "sub-00.nii.gz"), model, flip=False).native_segmentation()
    truth = np.asarray(nib.load(str(val[1] / "sub-00.nii.gz")).dataobj)
    from synthseg.evaluation.metrics import dice

    assert np.mean(list(dice(truth, seg, [2, 3, 41, 42]).values())) > 0.7
    # without batch norm there is nothing to do
    assert recalibrate_batch_norm(build_unet(5, 1, NO_BN), [np.zeros((8, 8, 8, 1), np.float32)], 2) == 0


@pytest.mark.slow
def test_resume_with_more_steps_continues_the_step_counter(trained, data, tmp_path):
    run, _ = trained
    _, train, val = data
    shutil.copytree(run, tmp_path / "run")
    result = supervised_training(*train, tmp_path / "run", validation=val, options=quiet(steps=100), resume=True)
    assert result.step == 100
    assert [r["step"] for r in read_csv(tmp_path / "run" / "training_log.csv")] == list(range(1, 101))
    assert [r["step"] for r in read_csv(tmp_path / "run" / "validation_log.csv")] == [20, 40, 60, 80, 100]
    assert read_header(tmp_path / "run" / "last.npz")["step"] == 100
    again = supervised_training(*train, tmp_path / "run", validation=val, resume=True)  # nothing left to do
    assert again.step == 100


@pytest.mark.slow
def test_early_stopping_when_nothing_can_improve(data, tmp_path, capsys):
    _, train, val = data
    run = tmp_path / "run"
    no_bn = UNetOptions(n_levels=2, base_features=4, batch_norm=False)  # lr 0 + no BN: nothing changes
    result = supervised_training(*train, run, validation=val, unet=no_bn,
                                 options=quiet(steps=40, steps_per_checkpoint=10, validate_every=5, patience=1,
                                               learning_rate=0.0))
    assert result.stopped_early and result.step == 10 and result.best_step == 5
    assert "early stopping at step 10" in capsys.readouterr().err
    assert [r["step"] for r in read_csv(run / "validation_log.csv")] == [5, 10]
    assert [r["step"] for r in read_csv(run / "training_log.csv")] == list(range(1, 11))
    assert read_header(run / "last.npz")["step"] == 10 and read_header(run / "best.npz")["step"] == 5
    again = supervised_training(*train, run, validation=val, resume=True)  # a stopped run stays stopped
    assert again.stopped_early and again.step == 10


class Crash(keras.callbacks.Callback):
    """Dies mid-run, after a checkpoint (as kill -9 would: nothing is cleaned up)."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations) == self.at:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_a_crashed_run_resumes_exactly(data, tmp_path):
    _, train, val = data
    opts = quiet(steps=6, steps_per_checkpoint=2, learning_rate=3e-3, seed=4, deterministic=True)
    kw = dict(validation=val, unet=TINY, augmentation=AugmentationOptions(flip_prob=0.0))
    supervised_training(*train, tmp_path / "ref", options=opts, **kw)
    with pytest.raises(KeyboardInterrupt):
        supervised_training(*train, tmp_path / "run", options=opts, callbacks=[Crash(5)], **kw)
    assert [r["step"] for r in read_csv(tmp_path / "run" / "training_log.csv")] == [1, 2, 3, 4, 5]
    supervised_training(*train, tmp_path / "run", validation=val, resume=True)
    for name in ("training_log.csv", "validation_log.csv"):
        a, b = read_csv(tmp_path / "ref" / name), read_csv(tmp_path / "run" / name)
        assert [r["step"] for r in a] == [r["step"] for r in b]
        for key in ("loss", "dice") if name == "training_log.csv" else ("dice",):
            np.testing.assert_allclose([r[key] for r in b], [r[key] for r in a], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------- transfer learning
class Snapshot(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        unet = self.model.get_layer("unet")
        self.weights = {layer.name: [np.array(w) for w in layer.get_weights()] for layer in unet.layers}


@pytest.mark.slow
def test_transfer_learning_copies_all_but_the_last_layer_and_freezes_the_encoder(data, tmp_path):
    _, train, _ = data
    keras.utils.set_random_seed(123)
    source = build_unet(3, 1, TINY)  # another label count: the final layer cannot be copied
    source.save(tmp_path / "source.keras")
    src = {layer.name: layer.get_weights() for layer in source.layers}
    snap = Snapshot()
    result = supervised_training(*train, tmp_path / "run", unet=TINY, init_from=tmp_path / "source.keras",
                                 freeze_encoder=True, callbacks=[snap],
                                 options=quiet(steps=4, steps_per_checkpoint=2, learning_rate=1e-2))
    weighted = [name for name, w in src.items() if w]
    assert result.reinitialised_layers == ["unet_logits"]
    assert result.copied_layers == [n for n in weighted if n != "unet_logits"]
    for name in result.copied_layers:  # copied before training
        for a, b in zip(snap.weights[name], src[name]):
            np.testing.assert_array_equal(a, b)
    assert snap.weights["unet_logits"][0].shape[-1] == len(LABELS)

    trained = keras.saving.load_model(tmp_path / "run" / "unet_last.keras", safe_mode=True, compile=False)
    encoder = [n for n in weighted if n.startswith("unet_down0_")]
    assert encoder and set(encoder) <= set(result.frozen_layers)
    for name in weighted:
        after = trained.get_layer(name).get_weights()
        same = all(np.array_equal(a, b) for a, b in zip(after, snap.weights[name]))
        assert same == (name in encoder), name  # frozen: unchanged; the rest trained
    saved = json.loads((tmp_path / "run" / "options.json").read_text())["transfer"]
    assert saved["freeze_encoder"] and saved["reinitialised_layers"] == ["unet_logits"]


def test_unet_options_default_to_those_of_the_source_run(tmp_path):
    from synthseg.nn.transfer import run_unet_options

    (tmp_path / "options.json").write_text(json.dumps({"unet": TINY.to_dict()}))
    assert run_unet_options(tmp_path) == TINY
    assert run_unet_options(tmp_path / "unet_last.keras") == TINY
    assert run_unet_options(tmp_path / "other.keras") is None
    assert run_unet_options(tmp_path / "missing") is None


# ---------------------------------------------------------------------------- augmentation layer
def apply(layer, image, labels):
    """Run a layer in a compiled model (much faster than eager on JAX)."""
    a = keras.Input(image.shape[1:])
    b = keras.Input(labels.shape[1:], dtype="int32")
    return [np.asarray(t) for t in keras.Model([a, b], layer([a, b])).predict_on_batch([image, labels])]


@pytest.mark.backends
def test_augmentation_deforms_scan_and_labels_together_or_only_crops():
    from synthseg.training.augmentation import PairAugmentation

    lab = np.stack([block_map(0), block_map(2)])[..., None]
    img = (lab / 42.0).astype(np.float32)  # the scan is the label map
    plain = PairAugmentation((16, 16, 16), AugmentationOptions(prob=0.0, nonlin_std=0.0), seed=1)
    out_img, out_lab = apply(plain, img, lab)
    assert out_img.shape == (2, 16, 16, 16, 1) and out_lab.dtype == np.int32
    np.testing.assert_allclose(out_img * 42.0, out_lab, atol=1e-4)  # a crop: exact voxels, same window
    aug = PairAugmentation((24, 24, 24), AugmentationOptions(prob=1.0, rotation=20, nonlin_std=2.0, bias_std=0.0,
                                                                gamma_std=0.0, flip_prob=1.0),
                           lr_pairs=[(2, 41), (3, 42)], seed=2)
    out_img, out_lab = apply(aug, img, lab)
    assert set(np.unique(out_lab)) <= set(LABELS)
    assert not np.array_equal(out_lab, lab)
    for i in range(2):  # one shared deformation; min-max normalised image, flipped labels swapped
        recovered = np.rint(out_img[i, ..., 0] * lab[i].max())
        swapped = np.vectorize({0: 0, 2: 41, 41: 2, 3: 42, 42: 3}.get)(out_lab[i, ..., 0])
        pure = np.isin(recovered, LABELS)  # not a blend of two labels at a boundary
        assert pure.mean() > 0.7 and np.mean(recovered[pure] == swapped[pure]) > 0.95

    small = np.repeat(lab[:1, 4:20, 4:20, 4:20], 40, axis=0)  # prob: the share of samples augmented
    half = PairAugmentation((16, 16, 16), AugmentationOptions(prob=0.5, flip_prob=0.0, nonlin_std=0.0), seed=3)
    _, out_lab = apply(half, small.astype(np.float32), small)
    untouched = sum(np.array_equal(o, small[0]) for o in out_lab)
    assert 8 <= untouched <= 32, untouched


# ---------------------------------------------------------------------------- bad input
def test_counts_differ(data, tmp_path):
    _, (images, labels), _ = data
    with pytest.raises(InputError, match=r"3 training image\(s\) but 1 label map"):
        supervised_training(images, [labels / "sub-00.nii.gz"], tmp_path / "run", unet=TINY, options=quiet(steps=1))


def test_scan_and_label_map_on_different_grids(tmp_path):
    images, labels = write_pairs(tmp_path / "d", [0])
    shifted = np.eye(4)
    shifted[:3, 3] = 2.0
    nib.save(nib.Nifti1Image(block_map(0), shifted), str(labels / "sub-00.nii.gz"))
    with pytest.raises(InputError, match=r"sub-00.nii.gz: image and its label map .*labels/sub-00.nii.gz are not "
                                         r"on the same voxel grid \(voxel-to-world"):
        supervised_training(images, labels, tmp_path / "run", unet=TINY, options=quiet(steps=1))
    nib.save(nib.Nifti1Image(block_map(0)[:20], np.eye(4)), str(labels / "sub-00.nii.gz"))
    with pytest.raises(InputError, match=r"shapes \(24, 24, 24\) and \(20, 24, 24\)"):
        supervised_training(images, labels, tmp_path / "run", unet=TINY, options=quiet(steps=1))
    assert not (tmp_path / "run" / "options.json").exists()


def test_empty_folder_and_unwritable_run_folder(data, tmp_path):
    _, (images, labels), _ = data
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: folder contains no training image files"):
        supervised_training(tmp_path / "empty", labels, tmp_path / "run", unet=TINY, options=quiet(steps=1))
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(InputError, match="cannot write checkpoints here"):
        supervised_training(images, labels, tmp_path / "file" / "run", unet=TINY, options=quiet(steps=1))


def test_bad_init_from_and_options(data, tmp_path):
    _, (images, labels), val = data
    run = tmp_path / "run"
    with pytest.raises(InputError, match="nope.keras: init_from: no such file"):
        supervised_training(images, labels, run, unet=TINY, init_from=tmp_path / "nope.keras", options=quiet(steps=1))
    (tmp_path / "bad.keras").write_bytes(b"garbage")
    with pytest.raises(InputError, match="bad.keras: init_from: cannot load the U-Net"):
        supervised_training(images, labels, run, unet=TINY, init_from=tmp_path / "bad.keras", options=quiet(steps=1))
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match="folder holds no unet_best.keras or unet_last.keras"):
        supervised_training(images, labels, run, unet=TINY, init_from=tmp_path / "folder", options=quiet(steps=1))
    assert not (run / "options.json").exists()  # nothing written: the folder can be used again
    with pytest.raises(InputError, match="freeze_encoder needs init_from"):
        supervised_training(images, labels, run, unet=TINY, freeze_encoder=True, options=quiet(steps=1))
    with pytest.raises(InputError, match="patience .* needs validation data"):
        supervised_training(images, labels, run, unet=TINY, options=quiet(steps=1, patience=2))
    with pytest.raises(InputError, match=r"crop_shape \(15, 16, 16\) is not a multiple of 2"):
        supervised_training(images, labels, run, unet=TINY, options=quiet(steps=1, crop_shape=(15, 16, 16)))
    with pytest.raises(InputError, match="learning_rate must be a number >= 0"):
        quiet(learning_rate=-1.0)
    with pytest.raises(InputError, match="augmentation prob must be in"):
        AugmentationOptions(prob=1.5)


def test_the_training_voxel_size_is_recorded_and_used_by_prediction(tmp_path):
    """Pairs at 2 mm: the run's options.json records data.voxel_size = the median voxel size,
    and prediction resamples scans to it (it used to assume 1 mm). Mixed voxel sizes warn."""
    from synthseg.data.pairs import load_pairs
    from synthseg.inference.model import load_model

    train = write_pairs(tmp_path / "train", [0, 1], affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    supervised_training(*train, tmp_path / "run", unet=TINY, options=quiet(steps=2, steps_per_checkpoint=2))
    saved = json.loads((tmp_path / "run" / "options.json").read_text())
    assert saved["data"]["voxel_size"] == [2.0, 2.0, 2.0]
    assert load_model(tmp_path / "run").voxel_size.tolist() == [2.0, 2.0, 2.0]
    # a run made before the voxel size was recorded: 1 mm, as then
    del saved["data"]["voxel_size"]
    (tmp_path / "run" / "options.json").write_text(json.dumps(saved))
    assert load_model(tmp_path / "run").voxel_size.tolist() == [1.0, 1.0, 1.0]

    images, labels = write_pairs(tmp_path / "mixed", [0, 1, 2], affine=np.diag([1.0, 1.0, 1.0, 1.0]))
    odd = nib.load(images / "sub-02.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(odd.dataobj), np.diag([1.0, 1.0, 3.0, 1.0])), str(images / "sub-02.nii.gz"))
    lab = nib.load(labels / "sub-02.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj), np.diag([1.0, 1.0, 3.0, 1.0])), str(labels / "sub-02.nii.gz"))
    with pytest.warns(UserWarning, match=r"voxel sizes from 1x1x1 to 1x1x3 mm.*median, 1x1x1 mm"):
        pairs = load_pairs(images, labels)
    assert pairs.voxel_size == [1.0, 1.0, 1.0] and pairs.voxel_sizes[2] == [1.0, 1.0, 3.0]
