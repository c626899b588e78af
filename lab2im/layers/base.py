"""Shared base of the lab2im random layers: sampling parameters is separate from applying them.

Every random layer implements two methods:

* ``get_random_transformation(batch_size)`` draws all random parameters of one minibatch
  from the layer's :class:`keras.random.SeedGenerator` and returns them as a dict of tensors;
* ``transform(inputs, transformation)`` applies given parameters deterministically.

A layer that can leave some samples of a minibatch alone also implements
``gated(transformation, on)``: the same parameters with the samples where ``on`` (``(B,)``
bool) is false replaced by the layer's identity. ``on`` may also be a dict ``{part: (B,)
bool}`` for a layer whose parts are switched on separately (the affine and the nonlinear
part of a deformation); :attr:`RandomLayer.GATED_PARTS` names them. The supervised
augmentation gates every stage this way (:class:`synthseg.training.augmentation.PairAugmentation`).

``call(inputs, transformation=None)`` chains them. The same parameters always give the same
output, so a synthetic image can be explained (inspect the dict) and replayed (pass it back),
and two layers built with the same ``seed`` draw the same parameters.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import keras
from keras import ops


class RandomLayer(keras.layers.Layer):
    """Base class: seeded parameter sampling + deterministic application.

    Args:
        seed: integer seed of the layer's random stream (``None``: nondeterministic).
    """

    def __init__(self, seed: int | None = None, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    #: the parts of the transformation :meth:`gated` can switch on separately (``on`` as a dict)
    GATED_PARTS: tuple[str, ...] = ()

    # subclasses implement these two
    def get_random_transformation(self, batch_size: int) -> dict:
        raise NotImplementedError

    def transform(self, inputs, transformation: dict):
        raise NotImplementedError

    def gated(self, transformation: dict, on) -> dict:
        """``transformation`` with the samples where ``on`` is false set to the identity (see the
        module docstring); layers that can be gated override it."""
        raise NotImplementedError(f"{type(self).__name__} cannot leave samples alone")

    @staticmethod
    def _part(on, name: str):
        """The ``(B,)`` gate of the part ``name``: ``on`` itself, or its entry when a dict."""
        return on[name] if isinstance(on, dict) else on

    @staticmethod
    def _where(on, value, identity):
        """``value`` where ``on`` (``(B,)``), else ``identity``, broadcast over ``value``'s axes."""
        on = ops.reshape(on, (-1,) + (1,) * (len(value.shape) - 1))
        return ops.where(on, value, ops.cast(identity, value.dtype))

    def call(self, inputs, transformation: dict | None = None):
        first = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        if transformation is None:
            transformation = self.get_random_transformation(first.shape[0] or ops.shape(first)[0])
        return self.transform(inputs, transformation)

    def get_config(self):
        config = super().get_config()
        config["seed"] = self.seed
        return config

    # ------------------------------------------------------------------ sampling helpers
    def _uniform(self, shape, low, high):
        return keras.random.uniform(shape, low, high, seed=self.seed_generator)

    def _normal(self, shape, mean=0.0, std=1.0):
        return keras.random.normal(shape, mean, std, seed=self.seed_generator)

    def _bernoulli(self, shape, prob: float):
        return keras.random.uniform(shape, seed=self.seed_generator) < prob


class CoarseFieldLayer(RandomLayer):
    """A random layer that draws smooth fields on a coarse grid, ``scale`` times the input's
    spatial shape (at least 2 per axis; ``self.scale`` set by the subclass), upsampled to the
    input's shape when applied. Its output has the input's shape. Built: ``self.spatial`` (the
    input's spatial shape, voxels) and ``self.coarse`` (the grid's)."""

    def build(self, input_shape):
        self.spatial = spatial_shape(input_shape)
        self.coarse = tuple(max(2, math.ceil(n * self.scale)) for n in self.spatial)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return input_shape


#: what a tensor given to a spatial layer holds: images are interpolated linearly, label maps
#: by nearest neighbour (and their left/right labels swapped by a flip)
IMAGE, LABELS = "image", "labels"


def tensor_kinds(tensors, kinds) -> list[str]:
    """The kind (:data:`IMAGE` or :data:`LABELS`) of each tensor: ``kinds`` as the layer was
    told (one per tensor); ``None``, for callers that do not say: integer tensors are label maps.

    Raises:
        ValueError: ``kinds`` of another length than ``tensors``, or an unknown kind.
    """
    if kinds is None:
        return [LABELS if "int" in str(t.dtype) else IMAGE for t in tensors]
    if len(kinds) != len(tensors) or any(k not in (IMAGE, LABELS) for k in kinds):
        raise ValueError(f"kinds must name {IMAGE!r} or {LABELS!r} for each of the {len(tensors)} inputs, got {kinds}")
    return list(kinds)


def symmetric_range(value, name: str, center: float = 0.0) -> tuple[float, float]:
    """Parse a range argument: ``v`` means ``(center - v, center + v)``; ``(lo, hi)`` is kept.

    Raises:
        ValueError: negative half-width, or ``lo > hi``.
    """
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 2:
            raise ValueError(f"{name} must be a number or a (min, max) pair, got {value!r}")
        lo, hi = float(value[0]), float(value[1])
    else:
        v = float(value)
        if v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
        lo, hi = center - v, center + v
    if lo > hi:
        raise ValueError(f"{name}: min {lo} is greater than max {hi}")
    return lo, hi


def spatial_shape(input_shape) -> tuple[int, ...]:
    """Spatial part of a channels-last batched shape ``(B, *spatial, C)``; checks it is 2D/3D."""
    spatial = tuple(int(n) for n in input_shape[1:-1])
    if len(spatial) not in (2, 3):
        raise ValueError(f"expected a (batch, *spatial, channels) shape with 2 or 3 spatial axes, "
                         f"got {tuple(input_shape)}")
    return spatial


def is_shape_list(input_shape) -> bool:
    """True when ``input_shape`` is a list of shapes (a layer called on several tensors)."""
    return len(input_shape) > 0 and not isinstance(input_shape[0], (int, type(None)))


def first_shape(input_shape):
    """The first shape of a list of shapes, or the shape itself."""
    return input_shape[0] if is_shape_list(input_shape) else input_shape
