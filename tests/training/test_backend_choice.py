"""Choosing the training backend by measuring it (synthseg.backend_choice, scripts/train_synthseg.py)."""
import importlib.util
import os
from argparse import Namespace
from pathlib import Path

import pytest

from synthseg import backend_choice

REPO = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("train_synthseg", REPO / "scripts" / "train_synthseg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_installed_backends_lists_what_imports():
    found = backend_choice.installed_backends()
    assert "tensorflow" in found and "jax" in found  # both are dependencies of the tests
    assert set(found) <= set(backend_choice.BACKENDS)


@pytest.mark.slow
def test_a_backend_is_timed_in_a_child_process_and_the_fastest_wins():
    seconds = backend_choice.time_backend("tensorflow", levels=2, features=4, crop=16, steps=2)
    assert seconds is not None and 0 < seconds < 60
    assert backend_choice.time_backend("no-such-backend", 2, 4, 16) is None  # a failure is None, not a crash
    lines = []
    chosen = backend_choice.fastest_backend(2, 4, 16, candidates=["tensorflow", "no-such-backend"],
                                            report=lines.append)
    assert chosen == "tensorflow" and any("failed" in line for line in lines)


def test_train_script_backend_flag_environment_and_recorded_run(tmp_path, monkeypatch):
    script = _script()
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    args = Namespace(run_dir=tmp_path, resume=False, backend=None, preset="cpu2", precision=None)
    assert script.choose_backend(args) == ("jax", False)  # the user's KERAS_BACKEND, float32 (not timed)
    args.backend, args.precision = "tensorflow", "mixed_bfloat16"
    assert script.choose_backend(args) == ("tensorflow", True) and os.environ["KERAS_BACKEND"] == "tensorflow"
    (tmp_path / script.BACKEND_FILE).write_text("torch\n")
    args.resume, args.backend, args.precision = True, None, None
    assert script.choose_backend(args)[0] == "torch"  # a resumed run keeps the backend it trained on


@pytest.mark.slow
def test_a_resumed_run_keeps_its_recipe(tmp_path):
    """``--resume`` without ``--preset`` trains the recipe recorded in the run (its label maps)."""
    script = _script()
    args = Namespace(run_dir=tmp_path, resume=True, preset=None)
    assert script.resolve_preset(args) == "small"  # nothing recorded
    (tmp_path / script.PRESET_FILE).write_text("cpu7\n")
    assert script.resolve_preset(args) == "cpu7"
    args.resume = False
    assert script.resolve_preset(args) == "small"  # a new run does not read it
    args.preset = "cpu6"
    assert script.resolve_preset(args) == "cpu6"
    (tmp_path / script.PRESET_FILE).write_text("nonsense\n")
    with pytest.raises(ValueError, match="unknown recipe 'nonsense'"):
        script.resolve_preset(Namespace(run_dir=tmp_path, resume=True, preset=None))


def test_precision_is_timed_too_and_the_fastest_pair_wins():
    lines = []
    backend, mixed = backend_choice.fastest_setting(2, 4, 16, candidates=["tensorflow"], report=lines.append)
    assert backend == "tensorflow" and isinstance(mixed, bool)
    assert len(lines) == 2 and any("mixed_bfloat16" in line for line in lines)
    assert not any("failed" in line for line in lines), lines  # both precisions run
    assert all(f == f.lower() for f in backend_choice.cpu_flags())


def test_train_script_refuses_a_time_budget_of_no_minutes(tmp_path, capsys):
    assert _script().main([str(tmp_path / "run"), "--minutes", "0"]) == 1
    assert "--minutes 0" in capsys.readouterr().err and not (tmp_path / "run").exists()
