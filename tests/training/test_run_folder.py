"""The run folder contract: one reader and writer of options.json for every kind of run, old
folders still load, and validation works on synthetic, supervised and slice runs."""
import json
from pathlib import Path

import numpy as np
import pytest

from lab2im.errors import InputError
from synthseg.evaluation.validate import validate_training
from synthseg.inference.model import load_model
from synthseg.nn.unet import UNetOptions
from synthseg.training.augmentation import AugmentationOptions
from synthseg.training.checkpoints import load_network_weights
from synthseg.training.run_folder import SCHEMA_VERSION, read_spec, write_spec
from synthseg.training.slices import slice_training
from synthseg.training.supervised import SupervisedOptions, load_supervised_options, supervised_training
from synthseg.training.synthetic import TrainingOptions, load_options, training
from tests.training.test_supervised import block_map, write_pairs

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "models" / "synthseg_1.5mm" / "options.json"
TINY = UNetOptions(n_levels=2, base_features=4)
NO_AUGMENTATION = AugmentationOptions(prob=0.0, flip_prob=0.0)


def quiet(**kw):
    return dict(progress=False, tensorboard=False, steps=4, steps_per_checkpoint=2, seed=0, **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny run of each kind (4 steps, checkpoints at 2 and 4) and two pairs to validate on."""
    import nibabel as nib

    root = tmp_path_factory.mktemp("runs")
    images, labels = write_pairs(root / "pairs", [0, 1], seed=0)
    (root / "maps").mkdir()
    nib.save(nib.Nifti1Image(block_map(0), np.eye(4)), str(root / "maps" / "a.nii.gz"))
    training(root / "maps", root / "synthetic", unet=TINY, options=TrainingOptions(**quiet()),
             generation_labels=[0, 2, 3, 41, 42], lr_pairs=[(2, 41), (3, 42)])
    supervised_training(images, labels, root / "supervised", unet=TINY, augmentation=NO_AUGMENTATION,
                        options=SupervisedOptions(**quiet(crop_shape=(16, 16, 16))))
    slice_training(images, labels, root / "slices", axis=2, k=1, unet=UNetOptions(ndim=2, n_levels=2, base_features=4),
                   augmentation=NO_AUGMENTATION, options=SupervisedOptions(**quiet(batch_size=2)))
    return root, images, labels


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["synthetic", "supervised", "slices"])
def test_every_kind_of_run_writes_its_kind_and_validates(runs, kind):
    root, images, labels = runs
    spec = read_spec(root / kind)
    assert spec.kind == kind and spec.schema_version == SCHEMA_VERSION
    result = validate_training(root / kind, images, labels, progress=False)
    assert sorted(result.mean_dice) == [2, 4]
    assert all(0.0 <= v <= 1.0 for v in result.mean_dice.values())
    # the weights restored by name from the last checkpoint are those of the run's last network
    model = load_model(root / kind)
    expected = [w.copy() for w in model.network.get_weights()]
    for w in model.network.weights:
        w.assign(np.zeros(w.shape, w.dtype))
    load_network_weights(root / kind / "checkpoints" / "step-0000004.npz", model.network)
    for got, want in zip(model.network.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_dead_label_log_is_shared_by_supervised_runs(runs):
    root, _, _ = runs
    header = (root / "supervised" / "dice_per_label.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "step" and len(header) == 1 + 5  # background and the four labels


@pytest.mark.slow
def test_a_checkpoint_of_another_network_is_refused(runs):
    root, _, _ = runs
    model = load_model(root / "slices")  # a 2D network: the 3D run's checkpoint does not hold its weights
    with pytest.raises(InputError, match="not this network's training run|shape"):
        load_network_weights(root / "supervised" / "checkpoints" / "step-0000004.npz", model.network)


def test_the_shipped_models_options_without_kind_load_as_a_synthetic_run(tmp_path):
    """Options files written before the run-folder contract (no ``kind``, as the first shipped
    model's) load as synthetic runs of schema 1."""
    old = {k: v for k, v in json.loads(SHIPPED.read_text()).items() if k not in ("kind", "schema_version")}
    (tmp_path / "options.json").write_text(json.dumps(old))
    spec = read_spec(tmp_path)
    assert (spec.kind, spec.schema_version) == ("synthetic", 1)
    generator, unet, options = load_options(tmp_path)
    assert unet.n_levels == 5 and generator.voxel_size == 1.5 and options.steps > 0
    with pytest.raises(InputError, match="a synthetic training run, not a supervised or slices one"):
        load_supervised_options(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["supervised", "slices"])
def test_old_supervised_and_slice_folders_load(runs, tmp_path, kind):
    """Before schema 2 both were written as ``"kind": "supervised"`` without a version."""
    root, _, _ = runs
    d = json.loads((root / kind / "options.json").read_text())
    d["kind"] = "supervised"
    del d["schema_version"]
    d["supervised"].pop("lr_schedule")  # options that did not exist then take their defaults
    d["supervised"].pop("stop_on_dead_label")
    (tmp_path / "options.json").write_text(json.dumps(d))
    spec = read_spec(tmp_path)
    assert (spec.kind, spec.schema_version) == (kind, 1)
    unet, options, *_ = load_supervised_options(tmp_path)
    assert options.lr_schedule == "constant" and unet.ndim == (2 if kind == "slices" else 3)
    with pytest.raises(InputError, match=f"a {kind} training run, not a synthetic one"):
        load_options(tmp_path)


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "does not hold a JSON object"),
    ("{not json", "not valid JSON"),
    ('{"unet": {}}', "no 'kind' and no 'generator' section"),
    ('{"kind": "mystery", "unet": {}}', "unknown kind of run 'mystery'"),
    (f'{{"kind": "synthetic", "schema_version": {SCHEMA_VERSION + 1}}}', "written by a newer synthseg"),
    ('{"kind": "synthetic", "generator": {}, "unet": {}, "training": {}, "extra": {}}',
     r"unknown section\(s\) \['extra'\] for a synthetic run"),
])
def test_bad_options_files_are_clear_errors(tmp_path, content, message):
    (tmp_path / "options.json").write_text(content)
    with pytest.raises(InputError, match=message) as err:
        read_spec(tmp_path)
    assert "options.json" in str(err.value)


def test_no_options_file_and_the_writer(tmp_path):
    with pytest.raises(InputError, match="not a synthseg training folder"):
        read_spec(tmp_path)
    write_spec(tmp_path, "supervised", unet={}, supervised={}, augmentation={}, transfer={}, data={})
    d = json.loads((tmp_path / "options.json").read_text())
    assert list(d)[:2] == ["kind", "schema_version"] and d["kind"] == "supervised"
    with pytest.raises(ValueError, match="has no section"):
        write_spec(tmp_path, "synthetic", generator={}, unet={}, training={}, data={})


@pytest.mark.slow
def test_weights_averaged_over_checkpoints_are_their_mean_and_a_refusal_changes_nothing(runs):
    import keras

    from synthseg.training.checkpoints import average_network_weights

    root, _, _ = runs
    found = sorted((root / "synthetic" / "checkpoints").glob("step-*.npz"))
    assert len(found) >= 2
    model = load_model(root / "synthetic")
    each = []
    for path in found[-2:]:
        load_network_weights(path, model.network)
        each.append([keras.ops.convert_to_numpy(w) for w in model.network.weights])
    assert any(not np.array_equal(a, b) for a, b in zip(*each))  # the two checkpoints differ
    steps = average_network_weights(found[-2:], model.network)
    assert steps == [int(p.stem.split("-")[1]) for p in found[-2:]]
    for got, a, b in zip(model.network.weights, *each):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), (a.astype(np.float64) + b) / 2, rtol=1e-5, atol=1e-6)
    before = [keras.ops.convert_to_numpy(w) for w in model.network.weights]
    other = load_model(root / "slices").network  # a 2D network: refused, and its weights stay
    other_before = [keras.ops.convert_to_numpy(w) for w in other.weights]
    with pytest.raises(InputError, match="not this network's training run|shape") as info:
        average_network_weights([found[-1], root / "supervised" / "checkpoints" / "step-0000004.npz"], other)
    assert "corrupt" not in str(info.value)
    for got, want in zip(other.weights, other_before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), want)
    assert all(np.array_equal(keras.ops.convert_to_numpy(w), v) for w, v in zip(model.network.weights, before))
    with pytest.raises(InputError, match="no checkpoints"):
        average_network_weights([], model.network)
