"""``supervised_training()``: train (or fine-tune) the U-Net on real scans with manual labels.

Where :func:`synthseg.training.training` learns from synthetic scans generated from label
maps, this trains on real ``(scan, label map)`` pairs: each step picks pairs, takes a random
crop, augments it *inside the training graph* with the same lab2im layers as the generator
(shared spatial deformation of scan and labels, left/right flip, bias field, gamma) and trains
the U-Net. It can start from a synthetic run's U-Net (transfer learning), optionally with the
encoder frozen, and keeps the model that scores best on held-out validation pairs.

The run folder is laid out as :mod:`synthseg.training`'s, plus the validation files::

    model_dir/
        options.json          {"kind": "supervised", "unet", "supervised", "augmentation",
                              "transfer", "data"} (the contract; read with load_supervised_options)
        labels.npy            segmentation labels, in the network's channel order
        last.npz              latest checkpoint (exact resume, kill -9 included)
        checkpoints/step-*.npz  periodic checkpoints (the newest ``keep_checkpoints``)
        unet_last.keras       the U-Net alone, latest
        best.npz              checkpoint with the best validation Dice (with validation data)
        unet_best.keras       the U-Net alone, best validation Dice
        training_log.csv      step, loss, dice, learning rate, seconds
        validation_log.csv    step, mean Dice, best so far, seconds, Dice of each label
        tensorboard/          TensorBoard logs

Example::

    from synthseg.supervised import SupervisedOptions, supervised_training
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
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
from keras import ops

from lab2im.errors import InputError
from lab2im.io import atomic_write_text, check_image, check_not_an_input, list_volume_files, load_volume
from lab2im.normalisation import PERCENTILES  # noqa: F401 (re-exported)
from lab2im.normalisation import check_method, normalise_intensities, zscore_foreground, zscore_in_mask
from lab2im.options import options_from_dict
from lab2im.layers import IntensityAugmentation, OneHotLabels, RandomBiasField, RandomFlip, RandomSpatialDeformation
from lab2im.layers.base import RandomLayer
from lab2im.volumes import crop_or_pad, pad_to_multiple
from synthseg.losses import SegmentationLoss, WarmupCallback, hard_dice
from synthseg.training import (
    ProgressBar,
    RunOptions,
    SplitOutputDice,
    SplitOutputLoss,
    StepLog,
    TrainingResult,
    _prepare_folder,
    check_int,
)

KIND = "supervised"


# ----------------------------------------------------------------------------- options
@dataclass
class AugmentationOptions:
    """Augmentation of the real training pairs (applied in the training graph).

    A sample is augmented with probability ``prob``; an augmented sample then gets each
    augmentation below with its own probability (``affine_prob``, ``elastic_prob``,
    ``flip_prob``, ``bias_prob``, ``gamma_prob``; all 1 but the flip's 0.5 by default: every
    augmentation), each with a random strength. So a rotation happens with probability
    ``prob * affine_prob``. Implementation: every random parameter is drawn for every sample,
    and per-sample Bernoulli gates (a seeded :class:`keras.random.SeedGenerator`, saved in the
    checkpoints) replace them by the identity for the samples left alone: identity affine and
    zero velocity field (only the random crop remains, an exact copy of voxels), no flip, no
    bias field, gamma 1, and the un-augmented intensities.

    Mixup (``mixup_prob > 0``) is separate from ``prob``: after augmentation, each sample is,
    with probability ``mixup_prob``, blended with another augmented training pair (drawn for
    it from the training set): image ``w x1 + (1 - w) x2`` and one-hot target ``w y1 + (1 -
    w) y2`` (soft targets; the soft Dice and cross-entropy losses take them), ``w ~ Beta(alpha,
    alpha)`` (:class:`Mixup`).

    Intensity standardisation (``normalisation``) is not random: every scan is standardised
    with :func:`lab2im.normalisation.normalise_intensities`, at training (whole scans, when
    read) and at prediction (:mod:`synthseg.predict` reads the method from the run's
    ``options.json``). Augmented intensities are re-standardised in the graph: min-max for
    ``"percentile"``, a z-score within the scan's foreground for ``"zscore"``.

    Attributes:
        prob: probability that a sample is augmented (0 disables augmentation).
        scaling, rotation, shearing: affine ranges, as in :class:`lab2im.options.GeneratorOptions`
            (factors ``U(1 -/+ scaling)``, angles ``U(-/+ rotation)`` degrees, shears).
        nonlin_std, nonlin_scale: diffeomorphic deformation (std ``U(0, nonlin_std)`` voxels on
            a grid of ``nonlin_scale`` x the crop).
        flip_prob, flip_axis: probability and axis (0 is left/right in RAS) of a flip.
        lr_pairs: ``(left, right)`` labels swapped by the flip. ``None``: the SynthSeg
            protocol's pairs (:func:`synthseg.labels.lr_pairs`) present in the label list when
            every label belongs to the protocol, else none (then a flip keeps label values:
            set ``flip_prob=0`` for lateralised labels outside the protocol).
        bias_std, bias_scale: smooth multiplicative bias field (see
            :class:`lab2im.layers.RandomBiasField`).
        noise_std: additive Gaussian noise, std ``U(0, noise_std)`` (intensities are in [0, 1]).
        gamma_std: gamma exponent ``exp(N(0, gamma_std))`` after min-max normalisation.
        affine_prob: probability that an augmented sample gets the affine part (scaling,
            rotation, shearing).
        elastic_prob: probability that an augmented sample gets the nonlinear deformation.
        bias_prob: probability that an augmented sample gets a bias field.
        gamma_prob: probability that an augmented sample gets the gamma transform.
        mixup_prob: probability that a sample is mixed with another pair (0: no mixup).
        mixup_alpha: the mixing weight is drawn from ``Beta(mixup_alpha, mixup_alpha)`` (> 0;
            small values give weights near 0 or 1).
        normalisation: intensity standardisation of every scan, ``"percentile"`` (0.5-99.5th
            percentiles to [0, 1]) or ``"zscore"`` (then a z-score within the foreground); see
            :mod:`lab2im.normalisation`.
    """

    prob: float = 0.8
    scaling: float = 0.15
    rotation: float = 10.0
    shearing: float = 0.012
    nonlin_std: float = 2.0
    nonlin_scale: float = 0.04
    flip_prob: float = 0.5
    flip_axis: int = 0
    lr_pairs: list | None = None
    bias_std: float = 0.5
    bias_scale: float = 0.025
    noise_std: float = 0.0
    gamma_std: float = 0.4
    affine_prob: float = 1.0
    elastic_prob: float = 1.0
    bias_prob: float = 1.0
    gamma_prob: float = 1.0
    mixup_prob: float = 0.0
    mixup_alpha: float = 0.4
    normalisation: str = "percentile"

    def __post_init__(self):
        for name in ("prob", "flip_prob", "affine_prob", "elastic_prob", "bias_prob", "gamma_prob", "mixup_prob"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise InputError(f"augmentation {name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("scaling", "rotation", "shearing", "nonlin_std", "bias_std", "noise_std", "gamma_std"):
            if float(getattr(self, name)) < 0:
                raise InputError(f"augmentation {name} must be >= 0, got {getattr(self, name)}")
        if self.scaling >= 1:
            raise InputError(f"augmentation scaling must be < 1 (factors stay positive), got {self.scaling}")
        if self.nonlin_scale <= 0 or self.bias_scale <= 0:
            raise InputError("augmentation nonlin_scale and bias_scale must be > 0")
        if self.flip_axis not in (0, 1, 2):
            raise InputError(f"augmentation flip_axis must be 0, 1 or 2, got {self.flip_axis}")
        if not float(self.mixup_alpha) > 0:
            raise InputError(f"augmentation mixup_alpha must be > 0, got {self.mixup_alpha}")
        check_method(self.normalisation)
        if self.lr_pairs is not None:
            try:
                self.lr_pairs = [[int(a), int(b)] for a, b in self.lr_pairs]
            except (TypeError, ValueError):
                raise InputError(f"lr_pairs must be (left, right) label pairs, got {self.lr_pairs!r}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source=None) -> "AugmentationOptions":
        return options_from_dict(cls, d, "augmentation", source)


@dataclass
class SupervisedOptions(RunOptions):
    """How to train on real pairs: :class:`~synthseg.training.RunOptions` (a learning rate
    of 0 is allowed, e.g. to measure a model), and

    Attributes:
        crop_shape: training crop ``(X, Y, Z)`` (``(H, W)`` for 2D pairs, e.g. slices from
            :mod:`synthseg.slices`), each a multiple of the U-Net's
            :func:`~synthseg.unet.required_multiple`; ``None``: the smallest such shape that
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
    """:class:`~synthseg.training.TrainingResult` plus validation and transfer information.

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


# ----------------------------------------------------------------------------- data
def robust_normalise(data: np.ndarray) -> np.ndarray:
    """Map each channel's 0.5th-99.5th percentiles linearly to [0, 1] and clip (float32):
    :func:`lab2im.normalisation.normalise_intensities` with ``"percentile"``, the prediction
    pipeline's normalisation (where the percentiles coincide, the minimum and maximum are used;
    non-finite values count as 0; a constant channel becomes all zeros).

    Args:
        data: ``(X, Y, Z)`` or ``(X, Y, Z, C)``.
    """
    return normalise_intensities(data, "percentile")


@dataclass
class PairSet:
    """Scan/label-map pairs, read, checked, reoriented to RAS and normalised.

    Attributes:
        image_files, label_files: the files, matched by sorted order (for 2D slices made by
            :func:`synthseg.slices.slice_pairs`: the volumes the slices come from).
        images: float32 ``(X, Y, Z, C)`` arrays in [0, 1]; ``labels``: int32 ``(X, Y, Z)``
            (or ``(H, W, C)`` and ``(H, W)`` for 2D pairs).
        n_channels: image channels (the same for every scan).
        found: sorted labels present in the label maps.
        info: how the pairs were made, saved in the run's ``options.json`` (``data`` section),
            e.g. ``{"slices": {"axis": 2, "k": 3}}`` for 2.5D slices.
        voxel_sizes: voxel size (mm, RAS axes) of each scan read (empty when unknown).
    """

    image_files: list
    label_files: list
    images: list
    labels: list
    n_channels: int
    found: list
    info: dict = field(default_factory=dict)
    voxel_sizes: list = field(default_factory=list)

    @property
    def ndim(self) -> int:
        """Spatial dimensions of the pairs (3 for volumes, 2 for slices)."""
        return int(self.labels[0].ndim)

    @property
    def voxel_size(self) -> list[float] | None:
        """The median voxel size (mm, per RAS axis) of the scans, ``None`` when unknown: the
        resolution the network learns at, to which prediction resamples scans."""
        if not self.voxel_sizes:
            return None
        return [round(float(v), 6) for v in np.median(np.asarray(self.voxel_sizes, float), axis=0)]

    @property
    def max_shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in np.max([lab.shape for lab in self.labels], axis=0))

    def set_labels(self, label_list) -> None:
        """Set labels that are not in ``label_list`` to background 0."""
        keep = np.asarray(sorted(label_list))
        for i, lab in enumerate(self.labels):
            self.labels[i] = np.where(np.isin(lab, keep), lab, 0).astype(np.int32)


def load_pairs(images, labels, what: str = "training") -> PairSet:
    """Read scan/label-map pairs (files, folders, ``.txt`` lists or lists of paths).

    Scans are read with :func:`lab2im.io.load_volume`, label maps with
    :func:`synthseg.brain_generator.read_label_map`; both are reoriented to RAS, and scans are
    normalised with :func:`robust_normalise`.

    Raises:
        InputError: no files, different numbers of scans and label maps, an unreadable file,
            a scan that is 2D (an axis of one voxel) or has NaN/infinite voxels or is empty
            (:func:`lab2im.io.check_image`), a scan and its label map on different grids (the
            message names both), or scans with different numbers of channels.
    """
    from lab2im.geometry import reorient_to_canonical
    from synthseg.brain_generator import read_label_map

    image_files = list_volume_files(images, f"{what} image")
    label_files = list_volume_files(labels, f"{what} label map")
    if len(image_files) != len(label_files):
        raise InputError(f"{len(image_files)} {what} image(s) but {len(label_files)} label map(s) "
                         f"(images: {images}, label maps: {labels}); pairs are matched by sorted file "
                         "name, so there must be as many of each")
    out_images, out_labels, channels, found, voxel_sizes = [], [], None, set(), []
    for img_file, lab_file in zip(image_files, label_files):
        vol = load_volume(img_file)
        if vol.data.ndim == 4 and vol.data.shape[-1] == 1:
            vol.data = vol.data[..., 0]
        if vol.data.ndim not in (3, 4):
            raise InputError(f"image is {vol.data.ndim}D (shape {vol.data.shape}); expected a 3D scan "
                             "(optionally with channels last)", img_file)
        check_image(vol.data, img_file)  # 2D or a single voxel, NaN/Inf voxels, empty: refused
        lab = read_label_map(lab_file)  # checked and reoriented to RAS
        vol, _ = reorient_to_canonical(vol)
        if vol.shape[:3] != lab.shape or not np.allclose(vol.affine, lab.affine, atol=1e-3):
            diff = (f"shapes {vol.shape[:3]} and {lab.shape}" if vol.shape[:3] != lab.shape else
                    f"voxel-to-world matrices differ by up to {np.abs(vol.affine - lab.affine).max():.3g} mm")
            raise InputError(f"image and its label map {lab_file} are not on the same voxel grid ({diff}, "
                             "after reorientation to RAS); resample the label map to the image "
                             "(lab2im.geometry.resample_to_grid, order=0)", img_file)
        n_ch = 1 if vol.data.ndim == 3 else int(vol.data.shape[-1])
        if channels is not None and n_ch != channels:
            raise InputError(f"image has {n_ch} channel(s) but {image_files[0]} has {channels}", img_file)
        channels = n_ch
        data = robust_normalise(vol.data)
        out_images.append(data[..., None] if data.ndim == 3 else data)
        out_labels.append(lab.data)
        voxel_sizes.append([float(v) for v in vol.voxel_size])
        found.update(np.unique(lab.data).tolist())
    sizes = np.asarray(voxel_sizes)
    if np.any(sizes.max(axis=0) > 1.1 * sizes.min(axis=0)):
        warnings.warn(f"{what} scans have voxel sizes from {_mm(sizes.min(axis=0))} to {_mm(sizes.max(axis=0))} "
                      f"mm; the network learns them as they are, and prediction resamples scans to the median, "
                      f"{_mm(np.median(sizes, axis=0))} mm", stacklevel=2)
    return PairSet(image_files, label_files, out_images, out_labels, channels, sorted(int(v) for v in found),
                   voxel_sizes=voxel_sizes)


def _mm(v) -> str:
    return "x".join(f"{float(x):.3g}" for x in v)


def standardise_pairs(pairs: PairSet, method: str) -> PairSet:
    """A copy of ``pairs`` (read with the ``"percentile"`` normalisation, as :func:`load_pairs`
    does) with its images standardised by ``method`` instead: the same result as
    :func:`lab2im.normalisation.normalise_intensities` with ``method`` on the scans as read."""
    if check_method(method) == "percentile":
        return pairs
    images = []
    for image in pairs.images:
        out = np.empty(image.shape, np.float32)
        for c in range(image.shape[-1]):
            out[..., c] = zscore_foreground(image[..., c])
        images.append(out)
    return dataclasses.replace(pairs, images=images)


def pair_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, start_step: int,
                 partners: bool = False):
    """Endless minibatches ``((images, labels), dummy)``; the pairs of step ``s`` depend only
    on ``(seed, s)``, so a resumed run draws what the uninterrupted run would have drawn.

    With ``partners`` (mixup), ``((images, labels, partner_images, partner_labels), dummy)``:
    a second pair for each sample, drawn after the first (the first pairs are those drawn
    without ``partners``)."""
    step = start_step
    dummy = np.zeros((batch_size, 1), np.float32)
    while True:
        rng = np.random.default_rng([seed, step])
        idx = rng.integers(0, len(images), size=batch_size)
        if partners:
            other = rng.integers(0, len(images), size=batch_size)
            yield (images[idx], labels[idx].astype(np.int32), images[other], labels[other].astype(np.int32)), dummy
        else:
            yield (images[idx], labels[idx].astype(np.int32)), dummy
        step += 1


def _stack(pairs: PairSet, shape) -> tuple[np.ndarray, np.ndarray]:
    """Pad/crop every pair (centred) to ``shape``: images ``(N, *shape, C)`` float32 and
    labels ``(N, *shape, 1)`` in the smallest integer type that holds them."""
    top = max(int(lab.max()) for lab in pairs.labels)
    dtype = np.uint8 if top < 256 else np.int16 if top < 32768 else np.int32
    images = np.stack([crop_or_pad(im, shape)[0] for im in pairs.images])
    labels = np.stack([crop_or_pad(lab, shape)[0].astype(dtype) for lab in pairs.labels])[..., None]
    return images, labels


# ----------------------------------------------------------------------------- augmentation layer
@keras.saving.register_keras_serializable(package="synthseg")
class PairAugmentation(keras.layers.Layer):
    """Random crop and augmentation of ``[image (B, *in, C) float, labels (B, *in, 1) int]``.

    One random spatial deformation for both (linear for the image, nearest for the labels),
    which also takes the random ``crop_shape`` window; then a left/right flip (swapping
    ``lr_pairs``), a bias field and noise + min-max normalisation + gamma on the image (then,
    with ``normalisation="zscore"``, a z-score within the foreground: the voxels not 0 in the
    standardised input). Each sample is augmented with probability ``options.prob``, and each
    augmentation of an augmented sample has its own probability (see
    :class:`AugmentationOptions`); the others are only cropped (an exact copy of voxels).

    Returns ``[image (B, *crop_shape, C), labels (B, *crop_shape, 1)]``.
    """

    def __init__(self, crop_shape, options: AugmentationOptions | dict | None = None, lr_pairs=(),
                 seed: int | None = None, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        if isinstance(options, dict):
            options = AugmentationOptions.from_dict(options)
        o = self.options = options or AugmentationOptions()
        self.crop_shape = tuple(int(n) for n in crop_shape)
        self.lr_pairs = [(int(a), int(b)) for a, b in lr_pairs]
        self.seed = seed
        seeds = [None] * 5 if seed is None else [
            int(s) % (2**31 - 1) for s in np.random.SeedSequence([int(seed), 17]).generate_state(5)]
        self.seed_generator = keras.random.SeedGenerator(seeds[0])
        self.deformation = RandomSpatialDeformation(
            scaling=o.scaling, rotation=o.rotation, shearing=o.shearing, translation=0.0,
            nonlin_std=o.nonlin_std, nonlin_scale=o.nonlin_scale, output_shape=self.crop_shape,
            seed=seeds[1], name="deformation")
        self.flip = (RandomFlip(self.lr_pairs, axis=o.flip_axis, prob=o.flip_prob, seed=seeds[2], name="flip")
                     if o.flip_prob > 0 else None)
        self.bias = (RandomBiasField(o.bias_std, o.bias_scale, prob=o.bias_prob, seed=seeds[3], name="bias_field")
                     if o.bias_std > 0 else None)
        self.intensity = IntensityAugmentation(o.noise_std, clip=None, normalise=True, gamma_std=o.gamma_std,
                                               seed=seeds[4], name="intensity")

    def build(self, input_shape):
        image_shape, labels_shape = input_shape
        self.deformation.build([image_shape, labels_shape])
        crop_image = (image_shape[0], *self.crop_shape, image_shape[-1])
        if self.bias is not None:
            self.bias.build(crop_image)
        self.intensity.build(crop_image)
        self.built = True

    def compute_output_shape(self, input_shape):
        return [(s[0], *self.crop_shape, s[-1]) for s in input_shape]

    def call(self, inputs):
        image, labels = inputs
        batch = image.shape[0] or ops.shape(image)[0]
        nd = len(self.crop_shape)
        o = self.options
        gate = keras.random.uniform((batch,), seed=self.seed_generator) < o.prob
        affine_on = self._gate(gate, o.affine_prob, batch)
        elastic_on = self._gate(gate, o.elastic_prob, batch)

        t = self.deformation.get_random_transformation(batch)
        linear = ops.where(affine_on[:, None, None], t["affine"][:, :, :nd], ops.eye(nd, dtype="float32")[None])
        affine = ops.concatenate([linear, t["affine"][:, :, nd:]], axis=-1)  # the crop offset stays
        velocity = t["velocity"] * ops.reshape(ops.cast(elastic_on, "float32"), (-1,) + (1,) * (nd + 1))
        image, labels = self.deformation.transform([image, labels], {"affine": affine, "velocity": velocity})

        if self.flip is not None:
            flip = self.flip.get_random_transformation(batch)["flip"]
            image, labels = self.flip.transform([image, labels], {"flip": ops.logical_and(flip, gate)})

        augmented = image
        if self.bias is not None:
            augmented = self.bias(augmented)
        if o.gamma_prob < 1 and o.gamma_std > 0:
            it = self.intensity.get_random_transformation(batch)
            gamma_on = ops.reshape(self._gate(gate, o.gamma_prob, batch), (-1,) + (1,) * (nd + 1))
            it["gamma"] = ops.where(gamma_on, it["gamma"], ops.ones_like(it["gamma"]))
            augmented = self.intensity.transform(augmented, it)
        else:
            augmented = self.intensity(augmented)
        if o.normalisation == "zscore":  # the input is z-scored with its background at 0
            augmented = zscore_in_mask(augmented, ops.not_equal(image, 0.0))
        image = ops.where(ops.reshape(gate, (-1,) + (1,) * (nd + 1)), augmented, image)
        return [image, labels]

    def _gate(self, gate, prob: float, batch):
        """``gate`` and, when ``prob < 1``, a new Bernoulli(``prob``) draw per sample (no draw
        when ``prob`` is 1, so runs made before the per-augmentation probabilities replay)."""
        if prob >= 1:
            return gate
        return ops.logical_and(gate, keras.random.uniform((batch,), seed=self.seed_generator) < prob)

    def get_config(self):
        config = super().get_config()
        config.update(crop_shape=self.crop_shape, options=self.options.to_dict(), lr_pairs=self.lr_pairs,
                      seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package="synthseg")
class Mixup(RandomLayer):
    """Mixup (Zhang et al., 2018) of two batches of pairs, per sample.

    ``[image1, target1, image2, target2]`` (images ``(B, *spatial, C)``, one-hot or soft
    targets ``(B, *spatial, K)``) give ``[w image1 + (1 - w) image2, w target1 + (1 - w)
    target2]``, with ``w ~ Beta(alpha, alpha)`` for the samples mixed (probability ``prob``) and
    ``w = 1`` (``image1`` and ``target1`` unchanged) for the others.

    Args:
        prob: probability that a sample is mixed.
        alpha: the Beta distribution's parameters (> 0).
        seed: see :class:`~lab2im.layers.base.RandomLayer`.

    Transformation dict: ``weight``: ``(B,)`` float32 ``w`` (1 where not mixed).
    """

    def __init__(self, prob=0.5, alpha=0.4, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if not 0.0 <= float(prob) <= 1.0 or not float(alpha) > 0:
            raise ValueError(f"mixup needs 0 <= prob <= 1 and alpha > 0, got prob={prob}, alpha={alpha}")
        self.prob, self.alpha = float(prob), float(alpha)

    def compute_output_shape(self, input_shape):
        return [input_shape[0], input_shape[1]]

    def get_random_transformation(self, batch_size):
        on = self._bernoulli((batch_size,), self.prob)
        w = keras.random.beta((batch_size,), self.alpha, self.alpha, dtype="float32", seed=self.seed_generator)
        return {"weight": ops.where(on, w, ops.ones_like(w))}

    def transform(self, inputs, transformation):
        image1, target1, image2, target2 = inputs
        w = ops.cast(transformation["weight"], "float32")
        out = []
        for a, b in ((image1, image2), (target1, target2)):
            wb = ops.reshape(w, (-1,) + (1,) * (len(a.shape) - 1))
            out.append(wb * ops.cast(a, "float32") + (1.0 - wb) * ops.cast(b, "float32"))
        return out

    def get_config(self):
        config = super().get_config()
        config.update(prob=self.prob, alpha=self.alpha)
        return config


def build_supervised_model(unet_options, labels, n_channels: int, input_shape, crop_shape,
                           augmentation: AugmentationOptions, lr_pairs=(), seed: int | None = 0):
    """The augmentation and the U-Net chained into one model.

    Returns:
        ``(model, unet)``: ``model`` maps ``[image (B, *input_shape, C) float32, labels
        (B, *input_shape, 1) int32]`` to ``(B, *crop_shape, 2K)``: the U-Net's probabilities
        beside the one-hot target, as :func:`synthseg.training.build_training_model`. With
        mixup (``augmentation.mixup_prob > 0``) it takes a partner pair for each sample too,
        ``[image, labels, partner_image, partner_labels]``: both are augmented (the same
        :class:`PairAugmentation`, called on each), then :class:`Mixup` blends them and the
        target is soft.
    """
    from synthseg.unet import build_unet

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


# ----------------------------------------------------------------------------- transfer learning
def load_source_unet(init_from) -> tuple[keras.Model, Path]:
    """Load the U-Net to start from: a ``.keras`` file, or a run folder (its ``unet_best.keras``
    when there is one, else ``unet_last.keras``).

    Raises:
        InputError: missing file, a folder with no U-Net, or a file Keras cannot load.
    """
    p = Path(init_from)
    if p.is_dir():
        found = [p / n for n in ("unet_best.keras", "unet_last.keras") if (p / n).is_file()]
        if not found:
            raise InputError("init_from: folder holds no unet_best.keras or unet_last.keras (not a run folder?)", p)
        p = found[0]
    elif not p.exists():
        raise InputError("init_from: no such file or folder", p)
    elif p.suffix != ".keras":
        raise InputError("init_from: expected a U-Net .keras file or a run folder", p)
    from lab2im.model import load_keras_model

    try:
        model = load_keras_model(p, "the U-Net")  # safe mode: no code in the file is run
    except InputError as exc:
        raise InputError(f"init_from: {exc.problem}", p) from None
    return model, p


def copy_matching_weights(source: keras.Model, target: keras.Model) -> tuple[list[str], list[str]]:
    """Copy the weights of ``source``'s layers into ``target``'s layers of the same name whose
    weights all have the same shapes.

    Returns:
        ``(copied, reinitialised)``: names of the layers of ``target`` (with weights) that were
        copied, and of those left as they were (no layer of that name, or other shapes).
    """
    by_name = {layer.name: layer for layer in _all_layers(source)}
    copied, skipped = [], []
    for layer in target.layers:
        if not layer.weights:
            continue
        src = by_name.get(layer.name)
        if (src is None or len(src.weights) != len(layer.weights)
                or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(src.weights, layer.weights))):
            skipped.append(layer.name)
            continue
        layer.set_weights(src.get_weights())
        copied.append(layer.name)
    return copied, skipped


def _all_layers(model):
    """The layers of ``model``, and those of the models nested in it."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def run_unet_options(init_from):
    """The :class:`~synthseg.unet.UNetOptions` of the run ``init_from`` comes from (a run
    folder, or its ``unet_last.keras`` / ``unet_best.keras``), read from the run's
    ``options.json``; ``None`` when there is no such file or it holds no readable ``unet``."""
    from synthseg.unet import UNetOptions

    p = Path(init_from)
    if p.is_dir():
        folder = p
    elif p.name in ("unet_last.keras", "unet_best.keras"):
        folder = p.parent
    else:
        return None
    try:
        return UNetOptions.from_dict(json.loads((folder / "options.json").read_text())["unet"])
    except (OSError, ValueError, KeyError, TypeError):  # InputError is a ValueError
        return None


def encoder_layers(unet: keras.Model, n_levels: int) -> list:
    """Layers of the encoder of a :func:`~synthseg.unet.build_unet` U-Net: those of the
    resolution levels before the bottleneck (names ``<name>_down<level>_*``, ``level <
    n_levels - 1``)."""
    prefixes = tuple(f"{unet.name}_down{level}_" for level in range(n_levels - 1))
    return [layer for layer in unet.layers if layer.name.startswith(prefixes)]


# ----------------------------------------------------------------------------- options file
def save_supervised_options(model_dir: Path, unet, options: SupervisedOptions, augmentation: AugmentationOptions,
                            transfer: dict, data: dict) -> None:
    text = json.dumps({"kind": KIND, "unet": unet.to_dict(), "supervised": options.to_dict(),
                       "augmentation": augmentation.to_dict(), "transfer": transfer, "data": data}, indent=2)
    atomic_write_text(Path(model_dir) / "options.json", text + "\n")


def load_supervised_options(model_dir):
    """Read a supervised run's ``options.json``.

    Returns:
        ``(UNetOptions, SupervisedOptions, AugmentationOptions, transfer dict, data dict)``.
    """
    from synthseg.unet import UNetOptions

    path = Path(model_dir) / "options.json"
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError("no options.json: not a synthseg training folder", model_dir) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"options file is not valid JSON ({exc})", path) from None
    if not isinstance(d, dict) or d.get("kind") != KIND:
        raise InputError("not a supervised training run (resume it with synthseg.training.training)", path)
    unknown = sorted(set(d) - {"kind", "unet", "supervised", "augmentation", "transfer", "data"})
    if unknown:
        raise InputError(f"unknown section(s) {unknown}", path)
    try:
        return (UNetOptions.from_dict(d["unet"], source=str(path)),
                SupervisedOptions.from_dict(d["supervised"], source=str(path)),
                AugmentationOptions.from_dict(d["augmentation"], source=str(path)),
                dict(d.get("transfer") or {}), dict(d.get("data") or {}))
    except (KeyError, TypeError) as exc:
        raise InputError(f"options file lacks or garbles a section ({exc})", path) from None


# ----------------------------------------------------------------------------- validation
def validation_dice(unet: keras.Model, pairs: PairSet, labels, multiple: int) -> tuple[float, np.ndarray]:
    """Mean hard Dice of ``unet`` on whole validation volumes (padded to ``multiple``, no
    augmentation), background excluded.

    Returns:
        ``(mean over volumes of the mean over labels, (K - 1,) mean Dice of each label)``.
    """
    table = np.asarray(labels, np.int32)
    scores = []
    for image, truth in zip(pairs.images, pairs.labels):
        x, pad = pad_to_multiple(image, multiple, n_spatial=truth.ndim)
        probs = ops.convert_to_numpy(unet(x[None], training=False))[0]
        pred = pad.undo(table[np.argmax(probs, axis=-1)])
        scores.append(hard_dice(truth, pred, labels[1:]))
    per_label = np.mean(scores, axis=0)
    return float(np.mean([s.mean() for s in scores])), per_label


class ValidationLog:
    """``validation_log.csv``: ``step, dice, best_dice, seconds, dice_<label>...``; rows after
    ``keep_until`` (left by a killed run) are dropped first."""

    def __init__(self, path: Path, labels, keep_until: int):
        self.path = Path(path)
        self.fields = ["step", "dice", "best_dice", "seconds"] + [f"dice_{v}" for v in labels[1:]]
        rows = []
        if self.path.exists():
            with open(self.path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if r.get("step", "").isdigit() and int(r["step"]) <= keep_until]
        with open(self.path, "w", newline="") as fh:
            w = csv.DictWriter(fh, self.fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

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
                 validation: PairSet | None, labels, multiple: int, state: dict, log: ValidationLog | None):
        super().__init__()
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
        from synthseg.checkpoint import save_checkpoint

        return save_checkpoint(path, self.train_model, self.train_model.optimizer, step, self._meta(logs))

    def _save_unet(self, name: str) -> None:
        tmp = self.dir / f".{name}.{os.getpid()}.tmp.keras"
        self.unet.save(tmp)
        os.replace(tmp, self.dir / name)

    def on_epoch_end(self, epoch, logs=None):
        step = (epoch + 1) * self.epoch_steps
        o, s = self.o, self.state
        stop = False
        if self.validation is not None and (step % o.validate_every == 0 or step == o.total_steps):
            dice, per_label = validation_dice(self.unet, self.validation, self.labels, self.multiple)
            improved = s["best_dice"] is None or dice > s["best_dice"]
            if improved:
                s.update(best_dice=dice, best_step=step, since_best=0)
            else:
                s["since_best"] += 1
            self.log.write(step, dice, s["best_dice"], time.time() - self._t0, per_label)
            if improved:
                self._save(self.dir / "best.npz", step, logs)
                self._save_unet("unet_best.keras")
            if o.patience is not None and s["since_best"] >= o.patience and step < o.total_steps:
                stop = True
                s["stopped_early"] = True
        if step % o.steps_per_checkpoint == 0 or stop:
            periodic = self._save(self.dir / "checkpoints" / f"step-{step:07d}.npz", step, logs)
            tmp = self.dir / f".last.{os.getpid()}.tmp.npz"
            if tmp.exists():
                tmp.unlink()
            os.link(periodic, tmp)  # same bytes, no second write
            os.replace(tmp, self.dir / "last.npz")
            self._save_unet("unet_last.keras")
            if o.keep_checkpoints:
                for old in sorted((self.dir / "checkpoints").glob("step-*.npz"))[:-o.keep_checkpoints]:
                    old.unlink()
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
            slices from :func:`synthseg.slices.slice_pairs` (see
            :func:`synthseg.slices.slice_training`); its ``info`` is saved in ``options.json``.
        model_dir: the run folder (see the module docstring); created if missing.
        validation: ``(images, labels)`` of held-out pairs (or a :class:`PairSet`), scored every
            ``options.validate_every`` steps (whole volumes or slices, no augmentation); the best
            model is kept as ``best.npz`` / ``unet_best.keras``. ``None``: no validation.
        unet: :class:`synthseg.unet.UNetOptions` (``ndim`` that of the pairs: 3, or 2 for
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
    from synthseg.checkpoint import load_checkpoint
    from synthseg.unet import UNetOptions, required_multiple

    model_dir = Path(model_dir)
    if options is not None and not isinstance(options, SupervisedOptions):
        raise InputError(f"options must be SupervisedOptions, got {type(options).__name__}")
    ndim = images.ndim if isinstance(images, PairSet) else 3
    check_not_an_input(model_dir, [images, labels, *(validation if isinstance(validation, (list, tuple)) else [])],
                       "run folder")
    resume_from = _prepare_folder(model_dir, resume)
    transfer = {"init_from": None, "freeze_encoder": bool(freeze_encoder), "copied_layers": [],
                "reinitialised_layers": []}
    if resume_from is not None:
        unet, saved, augmentation, transfer, data_info = load_supervised_options(model_dir)
        options = dataclasses.replace(saved, steps=max(saved.steps, options.steps)) if options else saved
    else:
        options = options or SupervisedOptions()
        unet = unet or (run_unet_options(init_from) if init_from is not None else None) or UNetOptions(ndim=ndim)
        augmentation = augmentation or AugmentationOptions()
        if freeze_encoder and init_from is None:
            raise InputError("freeze_encoder needs init_from (a frozen random encoder learns nothing)")
    if not isinstance(unet, UNetOptions) or unet.ndim != ndim:
        raise InputError(f"supervised_training needs {ndim}D UNetOptions (ndim={ndim}) for {ndim}D pairs")
    if options.patience is not None and validation is None:
        raise InputError("patience (early stopping) needs validation data")

    # ---- data
    train = images if isinstance(images, PairSet) else load_pairs(images, labels, "training")
    val = None
    if isinstance(validation, PairSet):
        val = validation
        if val.ndim != train.ndim or val.info != train.info:
            raise InputError(f"validation pairs ({val.ndim}D, {val.info}) are not made like the training "
                             f"pairs ({train.ndim}D, {train.info})", val.image_files[0])
    elif validation is not None:
        if not isinstance(validation, (tuple, list)) or len(validation) != 2:
            raise InputError("validation must be an (images, label maps) pair of sources")
        val = load_pairs(validation[0], validation[1], "validation")
    if val is not None:
        if val.n_channels != train.n_channels:
            raise InputError(f"validation images have {val.n_channels} channel(s), training images "
                             f"{train.n_channels}", val.image_files[0])
    if resume_from is not None:
        label_list = list(options.labels)
        if data_info.get("n_channels", train.n_channels) != train.n_channels:
            raise InputError(f"the run was trained on {data_info['n_channels']}-channel images, these have "
                             f"{train.n_channels}", train.image_files[0])
        if data_info.get("slices") != train.info.get("slices"):  # slices of another axis or k
            raise InputError(f"the run was trained on slices {data_info.get('slices') or 'none (whole volumes)'}, "
                             f"these pairs are slices {train.info.get('slices') or 'none (whole volumes)'}",
                             model_dir / "options.json")
    else:
        label_list = options.labels or sorted(set(train.found) | {0})
        if len(label_list) < 2:
            raise InputError("the training label maps hold background only", train.label_files[0])
    train.set_labels(label_list)
    if val is not None:
        val.set_labels(label_list)
    # pairs are read with the percentile step; slices (synthseg.slices) come standardised per volume
    if augmentation.normalisation not in ("percentile", train.info.get("normalisation")):
        train = standardise_pairs(train, augmentation.normalisation)
        val = None if val is None else standardise_pairs(val, augmentation.normalisation)

    multiple = required_multiple(unet)
    crop = options.crop_shape or tuple(-(-n // multiple) * multiple for n in train.max_shape)
    if any(n % multiple for n in crop):
        raise InputError(f"crop_shape {tuple(crop)} is not a multiple of {multiple} (needed by a "
                         f"{unet.n_levels}-level U-Net); e.g. {tuple(-(-n // multiple) * multiple for n in crop)}")
    pool = tuple(max(a, b) for a, b in zip(train.max_shape, crop))

    if augmentation.lr_pairs is None:
        lr_pairs = _protocol_pairs(label_list) if augmentation.flip_prob > 0 else []
        augmentation = dataclasses.replace(augmentation, lr_pairs=[list(p) for p in lr_pairs])
    stray = sorted({v for p in augmentation.lr_pairs for v in p} - set(label_list))
    if stray:
        raise InputError(f"lr_pairs name labels that are not segmentation labels: {stray}")
    validate_every = options.validate_every or options.steps_per_checkpoint
    options = dataclasses.replace(options, crop_shape=tuple(crop), labels=list(label_list),
                                  validate_every=validate_every)

    source = None
    if resume_from is None and init_from is not None:
        source, source_path = load_source_unet(init_from)
        transfer["init_from"] = str(source_path)

    # ---- model
    if options.deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    model, unet_model = build_supervised_model(unet, label_list, train.n_channels, pool, crop, augmentation,
                                               augmentation.lr_pairs, options.seed)
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
        for layer in encoder_layers(unet_model, unet.n_levels):
            layer.trainable = False
            frozen.append(layer.name)
    loss = SegmentationLoss(warmup_steps=options.warmup_steps)
    n_labels = len(label_list)
    model.compile(optimizer=keras.optimizers.Adam(options.learning_rate), loss=SplitOutputLoss(loss, n_labels),
                  metrics=[SplitOutputDice(n_labels)], jit_compile=False)
    model.optimizer.build(model.trainable_variables)

    epoch_steps = math.gcd(options.steps_per_checkpoint, validate_every) if val is not None \
        else options.steps_per_checkpoint
    state = {"best_dice": None, "best_step": None, "since_best": 0, "stopped_early": False}
    step = 0
    if resume_from is not None:
        header = load_checkpoint(resume_from, model, model.optimizer)
        step = int(header["step"])
        state.update({k: header.get("meta", {}).get(k, v) for k, v in state.items()})
        if step % epoch_steps:
            raise InputError(f"checkpoint step {step} is not a multiple of {epoch_steps} (steps_per_checkpoint "
                             "and validate_every of the run)", resume_from)
    else:
        data_info = {"n_channels": train.n_channels,
                     "images": [str(f) for f in train.image_files], "labels": [str(f) for f in train.label_files],
                     "validation_images": [str(f) for f in val.image_files] if val else None,
                     "validation_labels": [str(f) for f in val.label_files] if val else None,
                     "voxel_size": train.voxel_size, **train.info}
        save_supervised_options(model_dir, unet, options, augmentation, transfer, data_info)
    np.save(model_dir / "labels.npy", np.asarray(label_list, np.int32))

    def result(last_loss=None):
        return SupervisedResult(model_dir, step, last_loss, best_dice=state["best_dice"],
                                best_step=state["best_step"], stopped_early=bool(state["stopped_early"]),
                                copied_layers=list(transfer.get("copied_layers", [])),
                                reinitialised_layers=list(transfer.get("reinitialised_layers", [])),
                                frozen_layers=frozen)

    total = options.total_steps
    if step >= total or state["stopped_early"]:
        if state["stopped_early"]:
            print(f"synthseg: the run stopped early at step {step} (best validation Dice "
                  f"{state['best_dice']:.4f} at step {state['best_step']}); nothing to do", file=sys.stderr)
        return result()

    vlog = ValidationLog(model_dir / "validation_log.csv", label_list, keep_until=step) if val is not None else None
    log = StepLog(model_dir / "training_log.csv", keep_until=step)
    monitor = SupervisedMonitor(model_dir, model, unet_model, options, epoch_steps, val, label_list, multiple,
                                state, vlog)
    cbs = [WarmupCallback(loss, options.warmup_steps), log, monitor]
    if options.progress:
        cbs.append(ProgressBar(total, step))
    cbs += list(callbacks)
    if options.tensorboard:
        cbs.append(keras.callbacks.TensorBoard(str(model_dir / "tensorboard"), update_freq=10))
    images_arr, labels_arr = _stack(train, pool)
    batches = pair_batches(images_arr, labels_arr, options.batch_size, options.seed, step,
                           partners=augmentation.mixup_prob > 0)
    start_epoch = step // epoch_steps
    with contextlib.closing(batches):
        model.fit(batches, steps_per_epoch=epoch_steps, epochs=total // epoch_steps, initial_epoch=start_epoch,
                  callbacks=cbs, verbose=0, shuffle=False)
    step = int(ops.convert_to_numpy(model.optimizer.iterations))
    return result(log.last_loss)


def _protocol_pairs(label_list) -> list[tuple[int, int]]:
    """The SynthSeg protocol's left/right pairs within ``label_list``, when every label
    belongs to the protocol; else none."""
    from synthseg import labels as protocol

    if not set(label_list) <= set(int(v) for v in protocol.generation_labels()):
        return []
    have = set(label_list)
    return [(int(a), int(b)) for a, b in protocol.lr_pairs() if a in have and b in have]
