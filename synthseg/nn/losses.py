"""Segmentation losses and metrics: soft Dice, weighted cross-entropy, a Dice loss with a
cross-entropy warm-up, and hard Dice for evaluation (NumPy) and logging (a Keras metric).

Conventions (``keras.ops`` only, so any Keras backend works):

* ``y_true``: one-hot labels ``(B, *spatial, K)``, float;
* ``y_pred``: label probabilities ``(B, *spatial, K)`` (the U-Net's softmax output);
* label index 0 is the background.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from lab2im.errors import InputError
from lab2im.options import check_int, check_number


def _reduction_axes(x) -> list[int]:
    """Every axis but the last (batch and spatial axes)."""
    return list(range(len(x.shape) - 1))


def soft_dice_per_label(y_true, y_pred, eps: float = 1e-5):
    """Soft Dice of each label, pooled over the batch and spatial axes.

    ``dice_k = (2 * sum(t_k * p_k) + eps) / (sum(t_k) + sum(p_k) + eps)``; a label absent from
    both ``y_true`` and ``y_pred`` scores 1.

    Args:
        y_true: one-hot ``(B, *spatial, K)``.
        y_pred: probabilities ``(B, *spatial, K)``.

    Returns:
        ``(K,)`` tensor of Dice scores in [0, 1].
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(y_true, y_pred.dtype)
    axes = _reduction_axes(y_pred)
    intersection = ops.sum(y_true * y_pred, axis=axes)
    total = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
    return (2.0 * intersection + eps) / (total + eps)


def soft_dice_loss(y_true, y_pred, include_background: bool = True, eps: float = 1e-5):
    """``1 - mean_k dice_k`` (see :func:`soft_dice_per_label`): a scalar in [0, 1].

    ``include_background=False`` leaves label 0 out of the mean.
    """
    dice = soft_dice_per_label(y_true, y_pred, eps)
    if not include_background:
        dice = dice[1:]
    return 1.0 - ops.mean(dice)


def weighted_cross_entropy(y_true, y_pred, weights=None, eps: float = 1e-7):
    """Mean over voxels of ``-sum_k w_k * t_k * log(p_k)``, with ``p`` clipped to [eps, 1 - eps].

    Args:
        y_true: one-hot ``(B, *spatial, K)``.
        y_pred: probabilities ``(B, *spatial, K)``.
        weights: ``(K,)`` per-label weights, used as given. ``None``: inverse-frequency weights
            computed from ``y_true`` over the whole batch, ``w_k = N / (n_present * N_k)`` for
            the ``n_present`` labels present (``N_k`` of the ``N`` voxels), 0 for absent ones.
            They are normalised so that the mean voxel weight is 1; the loss is then the mean
            over present labels of each label's mean cross-entropy, so small structures count
            as much as large ones.

    Returns:
        scalar tensor.
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(y_true, y_pred.dtype)
    log_p = ops.log(ops.clip(y_pred, eps, 1.0 - eps))
    if weights is None:
        axes = _reduction_axes(y_true)
        counts = ops.sum(y_true, axis=axes)  # (K,)
        n_voxels = ops.sum(counts)
        present = ops.cast(counts > 0, y_pred.dtype)
        n_present = ops.maximum(ops.sum(present), 1.0)
        weights = present * n_voxels / (n_present * ops.maximum(counts, 1.0))
        weights = ops.stop_gradient(weights)
    else:
        weights = ops.cast(ops.convert_to_tensor(weights), y_pred.dtype)
    per_voxel = -ops.sum(y_true * log_p * weights, axis=-1)
    return ops.mean(per_voxel)


@keras.saving.register_keras_serializable(package="synthseg")
class SegmentationLoss(keras.losses.Loss):
    """Soft Dice loss, optionally after a cross-entropy warm-up; usable as a Keras loss.

    ``loss = w * weighted_cross_entropy + (1 - w) * soft_dice_loss``, where the blend weight
    ``w`` is 1 during the first ``warmup_steps`` optimiser steps and ``ce_after_warmup`` (0 by
    default) afterwards. Randomly initialised networks can get stuck when trained with Dice
    from the start (empty predictions give flat Dice gradients); a short cross-entropy phase
    avoids it. A label the network has stopped predicting stays dead under soft Dice (its
    softmax probability is ~0 everywhere, and so is the Dice gradient through the softmax),
    while cross-entropy's gradient at its voxels stays strong: ``ce_after_warmup > 0`` keeps
    some (nnU-Net trains with Dice + cross-entropy throughout). The SynthSeg
    reference warms up with a weighted L2 loss on the logits; we use cross-entropy on the
    probabilities instead, which needs no access to the logits.

    How the step reaches the loss: ``w`` lives in a non-trainable ``keras.Variable``
    (:attr:`blend`), set by :meth:`set_step`. During ``fit`` the :class:`WarmupCallback` calls
    it before every batch with the current optimiser step. (A callback keeps the loss a plain
    ``(y_true, y_pred)`` function that works in compiled train steps on every backend; the
    loss cannot read ``model.optimizer.iterations`` itself, it does not know the model.)
    ``w`` is training state, not configuration: :meth:`get_config` does not save it.

        loss = SegmentationLoss(warmup_steps=500)
        model.compile(optimizer="adam", loss=loss, metrics=[MeanDice(n_labels)])
        model.fit(data, callbacks=[WarmupCallback(loss)])

    Args:
        warmup_steps: cross-entropy steps before switching to Dice (0: Dice only).
        include_background: count label 0 in the Dice mean.
        ce_weights: per-label cross-entropy weights (``None``: inverse frequency per batch,
            see :func:`weighted_cross_entropy`).
        eps: Dice smoothing term.
        ce_after_warmup: the blend weight ``w`` after the warm-up, in [0, 1].
    """

    def __init__(self, warmup_steps: int = 0, include_background: bool = True, ce_weights=None,
                 eps: float = 1e-5, ce_after_warmup: float = 0.0, name: str = "segmentation_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        check_int(warmup_steps, "warmup_steps", 0)
        self.warmup_steps = int(warmup_steps)
        self.include_background = bool(include_background)
        self.ce_weights = None if ce_weights is None else [float(w) for w in np.ravel(ce_weights)]
        self.eps = float(eps)
        check_number(ce_after_warmup, "ce_after_warmup", 0, 1)
        self.ce_after_warmup = float(ce_after_warmup)
        self.blend = keras.Variable(self.blend_for_step(0), dtype="float32", trainable=False, name="ce_blend")

    def blend_for_step(self, step: int) -> float:
        """The blend weight ``w`` at optimiser step ``step`` (0-based)."""
        return 1.0 if int(step) < self.warmup_steps else self.ce_after_warmup

    def set_step(self, step: int) -> bool:
        """Set ``w`` for optimiser step ``step``; return whether it changed."""
        new = self.blend_for_step(step)
        changed = new != float(ops.convert_to_numpy(self.blend.value))
        if changed:
            self.blend.assign(new)
        return changed

    def call(self, y_true, y_pred):
        dice = soft_dice_loss(y_true, y_pred, self.include_background, self.eps)
        if self.warmup_steps == 0 and self.ce_after_warmup == 0.0:
            return dice
        ce = weighted_cross_entropy(y_true, y_pred, self.ce_weights)
        w = ops.cast(self.blend.value, dice.dtype)
        return w * ce + (1.0 - w) * dice

    def get_config(self):
        config = super().get_config()
        config.update(warmup_steps=self.warmup_steps, include_background=self.include_background,
                      ce_weights=self.ce_weights, eps=self.eps, ce_after_warmup=self.ce_after_warmup)
        return config


class WarmupCallback(keras.callbacks.Callback):
    """Keeps a :class:`SegmentationLoss`'s blend weight in step with the optimiser.

    Before each batch it calls ``loss.set_step(step)`` with the optimiser step about to run,
    so a resumed training (optimiser restored) continues where it stopped.

    The step is ``model.optimizer.iterations`` read at the start of each epoch plus the batch
    index: on JAX the model's variables are detached during an epoch (``fit`` carries them as
    a functional state), so reading ``iterations`` between batches would give a stale value.

    On JAX (and any backend other than TensorFlow) a compiled step reads a variable that is
    not the model's as a constant fixed when the step is traced, so when the weight changes
    (once, at the end of the warm-up) the callback makes Keras retrace its train and test
    steps. TensorFlow reads the variable live inside ``tf.function``; no retrace is needed.

    Args:
        loss: the :class:`SegmentationLoss` passed to ``model.compile``.
        warmup_steps: overrides ``loss.warmup_steps`` when given.
    """

    def __init__(self, loss: SegmentationLoss, warmup_steps: int | None = None):
        super().__init__()
        if not isinstance(loss, SegmentationLoss):
            raise InputError(f"WarmupCallback needs a SegmentationLoss, got {type(loss).__name__}")
        if warmup_steps is not None:
            check_int(warmup_steps, "warmup_steps", 0)
            loss.warmup_steps = int(warmup_steps)
        self.loss = loss
        self._epoch_start = 0

    def _optimizer_step(self) -> int:
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            return 0
        return int(ops.convert_to_numpy(optimizer.iterations))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self._optimizer_step()

    def on_train_batch_begin(self, batch, logs=None):
        changed = self.loss.set_step(self._epoch_start + int(batch))
        if changed and self.model is not None and keras.backend.backend() != "tensorflow":
            self.model.make_train_function(force=True)
            if getattr(self.model, "test_function", None) is not None:
                self.model.make_test_function(force=True)


def hard_dice(labels_true, labels_pred, label_list) -> np.ndarray:
    """Dice of each label of ``label_list`` between two integer label maps (NumPy).

    Args:
        labels_true, labels_pred: integer label maps of the same shape (any number of axes).
        label_list: label values to score.

    Returns:
        ``(len(label_list),)`` float64 array; a label absent from both maps scores 1.0, one
        absent from only one of them 0.0.
    """
    a = np.asarray(labels_true)
    b = np.asarray(labels_pred)
    if a.shape != b.shape:
        raise InputError(f"label maps have different shapes: {a.shape} and {b.shape}")
    out = np.empty(len(label_list), np.float64)
    for i, label in enumerate(label_list):
        ta, tb = a == label, b == label
        total = int(ta.sum()) + int(tb.sum())
        out[i] = 1.0 if total == 0 else 2.0 * int(np.logical_and(ta, tb).sum()) / total
    return out


@keras.saving.register_keras_serializable(package="synthseg")
class MeanDice(keras.metrics.Metric):
    """Mean hard Dice of the argmax segmentation, accumulated over batches, for logging.

    Keeps per-label intersections and sizes (``(K,)`` variables), so the result is the Dice of
    everything seen since the last ``reset_state`` (as :func:`hard_dice` on the concatenated
    volumes), not a mean of per-batch scores. Labels absent from both score 1.

    Args:
        n_labels: ``K``.
        include_background: count label 0 in the mean (default no: background Dice is close
            to 1 and would hide the structures' scores).

    ``y_true``: one-hot ``(B, *spatial, K)`` or integer label indices ``(B, *spatial[, 1])``;
    ``y_pred``: probabilities ``(B, *spatial, K)``.
    """

    def __init__(self, n_labels: int, include_background: bool = False, name: str = "mean_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        check_int(n_labels, "n_labels", 1)
        if not include_background and n_labels < 2:
            raise InputError("MeanDice without background needs n_labels >= 2")
        self.n_labels = int(n_labels)
        self.include_background = bool(include_background)
        shape = (self.n_labels,)
        self.intersection = self.add_variable(shape, initializer="zeros", dtype="float32", name="intersection")
        self.true_sum = self.add_variable(shape, initializer="zeros", dtype="float32", name="true_sum")
        self.pred_sum = self.add_variable(shape, initializer="zeros", dtype="float32", name="pred_sum")

    def _one_hot_true(self, y_true, ndim_pred: int):
        y_true = ops.convert_to_tensor(y_true)
        if len(y_true.shape) == ndim_pred and y_true.shape[-1] == self.n_labels and self.n_labels > 1:
            index = ops.argmax(y_true, axis=-1)
        else:
            if len(y_true.shape) == ndim_pred:
                y_true = ops.squeeze(y_true, axis=-1)
            index = ops.cast(y_true, "int32")
        return ops.one_hot(index, self.n_labels, dtype="float32")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.convert_to_tensor(y_pred)
        ndim = len(y_pred.shape)
        t = self._one_hot_true(y_true, ndim)
        p = ops.one_hot(ops.argmax(y_pred, axis=-1), self.n_labels, dtype="float32")
        axes = list(range(ndim - 1))
        self.intersection.assign_add(ops.sum(t * p, axis=axes))
        self.true_sum.assign_add(ops.sum(t, axis=axes))
        self.pred_sum.assign_add(ops.sum(p, axis=axes))

    def per_label(self):
        """``(K,)`` Dice of each label so far."""
        total = self.true_sum + self.pred_sum
        return ops.where(total > 0, 2.0 * self.intersection / ops.maximum(total, 1.0), 1.0)

    def result(self):
        dice = self.per_label()
        if not self.include_background:
            dice = dice[1:]
        return ops.mean(dice)

    def reset_state(self):
        for v in (self.intersection, self.true_sum, self.pred_sum):
            v.assign(ops.zeros(v.shape, v.dtype))

    def get_config(self):
        config = super().get_config()
        config.update(n_labels=self.n_labels, include_background=self.include_background)
        return config
