"""``GeneratorOptions``: every setting of the labels-to-image model, documented once.

The options are a plain dataclass: validated on creation, saved as JSON beside a model, and
read back with unknown keys rejected (a typo in an options file is an error, not a silently
ignored setting).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lab2im.errors import InputError


@dataclass
class GeneratorOptions:
    """Settings of :func:`lab2im.model.labels_to_image_model`. Units: mm, voxels, degrees.

    Labels
        generation_labels: every label value that may occur in the input label maps.
        segmentation_labels: what each generation label becomes in the output label map (same
            length; 0 is background). ``None`` keeps every generation label.
        generation_classes: class of each generation label; labels of one class share one
            random Gaussian (e.g. left and right putamen). ``None``: one class per label.
        lr_pairs: ``(left, right)`` generation-label pairs swapped by the random flip.

    Geometry
        output_shape: spatial shape of the outputs (voxels); ``None`` keeps the input's.
            Smaller than the input means a random crop.
        voxel_size: voxel size of the input label maps (mm), scalar or per axis.
        flip_axis, flip_prob: axis of the left/right flip (0 for RAS volumes) and its
            probability (0 disables it).
        scaling, rotation, shearing, translation: affine ranges: factors ``U(1 -/+ scaling)``,
            angles ``U(-/+ rotation)`` degrees, shears ``U(-/+ shearing)``, shifts
            ``U(-/+ translation)`` voxels.
        nonlin_std, nonlin_scale: the velocity field's std is ``U(0, nonlin_std)`` voxels, on a
            grid of ``nonlin_scale`` x the output shape.
        integration_steps, integration_downsample: scaling-and-squaring steps and how much
            coarser than the output the field is integrated.

        morphology_rules, morphology_scale, morphology_threshold, morphology_prob: boundaries
            between label groups moved by one voxel in smooth random regions,
            ``[(grow_labels, into_labels), ...]`` (every label must be a generation label); see
            :class:`~lab2im.layers.RandomLabelMorphology`. Empty: no change.
        partitions, partition_scale, partition_prob: labels split at random into smooth parts,
            each painted with its own intensities: ``[[label, part_1, ...], ...]`` (every part
            must be a generation label); see :class:`~lab2im.layers.RandomPartition`. Empty:
            no partition.

    Intensities
        n_channels: image channels.
        prior_distribution: ``"uniform"`` (prior rows are min, max) or ``"normal"`` (mean, std).
        prior_means, prior_stds: priors of the per-class Gaussian means and stds: a pair, an
            array ``(2, n_classes)`` or ``(2 * n_channels, n_classes)``, or the path of a
            ``.npy`` file holding one (read with ``allow_pickle=False``).
        bias_std, bias_scale, bias_prob: bias field (see :class:`~lab2im.layers.RandomBiasField`).
        noise_std: additive Gaussian noise, std ``U(0, noise_std)`` intensity units.
        clip: intensity range kept before min-max normalisation to [0, 1] (``None``: no clip).
        gamma_std: gamma exponent ``exp(N(0, gamma_std))``.

    Resolution
        randomise_resolution: simulate a random acquisition resolution and slice thickness.
        max_res_iso, max_res_aniso, prob_isotropic: see
            :class:`~lab2im.layers.SimulateResolution`.
        resolution_prob: probability that a sample is degraded at all (1: every sample, as
            SynthSeg; the others keep the label maps' voxel size, so fine detail stays visible).
        blur_sigma: extra Gaussian blur ``U(0, blur_sigma)`` voxels per axis (0: none).
    """

    generation_labels: list[int]
    segmentation_labels: list[int] | None = None
    generation_classes: list[int] | None = None
    lr_pairs: list[tuple[int, int]] = field(default_factory=list)

    output_shape: tuple[int, ...] | None = None
    voxel_size: float | list[float] = 1.0
    flip_axis: int = 0
    flip_prob: float = 0.5
    scaling: float = 0.2
    rotation: float = 15.0
    shearing: float = 0.012
    translation: float = 0.0
    nonlin_std: float = 4.0
    nonlin_scale: float = 0.04
    integration_steps: int = 7
    integration_downsample: int = 4
    morphology_rules: list = field(default_factory=list)
    morphology_scale: float = 0.1
    morphology_threshold: tuple[float, float] = (0.0, 1.0)
    morphology_prob: float = 1.0
    partitions: list[list[int]] = field(default_factory=list)
    partition_scale: float = 0.125
    partition_prob: float = 1.0

    n_channels: int = 1
    prior_distribution: str = "uniform"
    prior_means: Any = (25.0, 225.0)
    prior_stds: Any = (5.0, 25.0)
    bias_std: float = 0.7
    bias_scale: float = 0.025
    bias_prob: float = 0.95
    noise_std: float = 0.0
    clip: tuple[float, float] | None = (0.0, 300.0)
    gamma_std: float = 0.5

    randomise_resolution: bool = True
    max_res_iso: float = 4.0
    max_res_aniso: float = 8.0
    prob_isotropic: float = 0.1
    resolution_prob: float = 1.0
    blur_sigma: float = 0.0

    def __post_init__(self):
        self.generation_labels = _int_list(self.generation_labels, "generation_labels")
        if not self.generation_labels:
            raise InputError("generation_labels is empty")
        if min(self.generation_labels) < 0:
            raise InputError("generation_labels must be non-negative")
        if len(set(self.generation_labels)) != len(self.generation_labels):
            raise InputError("generation_labels contains duplicates")
        n = len(self.generation_labels)
        for name in ("segmentation_labels", "generation_classes"):
            value = getattr(self, name)
            if value is not None:
                value = _int_list(value, name)
                if len(value) != n:
                    raise InputError(f"{name} has {len(value)} entries but there are {n} generation labels",
                                     _path_of(getattr(self, name)))
                setattr(self, name, value)
        self.lr_pairs = [(int(a), int(b)) for a, b in self.lr_pairs]
        self._require_generation_labels("lr_pairs", [v for p in self.lr_pairs for v in p])
        self.morphology_rules = [_morphology_rule(r) for r in self.morphology_rules]
        self._require_generation_labels("morphology_rules", [v for g, i in self.morphology_rules for v in g + i])
        self.partitions = [_int_list(p, "partitions") for p in self.partitions]
        if any(len(p) < 2 for p in self.partitions):
            raise InputError(f"each partition must be [label, part_1, ...], got {self.partitions}")
        every = [v for p in self.partitions for v in p]
        if len(set(every)) != len(every):
            raise InputError(f"partitions repeat a label: {self.partitions}")
        self._require_generation_labels("partitions", every)
        if not float(self.morphology_scale) > 0:
            raise InputError(f"morphology_scale must be > 0, got {self.morphology_scale}")
        self.morphology_threshold = t = tuple(float(v) for v in np.atleast_1d(self.morphology_threshold))
        if len(t) != 2 or not 0 <= t[0] <= t[1]:
            raise InputError(f"morphology_threshold must be (lo, hi) with 0 <= lo <= hi, got {self.morphology_threshold}")
        if not float(self.partition_scale) > 0:
            raise InputError(f"partition_scale must be > 0, got {self.partition_scale}")
        if self.output_shape is not None:
            self.output_shape = tuple(int(v) for v in self.output_shape)
            if any(v < 1 for v in self.output_shape):
                raise InputError(f"output_shape must be positive, got {self.output_shape}")
        if self.prior_distribution not in ("uniform", "normal"):
            raise InputError(f"prior_distribution must be 'uniform' or 'normal', got {self.prior_distribution!r}")
        if self.n_channels < 1:
            raise InputError("n_channels must be >= 1")
        for name in ("flip_prob", "bias_prob", "prob_isotropic", "partition_prob", "resolution_prob",
                     "morphology_prob"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("scaling", "rotation", "shearing", "translation", "nonlin_std", "bias_std",
                     "noise_std", "gamma_std", "blur_sigma"):
            if float(getattr(self, name)) < 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.clip is not None:
            self.clip = (float(self.clip[0]), float(self.clip[1]))
        # check prior shapes now, so a bad priors file fails before any model is built
        for name in ("prior_means", "prior_stds"):
            self.prior_array(name)

    # ------------------------------------------------------------------ priors
    @property
    def n_classes(self) -> int:
        return max(self.generation_classes) + 1 if self.generation_classes else len(self.generation_labels)

    def prior_array(self, name: str) -> np.ndarray:
        """The prior ``name`` as a ``(2 * n_channels, n_classes)`` array (loads ``.npy`` paths).

        Raises:
            InputError: unreadable file, or wrong shape (naming the file and the shapes accepted).
        """
        from lab2im.layers.gmm import normalise_prior

        value = getattr(self, name)
        path = _path_of(value)
        array = load_array(path, name) if path else np.asarray(value, dtype=np.float32)
        try:
            return normalise_prior(array, self.n_classes, self.n_channels, name)
        except ValueError as exc:
            raise InputError(str(exc), path) from None

    # ------------------------------------------------------------------ (de)serialisation
    def _require_generation_labels(self, name: str, values) -> None:
        """Raise :class:`InputError` naming the option ``name`` when ``values`` hold labels that are
        not generation labels."""
        missing = sorted(set(values) - set(self.generation_labels))
        if missing:
            raise InputError(f"{name} name labels that are not generation labels: {missing}")

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                v = v.tolist()
            elif isinstance(v, Path):
                v = str(v)
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        out["lr_pairs"] = [list(p) for p in self.lr_pairs]
        out["morphology_rules"] = [[list(g), list(i)] for g, i in self.morphology_rules]
        return out

    @classmethod
    def from_dict(cls, d: dict, source: str | None = None) -> "GeneratorOptions":
        """Build options from a dict; unknown keys are an error (they are usually typos)."""
        return options_from_dict(cls, d, "generator", source)

    def save(self, path: str | os.PathLike) -> None:
        """Write the options as JSON, atomically."""
        from lab2im.io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GeneratorOptions":
        try:
            d = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise InputError("no such options file", path) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"not a valid JSON options file ({exc})", path) from None
        if not isinstance(d, dict):
            raise InputError("options file must hold a JSON object", path)
        return cls.from_dict(d, source=str(path))


def check_int(value, name: str, minimum: int) -> None:
    """Raise :class:`InputError` unless ``value`` is an integer (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_number(value, name: str, minimum, maximum=None) -> None:
    """Raise :class:`InputError` unless ``value`` is a number (not a bool, not NaN) ``>= minimum``
    and, when given, ``<= maximum``."""
    bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not minimum <= value or (maximum is not None and not value <= maximum):
        raise InputError(f"{name} must be a number {bounds}, got {value!r}")


def options_from_dict(cls, d, what: str, source: str | os.PathLike | None = None):
    """Build the options dataclass ``cls`` from a mapping, strictly.

    Unknown keys are an error (they are usually typos), and so is any invalid value; both
    messages name ``source`` (e.g. the JSON file) and the kind of options (``what``).
    """
    if not isinstance(d, dict):
        raise InputError(f"{what} options must be a mapping, got {type(d).__name__}", source)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise InputError(f"unknown {what} option(s) {unknown}; known options: {sorted(known)}", source)
    try:
        return cls(**d)
    except InputError as exc:
        raise InputError(exc.problem, exc.path or source) from None
    except (TypeError, ValueError) as exc:
        raise InputError(f"invalid {what} options ({exc})", source) from None


def load_array(path: str | os.PathLike, what: str = "array") -> np.ndarray:
    """Read a ``.npy`` file safely (``allow_pickle=False``); errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} file does not exist", p)
    try:
        return np.load(p, allow_pickle=False)
    except ValueError as exc:
        raise InputError(f"{what} file is not a plain numeric .npy array ({exc})", p) from None
    except (OSError, EOFError) as exc:
        raise InputError(f"{what} file is unreadable ({exc})", p) from None


def _path_of(value) -> str | None:
    return os.fspath(value) if isinstance(value, (str, os.PathLike)) else None


def _morphology_rule(rule) -> tuple[list[int], list[int]]:
    """One ``(grow_labels, into_labels)`` rule of ``morphology_rules``, checked."""
    if (not isinstance(rule, (list, tuple)) or len(rule) != 2
            or not all(isinstance(group, (list, tuple, np.ndarray)) for group in rule)):
        raise InputError(f"each of morphology_rules must be a (grow_labels, into_labels) pair, got {rule!r}")
    grow, into = (_int_list(group, "morphology_rules") for group in rule)
    if not grow or not into or set(grow) & set(into):
        raise InputError(f"each of morphology_rules needs two disjoint, non-empty label groups, got {rule!r}")
    return grow, into


def _int_list(value, name: str) -> list[int]:
    path = _path_of(value)
    arr = load_array(path, name) if path else np.asarray(value)
    if arr.ndim != 1:
        raise InputError(f"{name} must be a 1-D list of integers, got shape {arr.shape}", path)
    if arr.size and not np.all(np.equal(np.mod(arr, 1), 0)):
        raise InputError(f"{name} must hold integers", path)
    return [int(v) for v in arr]
