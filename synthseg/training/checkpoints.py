"""Training checkpoints that allow an exact resume.

One ``.npz`` file holds everything a run needs to continue as if it had never stopped: every
model variable (network weights, batch-norm statistics *and* the states of the random
layers' seed generators, which Keras does not save with weights), every optimiser variable
(moments, iteration counter) and the step. Files are written atomically, so a run killed
while saving leaves the previous checkpoint intact, and are checked on loading (variable
count, names and shapes), so a corrupt or foreign file is a clear error, never garbage.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from lab2im.errors import InputError
from lab2im.io import atomic_output

FORMAT = "synthseg-checkpoint-1"


def _variables(model, optimizer):
    entries = [(f"model/{i:05d}", v) for i, v in enumerate(model.variables)]
    if optimizer is not None:
        entries += [(f"optimizer/{i:05d}", v) for i, v in enumerate(optimizer.variables)]
    return entries


def save_checkpoint(path, model, optimizer, step: int, meta: dict | None = None) -> Path:
    """Write the training state to ``path`` (``.npz``) atomically.

    Args:
        path: destination file; its folder must exist.
        model: the Keras model being trained (all its variables are saved).
        optimizer: its optimiser (built), or ``None``.
        step: optimiser steps done.
        meta: JSON-serialisable extra information (e.g. the last loss).
    """
    p = Path(path)
    arrays, names = {}, {}
    for key, var in _variables(model, optimizer):
        arrays[key] = np.asarray(var.numpy() if hasattr(var, "numpy") else var.value)
        names[key] = var.path
    header = {"format": FORMAT, "step": int(step), "names": names, "meta": meta or {}}
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    with atomic_output(p, ".npz") as tmp:
        np.savez(tmp, **arrays)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    return p


def read_header(path) -> dict:
    """The checkpoint's header (format, step, variable names, meta); validates the file."""
    p = Path(path)
    if not p.is_file():
        raise InputError("no such checkpoint", p)
    try:
        with np.load(p, allow_pickle=False) as data:
            header = json.loads(bytes(data["__header__"]).decode())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"checkpoint is corrupt or not a synthseg checkpoint ({type(exc).__name__})", p) from None
    if header.get("format") != FORMAT:
        raise InputError(f"unknown checkpoint format {header.get('format')!r}", p)
    return header


def load_checkpoint(path, model, optimizer) -> dict:
    """Restore a checkpoint written by :func:`save_checkpoint` into ``model`` and ``optimizer``.

    The model and optimiser must be built the same way as when saving. Nothing is assigned
    unless the whole file checks out. With ``optimizer=None`` only the model's variables are
    restored (weights for inference).

    Returns:
        The header: ``{"step": int, "meta": dict, ...}``.

    Raises:
        InputError: unreadable/corrupt file, or variables that do not match (count, shape).
    """
    p = Path(path)
    header = read_header(p)
    entries = _variables(model, optimizer)

    def same_count(data):
        # without an optimiser (e.g. to score the weights offline) only the model's part is read
        keys = [k for k in data.files if k != "__header__" and (optimizer is not None or k.startswith("model/"))]
        if len(keys) != len(entries):
            raise InputError(f"checkpoint holds {len(keys)} variables but the model and optimiser "
                             f"have {len(entries)}; was it written with other options?", p)

    _restore(p, entries, "model", same_count)
    return header


def load_network_weights(path, network) -> dict:
    """Restore only ``network``'s weights (e.g. a run's U-Net, loaded from its ``unet_*.keras``)
    from a training checkpoint, matching variables by name: any kind of run, without building
    its training model (generator or augmentation) or optimiser.

    Returns:
        The header, as :func:`load_checkpoint`.

    Raises:
        InputError: a corrupt file, or a network whose variables the checkpoint lacks or holds
            with another shape.
    """
    p = Path(path)
    header = read_header(p)
    by_name = {}
    for key, name in header.get("names", {}).items():
        if key.startswith("model/"):
            by_name.setdefault(name, []).append(key)

    def one_each(data):
        for var in network.variables:
            keys = by_name.get(var.path, [])
            if len(keys) != 1:
                raise InputError(f"checkpoint holds {len(keys)} variables named {var.path}: not this network's "
                                 "training run?", p)

    _restore(p, [((by_name.get(v.path) or [""])[0], v) for v in network.variables], "network", one_each)
    return header


def _restore(p: Path, entries, what: str, check) -> None:
    """Assign the checkpoint's arrays ``entries`` (``(key, variable)`` pairs) to their variables,
    after ``check(open file)`` and a shape check of every one: nothing is assigned unless all
    check out."""
    try:
        with np.load(p, allow_pickle=False) as data:
            check(data)
            values = []
            for key, var in entries:
                if key not in data.files:
                    raise InputError(f"checkpoint lacks variable {key} ({var.path})", p)
                value = data[key]
                if tuple(value.shape) != tuple(var.shape):
                    raise InputError(f"variable {var.path}: shape {tuple(value.shape)} in the checkpoint, "
                                     f"{tuple(var.shape)} in the {what}", p)
                values.append(value)
    except InputError:  # a readable checkpoint of another network: said as it is, not as corruption
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"checkpoint is corrupt ({type(exc).__name__}: {exc})", p) from None
    for (_, var), value in zip(entries, values):
        var.assign(value)


def average_network_weights(paths, network) -> list[int]:
    """Set ``network``'s weights to the mean of its weights in the checkpoints ``paths``
    (stochastic weight averaging over a run's last checkpoints, Izmailov et al., 2018): every
    floating-point variable, batch-norm statistics included, is averaged; others take the last
    checkpoint's value. Each checkpoint is read with :func:`load_network_weights`.

    Returns:
        The checkpoints' steps, in the order given.

    Raises:
        InputError: no checkpoints, or one that :func:`load_network_weights` refuses (nothing
            is assigned then).
    """
    import keras

    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("no checkpoints to average")
    saved = [np.array(keras.ops.convert_to_numpy(v)) for v in network.variables]
    sums, steps = None, []
    try:
        for p in paths:
            header = load_network_weights(p, network)
            steps.append(int(header.get("step", -1)))
            values = [np.asarray(keras.ops.convert_to_numpy(v)) for v in network.variables]
            sums = [v.astype(np.float64) for v in values] if sums is None else \
                [a + b if b.dtype.kind == "f" else b for a, b in zip(sums, values)]
    except InputError:
        for var, value in zip(network.variables, saved):
            var.assign(value)
        raise
    for var, total in zip(network.variables, sums):
        var.assign((total / len(paths)).astype(var.dtype) if total.dtype.kind == "f" else total)
    return steps


def save_float16_copy(source, out) -> Path:
    """Write a float16 copy of the Keras model in ``source`` (``.keras``) to ``out`` (``.keras``,
    atomically): half the size, enough to start a new run from (``TrainingOptions.init_weights``
    casts the weights back) but not an exact resume (no optimiser state; see :func:`save_checkpoint`).

    Raises:
        InputError: an unreadable ``source``.
    """
    from lab2im.model import load_keras_model, network_in_dtype

    copy = network_in_dtype(load_keras_model(source, "the U-Net to copy"), "float16")
    with atomic_output(out, suffix=".keras") as tmp:
        copy.save(tmp)
    return Path(out)
