"""2D / 2.5D slices of 3D volumes: slicing and stacking, training a 2D U-Net on slices (Dice
goes up), slice-wise prediction on the native grid, and bad input (tiny volumes, tiny U-Net)."""
import dataclasses
import json

import keras
import nibabel as nib
import numpy as np
import pytest

from lab2im.errors import InputError
from synthseg.data.pairs import PairSet
from synthseg.inference.batch import predict
from synthseg.inference.model import SegmentationModel, load_model
from synthseg.inference.segmentation import segment_volume
from synthseg.nn.losses import hard_dice
from synthseg.nn.unet import UNetOptions, build_unet
from synthseg.training.augmentation import AugmentationOptions
from synthseg.training.slices import (
    SliceSpec,
    in_plane_augmentation,
    label_slices,
    slice_pairs,
    slice_training,
    stack_slices,
    unstack_slices,
)
from synthseg.training.supervised import SupervisedOptions
from tests.training.test_supervised import scan_of
from tests.training.test_supervised import write_pairs as supervised_pairs

LABELS = [0, 2, 3, 41, 42]
SHAPE = (24, 24, 14)  # axial slices are 24 x 24
UNET = UNetOptions(ndim=2, n_levels=2, base_features=8, batch_norm=False)
AUG = AugmentationOptions(prob=0.5, scaling=0.05, rotation=5, nonlin_std=0.5, flip_prob=0.0, bias_std=0.1,
                          gamma_std=0.1)
SEED = 0


# ---------------------------------------------------------------------------- slicing
def test_slices_round_trip_along_every_axis():
    vol = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)
    for axis in range(3):
        stacks = stack_slices(vol, axis)
        assert stacks.shape == (vol.shape[axis], *[n for a, n in enumerate(vol.shape) if a != axis], 1)
        np.testing.assert_array_equal(unstack_slices(stacks[..., 0], axis), vol)
        np.testing.assert_array_equal(unstack_slices(label_slices(vol, axis), axis), vol)
    # axis 2 is axial: a slice is vol[:, :, i], rows left -> right, columns posterior -> anterior
    np.testing.assert_array_equal(stack_slices(vol, 2)[3, ..., 0], vol[:, :, 3])
    np.testing.assert_array_equal(stack_slices(vol, 0)[3, ..., 0], vol[3])


def test_2p5d_channels_are_neighbours_in_slice_order_edge_padded():
    n = 6
    index = np.broadcast_to(np.arange(n, dtype=np.float32), (4, 5, n))  # value = axial slice index
    image = np.stack([index, 100 + index], axis=-1)  # two image channels
    stacks = stack_slices(image, axis=2, k=5)
    assert stacks.shape == (n, 4, 5, 10)
    for i in range(n):
        for j in range(5):  # channel j * C + c is channel c of slice i + j - 2, clamped to the volume
            source = min(max(i + j - 2, 0), n - 1)
            assert np.all(stacks[i, ..., 2 * j] == source) and np.all(stacks[i, ..., 2 * j + 1] == 100 + source)


def test_slice_pairs_skip_background_slices_and_record_the_spec():
    lab = np.zeros(SHAPE, np.int32)
    lab[4:20, 4:20, 3:9] = 2
    pairs = PairSet(["img"], ["lab"], [np.ones(SHAPE + (1,), np.float32)], [lab], 1, [0, 2])
    sliced = slice_pairs(pairs, SliceSpec(axis=2, k=3))
    assert len(sliced.labels) == 6 and sliced.ndim == 2 and sliced.n_channels == 3
    assert sliced.images[0].shape == (24, 24, 3) and sliced.labels[0].shape == (24, 24)
    assert sliced.info == {"slices": {"axis": 2, "k": 3}, "skip_empty_slices": True, "normalisation": "percentile"}
    assert len(slice_pairs(pairs, SliceSpec(axis=0), skip_empty=False).labels) == SHAPE[0]


def test_slice_validation_scores_whole_volumes():
    """Validation of a slice run scores the slices of a volume together: a network that
    predicts background everywhere gets Dice 0 for a label it misses, not 1 on the slices
    where the label is absent (per slice, the mean would be 8/14 here)."""
    from synthseg.training.supervised import validation_dice

    lab = np.zeros(SHAPE, np.int32)
    lab[4:20, 4:20, 3:9] = 2
    volume = PairSet(["img"], ["lab"], [np.ones(SHAPE + (1,), np.float32)], [lab], 1, [0, 2])
    sliced = slice_pairs(volume, SliceSpec(axis=2, k=1), skip_empty=False)
    assert sliced.sources == [0] * SHAPE[2]

    def background_everywhere(x, training=False):
        out = np.zeros(x.shape[:-1] + (2,), np.float32)
        out[..., 0] = 1.0
        return out

    def perfect(x, training=False):  # reads the label from the image, which holds it here
        out = np.zeros(x.shape[:-1] + (2,), np.float32)
        out[..., 1] = x[..., 0] > 0.5
        out[..., 0] = 1.0 - out[..., 1]
        return out

    mean, per_label = validation_dice(background_everywhere, sliced, [0, 2], multiple=1)
    assert mean == 0.0 and per_label.tolist() == [0.0]
    informed = dataclasses.replace(sliced, images=[(s == 2).astype(np.float32)[..., None] for s in sliced.labels])
    assert validation_dice(perfect, informed, [0, 2], multiple=1)[0] == 1.0
    # whole volumes (no sources) are scored one by one, as before
    assert validation_dice(background_everywhere, volume, [0, 2], multiple=1)[0] == 0.0


def test_slices_are_standardised_per_volume_as_prediction_does():
    rng = np.random.default_rng(0)
    lab = np.zeros(SHAPE, np.int32)
    lab[4:20, 4:20, 2:12] = 2
    image = (rng.uniform(0.2, 1.0, SHAPE) * np.linspace(0.5, 1.5, SHAPE[2])).astype(np.float32)[..., None]
    pairs = PairSet(["img"], ["lab"], [image], [lab], 1, [0, 2])
    from synthseg.data.pairs import standardise_pairs

    whole = standardise_pairs(pairs, "zscore").images[0]  # one z-score over the whole volume
    sliced = slice_pairs(pairs, SliceSpec(axis=2), skip_empty=False, normalisation="zscore")
    assert sliced.info["normalisation"] == "zscore"
    for z in range(SHAPE[2]):
        np.testing.assert_allclose(sliced.images[z][..., 0], whole[:, :, z, 0], rtol=1e-6)
    with pytest.raises(InputError, match="no slice holds"):
        slice_pairs(PairSet(["i"], ["l"], [np.ones(SHAPE + (1,))], [np.zeros(SHAPE, np.int32)], 1, [0]),
                    SliceSpec(2))


def test_flip_augmentation_is_mapped_into_the_slice_plane():
    aug = AugmentationOptions(flip_prob=0.5, flip_axis=0)
    assert in_plane_augmentation(aug, SliceSpec(axis=2)).flip_axis == 0     # axial: rows are L-R
    assert in_plane_augmentation(aug, SliceSpec(axis=1)).flip_axis == 0     # coronal: rows are L-R
    assert in_plane_augmentation(aug, SliceSpec(axis=0)).flip_prob == 0.0   # sagittal: no L-R axis
    assert in_plane_augmentation(AugmentationOptions(flip_axis=1), SliceSpec(axis=0)).flip_axis == 0
    assert SliceSpec(axis=0).lr_axis is None and SliceSpec(axis=2).lr_axis == 0


@pytest.mark.parametrize("axis, k, message", [(3, 1, "axis must be 0"), (-1, 1, "axis must be 0"),
                                              (2, 2, "must be odd"), (2, 0, "must be odd"),
                                              (2.0, 1, "must be an integer")])
def test_bad_axis_or_k_is_reported_before_anything_is_read(tmp_path, axis, k, message):
    with pytest.raises(InputError, match=message):
        slice_training(tmp_path / "missing", tmp_path / "missing", tmp_path / "run", axis=axis, k=k)
    with pytest.raises(InputError, match=message):
        stack_slices(np.zeros((4, 4, 4)), axis, k)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- data
def block_map(shift: int) -> np.ndarray:
    """Left (2, 3) and right (41, 42) blocks whose extent changes from slice to slice."""
    lab = np.zeros(SHAPE, np.int32)
    s = shift
    lab[2 + s:22, 3:21 + s, 2:12] = 2
    lab[12:22, 3:21 + s, 2:12] = 41
    lab[4 + s:10, 7:16, 4 + s:10] = 3
    lab[14:20 - s, 7:16, 4:10 - s] = 42
    return lab


def write_pairs(folder, shifts, seed, affine=None):
    return supervised_pairs(folder, shifts, seed, affine, block=block_map)


def quiet(**kw):
    return SupervisedOptions(progress=False, tensorboard=False, **kw)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2.5D axial slice model trained for 120 steps (about 6 s on 2 CPU cores)."""
    root = tmp_path_factory.mktemp("slices")
    train = write_pairs(root / "train", [0, 1, 2], seed=0)
    result = slice_training(*train, root / "run", axis=2, k=3, unet=UNET, augmentation=AUG,
                            options=quiet(steps=120, steps_per_checkpoint=60, batch_size=4, learning_rate=3e-3,
                                          seed=SEED))
    return root, train, result


def held_out(folder, affine=None):
    """A held-out scan and its label map in ``folder``, stored in LPS orientation with permuted
    axes (the file's axis 2 is not axial), 1 mm voxels unless ``affine`` says otherwise."""
    lab = block_map(1)
    img = scan_of(lab, np.random.default_rng(7))
    to_file = (lambda a: np.ascontiguousarray(np.transpose(a[::-1, ::-1], (2, 0, 1))))
    if affine is None:
        affine = np.array([[0, -1, 0, 30], [0, 0, -1, 40], [1, 0, 0, -5], [0, 0, 0, 1]], float)
    folder.mkdir(parents=True, exist_ok=True)
    img_path, lab_path = folder / "scan.nii.gz", folder / "scan_labels.nii.gz"
    nib.save(nib.Nifti1Image(to_file(img), affine), str(img_path))
    nib.save(nib.Nifti1Image(to_file(lab), affine), str(lab_path))
    return img_path, lab_path


def mean_dice(truth, pred):
    return float(hard_dice(truth, pred, LABELS[1:]).mean())


# ---------------------------------------------------------------------------- training and prediction
@pytest.mark.slow
def test_training_on_slices_improves_dice_of_the_slice_wise_prediction(run):
    root, _, result = run
    img_path, lab_path = held_out(root / "test")
    scan = nib.load(img_path)
    truth = np.asarray(nib.load(lab_path).dataobj)
    from lab2im.io import load_volume

    # before: the U-Net as training initialised it (same seed, same architecture)
    keras.utils.set_random_seed(SEED)
    initial = SegmentationModel(network=build_unet(len(LABELS), 3, UNET), labels=LABELS, multiple=2,
                                lr_pairs=[(2, 41), (3, 42)], slices={"axis": 2, "k": 3})
    # no flip averaging: these toy scans code left and right by intensity, so a flipped scan
    # is not a plausible one (flip averaging itself is checked below with a lateral network)
    before = mean_dice(truth, segment_volume(load_volume(img_path), initial, flip=False).native_segmentation())

    model = load_model(root / "run")
    assert model.slices == SliceSpec(axis=2, k=3) and model.multiples == (2, 2, 1)
    seg = segment_volume(load_volume(img_path), model, flip=False)
    after = mean_dice(truth, seg.native_segmentation())
    print(f"held-out mean Dice before training {before:.3f}, after 120 steps {after:.3f}")
    assert after > 0.75 and after > before + 0.5, (before, after)
    assert result.step == 120
    saved = json.loads((root / "run" / "options.json").read_text())
    assert saved["data"]["slices"] == {"axis": 2, "k": 3} and saved["unet"]["ndim"] == 2
    assert saved["data"]["n_channels"] == 3 and saved["supervised"]["crop_shape"] == [24, 24]
    assert scan.shape == seg.native_segmentation().shape


@pytest.mark.slow
def test_predict_writes_outputs_on_the_exact_native_grid(run, tmp_path):
    root, _, _ = run
    # 1.25 mm voxels: resampled to the model's 1 mm and back
    affine = np.array([[0, -1.25, 0, 30], [0, 0, -1.25, 40], [1.25, 0, 0, -5], [0, 0, 0, 1]], float)
    for name, aff in (("same", None), ("coarse", affine)):
        img_path, lab_path = held_out(tmp_path / name / "in", aff)
        out = tmp_path / name
        report = predict(img_path, out / "seg.nii.gz", model=root / "run", post=out / "post.nii.gz",
                         flip=False, progress=False).check()
        assert len(report.done) == 1
        src, seg, post = (nib.load(p) for p in (img_path, out / "seg.nii.gz", out / "post.nii.gz"))
        assert seg.shape == src.shape and post.shape == src.shape + (len(LABELS),)
        np.testing.assert_array_equal(seg.affine, src.affine)
        np.testing.assert_array_equal(post.affine, src.affine)
        assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= set(LABELS)
        np.testing.assert_allclose(np.asarray(post.dataobj).sum(axis=-1), 1.0, atol=1e-4)
        if name == "same":  # on the training grid: the labels are recovered
            assert mean_dice(np.asarray(nib.load(lab_path).dataobj), np.asarray(seg.dataobj)) > 0.75


@pytest.mark.slow
def test_cli_predict_detects_the_slice_model(run, tmp_path):
    from synthseg.cli import main

    root, _, _ = run
    img_path, _ = held_out(tmp_path / "in")
    assert main(["predict", "--i", str(img_path), "--o", str(tmp_path / "seg.nii.gz"), "--model",
                 str(root / "run"), "--crop", "16"]) == 0
    seg = nib.load(tmp_path / "seg.nii.gz")
    assert seg.shape == nib.load(img_path).shape


@pytest.mark.slow
def test_resume_needs_the_same_slicing(run):
    root, train, _ = run
    with pytest.raises(InputError, match="trained on slices"):
        slice_training(*train, root / "run", axis=1, k=3, resume=True)


class LateralNet:
    """A stand-in network for axial stacks: rows (left -> right) in the left half are label 2,
    the others 41, whatever the image; it records the stacks it is given."""

    def __init__(self):
        self.inputs = []

    def predict_on_batch(self, x):
        self.inputs.append(np.array(x))
        rows = x.shape[1]
        out = np.zeros(x.shape[:3] + (3,), np.float32)
        out[:, :rows // 2, :, 1] = 1.0  # label 2
        out[:, rows // 2:, :, 2] = 1.0  # label 41
        return out


def test_slice_posteriors_batches_stacks_and_flips_left_right_in_the_plane():
    image = np.random.default_rng(0).uniform(size=(8, 6, 5)).astype(np.float32)
    net = LateralNet()
    model = SegmentationModel(network=net, labels=[0, 2, 41], lr_pairs=[(2, 41)], multiple=2,
                              slices={"axis": 2, "k": 3})
    from synthseg.training.slices import slice_posteriors

    plain = slice_posteriors(model, image, flip=False, batch_size=2)
    np.testing.assert_array_equal(np.concatenate(net.inputs), stack_slices(image, 2, 3))
    assert [len(x) for x in net.inputs] == [2, 2, 1]
    assert plain.shape == (8, 6, 5, 3)
    assert np.all(plain[:4, ..., 1] == 1) and np.all(plain[4:, ..., 2] == 1)
    # the flipped prediction, flipped back with left and right swapped, agrees: left stays left
    np.testing.assert_array_equal(slice_posteriors(model, image, flip=True), plain)
    with pytest.raises(InputError, match="multiple of 2"):
        slice_posteriors(model, image[:7], flip=False)


# ---------------------------------------------------------------------------- bad input
def test_image_and_label_map_on_different_grids_name_the_files(tmp_path):
    images, labels = write_pairs(tmp_path, [0], seed=0)
    bad = labels / "sub-00.nii.gz"
    nib.save(nib.Nifti1Image(block_map(0)[:, :, :12], np.eye(4)), str(bad))
    with pytest.raises(InputError) as err:
        slice_training(images, labels, tmp_path / "run", axis=2)
    assert "sub-00.nii.gz" in str(err.value) and "not on the same voxel grid" in str(err.value)


def test_a_3d_unet_is_refused(tmp_path):
    with pytest.raises(InputError, match="2D U-Net"):
        slice_training(tmp_path, tmp_path, tmp_path / "run", axis=2, unet=UNetOptions(ndim=3))


def test_a_3d_network_with_slice_options_is_refused(tmp_path):
    keras.utils.set_random_seed(0)
    build_unet(2, 1, UNetOptions(ndim=3, n_levels=1, base_features=2)).save(tmp_path / "unet_last.keras")
    np.save(tmp_path / "labels.npy", np.array([0, 2], np.int32))
    (tmp_path / "options.json").write_text(json.dumps({
        "kind": "supervised", "unet": UNetOptions(ndim=3, n_levels=1, base_features=2).to_dict(),
        "augmentation": {}, "data": {"slices": {"axis": 2, "k": 3}}}))
    with pytest.raises(InputError, match="not a 2D segmentation network"):
        load_model(tmp_path)


def test_slice_training_validates_on_whole_volumes(tmp_path):
    """Validation pairs keep every slice (training skips the empty ones) and are accepted as
    made like the training pairs; the log gets a row per validation."""
    train = write_pairs(tmp_path / "train", [0, 1], seed=0)
    val = write_pairs(tmp_path / "val", [2], seed=1)
    result = slice_training(*train, tmp_path / "run", axis=2, k=1, unet=UNET, validation=val,
                            options=quiet(steps=4, steps_per_checkpoint=2, batch_size=2, seed=SEED))
    rows = (tmp_path / "run" / "validation_log.csv").read_text().splitlines()
    assert rows[0].startswith("step,dice") and [r.split(",")[0] for r in rows[1:]] == ["2", "4"]
    assert 0.0 <= result.best_dice <= 1.0
