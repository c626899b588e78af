"""A trained segmentation network and what it needs to run: labels, voxel size, normalisation, flip permutation; loading it from a run folder or a ``.keras`` file."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lab2im.errors import InputError
from lab2im.io import (
    short_error,
)
from lab2im.normalisation import check_method
from synthseg.inference.tiling import (
    DEFAULT_TILE,
    DEFAULT_TILE_OVERLAP,
    tiled_posteriors,
)

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"

NETWORK_FILES = ("unet_best.keras", "unet_last.keras")
#: quality-score threshold of a model whose ``options.json`` names none (:attr:`SegmentationModel.qc_threshold`)
DEFAULT_QC_THRESHOLD = 0.5


@dataclass
class SegmentationModel:
    """A trained U-Net and what prediction needs to know about it.

    Attributes:
        network: Keras model mapping ``(B, X, Y, Z, 1)`` images to ``(B, X, Y, Z, K)`` probabilities.
        labels: the ``K`` segmentation labels (FreeSurfer IDs) in channel order; 0 is background.
        lr_pairs: ``(left, right)`` label pairs swapped by a left/right flip (both in ``labels``).
        voxel_size: voxel size (mm, per axis) of the scans it was trained on.
        multiple: every input axis must be a multiple of this (``2 ** (n_levels - 1)``).
        path: where it was loaded from (``None`` for a model built in memory).
        normalisation: intensity standardisation of the scans it was trained on
            (:func:`lab2im.normalisation.normalise_intensities`: ``"percentile"`` or ``"zscore"``).
        slices: for a 2D/2.5D network trained on slices, the :class:`synthseg.training.slices.SliceSpec`
            (axis, slices per input); ``None`` for a 3D network.
        refine: refine the posteriors with the scan's own intensities by default
            (:mod:`synthseg.inference.refinement`): true for networks trained on synthetic scans
            (contrast-agnostic), false for supervised and slice runs (trained on one kind of
            scan) and for a bare network file without its run's ``options.json``.
        qc_threshold: overall quality score (:meth:`~synthseg.inference.segmentation.Segmentation.qc_scores`)
            below which a segmentation is likely a failure: the ``qc_threshold`` of
            ``options.json``'s ``prediction`` section, chosen for the network by
            ``benchmarks/qc.py`` (each network's scores run higher or lower), else
            :data:`DEFAULT_QC_THRESHOLD`.
    """

    network: object
    labels: np.ndarray
    lr_pairs: list = field(default_factory=list)
    voxel_size: np.ndarray = field(default_factory=lambda: np.ones(3))
    multiple: int = 1
    path: Path | None = None
    normalisation: str = "percentile"
    slices: object = None
    refine: bool = False
    qc_threshold: float = None

    def __post_init__(self):
        if self.qc_threshold is None:
            self.qc_threshold = DEFAULT_QC_THRESHOLD
        if isinstance(self.slices, dict):
            from synthseg.training.slices import SliceSpec

            self.slices = SliceSpec.from_dict(self.slices, self.path)
        self.labels = np.asarray(self.labels, dtype=np.int32).ravel()
        self.voxel_size = np.broadcast_to(np.asarray(self.voxel_size, dtype=np.float64), (3,)).copy()
        self.lr_pairs = [(int(a), int(b)) for a, b in self.lr_pairs]
        where = self.path
        if len(set(self.labels.tolist())) != self.labels.size:
            raise InputError("the label list has duplicates", where)
        if 0 not in self.labels:
            raise InputError("the label list has no background label 0", where)
        missing = sorted({v for p in self.lr_pairs for v in p} - set(self.labels.tolist()))
        if missing:
            raise InputError(f"left/right pairs name labels the model does not predict: {missing}", where)
        if np.any(self.voxel_size <= 0) or not np.all(np.isfinite(self.voxel_size)):
            raise InputError(f"voxel size must be positive, got {self.voxel_size.tolist()}", where)
        try:
            check_method(self.normalisation)
        except InputError as exc:
            raise InputError(exc.problem, where) from None

    @property
    def n_labels(self) -> int:
        return int(self.labels.size)

    @property
    def multiples(self) -> tuple[int, int, int]:
        """What each axis of the network's input must be a multiple of (1 across the slices of
        a slice model)."""
        m = [int(self.multiple)] * 3
        if self.slices is not None:
            m[self.slices.axis] = 1
        return tuple(m)

    @property
    def background_channel(self) -> int:
        return background_channel(self.labels)

    def flip_permutation(self) -> np.ndarray:
        """Channel order of a left/right-flipped prediction: ``flipped[..., perm]`` puts each
        label's probability back in its channel (left and right labels swapped, others kept)."""
        return lr_permutation(self.labels, self.lr_pairs)

    def label_names(self) -> list[str]:
        """FreeSurfer name of each label (``label_<id>`` for labels outside the protocol)."""
        from synthseg.data.labels import label_names

        names = label_names()
        return [names.get(int(v), f"label_{int(v)}") for v in self.labels]

    def posteriors(self, image: np.ndarray, flip: bool = True, tile_size=DEFAULT_TILE,
                   tile_overlap: int = DEFAULT_TILE_OVERLAP) -> np.ndarray:
        """Label probabilities of a normalised image whose every axis is a multiple of :attr:`multiple`.

        Args:
            image: ``(X, Y, Z)`` float array, intensities in [0, 1], RAS orientation.
            flip: average with the left/right-flipped prediction (see the module docstring).
            tile_size: largest network input per axis (voxels; rounded down to a multiple of
                :attr:`multiple`), a number or one per axis; ``None`` or 0: the whole image.
            tile_overlap: voxels over which neighbouring tiles are blended.

        Returns:
            ``(X, Y, Z, K)`` float32, summing to 1 over the last axis.
        """
        image = np.asarray(image, dtype=np.float32)
        if self.slices is not None:
            from synthseg.training.slices import slice_posteriors

            return slice_posteriors(self, image, flip)
        bad = [s for s in image.shape if s % self.multiple]
        if image.ndim != 3 or bad:
            raise InputError(f"image shape {image.shape} is not 3D with every axis a multiple of {self.multiple}")
        return tiled_posteriors(self, image, None, flip, tile_size, tile_overlap)

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        out = self.network.predict_on_batch(batch)
        return np.asarray(out, dtype=np.float32)


def background_channel(labels) -> int:
    """Channel of label 0 in a model's label list (which must hold it)."""
    return int(np.flatnonzero(np.asarray(labels) == 0)[0])


def lr_permutation(labels, lr_pairs) -> np.ndarray:
    """``perm`` with ``perm[i]`` = channel of the left/right counterpart of ``labels[i]`` (``i``
    itself for labels without one). Pairs naming labels not in ``labels`` are ignored."""
    labels = [int(v) for v in np.asarray(labels).ravel()]
    index = {v: i for i, v in enumerate(labels)}
    perm = np.arange(len(labels))
    for left, right in lr_pairs:
        if int(left) in index and int(right) in index:
            i, j = index[int(left)], index[int(right)]
            perm[i], perm[j] = j, i
    return perm


def default_model_path() -> Path:
    """The model shipped in :data:`MODELS_DIR`: a run folder or a ``.keras`` file.

    Raises:
        InputError: none is shipped, or several are (then pick one with ``--model``).
    """
    found = []
    if MODELS_DIR.is_dir():
        for p in sorted(MODELS_DIR.iterdir()):
            if p.is_dir() and any((p / n).is_file() for n in NETWORK_FILES):
                found.append(p)
            elif p.is_file() and p.suffix == ".keras":
                found.append(p)
    if not found:
        raise InputError("no trained model shipped yet; pass --model RUN_DIR (a training run folder "
                         "or its unet_last.keras)")
    preferred = [p for p in found if p.name in ("synthseg", "synthseg.keras")]
    if preferred:
        return preferred[0]
    if len(found) > 1:
        raise InputError(f"several models in {MODELS_DIR} ({', '.join(p.name for p in found)}); pass --model")
    return found[0]


def load_model(path=None) -> SegmentationModel:
    """Load a trained U-Net for prediction.

    Args:
        path: a training run folder (``options.json``, ``labels.npy`` and ``unet_best.keras``
            or ``unet_last.keras``: the best one when there is one), or a ``.keras`` file with
            ``labels.npy`` (and optionally ``options.json``) beside it; ``None``: the model
            shipped in ``models/`` (:func:`default_model_path`).

    The label order comes from ``labels.npy``; the left/right pairs from the generator's
    ``lr_pairs`` (mapped to segmentation labels; none if it had none) or, for supervised runs,
    the augmentation's; without ``options.json`` (or with no pairs in a supervised run's), the
    protocol's (:func:`synthseg.data.labels.lr_pairs`) among the model's labels; the voxel size from the generator's
    ``voxel_size`` or, for supervised runs, the median voxel size of the training scans
    (``data.voxel_size``; 1 mm when unknown, as for runs made before it was recorded); the required multiple from the U-Net options (else
    from the network's pooling layers). Keras loads the network with ``safe_mode=True`` (no
    arbitrary code). A network stored in float16 (half the file, as shipped models are) is
    computed in float32.

    Raises:
        InputError: missing or corrupt files, a network file holding Python code (refused, see
            :func:`lab2im.model.load_keras_model`), or a network whose outputs do not match the labels.
    """
    from lab2im.model import load_keras_model, network_in_dtype

    p = default_model_path() if path is None else Path(path)
    if not p.exists():
        raise InputError("no such model file or folder", p)
    if p.is_dir():
        folder = p
        found = [p / n for n in NETWORK_FILES if (p / n).is_file()]
        if not found:
            raise InputError("model folder holds no unet_best.keras or unet_last.keras (not a run folder?)", p)
        network_file = found[0]
    else:
        if p.suffix != ".keras":
            raise InputError("not a model: expected a run folder or a .keras file", p)
        folder, network_file = p.parent, p
    labels = _read_labels(folder / "labels.npy")
    options = _read_run_options(folder / "options.json")
    qc_threshold = _qc_threshold(options, network_file)
    network = load_keras_model(network_file, "the network")  # safe mode: no code in the file is run
    if any(layer.dtype_policy.name == "float16" for layer in network.layers):
        # stored in float16 (half the file): computed in float32, as CPUs have no float16 arithmetic
        network = network_in_dtype(network, "float32")
    in_shape, out_shape = network.input_shape, network.output_shape
    slices = options.get("slices")  # a 2D network trained on slices (synthseg.training.slices)
    rank, channels = (4, slices["k"]) if slices else (5, 1)
    if isinstance(in_shape, list) or len(in_shape) != rank or len(out_shape) != rank:
        raise InputError(f"not a {rank - 2}D segmentation network (input {in_shape}, output {out_shape})"
                         + (" as options.json's slices say" if slices else ""), network_file)
    if in_shape[-1] != channels:
        raise InputError(f"the network takes {in_shape[-1]}-channel images; prediction supports 1 channel"
                         + (f" ({channels} slices as channels)" if slices else ""), network_file)
    if out_shape[-1] != labels.size:
        raise InputError(f"the network has {out_shape[-1]} output channels but labels.npy lists "
                         f"{labels.size} labels", network_file)
    multiple = options.get("multiple") or 2 ** sum(
        1 for layer in network.layers if "pool" in type(layer).__name__.lower())
    pairs = options.get("lr_pairs")
    if pairs is None:
        from synthseg.data.labels import lr_pairs as protocol_pairs

        pairs = protocol_pairs()
    present = set(labels.tolist())
    pairs = [(a, b) for a, b in pairs if a in present and b in present and a != b]
    return SegmentationModel(network=network, labels=labels, lr_pairs=pairs,
                             voxel_size=options.get("voxel_size", 1.0), multiple=int(multiple),
                             path=network_file, normalisation=options.get("normalisation", "percentile"),
                             slices=slices, refine=bool(options.get("refine", False)),
                             qc_threshold=qc_threshold)


def _qc_threshold(options: dict, network_file) -> float:
    value = options.get("qc_threshold", DEFAULT_QC_THRESHOLD)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise InputError(f"qc_threshold (its prediction section) must be a number between 0 and 1, not {value!r}",
                         Path(network_file).parent / "options.json")
    return float(value)


def _read_labels(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError("no labels.npy beside the model (the label of each output channel)", path.parent)
    try:
        labels = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"labels file is unreadable ({short_error(exc)})", path) from None
    if labels.ndim != 1 or labels.size < 2 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels file must hold a 1D integer array of at least 2 labels, got "
                         f"{labels.dtype} {labels.shape}", path)
    return labels.astype(np.int32)


def _read_run_options(path: Path) -> dict:
    """What prediction needs from a run's ``options.json`` (``{}`` when there is none):
    ``voxel_size``, ``lr_pairs`` (segmentation labels; absent: use the protocol's), ``multiple``,
    ``refine`` (synthetic runs), ``qc_threshold`` (its ``prediction`` section) and, for supervised and
    slice runs, ``normalisation`` (and ``slices``)."""
    from synthseg.nn.unet import required_multiple
    from synthseg.training.run_folder import PAIR_KINDS, read_spec, unet_options

    if not path.is_file():
        return {}
    spec = read_spec(path.parent)
    out = {}
    prediction = spec.section("prediction")
    if "qc_threshold" in prediction:
        out["qc_threshold"] = prediction["qc_threshold"]
    try:
        if "unet" in spec.sections:
            out["multiple"] = required_multiple(unet_options(spec))
        if spec.kind in PAIR_KINDS:
            augmentation, data = spec.section("augmentation"), spec.section("data")
            pairs = augmentation.get("lr_pairs")
            if pairs is not None:
                out["lr_pairs"] = [(int(a), int(b)) for a, b in pairs]
            out["normalisation"] = check_method(augmentation.get("normalisation", "percentile"))
            if data.get("voxel_size") is not None:  # runs before 2026-11-23: 1 mm assumed
                out["voxel_size"] = [float(v) for v in data["voxel_size"]]
            if data.get("slices") is not None:
                from synthseg.training.slices import SliceSpec

                out["slices"] = SliceSpec.from_dict(data["slices"], path).to_dict()
        else:  # the generator's pairs, even none: they are what training swapped
            out["refine"] = True  # trained on synthetic scans of random contrast
            gen = spec.section("generator")
            from lab2im.options import GeneratorOptions

            unknown = sorted(set(gen) - {f.name for f in dataclasses.fields(GeneratorOptions)})
            if unknown:  # as GeneratorOptions.from_dict would say (the priors' files need not exist here)
                raise InputError(f"unknown generator option(s) {unknown}", path)
            out["voxel_size"] = gen.get("voxel_size", 1.0)
            generation = [int(v) for v in gen["generation_labels"]]
            seg = gen.get("segmentation_labels") or generation
            to_seg = {g: int(s) for g, s in zip(generation, seg)}
            out["lr_pairs"] = [(to_seg.get(int(a), int(a)), to_seg.get(int(b), int(b)))
                               for a, b in gen.get("lr_pairs") or []]
        vs = np.broadcast_to(np.asarray(out.get("voxel_size", 1.0), dtype=np.float64), (3,))
    except InputError as exc:
        raise InputError(exc.problem, exc.path or path) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"options file lacks or garbles a section ({short_error(exc)})", path) from None
    if np.any(vs <= 0):
        raise InputError(f"voxel_size must be positive, got {vs.tolist()}", path)
    return out
