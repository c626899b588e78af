"""What every training run is told (:class:`RunOptions`), and the optimiser it makes: Adam with a learning-rate schedule."""
from __future__ import annotations

import math
from dataclasses import dataclass

import keras

from lab2im.errors import InputError
from lab2im.options import check_int, check_number

SCHEDULES = ("constant", "cosine", "linear")
CE_WEIGHTINGS = ("inverse_frequency", "uniform")


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
        lr_schedule: ``"constant"``, ``"cosine"`` (to 0 at ``steps``) or ``"linear"`` (to 0).
        warmup_steps: steps of weighted cross-entropy before the loss turns to soft Dice.
        ce_after_warmup: share of weighted cross-entropy kept in the loss after the warm-up,
            in [0, 1] (0: soft Dice only, as SynthSeg). Under Dice alone a label the network
            stops predicting cannot come back (:class:`synthseg.nn.losses.SegmentationLoss`);
            the first shipped 2 mm model lost its CSF that way.
        ce_weighting: how the cross-entropy weighs voxels: ``"inverse_frequency"`` (each label
            present counts as much as any other, as SynthSeg's warm-up) or ``"uniform"`` (every
            voxel counts the same, as nnU-Net's Dice + cross-entropy: large structures and their
            boundaries, cortex and white matter, weigh by their volume).
        seed: seed of the sample choice, the generation or augmentation, and the weight
            initialisation. Step ``s`` of every run with the same seed draws the same label map
            and synthetic scan, whatever its network: a run that continues another's weights
            (``init_weights``) with its seed replays the samples its parent trained on (the
            ``cpu3``-``cpu15`` lineage did: every run restarted seed 0's stream at its first sample),
            so give it a new one; paired A/B runs keep theirs on purpose.
        deterministic: ask the backend for deterministic ops (slower; used by the tests).
        tensorboard: write TensorBoard logs.
        progress: show a progress bar with loss and ETA.
        stop_on_dead_label: end the run at the checkpoint where a label is found dead (see
            :class:`synthseg.training.callbacks.LabelDiceLog`) and raise :class:`InputError`
            saying which, instead of only warning: a recipe that kills a label fails early
            rather than after hours.
    """

    steps: int = 1000
    steps_per_checkpoint: int = 100
    keep_checkpoints: int = 5
    batch_size: int = 1
    learning_rate: float = 1e-4
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    ce_after_warmup: float = 0.0
    ce_weighting: str = "inverse_frequency"
    seed: int = 0
    deterministic: bool = False
    tensorboard: bool = True
    progress: bool = True
    stop_on_dead_label: bool = False

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
        if self.ce_weighting not in CE_WEIGHTINGS:
            raise InputError(f"ce_weighting must be one of {CE_WEIGHTINGS}, got {self.ce_weighting!r}")
        if self.lr_schedule not in SCHEDULES:
            raise InputError(f"lr_schedule must be one of {SCHEDULES}, got {self.lr_schedule!r}")

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.steps / self.steps_per_checkpoint)

    @property
    def total_steps(self) -> int:
        return self.n_chunks * self.steps_per_checkpoint


def learning_rate_schedule(options: RunOptions):
    """The learning rate of ``options``: a float, or a Keras schedule over ``total_steps``."""
    total = options.total_steps
    if options.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(options.learning_rate, decay_steps=total)
    if options.lr_schedule == "linear":
        return keras.optimizers.schedules.PolynomialDecay(options.learning_rate, total, 0.0, power=1.0)
    return options.learning_rate


def make_loss(options: RunOptions, n_labels: int):
    """The :class:`~synthseg.nn.losses.SegmentationLoss` of ``options`` for ``n_labels`` labels."""
    from synthseg.nn.losses import SegmentationLoss

    weights = [1.0] * n_labels if options.ce_weighting == "uniform" else None
    return SegmentationLoss(warmup_steps=options.warmup_steps, ce_after_warmup=options.ce_after_warmup,
                            ce_weights=weights)


def make_optimizer(options: RunOptions, loss_scale: bool = False):
    """Adam with :func:`learning_rate_schedule`; loss-scaled (for float16) with ``loss_scale``."""
    opt = keras.optimizers.Adam(learning_rate_schedule(options))
    return keras.optimizers.LossScaleOptimizer(opt) if loss_scale else opt
