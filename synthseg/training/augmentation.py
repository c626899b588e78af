"""Augmentation of real training pairs inside the training graph: the options
(:class:`AugmentationOptions`), the crop-and-augment layer (:class:`PairAugmentation`: the
lab2im layers of the generator, applied to scan and labels together) and :class:`Mixup`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import keras
from keras import ops

from lab2im.errors import InputError
from lab2im.layers.base import IMAGE, LABELS, RandomLayer
from lab2im.model import STAGE_TABLE, StageContext, named_seed
from lab2im.normalisation import check_method, zscore_in_mask
from lab2im.options import options_from_dict


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
    read) and at prediction (:mod:`synthseg.inference` reads the method from the run's
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
            protocol's pairs (:func:`synthseg.data.labels.lr_pairs`) present in the label list when
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


#: the stages of the generator (:data:`lab2im.model.STAGE_TABLE`) that augment real pairs, in order
PAIR_STAGES = tuple(stage for stage in STAGE_TABLE if stage.pairs)
#: the augmentation's random streams, seeded by name (:func:`lab2im.model.named_seed`); these
#: keep the seeds they had when they were handed out in this order
AUGMENTATION_SEED_ORDER = ("gates", "deformation", "flip", "bias_field", "intensity")


@keras.saving.register_keras_serializable(package="synthseg")
class PairAugmentation(keras.layers.Layer):
    """Random crop and augmentation of ``[image (B, *in, C) float, labels (B, *in, 1) int]``.

    The generator's stages marked for pairs in :data:`lab2im.model.STAGE_TABLE`
    (:data:`PAIR_STAGES`), built from these options by the same builders: one random spatial
    deformation for both (linear for the image, nearest for the labels), which also takes the
    random ``crop_shape`` window; then a left/right flip (swapping ``lr_pairs``), a bias field
    and noise + min-max normalisation + gamma on the image (then,
    with ``normalisation="zscore"``, a z-score within the foreground: the voxels not 0 in the
    standardised input). Each sample is augmented with probability ``options.prob``, and each
    augmentation of an augmented sample has its own probability (see
    :class:`AugmentationOptions`); the others are only cropped (an exact copy of voxels). A
    sample left alone gets each layer's identity parameters
    (:meth:`lab2im.layers.base.RandomLayer.gated`), and the stage's ``gates`` say which parts
    of a layer have their own probability field.

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
        def seed_of(name):
            return None if seed is None else named_seed([int(seed), 17], name, AUGMENTATION_SEED_ORDER)

        self.seed_generator = keras.random.SeedGenerator(seed_of("gates"))
        context = StageContext(kinds=(IMAGE, LABELS), output_shape=self.crop_shape, lr_pairs=tuple(self.lr_pairs))
        #: ``[(stage, layer)]``: the generator's stages that augment pairs (:data:`lab2im.model.STAGE_TABLE`), in order
        self.stages = []
        for stage in PAIR_STAGES:
            layer = stage.build(o, seed_of(stage.name), context)
            if layer is not None:
                self.stages.append((stage, layer))
        self.stage_layers = [layer for _, layer in self.stages]  # tracked by Keras (weights, checkpoints)

    def build(self, input_shape):
        image_shape, labels_shape = input_shape
        crop_image = (image_shape[0], *self.crop_shape, image_shape[-1])
        for stage, layer in self.stages:
            layer.build([image_shape, labels_shape] if stage.reads == LABELS else crop_image)
        self.built = True

    def compute_output_shape(self, input_shape):
        return [(s[0], *self.crop_shape, s[-1]) for s in input_shape]

    def call(self, inputs):
        image, labels = inputs
        batch = image.shape[0] or ops.shape(image)[0]
        o = self.options
        gate = keras.random.uniform((batch,), seed=self.seed_generator) < o.prob
        augmented = None
        for stage, layer in self.stages:
            t = layer.get_random_transformation(batch)
            on = gate
            if stage.gates:  # parts with their own probability; the layer's other parts follow ``gate``
                on = dict.fromkeys(layer.GATED_PARTS, gate)
                on.update({part: self._gate(gate, getattr(o, field), batch) for part, field in stage.gates})
            t = layer.gated(t, on)
            if stage.reads == LABELS:  # spatial: scan and labels together
                image, labels = layer.transform([image, labels], t)
            else:
                augmented = layer.transform(image if augmented is None else augmented, t)
        if augmented is None:
            return [image, labels]
        if o.normalisation == "zscore":  # the input is z-scored with its background at 0
            augmented = zscore_in_mask(augmented, ops.not_equal(image, 0.0))
        # the samples left alone keep their intensities exactly (no re-normalisation either)
        image = ops.where(ops.reshape(gate, (-1,) + (1,) * (len(self.crop_shape) + 1)), augmented, image)
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
