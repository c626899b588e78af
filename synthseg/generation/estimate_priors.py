"""Estimate the intensity priors of the generator from real scans with label maps.

SynthSeg draws, for every synthetic scan and every class of generation labels, a Gaussian
mean and standard deviation from the priors ``prior_means`` and ``prior_stds`` of
:class:`lab2im.options.GeneratorOptions`. By default these priors are very wide (any contrast).
When training for one known contrast (or a few), priors measured on real scans of that
contrast give more realistic images. This module measures them:

1. :func:`estimate_intensity_stats` measures, in each subject, the mean and standard deviation
   (or median and ``1.4826 * MAD`` with ``robust=True``) of the intensities under each label,
   or under each class of labels, per channel;
2. :func:`priors_from_stats` turns the per-subject statistics into prior arrays of shape
   ``(2 * n_channels, n_classes)``, the shape the generator reads;
3. :func:`estimate_priors` does both and writes ``prior_means.npy``, ``prior_stds.npy``,
   ``labels.npy``, ``classes.npy`` and ``priors.json`` into a folder.

Prior layout (what :func:`lab2im.layers.gmm.normalise_prior` accepts)::

    prior_means[2 * c,     k]   channel c, class k: first parameter of the prior of the mean
    prior_means[2 * c + 1, k]   channel c, class k: second parameter
    (same for prior_stds)

where the two parameters are ``(mean, std)`` for ``prior_distribution="normal"`` and
``(min, max)`` for ``"uniform"``. Use the files with::

    GeneratorOptions(generation_labels="out/labels.npy", generation_classes="out/classes.npy",
                     prior_means="out/prior_means.npy", prior_stds="out/prior_stds.npy",
                     prior_distribution="normal")

The generator clips intensities to ``GeneratorOptions.clip`` (``(0, 300)`` by default) before
normalising, so priors must be in those units: pass ``rescale=True`` (``--rescale``) to map
each image linearly to [0, 255] (its 0.5th and 99.5th percentiles) before measuring, or set
``clip`` to suit your images' range.

Command line (``synthseg estimate-priors``, or :func:`main`)::

    synthseg estimate-priors --images t1/ --label-maps seg/ --out priors/ --robust
    synthseg estimate-priors --images t1/ --images t2/ --label-maps seg/ --out priors/   # 2 channels
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from lab2im.errors import InputError
from lab2im.io import atomic_output, atomic_write_text, list_volume_files, load_volume

MAD_TO_STD = 1.4826  # std of a Gaussian = 1.4826 * its median absolute deviation
RESCALE_PERCENTILES = (0.5, 99.5)
RESCALE_RANGE = (0.0, 255.0)
_GRID_ATOL = 1e-3  # mm: affines closer than this are the same grid

__all__ = ["IntensityStats", "estimate_intensity_stats", "priors_from_stats", "estimate_priors",
           "format_table", "add_arguments", "run", "main"]


# ----------------------------------------------------------------------------- statistics
@dataclass
class IntensityStats:
    """Per-subject intensity statistics of labels (or classes of labels).

    Attributes:
        means: ``(n_subjects, n_channels, K)`` mean (or median, if ``robust``) intensity of
            each column in each subject and channel; NaN where the column has no voxels.
        stds: same shape: standard deviation (or ``1.4826 * MAD``).
        counts: same shape, int: voxels used (finite intensities under the column's labels).
        labels: ``(n_labels,)`` the labels measured.
        classes: ``(n_labels,)`` class of each label, or ``None`` (then column ``k`` is
            ``labels[k]`` and ``K = n_labels``). With classes, column ``k`` pools the voxels of
            every label of class ``k`` and ``K = max(classes) + 1``, as the generator counts
            classes.
        subjects: the label map of each subject.
        images: the image file(s) of each subject, one per channel list.
        robust: whether medians and MADs were used.
    """

    means: np.ndarray
    stds: np.ndarray
    counts: np.ndarray
    labels: np.ndarray
    classes: np.ndarray | None
    subjects: list[str]
    images: list[list[str]]
    robust: bool = False
    missing: list[tuple[str, int]] = field(default_factory=list)

    @property
    def n_subjects(self) -> int:
        return self.means.shape[0]

    @property
    def n_channels(self) -> int:
        return self.means.shape[1]

    @property
    def n_columns(self) -> int:
        return self.means.shape[2]

    def column_labels(self) -> list[tuple[int, ...]]:
        """The labels pooled in each column: ``[(label,), ...]``, or the labels of each class."""
        if self.classes is None:
            return [(int(v),) for v in self.labels]
        return [tuple(int(lab) for lab, c in zip(self.labels, self.classes) if c == k)
                for k in range(self.n_columns)]

    def column_names(self) -> list[str]:
        """``"label 17"`` per column, or ``"class 3 (labels 17, 53)"`` with classes."""
        if self.classes is None:
            return [f"label {int(v)}" for v in self.labels]
        return [f"class {k} (labels {', '.join(map(str, ls)) or 'none'})"
                for k, ls in enumerate(self.column_labels())]


def estimate_intensity_stats(images, label_maps, labels=None, classes=None, robust: bool = False,
                             resample: bool = False, rescale: bool = False) -> IntensityStats:
    """Measure, per subject and channel, the intensity mean and std of each label or class.

    Args:
        images: the images, in the order of ``label_maps``: a list of paths (one channel), or a
            list of such lists, one per channel (``[[t1_a, t1_b], [t2_a, t2_b]]``); a folder or
            ``.txt`` list file may stand for a list. A 4D image adds its last axis as channels.
        label_maps: list of label map paths (or a folder / ``.txt`` list), one per subject.
        labels: labels to measure; default: every label value found in the label maps (0 included).
        classes: class of each label (same length as ``labels``; a ``.npy`` path works), or a
            dict ``{label: class}`` (then ``labels`` defaults to its keys). Voxels of the labels
            of one class are pooled. ``None``: one column per label.
        robust: median and ``1.4826 * MAD`` instead of mean and std (resists outliers, e.g.
            misregistered voxels at the edge of a structure).
        resample: resample each label map onto its image's grid (nearest neighbour) when they
            differ; otherwise a different grid is an error.
        rescale: map each image channel linearly so that its 0.5th and 99.5th percentiles
            (over finite voxels) become 0 and 255, to get priors in the generator's units.

    Returns:
        An :class:`IntensityStats`. Voxels with a NaN intensity are ignored. A column with no
        voxels in a subject is NaN there, and one warning at the end lists all such cases.

    Raises:
        InputError: missing or unreadable file, different numbers of images and label maps,
            an image and its label map on different grids (naming both files), channels of one
            subject on different grids, ``classes`` not matching ``labels``.
    """

    channels = _expand_images(images)
    label_maps = [str(p) for p in _expand(label_maps, "label map")]
    n_subjects = len(label_maps)
    for c, ch in enumerate(channels):
        if len(ch) != n_subjects:
            raise InputError(f"{len(ch)} images in channel {c} but {n_subjects} label maps; "
                             "give one image per label map, in the same order")
    labels, classes = _resolve_labels(labels, classes, label_maps)
    n_cols = len(labels) if classes is None else int(classes.max()) + 1
    column_of_label = np.arange(len(labels)) if classes is None else classes

    means, stds, counts = [], [], []
    for s, lab_path in enumerate(label_maps):
        image_paths = [ch[s] for ch in channels]
        data, affine, ref_path = None, None, None
        parts = []
        for p in image_paths:
            vol = load_volume(p, dtype=np.float32)
            if vol.data.ndim not in (3, 4):
                raise InputError(f"image is {vol.data.ndim}D (shape {vol.shape}); expected 3D or 4D", p)
            if affine is None:
                affine, ref_path, shape = vol.affine, p, vol.shape[:3]
            elif vol.shape[:3] != shape or not np.allclose(vol.affine, affine, rtol=0, atol=_GRID_ATOL):
                raise InputError(f"channels of one subject must share a grid, but this image "
                                 f"(shape {vol.shape[:3]}) differs from {ref_path} (shape {shape})", p)
            parts.append(vol.data.reshape(vol.shape[:3] + (-1,)))
        data = np.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
        if s == 0:
            n_channels = data.shape[-1]
        elif data.shape[-1] != n_channels:
            raise InputError(f"{data.shape[-1]} channel(s) but the first subject has {n_channels}",
                             image_paths[0])
        lab = _load_labels_on_grid(lab_path, ref_path, shape, affine, resample)
        if rescale:
            data = np.stack([_rescale(data[..., c]) for c in range(n_channels)], axis=-1)
        m, sd, n = _subject_stats(data, lab, labels, column_of_label, n_cols, robust)
        means.append(m)
        stds.append(sd)
        counts.append(n)

    stats = IntensityStats(means=np.stack(means), stds=np.stack(stds), counts=np.stack(counts),
                           labels=labels, classes=classes, subjects=label_maps,
                           images=[[ch[s] for ch in channels] for s in range(n_subjects)],
                           robust=robust)
    empty = np.all(stats.counts == 0, axis=1)  # (S, K): no voxels in any channel
    stats.missing = [(label_maps[s], int(k)) for s, k in zip(*np.nonzero(empty))]
    partly = np.any(stats.counts == 0, axis=1) & ~empty
    if stats.missing or np.any(partly):
        warnings.warn(_missing_message(stats, empty, partly), stacklevel=2)
    return stats


def _subject_stats(data, lab, labels, column_of_label, n_cols, robust):
    """Per channel and column: location, scale and voxel count of one subject."""
    n_channels = data.shape[-1]
    # column index of every voxel (-1: not measured)
    sorted_labels = np.sort(labels)
    order = np.argsort(labels)
    pos = np.clip(np.searchsorted(sorted_labels, lab), 0, len(labels) - 1)
    col = np.where(sorted_labels[pos] == lab, column_of_label[order][pos], -1).ravel()
    keep = np.flatnonzero(col >= 0)
    col = col[keep]
    by_col = np.argsort(col, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(col, minlength=n_cols))])
    flat = data.reshape(-1, n_channels)[keep][by_col]
    means = np.full((n_channels, n_cols), np.nan)
    stds = np.full((n_channels, n_cols), np.nan)
    counts = np.zeros((n_channels, n_cols), np.int64)
    for k in range(n_cols):
        block = flat[bounds[k]:bounds[k + 1]]
        for c in range(n_channels):
            x = block[:, c].astype(np.float64)
            x = x[np.isfinite(x)]
            counts[c, k] = x.size
            if x.size == 0:
                continue
            if robust:
                med = np.median(x)
                means[c, k], stds[c, k] = med, MAD_TO_STD * np.median(np.abs(x - med))
            else:
                means[c, k], stds[c, k] = x.mean(), x.std()
    return means, stds, counts


def _missing_message(stats: IntensityStats, empty, partly) -> str:
    names = stats.column_names()
    lines = []
    for k in range(stats.n_columns):
        subs = [Path(stats.subjects[s]).name for s in np.flatnonzero(empty[:, k])]
        if subs:
            where = "any subject" if len(subs) == stats.n_subjects else ", ".join(subs)
            lines.append(f"{names[k]}: no voxels in {where}")
        subs = [Path(stats.subjects[s]).name for s in np.flatnonzero(partly[:, k])]
        if subs:
            lines.append(f"{names[k]}: no finite intensities in some channel of {', '.join(subs)}")
    return ("intensity statistics are NaN where a label has no voxels (ignored when the priors "
            "are computed):\n  " + "\n  ".join(lines))


def _rescale(x: np.ndarray) -> np.ndarray:
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return x
    lo, hi = np.percentile(finite, RESCALE_PERCENTILES)
    if hi <= lo:
        return x - lo
    return (x - lo) * ((RESCALE_RANGE[1] - RESCALE_RANGE[0]) / (hi - lo)) + RESCALE_RANGE[0]


def _load_labels_on_grid(lab_path, image_path, shape, affine, resample: bool) -> np.ndarray:

    vol = load_volume(lab_path)
    data = vol.data
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"label map is {data.ndim}D (shape {data.shape}); expected 3D", lab_path)
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)):
            raise InputError("label map holds NaN or infinite values", lab_path)
        data = np.rint(data)
    data = data.astype(np.int64)
    same = data.shape == tuple(shape) and np.allclose(vol.affine, affine, rtol=0, atol=_GRID_ATOL)
    if same:
        return data
    if not resample:
        raise InputError(
            f"label map {lab_path} (shape {data.shape}) is not on the grid of image {image_path} "
            f"(shape {tuple(shape)}){'' if data.shape != tuple(shape) else ', affines differ'}; "
            "resample it (resample=True, --resample) or give matching files", lab_path)
    from lab2im.geometry import resample_to_grid

    return resample_to_grid(data, vol.affine, shape, affine, order=0, fill=0)


def _expand(source, what: str) -> list[Path]:

    if isinstance(source, np.ndarray):
        source = source.tolist()
    return list_volume_files(source, what)


def _expand_images(images) -> list[list[str]]:
    """Images as one list of paths per channel."""
    if isinstance(images, (list, tuple)) and images and all(isinstance(i, (list, tuple)) for i in images):
        return [[str(p) for p in _expand(list(ch), "image")] for ch in images]
    if isinstance(images, (list, tuple)) and any(isinstance(i, (list, tuple)) for i in images):
        raise InputError("images must be a list of paths or a list of lists of paths (one per channel)")
    return [[str(p) for p in _expand(images, "image")]]


def _resolve_labels(labels, classes, label_maps) -> tuple[np.ndarray, np.ndarray | None]:
    from lab2im.options import load_array

    if isinstance(classes, (str, os.PathLike)):
        classes = load_array(classes, "classes")
    if isinstance(labels, (str, os.PathLike)):
        labels = load_array(labels, "labels")
    if isinstance(classes, dict):
        if labels is None:
            labels = sorted(classes)
        missing = [int(lab) for lab in labels if int(lab) not in classes]
        if missing:
            raise InputError(f"classes gives no class for label(s) {missing}")
        classes = [classes[int(lab)] for lab in labels]
    if labels is None:

        found = set()
        for p in label_maps:
            values = np.unique(load_volume(p).data)
            found.update(np.rint(values[np.isfinite(values)]).astype(np.int64).tolist())
        labels = sorted(found)
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise InputError(f"labels must be a non-empty 1-D list, got shape {labels.shape}")
    if not np.all(np.equal(np.mod(labels, 1), 0)):
        raise InputError("labels must be integers")
    labels = labels.astype(np.int64)
    if len(set(labels.tolist())) != labels.size:
        raise InputError("labels contains duplicates")
    if classes is None:
        return labels, None
    classes = np.asarray(classes)
    if classes.ndim != 1 or classes.size != labels.size:
        raise InputError(f"classes has {classes.size} entries but there are {labels.size} labels "
                         f"({labels.tolist()[:20]}{'...' if labels.size > 20 else ''})")
    if not np.all(np.equal(np.mod(classes, 1), 0)) or classes.min() < 0:
        raise InputError("classes must be non-negative integers")
    return labels, classes.astype(np.int64)


# ----------------------------------------------------------------------------- priors
def priors_from_stats(stats: IntensityStats, kind: str = "normal", spread: float = 1.0,
                      min_std: float = 0.0, min_rel_std: float = 0.05,
                      missing: str = "error") -> tuple[np.ndarray, np.ndarray]:
    """Turn per-subject statistics into the generator's prior arrays.

    Args:
        stats: from :func:`estimate_intensity_stats`.
        kind: ``"normal"`` or ``"uniform"``, the ``prior_distribution`` the arrays are for.
        spread: multiplies the between-subject standard deviation (normal: the prior's std;
            uniform: the margin added on each side of the observed range). Above 1 gives more
            varied synthetic contrasts.
        min_std, min_rel_std: floor of that scale, ``max(min_std, min_rel_std * |centre|)``:
            with one subject (or identical subjects) the between-subject std is 0.
        missing: what to do with a column that has no voxels in any subject: ``"error"``
            (raise :class:`InputError` naming it) or ``"wide"`` (a prior covering every
            observed column: normal: mean and std across the observed columns' centres;
            uniform: the observed columns' overall range).

    Returns:
        ``(prior_means, prior_stds)``, float32 arrays of shape ``(2 * n_channels, K)``: for
        channel ``c`` and column (class) ``k``, rows ``2c`` and ``2c + 1`` hold the prior's two
        parameters: ``normal``: row ``2c`` = mean over subjects, row ``2c + 1`` =
        ``max(spread * std over subjects, floor)``; ``uniform``: row ``2c`` = min over
        subjects - margin, row ``2c + 1`` = max over subjects + margin, with margin =
        ``max(spread * std over subjects, floor)``; uniform bounds of ``prior_stds`` are
        clipped at 0. NaN subjects (no voxels) are ignored.

    Raises:
        InputError: unknown ``kind`` or ``missing``, or a column with no data and
            ``missing="error"``.
    """
    if kind not in ("normal", "uniform"):
        raise InputError(f"kind must be 'normal' or 'uniform', got {kind!r}")
    if missing not in ("error", "wide"):
        raise InputError(f"missing must be 'error' or 'wide', got {missing!r}")
    if spread < 0 or min_std < 0 or min_rel_std < 0:
        raise InputError("spread, min_std and min_rel_std must be >= 0")
    absent = np.all(np.isnan(stats.means), axis=0)  # (C, K)
    if np.any(absent) and missing == "error":
        names = stats.column_names()
        cols = [names[k] for k in np.flatnonzero(np.any(absent, axis=0))]
        raise InputError(f"no voxels in any subject for {'; '.join(cols)}: remove them from the "
                         "labels, or use missing='wide' (--missing wide) to give them a wide prior")
    out = []
    for values, is_std in ((stats.means, False), (stats.stds, True)):
        prior = np.empty((2 * stats.n_channels, stats.n_columns), np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            centre = np.nanmean(values, axis=0)  # (C, K)
            between = np.nanstd(values, axis=0)
            lo, hi = np.nanmin(values, axis=0), np.nanmax(values, axis=0)
        scale = np.maximum(spread * between, np.maximum(min_std, min_rel_std * np.abs(centre)))
        for c in range(stats.n_channels):
            seen = ~absent[c]
            if not np.any(seen):
                raise InputError(f"channel {c}: no voxels with a finite intensity under any label in any subject")
            if kind == "normal":
                a, b = centre[c].copy(), scale[c].copy()
                if np.any(~seen):
                    a[~seen] = np.mean(centre[c, seen])
                    b[~seen] = max(np.std(centre[c, seen]), np.max(scale[c, seen]))
            else:
                a, b = lo[c] - scale[c], hi[c] + scale[c]
                if np.any(~seen):
                    a[~seen], b[~seen] = np.min(a[seen]), np.max(b[seen])
                if is_std:
                    a, b = np.maximum(a, 0.0), np.maximum(b, 0.0)
            prior[2 * c], prior[2 * c + 1] = a, b
        out.append(prior.astype(np.float32))
    return out[0], out[1]


# ----------------------------------------------------------------------------- files
def estimate_priors(images, label_maps, out_dir, labels=None, classes=None, robust: bool = False,
                    kind: str = "normal", spread: float = 1.0, min_std: float = 0.0,
                    min_rel_std: float = 0.05, resample: bool = False, rescale: bool = False,
                    missing: str = "error") -> dict[str, Path]:
    """Estimate priors from real scans and write them into ``out_dir``.

    Arguments are those of :func:`estimate_intensity_stats` and :func:`priors_from_stats`.

    Writes (atomically; float32 and int32 arrays, readable with ``allow_pickle=False``):
        ``prior_means.npy``, ``prior_stds.npy``: ``(2 * n_channels, K)`` priors for
        ``prior_distribution=kind``; ``labels.npy``: the labels measured (generation labels);
        ``classes.npy``: class of each label (``0 .. n_labels - 1`` without ``classes``);
        ``priors.json``: summary (settings, files, per-subject statistics, priors).

    Returns:
        ``{"prior_means", "prior_stds", "labels", "classes", "summary", "stats"}`` -> path,
        except ``"stats"``, the :class:`IntensityStats` measured.
    """
    stats = estimate_intensity_stats(images, label_maps, labels=labels, classes=classes,
                                     robust=robust, resample=resample, rescale=rescale)
    prior_means, prior_stds = priors_from_stats(stats, kind=kind, spread=spread, min_std=min_std,
                                                min_rel_std=min_rel_std, missing=missing)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("output path exists and is not a folder", out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder ({exc.strerror})", out) from None
    classes_arr = (np.arange(len(stats.labels)) if stats.classes is None else stats.classes)
    paths = {
        "prior_means": _save_npy(out / "prior_means.npy", prior_means.astype(np.float32)),
        "prior_stds": _save_npy(out / "prior_stds.npy", prior_stds.astype(np.float32)),
        "labels": _save_npy(out / "labels.npy", stats.labels.astype(np.int32)),
        "classes": _save_npy(out / "classes.npy", classes_arr.astype(np.int32)),
    }
    summary = {
        "prior_distribution": kind,
        "robust": robust,
        "rescale": rescale,
        "spread": spread,
        "min_std": min_std,
        "min_rel_std": min_rel_std,
        "n_subjects": stats.n_subjects,
        "n_channels": stats.n_channels,
        "layout": ("prior arrays are (2 * n_channels, n_classes): rows 2c, 2c+1 = "
                   + ("(mean, std)" if kind == "normal" else "(min, max)") + " for channel c"),
        "labels": stats.labels.tolist(),
        "classes": classes_arr.tolist(),
        "columns": stats.column_names(),
        "subjects": [{"label_map": str(lab), "images": [str(p) for p in ims]}
                     for lab, ims in zip(stats.subjects, stats.images)],
        "means": _nan_to_none(stats.means),
        "stds": _nan_to_none(stats.stds),
        "counts": stats.counts.tolist(),
        "missing": [{"label_map": s, "column": k} for s, k in stats.missing],
        "prior_means": prior_means.tolist(),
        "prior_stds": prior_stds.tolist(),
        "files": {k: p.name for k, p in paths.items()},
    }

    paths["summary"] = atomic_write_text(out / "priors.json", json.dumps(summary, indent=2) + "\n")
    paths["stats"] = stats
    return paths


def _save_npy(path: Path, array: np.ndarray) -> Path:
    with atomic_output(path, ".npy") as tmp:
        np.save(tmp, array, allow_pickle=False)
    return path


def _nan_to_none(array: np.ndarray):
    return [_nan_to_none(a) for a in array] if array.ndim else (None if np.isnan(array) else float(array))


def format_table(stats: IntensityStats, prior_means=None, prior_stds=None, kind: str = "normal",
                 channel_names: Sequence[str] | None = None, column_names: Sequence[str] | None = None) -> str:
    """A text table: per channel and column, the voxel count and the mean (over subjects) of
    the measured location and scale, with the priors when given."""
    channel_names = list(channel_names or [f"ch{c}" for c in range(stats.n_channels)])
    column_names = list(column_names or stats.column_names())
    loc, sc = ("median", "1.48MAD") if stats.robust else ("mean", "std")
    pa, pb = ("mean", "std") if kind == "normal" else ("min", "max")
    width = max(12, *(len(n) for n in column_names))
    cw = max(8, *(len(n) for n in channel_names))
    head = f"{'channel':{cw}s} {'column':{width}s} {'voxels':>9s} {loc:>9s} {sc:>9s}"
    if prior_means is not None:
        head += f"   prior of means ({pa}, {pb})   prior of stds ({pa}, {pb})"
    lines = [f"{stats.n_subjects} subject(s), {stats.n_channels} channel(s)", head, "-" * len(head)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        m = np.nanmean(stats.means, axis=0)
        s = np.nanmean(stats.stds, axis=0)
    n = stats.counts.mean(axis=0)
    for c in range(stats.n_channels):
        for k in range(stats.n_columns):
            row = f"{channel_names[c]:{cw}s} {column_names[k]:{width}s} {n[c, k]:9.0f} {m[c, k]:9.2f} {s[c, k]:9.2f}"
            if prior_means is not None:
                row += (f"   {prior_means[2 * c, k]:10.2f} {prior_means[2 * c + 1, k]:10.2f}"
                        f"        {prior_stds[2 * c, k]:10.2f} {prior_stds[2 * c + 1, k]:10.2f}")
            lines.append(row)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line
HELP = "per-label intensity priors (.npy) from real scans + label maps"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``estimate-priors`` options to ``parser`` (a sub-command parser)."""
    parser.add_argument("--images", action="append", required=True, metavar="SOURCE",
                        help="images: a file, a folder or a .txt list, in the order of --label-maps; "
                             "repeat the flag for more channels (e.g. --images t1/ --images t2/)")
    parser.add_argument("--label-maps", "--labels", dest="label_maps", required=True, metavar="SOURCE",
                        help="label maps: a file, a folder or a .txt list (--labels is an old name)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--generation-labels", type=Path, default=None, metavar="NPY",
                        help="labels to measure (.npy); default: every label in the label maps")
    parser.add_argument("--classes", type=Path, default=None, metavar="NPY",
                        help="class of each label (.npy, aligned with --generation-labels or with the "
                             "sorted labels found); labels of a class are pooled")
    parser.add_argument("--kind", choices=("normal", "uniform"), default="normal",
                        help="prior distribution the arrays are for (default: normal)")
    parser.add_argument("--robust", action="store_true", help="median and 1.4826*MAD instead of mean and std")
    parser.add_argument("--rescale", action="store_true",
                        help="map each image's 0.5-99.5th percentiles to 0-255 first (generator units)")
    parser.add_argument("--resample", action="store_true",
                        help="resample label maps onto their image's grid (nearest) when they differ")
    parser.add_argument("--spread", type=float, default=1.0,
                        help="multiplier of the between-subject std (default: 1)")
    parser.add_argument("--min-std", type=float, default=0.0,
                        help="floor of the prior scale, in intensity units (default: 0; the floor "
                             "is also at least 5%% of the value)")
    parser.add_argument("--missing", choices=("error", "wide"), default="error",
                        help="labels with no voxels anywhere: error, or a wide prior (default: error)")
    return parser


def run(args) -> int:
    """Run ``estimate-priors`` from parsed arguments; prints the table. Returns the exit status."""
    try:
        images = [[str(p) for p in _expand(src, "image")] for src in args.images]
        paths = estimate_priors(images, args.label_maps, args.out, labels=args.generation_labels,
                                classes=args.classes, robust=args.robust, kind=args.kind,
                                spread=args.spread, min_std=args.min_std, resample=args.resample,
                                rescale=args.rescale, missing=args.missing)
    except InputError as exc:
        print(f"synthseg estimate-priors: error: {exc}", file=sys.stderr)
        return 1
    from lab2im.options import load_array

    pm, ps = load_array(paths["prior_means"]), load_array(paths["prior_stds"])
    names = [Path(src).name or str(src) for src in args.images]
    print(format_table(paths["stats"], pm, ps, kind=args.kind, channel_names=names))
    print(f"wrote {', '.join(p.name for k, p in paths.items() if k != 'stats')} to {args.out}/")
    return 0


def main(argv=None) -> int:
    """``python -m synthseg.generation.estimate_priors --images ... --label-maps ... --out ...``"""
    parser = argparse.ArgumentParser(prog="synthseg estimate-priors",
                                     description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
