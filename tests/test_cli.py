"""The command line: outputs, exit statuses and one-line errors."""
import subprocess
import sys

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest

from synthseg.cli import main


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "synthseg", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def test_generate_writes_scans_labels_and_mosaic(tmp_path, blocks_labels):
    nib.save(nib.Nifti1Image(blocks_labels, np.eye(4)), str(tmp_path / "lab.nii.gz"))
    out = tmp_path / "out"
    assert main(["generate", str(tmp_path / "lab.nii.gz"), "--out", str(out), "--n", "2",
                 "--size", "16", "--seed", "1"]) == 0
    for i in range(2):
        img = nib.load(str(out / f"synthetic_{i:03d}.nii.gz"))
        assert img.shape == (16, 16, 16)
        assert set(np.unique(np.asarray(nib.load(str(out / f"synthetic_{i:03d}_labels.nii.gz")).dataobj))) \
            <= {0, 2, 3, 41, 42}
    assert mpimg.imread(out / "mosaic.png").shape[2] in (3, 4)
    assert not [p for p in out.iterdir() if ".tmp" in p.name]  # atomic writes left nothing behind


def test_bad_input_is_one_line_and_nonzero(tmp_path):
    bad = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(8, 8, 8).astype("float32"), np.eye(4)), str(bad))
    r = run_cli("generate", bad, "--out", tmp_path / "out", "--n", "1")
    assert r.returncode == 1
    assert "scan.nii.gz: label map is not integer" in r.stderr
    assert "Traceback" not in r.stderr
    # quiet: no start-up logs of the backend's C++ libraries (I0000 ..., cuInit, oneDNN), only our lines
    lines = r.stderr.strip().splitlines()
    assert len(lines) <= 2 and all(line.startswith(("synthseg", "building")) for line in lines), lines
    r = run_cli("generate", tmp_path / "missing", "--out", tmp_path / "out")
    assert r.returncode == 1 and "missing: no such file" in r.stderr and "Traceback" not in r.stderr


def test_version_and_verbose_flags(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"synthseg {version('synthseg')}"
    from synthseg.cli import build_parser

    # --verbose before or after the command's name
    assert build_parser().parse_args(["--verbose", "fetch"]).verbose
    assert build_parser().parse_args(["fetch", "--verbose"]).verbose
    assert not build_parser().parse_args(["fetch"]).verbose


def test_bad_options_file(tmp_path, blocks_labels, capsys):
    nib.save(nib.Nifti1Image(blocks_labels, np.eye(4)), str(tmp_path / "lab.nii.gz"))
    (tmp_path / "o.json").write_text('{"generation_labels": [0, 2, 3, 41, 42], "rotaton": 3}')
    code = main(["generate", str(tmp_path / "lab.nii.gz"), "--out", str(tmp_path / "o"),
                 "--options", str(tmp_path / "o.json")])
    assert code == 1 and "o.json: unknown generator option(s) ['rotaton']" in capsys.readouterr().err


def test_fetch_list(capsys):
    assert main(["fetch", "--list"]) == 0
    assert "dk_atlas" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.network
def test_demo_generator(tmp_path):
    r = run_cli("demo", "--generator", "--out", tmp_path / "demo", "--n", "1", "--size", "48")
    assert r.returncode == 0, r.stderr[-2000:]
    img = nib.load(str(tmp_path / "demo" / "synthetic_000.nii.gz"))
    assert img.shape == (48, 48, 48) and 0 <= img.get_fdata().min() and img.get_fdata().max() <= 1
    assert (tmp_path / "demo" / "mosaic.png").stat().st_size > 10_000


def test_demo_with_a_missing_model_fails_before_making_anything(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(tmp_path / "no_such_model"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "no_such_model" in err and "Traceback" not in err and err.count("synthseg: error:") == 1
    assert not out.exists()


def test_every_command_has_the_same_shape():
    """One registry: each subcommand's module has add_arguments and run, and help text."""
    import importlib

    from synthseg.cli import COMMANDS, build_parser

    parser = build_parser()
    for name, (module_name, help_name) in COMMANDS.items():
        module = importlib.import_module(module_name)
        assert callable(module.add_arguments) and callable(module.run) and getattr(module, help_name)
    assert set(parser._subparsers._group_actions[0].choices) == set(COMMANDS)
    # predict and cascade take the shared flags with the same defaults
    common = ["--i", "a.nii.gz", "--o", "out", "--threads", "2", "--tile", "64", "--no-flip", "--skip-existing",
              "--vol", "v.csv", "--qc", "q.csv", "--png", "p"]
    a = parser.parse_args(["predict", *common])
    b = parser.parse_args(["cascade", *common, "--fine", "fine.keras"])
    for flag in ("input", "output", "threads", "tile", "no_flip", "skip_existing", "vol", "qc", "png"):
        assert getattr(a, flag) == getattr(b, flag), flag


def test_train_preset_fills_what_flags_do_not_say():
    from synthseg.cli import build_parser
    from synthseg.training.recipes import recipe
    from synthseg.training.train_command import TRAIN_DEFAULTS, settings

    parser = build_parser()
    labels, options, unet, crop = settings(parser.parse_args(["train", "maps/", "run", "--preset", "cpu", "--lr",
                                                              "5e-4"]))
    cpu = recipe("cpu")
    assert labels == "maps/" and options.learning_rate == 5e-4 and crop == cpu.crop
    assert (options.steps, options.lr_schedule, unet.base_features) == (cpu.training["steps"], "cosine", 16)
    labels, options, unet, crop = settings(parser.parse_args(["train", "maps/", "run"]))
    assert (options.steps, options.learning_rate, unet.base_features, crop) == (
        TRAIN_DEFAULTS["steps"], TRAIN_DEFAULTS["learning_rate"], TRAIN_DEFAULTS["base_features"], None)
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "run", "--preset", "no-such-recipe"])
    # a recipe's generator settings reach the run, beside the crop
    from synthseg.training.train_command import generator_overrides

    args = parser.parse_args(["train", "maps/", "run", "--preset", "cpu5b", "--crop", "32"])
    assert generator_overrides(args, settings(args)[3]) == {**recipe("cpu5b").generator, "output_shape": (32, 32, 32)}
    assert generator_overrides(parser.parse_args(["train", "maps/", "run"]), None) == {}


@pytest.mark.slow
@pytest.mark.parametrize("command, extra", [("train-supervised", []), ("train-slices", ["--axis", "2", "--k", "3"])])
def test_supervised_and_slice_training_commands(tmp_path, capsys, command, extra):
    from synthseg.training.run_folder import read_spec
    from tests.training.test_supervised import write_pairs

    images, labels = write_pairs(tmp_path / "pairs", [0, 1], seed=0)
    val_images, val_labels = write_pairs(tmp_path / "val", [1], seed=1)
    run = tmp_path / "run"
    args = [command, str(run), "--images", str(images), "--label-maps", str(labels), "--val-images",
            str(val_images), "--val-label-maps", str(val_labels), "--steps", "4", "--checkpoint-every", "2",
            "--levels", "2", "--features", "4", "--no-augmentation", *extra]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "trained to step 4, best validation Dice" in out and "unet_best.keras" in out
    assert read_spec(run).kind == ("slices" if extra else "supervised")
    assert main([*args[:6], "--resume", "--steps", "6", *extra]) == 0  # continues to the new total
    assert "trained to step 6" in capsys.readouterr().out
    assert main([command, str(tmp_path / "run2"), "--images", str(images), "--label-maps", str(labels),
                 "--val-images", str(val_images), *extra]) == 1
    assert "--val-images and --val-label-maps go together" in capsys.readouterr().err
