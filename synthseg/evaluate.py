"""Evaluate segmentations against ground truth: Dice, surface distances, volumes, paired tests.

Metrics (per label, numpy/scipy only):

* **Dice** ``2 |A n B| / (|A| + |B|)``.
* **Surface distances** in mm, between the *surfaces* of the two masks. A mask's surface is
  its boundary voxels: the mask minus its erosion by the 6-connected (face) neighbourhood,
  voxels on the edge of the grid counting as boundary. For every surface voxel of one mask the
  distance (mm, with the voxel size on each axis, so anisotropic voxels are handled) to the
  nearest surface voxel of the other is taken from :func:`scipy.ndimage.distance_transform_edt`
  with ``sampling=spacing``, computed only on the bounding box of the two masks (padded by one
  voxel) rather than on the whole grid; the result is exactly that of the whole grid, since
  every surface voxel lies in the box. From the two directed sets of distances:

  - ``hausdorff``: the larger of the two directed maxima (symmetric Hausdorff distance);
  - ``hd95``: the 95th percentile (numpy's linear interpolation) of the **pooled** distances,
    both directions concatenated. Note: other tools (MedPy, MONAI) take instead the larger of
    the two directed 95th percentiles, which is greater or equal;
  - ``mean_surface``: the mean of the pooled distances (average symmetric surface distance).

* **Volumes**: ``volume_true_mm3``, ``volume_pred_mm3``, ``volume_diff_mm3`` (predicted minus
  true) and ``volume_diff_rel`` (the difference over the true volume).

Empty labels are reported, not raised: absent from both maps, Dice is 1 and the distances 0;
absent from one map only, Dice is 0 and the distances ``inf`` (relative volume difference:
``inf`` when the label is only predicted, 0 when absent from both).

Whole studies: :func:`evaluate_folders` matches ground truth and predictions by subject name,
writes ``metrics.csv`` (one row per subject, method, label and metric), box plots of Dice and
HD95 per label and method, ``summary.json``, and with a second method ``paired_tests.csv``
(:func:`paired_test`, Wilcoxon signed-rank per label and metric). The ``synthseg evaluate``
command runs it.

Example::

    >>> from synthseg import evaluate
    >>> rows = evaluate.evaluate_pair("gt/sub-01.nii.gz", "pred/sub-01_synthseg.nii.gz", [2, 3, 41, 42])
    >>> result = evaluate.evaluate_folders("gt", "pred", [2, 3, 41, 42], pred2_dir="pred_other", out_dir="eval")
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from lab2im.errors import InputError
from lab2im.io import (atomic_write_text, list_volume_files, load_volume, strip_volume_suffix,
                       voxel_size_of)

#: Metrics of :func:`evaluate_arrays`, in row order for each label.
METRICS = ("dice", "hausdorff", "hd95", "mean_surface", "volume_true_mm3", "volume_pred_mm3",
           "volume_diff_mm3", "volume_diff_rel")
#: Metrics compared by :func:`paired_test` in :func:`evaluate_folders`, and whether higher is better.
#: ``abs_volume_diff_rel`` is the absolute value of ``volume_diff_rel``.
PAIRED_METRICS = {"dice": True, "hausdorff": False, "hd95": False, "mean_surface": False,
                  "abs_volume_diff_rel": False}
#: Name endings stripped (repeatedly, case-insensitive, after ``_``, ``-`` or ``.``) to match subjects.
PREDICTION_SUFFIXES = ("synthseg", "seg", "segmentation", "pred", "prediction", "labels", "label", "aseg",
                       "dseg", "parc", "parcellation", "gt", "truth", "groundtruth", "manual")
CSV_COLUMNS = ("subject", "method", "label", "name", "metric", "value")
PAIRED_COLUMNS = ("label", "name", "metric", "method_a", "method_b", "n", "median_a", "median_b",
                  "median_difference", "better", "statistic", "p_value", "note")
_PAD = 1  # voxels around the bounding box of the two masks
_AFFINE_TOL = 1e-4  # mm


# ----------------------------------------------------------------------------- metrics
def dice(a: np.ndarray, b: np.ndarray, labels: Sequence[int]) -> dict[int, float]:
    """Dice overlap of each label between two label maps of the same shape.

    Returns:
        ``{label: dice}``; 1.0 for a label absent from both maps, 0.0 for one absent from one.
    """
    a, b = _same_shape(a, b)
    out = {}
    for label in _label_list(labels):
        ma, mb = a == label, b == label
        out[label] = _dice_from_counts(int(ma.sum()), int(mb.sum()), int(np.count_nonzero(ma & mb)))
    return out


def surface_distances(a: np.ndarray, b: np.ndarray, label: int, spacing=(1.0, 1.0, 1.0)) -> dict[str, float]:
    """Symmetric surface distances (mm) between the ``label`` masks of two label maps.

    Args:
        a, b: label maps of the same shape (ground truth and prediction; the metrics are symmetric).
        label: the label compared.
        spacing: voxel size (mm) along each array axis.

    Returns:
        ``{"hausdorff", "hd95", "mean_surface"}`` (see the module documentation): 0.0 when the
        label is absent from both maps, ``inf`` when absent from one.
    """
    a, b = _same_shape(a, b)
    ma, mb = a == label, b == label
    box = _union_box(ma, mb, _PAD)
    if box is None or not ma.any() or not mb.any():
        return _empty_distances(ma.any(), mb.any())
    d_ab, d_ba = directed_distances(ma[box], mb[box], _spacing(spacing, a.ndim))
    return _summarise(d_ab, d_ba)


def directed_distances(mask_a: np.ndarray, mask_b: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from every surface voxel of ``mask_a`` to the surface of ``mask_b``, and back.

    Computed on the arrays as given (callers crop them to the masks' bounding box first);
    both masks must be non-empty.

    Returns:
        ``(d_ab, d_ba)``: 1D float arrays, one distance per surface voxel of ``mask_a`` and of
        ``mask_b`` respectively.
    """
    spacing = _spacing(spacing, mask_a.ndim)
    surf_a, surf_b = _surface(mask_a), _surface(mask_b)
    d_ab = ndimage.distance_transform_edt(~surf_b, sampling=spacing)[surf_a]
    d_ba = ndimage.distance_transform_edt(~surf_a, sampling=spacing)[surf_b]
    return d_ab, d_ba


def volume_difference(a: np.ndarray, b: np.ndarray, label: int, spacing=(1.0, 1.0, 1.0)) -> dict[str, float]:
    """Volumes (mm^3) of ``label`` in ground truth ``a`` and prediction ``b``, and their difference.

    Returns:
        ``{"volume_true_mm3", "volume_pred_mm3", "volume_diff_mm3", "volume_diff_rel"}``:
        difference predicted minus true, absolute and relative to the true volume (``inf``
        when the true volume is 0 and the predicted one is not, 0.0 when both are 0).
    """
    a, b = _same_shape(a, b)
    voxel_mm3 = float(np.prod(_spacing(spacing, a.ndim)))
    return _volumes(int(np.count_nonzero(a == label)), int(np.count_nonzero(b == label)), voxel_mm3)


def evaluate_arrays(gt: np.ndarray, pred: np.ndarray, labels: Sequence[int], spacing=(1.0, 1.0, 1.0)) -> list[dict]:
    """Every metric of every label, for two label maps on the same grid.

    Each label is handled within the bounding box of its two masks (found for all labels at
    once), so the cost grows with the size of the structures rather than of the grid.

    Args:
        gt: ground-truth label map.
        pred: predicted label map, same shape.
        labels: labels to evaluate.
        spacing: voxel size (mm) along each array axis.

    Returns:
        One dict ``{"label", "name", "metric", "value"}`` per label and metric of :data:`METRICS`.
    """
    gt, pred = _same_shape(gt, pred)
    spacing = _spacing(spacing, gt.ndim)
    voxel_mm3 = float(np.prod(spacing))
    labels = _label_list(labels)
    names = _names()
    boxes_gt, boxes_pred = _label_boxes(gt, labels), _label_boxes(pred, labels)
    rows = []
    for label in labels:
        box = _merge_boxes(boxes_gt[label], boxes_pred[label], gt.shape, _PAD)
        if box is None:
            n_a = n_b = n_ab = 0
            ma = mb = None
        else:
            ma, mb = gt[box] == label, pred[box] == label
            n_a, n_b, n_ab = int(np.count_nonzero(ma)), int(np.count_nonzero(mb)), int(np.count_nonzero(ma & mb))
        values = {"dice": _dice_from_counts(n_a, n_b, n_ab)}
        if n_a and n_b:
            values.update(_summarise(*directed_distances(ma, mb, spacing)))
        else:
            values.update(_empty_distances(n_a > 0, n_b > 0))
        values.update(_volumes(n_a, n_b, voxel_mm3))
        name = names.get(label, f"label_{label}")
        rows.extend({"label": label, "name": name, "metric": m, "value": float(values[m])} for m in METRICS)
    return rows


# ----------------------------------------------------------------------------- files
def evaluate_pair(gt_path, pred_path, labels: Sequence[int], on_mismatch: str = "resample") -> list[dict]:
    """Every metric of every label for one ground-truth file and one prediction file.

    The voxel size comes from the ground truth's affine (norms of its columns; the distance
    transforms assume orthogonal voxel axes, exact for any rotation, approximate for a sheared
    grid). A prediction on another grid (shape
    or affine) is, with ``on_mismatch="resample"``, resampled onto the ground truth's grid by
    nearest neighbour in world coordinates (mm) with a warning (ground-truth voxels outside the
    prediction's extent get label 0); with ``on_mismatch="error"`` it is an :class:`InputError`
    naming both files.

    Returns:
        The rows of :func:`evaluate_arrays`.

    Raises:
        InputError: unreadable file, not a 3D label map, different grids in ``"error"`` mode.
    """
    if on_mismatch not in ("resample", "error"):
        raise ValueError(f"on_mismatch must be 'resample' or 'error', got {on_mismatch!r}")
    gt_vol, pred_vol = load_volume(gt_path), load_volume(pred_path)
    gt, pred = _label_data(gt_vol.data, gt_path), _label_data(pred_vol.data, pred_path)
    same = gt.shape == pred.shape and np.allclose(gt_vol.affine, pred_vol.affine, rtol=0, atol=_AFFINE_TOL)
    if not same:
        what = (f"prediction grid (shape {pred.shape}, voxel {_fmt_mm(voxel_size_of(pred_vol.affine))} mm) differs "
                f"from ground truth {gt_path} (shape {gt.shape}, voxel {_fmt_mm(voxel_size_of(gt_vol.affine))} mm)")
        if on_mismatch == "error":
            raise InputError(f"{what}; resample it or use on_mismatch='resample'", pred_path)
        from lab2im.geometry import resample_to_grid

        warnings.warn(f"{pred_path}: {what}; resampled onto the ground-truth grid (nearest neighbour)",
                      stacklevel=2)
        pred = resample_to_grid(pred, pred_vol.affine, gt.shape, gt_vol.affine, order=0, fill=0)
    return evaluate_arrays(gt, pred, labels, voxel_size_of(gt_vol.affine))


def subject_key(path) -> str:
    """Subject name of a label map file: file name without the volume suffix and without
    prediction / ground-truth endings (:data:`PREDICTION_SUFFIXES`), e.g.
    ``"pred/sub-01_T1w_synthseg.nii.gz"`` -> ``"sub-01_T1w"``."""
    name = os.path.basename(strip_volume_suffix(path))
    pattern = re.compile(r"^(.+?)[_.-](?:" + "|".join(PREDICTION_SUFFIXES) + r")$", re.IGNORECASE)
    while (m := pattern.match(name)) is not None:
        name = m.group(1)
    return name


def match_subjects(gt_files: Sequence,
                   pred_files: Sequence) -> tuple[dict[str, tuple[Path, Path]], list[str], list[str]]:
    """Pair ground-truth and prediction files by :func:`subject_key`.

    Returns:
        ``(pairs, gt_only, pred_only)``: ``{subject: (gt_file, pred_file)}`` sorted by subject,
        and the sorted subjects with a ground truth but no prediction, and vice versa.

    Raises:
        InputError: two files of one folder have the same subject name.
    """
    gt, pred = _keyed(gt_files), _keyed(pred_files)
    pairs = {s: (gt[s], pred[s]) for s in sorted(gt.keys() & pred.keys())}
    return pairs, sorted(gt.keys() - pred.keys()), sorted(pred.keys() - gt.keys())


@dataclass
class Evaluation:
    """What :func:`evaluate_folders` computed and wrote.

    Attributes:
        rows: one dict per subject, method, label and metric (the columns of ``metrics.csv``).
        paired: one dict per label and metric of :data:`PAIRED_METRICS` (the columns of
            ``paired_tests.csv``); empty without a second method.
        summary: subjects matched and unmatched per method, mean Dice per label and method
            (the content of ``summary.json``).
        methods: method names, in order.
        written: files written.
    """

    rows: list[dict]
    paired: list[dict]
    summary: dict
    methods: list[str]
    written: list[Path] = field(default_factory=list)

    def values(self, method: str, label: int, metric: str) -> dict[str, float]:
        """``{subject: value}`` of one method, label and metric."""
        return {r["subject"]: r["value"] for r in self.rows
                if r["method"] == method and r["label"] == label and r["metric"] == metric}


def evaluate_folders(gt_dir, pred_dir, labels: Sequence[int], pred2_dir=None, out_dir=None,
                     on_mismatch: str = "resample", method_names: Sequence[str] | None = None) -> Evaluation:
    """Evaluate a folder of predictions (and optionally a second one) against a folder of ground truths.

    Subjects are matched by name (:func:`subject_key`: volume suffix and endings like
    ``_synthseg`` stripped). Ground truths without a prediction and predictions without a ground
    truth are skipped with a warning and listed in ``summary.json``. With ``pred2_dir``, the two
    methods are compared per label and metric with :func:`paired_test` on the subjects both
    predicted.

    Args:
        gt_dir: ground-truth label maps (folder, file, or ``.txt`` list).
        pred_dir: predictions of the first method.
        labels: labels to evaluate.
        pred2_dir: predictions of a second method, or ``None``.
        out_dir: folder to write into (created): ``metrics.csv``, ``summary.json``,
            ``dice_boxplot.png``, ``hd95_boxplot.png`` and, with two methods,
            ``paired_tests.csv``; ``None`` writes nothing.
        on_mismatch: prediction on another grid than its ground truth: ``"resample"`` or
            ``"error"`` (see :func:`evaluate_pair`).
        method_names: names of the methods; default: the prediction folders' names (``"A"``,
            ``"B"`` when they are the same).

    Raises:
        InputError: missing or empty folder, unreadable file, no subject with both a ground
            truth and a prediction, different grids in ``"error"`` mode.
    """
    labels = _label_list(labels)
    if not labels:
        raise InputError("no labels to evaluate")
    pred_dirs = [pred_dir] + ([pred2_dir] if pred2_dir is not None else [])
    methods = _method_names(pred_dirs, method_names)
    gt_files = list_volume_files(gt_dir, "ground-truth label map")
    rows, summary = [], {"labels": labels, "methods": {}, "hd95_definition": "95th percentile of the pooled "
                         "directed surface distances (both directions)"}
    matched_by_method = {}
    for method, folder in zip(methods, pred_dirs):
        pairs, gt_only, pred_only = match_subjects(gt_files, list_volume_files(folder, "prediction"))
        if gt_only:
            warnings.warn(f"{folder}: no prediction for {len(gt_only)} ground truth(s): {_short_list(gt_only)}",
                          stacklevel=2)
        if pred_only:
            warnings.warn(f"{folder}: no ground truth for {len(pred_only)} prediction(s): {_short_list(pred_only)}",
                          stacklevel=2)
        if not pairs:
            raise InputError(f"no prediction matches a ground truth in {gt_dir} (subject names: "
                             f"{_short_list(pred_only)})", folder)
        for subject, (g, p) in pairs.items():
            for row in evaluate_pair(g, p, labels, on_mismatch):
                rows.append({"subject": subject, "method": method, **row})
        matched_by_method[method] = list(pairs)
        summary["methods"][method] = {"folder": str(folder), "n_matched": len(pairs), "matched": list(pairs),
                                      "gt_without_prediction": gt_only, "predictions_without_gt": pred_only}
    result = Evaluation(rows=rows, paired=[], summary=summary, methods=methods)
    summary["mean_dice"] = {m: {str(lab): _finite_mean(result.values(m, lab, "dice").values()) for lab in labels}
                            for m in methods}
    if len(methods) == 2:
        common = sorted(set(matched_by_method[methods[0]]) & set(matched_by_method[methods[1]]))
        summary["paired_subjects"] = common
        result.paired = _paired_rows(result, labels, methods, common)
    if out_dir is not None:
        result.written = _write_outputs(result, Path(out_dir))
    return result


# ----------------------------------------------------------------------------- statistics
def paired_test(values_a: Sequence[float], values_b: Sequence[float], higher_is_better: bool = True,
                names: Sequence[str] = ("A", "B")) -> dict:
    """Wilcoxon signed-rank test of paired values of two methods (:func:`scipy.stats.wilcoxon`,
    two-sided, zero differences dropped, scipy's default exact / normal method).

    Pairs with a NaN are dropped; a pair where both values are equal (``inf`` included) counts as
    a zero difference.

    Args:
        values_a, values_b: one value per subject, same order.
        higher_is_better: ``True`` for Dice, ``False`` for distances and errors.
        names: the two methods' names, used in ``"better"``.

    Returns:
        ``{"n", "median_a", "median_b", "median_difference", "better", "statistic", "p_value",
        "note"}``: ``n`` the pairs used; ``median_difference`` the median of ``a - b``;
        ``better`` the name of the method favoured by the median difference (``None`` when it
        is 0, or when undefined); when every difference is zero, statistic 0.0 and p-value 1.0
        with a note (no test needed), and with no pairs, NaNs.

    Raises:
        ValueError: the two sequences have different lengths.
    """
    a, b = np.asarray(values_a, dtype=float).ravel(), np.asarray(values_b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same length; got {a.size} and {b.size}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    out = {"n": int(a.size), "median_a": _median(a), "median_b": _median(b), "median_difference": float("nan"),
           "better": None, "statistic": float("nan"), "p_value": float("nan"), "note": ""}
    if a.size == 0:
        out["note"] = "no pairs"
        return out
    with np.errstate(invalid="ignore"):
        d = np.where(a == b, 0.0, a - b)
    med = float(np.median(d))
    out["median_difference"] = med
    if med != 0 and not math.isnan(med):
        out["better"] = names[0] if (med > 0) == higher_is_better else names[1]
    if not np.any(d != 0):
        out.update(statistic=0.0, p_value=1.0, note="all differences are zero")
        return out
    from scipy import stats  # imported here: keeps `synthseg --help` quick

    res = stats.wilcoxon(d)
    out.update(statistic=float(res.statistic), p_value=float(res.pvalue))
    if out["better"] is None:
        out["note"] = "median difference is zero"
    return out


# ----------------------------------------------------------------------------- helpers
def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _summarise(d_ab: np.ndarray, d_ba: np.ndarray) -> dict[str, float]:
    pooled = np.concatenate([d_ab, d_ba])
    return {"hausdorff": float(max(d_ab.max(), d_ba.max())), "hd95": float(np.percentile(pooled, 95)),
            "mean_surface": float(pooled.mean())}


def _empty_distances(a_present: bool, b_present: bool) -> dict[str, float]:
    value = 0.0 if not a_present and not b_present else math.inf
    return {"hausdorff": value, "hd95": value, "mean_surface": value}


def _dice_from_counts(n_a: int, n_b: int, n_ab: int) -> float:
    return 1.0 if n_a + n_b == 0 else 2.0 * n_ab / (n_a + n_b)


def _volumes(n_a: int, n_b: int, voxel_mm3: float) -> dict[str, float]:
    va, vb = n_a * voxel_mm3, n_b * voxel_mm3
    rel = (vb - va) / va if va > 0 else (math.inf if vb > 0 else 0.0)
    return {"volume_true_mm3": va, "volume_pred_mm3": vb, "volume_diff_mm3": vb - va, "volume_diff_rel": rel}


def _label_boxes(arr: np.ndarray, labels: list[int]) -> dict[int, tuple[slice, ...] | None]:
    """Bounding box (slices) of each label in ``arr``, ``None`` for absent labels; one pass
    (:func:`scipy.ndimage.find_objects`) for positive labels of moderate size."""
    positive = [lab for lab in labels if lab > 0]
    boxes: dict[int, tuple[slice, ...] | None] = {}
    if positive and max(positive) <= 1_000_000 and np.issubdtype(arr.dtype, np.integer):
        work = arr if arr.dtype.kind == "i" or arr.dtype.itemsize < 8 else arr.astype(np.int64)
        if work.min(initial=0) < 0:
            work = np.where(work < 0, 0, work)
        found = ndimage.find_objects(work, max_label=max(positive))
        boxes = {lab: found[lab - 1] for lab in positive}
    for lab in labels:
        if lab not in boxes:
            boxes[lab] = _mask_box(arr == lab)
    return boxes


def _mask_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    if not mask.any():
        return None
    box = []
    for axis in range(mask.ndim):
        other = tuple(i for i in range(mask.ndim) if i != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)


def _merge_boxes(box_a, box_b, shape, pad: int) -> tuple[slice, ...] | None:
    boxes = [b for b in (box_a, box_b) if b is not None]
    if not boxes:
        return None
    return tuple(slice(max(min(b[i].start for b in boxes) - pad, 0), min(max(b[i].stop for b in boxes) + pad, n))
                 for i, n in enumerate(shape))


def _union_box(ma: np.ndarray, mb: np.ndarray, pad: int) -> tuple[slice, ...] | None:
    return _merge_boxes(_mask_box(ma), _mask_box(mb), ma.shape, pad)


def _same_shape(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"label maps have different shapes {a.shape} and {b.shape}")
    return a, b


def _spacing(spacing, ndim: int) -> np.ndarray:
    s = np.asarray(spacing, dtype=float).ravel()
    if s.size == 1:
        s = np.repeat(s, ndim)
    if s.size != ndim or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"spacing must be {ndim} positive voxel sizes (mm), got {spacing!r}")
    return s


def _label_list(labels) -> list[int]:
    arr = np.asarray(labels).ravel()
    if arr.size and not np.all(np.equal(np.mod(arr.astype(float), 1), 0)):
        raise InputError(f"labels must be integers, got {arr.tolist()[:8]}")
    return list(dict.fromkeys(int(v) for v in arr))


def _label_data(data: np.ndarray, path) -> np.ndarray:
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"label map has shape {data.shape}; expected 3D", path)
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)) or np.any(np.round(data) != data):
            raise InputError("not a label map: it has non-integer values", path)
        data = np.round(data).astype(np.int32)
    return data


def _names() -> dict[int, str]:
    from synthseg.labels import label_names

    return label_names()


def _keyed(files) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in files:
        key = subject_key(f)
        if key in out:
            raise InputError(f"two files have the subject name {key!r}: {out[key].name} and {Path(f).name}",
                             Path(f).parent)
        out[key] = Path(f)
    return out


def _method_names(folders, names) -> list[str]:
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != len(folders) or len(set(names)) != len(names):
            raise ValueError(f"need {len(folders)} distinct method names, got {names}")
        return names
    base = [Path(os.path.abspath(f)).name or str(f) for f in folders]
    return base if len(set(base)) == len(base) else ["A", "B"][: len(folders)]


def _paired_rows(result: Evaluation, labels, methods, subjects) -> list[dict]:
    names = _names()
    out = []
    for label in labels:
        for metric, higher in PAIRED_METRICS.items():
            source = "volume_diff_rel" if metric == "abs_volume_diff_rel" else metric
            va, vb = (result.values(m, label, source) for m in methods)
            a = np.array([va[s] for s in subjects], float)
            b = np.array([vb[s] for s in subjects], float)
            if source != metric:
                a, b = np.abs(a), np.abs(b)
            test = paired_test(a, b, higher_is_better=higher, names=methods)
            out.append({"label": label, "name": names.get(label, f"label_{label}"), "metric": metric,
                        "method_a": methods[0], "method_b": methods[1], **test})
    return out


def _write_outputs(result: Evaluation, out_dir: Path) -> list[Path]:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder ({exc.strerror})", out_dir) from None
    written = [atomic_write_text(out_dir / "metrics.csv", _csv(CSV_COLUMNS, result.rows))]
    if result.paired:
        written.append(atomic_write_text(out_dir / "paired_tests.csv", _csv(PAIRED_COLUMNS, result.paired)))
    written.append(atomic_write_text(out_dir / "summary.json",
                                     json.dumps(_json_safe(result.summary), indent=2) + "\n"))
    labels = result.summary["labels"]
    written.append(boxplot(result, "dice", labels, out_dir / "dice_boxplot.png", "Dice"))
    written.append(boxplot(result, "hd95", labels, out_dir / "hd95_boxplot.png", "HD95 (mm)"))
    return written


def boxplot(result: Evaluation, metric: str, labels: Sequence[int], path, ylabel: str) -> Path:
    """PNG (written atomically) of one metric: a box per label and method over subjects;
    infinite values (a label missing from a map) are left out and counted in the title."""
    import matplotlib.pyplot as plt

    from synthseg.plots import save_figure  # sets the Agg backend

    names = _names()
    methods = result.methods
    n_lab, n_met = len(labels), len(methods)
    width = 0.8 / n_met
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * n_lab * max(n_met, 1.5) + 1.5), 4.2), layout="constrained")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    n_inf = 0
    for j, method in enumerate(methods):
        data, pos = [], []
        for i, label in enumerate(labels):
            v = np.array(list(result.values(method, label, metric).values()), float)
            n_inf += int(np.sum(~np.isfinite(v)))
            data.append(v[np.isfinite(v)])
            pos.append(i + (j - (n_met - 1) / 2) * width)
        bp = ax.boxplot(data, positions=pos, widths=width * 0.85, patch_artist=True, manage_ticks=False,
                        flierprops={"markersize": 3}, medianprops={"color": "black"})
        for box in bp["boxes"]:
            box.set(facecolor=colours[j % len(colours)], alpha=0.6)
        ax.plot([], [], "s", color=colours[j % len(colours)], alpha=0.6, label=method)
    ax.set_xticks(range(n_lab))
    ax.set_xticklabels([names.get(lab, str(lab)) for lab in labels], rotation=60, ha="right", fontsize=7)
    ax.set_xlim(-0.6, n_lab - 0.4)
    ax.set_ylabel(ylabel)
    title = f"{ylabel} per label"
    if n_inf:
        title += f" ({n_inf} infinite value(s) left out: label missing from a map)"
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if n_met > 1:
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def _csv(columns, rows) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else ("" if v is None else v)) for k, v in row.items()})
    return buf.getvalue()


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _finite_mean(values) -> float | None:
    v = np.array(list(values), float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None


def _median(v: np.ndarray) -> float:
    return float(np.median(v)) if v.size else float("nan")


def _short_list(items, n: int = 5) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def _fmt_mm(v) -> str:
    return "x".join(f"{x:.3g}" for x in v)


# ----------------------------------------------------------------------------- command line
def add_arguments(parser) -> None:
    """Options of ``synthseg evaluate``."""
    parser.add_argument("--gt", required=True, help="folder (or .txt list) of ground-truth label maps")
    parser.add_argument("--pred", required=True, help="folder (or .txt list) of predicted label maps")
    parser.add_argument("--pred2", default=None, help="predictions of a second method, compared with "
                        "--pred by Wilcoxon signed-rank tests")
    parser.add_argument("--labels", required=True, nargs="+",
                        help="labels to evaluate (e.g. 2 3 41 42), or one .npy file of labels")
    parser.add_argument("--out", required=True, help="output folder (metrics.csv, figures, summary.json)")
    parser.add_argument("--on-mismatch", choices=("resample", "error"), default="resample",
                        help="prediction on another grid than its ground truth: resample it (nearest "
                             "neighbour, with a warning; default) or stop with an error")


def parse_labels(values: Sequence[str]) -> list[int]:
    """``--labels`` values: integers, or a single ``.npy`` file of integers.

    Raises:
        InputError: unreadable ``.npy`` file, or values that are not integers.
    """
    if len(values) == 1 and str(values[0]).lower().endswith(".npy"):
        path = Path(values[0])
        if not path.is_file():
            raise InputError("no such label list file", path)
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:  # numpy raises several types for bad files
            raise InputError(f"not a readable .npy file ({type(exc).__name__})", path) from None
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise InputError(f"expected numeric labels, got dtype {arr.dtype}", path)
        return _label_list(arr)
    try:
        return [int(v) for v in values]
    except ValueError:
        raise InputError(f"--labels must be integers or one .npy file, got {' '.join(values)}") from None


def summary_table(result: Evaluation) -> str:
    """Plain-text table: mean Dice per label and method, and with two methods the paired tests'
    p-values (Dice, HD95) and the better method."""
    labels = result.summary["labels"]
    names = _names()
    headers = ["label", "name"] + [f"Dice {m}" for m in result.methods]
    paired = {(r["label"], r["metric"]): r for r in result.paired}
    if paired:
        headers += ["p Dice", "better Dice", "p HD95", "better HD95"]
    rows = []
    for label in labels:
        row = [str(label), names.get(label, f"label_{label}")]
        for m in result.methods:
            mean = result.summary["mean_dice"][m][str(label)]
            row.append("-" if mean is None else f"{mean:.3f}")
        if paired:
            for metric in ("dice", "hd95"):
                t = paired[(label, metric)]
                row += ["-" if math.isnan(t["p_value"]) else f"{t['p_value']:.3g}", t["better"] or "-"]
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
              for r in rows]
    return "\n".join(lines)


def run(args) -> int:
    """``synthseg evaluate``: warnings are printed as one line each on stderr as they happen."""
    import sys

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"synthseg: warning: {message}", file=sys.stderr)

    labels = parse_labels(args.labels)
    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = show
        result = evaluate_folders(args.gt, args.pred, labels, pred2_dir=args.pred2, out_dir=args.out,
                                  on_mismatch=args.on_mismatch)
    n = {m: s["n_matched"] for m, s in result.summary["methods"].items()}
    print(f"evaluated {', '.join(f'{m}: {k} subject(s)' for m, k in n.items())}; {len(labels)} label(s)")
    print(summary_table(result))
    print(f"wrote {len(result.written)} files to {args.out}/")
    return 0
