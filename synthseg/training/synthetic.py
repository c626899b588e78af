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
        training_log.csv      step, loss, dice, learning rate, wall and CPU seconds
        dice_per_label.csv    Dice of each label over each checkpoint interval
        tensorboard/          TensorBoard logs

A run killed at any point (``kill -9`` included) continues with ``resume=True`` from the last
checkpoint with the same step counter, optimiser state and random streams, so the loss curve
continues where it stopped.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import ops

from lab2im.errors import InputError
from lab2im.io import check_not_an_input
from lab2im.options import GeneratorOptions, options_from_dict
from synthseg.training.callbacks import (
    Checkpointer,
    raise_if_stopped,
    training_callbacks,
)
from synthseg.training.options import RunOptions, make_loss, make_optimizer
from synthseg.training.run_folder import (
    prepare_folder,
    read_spec,
    set_determinism,
    unet_options,
    write_spec,
)
from synthseg.training.split_output import SplitOutputDice, SplitOutputLoss

STRATEGIES = (None, "mirrored", "multiworker", "data_parallel")


@dataclass
class TrainingOptions(RunOptions):
    """How to train on synthetic scans: :class:`RunOptions`, and

    Attributes:
        mixed_precision: run the U-Net in half precision (the generator stays float32):
            float16 with loss scaling on a GPU, bfloat16 elsewhere (CPUs lack float16 kernels).
        strategy: ``None``, ``"mirrored"`` (tf.distribute, GPUs of one machine),
            ``"multiworker"`` (tf.distribute across machines, ``TF_CONFIG``) or
            ``"data_parallel"`` (Keras distribution API, JAX backend).
        init_weights: a U-Net ``.keras`` file (e.g. a shipped model's ``unet_last.keras``,
            float16 weights are fine) whose weights start a new run instead of a random
            initialisation; it must have the run's architecture and labels. The optimiser
            starts afresh. Ignored on resume (the checkpoint holds the weights).
        init_widen: ``init_weights`` may be a narrower network (fewer feature maps per level,
            all else the run's): it is embedded in this run's wider U-Net so that both compute
            the same function at step 0 (:mod:`synthseg.nn.widen`).
        freeze_batch_norm: train with every batch-normalisation layer frozen
            (:func:`synthseg.nn.unet.freeze_batch_norm`): normalised by its moving statistics and
            with its scale and offset fixed, as at inference, so the steps optimise the function
            prediction uses. With batch size 1 the unfrozen layers normalise each crop by its own
            statistics, which inference cannot do. Meant for continuing trained weights
            (``init_weights``), whose moving statistics are meaningful. Measured (recipe
            ``cpu17``, docs/accuracy.md): better on synthetic crops, far worse on real scans.
    """

    mixed_precision: bool = False
    strategy: str | None = None
    init_weights: str | None = None
    init_widen: bool = False
    freeze_batch_norm: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.learning_rate <= 0:
            raise InputError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.strategy not in STRATEGIES:
            raise InputError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.init_weights is not None:
            self.init_weights = str(self.init_weights)
        if not isinstance(self.init_widen, bool):
            raise InputError(f"init_widen must be true or false, got {self.init_widen!r}")
        if self.init_widen and self.init_weights is None:
            raise InputError("init_widen needs init_weights: the narrower U-Net to start from")
        if not isinstance(self.freeze_batch_norm, bool):
            raise InputError(f"freeze_batch_norm must be true or false, got {self.freeze_batch_norm!r}")


@dataclass
class TrainingResult:
    model_dir: Path
    step: int
    last_loss: float | None


def save_options(model_dir: Path, generator: GeneratorOptions, unet, training: TrainingOptions) -> None:
    """Write a synthetic run's ``options.json`` (:func:`synthseg.training.run_folder.write_spec`)."""
    write_spec(model_dir, "synthetic", generator=generator.to_dict(), unet=unet.to_dict(),
               training=dataclasses.asdict(training))


def load_options(model_dir: Path):
    """Read a synthetic run's ``options.json``: ``(GeneratorOptions, UNetOptions, TrainingOptions)``."""
    spec = read_spec(model_dir).require("synthetic", hint=" (resume it with synthseg.training.supervised)")
    source = str(spec.path)
    return (GeneratorOptions.from_dict(spec.section("generator"), source=source), unet_options(spec),
            options_from_dict(TrainingOptions, spec.section("training"), "training", source))


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


def load_initial_weights(unet, path, widen: bool = False) -> None:
    """Copy the weights of the U-Net saved in ``path`` (``.keras``) into ``unet``, cast to its
    dtypes; with ``widen``, the saved U-Net may be narrower (:func:`synthseg.nn.widen.widen_weights`).

    Raises:
        InputError: unreadable file, or a network of another architecture (the message names
            the first weight whose shape differs).
    """
    from lab2im.model import load_keras_model

    source = load_keras_model(path, "the initial U-Net")
    if widen:
        from synthseg.nn.widen import widen_weights

        try:
            widen_weights(source, unet)
        except InputError as exc:
            raise InputError(f"cannot widen the initial U-Net: {exc.problem}", path) from None
        return
    mine, theirs = unet.weights, source.weights
    if len(mine) != len(theirs):
        raise InputError(f"the initial U-Net has {len(theirs)} weight arrays, this run's U-Net {len(mine)}: "
                         "another architecture (check n_levels, base_features, batch_norm)", path)
    for a, b in zip(mine, theirs):
        if tuple(a.shape) != tuple(b.shape):
            raise InputError(f"the initial U-Net's weight {b.path} has shape {tuple(b.shape)}, this run needs "
                             f"{tuple(a.shape)} (another architecture or label list; a narrower U-Net starts a "
                             "wider run with init_widen)", path)
    for a, b in zip(mine, theirs):
        a.assign(ops.cast(b.value, a.dtype))


def label_map_batches(maps: np.ndarray, batch_size: int, seed: int, start_step: int):
    """Endless minibatches of label maps; the choice for step ``s`` depends only on
    ``(seed, s)``, so a resumed run draws what the uninterrupted run would have drawn."""
    step = start_step
    dummy = np.zeros((batch_size, 1), np.float32)
    while True:
        idx = np.random.default_rng([seed, step]).integers(0, len(maps), size=batch_size)
        yield maps[idx], dummy
        step += 1


def _resumed_options(model_dir: Path, options: TrainingOptions | None):
    """A resumed run's saved ``(generator, unet, training options, new total of steps or None)``;
    ``options.steps``, if given, is the new total (a multiple of the run's checkpoint interval)."""
    generator, unet, saved = load_options(model_dir)
    new_total = options.steps if options else None
    if new_total is not None and new_total % saved.steps_per_checkpoint:
        raise InputError(f"steps ({new_total}) must be a multiple of the run's steps_per_checkpoint "
                         f"({saved.steps_per_checkpoint})", model_dir)
    return generator, unet, (dataclasses.replace(saved, steps=new_total) if new_total else saved), new_total


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
    from synthseg.nn.unet import UNetOptions, freeze_batch_norm, required_multiple

    model_dir = Path(model_dir)
    check_not_an_input(model_dir, [labels_dir], "run folder")
    if not resume and options and options.init_weights and not Path(options.init_weights).is_file():
        raise InputError("initial U-Net weights file does not exist (init_weights)", options.init_weights)
    resume_from = prepare_folder(model_dir, resume)
    new_total = None
    if resume_from is not None:
        generator, unet, options, new_total = _resumed_options(model_dir, options)
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

    set_determinism(options.deterministic)
    scope, replicas = _strategy(options.strategy)
    with scope:
        model, unet_model, labels = build_training_model(generator, unet, data.shape, options.seed,
                                                         options.mixed_precision)
        if options.freeze_batch_norm:
            freeze_batch_norm(unet_model)
        loss = make_loss(options, len(labels))
        dice = SplitOutputDice(len(labels))
        model.compile(optimizer=make_optimizer(options, options.mixed_precision and mixed_policy() == "mixed_float16"), loss=SplitOutputLoss(loss, len(labels)),
                      metrics=[dice], jit_compile=False)
        model.build((None, *data.shape, 1))
        model.optimizer.build(model.trainable_variables)
        step = 0
        if resume_from is not None:
            step = int(load_checkpoint(resume_from, model, model.optimizer)["step"])
        elif options.init_weights:
            load_initial_weights(unet_model, options.init_weights, options.init_widen)
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
    keeper = Checkpointer(model_dir, model, unet_model, spc, options.keep_checkpoints)
    callbacks, log, dead = training_callbacks(model_dir, options, loss, dice, labels, spc, step, keeper, callbacks)
    model.fit(label_map_batches(data.maps, batch, options.seed, step), steps_per_epoch=spc,
              epochs=options.n_chunks, initial_epoch=start_chunk, callbacks=callbacks, verbose=0)
    raise_if_stopped(dead, model_dir)
    # fewer steps than asked for when a callback (e.g. a TimeBudget) ended the run early
    return TrainingResult(model_dir, keeper.last_step or start_chunk * spc, log.last_loss)
