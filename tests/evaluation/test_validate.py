"""validate_training: every checkpoint scored on real files, resumable, best named."""
import csv

import nibabel as nib
import numpy as np
import pytest

from lab2im.errors import InputError
from synthseg.cli import main
from synthseg.evaluation.metrics import dice
from synthseg.evaluation.validate import validate_training
from synthseg.nn.unet import UNetOptions
from synthseg.training.synthetic import TrainingOptions, training

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_and_scans(tmp_path_factory, ):
    tmp = tmp_path_factory.mktemp("validate")
    lab = np.zeros((24, 28, 20), np.int32)
    lab[2:22, 3:25, 2:18] = 2
    lab[12:22, 3:25, 2:18] = 41
    lab[5:10, 8:20, 6:14] = 3
    lab[15:20, 8:20, 6:14] = 42
    (tmp / "train").mkdir()
    nib.save(nib.Nifti1Image(lab, np.eye(4)), str(tmp / "train" / "a.nii.gz"))
    training(tmp / "train", tmp / "run", unet=UNetOptions(n_levels=2, base_features=4),
             options=TrainingOptions(steps=4, steps_per_checkpoint=2, seed=0, progress=False, tensorboard=False),
             generation_labels=[0, 2, 3, 41, 42], lr_pairs=[(2, 41), (3, 42)])
    for d in ("images", "labels"):
        (tmp / d).mkdir()
    rng = np.random.default_rng(0)
    means = {0: 0, 2: 110, 3: 60, 41: 110, 42: 60}
    for i, affine in enumerate([np.eye(4), np.diag([-1.0, 1.0, 1.0, 1.0])]):
        image = np.vectorize(means.get)(lab).astype(np.float32) + rng.normal(0, 3, lab.shape).astype(np.float32)
        nib.save(nib.Nifti1Image(image, affine), str(tmp / "images" / f"s{i}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, affine), str(tmp / "labels" / f"s{i}.nii.gz"))
    return tmp


def read(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_scores_every_checkpoint_and_names_the_best(run_and_scans):
    tmp = run_and_scans
    result = validate_training(tmp / "run", tmp / "images", tmp / "labels", progress=False)
    rows = read(result.out_dir / "validation.csv")
    assert sorted({int(r["step"]) for r in rows}) == [2, 4] == sorted(result.mean_dice)
    assert {r["subject"] for r in rows} == {"s0.nii.gz", "s1.nii.gz"}
    assert {int(r["label"]) for r in rows} == {2, 3, 41, 42}  # background excluded
    assert result.best_step == max(result.mean_dice, key=result.mean_dice.get)
    assert result.best_checkpoint.name == f"step-{result.best_step:07d}.npz"
    assert (result.out_dir / "validation_curve.png").stat().st_size > 5000
    for step, value in result.mean_dice.items():
        assert value == pytest.approx(np.mean([float(r["dice"]) for r in rows if int(r["step"]) == step]))


def test_dice_matches_predicting_the_checkpoint_by_hand(run_and_scans):
    from lab2im.io import load_volume
    from synthseg.evaluation.validate import network_for_run
    from synthseg.inference.segmentation import segment_volume
    from synthseg.training.checkpoints import load_network_weights

    tmp = run_and_scans
    result = validate_training(tmp / "run", tmp / "images", tmp / "labels", progress=False)
    seg_model = network_for_run(tmp / "run")
    load_network_weights(tmp / "run" / "checkpoints" / "step-0000002.npz", seg_model.network)
    seg = segment_volume(load_volume(tmp / "images" / "s1.nii.gz"), seg_model, flip=True).native_segmentation()
    gt = np.asarray(nib.load(str(tmp / "labels" / "s1.nii.gz")).dataobj)
    expected = dice(gt, seg, [2, 3, 41, 42])
    rows = [r for r in read(result.out_dir / "validation.csv") if r["step"] == "2" and r["subject"] == "s1.nii.gz"]
    assert {int(r["label"]): float(r["dice"]) for r in rows} == pytest.approx(expected, abs=1e-6)


def test_resumable_checkpoints_are_not_recomputed(run_and_scans, tmp_path, monkeypatch):
    tmp = run_and_scans
    out = tmp_path / "val"
    validate_training(tmp / "run", tmp / "images", tmp / "labels", out_dir=out, progress=False)
    before = (out / "validation.csv").read_text()

    def boom(*args, **kwargs):
        raise AssertionError("a scored checkpoint was recomputed")

    monkeypatch.setattr("synthseg.inference.segmentation.segment_volume", boom)
    again = validate_training(tmp / "run", tmp / "images", tmp / "labels", out_dir=out, progress=False)
    assert (out / "validation.csv").read_text() == before and sorted(again.mean_dice) == [2, 4]
    # scores made with flip averaging (the default, as in predict) are not mixed with others
    with pytest.raises(InputError, match="made with flip averaging"):
        validate_training(tmp / "run", tmp / "images", tmp / "labels", out_dir=out, flip=False, progress=False)


def test_cli_and_bad_input(run_and_scans, tmp_path, capsys):
    tmp = run_and_scans
    assert main(["validate", str(tmp / "run"), "--images", str(tmp / "images"), "--label-maps",
                 str(tmp / "labels"), "--out", str(tmp_path / "v"), "--no-flip", "--threads", "2"]) == 0
    assert '"flip": false' in (tmp_path / "v" / "settings.json").read_text()
    assert "best checkpoint" in capsys.readouterr().out
    assert main(["validate", str(tmp_path), "--images", str(tmp / "images"), "--labels", str(tmp / "labels")]) == 1
    assert "no checkpoints" in capsys.readouterr().err
    with pytest.raises(InputError, match="2 validation images but 1 label maps"):
        validate_training(tmp / "run", tmp / "images", tmp / "labels" / "s0.nii.gz", out_dir=tmp_path / "w")
