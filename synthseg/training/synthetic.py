"""``training()``: a contrast-agnostic U-Net trained on synthetic scans generated in the graph.

Each step draws label maps, turns them into random synthetic scans with the labels-to-image
model *inside the training graph* (on the accelerator), and trains the U-Net to recover the
segmentation. The run lives in one folder::

    model_dir/
        options.json          generator, network and training options (the contract)
        labels.npy            segmentation labels, in the network's channel order
        last.npz              latest checkpoint (exact resume: weights, optimiser, random streams)
        checkpoints/step-*.npz  periodic checkpoints (the newest ``keep_checkpoints``)
        unet_last.keras       the U-Net alone, for prediction
        training_log.csv      step, loss, dice, learning rate, seconds
        dice_per_label.csv    Dice of each label over each checkpoint interval
        tensorboard/          TensorBoard logs

A run killed at any point (``kill -9`` included) continues with ``resume=True`` from the last
checkpoint with the same step counter, optimiser state and random streams, so the loss curve
continues where it stopped.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import ops

from lab2im.errors import InputError
from lab2im.io import atomic_write_text, check_not_an_input, make_writable_folder
from lab2im.options import GeneratorOptions, check_int, check_number, options_from_dict
from synthseg.nn.losses import MeanDice, SegmentationLoss, WarmupCallback

STRATEGIES = (None, "mirrored", "multiworker", "data_parallel")
#: A label scoring below ``DEAD_DICE`` for ``DEAD_CHECKPOINTS`` checkpoints in a row after the
#: warm-up is reported as dead (:class:`LabelDiceLog`).
DEAD_DICE = 0.01
DEAD_CHECKPOINTS = 3
SCHEDULES = ("constant", "cosine", "linear")


@dataclass
class RunOptions:
    """What every training run is told (:class:`TrainingOptions` for synthetic scans and
    :class:`synthseg.training.supervised.SupervisedOptions` for real pairs add their own).

    Attributes:
        steps: optimiser steps in total (rounded up to a whole number of checkpoints).
        steps_per_checkpoint: steps between checkpoints (also the Keras "epoch" length).
        keep_checkpoints: periodic checkpoints kept besides ``last.npz`` (0 keeps all).
        batch_size: samples per step (label maps per replica; pairs for supervised runs).
        learning_rate: Adam's initial learning rate (``>= 0``; synthetic runs need ``> 0``).
        warmup_steps: steps of weighted cross-entropy before the loss turns to soft Dice.
        ce_after_warmup: share of weighted cross-entropy kept in the loss after the warm-up,
            in [0, 1] (0: soft Dice only, as SynthSeg). Under Dice alone a label the network
            stops predicting cannot come back (:class:`synthseg.nn.losses.SegmentationLoss`);
            the shipped 2 mm model lost its CSF that way.
        seed: seed of the sample choice, the generation or augmentation, and the weight
            initialisation.
        deterministic: ask the backend for deterministic ops (slower; used by the tests).
        tensorboard: write TensorBoard logs.
        progress: show a progress bar with loss and ETA.
    """

    steps: int = 1000
    steps_per_checkpoint: int = 100
    keep_checkpoints: int = 5
    batch_size: int = 1
    learning_rate: float = 1e-4
    warmup_steps: int = 0
    ce_after_warmup: float = 0.0
    seed: int = 0
    deterministic: bool = False
    tensorboard: bool = True
    progress: bool = True

    def __post_init__(self):
        for name in ("steps", "steps_per_checkpoint", "batch_size"):
            check_int(getattr(self, name), name, 1)
        # a run shorter than one checkpoint interval is one interval of its own length (not a
        # whole default interval: steps=3 trains 3 steps)
        self.steps_per_checkpoint = min(self.steps_per_checkpoint, self.steps)
        for name in ("keep_checkpoints", "warmup_steps", "seed"):
            check_int(getattr(self, name), name, 0)
        check_number(self.learning_rate, "learning_rate", 0)
        check_number(self.ce_after_warmup, "ce_after_warmup", 0, 1)

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.steps / self.steps_per_checkpoint)

    @property
    def total_steps(self) -> int:
        return self.n_chunks * self.steps_per_checkpoint


@dataclass
class TrainingOptions(RunOptions):
    """How to train on synthetic scans: :class:`RunOptions`, and

    Attributes:
        lr_schedule: ``"constant"``, ``"cosine"`` (to 0 at ``steps``) or ``"linear"`` (to 0).
        mixed_precision: run the U-Net in half precision (the generator stays float32):
            float16 with loss scaling on a GPU, bfloat16 elsewhere (CPUs lack float16 kernels).
        strategy: ``None``, ``"mirrored"`` (tf.distribute, GPUs of one machine),
            ``"multiworker"`` (tf.distribute across machines, ``TF_CONFIG``) or
            ``"data_parallel"`` (Keras distribution API, JAX backend).
        init_weights: a U-Net ``.keras`` file (e.g. a shipped model's ``unet_last.keras``,
            float16 weights are fine) whose weights start a new run instead of a random
            initialisation; it must have the run's architecture and labels. The optimiser
            starts afresh. Ignored on resume (the checkpoint holds the weights).
        stop_on_dead_label: end the run at the checkpoint where a label is found dead (see
            :class:`LabelDiceLog`) and raise :class:`InputError` saying which, instead of only
            warning: a recipe that kills a label fails early rather than after hours.
    """

    lr_schedule: str = "constant"
    mixed_precision: bool = False
    strategy: str | None = None
    init_weights: str | None = None
    stop_on_dead_label: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.learning_rate <= 0:
            raise InputError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.lr_schedule not in SCHEDULES:
            raise InputError(f"lr_schedule must be one of {SCHEDULES}, got {self.lr_schedule!r}")
        if self.strategy not in STRATEGIES:
            raise InputError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.init_weights is not None:
            self.init_weights = str(self.init_weights)


@dataclass
class TrainingResult:
    model_dir: Path
    step: int
    last_loss: float | None


# ----------------------------------------------------------------------------- options file
def save_options(model_dir: Path, generator: GeneratorOptions, unet, training: TrainingOptions) -> None:
    text = json.dumps({"generator": generator.to_dict(), "unet": unet.to_dict(),
                       "training": dataclasses.asdict(training)}, indent=2)
    atomic_write_text(model_dir / "options.json", text + "\n")


def load_options(model_dir: Path):
    """Read ``options.json`` of a run: ``(GeneratorOptions, UNetOptions, TrainingOptions)``."""
    from synthseg.nn.unet import UNetOptions

    path = Path(model_dir) / "options.json"
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError("no options.json: not a synthseg training folder", model_dir) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"options file is not valid JSON ({exc})", path) from None
    unknown = sorted(set(d) - {"generator", "unet", "training"})
    if unknown:
        raise InputError(f"unknown section(s) {unknown}", path)
    return (GeneratorOptions.from_dict(d["generator"], source=str(path)),
            UNetOptions.from_dict(d["unet"], source=str(path)),
            options_from_dict(TrainingOptions, d["training"], "training", str(path)))


# ----------------------------------------------------------------------------- model
def segmentation_label_list(options: GeneratorOptions) -> list[int]:
    """Segmentation labels in the network's channel order (first appearance, so a protocol's
    neutral / left / right order is kept)."""
    seg = options.segmentation_labels or options.generation_labels
    return list(dict.fromkeys(int(v) for v in seg))


def build_training_model(generator: GeneratorOptions, unet_options, input_shape, seed: int | None,
                         mixed_precision: bool = False):
    """The generator and the U-Net chained into one model.

    Returns:
        ``(model, unet, labels)``: ``model`` maps int32 label maps ``(B, *input_shape, 1)`` to
        ``(B, *out, 2K)`` float32, the U-Net's probabilities (first K channels) beside the
        one-hot target (last K), so any backend's ``fit`` can train it with a loss that splits
        them; ``unet`` maps images to probabilities; ``labels`` are the K segmentation labels.
    """
    from lab2im.layers import OneHotLabels
    from lab2im.model import labels_to_image_model
    from synthseg.nn.unet import build_unet

    labels = segmentation_label_list(generator)
    gen = labels_to_image_model(generator, input_shape, batch_size=None, seed=seed)
    if seed is not None:
        keras.utils.set_random_seed(seed)  # weight initialisation
    policy = keras.config.dtype_policy()
    if mixed_precision:
        keras.config.set_dtype_policy(mixed_policy())
    try:
        unet = build_unet(len(labels), generator.n_channels, unet_options)
    finally:
        keras.config.set_dtype_policy(policy)
    label_maps = keras.Input((*input_shape, 1), dtype="int32", name="label_maps")
    image, target = gen(label_maps)
    probs = unet(image)
    onehot = OneHotLabels(labels, name="one_hot_target")(target)
    out = keras.layers.Concatenate(axis=-1, dtype="float32", name="prediction_and_target")([probs, onehot])
    return keras.Model(label_maps, out, name="synthseg_training"), unet, labels


def mixed_policy() -> str:
    """``"mixed_float16"`` when Keras sees a GPU, else ``"mixed_bfloat16"``."""
    devices = [str(d).lower() for d in keras.distribution.list_devices()]
    return "mixed_float16" if any("gpu" in d or "cuda" in d for d in devices) else "mixed_bfloat16"


def _optimizer(t: TrainingOptions):
    """Adam with the learning-rate schedule, loss-scaled for float16."""
    opt = keras.optimizers.Adam(_learning_rate(t))
    if t.mixed_precision and mixed_policy() == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def _learning_rate(t: TrainingOptions):
    total = t.n_chunks * t.steps_per_checkpoint
    if t.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(t.learning_rate, decay_steps=total)
    if t.lr_schedule == "linear":
        return keras.optimizers.schedules.PolynomialDecay(t.learning_rate, total, 0.0, power=1.0)
    return t.learning_rate


def _strategy(name: str | None):
    """``(context manager, number of replicas)`` for a distribution strategy."""
    if name is None:
        return contextlib.nullcontext(), 1
    backend = keras.backend.backend()
    if name in ("mirrored", "multiworker"):
        if backend != "tensorflow":
            raise InputError(f"strategy {name!r} needs the TensorFlow backend (KERAS_BACKEND={backend}); "
                             "use 'data_parallel' on JAX")
        import tensorflow as tf

        s = tf.distribute.MirroredStrategy() if name == "mirrored" else tf.distribute.MultiWorkerMirroredStrategy()
        return s.scope(), s.num_replicas_in_sync
    if backend != "jax":
        raise InputError(f"strategy 'data_parallel' needs the JAX backend (KERAS_BACKEND={backend})")
    devices = keras.distribution.list_devices()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return contextlib.nullcontext(), len(devices)


def load_initial_weights(unet, path) -> None:
    """Copy the weights of the U-Net saved in ``path`` (``.keras``) into ``unet``, cast to its
    dtypes.

    Raises:
        InputError: unreadable file, or a network of another architecture (the message names
            the first weight whose shape differs).
    """
    from lab2im.model import load_keras_model

    source = load_keras_model(path, "the initial U-Net")
    mine, theirs = unet.weights, source.weights
    if len(mine) != len(theirs):
        raise InputError(f"the initial U-Net has {len(theirs)} weight arrays, this run's U-Net {len(mine)}: "
                         "another architecture (check n_levels, base_features, batch_norm)", path)
    for a, b in zip(mine, theirs):
        if tuple(a.shape) != tuple(b.shape):
            raise InputError(f"the initial U-Net's weight {b.path} has shape {tuple(b.shape)}, this run needs "
                             f"{tuple(a.shape)} (another architecture or label list)", path)
    for a, b in zip(mine, theirs):
        a.assign(ops.cast(b.value, a.dtype))


# ----------------------------------------------------------------------------- data
def label_map_batches(maps: np.ndarray, batch_size: int, seed: int, start_step: int):
    """Endless minibatches of label maps; the choice for step ``s`` depends only on
    ``(seed, s)``, so a resumed run draws what the uninterrupted run would have drawn."""
    step = start_step
    dummy = np.zeros((batch_size, 1), np.float32)
    while True:
        idx = np.random.default_rng([seed, step]).integers(0, len(maps), size=batch_size)
        yield maps[idx], dummy
        step += 1


# ----------------------------------------------------------------------------- folder checks
def _prepare_folder(model_dir: Path, resume: bool) -> Path | None:
    """Check the run folder before any heavy work; return the checkpoint to resume from."""
    from synthseg.training.checkpoints import read_header

    last = model_dir / "last.npz"
    if resume:
        if not last.exists():
            raise InputError("nothing to resume: no last.npz (start a new run, without resume / --resume)", model_dir)
        read_header(last)  # a corrupt checkpoint is reported before anything is built
        return last
    if last.exists() or (model_dir / "options.json").exists():
        raise InputError("folder already holds a training run; continue it with resume (--resume on the "
                         "command line) or choose another folder", model_dir)
    make_writable_folder(model_dir, "cannot write checkpoints here")
    (model_dir / "checkpoints").mkdir(exist_ok=True)
    return None


# ----------------------------------------------------------------------------- training
def training(labels_dir, model_dir, generator: GeneratorOptions | None = None, unet=None,
             options: TrainingOptions | None = None, resume: bool = False, callbacks=(),
             **generator_overrides) -> TrainingResult:
    """Train a contrast-agnostic U-Net on synthetic scans generated from label maps.

    Args:
        labels_dir: training label maps (file, folder, ``.txt`` list or list of paths); they
            must share a shape unless ``output_shape`` (the crop) is set.
        model_dir: the run folder (see the module docstring); created if missing.
        generator: generation options (default: :func:`synthseg.brain_options` for protocol
            label maps); ``generator_overrides`` change single fields.
        unet: :class:`synthseg.nn.unet.UNetOptions` (default: SynthSeg's 5-level U-Net).
        options: :class:`TrainingOptions`.
        resume: continue the run in ``model_dir`` from ``last.npz`` with its saved options;
            ``options.steps``, if given, is the new total (a multiple of the run's
            ``steps_per_checkpoint``, beyond its last checkpoint; the other fields are ignored).
        callbacks: extra Keras callbacks.

    Returns:
        :class:`TrainingResult` (folder, steps done, last loss).

    Raises:
        InputError: bad label maps or options, an unwritable folder, a folder holding another
            run (without ``resume``), or a corrupt checkpoint (left untouched) -- all before
            training starts.
    """
    from synthseg.generation.brain_generator import LabelMapSet
    from synthseg.nn.unet import UNetOptions, required_multiple

    model_dir = Path(model_dir)
    check_not_an_input(model_dir, [labels_dir], "run folder")
    if not resume and options and options.init_weights and not Path(options.init_weights).is_file():
        raise InputError("initial U-Net weights file does not exist (init_weights)", options.init_weights)
    resume_from = _prepare_folder(model_dir, resume)
    new_total = None
    if resume_from is not None:
        generator, unet, saved = load_options(model_dir)
        new_total = options.steps if options else None
        if new_total is not None and new_total % saved.steps_per_checkpoint:
            raise InputError(f"steps ({new_total}) must be a multiple of the run's steps_per_checkpoint "
                             f"({saved.steps_per_checkpoint})", model_dir)
        options = dataclasses.replace(saved, steps=new_total) if new_total else saved
        generator_overrides = {}
    options = options or TrainingOptions()
    unet = unet or UNetOptions()
    data = LabelMapSet(labels_dir, generator, require_same_shape=True, **generator_overrides)
    generator = data.options
    out_shape = generator.output_shape or data.shape
    multiple = required_multiple(unet)
    if any(n % multiple for n in out_shape):
        raise InputError(f"output shape {tuple(out_shape)} is not a multiple of {multiple} (needed by a "
                         f"{unet.n_levels}-level U-Net); set output_shape (--crop on the command line), e.g. "
                         f"{tuple(max(multiple, n // multiple * multiple) for n in out_shape)}")
    if resume_from is None:
        save_options(model_dir, generator, unet, options)

    from synthseg.training.checkpoints import load_checkpoint

    if options.deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    scope, replicas = _strategy(options.strategy)
    with scope:
        model, unet_model, labels = build_training_model(generator, unet, data.shape, options.seed,
                                                         options.mixed_precision)
        loss = SegmentationLoss(warmup_steps=options.warmup_steps, ce_after_warmup=options.ce_after_warmup)
        dice = SplitOutputDice(len(labels))
        model.compile(optimizer=_optimizer(options), loss=SplitOutputLoss(loss, len(labels)),
                      metrics=[dice], jit_compile=False)
        model.build((None, *data.shape, 1))
        model.optimizer.build(model.trainable_variables)
        step = 0
        if resume_from is not None:
            step = int(load_checkpoint(resume_from, model, model.optimizer)["step"])
        elif options.init_weights:
            load_initial_weights(unet_model, options.init_weights)
    np.save(model_dir / "labels.npy", np.asarray(labels, np.int32))

    spc = options.steps_per_checkpoint
    if step % spc:
        raise InputError(f"checkpoint step {step} is not a multiple of steps_per_checkpoint {spc}", resume_from)
    start_chunk = step // spc
    if start_chunk >= options.n_chunks:
        if new_total is not None and step > new_total:
            raise InputError(f"the run is at step {step}, past the {new_total} steps asked for: nothing to train "
                             "(ask for more steps)", model_dir)
        return TrainingResult(model_dir, step, None)
    batch = options.batch_size * replicas
    log = StepLog(model_dir / "training_log.csv", keep_until=step)
    dead = LabelDiceLog(model_dir / "dice_per_label.csv", dice, labels, spc, step, options.warmup_steps,
                        stop=options.stop_on_dead_label)
    extra_callbacks, callbacks = callbacks, [WarmupCallback(loss, options.warmup_steps), log, dead,
                 Checkpointer(model_dir, model, unet_model, spc, options.keep_checkpoints)]
    if options.progress:
        callbacks.append(ProgressBar(options.n_chunks * spc, step))
    callbacks += list(extra_callbacks)
    if options.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(model_dir / "tensorboard"), update_freq=10))
    model.fit(label_map_batches(data.maps, batch, options.seed, step), steps_per_epoch=spc,
              epochs=options.n_chunks, initial_epoch=start_chunk, callbacks=callbacks, verbose=0)
    if dead.stopped:
        raise InputError(f"training stopped: {dead.stopped} (stop_on_dead_label); the last checkpoint is kept, "
                         "change the loss (e.g. ce_after_warmup) before training on", model_dir)
    return TrainingResult(model_dir, options.n_chunks * spc, log.last_loss)


# ----------------------------------------------------------------------------- loss and metric
def _split(y_pred, n_labels):
    return y_pred[..., :n_labels], ops.stop_gradient(y_pred[..., n_labels:])


class SplitOutputLoss(keras.losses.Loss):
    """Apply ``loss(target, probabilities)`` to the training model's ``[probs | one-hot]``
    output; ``y_true`` is a placeholder (the target is made in the graph)."""

    def __init__(self, loss, n_labels: int, name="segmentation_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.loss, self.n_labels = loss, int(n_labels)

    def call(self, y_true, y_pred):
        probs, target = _split(y_pred, self.n_labels)
        return self.loss(target, probs)


class SplitOutputDice(MeanDice):
    """:class:`~synthseg.nn.losses.MeanDice` (hard Dice of the argmax, background excluded) on the
    training model's ``[probs | one-hot]`` output, for logging."""

    def __init__(self, n_labels: int, name="dice", **kwargs):
        super().__init__(n_labels, name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        probs, target = _split(y_pred, self.n_labels)
        super().update_state(target, probs, sample_weight)


# ----------------------------------------------------------------------------- callbacks
def cumulative_seconds(rows) -> list[float]:
    """Training wall time (s) up to each row of a ``training_log.csv`` (rows of dicts with a
    ``seconds`` column, in step order). The column restarts at each resume; each step's
    duration is its ``seconds`` minus the previous row's (a restarted clock counts from 0), so
    the pause between a stop and the resume is not counted."""
    out, total, previous = [], 0.0, 0.0
    for row in rows:
        seconds = float(row["seconds"])
        total += seconds - previous if seconds >= previous else seconds
        previous = seconds
        out.append(total)
    return out


class StepLog(keras.callbacks.Callback):
    """Append one CSV row per step: ``step, loss, dice, learning_rate, seconds``.

    Rows after ``keep_until`` (left by a run killed after its last checkpoint) are dropped
    first, so a resumed run's log has each step once.
    """

    FIELDS = ("step", "loss", "dice", "learning_rate", "seconds")

    def __init__(self, path: Path, keep_until: int):
        super().__init__()
        self.path = Path(path)
        self.last_loss = None
        rows = []
        if self.path.exists():
            with open(self.path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if r.get("step", "").isdigit() and int(r["step"]) <= keep_until]
        with open(self.path, "w", newline="") as fh:
            w = csv.DictWriter(fh, self.FIELDS)
            w.writeheader()
            w.writerows(rows)
        self._fh = None
        self._t0 = time.time()

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
                               f"{lr:.6g}", f"{time.time() - self._t0:.3f}"])
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
    the targets hold and the network does not predict; the shipped 2 mm model's CSF was one
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
        header = ["step"] + self.names
        rows = []
        if self.path.exists():
            with open(self.path, newline="") as fh:
                rows = [r for r in csv.reader(fh)][1:]
            rows = [r for r in rows if r and r[0].isdigit() and int(r[0]) <= keep_until]
        with open(self.path, "w", newline="") as fh:
            csv.writer(fh).writerows([header] + rows)

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

    def on_epoch_end(self, epoch, logs=None):
        from synthseg.training.checkpoints import save_checkpoint

        step = (epoch + 1) * self.spc
        meta = {k: float(v) for k, v in (logs or {}).items()}
        periodic = save_checkpoint(self.dir / "checkpoints" / f"step-{step:07d}.npz", self.train_model,
                                   self.train_model.optimizer, step, meta)
        tmp = self.dir / f".last.{os.getpid()}.tmp.npz"
        if tmp.exists():
            tmp.unlink()
        os.link(periodic, tmp)  # same bytes, no second write
        os.replace(tmp, self.dir / "last.npz")
        self._save_unet()
        if self.keep:
            for old in sorted((self.dir / "checkpoints").glob("step-*.npz"))[:-self.keep]:
                old.unlink()

    def _save_unet(self):
        tmp = self.dir / f".unet_last.{os.getpid()}.tmp.keras"
        self.unet.save(tmp)
        os.replace(tmp, self.dir / "unet_last.keras")


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
