"""Segment real scans of any contrast and resolution with a trained U-Net (``mri_synthseg``'s job).

    >>> from synthseg.predict import load_model, predict
    >>> model = load_model("runs/mine")          # a run folder, or a .keras file beside labels.npy
    >>> report = predict("scans/", "segs/", model, vol="volumes.csv", qc="qc.csv", png="png/")
    >>> report.failed                             # [(path, problem), ...]: the scans that could not be done

Per scan (:func:`segment_volume` does steps 2-9 on a :class:`~lab2im.io.Volume` in memory):

1. **Read** a NIfTI or MGZ file (:func:`read_scan`). A 4D image keeps its *first* volume (the
   only one read; with a warning when there are several); a file whose first volume has more
   than :data:`lab2im.io.MAX_VOXELS` voxels (refused from its header, before reading), a 2D
   image or a single voxel, an axis under :data:`MIN_VOXELS` voxels, NaN or
   infinite voxels, or an empty image (every voxel equal, e.g. all zero) are errors: the scan
   is reported and skipped. NaN/Inf voxels are *not* silently replaced: the header or the
   processing that produced them is usually wrong; set them to 0 yourself if they are only
   outside the head.
2. **Reorient** to canonical RAS (voxels moved, never interpolated; recorded, see
   :func:`lab2im.geometry.reorient_to_canonical`).
3. **Resample** to the model's voxel size (the generator's ``voxel_size``, 1 mm by default;
   anti-aliased, linear) when any axis is outside [0.95, 1.05] x that size. The result is the
   *network grid*.
4. **Normalise** intensities with :func:`lab2im.normalisation.normalise_intensities`, the
   function training used: the 0.5th and 99.5th percentiles (of the whole network grid) go
   to 0 and 1, clipped to [0, 1]; for a supervised model trained with
   ``normalisation="zscore"``, then a z-score within the foreground (background 0).
5. **Crop or pad** (centred, recorded; padding is 0) to a multiple of the U-Net's
   :func:`~synthseg.unet.required_multiple`; with ``crop``, to that size around the centre
   (rounded up to the multiple): voxels outside are background.
6. **U-Net** posteriors, in overlapping tiles of at most ``tile_size`` voxels per axis
   (blended with weights that fall off linearly over the ``tile_overlap`` voxels at each tile
   edge; a volume that fits in one tile is predicted whole). This bounds memory: the SynthSeg
   U-Net needs about 1.3 kB per voxel of its input on the CPU (TensorFlow), so a whole 1 mm
   head at once (208 x 240 x 208 after padding) would need about 14 GB; with the default
   112-voxel tiles a 193 x 229 x 193 scan peaks at about 3.5 GiB (``benchmarks/predict.py``).
   A 2D/2.5D model (trained on slices, :mod:`synthseg.slices`) is instead run slice by slice
   across its axis, in batches, and the network grid is padded in the slice plane only.
7. **Flip averaging** (``flip=True``): each tile is also predicted left/right flipped (array
   axis 0, which is L-R after step 2); that prediction is flipped back, its left and right
   label channels are swapped (:meth:`SegmentationModel.flip_permutation`) and it is averaged
   with the direct one.
8. **Clean-up** (``cleanup=True``, :func:`clean_posteriors`): first the whole brain (voxels
   whose non-background posteriors sum to more than 0.25) keeps only its largest connected
   component, so stray "brain" in the face or neck becomes background; then every structure
   keeps only its largest connected component (26-connectivity); the posterior of a removed voxel for that
   structure is set to 0 and the voxel's posteriors are renormalised, so it goes to its next
   most likely label (voxels that would then form a stray part of that label go to
   background). Background voxels enclosed by the brain (holes, including those) get the
   label of the nearest structure. Changed voxels' posteriors are kept consistent: the
   segmentation is always the argmax of the saved posteriors.
9. **Back to the native grid** (``keep_native=True``): labels are mapped to the input's own
   grid (shape, affine, header) through world coordinates: exactly (only moving voxels) when
   nothing was resampled, else the posteriors are interpolated linearly and each voxel takes
   the most likely label (smooth boundaries finer than the network's voxels). With
   ``keep_native=False`` every output stays on the network grid (canonical RAS, model voxel size).

Outputs (each written atomically: a killed run never leaves a half-written file):

* segmentation: ``int32`` labels (FreeSurfer IDs); a folder gets ``<name>_synthseg.nii.gz``;
* ``post``: posteriors, 4D float32, one channel per label in :attr:`SegmentationModel.labels`
  order (``<name>_posteriors.nii.gz``);
* ``resample``: the image the network saw, on the network grid, intensities normalised
  (step 4) (``<name>_resampled.nii.gz``);
* ``vol``: CSV, one row per scan: ``subject``, ``total intracranial`` (sum of every
  non-background structure) and one column per structure (FreeSurfer names), in mm³. Volumes
  are **soft**: the sum of the (cleaned) posteriors on the network grid times the voxel volume,
  as ``mri_synthseg`` reports them (more precise than counting voxels of a thick-slice grid);
* ``qc``: CSV, one row per scan: ``qc`` (a score in [0, 1]: the mean over the structures
  present of the mean, inside the predicted structure, of the highest posterior of each voxel,
  i.e. how sure the network was; 0 when no structure is found) and the same score per structure;
* ``png``: the mid sagittal, coronal and axial slices of the network's image with the labels
  in FreeSurfer colours (``<name>_synthseg.png``).

Batches: scans are read and preprocessed in a background thread while the previous one is
segmented; a scan that fails is reported (file and problem) and skipped, the others finish,
and :class:`PredictReport` lists the failures (the CLI then exits with status 1);
``skip_existing`` skips the scans whose outputs (CSV rows included) are all there, so a killed
batch can be re-run (the temporary files a ``kill -9`` left behind are removed first). A
failed write (disk full) is reported like a bad scan, naming the file; the older file of that
name, if any, is left as it was.
"""
from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from lab2im.errors import InputError
from lab2im.geometry import (
    Reorientation,
    argmax_on_grid,
    reorient_to_canonical,
    resample_to_grid,
    resample_volume,
    resampled_grid,
)
from lab2im.io import (
    INPUT_SUFFIXES,
    NRRD_SUFFIXES,
    VOLUME_SUFFIXES,
    Volume,
    atomic_write_text,
    check_folder_writable,
    dimension_problem,
    has_input_suffix,
    has_volume_suffix,
    list_volume_files,
    load_volume,
    make_writable_folder,
    remove_stale_temporaries,
    save_volume,
    short_error,
    strip_volume_suffix,
    voxel_size_of,
)
from lab2im.io import check_image as check_scan
from lab2im.normalisation import PERCENTILES, check_method, normalise_intensities  # noqa: F401 (re-exported)
from lab2im.volumes import CropPad, crop_or_pad, merge_stray_components, pad_to_multiple

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
NETWORK_FILES = ("unet_best.keras", "unet_last.keras")
MIN_VOXELS = 8
VOXEL_SIZE_TOLERANCE = 0.05
MAX_FIELD_OF_VIEW_MM = 512.0
DEFAULT_TILE = 112
DEFAULT_TILE_OVERLAP = 16
CLEANUP_ROUNDS = 1
NATIVE_SLAB = 16  # voxels per slab along the first axis when mapping posteriors back (memory)
#: overall quality scores below this are likely failures (:meth:`Segmentation.qc_scores`;
#: chosen on synthetic scans by benchmarks/qc.py)
QC_THRESHOLD = 0.5
SEG_SUFFIX, POST_SUFFIX, RESAMPLED_SUFFIX = "_synthseg", "_posteriors", "_resampled"


# ----------------------------------------------------------------------------- the model
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
        slices: for a 2D/2.5D network trained on slices, the :class:`synthseg.slices.SliceSpec`
            (axis, slices per input); ``None`` for a 3D network.
    """

    network: object
    labels: np.ndarray
    lr_pairs: list = field(default_factory=list)
    voxel_size: np.ndarray = field(default_factory=lambda: np.ones(3))
    multiple: int = 1
    path: Path | None = None
    normalisation: str = "percentile"
    slices: object = None

    def __post_init__(self):
        if isinstance(self.slices, dict):
            from synthseg.slices import SliceSpec

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
        from synthseg.labels import label_names

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
            from synthseg.slices import slice_posteriors

            return slice_posteriors(self, image, flip)
        bad = [s for s in image.shape if s % self.multiple]
        if image.ndim != 3 or bad:
            raise InputError(f"image shape {image.shape} is not 3D with every axis a multiple of {self.multiple}")
        return _tiled_posteriors(self, image, None, flip, tile_size, tile_overlap)

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
    protocol's (:func:`synthseg.labels.lr_pairs`) among the model's labels; the voxel size from the generator's
    ``voxel_size`` or, for supervised runs, the median voxel size of the training scans
    (``data.voxel_size``; 1 mm when unknown, as for runs made before it was recorded); the required multiple from the U-Net options (else
    from the network's pooling layers). Keras loads the network with ``safe_mode=True`` (no
    arbitrary code).

    Raises:
        InputError: missing or corrupt files, a network file holding Python code (refused, see
            :func:`lab2im.model.load_keras_model`), or a network whose outputs do not match the labels.
    """
    from lab2im.model import load_keras_model

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
    network = load_keras_model(network_file, "the network")  # safe mode: no code in the file is run
    in_shape, out_shape = network.input_shape, network.output_shape
    slices = options.get("slices")  # a 2D network trained on slices (synthseg.slices)
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
        from synthseg.labels import lr_pairs as protocol_pairs

        pairs = protocol_pairs()
    present = set(labels.tolist())
    pairs = [(a, b) for a, b in pairs if a in present and b in present and a != b]
    return SegmentationModel(network=network, labels=labels, lr_pairs=pairs,
                             voxel_size=options.get("voxel_size", 1.0), multiple=int(multiple),
                             path=network_file, normalisation=options.get("normalisation", "percentile"),
                             slices=slices)


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
    ``voxel_size``, ``lr_pairs`` (segmentation labels; absent: use the protocol's), ``multiple``
    and, for supervised runs, ``normalisation``."""
    from synthseg.unet import UNetOptions, required_multiple

    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"options file is unreadable ({short_error(exc)})", path) from None
    if not isinstance(d, dict):
        raise InputError("options file does not hold a JSON object", path)
    out = {}
    try:
        if "unet" in d:
            out["multiple"] = required_multiple(UNetOptions.from_dict(d["unet"], source=str(path)))
        if d.get("kind") == "supervised":
            pairs = (d.get("augmentation") or {}).get("lr_pairs")
            if pairs is not None:
                out["lr_pairs"] = [(int(a), int(b)) for a, b in pairs]
            out["normalisation"] = check_method((d.get("augmentation") or {}).get("normalisation", "percentile"))
            if (d.get("data") or {}).get("voxel_size") is not None:  # runs before 2026-11-23: 1 mm assumed
                out["voxel_size"] = [float(v) for v in d["data"]["voxel_size"]]
            slices = (d.get("data") or {}).get("slices")
            if slices is not None:
                from synthseg.slices import SliceSpec

                out["slices"] = SliceSpec.from_dict(slices, path).to_dict()
        elif "generator" in d:  # the generator's pairs, even none: they are what training swapped
            gen = d["generator"]
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


# ----------------------------------------------------------------------------- reading
def read_scan(path) -> tuple[Volume, list[str]]:
    """Read a scan as a 3D float32 :class:`~lab2im.io.Volume`, applying the input rules.

    Returns:
        ``(volume, warnings)``: a 4D image gives its first volume, the only one read from the
        file (a warning says so when the 4th axis has more than one).

    Raises:
        InputError: unreadable file, more voxels than :data:`lab2im.io.MAX_VOXELS` in the first
            volume, 2D image (or a single voxel), an axis under :data:`MIN_VOXELS` voxels, NaN
            or infinite voxels, an empty image.
    """
    vol = load_volume(path, dtype=np.float32, first_volume=True)
    get_shape = getattr(vol.header, "get_data_shape", None)
    full = tuple(int(n) for n in get_shape()) if get_shape is not None else vol.data.shape
    data, warnings = first_volume(vol.data, vol.path)
    if len(full) > 3 and int(np.prod(full[3:])) > 1 and not warnings:
        warnings.append(f"image is {len(full)}D (shape {full}); segmenting its first volume only")
    vol.data = data
    check_image(data, vol.path)
    return vol, warnings


def first_volume(data: np.ndarray, path=None) -> tuple[np.ndarray, list[str]]:
    """The 3D image of ``data``: itself, or the first volume of a 4D (or more) image."""
    warnings = []
    if data.ndim > 3:
        extra = int(np.prod(data.shape[3:]))
        if extra > 1:
            warnings.append(f"image is {data.ndim}D (shape {data.shape}); segmenting its first volume only")
        data = data.reshape(data.shape[:3] + (extra,))[..., 0]
    problem = dimension_problem(data.shape)
    if problem:
        raise InputError(problem, path)
    return np.ascontiguousarray(data), warnings


def check_image(data: np.ndarray, path=None) -> None:
    """Raise :class:`InputError` for an image too small (an axis under :data:`MIN_VOXELS`
    voxels), with NaN/Inf voxels, or empty (:func:`lab2im.io.check_image`)."""
    check_scan(data, path, min_voxels=MIN_VOXELS)


# ----------------------------------------------------------------------------- preprocessing
@dataclass
class Prepared:
    """A scan ready for the network, and the record of every geometric change.

    Attributes:
        name: the scan's name (file name without suffix).
        path: where it was read from (``None`` for in-memory volumes).
        image: normalised image on the network grid, ``(X, Y, Z)`` float32 in [0, 1].
        affine: ``(4, 4)`` affine of the network grid (canonical RAS, model voxel size).
        window: the crop/pad from the network grid to the network's input.
        reorientation: how the native array was reoriented.
        resampled: whether the canonical grid was resampled (else the network grid is it).
        native_shape, native_affine, native_header: the input's own grid.
        warnings: messages about the input (e.g. the 4D rule).
        canonical_image: the input's intensities reoriented to RAS, not resampled (the grid
            of :meth:`Segmentation.canonical_segmentation`; for figures at the scan's own resolution).
    """

    name: str
    path: Path | None
    image: np.ndarray
    affine: np.ndarray
    window: CropPad
    reorientation: Reorientation
    resampled: bool
    native_shape: tuple
    native_affine: np.ndarray
    native_header: object
    warnings: list = field(default_factory=list)
    canonical_image: np.ndarray | None = None


def prepare_volume(volume: Volume, model: SegmentationModel, crop=None, name: str | None = None,
                   warnings=()) -> Prepared:
    """Steps 2-5 of the pipeline (reorient, resample, crop/pad, normalise) on a 3D volume."""
    path = volume.path
    data, more = first_volume(np.asarray(volume.data, dtype=np.float32), path)
    check_image(data, path)
    native = Volume(data=data, affine=np.asarray(volume.affine, np.float64), header=volume.header, path=path)
    canonical, reo = reorient_to_canonical(native)
    canonical_image = canonical.data
    ratio = canonical.voxel_size / model.voxel_size
    resampled = bool(np.any(np.abs(ratio - 1) > VOXEL_SIZE_TOLERANCE))
    fov = np.asarray(canonical.shape[:3]) * canonical.voxel_size
    if np.any(fov > MAX_FIELD_OF_VIEW_MM):
        raise InputError(f"field of view {np.round(fov, 1).tolist()} mm is larger than {MAX_FIELD_OF_VIEW_MM:g} "
                         "mm: check the voxel size in the header, or crop the scan", path)
    if resampled:
        shape, _ = resampled_grid(canonical.shape, canonical.affine, model.voxel_size)
        if min(shape) < MIN_VOXELS:
            raise InputError(f"field of view {np.round(fov, 1).tolist()} mm is too small for "
                             f"{model.voxel_size.tolist()} mm voxels: check the voxel size in the header", path)
        canonical = resample_volume(canonical, model.voxel_size, order=1, anti_alias=True)
    image = normalise_intensities(canonical.data, model.normalisation)
    window = _window(image.shape, model.multiples, crop)
    return Prepared(name=name or (strip_volume_suffix(Path(path).name) if path else "scan"),
                    path=Path(path) if path else None, image=image, affine=canonical.affine,
                    window=window, reorientation=reo, resampled=resampled, native_shape=tuple(data.shape),
                    native_affine=native.affine, native_header=volume.header,
                    warnings=list(warnings) + more, canonical_image=canonical_image)


def _window(shape, multiple, crop) -> CropPad:
    """The centred crop/pad from a grid of ``shape`` to the network's input shape (``multiple``:
    one number, or one per axis)."""
    if crop is None:
        return pad_to_multiple(np.zeros(shape, np.uint8), multiple)[1]
    sizes = np.broadcast_to(np.asarray(crop, dtype=np.int64), (3,))
    multiples = np.broadcast_to(np.asarray(multiple, dtype=np.int64), (3,))
    target = tuple(int(-(-s // m) * m) for s, m in zip(sizes, multiples))
    return crop_or_pad(np.zeros(shape, np.uint8), target)[1]


def parse_crop(crop) -> tuple[int, int, int] | None:
    """``crop`` as three positive ints (``None`` stays ``None``)."""
    if crop is None:
        return None
    try:
        values = [int(v) for v in np.atleast_1d(np.asarray(crop)).ravel()]
    except (TypeError, ValueError):
        raise InputError(f"crop must be 1 or 3 positive integers, got {crop!r}") from None
    if len(values) not in (1, 3) or min(values) < 1:
        raise InputError(f"crop must be 1 or 3 positive integers (voxels), got {crop!r}")
    return tuple(values * 3 if len(values) == 1 else values)


# ----------------------------------------------------------------------------- network
def _tile_starts(size: int, tile: int, overlap: int, multiple: int) -> tuple[int, list[int]]:
    """Tile length and start positions covering ``[0, size)`` with tiles of at most ``tile``."""
    if tile <= 0 or size <= tile:
        return size, [0]
    overlap = min(max(int(overlap), 0), tile - multiple)
    n = math.ceil((size - overlap) / (tile - overlap))
    length = min(tile, -(-math.ceil((size + (n - 1) * overlap) / n) // multiple) * multiple)
    starts = np.round(np.linspace(0, size - length, n)).astype(int).tolist()
    return length, starts


def _ramp(length: int, overlap: int, whole: bool) -> np.ndarray:
    """1D blending weights of a tile: 1 inside, falling linearly (to ~0) over ``overlap`` voxels."""
    if whole or overlap <= 0:
        return np.ones(length, np.float32)
    i = np.arange(length)
    return np.minimum(1.0, (np.minimum(i, length - 1 - i) + 1) / (overlap + 1)).astype(np.float32)


def _tiled_posteriors(model: SegmentationModel, image: np.ndarray, window: CropPad | None, flip: bool,
                      tile_size, tile_overlap: int) -> np.ndarray:
    """Posteriors of ``image`` (the network input), on the grid ``window`` maps from (or on the
    input's grid); voxels no tile covers (cropped away) are background."""
    m = model.multiple
    tiles = np.broadcast_to(np.asarray(0 if tile_size is None else tile_size, dtype=np.int64), (3,))
    tiles = [int(t) // m * m if t > 0 else 0 for t in tiles]
    tiles = [max(t, m) if t > 0 else 0 for t in tiles]
    out_shape = tuple(image.shape if window is None else window.original_shape)
    offset = (0, 0, 0) if window is None else window.offset
    K = model.n_labels
    acc = np.zeros(out_shape + (K,), np.float32)  # the only full-size array
    plan = [_tile_starts(s, t, tile_overlap, m) for s, t in zip(image.shape, tiles)]
    # per axis, blending weights of each tile normalised to sum to 1 over the tiles (a partition
    # of unity): their outer products then sum to 1 at every voxel, no division needed
    weights, covered = [], []
    for (length, starts), size, o, n in zip(plan, image.shape, offset, out_shape):
        ramp = _ramp(length, tile_overlap, len(starts) == 1)
        total = np.zeros(size, np.float32)
        for s0 in starts:
            total[s0:s0 + length] += ramp
        weights.append([ramp / total[s0:s0 + length] for s0 in starts])
        inside = np.zeros(n, bool)  # output voxels under a tile (false: cropped away)
        inside[max(0, o):min(n, size + o)] = True
        covered.append(inside)
    perm = model.flip_permutation()
    for ix, sx in enumerate(plan[0][1]):
        for iy, sy in enumerate(plan[1][1]):
            for iz, sz in enumerate(plan[2][1]):
                start = (sx, sy, sz)
                src = tuple(slice(s, s + length) for s, (length, _) in zip(start, plan))
                # the tile's part that lands inside the output grid
                lo = [max(0, -(s + o)) for s, o in zip(start, offset)]
                hi = [min(length, n - (s + o)) for (length, _), s, o, n in zip(plan, start, offset, out_shape)]
                if any(b <= a for a, b in zip(lo, hi)):
                    continue
                part = tuple(slice(a, b) for a, b in zip(lo, hi))
                dst = tuple(slice(s + o + a, s + o + b) for s, o, a, b in zip(start, offset, lo, hi))
                wx, wy, wz = (weights[a][i][lo[a]:hi[a]] for a, i in enumerate((ix, iy, iz)))
                w = wx[:, None, None] * wy[None, :, None] * wz[None, None, :]
                if flip:
                    w *= 0.5
                x = image[src][None, ..., None]
                # accumulate each prediction before the next network call: the network's
                # activations are the memory peak, nothing else of size tile x K is alive then
                p = model._predict(x)[0][part]
                p *= w[..., None]
                acc[dst] += p
                del p
                if flip:
                    x = np.ascontiguousarray(x[:, ::-1])
                    p = model._predict(x)[0][::-1][part]  # back to the input's orientation (a view)
                    target = acc[dst]
                    for c, source in enumerate(perm):  # left and right channels swapped
                        target[..., c] += p[..., source] * w
                    del p, target
    for axis, inside in enumerate(covered):  # cropped away: background
        if not inside.all():
            index = [slice(None)] * 3
            index[axis] = ~inside
            acc[tuple(index)] = 0
            acc[tuple(index) + (model.background_channel,)] = 1
    return acc


# ----------------------------------------------------------------------------- clean-up
#: a voxel belongs to the brain mask of :func:`keep_largest_brain` where its posteriors of
#: all structures but the background sum to more than this (SynthSeg's value)
BRAIN_THRESHOLD = 0.25


def keep_largest_brain(post: np.ndarray, background: int = 0, threshold: float = BRAIN_THRESHOLD) -> int:
    """Keep the brain in one piece: voxels outside the largest connected component (26-connectivity)
    of the brain mask (non-background posterior above ``threshold``) become background, in
    place on ``post`` (one-hot). Structures wrongly found in the face or neck, away from the
    brain, go with them.

    Args:
        post: ``(X, Y, Z, K)`` posteriors, modified in place.
        background: channel of the background.
        threshold: brain-mask threshold on ``1 - post[..., background]``.

    Returns:
        the number of voxels set to background.
    """
    brain = post[..., background] < 1.0 - threshold
    box = _box(brain)
    if box is None:
        return 0
    components, count = ndimage.label(brain[box], ndimage.generate_binary_structure(3, 3))
    if count <= 1:
        return 0
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    sizes[0] = 0
    outside = (components != int(np.argmax(sizes))) & (components > 0)
    sub = post[box]
    values = np.zeros((int(outside.sum()), post.shape[-1]), post.dtype)
    values[:, background] = 1
    sub[outside] = values
    return int(outside.sum())


def clean_posteriors(post: np.ndarray, background: int = 0, rounds: int = CLEANUP_ROUNDS) -> np.ndarray:
    """Clean a segmentation: the brain in one piece (:func:`keep_largest_brain`), then one connected
    component per structure, no holes (in place on ``post``).

    Args:
        post: ``(X, Y, Z, K)`` posteriors, modified in place.
        background: channel of the background.
        rounds: rounds of "remove stray components, renormalise"; voxels still stray after
            them become background (then, if enclosed, the nearest structure).

    Returns:
        ``(X, Y, Z)`` int32 channel indices, the argmax of the cleaned ``post``: every channel
        but the background is one connected component (26-connectivity; filled holes join
        the nearest structure, which borders them in all but contrived cases), and no
        background voxel is enclosed by the other channels (6-connected background).
    """
    K = post.shape[-1]
    keep_largest_brain(post, background)
    idx = np.argmax(post, axis=-1).astype(np.int32)
    structure = ndimage.generate_binary_structure(3, 3)
    todo = set(range(K)) - {background}
    for round_ in range(rounds + 1):
        last = round_ == rounds
        boxes = ndimage.find_objects(idx + 1, max_label=K)
        gained = set()  # labels that received voxels: only they can have new stray parts
        for c in sorted(todo):
            box = boxes[c]
            if box is None:
                continue
            region = idx[box]
            mask = region == c
            components, count = ndimage.label(mask, structure)
            if count <= 1:
                continue
            sizes = np.bincount(components.ravel(), minlength=count + 1)
            sizes[0] = 0
            stray = components != int(np.argmax(sizes))
            stray &= mask
            del components, mask
            sub = post[box]
            values = sub[stray]
            if last:
                values[:] = 0
                values[:, background] = 1
            else:
                values[:, c] = 0
                total = values.sum(axis=-1, keepdims=True)
                empty = total[:, 0] <= 0
                values /= np.where(total > 0, total, 1)
                values[empty, background] = 1
            sub[stray] = values
            new = np.argmax(values, axis=-1).astype(np.int32)
            region[stray] = new
            gained.update(np.unique(new).tolist())
        todo = gained - {background}
        if not todo:
            break
    # holes: background voxels enclosed by the brain get the label of the nearest structure
    foreground = idx != background
    holes = ndimage.binary_fill_holes(foreground) & ~foreground
    box = _box(holes, margin=1)
    if box is not None:
        fg = foreground[box]
        _, nearest = ndimage.distance_transform_edt(~fg, return_indices=True)
        hole = holes[box]
        region = idx[box]
        fill = region[tuple(n[hole] for n in nearest)]
        region[hole] = fill
        sub = post[box]
        values = np.zeros((fill.size, K), np.float32)
        values[np.arange(fill.size), fill] = 1
        sub[hole] = values
    return idx


def structure_volumes(post: np.ndarray, channels: np.ndarray, background: int = 0) -> np.ndarray:
    """Soft voxel count of each channel (see :meth:`Segmentation.volumes`), float64 ``(K,)``.

    Args:
        post: ``(X, Y, Z, K)`` posteriors.
        channels: ``(X, Y, Z)`` segmentation (channel indices) made from them.
        background: channel of the background; its entry is its voxel count.
    """
    K = post.shape[-1]
    structure = ndimage.generate_binary_structure(3, 3)
    boxes = ndimage.find_objects(channels + 1, max_label=K)
    foreground = channels != background
    regions = {}  # channel -> (box, voxels where it counts: found there or next to it)
    total = np.zeros(channels.shape, np.float64)
    for c, box in enumerate(boxes):
        if box is None or c == background:
            continue
        box = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, channels.shape))
        region = ndimage.binary_dilation(channels[box] == c, structure) & foreground[box]
        regions[c] = (box, region)
        total[box][region] += post[box][..., c][region]
    total[total <= 0] = 1.0  # unreachable for an argmax segmentation; no division by zero
    sums = np.zeros(K, np.float64)
    for c, (box, region) in regions.items():
        sums[c] = float(np.sum(post[box][..., c][region] / total[box][region]))
    sums[background] = float(np.sum(~foreground))
    return sums


def _box(mask: np.ndarray, margin: int = 0):
    nz = np.nonzero(mask)
    if nz[0].size == 0:
        return None
    return tuple(slice(max(int(i.min()) - margin, 0), min(int(i.max()) + 1 + margin, n))
                 for i, n in zip(nz, mask.shape))


# ----------------------------------------------------------------------------- segmentation
@dataclass
class Segmentation:
    """The result of :func:`segment_volume` for one scan.

    Attributes:
        prepared: the preprocessed scan (network grid, records of every geometric change).
        channels: ``(X, Y, Z)`` int32 channel index of each voxel on the network grid.
        posteriors: ``(X, Y, Z, K)`` float32 on the network grid (after clean-up).
        labels: the model's labels (channel order).
        cleaned: the clean-up ran (:func:`clean_posteriors`); the native-grid labels are then
            cleaned too.
        raw_counts: ``(K,)`` voxels of each channel in the network's argmax before the clean-up
            (for :meth:`qc_scores`; ``None``: as after it).
    """

    prepared: Prepared
    channels: np.ndarray
    posteriors: np.ndarray
    labels: np.ndarray
    cleaned: bool = True
    raw_counts: np.ndarray | None = None

    @property
    def affine(self) -> np.ndarray:
        """Affine of the network grid (canonical RAS, model voxel size)."""
        return self.prepared.affine

    @property
    def background_channel(self) -> int:
        return background_channel(self.labels)

    @property
    def segmentation(self) -> np.ndarray:
        """Labels (FreeSurfer IDs, int32) on the network grid."""
        return self.labels[self.channels]

    def native_segmentation(self) -> np.ndarray:
        """Labels on the input's own grid (its shape and affine): :meth:`canonical_segmentation`
        with the input's axes."""
        return self.prepared.reorientation.undo(self.canonical_segmentation())

    def canonical_segmentation(self) -> np.ndarray:
        """Labels on the input's grid reoriented to RAS (its voxels, canonical axes).

        When nothing was resampled the labels are only moved (exact). Otherwise each native
        voxel gets the most likely label of the posteriors interpolated linearly at its centre
        (so the result is the argmax of :meth:`native_posteriors`): a model coarser than the
        scan gives smooth, sub-voxel boundaries instead of blocks of network voxels. Computed in
        slabs of :data:`NATIVE_SLAB` voxels (:func:`lab2im.geometry.argmax_on_grid`) to bound memory.
        """
        prep = self.prepared
        if not prep.resampled:
            return self.segmentation
        reo = prep.reorientation
        channels = argmax_on_grid(self.posteriors, prep.affine, reo.canonical_shape, reo.canonical_affine,
                                  fill=self.background_channel, slab=NATIVE_SLAB)
        if self.cleaned:  # interpolation leaves islands at boundaries: one piece per structure here too
            channels = merge_stray_components(channels, self.background_channel)
        return self.labels[channels]

    def native_posteriors(self) -> np.ndarray:
        """Posteriors on the input's own grid (linear interpolation when it was resampled)."""
        out = self._to_native(self.posteriors, order=1)
        if self.prepared.resampled:
            outside = out.sum(axis=-1) <= 0
            out[outside, self.background_channel] = 1
        return out

    def _to_native(self, data: np.ndarray, order: int) -> np.ndarray:
        prep = self.prepared
        if not prep.resampled:  # the network grid is the canonical grid: only move voxels
            return prep.reorientation.undo(data)
        return resample_to_grid(data, prep.affine, prep.native_shape, prep.native_affine, order=order, fill=0)

    @property
    def voxel_volume(self) -> float:
        """Volume of one network-grid voxel (mm³)."""
        return float(np.prod(voxel_size_of(self.affine)))

    def volumes(self) -> dict[int, float]:
        """Soft volume of each label (mm³), consistent with the segmentation.

        Only voxels segmented as a structure count (the background's posteriors, and those of
        voxels the clean-up removed, do not), and in each of them only the structures found in
        it or next to it (26-neighbours): a structure's posterior spread thinly far from where
        it was found does not count. Each counted voxel's posteriors are renormalised over
        those structures, so it contributes exactly one voxel volume: the structures' volumes
        sum to the segmented volume, and each is its voxel count give or take the partial
        volume at its boundary. The background's entry is its voxel count.
        """
        sums = structure_volumes(self.posteriors, self.channels, self.background_channel)
        return {int(label): float(s) * self.voxel_volume for label, s in zip(self.labels, sums)}

    def total_intracranial_volume(self) -> float:
        """Sum of the soft volumes of every non-background label (mm³): the segmented volume."""
        return float(sum(v for label, v in self.volumes().items() if label != 0))

    def qc_scores(self) -> tuple[float, dict[str, float | None]]:
        """Quality score of the segmentation, per structure group (:data:`synthseg.labels.QC_GROUPS`)
        and overall, each in [0, 1].

        A group's score is its *confidence* (mean over its voxels of the margin between the
        highest and the second-highest posterior) times its *coherence* (the share of the
        voxels the network gave to the group that the clean-up kept: a scattered, fragmented
        prediction loses much). A group the model segments but did not find scores 0. The
        overall score is the mean over the groups the model segments; a scan scoring below
        :data:`QC_THRESHOLD` is likely a failure (``benchmarks/qc.py`` measures how the scores
        follow the true Dice on good and degraded scans).

        Returns:
            ``(overall score, {group name: score, or None when the model has no label of it})``.
        """
        from synthseg.labels import QC_GROUPS

        post, channels = self.posteriors, self.channels
        top2 = np.partition(post, post.shape[-1] - 2, axis=-1)[..., -2:]
        margin = (top2[..., 1] - top2[..., 0]).ravel()
        K = self.labels.size
        flat = channels.ravel()
        counts = np.bincount(flat, minlength=K)
        margins = np.bincount(flat, weights=margin, minlength=K)
        raw = counts if self.raw_counts is None else self.raw_counts
        per = {}
        for name, ids in QC_GROUPS.items():
            cs = [c for c, label in enumerate(self.labels) if int(label) in ids]
            if not cs:
                per[name] = None
                continue
            n, n_raw = counts[cs].sum(), raw[cs].sum()
            per[name] = float(margins[cs].sum() / n * min(1.0, n / n_raw)) if n and n_raw else 0.0
        scored = [v for v in per.values() if v is not None]
        return (float(np.mean(scored)) if scored else 0.0), per


def segment_volume(volume: Volume, model: SegmentationModel, flip: bool = True, crop=None, cleanup: bool = True,
                   tile_size=DEFAULT_TILE, tile_overlap: int = DEFAULT_TILE_OVERLAP) -> Segmentation:
    """Segment one scan held in memory (steps 2-8 of the module docstring).

    Args:
        volume: 3D (or 4D: first volume) :class:`~lab2im.io.Volume` with its affine.
        model: from :func:`load_model`.
        flip, crop, cleanup, tile_size, tile_overlap: as in :func:`predict`.

    Returns:
        A :class:`Segmentation` (map to the input's grid with its ``native_*`` methods).
    """
    return _segment(prepare_volume(volume, model, parse_crop(crop)), model, flip, cleanup, tile_size, tile_overlap)


def _segment(prep: Prepared, model: SegmentationModel, flip: bool, cleanup: bool, tile_size,
             tile_overlap: int) -> Segmentation:
    image = prep.window.apply(prep.image, 0.0)
    if model.slices is not None:
        from synthseg.slices import slice_posteriors

        post = slice_posteriors(model, image, flip, prep.window)
    else:
        post = _tiled_posteriors(model, image, prep.window, flip, tile_size, tile_overlap)
    raw = np.bincount(np.argmax(post, axis=-1).ravel(), minlength=post.shape[-1])
    if cleanup:
        channels = clean_posteriors(post, model.background_channel)
    else:
        channels = np.argmax(post, axis=-1).astype(np.int32)
    return Segmentation(prepared=prep, channels=channels, posteriors=post, labels=model.labels, cleaned=cleanup,
                        raw_counts=raw)


# ----------------------------------------------------------------------------- batch prediction
@dataclass
class PredictReport:
    """What :func:`predict` did.

    Attributes:
        done: inputs segmented.
        skipped: inputs skipped because their outputs existed (``skip_existing``).
        failed: ``(input, problem)`` of the inputs that could not be segmented.
        warnings: ``(input, message)``.
        seconds: per input segmented, wall time (reading excluded when it overlapped the previous scan).
        outputs: every file written.
    """

    done: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    outputs: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def check(self) -> "PredictReport":
        """Raise :class:`InputError` if any scan failed (naming the first); else return self."""
        if self.failed:
            path, problem = self.failed[0]
            more = f" (and {len(self.failed) - 1} more failure(s))" if len(self.failed) > 1 else ""
            raise InputError(problem + more, path)
        return self


def set_threads(threads: int | None) -> str | None:
    """Limit the backend's CPU threads (TensorFlow: intra- and inter-op; PyTorch: intra-op).

    Must run before the backend starts computing (the CLI does it first thing).

    Returns:
        A warning message when the setting could not be applied, else ``None``.
    """
    if threads is None:
        return None
    if int(threads) < 1:
        raise InputError(f"threads must be >= 1, got {threads}")
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        t = tf.config.threading
        if t.get_intra_op_parallelism_threads() == threads and t.get_inter_op_parallelism_threads() == threads:
            return None
        try:
            t.set_intra_op_parallelism_threads(int(threads))
            t.set_inter_op_parallelism_threads(int(threads))
        except RuntimeError:
            return "threads: TensorFlow has already started; the thread count was not changed"
        return None
    if backend == "torch":
        import torch

        torch.set_num_threads(int(threads))
        return None
    return f"threads: not supported on the {backend} backend (set XLA_FLAGS before starting)"


def apply_threads(threads: int | None) -> str | None:
    """:func:`set_threads`, its warning (if any) printed as one line on stderr; returns it."""
    warning = set_threads(threads)
    if warning:
        print(f"synthseg: warning: {warning}", file=sys.stderr)
    return warning


def predict(inputs, outputs, model=None, vol=None, post=None, resample=None, qc=None, png=None, crop=None,
            flip: bool = True, keep_native: bool = True, skip_existing: bool = False, threads: int | None = None,
            progress: bool = True, cleanup: bool = True, tile_size=DEFAULT_TILE,
            tile_overlap: int = DEFAULT_TILE_OVERLAP) -> PredictReport:
    """Segment scans from files and write the outputs (``mri_synthseg``'s flags; see the module docstring).

    Args:
        inputs: a scan (NIfTI/MGZ), a folder of scans, or a ``.txt`` file listing one per line.
        outputs: a file (one input) or a folder (``<name>_synthseg.nii.gz`` per input).
        model: a :class:`SegmentationModel`, a path for :func:`load_model`, or ``None`` (the
            model shipped in ``models/``).
        vol: CSV of the soft volumes (mm³) of every structure and the total intracranial volume.
        post: posteriors, a file (one input) or a folder.
        resample: the image the network saw, a file (one input) or a folder.
        qc: CSV of the quality scores.
        png: overlays, a ``.png`` file (one input) or a folder.
        crop: network input size around the centre (voxels, 1 or 3 numbers; rounded up to the
            required multiple); ``None``: the whole scan.
        flip: average with the left/right-flipped prediction.
        keep_native: outputs on the input's grid (else on the network grid).
        skip_existing: skip the scans whose outputs all exist.
        threads: CPU threads of the backend (see :func:`set_threads`).
        progress: show a progress bar (stderr).
        cleanup: keep the largest component of each structure and fill holes.
        tile_size, tile_overlap: network input tiles (see :meth:`SegmentationModel.posteriors`).

    Returns:
        A :class:`PredictReport`; failures of single scans are in ``report.failed`` (the others
        are still done), call ``report.check()`` to raise on them.

    Raises:
        InputError: before any scan is touched: missing inputs, unusable output locations,
            a model that cannot be loaded, bad options.
    """
    from tqdm import tqdm

    report = PredictReport()
    warning = apply_threads(threads)
    if warning:
        report.warnings.append((None, warning))
    files = list_volume_files(inputs, "image")
    for warning in _ignored_entries(inputs):
        report.warnings.append((Path(inputs), warning))
        print(f"synthseg: warning: {inputs}: {warning}", file=sys.stderr)
    crop = parse_crop(crop)
    names = output_names(files)
    seg_paths = _output_paths(files, names, outputs, SEG_SUFFIX, ".nii.gz", "segmentation")
    post_paths = _output_paths(files, names, post, POST_SUFFIX, ".nii.gz", "posteriors")
    res_paths = _output_paths(files, names, resample, RESAMPLED_SUFFIX, ".nii.gz", "resampled image")
    png_paths = _output_paths(files, names, png, SEG_SUFFIX, ".png", "overlay")
    csv_paths = [Path(p) for p in (vol, qc) if p is not None]
    for p in csv_paths:
        if p.is_dir():
            raise InputError("is a folder; expected a CSV file name", p)
        _check_folder(_parent(p))
    _check_distinct(files, [seg_paths, post_paths, res_paths, png_paths, csv_paths])
    if not isinstance(model, SegmentationModel):
        model = load_model(model)
    folders = {_parent(p) for group in (seg_paths, post_paths, res_paths, png_paths, csv_paths) for p in group or []}
    for folder in sorted(folders):
        make_writable_folder(folder, "output folder cannot be written")
    for group in (seg_paths, post_paths, res_paths, png_paths, csv_paths):
        for p in group or []:
            remove_stale_temporaries(p)  # left by a killed run (kill -9 skips the clean-up)
    tables = ScanTables(model, vol, qc)

    def per_scan(i):
        return [p[i] for p in (seg_paths, post_paths, res_paths, png_paths) if p is not None]

    todo = []
    for i, f in enumerate(files):
        if skip_existing and all(p.exists() for p in per_scan(i)) and tables.has(names[i]):
            report.skipped.append(f)
        else:
            todo.append(i)

    def load(i):
        vol_, warns = read_scan(files[i])
        return prepare_volume(vol_, model, crop, name=names[i], warnings=warns)

    bar = tqdm(total=len(files), initial=len(report.skipped), desc="segmenting", unit="scan",
               disable=not progress, file=sys.stderr)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="synthseg-read") as pool:
        future = pool.submit(load, todo[0]) if todo else None
        for k, i in enumerate(todo):
            nxt = pool.submit(load, todo[k + 1]) if k + 1 < len(todo) else None
            t0 = time.perf_counter()
            prep = seg = None
            try:
                prep = future.result()
                for w in prep.warnings:
                    report.warnings.append((files[i], w))
                    bar.write(f"synthseg: warning: {files[i]}: {w}", file=sys.stderr)
                seg = _segment(prep, model, flip, cleanup, tile_size, tile_overlap)
                written = _write_outputs(seg, keep_native, *(p[i] if p else None for p in
                                                             (post_paths, res_paths, png_paths, seg_paths)))
                report.outputs.extend(written)
                for path in tables.add(names[i], seg):
                    _add(report.outputs, path)
                report.done.append(files[i])
                report.seconds[files[i]] = time.perf_counter() - t0
            except (KeyboardInterrupt, SystemExit):
                if nxt is not None:
                    nxt.cancel()
                raise
            except Exception as exc:  # one bad scan is reported, the others go on
                if isinstance(exc, InputError):  # about another file (an output): name it too
                    problem = exc.problem if exc.path in (None, str(files[i])) else str(exc)
                else:
                    problem = f"unexpected error ({short_error(exc)})"
                report.failed.append((files[i], problem))
                bar.write(f"synthseg: error: {files[i]}: {problem}", file=sys.stderr)
            finally:
                prep = seg = None  # free this scan's arrays before the next one's are made
            del future
            future = nxt
            bar.update(1)
    bar.close()
    return report


def _ignored_entries(inputs) -> list[str]:
    """What an input folder holds besides scans, as warnings (nothing is skipped silently)."""
    if isinstance(inputs, (list, tuple)) or not Path(inputs).is_dir():
        return []
    entries = [e for e in sorted(Path(inputs).iterdir()) if not e.name.startswith(".")]
    files = [e.name for e in entries if e.is_file() and not has_input_suffix(e.name)]
    folders = [e.name + "/" for e in entries if e.is_dir()]
    warnings = []
    for kind, found, why in (("file(s)", files, f"not a scan ({', '.join(INPUT_SUFFIXES)})"),
                             ("folder(s)", folders, "folders are not searched: list their scans in a .txt file")):
        if found:
            shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
            warnings.append(f"skipped {len(found)} {kind}: {shown} ({why})")
    return warnings


def output_names(files: list[Path]) -> list[str]:
    """Names of the scans' outputs (and CSV rows): the file names without suffix, or, when two
    would be equal (``sub-01/mri/orig.mgz``, ``sub-02/mri/orig.mgz``), every scan's path below
    the folder the scans have in common, joined with ``_`` (``sub-01_mri_orig``).

    Raises:
        InputError: the same file listed twice.
    """
    names = [strip_volume_suffix(f.name) for f in files]
    if len(set(names)) == len(names):
        return names
    resolved = [f.resolve() for f in files]
    seen = {}
    for f, r in zip(files, resolved):
        if r in seen:
            raise InputError(f"the same scan is listed twice ({seen[r]} and {f})", f)
        seen[r] = f
    common = Path(os.path.commonpath([r.parent for r in resolved]))
    return ["_".join(strip_volume_suffix(r.relative_to(common)).split(os.sep)) for r in resolved]


#: names that are files of other kinds: refused where a segmentation (NIfTI) or a PNG is expected
_OTHER_FILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".csv", ".tsv", ".txt", ".json", ".npy", ".npz", ".keras",
                        ".pdf", ".svg", ".tif", ".tiff", ".h5") + NRRD_SUFFIXES


def _add(paths: list, path: Path) -> None:
    if path not in paths:
        paths.append(path)


def _write_outputs(seg: Segmentation, keep_native: bool, post_path, res_path, png_path, seg_path) -> list[Path]:
    """Write one scan's files (the segmentation last, so its presence means the rest is there)."""
    prep = seg.prepared
    written = []
    if keep_native:
        affine, header = prep.native_affine, prep.native_header
    else:
        affine, header = prep.affine, None
    if post_path is not None:
        data = seg.native_posteriors() if keep_native else seg.posteriors
        written.append(save_volume(data, post_path, affine=affine, header=header, dtype=np.float32))
        del data
    if res_path is not None:
        written.append(save_volume(prep.image, res_path, affine=prep.affine, dtype=np.float32))
    canonical = seg.canonical_segmentation() if (keep_native or png_path is not None) else None
    if png_path is not None:
        from synthseg.plots import save_overlay

        if prep.canonical_image is not None:  # the scan at its own resolution
            image, labels_png, voxel = prep.canonical_image, canonical, voxel_size_of(prep.reorientation.canonical_affine)
        else:
            image, labels_png, voxel = prep.image, seg.segmentation, voxel_size_of(prep.affine)
        written.append(save_overlay(image, labels_png, voxel, png_path, title=f"{prep.name}: segmentation"))
    labels = prep.reorientation.undo(canonical) if keep_native else seg.segmentation
    written.append(save_volume(labels, seg_path, affine=affine, header=header, dtype=np.int32))
    return written


def _output_paths(files, names, target, suffix: str, ext: str, what: str) -> list[Path] | None:
    """One output path per input: ``target`` itself (a file, one input) or ``target/<name><suffix><ext>``."""
    if target is None:
        return None
    t = Path(target)
    wanted = "a .png file" if ext == ".png" else f"a NIfTI/MGZ file ({', '.join(VOLUME_SUFFIXES)})"
    if not t.is_dir() and (has_volume_suffix(t) if ext == ".png" else t.name.lower().endswith(_OTHER_FILE_SUFFIXES)):
        raise InputError(f"{what}: expected {wanted} or a folder, not a file of another kind", t)
    as_file = (has_volume_suffix(t) if ext != ".png" else t.suffix.lower() == ".png") and not t.is_dir()
    if as_file:
        if len(files) > 1:
            raise InputError(f"{what}: {len(files)} input scans but one output file; give a folder", t)
        _check_folder(_parent(t))
        return [t]
    if t.exists() and not t.is_dir():
        raise InputError(f"{what}: expected {wanted} or a folder", t)
    _check_folder(t)
    paths = [t / f"{n}{suffix}{ext}" for n in names]
    seen = {}
    for f, p in zip(files, paths):
        if p in seen:
            raise InputError(f"{what}: inputs {seen[p]} and {f} would both write {p.name}; rename one", t)
        seen[p] = f
    return paths


def _parent(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def _check_folder(folder: Path) -> None:
    """Check that ``folder`` exists and is writable, or can be created (creates nothing)."""
    check_folder_writable(folder)


def _check_distinct(files, groups) -> None:
    inputs = {f.resolve() for f in files}
    seen = set()
    for group in groups:
        for p in group or []:
            r = p.resolve()
            if r in inputs:
                raise InputError("an output would overwrite an input", p)
            if r in seen:
                raise InputError("two outputs would be written to the same file", p)
            seen.add(r)


class ScanTables:
    """The volumes and quality-score CSVs of a batch (either may be ``None``): one row per scan,
    columns from the model's labels and QC groups, rewritten atomically after each scan."""

    def __init__(self, model: SegmentationModel, vol=None, qc=None):
        from synthseg.labels import QC_GROUPS

        names = model.label_names()
        self.structures = [(int(v), names[c]) for c, v in enumerate(model.labels) if v != 0]
        self.groups = [name for name, ids in QC_GROUPS.items() if set(ids) & set(model.labels.tolist())]
        self.vol = None if vol is None else _CsvTable(
            Path(vol), ["subject", "total intracranial"] + [n for _, n in self.structures], "volumes")
        self.qc = None if qc is None else _CsvTable(Path(qc), ["subject", "qc"] + self.groups, "quality scores")

    def has(self, subject: str) -> bool:
        """Every table asked for holds a row of ``subject``."""
        return all(t is None or t.has(subject) for t in (self.vol, self.qc))

    def add(self, subject: str, seg: Segmentation | None) -> list[Path]:
        """Write ``subject``'s rows (``seg`` ``None``: nothing found, volumes and scores 0); the paths written."""
        written = []
        if self.vol is not None:
            volumes = seg.volumes() if seg is not None else {}
            values = [volumes.get(v, 0.0) for v, _ in self.structures]
            self.vol.set(subject, [f"{sum(values):.3f}"] + [f"{x:.3f}" for x in values])
            written.append(self.vol.write())
        if self.qc is not None:
            score, per = seg.qc_scores() if seg is not None else (0.0, {})
            self.qc.set(subject, [f"{score:.4f}"] + [f"{per.get(g) or 0.0:.4f}" for g in self.groups])
            written.append(self.qc.write())
        return written


class _CsvTable:
    """A CSV with one row per subject, rewritten atomically after each change. The rows of an
    existing file are kept (a re-run on some subjects updates their rows, the others stay);
    a file that is not such a table, or has other columns (another model's), is refused."""

    def __init__(self, path: Path, header: list[str], what: str):
        self.path, self.header, self.rows = path, header, {}
        if not path.exists():
            return
        try:
            with open(path, newline="") as f:
                rows = list(csv.reader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise InputError(f"{what}: cannot read the existing table ({short_error(exc)}); "
                             "give another file name or remove it", path) from None
        if not rows:
            return
        if rows[0] != header:
            raise InputError(f"{what}: the existing table has other columns ({len(rows[0])}, expected "
                             f"{len(header)}: written by another model?); its rows would be lost, so it is "
                             "left alone: give another file name or remove it", path)
        self.rows = {r[0]: r[1:] for r in rows[1:] if len(r) == len(header)}

    def has(self, subject: str) -> bool:
        return subject in self.rows

    def set(self, subject: str, values: list[str]) -> None:
        self.rows[subject] = values

    def write(self) -> Path:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.header)
        for subject, values in self.rows.items():
            w.writerow([subject] + list(values))
        return atomic_write_text(self.path, buf.getvalue())
