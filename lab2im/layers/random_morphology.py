"""Random one-voxel moves of chosen label boundaries, in smooth random regions (anatomical variety)."""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from lab2im import ops as lops
from lab2im.layers.base import CoarseFieldLayer


@keras.saving.register_keras_serializable(package="lab2im")
class RandomLabelMorphology(CoarseFieldLayer):
    """Move the boundary between two groups of labels by one voxel, outwards in some smooth
    random regions and inwards in others, so one label map yields many anatomies (e.g. a
    thicker or thinner cortex, wider or narrower sulci, larger or smaller ventricles) that a
    smooth deformation alone does not give: a deformation moves both sides of a thin structure
    together, this changes its thickness.

    Each rule is a pair of label groups ``(grow, into)``. Per sample and rule a smooth field
    ``f`` is drawn (values uniform in [-1, 1] on a coarse grid, upsampled linearly) with a
    threshold ``t``. Where ``f > t`` the ``grow`` labels dilate by one voxel (the 26 neighbours
    in 3D, 8 in 2D) into ``into`` voxels; where ``f < -t`` the ``into`` labels dilate into
    ``grow`` voxels. A voxel that changes takes the largest label value of the other group
    among its neighbours, so give left and right structures rules of their own (else the
    larger label wins where both touch). Rules are applied in order, each to the previous
    rule's output. Nothing keeps a structure from shrinking away: one voxel thick, it can
    vanish where its boundary moves inwards (and two voxels thick, where two rules both shrink
    it).

    Args:
        rules: ``[(grow_labels, into_labels), ...]``, each a list of non-negative labels; the
            two groups of a rule are disjoint.
        scale: the fields are drawn on a grid of ``scale`` times the label map's shape (at
            least 2 per axis): regions about ``1 / scale`` of the field of view across.
        threshold: ``(lo, hi)``: ``t`` is ``U(lo, hi)`` per sample and rule. At 0 every voxel
            of the boundary moves (about half outwards, half inwards); at 0.5 a few percent;
            from 1 none. The default draws anything from a whole moved boundary to none.
        prob: probability that a sample is changed at all.
        seed: see :class:`~lab2im.layers.base.RandomLayer`.

    Input and output: int32 label maps ``(B, *spatial, 1)``.
    Transformation dict: ``field``: ``(B, *coarse, n_rules)`` float32 in [-1, 1];
    ``threshold``: ``(B, n_rules)`` float32 (a value of 1 or more leaves the sample unchanged).
    """

    def __init__(self, rules, scale=0.1, threshold=(0.0, 1.0), prob=1.0, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.rules = [([int(v) for v in grow], [int(v) for v in into]) for grow, into in rules]
        if not self.rules:
            raise ValueError("rules must hold at least one (grow_labels, into_labels) pair")
        for grow, into in self.rules:
            if not grow or not into or set(grow) & set(into) or min(grow + into) < 0:
                raise ValueError(f"each rule needs two disjoint, non-empty groups of labels >= 0, got {(grow, into)}")
        self.threshold = (float(threshold[0]), float(threshold[1]))
        if scale <= 0 or not 0 <= self.threshold[0] <= self.threshold[1] or not 0 <= prob <= 1:
            raise ValueError("scale > 0, 0 <= threshold[0] <= threshold[1] and 0 <= prob <= 1 are required")
        self.scale, self.prob = float(scale), float(prob)
        size = max(max(g + i) for g, i in self.rules) + 1
        # per rule: 1 for the grow group, 2 for the into group, 0 for other labels
        self._groups = np.zeros((len(self.rules), size), np.int32)
        for r, (grow, into) in enumerate(self.rules):
            self._groups[r, grow], self._groups[r, into] = 1, 2

    def get_random_transformation(self, batch_size):
        n = len(self.rules)
        threshold = self._uniform((batch_size, n), *self.threshold)
        on = self._bernoulli((batch_size,), self.prob)
        drawn = {"field": self._uniform((batch_size, *self.coarse, n), -1.0, 1.0), "threshold": threshold}
        return self.gated(drawn, on)

    def gated(self, transformation, on):
        """Samples where ``on`` is false are left unchanged (threshold 2)."""
        return dict(transformation, threshold=self._where(on, transformation["threshold"], 2.0))

    def _largest_neighbour(self, labels, member):
        """Per voxel, the largest label value among its neighbours (and itself) in ``member`` (-1: none)."""
        values = ops.where(member, ops.cast(labels, "float32") + 1.0, 0.0)
        pooled = ops.max_pool(values, pool_size=3, strides=1, padding="same")
        return ops.cast(pooled, "int32") - 1

    def transform(self, labels, transformation):
        labels = ops.cast(labels, "int32")
        field = lops.resize_linear(transformation["field"], self.spatial)  # (B, *spatial, n_rules)
        thresholds = transformation["threshold"]
        for r in range(len(self.rules)):
            group = lops.lookup(ops.convert_to_tensor(self._groups[r]), labels)  # (B, *spatial, 1)
            f = field[..., r:r + 1]
            t = ops.reshape(thresholds[:, r], (-1,) + (1,) * (len(self.spatial) + 1))
            grow_label = self._largest_neighbour(labels, group == 1)
            into_label = self._largest_neighbour(labels, group == 2)
            grows = (f > t) & (group == 2) & (grow_label >= 0)
            shrinks = (f < -t) & (group == 1) & (into_label >= 0)
            labels = ops.where(grows, grow_label, ops.where(shrinks, into_label, labels))
        return labels

    def get_config(self):
        config = super().get_config()
        config.update(rules=self.rules, scale=self.scale, threshold=self.threshold, prob=self.prob)
        return config
