"""Reading a run's logs, ``training_log.csv`` and ``dice_per_label.csv`` (written by
:mod:`synthseg.training.callbacks`): their rows, wall and CPU time summed over resumes, each
step's own loss. Plain Python: no Keras import, so benchmarks and scripts that only read logs start fast."""
from __future__ import annotations

import csv
import itertools
import math


def _increments(values) -> list[float]:
    """Each value's increase over the previous one; a value below the previous (a clock
    restarted by a resume, in logs written before resumes counted on) or after a NaN counts
    from 0; a NaN value gives NaN."""
    out, previous = [], 0.0
    for value in values:
        out.append(value - previous if value >= previous else value)  # False after or at a NaN
        previous = value
    return out


def cumulative_seconds(rows) -> list[float]:
    """Training wall time (s) up to each row of a ``training_log.csv`` (rows of dicts with a
    ``seconds`` column, in step order). Each step's duration is its ``seconds`` minus the
    previous row's; a clock that went back was restarted by a resume (logs written before
    resumes counted on) and counts from 0. The pause between a stop and the resume is never
    counted."""
    return list(itertools.accumulate(_increments([float(row["seconds"]) for row in rows])))


def cumulative_cpu_seconds(rows, cores: float) -> list[float]:
    """Training CPU time (s, all cores together) up to each row of a ``training_log.csv``.

    A step's CPU time is the increase of its ``cpu_seconds`` (the process's CPU time, which a
    paused process does not gain) over the previous row's; after a row without it, or where
    the clock went back (see :func:`cumulative_seconds`), it counts from 0. Rows without
    ``cpu_seconds`` (logs written before the column existed, read as NaN) count their wall
    seconds (as :func:`cumulative_seconds`) times ``cores``.
    """
    cpu = [math.nan if row.get("cpu_seconds") in (None, "") else float(row["cpu_seconds"]) for row in rows]
    wall = _increments([float(row["seconds"]) for row in rows])
    return list(itertools.accumulate(c if not math.isnan(c) else w * cores
                                     for c, w in zip(_increments(cpu), wall)))


def step_values(running: dict[int, float], steps_per_checkpoint: int) -> dict[int, float]:
    """Each step's own value from a :class:`StepLog` column of running means (``loss``).

    Keras reports a running mean since the start of the checkpoint interval, so the mean after
    the ``k``-th step of an interval is ``m_k`` and that step's own value is
    ``k m_k - (k - 1) m_{k-1}``. Steps whose predecessor in the interval is missing are left
    out. (The ``dice`` column cannot be undone so: it is the Dice of the interval's summed
    overlaps, not a mean of per-step Dice.)

    Args:
        running: ``{step: running mean}``, steps counted from 1.
        steps_per_checkpoint: the run's checkpoint interval (steps).
    """
    out = {}
    for step, mean in running.items():
        k = (step - 1) % steps_per_checkpoint + 1
        if k == 1:
            out[step] = mean
        elif step - 1 in running:
            out[step] = k * mean - (k - 1) * running[step - 1]
    return out


def read_step_log(path) -> list[dict[str, float]]:
    """The rows of a ``training_log.csv`` in file order, every value a float (``step``, ``loss``,
    ``dice``, ``learning_rate``, ``seconds``, ``cpu_seconds``; see
    :class:`~synthseg.training.callbacks.StepLog`). A value the row lacks (a column added after
    it was written) is NaN.

    Raises:
        OSError: unreadable file; ValueError: a value that is not a number.
    """
    with open(path, newline="") as fh:
        return [{k: float(v) if v not in ("", None) else float("nan") for k, v in row.items()}
                for row in csv.DictReader(fh)]


def read_label_dice(path) -> dict[int, dict[str, float]]:
    """A ``dice_per_label.csv`` (:class:`~synthseg.training.callbacks.LabelDiceLog`):
    ``{checkpoint step: {label name: Dice over the interval before it}}``, in file order.

    Raises:
        OSError: unreadable file; ValueError: a value that is not a number.
    """
    out = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            step = int(row.pop("step"))
            out[step] = {name: float(value) for name, value in row.items()}
    return out
