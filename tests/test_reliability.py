"""Reliability under bad input, faults and untrusted files (issue 7).

* Every kind of input of the corpus (``tests/corpus.py``) through every command: ``synthseg
  predict``, ``synthseg evaluate`` and ``synthseg train`` (in-process, through
  :func:`synthseg.cli.main`) and :func:`synthseg.training.supervised.supervised_training`. An error is one
  line naming the file and the problem, exit status 1, no traceback, no file written; an
  accepted input gives the documented result. :data:`EXPECTED` is the table "Bad input" of
  ``docs/reliability.md`` (a test checks that they are the same; ``python -m tests.test_reliability``
  prints the table).
* Batches go on after a bad scan (predict, evaluate); training refuses a bad set as a whole.
* Faults: ``kill -9`` during a batch then ``--skip-existing``; a full disk.
* Untrusted files: Keras safe mode, ``allow_pickle=False``, options validated against the dataclasses.
"""
from __future__ import annotations

import csv
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import nibabel as nib
import numpy as np
import pytest

from lab2im.errors import InputError, OutputError
from synthseg.cli import main
from synthseg.evaluation.folders import subject_key
from tests import corpus

ROOT = Path(__file__).resolve().parent.parent
RELIABILITY_DOC = ROOT / "docs" / "reliability.md"
TABLE_START, TABLE_END = "<!-- bad-input-table:start -->", "<!-- bad-input-table:end -->"

COMMANDS = ("predict", "evaluate", "train", "supervised")
HEADER = ("input", "`synthseg predict` (the scan)", "`synthseg evaluate` (the prediction)",
          "`synthseg train` (the label map)", "`supervised_training` (the scan; † the label map)")
#: kinds given to supervised_training as the label map (with a good scan); the others as the scan
LABEL_ROLE = {"float_labels", "negative_labels", "unknown_labels"}

ALL = lambda cell: [cell] * 4  # noqa: E731
#: ``error: `<words of the message>``` | ``ok`` | ``ok: <what is checked>`` | ``ok, warning: `<words>```
EXPECTED = {
    "missing": ALL("error: `no such file`"),
    "directory": ALL("error: `folder contains no`"),
    "empty": ALL("error: `file is empty`"),
    "truncated": ALL("error: `truncated or corrupt`"),
    "not_an_image": ALL("error: `not a readable NIfTI/MGZ image`"),
    "size_mismatch": ALL("error: `header/data size mismatch`"),
    "huge": ALL("error: `too large`"),
    "four_d": ["ok, warning: `first volume only`", "error: `expected 3D`", "error: `label map is 4D`",
               "ok: 3 channels"],
    "two_d": ["error: `image is 2D`", "error: `expected 3D`", "error: `label map is 2D`", "error: `image is 2D`"],
    "one_voxel": ["error: `single voxel`", "ok, warning: `resampled onto the ground-truth grid`",
                  "error: `single voxel`", "error: `single voxel`"],
    "nan_inf": ["error: `NaN or infinite`"] * 4,
    "all_zero": ["error: `image is empty`", "ok: Dice 0", "error: `label map is empty`", "error: `image is empty`"],
    "float_labels": ["ok", "error: `non-integer values`", "error: `not integer`", "error: `not integer`"],
    "negative_labels": ["ok", "error: `negative labels`", "error: `negative labels`", "error: `negative labels`"],
    "unknown_labels": ["ok", "ok: 999 not scored", "ok: 999 becomes a label", "ok: 999 becomes background"],
    "anisotropic": ["ok: on the input's grid", "ok", "ok, warning: `anisotropic voxels`", "ok"],
    "unwritable_output": ["error: `not writable`", "error: `not writable`",
                          "error: `cannot write checkpoints here`", "error: `cannot write checkpoints here`"],
    "output_is_input": ["error: `would overwrite an input`", "error: `is an input`", "error: `is an input`",
                        "error: `is an input`"],
}
TRAIN_ARGS = ["--steps", "1", "--checkpoint-every", "1", "--crop", "16", "--levels", "2", "--features", "4"]


def render_table() -> str:
    """The table of ``docs/reliability.md``, from :data:`EXPECTED` and the corpus titles."""
    rows = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    for kind in corpus.KINDS:
        cells = list(EXPECTED[kind.key])
        if kind.key in LABEL_ROLE:
            cells[3] += " †"
        rows.append(f"| {kind.title} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def keyword(cell: str) -> str | None:
    m = re.search(r"`([^`]+)`", cell)
    return m.group(1) if m else None


# ----------------------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A one-convolution softmax network (5 labels) saved as ``.keras`` beside ``labels.npy``."""
    d = tmp_path_factory.mktemp("model")
    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, None, 1))
    out = keras.layers.Activation("softmax")(keras.layers.Conv3D(len(corpus.LABELS), 1)(inp))
    keras.Model(inp, out).save(d / "net.keras")
    np.save(d / "labels.npy", np.asarray(corpus.LABELS, np.int32))
    return d / "net.keras"


def files_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def temporaries(folder: Path) -> list[Path]:
    return [p for p in Path(folder).rglob("*") if ".tmp" in p.name or p.name.startswith(".write-test")]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("synthseg: error:")]


def warning_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("synthseg: warning:")]


def deny_writing(folder: Path, monkeypatch) -> None:
    """Make ``folder`` (created) unwritable: its mode, and for root (who ignores modes) ``os.access``."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        real = os.access

        def access(path, mode, *args, **kwargs):
            p = Path(os.path.abspath(os.fspath(path)))
            if mode & os.W_OK and (p == folder or folder in p.parents):
                return False
            return real(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)


class Outcome:
    """What a command did: exit status, stderr; the path an error must name, the places where a
    failed command must have written nothing, and an input that must be left as it was."""

    def __init__(self, code: int, err: str, named: Path, outputs: list[Path], protected=None):
        self.code, self.err, self.named, self.outputs = code, err, named, outputs
        self.protected = protected  # (path, its bytes before the command) or None


def guard(key: str, path: Path):
    """``(path, bytes)`` of the input that the output_is_input kind must leave untouched."""
    return (path, path.read_bytes()) if key == "output_is_input" else None


def cli(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def place_output(key: str, out: Path, source: Path, named: Path, monkeypatch):
    """Where a command writes for ``key``: ``out`` made unwritable (then the error must name it),
    or the input ``source`` itself. Returns ``(out, path the error must name, protected input,
    outputs that a failed command must not have written)``."""
    if key == "unwritable_output":
        deny_writing(out, monkeypatch)
        named = out
    elif key == "output_is_input":
        out = source
    return out, named, guard(key, source), ([] if key == "output_is_input" else [out])


# ----------------------------------------------------------------------------- one runner per command
def run_predict(tmp: Path, key: str, model_file: Path, capsys, monkeypatch) -> Outcome:
    scan = corpus.build(tmp / "in", key)
    tables = tmp / "tables"
    out, named, protected, outputs = place_output(key, tmp / "out", scan, scan, monkeypatch)
    code, _, err = cli(["predict", "--i", scan, "--o", out, "--model", model_file, "--no-flip",
                        "--vol", tables / "vol.csv"], capsys)
    return Outcome(code, err, named, [tables] + outputs, protected=protected)


def run_evaluate(tmp: Path, key: str, model_file: Path, capsys, monkeypatch) -> Outcome:
    gt, out = tmp / "gt", tmp / "eval"
    if key in ("unwritable_output", "output_is_input"):
        pred = corpus.good_labels(tmp / "pred", "sub.nii.gz")
        corpus.good_labels(gt, "sub.nii.gz")
    else:
        pred = corpus.build(tmp / "pred", key, as_labels=True)
        name = corpus.BY_KEY[key].filename
        # the ground truth is on the standard grid (a prediction on another grid is resampled),
        # except for the anisotropic kind, evaluated on its own grid
        if key == "anisotropic":
            corpus.label_partner(gt, key, name)
        else:
            corpus.good_labels(gt, name)
    out, named, protected, outputs = place_output(key, out, pred, pred, monkeypatch)
    code, _, err = cli(["evaluate", "--gt", gt, "--pred", pred, "--labels", 2, 3, 41, 42, "--out", out], capsys)
    return Outcome(code, err, named, outputs, protected=protected)


def run_train(tmp: Path, key: str, model_file: Path, capsys, monkeypatch) -> Outcome:
    run = tmp / "run"
    if key in ("unwritable_output", "output_is_input"):
        labels = corpus.good_labels(tmp / "labels", "sub.nii.gz")
    else:
        labels = corpus.build(tmp / "labels", key, as_labels=True)
    run, named, protected, outputs = place_output(key, run, labels, labels, monkeypatch)
    code, _, err = cli(["train", labels, run, *TRAIN_ARGS], capsys)
    return Outcome(code, err, named, outputs, protected=protected)


def run_supervised(tmp: Path, key: str, model_file: Path, capsys, monkeypatch) -> Outcome:
    from synthseg.nn.unet import UNetOptions
    from synthseg.training.augmentation import AugmentationOptions
    from synthseg.training.supervised import SupervisedOptions, supervised_training

    run = tmp / "run"
    if key in ("unwritable_output", "output_is_input"):
        images = corpus.good_scan(tmp / "images", "sub.nii.gz")
        labels = corpus.good_labels(tmp / "labels", "sub.nii.gz")
        named = images
    elif key in LABEL_ROLE:
        images, labels = corpus.scan_partner(tmp / "images", key), corpus.build(tmp / "labels", key)
        named = labels
    else:
        images, labels = corpus.build(tmp / "images", key), corpus.label_partner(tmp / "labels", key)
        named = images
    run, named, protected, outputs = place_output(key, run, images, named, monkeypatch)
    options = SupervisedOptions(steps=1, steps_per_checkpoint=1, progress=False, tensorboard=False,
                                labels=corpus.LABELS if key == "unknown_labels" else None)
    try:
        supervised_training(images, labels, run, unet=UNetOptions(n_levels=2, base_features=4), options=options,
                            augmentation=AugmentationOptions(prob=0.0))
        code, err = 0, capsys.readouterr().err
    except InputError as exc:
        assert "\n" not in str(exc), str(exc)
        code, err = 1, capsys.readouterr().err + f"synthseg: error: {exc}\n"
    return Outcome(code, err, named, outputs, protected=protected)


def check_ok(command: str, key: str, tmp: Path) -> None:
    """The documented result of an accepted input."""
    if command == "predict":
        seg = nib.load(str(tmp / "out" / f"{key}_synthseg.nii.gz"))
        source = nib.load(str(tmp / "in" / corpus.BY_KEY[key].filename))
        assert seg.shape == source.shape[:3]  # on the input's own grid (4D: its first volume's)
        np.testing.assert_allclose(seg.affine, source.affine, atol=1e-5)
        with open(tmp / "tables" / "vol.csv") as f:
            assert [r["subject"] for r in csv.DictReader(f)] == [key]
    elif command == "evaluate":
        with open(tmp / "eval" / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        assert {int(r["label"]) for r in rows} == {2, 3, 41, 42}  # 999 (unknown_labels) is not scored
        dice = {int(r["label"]): float(r["value"]) for r in rows if r["metric"] == "dice"}
        if key == "all_zero":
            assert set(dice.values()) == {0.0}
        if key in ("anisotropic", "unknown_labels"):
            assert dice[2] > 0.9
    else:
        run = tmp / "run"
        assert (run / "unet_last.keras").is_file() and (run / "last.npz").is_file()
        labels = np.load(run / "labels.npy", allow_pickle=False).tolist()
        if key == "unknown_labels":
            assert labels == (corpus.LABELS + [corpus.UNKNOWN_LABEL] if command == "train" else corpus.LABELS)
        if key == "four_d":
            assert json.loads((run / "options.json").read_text())["data"]["n_channels"] == 3


RUNNERS = {"predict": run_predict, "evaluate": run_evaluate, "train": run_train, "supervised": run_supervised}


def _cases():
    for kind in corpus.KINDS:
        for i, command in enumerate(COMMANDS):
            slow = command in ("train", "supervised") and EXPECTED[kind.key][i].startswith("ok")
            yield pytest.param(kind.key, command, id=f"{kind.key}-{command}",
                               marks=[pytest.mark.slow] if slow else [])


# ----------------------------------------------------------------------------- the corpus
@pytest.mark.parametrize("key, command", list(_cases()))
def test_input_kind(key, command, model_file, tmp_path, capsys, monkeypatch):
    expected = EXPECTED[key][COMMANDS.index(command)]
    try:
        outcome = RUNNERS[command](tmp_path, key, model_file, capsys, monkeypatch)
    finally:
        for folder in tmp_path.rglob("*"):
            if folder.is_dir():
                folder.chmod(0o755)  # undo deny_writing, so that the test folder can be removed
    err = outcome.err
    assert "Traceback" not in err, err
    word = keyword(expected)
    if expected.startswith("error"):
        assert outcome.code == 1, err
        lines = error_lines(err)
        assert len(lines) == 1, err  # one message
        assert str(outcome.named) in lines[0] and word.lower() in lines[0].lower(), (lines[0], outcome.named, word)
        for place in outcome.outputs:  # no partial output
            assert files_under(place) == [], files_under(place)
        if outcome.protected is not None:
            path, content = outcome.protected
            assert path.read_bytes() == content
    else:
        assert outcome.code == 0, err
        assert not error_lines(err), err
        if expected.startswith("ok, warning"):
            assert any(word in line for line in warning_lines(err)), err
        check_ok(command, key, tmp_path)
    assert not temporaries(tmp_path), temporaries(tmp_path)


def test_documented_table_is_the_tested_one():
    """The table "input kind x command x outcome" of docs/reliability.md is exactly :data:`EXPECTED`."""
    text = RELIABILITY_DOC.read_text()
    assert TABLE_START in text and TABLE_END in text, "docs/reliability.md lacks the bad-input table markers"
    table = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip()
    assert table == render_table(), ("docs/reliability.md table differs; regenerate it with "
                                     "python -m tests.test_reliability")
    assert set(EXPECTED) == {k.key for k in corpus.KINDS}


def test_corpus_builds_every_kind(tmp_path):
    for kind in corpus.KINDS:
        path = corpus.build(tmp_path / kind.key, kind.key)
        assert path.name == kind.filename
        assert path.exists() == (kind.key != "missing")
    assert (tmp_path / "huge" / "huge.nii.gz").stat().st_size < 10_000  # a header, never 4 GiB


# ----------------------------------------------------------------------------- batches
BATCH = [k.key for k in corpus.KINDS if k.is_file and k.key not in ("missing", "directory")]


def test_predict_batch_goes_on_after_bad_scans(model_file, tmp_path, capsys):
    scans = tmp_path / "scans"
    good = [corpus.good_scan(scans, "a.nii.gz"), corpus.good_scan(scans, "zz.nii.gz")]
    bad = {key: corpus.build(scans, key) for key in BATCH}
    corpus.build(scans, "directory")  # a folder among the scans is not a scan: ignored
    out = tmp_path / "out"
    code, stdout, err = cli(["predict", "--i", scans, "--o", out, "--model", model_file, "--no-flip",
                             "--vol", out / "vol.csv"], capsys)
    assert code == 1 and "Traceback" not in err
    lines = error_lines(err)
    expected_ok = ["a", "zz"] + [k for k in BATCH if EXPECTED[k][0].startswith("ok")]
    failing = [k for k in BATCH if EXPECTED[k][0].startswith("error")]
    assert len(lines) == len(failing), err
    for key in failing:
        (line,) = [ln for ln in lines if f"{bad[key]}:" in ln]
        assert keyword(EXPECTED[key][0]).lower() in line.lower(), line
    assert f"segmented {len(expected_ok)} scan(s), skipped 0 (outputs exist), failed {len(failing)}" in stdout
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{n}_synthseg.nii.gz" for n in expected_ok] + ["vol.csv"])
    with open(out / "vol.csv") as f:
        assert sorted(r["subject"] for r in csv.DictReader(f)) == sorted(expected_ok)
    assert all(p.exists() for p in good) and not temporaries(tmp_path)


def test_evaluate_batch_goes_on_after_bad_predictions(tmp_path, capsys):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    corpus.good_labels(gt, "a.nii.gz")
    corpus.good_labels(pred, "a_synthseg.nii.gz")
    bad = {}
    for key in BATCH:
        bad[key] = corpus.build(pred, key, as_labels=True)
        if key == "anisotropic":  # evaluated on its own grid; the others on the standard one
            corpus.label_partner(gt, key, f"{key}.nii.gz")
        else:
            corpus.good_labels(gt, f"{key}.nii.gz")
    out = tmp_path / "eval"
    code, stdout, err = cli(["evaluate", "--gt", gt, "--pred", pred, "--labels", 2, 3, 41, 42, "--out", out], capsys)
    assert code == 1 and "Traceback" not in err
    failing = [k for k in BATCH if EXPECTED[k][1].startswith("error")]
    lines = error_lines(err)
    assert len(lines) == len(failing), err
    for key in failing:
        (line,) = [ln for ln in lines if f"{bad[key]}:" in ln]
        assert keyword(EXPECTED[key][1]).lower() in line.lower(), line
    with open(out / "metrics.csv") as f:
        subjects = {r["subject"] for r in csv.DictReader(f)}
    # subject names drop endings such as "_labels" ("unknown_labels" -> "unknown")
    assert subjects == {"a"} | {subject_key(bad[k]) for k in BATCH if EXPECTED[k][1].startswith("ok")}
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(Path(f["file"]).name for f in summary["failed"]) == sorted(bad[k].name for k in failing)
    assert not temporaries(tmp_path)


def test_training_refuses_a_set_with_one_bad_label_map_before_writing_anything(tmp_path, capsys):
    labels = tmp_path / "labels"
    corpus.good_labels(labels, "a.nii.gz")
    bad = corpus.build(labels, "negative_labels")
    corpus.good_labels(labels, "z.nii.gz")
    code, _, err = cli(["train", labels, tmp_path / "run", *TRAIN_ARGS], capsys)
    assert code == 1 and error_lines(err) == [f"synthseg: error: {bad}: label map contains negative labels (min -1)"]
    assert files_under(tmp_path / "run") == []


# ----------------------------------------------------------------------------- faults
KILL_WORKER = ("import sys, time\n"
               "import synthseg.inference.batch as batch\n"
               "segment = batch.segment_prepared\n"
               "def slow(*args, **kwargs):  # each scan takes >= 0.4 s: the kill lands mid-batch\n"
               "    time.sleep(0.4)\n"
               "    return segment(*args, **kwargs)\n"
               "batch.segment_prepared = slow\n"
               "from synthseg.cli import main\n"
               "sys.exit(main(sys.argv[1:]))\n")


@pytest.mark.slow
def test_kill_during_batch_prediction_then_skip_existing(model_file, tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    names = [f"s{i}" for i in range(6)]
    for i, name in enumerate(names):
        corpus.save(scans / f"{name}.nii.gz", np.roll(corpus.phantom(corpus.blocks_labels()), i, axis=1))
    out = tmp_path / "out"
    args = ["predict", "--i", scans, "--o", out, "--model", model_file, "--no-flip", "--vol", out / "vol.csv"]
    proc = subprocess.Popen([sys.executable, "-c", KILL_WORKER, *map(str, args)], cwd=ROOT,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not list(out.glob("*_synthseg.nii.gz")):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # right after the first output appeared
    proc.wait()
    proc.stderr.close()
    finished = sorted(out.glob("*_synthseg.nii.gz"))
    assert 1 <= len(finished) < len(names), finished
    for f in finished:  # every output there is complete: atomic writes
        assert np.asarray(nib.load(str(f)).dataobj).shape == corpus.SHAPE
    stamps = {f.name: f.stat().st_mtime_ns for f in finished}
    # what a kill in the middle of a write leaves: a hidden temporary file, never a half output
    (out / ".s5_synthseg.nii.gz.abc123.tmp.nii.gz").write_bytes(b"half a file")
    code, stdout, err = cli([*args, "--skip-existing"], capsys)
    assert code == 0, err
    with open(out / "vol.csv") as f:
        rows = [r["subject"] for r in csv.DictReader(f)]
    done_before = [f.name.replace("_synthseg.nii.gz", "") for f in finished]
    # a scan is skipped only when its CSV row was written too (the kill may fall between the two)
    skipped = int(re.search(r"skipped (\d+)", stdout).group(1))
    assert len(done_before) - 1 <= skipped <= len(done_before), stdout
    assert sorted(rows) == names
    assert sorted(p.name for p in out.glob("*_synthseg.nii.gz")) == [f"{n}_synthseg.nii.gz" for n in names]
    kept = [name for name, stamp in stamps.items() if (out / name).stat().st_mtime_ns == stamp]
    assert len(kept) == skipped
    assert not temporaries(tmp_path)


def _full_disk(monkeypatch, target_name: str):
    """``nibabel.save`` writes half of the file then fails with ENOSPC for files named ``*target_name*``."""
    real = nib.save

    def save(img, filename):
        if target_name in os.path.basename(filename):
            with open(filename, "wb") as f:
                f.write(b"\x1f\x8b half of a file")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(img, filename)

    monkeypatch.setattr(nib, "save", save)


def test_full_disk_during_prediction_keeps_the_previous_output(model_file, tmp_path, capsys, monkeypatch):
    scan = corpus.good_scan(tmp_path, "t1.nii.gz")
    seg = tmp_path / "out" / "t1_synthseg.nii.gz"
    args = ["predict", "--i", scan, "--o", tmp_path / "out", "--model", model_file, "--no-flip"]
    assert cli(args, capsys)[0] == 0
    previous = seg.read_bytes()
    _full_disk(monkeypatch, "t1_synthseg")
    code, stdout, err = cli(args, capsys)
    assert code == 1 and "Traceback" not in err
    assert error_lines(err) == [f"synthseg: error: {scan}: {seg}: cannot write (No space left on device); an older "
                                "file of that name is left as it was"]
    assert "failed 1" in stdout
    assert seg.read_bytes() == previous and not temporaries(tmp_path)
    # the library's error: an OutputError (an InputError and an OSError) naming the file
    from lab2im.io import save_volume

    with pytest.raises(OutputError, match="No space left on device") as info:
        save_volume(np.zeros((2, 2, 2)), seg)
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError) and info.value.path == str(seg)
    assert seg.read_bytes() == previous and not temporaries(tmp_path)


def test_full_disk_while_writing_evaluation_outputs(tmp_path, capsys, monkeypatch):
    corpus.good_labels(tmp_path / "gt", "a.nii.gz")
    corpus.good_labels(tmp_path / "pred", "a.nii.gz")
    out = tmp_path / "eval"
    args = ["evaluate", "--gt", tmp_path / "gt", "--pred", tmp_path / "pred", "--labels", 2, "--out", out]
    assert cli(args, capsys)[0] == 0
    previous = (out / "metrics.csv").read_bytes()
    real = Path.write_text

    def write_text(self, data, *a, **kw):
        if "metrics.csv" in self.name:
            real(self, data[: len(data) // 2], *a, **kw)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data, *a, **kw)

    monkeypatch.setattr(Path, "write_text", write_text)
    code, _, err = cli(args, capsys)
    assert code == 1 and "Traceback" not in err
    assert error_lines(err) == [f"synthseg: error: {out / 'metrics.csv'}: cannot write (No space left on device); "
                                "an older file of that name is left as it was"]
    assert (out / "metrics.csv").read_bytes() == previous and not temporaries(tmp_path)


def test_training_checkpoint_on_a_full_disk_is_an_output_error(tmp_path, monkeypatch):
    """Checkpoints go through the same atomic writer: a full disk names the file, leaves no temporary."""
    from synthseg.training import checkpoints as checkpoint

    def savez(file, **arrays):
        Path(file).write_bytes(b"PK half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", savez)
    monkeypatch.setattr(np, "savez_compressed", savez)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(OutputError, match=r"last.npz: cannot write \(No space left on device\)"):
        checkpoint.save_checkpoint(tmp_path / "last.npz", model, None, 0, {})
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- untrusted files
class _Payload:
    """Unpickling this creates the file ``MARKER``: proof that code in a file ran."""

    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_model_holding_python_code_is_refused(tmp_path, capsys):
    marker = str(tmp_path / "code-ran")
    inp = keras.Input((None, None, None, 1))
    x = keras.layers.Conv3D(len(corpus.LABELS), 1)(inp)
    out = keras.layers.Lambda(lambda t: (open(marker, "w").close(), keras.ops.softmax(t))[1])(x)
    keras.Model(inp, out).save(tmp_path / "lambda.keras")
    os.unlink(marker)  # building the model ran the lambda once; loading must not
    np.save(tmp_path / "labels.npy", np.asarray(corpus.LABELS, np.int32))
    from synthseg.inference.model import load_model

    with pytest.raises(InputError, match=r"lambda.keras: refused: the network holds Python code \(a `Lambda` layer"):
        load_model(tmp_path / "lambda.keras")
    scan = corpus.good_scan(tmp_path)
    code, _, err = cli(["predict", "--i", scan, "--o", tmp_path / "out", "--model", tmp_path / "lambda.keras"], capsys)
    assert code == 1 and len(error_lines(err)) == 1 and "safe mode" in err and "Traceback" not in err
    from synthseg.nn.transfer import load_source_unet

    with pytest.raises(InputError, match="lambda.keras: init_from: refused: the U-Net holds Python code"):
        load_source_unet(tmp_path / "lambda.keras")
    assert not os.path.exists(marker)


def test_pickled_arrays_are_refused_without_running_them(tmp_path):
    marker = tmp_path / "code-ran"
    _Payload.marker = marker
    evil = np.array([_Payload()], dtype=object)
    # a model's labels.npy
    d = tmp_path / "model"
    d.mkdir()
    np.save(d / "labels.npy", evil, allow_pickle=True)
    (d / "unet_last.keras").write_bytes(b"never read: labels.npy is read first")
    from synthseg.inference.model import load_model

    with pytest.raises(InputError, match="labels.npy: labels file is unreadable .*allow_pickle=False"):
        load_model(d)
    # intensity priors
    from lab2im.options import GeneratorOptions

    np.save(tmp_path / "means.npy", evil, allow_pickle=True)
    with pytest.raises(InputError, match="means.npy: prior_means file is not a plain numeric"):
        GeneratorOptions(generation_labels=[0, 2], prior_means=str(tmp_path / "means.npy"))
    # a checkpoint whose header is a pickled object
    from synthseg.training.checkpoints import read_header

    np.savez(tmp_path / "last.npz", __header__=evil)
    with pytest.raises(InputError, match="last.npz: checkpoint is corrupt or not a synthseg checkpoint"):
        read_header(tmp_path / "last.npz")
    assert not marker.exists()


def test_option_files_are_validated_against_the_dataclasses(tmp_path):
    from synthseg.inference.model import load_model
    from synthseg.training.synthetic import load_options

    d = tmp_path / "run"
    d.mkdir()
    (d / "options.json").write_text(json.dumps({"generator": {"generation_labels": [0, 2]}, "unet": {"n_level": 3},
                                                "training": {}}))
    np.save(d / "labels.npy", np.asarray([0, 2], np.int32))
    (d / "unet_last.keras").write_bytes(b"never read: the options are checked first")
    with pytest.raises(InputError, match=r"options.json: unknown U-Net option\(s\) \['n_level'\]"):
        load_model(d)
    (d / "options.json").write_text(json.dumps({"generator": {"generation_labels": [0, 2], "voxel_sise": 2},
                                                "unet": {}, "training": {}}))
    with pytest.raises(InputError, match=r"options.json: unknown generator option\(s\) \['voxel_sise'\]"):
        load_model(d)
    (d / "options.json").write_text(json.dumps({"generator": {"generation_labels": [0, 2]}, "unet": {},
                                                "training": {}, "extra": 1}))
    with pytest.raises(InputError, match=r"options.json: unknown section\(s\) \['extra'\]"):
        load_options(d)
    (d / "options.json").write_text(json.dumps({"generator": {"generation_labels": [0, 2], "rotaton": 3},
                                                "unet": {}, "training": {}}))
    with pytest.raises(InputError, match=r"unknown generator option\(s\) \['rotaton'\]"):
        load_options(d)


if __name__ == "__main__":  # print the table of docs/reliability.md
    print(render_table())
