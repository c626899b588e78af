"""What a training run writes while it trains, shared by every kind of run: the step log and the per-label Dice log (both trimmed on resume so each step is logged once), dead-label warnings, periodic checkpoints and the progress bar."""
from __future__ import annotations

import csv
import os
import sys
import time
import warnings
from pathlib import Path

import keras
import numpy as np
from keras import ops

#: A label scoring below ``DEAD_DICE`` for ``DEAD_CHECKPOINTS`` checkpoints in a row after the
#: warm-up is reported as dead (:class:`LabelDiceLog`).
DEAD_DICE = 0.01
DEAD_CHECKPOINTS = 3


def restart_csv_log(path: Path, fields, keep_until: int) -> list[list[str]]:
    """(Re)write the CSV log ``path`` with header ``fields`` and its rows up to step
    ``keep_until``: the rows a run killed after its last checkpoint wrote are dropped, so a
    resumed run logs each step once. Rows are matched on their first column, the step. Rows
    shorter than ``fields`` (written before a column was added) are padded with empty values.
    Returns the rows kept (lists of strings, header excluded)."""
    path = Path(path)
    rows = []
    if path.exists():
        with open(path, newline="") as fh:
            rows = [r + [""] * (len(fields) - len(r)) for r in list(csv.reader(fh))[1:]
                    if r and r[0].isdigit() and int(r[0]) <= keep_until]
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([list(fields)] + rows)
    return rows


def save_network(run_dir: Path, network, name: str) -> Path:
    """Save ``network`` (a Keras model) as ``run_dir/name`` atomically."""
    tmp = Path(run_dir) / f".{name}.{os.getpid()}.tmp.keras"
    network.save(tmp)
    os.replace(tmp, Path(run_dir) / name)
    return Path(run_dir) / name


def save_periodic_checkpoint(run_dir: Path, model, step: int, meta: dict, keep: int) -> Path:
    """``checkpoints/step-N.npz`` and ``last.npz`` (the same file, linked; both atomic), then
    only the newest ``keep`` periodic checkpoints are kept (0: all)."""
    from synthseg.training.checkpoints import save_checkpoint

    run_dir = Path(run_dir)
    periodic = save_checkpoint(run_dir / "checkpoints" / f"step-{step:07d}.npz", model, model.optimizer, step, meta)
    tmp = run_dir / f".last.{os.getpid()}.tmp.npz"
    if tmp.exists():
        tmp.unlink()
    os.link(periodic, tmp)  # same bytes, no second write
    os.replace(tmp, run_dir / "last.npz")
    if keep:
        for old in sorted((run_dir / "checkpoints").glob("step-*.npz"))[:-keep]:
            old.unlink()
    return periodic


class StepLog(keras.callbacks.Callback):
    """Append one CSV row per step: ``step, loss, dice, learning_rate, seconds, cpu_seconds``.

    ``seconds`` is wall time and ``cpu_seconds`` the process's CPU time (all its threads, as
    :func:`time.process_time`) of training: a paused or starved process gains wall seconds but no
    CPU seconds, so training compute is read from the second. A resumed run counts both on from
    the last row it keeps, so the time between a stop and the resume is in neither. (Logs
    written before this restarted both clocks at 0 at each resume, and had no ``cpu_seconds``;
    :mod:`synthseg.training.logs` reads both kinds.)

    ``loss`` and ``dice`` are Keras' running values since the start of the checkpoint interval
    (the loss a running mean, the Dice that of the interval's summed overlaps), so the row at a
    checkpoint holds the whole interval's; :func:`synthseg.training.logs.step_values` recovers
    each step's own loss.
    Rows after ``keep_until`` (left by a run killed after its last checkpoint) are dropped
    first, so a resumed run's log has each step once.
    """

    FIELDS = ("step", "loss", "dice", "learning_rate", "seconds", "cpu_seconds")

    def __init__(self, path: Path, keep_until: int):
        super().__init__()
        self.path = Path(path)
        self.last_loss = None
        kept = restart_csv_log(self.path, self.FIELDS, keep_until)
        last = dict(zip(self.FIELDS, kept[-1])) if kept else {}
        self._fh = None
        self._t0 = time.time() - float(last.get("seconds") or 0.0)
        self._c0 = time.process_time() - float(last.get("cpu_seconds") or 0.0)

    def on_train_begin(self, logs=None):
        self._fh = open(self.path, "a", newline="")
        self._writer = csv.writer(self._fh)

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        opt = self.model.optimizer
        step = int(np.asarray(opt.iterations))
        lr = float(np.asarray(opt.learning_rate))
        self.last_loss = float(logs.get("loss", np.nan))
        self._writer.writerow([step, f"{self.last_loss:.6g}", f"{float(logs.get('dice', np.nan)):.6g}",
                               f"{lr:.6g}", f"{time.time() - self._t0:.3f}",
                               f"{time.process_time() - self._c0:.3f}"])
        self._fh.flush()

    def on_train_end(self, logs=None):
        if self._fh:
            self._fh.close()


class LabelDiceLog(keras.callbacks.Callback):
    """At each checkpoint, one CSV row: the step and the hard Dice of every label over the
    steps since the previous checkpoint (rows after ``keep_until`` are dropped on resume).

    It also warns (once per label, :class:`UserWarning`, shown on stderr) about a *dead*
    label: one scored below :data:`DEAD_DICE` for :data:`DEAD_CHECKPOINTS` checkpoints in a
    row after ``warmup_steps``. Labels absent from the targets score 1, so this is a label
    the targets hold and the network does not predict; the first shipped 2 mm model's CSF was one
    (Dice 0.000 from step 2,250 to the end)."""

    def __init__(self, path: Path, metric, labels, steps_per_checkpoint: int, keep_until: int,
                 warmup_steps: int = 0, stop: bool = False):
        super().__init__()
        self.stop = bool(stop)
        self.stopped = ""  # what stopped the run (with ``stop``), else empty
        from synthseg.data.labels import label_names

        names = label_names()
        self.path, self.metric, self.spc = Path(path), metric, steps_per_checkpoint
        self.labels = [int(v) for v in labels]
        self.names = [names.get(v, str(v)) for v in self.labels]
        self.warmup_steps = int(warmup_steps)
        self.low_since = np.zeros(len(self.labels), int)  # checkpoints in a row below DEAD_DICE
        self.warned: set[int] = set()
        restart_csv_log(self.path, ["step"] + self.names, keep_until)

    def on_epoch_end(self, epoch, logs=None):
        step = (epoch + 1) * self.spc
        values = np.asarray(ops.convert_to_numpy(self.metric.per_label()), dtype=float)
        with open(self.path, "a", newline="") as fh:
            csv.writer(fh).writerow([step] + [f"{v:.4f}" for v in values])
        if step <= self.warmup_steps:
            return
        self.low_since = np.where(values < DEAD_DICE, self.low_since + 1, 0)
        for i in np.flatnonzero(self.low_since >= DEAD_CHECKPOINTS):
            if i not in self.warned:
                self.warned.add(int(i))
                text = (f"label {self.labels[i]} ({self.names[i]}) has scored Dice < {DEAD_DICE} on the "
                        f"training batches for {DEAD_CHECKPOINTS} checkpoints in a row (step {step}): the "
                        "network does not predict it; see dice_per_label.csv")
                if self.stop:
                    self.stopped = self.stopped or text
                    self.model.stop_training = True
                else:
                    warnings.warn(text, stacklevel=2)


class Checkpointer(keras.callbacks.Callback):
    """Every ``steps_per_checkpoint`` steps: ``checkpoints/step-N.npz`` and ``last.npz``
    (atomically), and the U-Net alone as ``unet_last.keras``."""

    def __init__(self, model_dir: Path, train_model, unet, steps_per_checkpoint: int, keep: int):
        super().__init__()
        self.dir, self.train_model, self.unet = Path(model_dir), train_model, unet
        self.spc, self.keep = steps_per_checkpoint, keep
        self.last_step = None  # the step of the last checkpoint written by this run

    def on_epoch_end(self, epoch, logs=None):
        step = (epoch + 1) * self.spc
        meta = {k: float(v) for k, v in (logs or {}).items()}
        save_periodic_checkpoint(self.dir, self.train_model, step, meta, self.keep)
        save_network(self.dir, self.unet, "unet_last.keras")
        self.last_step = step


class TimeBudget(keras.callbacks.Callback):
    """End training at the checkpoint after which another checkpoint interval (as long as the
    last one) would overrun ``minutes`` of wall time, counted from the start of ``fit``; at
    least one interval is trained. A run on a machine lent for a fixed time so stops with a
    checkpoint to resume from exactly. Put it after the
    :class:`Checkpointer` (``training(callbacks=...)`` does): the checkpoint is written first.

    Attributes:
        stopped: whether the budget ended the run.
    """

    def __init__(self, minutes: float):
        super().__init__()
        if not minutes > 0:
            from lab2im.errors import InputError

            raise InputError(f"the time budget must be > 0 minutes, got {minutes}")
        self.seconds, self.stopped = 60.0 * minutes, False

    def on_train_begin(self, logs=None):
        self.start = self.last = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        now = time.monotonic()
        interval, self.last = now - self.last, now
        last = epoch + 1 >= (self.params or {}).get("epochs", float("inf"))  # the run ends here anyway
        if not last and now - self.start + interval > self.seconds:  # the next interval would likely overrun
            self.model.stop_training, self.stopped = True, True


class ProgressBar(keras.callbacks.Callback):
    """One bar over the whole run (not per Keras epoch), with loss, Dice and ETA."""

    def __init__(self, total: int, start: int):
        super().__init__()
        self.total, self.start = total, start

    def on_train_begin(self, logs=None):
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, initial=self.start, unit="step", desc="training",
                        file=sys.stderr, dynamic_ncols=True)

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        self.bar.set_postfix(loss=f"{logs.get('loss', np.nan):.4f}", dice=f"{logs.get('dice', np.nan):.3f}")
        self.bar.update(1)

    def on_train_end(self, logs=None):
        self.bar.close()


def training_callbacks(model_dir: Path, options, loss, dice, labels, epoch_steps: int, step: int, keeper,
                       extra=()) -> tuple[list, StepLog, LabelDiceLog]:
    """The callbacks every kind of training run has, in order: the loss's warm-up switch, the
    step log, the per-label Dice log with its dead-label check, ``keeper`` (what writes the
    checkpoints), the progress bar, ``extra`` and TensorBoard; all logs continue at ``step``.

    Returns:
        ``(callbacks, step log, Dice log)``; after ``fit``, :func:`raise_if_stopped` with the
        Dice log.
    """
    from synthseg.nn.losses import WarmupCallback

    model_dir = Path(model_dir)
    log = StepLog(model_dir / "training_log.csv", keep_until=step)
    dead = LabelDiceLog(model_dir / "dice_per_label.csv", dice, labels, epoch_steps, step, options.warmup_steps,
                        stop=options.stop_on_dead_label)
    callbacks = [WarmupCallback(loss, options.warmup_steps), log, dead, keeper]
    if options.progress:
        callbacks.append(ProgressBar(options.total_steps, step))
    callbacks += list(extra)
    if options.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(model_dir / "tensorboard"), update_freq=10))
    return callbacks, log, dead


def raise_if_stopped(dead: LabelDiceLog, model_dir: Path) -> None:
    """The error of a run that ``stop_on_dead_label`` ended (nothing when it ran to the end)."""
    if dead.stopped:
        from lab2im.errors import InputError

        raise InputError(f"training stopped: {dead.stopped} (stop_on_dead_label); the last checkpoint is kept, "
                         "change the loss (e.g. ce_after_warmup) before training on", model_dir)
