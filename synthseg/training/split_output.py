"""Loss and metric on a training model's ``[probabilities | one-hot target]`` output (the target is made inside the graph, by the generator or the augmentation)."""
from __future__ import annotations

import keras
from keras import ops

from synthseg.nn.losses import MeanDice


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
