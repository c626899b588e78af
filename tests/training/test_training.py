"""training(): learning, exact resume after kill -9, multi-replica, and bad input."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lab2im.errors import InputError
from synthseg.nn.unet import UNetOptions
from synthseg.training.logs import read_step_log
from synthseg.training.synthetic import TrainingOptions, training

REPO = Path(__file__).resolve().parents[2]
TINY = UNetOptions(n_levels=2, base_features=4)
#: generator fields of the short runs: the blocks' labels, no flip, no resolution loss
PLAIN_GENERATOR = dict(flip_prob=0.0, randomise_resolution=False, generation_labels=[0, 2, 3, 41, 42],
                       lr_pairs=[(2, 41), (3, 42)])


def quiet(**kw):
    return TrainingOptions(**{"progress": False, "tensorboard": False, **kw})


@pytest.fixture
def label_dir(tmp_path, blocks_labels):
    d = tmp_path / "labels"
    d.mkdir()
    nib.save(nib.Nifti1Image(blocks_labels, np.eye(4)), str(d / "a.nii.gz"))
    nib.save(nib.Nifti1Image(np.flip(blocks_labels, 1).copy(), np.eye(4)), str(d / "b.nii.gz"))
    return d


def read_log(model_dir):
    return read_step_log(Path(model_dir) / "training_log.csv")


def worker(*args, env=None, wait=True):
    cmd = [sys.executable, "-m", "tests.training.train_worker", *map(str, args)]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    if wait:
        return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_dice_goes_up_on_synthetic_data(label_dir, tmp_path):
    result = training(label_dir, tmp_path / "run", unet=UNetOptions(n_levels=2, base_features=8),
                      options=quiet(steps=60, steps_per_checkpoint=30, learning_rate=3e-3, seed=0, tensorboard=True),
                      flip_prob=0.0, scaling=0.05, rotation=5, nonlin_std=1.0, randomise_resolution=False,
                      generation_labels=[0, 2, 3, 41, 42], lr_pairs=[(2, 41), (3, 42)])
    log = read_log(tmp_path / "run")
    assert [r["step"] for r in log] == list(range(1, 61)) and result.step == 60
    first, last = np.mean([r["dice"] for r in log[:10]]), np.mean([r["dice"] for r in log[-10:]])
    assert last > first + 0.2, (first, last)
    assert np.mean([r["loss"] for r in log[-10:]]) < np.mean([r["loss"] for r in log[:10]])
    run = tmp_path / "run"
    assert (run / "last.npz").exists() and (run / "unet_last.keras").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000030.npz", "step-0000060.npz"]
    assert (run / "options.json").exists() and np.load(run / "labels.npy").tolist() == [0, 2, 3, 41, 42]
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    with open(run / "dice_per_label.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["step", "Unknown", "Left-Cerebral-White-Matter", "Left-Cerebral-Cortex",
                       "Right-Cerebral-White-Matter", "Right-Cerebral-Cortex"]
    assert [r[0] for r in rows[1:]] == ["30", "60"]
    assert float(rows[2][2]) > float(rows[1][2])  # white matter got better


@pytest.mark.slow
def test_kill_and_resume_continues_the_same_curve(label_dir, tmp_path):
    ref = worker(label_dir, tmp_path / "ref", 8)
    assert ref.returncode == 0, ref.stderr[-3000:]

    marker = tmp_path / "paused"
    proc = worker(label_dir, tmp_path / "run", 8, "--pause-at", 5, "--marker", marker, wait=False)
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # mid-run, after the step-4 checkpoint and one more step
    proc.wait()
    killed = read_log(tmp_path / "run")
    assert [r["step"] for r in killed] == [1, 2, 3, 4, 5]

    resumed = worker(label_dir, tmp_path / "run", 8, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = read_log(tmp_path / "ref"), read_log(tmp_path / "run")
    assert [r["step"] for r in b] == list(range(1, 9))  # step counter continued, no step twice
    np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=1e-4)
    np.testing.assert_allclose([r["dice"] for r in b], [r["dice"] for r in a], rtol=1e-4, atol=1e-6)


def test_a_time_budget_stops_at_a_checkpoint_and_the_run_resumes(label_dir, tmp_path):
    """TimeBudget: a budget shorter than one checkpoint interval ends the run at its first
    checkpoint (the result says that step, not the total asked for); resumes go on one interval
    at a time, and the one that reaches the end is not reported as stopped; each step is logged
    once. A budget of 0 minutes is refused."""
    from synthseg.training.callbacks import TimeBudget

    kw = PLAIN_GENERATOR
    budget = TimeBudget(1e-6)
    result = training(label_dir, tmp_path / "run", unet=TINY, callbacks=[budget],
                      options=quiet(steps=6, steps_per_checkpoint=2, keep_checkpoints=0), **kw)
    assert budget.stopped and result.step == 2
    assert [r["step"] for r in read_log(tmp_path / "run")] == [1, 2]
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("*.npz")] == ["step-0000002.npz"]
    budget = TimeBudget(1e-6)  # over budget at every checkpoint, but the last one ends the run anyway
    result = training(label_dir, tmp_path / "run", resume=True, callbacks=[budget])
    assert result.step == 4 and budget.stopped
    budget = TimeBudget(1e-6)
    result = training(label_dir, tmp_path / "run", resume=True, callbacks=[budget])
    assert result.step == 6 and not budget.stopped
    log = read_log(tmp_path / "run")
    assert [r["step"] for r in log] == list(range(1, 7))
    # wall and process CPU time count on across resumes, so the logged values are the totals
    from synthseg.training.logs import cumulative_cpu_seconds, cumulative_seconds

    cpu, wall = [r["cpu_seconds"] for r in log], [r["seconds"] for r in log]
    assert cpu[0] > 0 and all(b > a for a, b in zip(cpu, cpu[1:])) and all(b > a for a, b in zip(wall, wall[1:]))
    assert cumulative_cpu_seconds(log, cores=2) == pytest.approx(cpu)
    assert cumulative_seconds(log) == pytest.approx(wall)
    with pytest.raises(InputError, match="> 0 minutes"):
        TimeBudget(0)


@pytest.mark.slow
def test_two_replicas_mirrored_strategy_on_cpu(label_dir, tmp_path):
    r = worker(label_dir, tmp_path / "run", 4, "--replicas", 2, "--strategy", "mirrored")
    assert r.returncode == 0, r.stderr[-3000:]
    assert [row["step"] for row in read_log(tmp_path / "run")] == [1, 2, 3, 4]


@pytest.mark.slow
def test_two_devices_data_parallel_on_jax(label_dir, tmp_path):
    env = {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    r = worker(label_dir, tmp_path / "run", 4, "--strategy", "data_parallel", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "CpuDevice(id=1)" in r.stdout or "cpu:1" in r.stdout, r.stdout
    assert [row["step"] for row in read_log(tmp_path / "run")] == [1, 2, 3, 4]


@pytest.mark.slow
def test_a_run_starts_from_saved_weights_and_refuses_other_architectures(label_dir, tmp_path):
    """init_weights: a new run starts from a saved U-Net (here a first run's), so its first loss
    is that network's, not a random one's; a missing file or another architecture is refused
    before any run folder is made."""
    kw = PLAIN_GENERATOR
    opts = dict(steps=40, steps_per_checkpoint=40, learning_rate=3e-3, seed=0)
    training(label_dir, tmp_path / "first", unet=TINY, options=quiet(**opts), **kw)
    weights = tmp_path / "first" / "unet_last.keras"
    later = dict(opts, steps=2, steps_per_checkpoint=2, seed=1)
    training(label_dir, tmp_path / "init", unet=TINY, options=quiet(**later, init_weights=str(weights)), **kw)
    training(label_dir, tmp_path / "fresh", unet=TINY, options=quiet(**later), **kw)
    init, fresh = (read_log(tmp_path / n)[0]["loss"] for n in ("init", "fresh"))
    assert init < fresh, (init, fresh)
    assert str(weights) in (tmp_path / "init" / "options.json").read_text()
    # a float16 copy (scripts/save_continue_weights.py) is smaller and starts the same run alike
    half = tmp_path / "half.keras"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "save_continue_weights.py"), str(tmp_path / "first"),
                        str(half)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "(step 40)" in r.stdout, r.stderr[-2000:]
    from lab2im.model import load_keras_model

    halved = load_keras_model(half, "copy")
    assert {str(w.dtype) for w in halved.weights} == {"float16"}
    assert len(halved.weights) == len(load_keras_model(weights, "run").weights)
    training(label_dir, tmp_path / "half", unet=TINY, options=quiet(**later, init_weights=str(half)), **kw)
    assert read_log(tmp_path / "half")[0]["loss"] == pytest.approx(init, rel=0.02)
    with pytest.raises(InputError, match="does not exist"):
        training(label_dir, tmp_path / "missing", unet=TINY, options=quiet(**later, init_weights=str(tmp_path / "x.keras")), **kw)
    assert not (tmp_path / "missing").exists()
    with pytest.raises(InputError, match="another architecture"):
        training(label_dir, tmp_path / "other", unet=UNetOptions(n_levels=2, base_features=8),
                 options=quiet(**later, init_weights=str(weights)), **kw)
    # init_widen: a wider U-Net starts from the narrow one's function (synthseg.nn.widen)
    wide = UNetOptions(n_levels=2, base_features=8)
    training(label_dir, tmp_path / "wide", unet=wide,
             options=quiet(**later, init_weights=str(weights), init_widen=True), **kw)
    assert read_log(tmp_path / "wide")[0]["loss"] == pytest.approx(init, rel=1e-3)
    with pytest.raises(InputError, match="cannot widen the initial U-Net"):
        training(label_dir, tmp_path / "narrower", unet=UNetOptions(n_levels=2, base_features=2),
                 options=quiet(**later, init_weights=str(weights), init_widen=True), **kw)
    with pytest.raises(InputError, match="init_widen must be true or false"):
        quiet(**later, init_weights=str(weights), init_widen="yes")
    with pytest.raises(InputError, match="init_widen needs init_weights"):
        quiet(**later, init_widen=True)


# ---------------------------------------------------------------------------- bad input
def test_empty_label_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: folder contains no label map files"):
        training(tmp_path / "empty", tmp_path / "run", unet=TINY, options=quiet(steps=1))


def test_label_maps_of_different_shapes_without_crop(tmp_path, blocks_labels):
    d = tmp_path / "labels"
    d.mkdir()
    nib.save(nib.Nifti1Image(blocks_labels, np.eye(4)), str(d / "a.nii.gz"))
    nib.save(nib.Nifti1Image(blocks_labels[:20], np.eye(4)), str(d / "b.nii.gz"))
    with pytest.raises(InputError, match="label maps have different shapes"):
        training(d, tmp_path / "run", unet=TINY, options=quiet(steps=1))


def test_priors_that_do_not_match_the_labels(label_dir, tmp_path):
    np.save(tmp_path / "means.npy", np.zeros((2, 3)))
    with pytest.raises(InputError, match=r"means.npy: prior_means has shape \(2, 3\)"):
        training(label_dir, tmp_path / "run", unet=TINY, options=quiet(steps=1),
                 prior_means=str(tmp_path / "means.npy"))


def test_unwritable_checkpoint_folder(label_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(InputError, match="cannot write checkpoints here"):
        training(label_dir, blocker / "run", unet=TINY, options=quiet(steps=1))


def test_output_shape_not_a_multiple_of_the_unet_levels(label_dir, tmp_path):
    with pytest.raises(InputError, match=r"output shape \(15, 15, 15\) is not a multiple of 2"):
        training(label_dir, tmp_path / "run", unet=TINY, options=quiet(steps=1), output_shape=(15, 15, 15))


@pytest.mark.slow
def test_command_line_training_flags(label_dir, tmp_path, capsys):
    """`synthseg train`: --steps below one interval trains that many steps, --keep-checkpoints,
    --options, --init-weights, --init-widen; on resume --steps is the new total, and asking for fewer steps
    than done is an error in flag names."""
    from lab2im.options import GeneratorOptions
    from synthseg.cli import main

    opts = GeneratorOptions(generation_labels=[0, 2, 3, 41, 42], lr_pairs=[(2, 41), (3, 42)], flip_prob=0.0)
    opts.save(tmp_path / "gen.json")
    small = ["--crop", "16", "--levels", "2", "--features", "4", "--lr", "3e-3", "--options", str(tmp_path / "gen.json")]
    run = tmp_path / "run"
    assert main(["train", str(label_dir), str(run), "--steps", "3", "--checkpoint-every", "7", *small]) == 0
    assert len(read_log(run)) == 3  # not 7
    run2 = tmp_path / "run2"
    assert main(["train", str(label_dir), str(run2), "--steps", "4", "--checkpoint-every", "1",
                 "--keep-checkpoints", "0", "--init-weights", str(run / "unet_last.keras"), *small]) == 0
    assert len(list((run2 / "checkpoints").glob("step-*.npz"))) == 4  # 0 keeps all
    saved = (run2 / "options.json").read_text()
    assert '"flip_prob": 0.0' in saved and "unet_last.keras" in saved
    wide = tmp_path / "wide"  # --init-widen: the 4-feature network starts a 6-feature run
    assert main(["train", str(label_dir), str(wide), "--steps", "1", "--init-weights", str(run / "unet_last.keras"),
                 "--init-widen", *small, "--features", "6"]) == 0
    assert '"init_widen": true' in (wide / "options.json").read_text()
    assert main(["train", str(label_dir), str(run2), "--resume", "--steps", "6"]) == 0
    assert len(read_log(run2)) == 6
    capsys.readouterr()
    assert main(["train", str(label_dir), str(run2), "--resume", "--steps", "2"]) == 1
    err = capsys.readouterr().err
    assert "the run is at step 6, past the 2 steps asked for" in err
    assert main(["train", str(label_dir), str(run2), "--resume", "--crop", "32"]) == 1
    assert "a resumed run keeps the options it was started with" in capsys.readouterr().err
    assert main(["train", str(label_dir), str(tmp_path / "r3"), "--steps", "250", *small]) == 1
    assert "--steps 250 is not a multiple of --checkpoint-every 100" in capsys.readouterr().err
    assert main(["train", str(label_dir), str(run2), *small]) == 1
    err = capsys.readouterr().err
    assert "--resume on the command line" in err and "resume=True" not in err


@pytest.mark.slow
def test_existing_run_and_corrupt_checkpoint(label_dir, tmp_path):
    run = tmp_path / "run"
    training(label_dir, run, unet=TINY, options=quiet(steps=2, steps_per_checkpoint=2), output_shape=(16, 16, 16))
    with pytest.raises(InputError, match="already holds a training run"):
        training(label_dir, run, unet=TINY, options=quiet(steps=2), output_shape=(16, 16, 16))
    good = (run / "checkpoints" / "step-0000002.npz").read_bytes()
    (run / "last.npz").unlink()
    (run / "last.npz").write_bytes(b"garbage")
    with pytest.raises(InputError, match="last.npz: checkpoint is corrupt"):
        training(label_dir, run, resume=True)
    assert (run / "checkpoints" / "step-0000002.npz").read_bytes() == good  # the good one is untouched
    with pytest.raises(InputError, match="nothing to resume"):
        training(label_dir, tmp_path / "fresh", resume=True)


@pytest.mark.slow
def test_mixed_precision_and_cosine_schedule(label_dir, tmp_path):
    import keras

    run = tmp_path / "run"
    training(label_dir, run, unet=TINY, output_shape=(16, 16, 16),
             options=quiet(steps=4, steps_per_checkpoint=2, mixed_precision=True, lr_schedule="cosine",
                           learning_rate=1e-3))
    log = read_log(run)
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in log)
    assert log[-1]["learning_rate"] < log[0]["learning_rate"]  # cosine decay
    unet = keras.saving.load_model(run / "unet_last.keras", compile=False)
    assert any(layer.dtype_policy.name == "mixed_bfloat16" for layer in unet.layers)  # CPU: bfloat16
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored


@pytest.mark.parametrize("kw, message", [
    (dict(steps=0), "steps must be an integer >= 1"),
    (dict(batch_size=True), "batch_size must be an integer >= 1"),
    (dict(steps_per_checkpoint=2.5), "steps_per_checkpoint must be an integer >= 1"),
    (dict(keep_checkpoints=-1), "keep_checkpoints must be an integer >= 0"),
    (dict(seed=-3), "seed must be an integer >= 0"),
    (dict(learning_rate="fast"), "learning_rate must be a number >= 0"),
    (dict(ce_after_warmup=2.0), "ce_after_warmup must be a number in"),
])
def test_run_options_are_checked_alike_for_synthetic_and_supervised_runs(kw, message):
    """The fields both kinds of run share live in RunOptions, checked once."""
    from synthseg.training.supervised import SupervisedOptions

    for cls in (TrainingOptions, SupervisedOptions):
        with pytest.raises(InputError, match=message):
            cls(**kw)


def test_synthetic_runs_need_a_learning_rate_supervised_ones_may_measure_with_zero():
    from synthseg.training.supervised import SupervisedOptions

    with pytest.raises(InputError, match="learning_rate must be > 0"):
        TrainingOptions(learning_rate=0.0)
    assert SupervisedOptions(learning_rate=0.0, steps=5, steps_per_checkpoint=2).total_steps == 6
    assert TrainingOptions(steps=5, steps_per_checkpoint=2).n_chunks == 3
    with pytest.raises(InputError, match="lr_schedule must be one of"):
        TrainingOptions(lr_schedule="step")


def test_a_label_the_network_never_predicts_is_reported_once(tmp_path):
    """dice_per_label.csv gets a row per checkpoint; a label below Dice 0.01 for 3 checkpoints
    in a row after the warm-up (here CSF, 24, as in the first shipped model's run) gets one warning;
    a label that recovers, or is low only during the warm-up, gets none."""
    from synthseg.training.callbacks import LabelDiceLog

    class Metric:
        values = None

        def per_label(self):
            return np.asarray(self.values)

    metric = Metric()
    log = LabelDiceLog(tmp_path / "dice_per_label.csv", metric, [0, 24, 2], steps_per_checkpoint=10,
                       keep_until=0, warmup_steps=20)
    history = [[0.5, 0.0, 0.0], [0.6, 0.0, 0.0],  # warm-up (steps 10, 20): not counted
               [0.7, 0.0, 0.005], [0.8, 0.0, 0.2], [0.8, 0.0, 0.005], [0.9, 0.0, 0.005]]
    caught = []
    for epoch, values in enumerate(history):
        metric.values = values
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            log.on_epoch_end(epoch)
        caught += [(epoch, str(x.message)) for x in w]
    assert [e for e, _ in caught] == [4]  # steps 30, 40, 50: three in a row for CSF
    assert "label 24 (CSF)" in caught[0][1] and "step 50" in caught[0][1]
    metric.values = [0.9, 0.0, 0.0]  # label 2: a third low checkpoint in a row (the 0.2 broke the first run)
    for epoch in (6, 7):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            log.on_epoch_end(epoch)
        caught += [(epoch, str(x.message)) for x in w]
    assert [e for e, _ in caught] == [4, 6]  # CSF is not reported again
    assert "label 2 (Left-Cerebral-White-Matter)" in caught[1][1]
    rows = (tmp_path / "dice_per_label.csv").read_text().splitlines()
    assert rows[0] == "step,Unknown,CSF,Left-Cerebral-White-Matter" and len(rows) == 1 + len(history) + 2


def test_stop_on_dead_label_ends_the_run_at_that_checkpoint(tmp_path):
    """With stop=True the same history stops the run (no warning) at the checkpoint that finds
    the dead label, and says which; training() turns that into an InputError."""
    from synthseg.training.callbacks import LabelDiceLog

    class Metric:
        values = None

        def per_label(self):
            return np.asarray(self.values)

    class Model:
        stop_training = False

    metric = Metric()
    log = LabelDiceLog(tmp_path / "dice_per_label.csv", metric, [0, 24, 2], steps_per_checkpoint=10,
                       keep_until=0, warmup_steps=0, stop=True)
    log.set_model(Model())
    for epoch in range(3):
        metric.values = [0.8, 0.0, 0.5]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning: it stops instead
            log.on_epoch_end(epoch)
        assert log.model.stop_training == (epoch == 2)
    assert "label 24 (CSF)" in log.stopped and "step 30" in log.stopped


def test_step_values_undo_the_running_means():
    """The log's loss is a running mean since the interval's start; step_values gives each
    step's own value back, and leaves out a step whose predecessor in the interval is missing."""
    from synthseg.training.logs import step_values

    own = {1: 4.0, 2: 2.0, 3: 6.0, 4: 1.0, 5: 3.0}
    running = {1: 4.0, 2: 3.0, 3: 4.0, 4: 1.0, 5: 2.0}  # intervals of 3 steps: 1-3, 4-6
    assert step_values(running, 3) == pytest.approx(own)
    del running[4]
    assert step_values(running, 3) == pytest.approx({1: 4.0, 2: 2.0, 3: 6.0})


def test_cumulative_seconds_sums_over_resumes():
    """training_log.csv's seconds restart at each resume; the time between runs is not counted."""
    from synthseg.training.logs import cumulative_seconds

    rows = [{"seconds": s} for s in ("2.0", "4.5", "7.0", "1.5", "3.0")]  # resumed after the 3rd step
    assert cumulative_seconds(rows) == [2.0, 4.5, 7.0, 8.5, 10.0]
    assert cumulative_seconds([]) == []


def test_cpu_time_is_read_from_the_log_and_older_rows_count_wall_time_times_cores(tmp_path):
    """A log written before ``cpu_seconds`` existed keeps its rows when a run resumes (padded,
    read back as NaN); those steps count wall seconds x cores, the new ones their CPU time, so
    a pause (wall time without CPU time) costs nothing."""
    import math

    from synthseg.training.callbacks import StepLog, restart_csv_log
    from synthseg.training.logs import cumulative_cpu_seconds, read_step_log

    path = tmp_path / "training_log.csv"
    path.write_text("step,loss,dice,learning_rate,seconds\n1,0.9,0.1,1e-4,2.0\n2,0.8,0.2,1e-4,4.0\n"
                    "3,0.7,0.3,1e-4,6.0\n")
    log = StepLog(path, keep_until=2)  # a resume from step 2's checkpoint counts on from its row
    assert 4.0 <= time.time() - log._t0 < 5.0 and 0.0 <= time.process_time() - log._c0 < 1.0
    # the resumed run's rows: 10 s of wall time (the process was paused), 3 s of CPU time for step 3
    with open(path, "a") as fh:
        fh.write("3,0.7,0.3,1e-4,14.0,3.0\n4,0.6,0.4,1e-4,16.0,7.0\n")
    rows = read_step_log(path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert math.isnan(rows[0]["cpu_seconds"]) and rows[3]["cpu_seconds"] == 7.0
    assert cumulative_cpu_seconds(rows, cores=2) == [4.0, 8.0, 11.0, 15.0]
    assert cumulative_cpu_seconds(rows, cores=1) == [2.0, 4.0, 7.0, 11.0]
    assert cumulative_cpu_seconds([], cores=2) == []
    # an older log restarted both clocks at each resume: a clock going back starts a new run
    rows = [{"seconds": w, "cpu_seconds": c} for w, c in ((2.0, 4.0), (4.0, 8.0), (1.0, 1.5), (3.0, 5.0))]
    assert cumulative_cpu_seconds(rows, cores=2) == [4.0, 8.0, 9.5, 13.0]


@pytest.mark.slow
def test_cli_trains_at_another_voxel_size_and_with_estimated_priors(label_dir, tmp_path, capsys):
    """``--voxel-size`` resamples the maps into the run (and a resume finds them there);
    ``--priors`` takes the folder `synthseg estimate-priors` wrote."""
    import json

    import nibabel as nib

    from synthseg.cli import main

    small = ["--crop", "8", "--levels", "2", "--features", "4", "--steps", "2", "--checkpoint-every", "2"]
    run = tmp_path / "run"
    assert main(["train", str(label_dir), str(run), "--voxel-size", "2", *small]) == 0
    maps = sorted((run / "label_maps").glob("*.nii.gz"))
    assert maps and np.allclose(nib.load(str(maps[0])).header.get_zooms()[:3], 2.0)
    assert json.loads((run / "options.json").read_text())["generator"]["voxel_size"] == pytest.approx(2.0)
    assert main(["train", str(run), "--resume", "--steps", "4"]) == 0  # the maps are found in the run
    assert "trained to step 4" in capsys.readouterr().out
    # priors estimated from a scan made of the label map
    lab = nib.load(str(sorted(label_dir.glob("*.nii.gz"))[0]))
    data = np.asarray(lab.dataobj)
    image = np.where(data > 0, 50.0 + data, 0.0).astype(np.float32)
    (tmp_path / "scans").mkdir()
    nib.save(nib.Nifti1Image(image, lab.affine), str(tmp_path / "scans" / "s.nii.gz"))
    assert main(["estimate-priors", "--images", str(tmp_path / "scans"), "--label-maps",
                 str(sorted(label_dir.glob("*.nii.gz"))[0]), "--out", str(tmp_path / "priors")]) == 0
    assert main(["train", str(label_dir), str(tmp_path / "run2"), "--priors", str(tmp_path / "priors"), *small]) == 0
    generator = json.loads((tmp_path / "run2" / "options.json").read_text())["generator"]
    assert generator["prior_means"].endswith("prior_means.npy") and generator["prior_distribution"] == "normal"
    capsys.readouterr()
    assert main(["train", str(label_dir), str(tmp_path / "run3"), "--priors", str(tmp_path), *small]) == 1
    assert "not an estimate-priors folder: no labels.npy" in capsys.readouterr().err


def test_every_recipe_is_valid_options_and_its_start_weights_are_committed():
    """Each recipe's fields make valid options (a typo in the table fails here, not after a
    fresh machine has built the training maps), and the weights it starts from are in the
    repository."""
    from synthseg.generation.brain_generator import brain_options
    from synthseg.training.recipes import RECIPES

    for r in RECIPES.values():
        options = r.training_options()
        generator = brain_options(voxel_size=r.voxel_mm, output_shape=(r.crop,) * 3, **r.generator)
        assert all(getattr(generator, k) == v for k, v in r.generator.items()), r.name
        assert r.unet_options().n_levels >= 1
        if r.init_weights:
            assert Path(options.init_weights).is_file(), r.name
    assert RECIPES["cpu5b"].generator["resolution_prob"] == 0.5


def test_a_recipe_with_thinned_csf_trains_on_every_variant_of_the_maps(tmp_path, monkeypatch):
    """``thin_csf_mm``: the public maps once per entry, the thinned ones built from the cached 1 mm
    maps (no download: a fake cache of the right version) and resampled to the recipe's voxels."""
    import nibabel as nib

    from synthseg.data import training_labels
    from synthseg.training.recipes import recipe

    base = tmp_path / "training_labels"
    base.mkdir()
    labels = np.full((24, 24, 24), 165, np.int32)
    labels[4:20, 4:20, 4:20] = 24
    labels[8:16, 8:16, 8:16] = 3
    for name in ("a", "b"):
        nib.save(nib.Nifti1Image(labels, np.eye(4)), base / f"{name}.nii.gz")
    (base / "VERSION").write_text(training_labels.MAPS_VERSION + "\n")
    monkeypatch.setenv("SYNTHSEG_DATA", str(tmp_path))
    paths = recipe("cpu7").label_maps()
    assert [p.parent.name for p in paths] == ["training_labels_2mm"] * 2 + ["training_labels_thin1mm_2mm"] * 2 + [
        "training_labels_thin2mm_2mm"] * 2
    csf = [int((np.asarray(nib.load(p).dataobj) == 24).sum()) for p in paths[::2]]
    assert csf[0] > csf[1] > csf[2] > 0
    assert nib.load(paths[-1]).shape == (12, 12, 12)
    assert len(recipe("cpu6").label_maps()) == 2


@pytest.mark.slow
def test_ship_model_averages_the_last_checkpoints_into_a_float16_file(label_dir, tmp_path):
    """``scripts/ship_model.py --average K``: the shipped network holds the mean of the run's last
    K checkpoints, stored in float16 (half the file) even when the run trained in mixed bfloat16,
    computed in float32 by prediction, and the card says so."""
    import keras

    from lab2im.model import load_keras_model
    from synthseg.training.checkpoints import load_network_weights

    kw = PLAIN_GENERATOR
    run = tmp_path / "run"
    training(label_dir, run, unet=TINY, options=quiet(steps=6, steps_per_checkpoint=2, mixed_precision=True,
                                                        keep_checkpoints=0, learning_rate=1e-2), **kw)
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    (tmp_path / "models" / "tiny" / "unet_best.keras").write_bytes(b"an older network")  # replaced, not kept
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "ship_model.py"), str(run), "tiny", "--average", "2",
                        "--models-dir", str(tmp_path / "models")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "models" / "tiny").iterdir()) == [
        "MODEL_CARD.md", "labels.npy", "options.json", "training_curve.png", "unet_last.keras"]  # no temporary files
    shipped = load_keras_model(tmp_path / "models" / "tiny" / "unet_last.keras", "shipped")
    assert {layer.dtype_policy.name for layer in shipped.layers if not isinstance(layer, keras.layers.InputLayer)} == {
        "float16"}
    expected = []
    for step in (4, 6):
        net = load_keras_model(run / "unet_last.keras", "run")
        load_network_weights(run / "checkpoints" / f"step-{step:07d}.npz", net)
        expected.append([np.asarray(keras.ops.convert_to_numpy(v), np.float64) for v in net.variables])
    for got, a, b in zip(shipped.variables, *expected):  # float16: 11 significant bits
        np.testing.assert_allclose(np.asarray(keras.ops.convert_to_numpy(got), np.float64), (a + b) / 2,
                                   rtol=1e-3, atol=1e-6)
    card = (tmp_path / "models" / "tiny" / "MODEL_CARD.md").read_text()
    assert "mean of the checkpoints at steps 4, 6" in card and "--no-refine" in card
    assert "stored in float16 and computed in float32" in card
    from synthseg.inference.model import load_model

    computed = load_model(tmp_path / "models" / "tiny").network
    assert {layer.dtype_policy.name for layer in computed.layers} == {"float32"}
    for got, want in zip(computed.variables, shipped.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want))
    assert "qc_threshold" not in (tmp_path / "models" / "tiny" / "options.json").read_text()
    # --qc: benchmarks/qc.py's threshold becomes the model's, and the card says what it rests on
    qc = tmp_path / "qc.json"
    qc.write_text(json.dumps({"results": {"threshold": 0.4193, "spearman": 0.97, "balanced_accuracy": 0.96,
                                          "scans": [{}] * 32}}))
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "ship_model.py"), str(run), "tiny", "--qc", str(qc),
                        "--models-dir", str(tmp_path / "models")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "models" / "tiny" / "options.json").read_text())["prediction"] == {"qc_threshold": 0.419}
    assert load_model(tmp_path / "models" / "tiny").qc_threshold == 0.419
    card = (tmp_path / "models" / "tiny" / "MODEL_CARD.md").read_text()
    assert "below **0.42** is reported as likely failed" in card and "over 32 good and degraded" in card
    qc.write_text("{}")
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "ship_model.py"), str(run), "tiny", "--qc", str(qc),
                        "--models-dir", str(tmp_path / "models")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "not a benchmarks/qc.py result" in r.stderr
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "ship_model.py"), str(run), "tiny", "--average", "9",
                        "--models-dir", str(tmp_path / "models")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "--average 9" in r.stderr


def test_a_recipe_continuing_weights_draws_new_samples_unless_told_otherwise():
    """Step ``s`` of two runs with one seed draws the same sample, so ``cpu16`` (continuing
    ``cpu15``'s weights) has its own seed; ``--seed`` still wins, and the paired controls share."""
    from synthseg.training.recipes import recipe

    assert recipe("cpu16").training_options().seed != recipe("cpu15").training_options().seed
    assert recipe("cpu16").training_options(seed=None).seed == 16  # the script's default: the recipe's
    assert recipe("cpu16").training_options(seed=3).seed == 3
    assert recipe("cpu15").training_options().seed == recipe("cpu15n").training_options().seed


@pytest.mark.slow
def test_frozen_batch_norm_trains_the_inference_function_and_keeps_its_statistics(label_dir, tmp_path):
    """``freeze_batch_norm``: the convolutions learn while every batch-norm layer keeps the
    initial weights' scale, offset and moving statistics, and the trained network computes the
    same in training and inference mode; a resumed frozen run continues."""
    import keras

    from lab2im.model import load_keras_model

    kw = PLAIN_GENERATOR
    opts = dict(steps=20, steps_per_checkpoint=20, learning_rate=3e-3, seed=0)
    training(label_dir, tmp_path / "first", unet=TINY, options=quiet(**opts), **kw)
    start = load_keras_model(tmp_path / "first" / "unet_last.keras", "start")
    frozen = quiet(**dict(opts, steps=4, steps_per_checkpoint=2, seed=1),
                   init_weights=str(tmp_path / "first" / "unet_last.keras"), freeze_batch_norm=True)
    training(label_dir, tmp_path / "frozen", unet=TINY, options=frozen, **kw)
    after = load_keras_model(tmp_path / "frozen" / "unet_last.keras", "after")
    bn = [layer.name for layer in after.layers if isinstance(layer, keras.layers.BatchNormalization)]
    convs = [layer.name for layer in after.layers if isinstance(layer, keras.layers.Conv3D)]
    assert bn and convs
    for name in bn:
        for a, b in zip(start.get_layer(name).get_weights(), after.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(start.get_layer(n).get_weights()[0], after.get_layer(n).get_weights()[0])
               for n in convs)
    x = np.random.default_rng(0).random((1, 16, 16, 16, 1), np.float32)
    np.testing.assert_allclose(np.asarray(after(x, training=True)), np.asarray(after(x, training=False)), atol=1e-6)
    resumed = training(label_dir, tmp_path / "frozen", options=TrainingOptions(steps=6), resume=True)
    assert resumed.step == 6
    with pytest.raises(InputError, match="freeze_batch_norm must be true or false"):
        quiet(freeze_batch_norm=1)
