"""``supervised_training()``: train (or fine-tune) the U-Net on real scans with manual labels.

Where :func:`synthseg.training.synthetic.training` learns from synthetic scans generated from label
maps, this trains on real ``(scan, label map)`` pairs: each step picks pairs, takes a random
crop, augments it *inside the training graph* with the same lab2im layers as the generator
(shared spatial deformation of scan and labels, left/right flip, bias field, gamma) and trains
the U-Net. It can start from a synthetic run's U-Net (transfer learning), optionally with the
encoder frozen, and keeps the model that scores best on held-out validation pairs.

The run folder is laid out as :mod:`synthseg.training.synthetic`'s, plus the validation files::

    model_dir/
        options.json          {"kind": "supervised", "unet", "supervised", "augmentation",
                              "transfer", "data"} (the contract; read with load_supervised_options)
        labels.npy            segmentation labels, in the network's channel order
        last.npz              latest checkpoint (exact resume, kill -9 included)
        checkpoints/step-*.npz  periodic checkpoints (the newest ``keep_checkpoints``)
        unet_last.keras       the U-Net alone, latest
        best.npz              checkpoint with the best validation Dice (with validation data)
        unet_best.keras       the U-Net alone, best validation Dice
        training_log.csv      step, loss, dice, learning rate, wall and CPU seconds
        validation_log.csv    step, mean Dice, best so far, seconds, Dice of each label
        tensorboard/          TensorBoard logs

Example::

    from synthseg.training.supervised import SupervisedOptions, supervised_training
    result = supervised_training("scans/", "segs/", "runs/finetune",
                                 validation=("val_scans/", "val_segs/"),
                                 init_from="runs/synthetic/unet_last.keras",
                                 options=SupervisedOptions(steps=5000, patience=10))
    result.best_dice, result.stopped_early
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
from keras import ops

from lab2im.errors import InputError
from lab2im.io import check_not_an_input
from lab2im.layers import OneHotLabels
from lab2im.options import check_int, options_from_dict
from lab2im.volumes import pad_to_multiple
from synthseg.data.pairs import (
    PairSet,
    load_pairs,
    pair_batches,
    stack_pairs,
    standardise_pairs,
)
from synthseg.nn.losses import hard_dice
from synthseg.nn.transfer import (
    copy_matching_weights,
    encoder_layers,
    load_source_unet,
    run_unet_options,
)
from synthseg.nn.unet import recalibrate_batch_norm
from synthseg.training.augmentation import AugmentationOptions, Mixup, PairAugmentation
from synthseg.training.callbacks import (
    raise_if_stopped,
    restart_csv_log,
    save_network,
    save_periodic_checkpoint,
    training_callbacks,
)
from synthseg.training.options import RunOptions, make_loss, make_optimizer
from synthseg.training.run_folder import (
    PAIR_KINDS,
    prepare_folder,
    read_spec,
    set_determinism,
    unet_options,
    write_spec,
)
from synthseg.training.split_output import SplitOutputDice, SplitOutputLoss
from synthseg.training.synthetic import TrainingResult


# ----------------------------------------------------------------------------- options
@dataclass
class SupervisedOptions(RunOptions):
    """How to train on real pairs: :class:`~synthseg.training.synthetic.RunOptions` (a learning rate
    of 0 is allowed, e.g. to measure a model), and

    Attributes:
        crop_shape: training crop ``(X, Y, Z)`` (``(H, W)`` for 2D pairs, e.g. slices from
            :mod:`synthseg.training.slices`), each a multiple of the U-Net's
            :func:`~synthseg.nn.unet.required_multiple`; ``None``: the smallest such shape that
            holds the largest training scan (no cropping). Scans smaller than the crop are
            zero-padded (centred); larger ones are cropped at a random place every step.
        validate_every: steps between validations (``None``: ``steps_per_checkpoint``); the
            last step is always validated.
        patience: stop when the validation Dice has not improved for this many validations
            in a row (``None``: never stop early). Needs validation data.
        labels: segmentation labels (``None``: the sorted union of the labels in the training
            label maps). Background 0 is always included; labels of the maps that are not
            listed count as background.
    """

    crop_shape: tuple | None = None
    validate_every: int | None = None
    patience: int | None = None
    labels: list | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.validate_every is not None:
            check_int(self.validate_every, "validate_every", 1)
        if self.patience is not None:
            check_int(self.patience, "patience", 1)
        if self.crop_shape is not None:
            try:
                self.crop_shape = tuple(int(n) for n in self.crop_shape)
            except (TypeError, ValueError):
                raise InputError(f"crop_shape must be 2 or 3 integers, got {self.crop_shape!r}") from None
            if len(self.crop_shape) not in (2, 3) or min(self.crop_shape) < 1:
                raise InputError(f"crop_shape must be 2 or 3 positive integers, got {self.crop_shape}")
        if self.labels is not None:
            try:
                labels = sorted({int(v) for v in np.ravel(self.labels)} | {0})
            except (TypeError, ValueError):
                raise InputError(f"labels must be integers, got {self.labels!r}") from None
            if labels[0] < 0 or len(labels) < 2:
                raise InputError(f"labels must be >= 0 with at least one besides background 0, got {self.labels}")
            self.labels = labels

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["crop_shape"] = None if self.crop_shape is None else list(self.crop_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict, source=None) -> "SupervisedOptions":
        return options_from_dict(cls, d, "supervised", source)


@dataclass
class SupervisedResult(TrainingResult):
    """:class:`~synthseg.training.synthetic.TrainingResult` plus validation and transfer information.

    Attributes:
        best_dice, best_step: best mean validation Dice and its step (``None`` without validation).
        stopped_early: training stopped because the validation Dice stopped improving.
        copied_layers: U-Net layers whose weights came from ``init_from``.
        reinitialised_layers: U-Net layers with weights that did not match and were left
            randomly initialised (typically the final ``unet_logits`` for other labels).
        frozen_layers: layers made non-trainable by ``freeze_encoder``.
    """

    best_dice: float | None = None
    best_step: int | None = None
    stopped_early: bool = False
    copied_layers: list = field(default_factory=list)
    reinitialised_layers: list = field(default_factory=list)
    frozen_layers: list = field(default_factory=list)


def build_supervised_model(unet_options, labels, n_channels: int, input_shape, crop_shape,
                           augmentation: AugmentationOptions, lr_pairs=(), seed: int | None = 0):
    """The augmentation and the U-Net chained into one model.

    Returns:
        ``(model, unet)``: ``model`` maps ``[image (B, *input_shape, C) float32, labels
        (B, *input_shape, 1) int32]`` to ``(B, *crop_shape, 2K)``: the U-Net's probabilities
        beside the one-hot target, as :func:`synthseg.training.synthetic.build_training_model`. With
        mixup (``augmentation.mixup_prob > 0``) it takes a partner pair for each sample too,
        ``[image, labels, partner_image, partner_labels]``: both are augmented (the same
        :class:`PairAugmentation`, called on each), then :class:`Mixup` blends them and the
        target is soft.
    """
    from synthseg.nn.unet import build_unet

    if seed is not None:
        keras.utils.set_random_seed(seed)  # weight initialisation
    unet = build_unet(len(labels), n_channels, unet_options)
    image_in = keras.Input((*input_shape, n_channels), dtype="float32", name="scan")
    labels_in = keras.Input((*input_shape, 1), dtype="int32", name="label_map")
    augment = PairAugmentation(crop_shape, augmentation, lr_pairs, seed=seed, name="augmentation")
    one_hot = OneHotLabels(labels, name="one_hot_target")
    inputs = [image_in, labels_in]
    if augmentation.mixup_prob > 0:
        partner_image = keras.Input((*input_shape, n_channels), dtype="float32", name="partner_scan")
        partner_labels = keras.Input((*input_shape, 1), dtype="int32", name="partner_label_map")
        inputs += [partner_image, partner_labels]
        image1, target1 = augment([image_in, labels_in])
        image2, target2 = augment([partner_image, partner_labels])  # the same layer: its next draws
        mix_seed = None if seed is None else int(np.random.SeedSequence([int(seed), 23]).generate_state(1)[0]
                                                 % (2**31 - 1))
        image, target = Mixup(augmentation.mixup_prob, augmentation.mixup_alpha, seed=mix_seed, name="mixup")(
            [image1, one_hot(target1), image2, one_hot(target2)])
    else:
        image, target = augment([image_in, labels_in])
        target = one_hot(target)
    probs = unet(image)
    out = keras.layers.Concatenate(axis=-1, dtype="float32", name="prediction_and_target")([probs, target])
    return keras.Model(inputs, out, name="synthseg_supervised"), unet


# ----------------------------------------------------------------------------- options file
def save_supervised_options(model_dir: Path, unet, options: SupervisedOptions, augmentation: AugmentationOptions,
                            transfer: dict, data: dict) -> None:
    """Write a supervised run's ``options.json``: kind ``slices`` when ``data`` names slices
    (:mod:`synthseg.training.slices`), else ``supervised``."""
    write_spec(model_dir, "slices" if data.get("slices") is not None else "supervised", unet=unet.to_dict(),
               supervised=options.to_dict(), augmentation=augmentation.to_dict(), transfer=transfer, data=data)


def load_supervised_options(model_dir):
    """Read a supervised (or slice) run's ``options.json``.

    Returns:
        ``(UNetOptions, SupervisedOptions, AugmentationOptions, transfer dict, data dict)``.
    """
    spec = read_spec(model_dir).require(*PAIR_KINDS, hint=" (resume it with synthseg.training.synthetic.training)")
    source = str(spec.path)
    return (unet_options(spec), SupervisedOptions.from_dict(spec.section("supervised"), source=source),
            AugmentationOptions.from_dict(spec.section("augmentation"), source=source),
            dict(spec.section("transfer")), dict(spec.section("data")))


# ----------------------------------------------------------------------------- validation
def validation_dice(unet: keras.Model, pairs: PairSet, labels, multiple: int) -> tuple[float, np.ndarray]:
    """Mean hard Dice of ``unet`` on whole validation volumes (padded to ``multiple``, no
    augmentation), background excluded. Slices (``pairs.sources`` set) are segmented one by
    one and scored together with the other slices of their volume, so that a label absent
    from a slice does not count as a perfect score there.

    Returns:
        ``(mean over volumes of the mean over labels, (K - 1,) mean Dice of each label)``.
    """
    table = np.asarray(labels, np.int32)
    truths, preds = {}, {}
    for i, (image, truth) in enumerate(zip(pairs.images, pairs.labels)):
        x, pad = pad_to_multiple(image, multiple, n_spatial=truth.ndim)
        probs = ops.convert_to_numpy(unet(x[None], training=False))[0]
        volume = pairs.sources[i] if pairs.sources else i
        truths.setdefault(volume, []).append(truth.ravel())
        preds.setdefault(volume, []).append(pad.undo(table[np.argmax(probs, axis=-1)]).ravel())
    scores = [hard_dice(np.concatenate(truths[v]), np.concatenate(preds[v]), labels[1:]) for v in truths]
    per_label = np.mean(scores, axis=0)
    return float(np.mean([s.mean() for s in scores])), per_label


class ValidationLog:
    """``validation_log.csv``: ``step, dice, best_dice, seconds, dice_<label>...``; rows after
    ``keep_until`` (left by a killed run) are dropped first."""

    def __init__(self, path: Path, labels, keep_until: int):
        self.path = Path(path)
        self.fields = ["step", "dice", "best_dice", "seconds"] + [f"dice_{v}" for v in labels[1:]]
        restart_csv_log(self.path, self.fields, keep_until)

    def write(self, step: int, dice: float, best: float, seconds: float, per_label) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.writer(fh).writerow([step, f"{dice:.6g}", f"{best:.6g}", f"{seconds:.3f}",
                                     *(f"{v:.6g}" for v in per_label)])


class SupervisedMonitor(keras.callbacks.Callback):
    """At the end of every Keras epoch (``epoch_steps`` optimiser steps): validate when due,
    keep the best model, checkpoint when due, and stop early when the patience runs out.

    The early-stopping state (best Dice, its step, validations since) is saved in every
    checkpoint's meta, so a resumed run counts on where it stopped.
    """

    def __init__(self, model_dir: Path, train_model, unet, options: SupervisedOptions, epoch_steps: int,
                 validation: PairSet | None, labels, multiple: int, state: dict, log: ValidationLog | None,
                 calibration=()):
        super().__init__()
        self.calibration = list(calibration)  # training scans for recalibrate_batch_norm
        self.dir, self.train_model, self.unet = Path(model_dir), train_model, unet
        self.o, self.epoch_steps = options, epoch_steps
        self.validation, self.labels, self.multiple = validation, list(labels), multiple
        self.state, self.log = state, log
        self._t0 = time.time()

    def _meta(self, logs) -> dict:
        meta = {k: float(v) for k, v in (logs or {}).items()}
        meta.update(self.state)
        return meta

    def _save(self, path: Path, step: int, logs) -> Path:
        from synthseg.training.checkpoints import save_checkpoint

        return save_checkpoint(path, self.train_model, self.train_model.optimizer, step, self._meta(logs))

    def on_epoch_end(self, epoch, logs=None):
        step = (epoch + 1) * self.epoch_steps
        o, s = self.o, self.state
        stop = False
        validating = self.validation is not None and (step % o.validate_every == 0 or step == o.total_steps)
        if validating or step % o.steps_per_checkpoint == 0 or step == o.total_steps:
            # moving batch-norm statistics lag far behind after few steps: set them from the
            # training scans before the network is scored or saved (a no-op without batch norm)
            recalibrate_batch_norm(self.unet, self.calibration, self.multiple)
        if validating:
            dice, per_label = validation_dice(self.unet, self.validation, self.labels, self.multiple)
            improved = s["best_dice"] is None or dice > s["best_dice"]
            if improved:
                s.update(best_dice=dice, best_step=step, since_best=0)
            else:
                s["since_best"] += 1
            self.log.write(step, dice, s["best_dice"], time.time() - self._t0, per_label)
            if improved:
                self._save(self.dir / "best.npz", step, logs)
                save_network(self.dir, self.unet, "unet_best.keras")
            if o.patience is not None and s["since_best"] >= o.patience and step < o.total_steps:
                stop = True
                s["stopped_early"] = True
        if step % o.steps_per_checkpoint == 0 or stop:
            save_periodic_checkpoint(self.dir, self.train_model, step, self._meta(logs), o.keep_checkpoints)
            save_network(self.dir, self.unet, "unet_last.keras")
        if stop:
            print(f"synthseg: early stopping at step {step}: the validation Dice has not improved for "
                  f"{s['since_best']} validation(s) (best {s['best_dice']:.4f} at step {s['best_step']}); "
                  f"best model: {self.dir / 'unet_best.keras'}", file=sys.stderr)
            self.model.stop_training = True


# ----------------------------------------------------------------------------- training
def supervised_training(images, labels, model_dir, validation=None, unet=None,
                        options: SupervisedOptions | None = None,
                        augmentation: AugmentationOptions | None = None, init_from=None,
                        freeze_encoder: bool = False, resume: bool = False, callbacks=()) -> SupervisedResult:
    """Train (or fine-tune) the U-Net on real scans and their label maps.

    Args:
        images, labels: training scans and label maps (each a file, folder, ``.txt`` list or
            list of paths), matched by sorted order; each pair on one voxel grid. Or
            ``images`` a :class:`PairSet` already loaded (``labels`` is then ignored), e.g. 2D
            slices from :func:`synthseg.training.slices.slice_pairs` (see
            :func:`synthseg.training.slices.slice_training`); its ``info`` is saved in ``options.json``.
        model_dir: the run folder (see the module docstring); created if missing.
        validation: ``(images, labels)`` of held-out pairs (or a :class:`PairSet`), scored every
            ``options.validate_every`` steps (whole volumes or slices, no augmentation); the best
            model is kept as ``best.npz`` / ``unet_best.keras``. ``None``: no validation.
        unet: :class:`synthseg.nn.unet.UNetOptions` (``ndim`` that of the pairs: 3, or 2 for
            slices). Default: with ``init_from`` a run folder
            (or its ``unet_*.keras``), that run's U-Net options; else SynthSeg's 5-level U-Net.
            With another ``init_from`` file, pass the options it was built with (layers are
            matched by name and weight shapes).
        options: :class:`SupervisedOptions`.
        augmentation: :class:`AugmentationOptions` (``AugmentationOptions(prob=0)``: none).
        init_from: a U-Net ``.keras`` file or a run folder to start from (transfer learning):
            the weights of layers with the same name and shapes are copied, the others (the
            final layer, when the label count differs) stay randomly initialised; the result
            and ``options.json`` list both, and a line on stderr says so.
        freeze_encoder: make the encoder's layers (the levels before the bottleneck)
            non-trainable (batch normalisation there then uses its stored statistics). Needs
            ``init_from``.
        resume: continue the run in ``model_dir`` from ``last.npz`` with its saved options
            (``options.steps`` may be raised to train longer; ``unet``, ``augmentation``,
            ``init_from`` and ``freeze_encoder`` come from the run). The pairs must be given
            again. A run that stopped early stays stopped.
        callbacks: extra Keras callbacks.

    Early stopping (``options.patience``) ends the run cleanly: a last checkpoint at that step,
    a line on stderr, and ``stopped_early`` in the result.

    Returns:
        :class:`SupervisedResult` (steps done, last loss, best validation Dice and step,
        whether it stopped early, the layers copied / re-initialised / frozen).

    Raises:
        InputError: bad pairs (different counts, grids, unreadable files, empty folders), bad
            options, an unwritable folder, a folder holding another run (without ``resume``), a
            missing or unloadable ``init_from``, or a corrupt checkpoint -- all before training.
    """
    model_dir = Path(model_dir)
    if options is not None and not isinstance(options, SupervisedOptions):
        raise InputError(f"options must be SupervisedOptions, got {type(options).__name__}")
    check_not_an_input(model_dir, [images, labels, *(validation if isinstance(validation, (list, tuple)) else [])],
                       "run folder")
    run = _RunSetup(model_dir, prepare_folder(model_dir, resume))
    run.settle_options(images.ndim if isinstance(images, PairSet) else 3, unet, options, augmentation, init_from,
                       freeze_encoder)
    if run.options.patience is not None and validation is None:
        raise InputError("patience (early stopping) needs validation data")
    train, val = _read_pairs(images, labels, validation)
    train, val = run.settle_data(train, val)
    model, unet_model, loss, dice, frozen = run.build(train, init_from)
    step, state = run.restore_or_record(model, train, val)

    def result(last_loss=None):
        return SupervisedResult(model_dir, step, last_loss, best_dice=state["best_dice"],
                                best_step=state["best_step"], stopped_early=bool(state["stopped_early"]),
                                copied_layers=list(run.transfer.get("copied_layers", [])),
                                reinitialised_layers=list(run.transfer.get("reinitialised_layers", [])),
                                frozen_layers=frozen)

    options, label_list = run.options, run.label_list
    if step >= options.total_steps or state["stopped_early"]:
        if state["stopped_early"]:
            print(f"synthseg: the run stopped early at step {step} (best validation Dice "
                  f"{state['best_dice']:.4f} at step {state['best_step']}); nothing to do", file=sys.stderr)
        return result()
    vlog = ValidationLog(model_dir / "validation_log.csv", label_list, keep_until=step) if val is not None else None
    monitor = SupervisedMonitor(model_dir, model, unet_model, options, run.epoch_steps, val, label_list,
                                run.multiple, state, vlog, calibration=train.images)
    cbs, log, dead = training_callbacks(model_dir, options, loss, dice, label_list, run.epoch_steps, step, monitor,
                                        callbacks)
    images_arr, labels_arr = stack_pairs(train, run.pool)
    batches = pair_batches(images_arr, labels_arr, options.batch_size, options.seed, step,
                           partners=run.augmentation.mixup_prob > 0)
    with contextlib.closing(batches):
        model.fit(batches, steps_per_epoch=run.epoch_steps, epochs=options.total_steps // run.epoch_steps,
                  initial_epoch=step // run.epoch_steps, callbacks=cbs, verbose=0, shuffle=False)
    step = int(ops.convert_to_numpy(model.optimizer.iterations))
    raise_if_stopped(dead, model_dir)
    return result(log.last_loss)


def _read_pairs(images, labels, validation) -> tuple[PairSet, PairSet | None]:
    """The training pairs and the validation pairs (``None``), loaded and checked alike."""
    train = images if isinstance(images, PairSet) else load_pairs(images, labels, "training")
    val = None
    if isinstance(validation, PairSet):
        val = validation
        made = ("slices", "normalisation")  # how pairs are made (training may skip empty slices)
        if val.ndim != train.ndim or any(val.info.get(k) != train.info.get(k) for k in made):
            raise InputError(f"validation pairs ({val.ndim}D, {val.info}) are not made like the training "
                             f"pairs ({train.ndim}D, {train.info})", val.image_files[0])
    elif validation is not None:
        if not isinstance(validation, (tuple, list)) or len(validation) != 2:
            raise InputError("validation must be an (images, label maps) pair of sources")
        val = load_pairs(validation[0], validation[1], "validation")
    if val is not None and val.n_channels != train.n_channels:
        raise InputError(f"validation images have {val.n_channels} channel(s), training images "
                         f"{train.n_channels}", val.image_files[0])
    return train, val


class _RunSetup:
    """The steps of :func:`supervised_training` before ``fit``, each settling part of the run:
    its options (saved ones on resume), its labels, crop and pairs, its model, its step."""

    def __init__(self, model_dir: Path, resume_from: Path | None):
        self.dir, self.resume_from = model_dir, resume_from
        self.data_info: dict = {}

    def settle_options(self, ndim: int, unet, options, augmentation, init_from, freeze_encoder) -> None:
        from synthseg.nn.unet import UNetOptions

        self.transfer = {"init_from": None, "freeze_encoder": bool(freeze_encoder), "copied_layers": [],
                         "reinitialised_layers": []}
        if self.resume_from is not None:
            unet, saved, augmentation, self.transfer, self.data_info = load_supervised_options(self.dir)
            options = dataclasses.replace(saved, steps=max(saved.steps, options.steps)) if options else saved
        else:
            options = options or SupervisedOptions()
            unet = unet or (run_unet_options(init_from) if init_from is not None else None) or UNetOptions(ndim=ndim)
            augmentation = augmentation or AugmentationOptions()
            if freeze_encoder and init_from is None:
                raise InputError("freeze_encoder needs init_from (a frozen random encoder learns nothing)")
        if not isinstance(unet, UNetOptions) or unet.ndim != ndim:
            raise InputError(f"supervised_training needs {ndim}D UNetOptions (ndim={ndim}) for {ndim}D pairs")
        self.unet, self.options, self.augmentation = unet, options, augmentation

    def settle_data(self, train: PairSet, val: PairSet | None) -> tuple[PairSet, PairSet | None]:
        """Labels (the run's on resume), intensity standardisation, crop and flip pairs."""
        from synthseg.nn.unet import required_multiple

        options, augmentation = self.options, self.augmentation
        if self.resume_from is not None:
            label_list = list(options.labels)
            if self.data_info.get("n_channels", train.n_channels) != train.n_channels:
                raise InputError(f"the run was trained on {self.data_info['n_channels']}-channel images, these have "
                                 f"{train.n_channels}", train.image_files[0])
            if self.data_info.get("slices") != train.info.get("slices"):  # slices of another axis or k
                raise InputError(f"the run was trained on slices {self.data_info.get('slices') or 'none (whole volumes)'}"
                                 f", these pairs are slices {train.info.get('slices') or 'none (whole volumes)'}",
                                 self.dir / "options.json")
        else:
            label_list = options.labels or sorted(set(train.found) | {0})
            if len(label_list) < 2:
                raise InputError("the training label maps hold background only", train.label_files[0])
        train.set_labels(label_list)
        if val is not None:
            val.set_labels(label_list)
        # pairs are read with the percentile step; slices (synthseg.training.slices) come standardised per volume
        if augmentation.normalisation not in ("percentile", train.info.get("normalisation")):
            train = standardise_pairs(train, augmentation.normalisation)
            val = None if val is None else standardise_pairs(val, augmentation.normalisation)
        self.multiple = multiple = required_multiple(self.unet)
        crop = options.crop_shape or tuple(-(-n // multiple) * multiple for n in train.max_shape)
        if any(n % multiple for n in crop):
            raise InputError(f"crop_shape {tuple(crop)} is not a multiple of {multiple} (needed by a "
                             f"{self.unet.n_levels}-level U-Net); e.g. {tuple(-(-n // multiple) * multiple for n in crop)}")
        self.pool = tuple(max(a, b) for a, b in zip(train.max_shape, crop))
        if augmentation.lr_pairs is None:
            lr_pairs = _protocol_pairs(label_list) if augmentation.flip_prob > 0 else []
            augmentation = dataclasses.replace(augmentation, lr_pairs=[list(p) for p in lr_pairs])
        stray = sorted({v for p in augmentation.lr_pairs for v in p} - set(label_list))
        if stray:
            raise InputError(f"lr_pairs name labels that are not segmentation labels: {stray}")
        validate_every = options.validate_every or options.steps_per_checkpoint
        self.options = dataclasses.replace(options, crop_shape=tuple(crop), labels=list(label_list),
                                           validate_every=validate_every)
        self.augmentation, self.label_list = augmentation, list(label_list)
        self.epoch_steps = (math.gcd(options.steps_per_checkpoint, validate_every) if val is not None
                            else options.steps_per_checkpoint)
        return train, val

    def build(self, train: PairSet, init_from):
        """``(model, unet, loss, dice metric, frozen layer names)``, compiled, with the weights of
        ``init_from`` copied in (new runs)."""
        options, transfer = self.options, self.transfer
        source = None
        if self.resume_from is None and init_from is not None:
            source, source_path = load_source_unet(init_from)
            transfer["init_from"] = str(source_path)
        set_determinism(options.deterministic)
        model, unet_model = build_supervised_model(self.unet, self.label_list, train.n_channels, self.pool,
                                                   options.crop_shape, self.augmentation, self.augmentation.lr_pairs,
                                                   options.seed)
        if source is not None:
            copied, skipped = copy_matching_weights(source, unet_model)
            if not copied:
                raise InputError("init_from: no layer matches the U-Net by name and weight shapes; was it built "
                                 "with other UNetOptions (pass the same unet=...)?", transfer["init_from"])
            transfer.update(copied_layers=copied, reinitialised_layers=skipped)
            print(f"synthseg: copied the weights of {len(copied)} layer(s) from {transfer['init_from']}; "
                  f"re-initialised {len(skipped)}: {', '.join(skipped) or '-'}", file=sys.stderr)
        frozen = []
        if transfer.get("freeze_encoder"):
            for layer in encoder_layers(unet_model, self.unet.n_levels):
                layer.trainable = False
                frozen.append(layer.name)
        n_labels = len(self.label_list)
        loss = make_loss(options, n_labels)
        dice = SplitOutputDice(n_labels)
        model.compile(optimizer=make_optimizer(options), loss=SplitOutputLoss(loss, n_labels), metrics=[dice],
                      jit_compile=False)
        model.optimizer.build(model.trainable_variables)
        return model, unet_model, loss, dice, frozen

    def restore_or_record(self, model, train: PairSet, val: PairSet | None) -> tuple[int, dict]:
        """``(step, early-stopping state)``: from the checkpoint on resume; else 0 and a fresh
        state, with ``options.json`` and ``labels.npy`` written."""
        from synthseg.training.checkpoints import load_checkpoint

        state = {"best_dice": None, "best_step": None, "since_best": 0, "stopped_early": False}
        step = 0
        if self.resume_from is not None:
            header = load_checkpoint(self.resume_from, model, model.optimizer)
            step = int(header["step"])
            state.update({k: header.get("meta", {}).get(k, v) for k, v in state.items()})
            if step % self.epoch_steps:
                raise InputError(f"checkpoint step {step} is not a multiple of {self.epoch_steps} (steps_per_checkpoint "
                                 "and validate_every of the run)", self.resume_from)
        else:
            data_info = {"n_channels": train.n_channels,
                         "images": [str(f) for f in train.image_files], "labels": [str(f) for f in train.label_files],
                         "validation_images": [str(f) for f in val.image_files] if val else None,
                         "validation_labels": [str(f) for f in val.label_files] if val else None,
                         "voxel_size": train.voxel_size, **train.info}
            save_supervised_options(self.dir, self.unet, self.options, self.augmentation, self.transfer, data_info)
        np.save(self.dir / "labels.npy", np.asarray(self.label_list, np.int32))
        return step, state


def _protocol_pairs(label_list) -> list[tuple[int, int]]:
    """The SynthSeg protocol's left/right pairs within ``label_list``, when every label
    belongs to the protocol; else none."""
    from synthseg.data import labels as protocol

    if not set(label_list) <= set(int(v) for v in protocol.generation_labels()):
        return []
    have = set(label_list)
    return [(int(a), int(b)) for a, b in protocol.lr_pairs() if a in have and b in have]
