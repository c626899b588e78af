"""Evaluate segmentations against ground truth: Dice, surface distances, volumes, paired tests.

Metrics (per label, numpy/scipy only):

* **Dice** ``2 |A n B| / (|A| + |B|)``.
* **Surface distances** in mm, between sub-voxel *surfaces* of the two masks, in the way of
  DeepMind's ``surface-distance`` package refined by constrained surface nets (Gibson 1998)
  bent to least curvature (the smoothness prior of Lempitsky 2010, put on the net):

  - the surface of a mask is one point per *cell*, the box between 2x2x2 neighbouring voxel
    centres, whose eight voxels are not all inside nor all outside the mask (voxels beyond the
    grid count as outside). The *net* links the cells across each cell face with both inside
    and outside voxels. Each point starts at its cell's centre (the corner shared by the eight
    voxels) and is moved :data:`SURFACE_RELAXATION` times to the mean of its neighbours while
    kept inside its cell: this smooths the voxel staircase into a surface close to the true
    one wherever it is oblique to the grid, but pulls the net taut (it minimises area): it
    lies inside convex parts and outside concave ones, and a flat patch facing a grid axis
    (the cap of a sphere along a coarse axis) stays flat in the middle of its cells, up to
    half a voxel from the true surface;
  - ``surfaces="smooth"`` (the default) then bends the net to the least squared curvature
    with every point still in its cell: the points minimise ``sum ||L x||^2``, ``L x`` the
    difference between a point and the mean of its neighbours (the umbrella Laplacian, a
    discrete curvature vector), by accelerated projected gradient (FISTA with adaptive
    restart) until no point moves more than :data:`SMOOTH_TOLERANCE` voxel over
    :data:`SMOOTH_CHECK` steps. Curvature is then carried smoothly across flat patches, which
    become caps of the right height, and the taut bias is gone. ``surfaces="fast"`` stops
    after the relaxation (about 8x faster on 1 mm brains; see the accuracy below);
  - each point carries the area (mm^2) of surface it stands for: the voxel faces between
    inside and outside voxels in its cell, a quarter of each face's area (a face has four
    corners), summed as oriented vectors (voxel size on each axis) for each connected part of
    the cell, so an oblique plane gets its true area rather than its staircase's;
  - for every point of one surface the distance (mm, Euclidean with the voxel size on each
    axis) to the nearest point of the other is found with a KD-tree. Only the bounding box of
    the two masks is handled; the net is computed relative to its first cell, so the result
    is bit for bit that of the whole grid.

  From the two directed sets of distances, pooled:

  - ``hausdorff``: the largest distance, either way (symmetric Hausdorff distance);
  - ``hd95``: the area-weighted 95th percentile of the pooled distances: the smallest distance
    ``d`` such that the points at ``d`` or less carry at least 95% of the two surfaces' total
    area. Note: other tools (MedPy, MONAI) take instead the larger of the two directed 95th
    percentiles, which is greater or equal;
  - ``mean_surface``: the area-weighted mean of the pooled distances, ``(sum_A w d + sum_B w d)
    / (area_A + area_B)`` (average symmetric surface distance).

  Accuracy, ``benchmarks/surface_accuracy.py``: 100 random pairs of concentric spheres per
  voxel size (radii 4 to 32 mm, random sub-voxel centres; every distance is ``R - r``). Smooth
  surfaces: Hausdorff +0.23 to +0.76 mm at 1 x 1 x 2 mm, +0.17 to +0.48 at 0.8 x 1 x 1.5,
  +0.28 to +0.94 at 1 x 1 x 3, +0.09 to +0.35 at 0.5 x 0.5 x 1; HD95 and the mean surface
  distance closer still: every metric of all 400 pairs within half the largest voxel side.
  Fast surfaces: Hausdorff up to +1.27, +0.93, +2.16 and +0.74 mm (85 to 93 pairs in 100
  within half a voxel); for comparison, voxel surfaces with distance transforms (as MedPy and
  MONAI measure): up to +1.96, +1.35, +2.44 and +0.92 mm (69 to 77 in 100), with mean surface
  distances down to -0.72 mm. ``tests/test_evaluate.py`` checks fixed and random cases.

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
import functools
import io
import itertools
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage, sparse
from scipy.spatial import KDTree
from tqdm import tqdm

from lab2im.errors import InputError
from lab2im.io import (atomic_write_text, check_folder_writable, check_not_an_input, format_mm, list_volume_files,
                       load_volume, strip_volume_suffix, usable_cpus, voxel_size_of)

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
#: Surfaces between which distances are measured (see the module documentation): ``"smooth"``
#: (least squared curvature, the default) or ``"fast"`` (area-minimising relaxation only).
SURFACES = ("smooth", "fast")
#: Relaxation steps of the surface nets (see the module documentation); 0 keeps the points at
#: the cell centres (the surface elements of DeepMind's ``surface-distance``).
SURFACE_RELAXATION = 10
#: Smooth surfaces: at most this many steps; stop once no point moved more than
#: ``SMOOTH_TOLERANCE`` voxel over the last ``SMOOTH_CHECK`` steps.
SMOOTH_MAX_STEPS = 1000
SMOOTH_TOLERANCE = 0.01
SMOOTH_CHECK = 10
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


def surface_distances(a: np.ndarray, b: np.ndarray, label: int, spacing=(1.0, 1.0, 1.0),
                      surfaces: str = "smooth") -> dict[str, float]:
    """Symmetric surface distances (mm) between the ``label`` masks of two label maps.

    Args:
        a, b: label maps of the same shape (ground truth and prediction; the metrics are symmetric).
        label: the label compared.
        spacing: voxel size (mm) along each array axis.
        surfaces: ``"smooth"`` or ``"fast"`` (see the module documentation).

    Returns:
        ``{"hausdorff", "hd95", "mean_surface"}`` in mm (see the module documentation): 0.0 when
        the label is absent from both maps, ``inf`` when absent from one.
    """
    _check_surfaces(surfaces)
    a, b = _same_shape(a, b)
    ma, mb = a == label, b == label
    box = _union_box(ma, mb)
    if box is None or not ma.any() or not mb.any():
        return _empty_distances(ma.any(), mb.any())
    return _summarise(*_distances(ma[box], mb[box], _spacing(spacing, a.ndim), _origin(box), surfaces))


def surface_points(mask: np.ndarray, spacing=(1.0, 1.0, 1.0), surfaces: str = "smooth") -> tuple[np.ndarray, np.ndarray]:
    """Sub-voxel surface of a 2D or 3D mask: the relaxed surface-net points and their areas.

    See the module documentation for the definition.

    Args:
        mask: boolean array, non-empty.
        spacing: voxel size (mm) along each array axis.
        surfaces: ``"smooth"`` or ``"fast"``.

    Returns:
        ``(points, areas)``: ``(n, ndim)`` positions in mm (the centre of voxel ``(0, 0, 0)`` at
        the origin, axes as the array's) and ``(n,)`` areas in mm^2 (lengths in mm in 2D).
    """
    _check_surfaces(surfaces)
    mask = np.asarray(mask, bool)
    return _surface_net(mask, _spacing(spacing, mask.ndim), (0,) * mask.ndim, surfaces)


def directed_distances(mask_a: np.ndarray, mask_b: np.ndarray, spacing,
                       surfaces: str = "smooth") -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from every surface point of ``mask_a`` to the surface of ``mask_b``, and back.

    The surfaces are those of :func:`surface_points`, computed on the arrays as given (callers
    crop them to the masks' bounding box first); both masks must be non-empty.

    Returns:
        ``(d_ab, d_ba)``: 1D float arrays, one distance per surface point of ``mask_a`` and of
        ``mask_b`` respectively (in the order of :func:`surface_points`).
    """
    _check_surfaces(surfaces)
    mask_a, mask_b = np.asarray(mask_a, bool), np.asarray(mask_b, bool)
    d_ab, _, d_ba, _ = _distances(mask_a, mask_b, _spacing(spacing, mask_a.ndim), (0,) * mask_a.ndim, surfaces)
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


def evaluate_arrays(gt: np.ndarray, pred: np.ndarray, labels: Sequence[int], spacing=(1.0, 1.0, 1.0),
                    surfaces: str = "smooth", threads: int | None = None) -> list[dict]:
    """Every metric of every label, for two label maps on the same grid.

    Each label is handled within the bounding box of its two masks (found for all labels at
    once), so the cost grows with the size of the structures rather than of the grid. Labels
    are computed in parallel threads (numpy, scipy's sparse products and KD-trees release the
    GIL); the results do not depend on the number of threads.

    Args:
        gt: ground-truth label map.
        pred: predicted label map, same shape.
        labels: labels to evaluate.
        spacing: voxel size (mm) along each array axis.
        surfaces: surfaces of the distances, ``"smooth"`` or ``"fast"`` (see the module documentation).
        threads: worker threads; ``None``: the CPUs this process may use.

    Returns:
        One dict ``{"label", "name", "metric", "value"}`` per label and metric of :data:`METRICS`.
    """
    _check_surfaces(surfaces)
    _check_threads(threads)
    gt, pred = _same_shape(gt, pred)
    spacing = _spacing(spacing, gt.ndim)
    voxel_mm3 = float(np.prod(spacing))
    labels = _label_list(labels)
    names = _names()
    boxes_gt, boxes_pred = _label_boxes(gt, labels), _label_boxes(pred, labels)
    boxes = {label: _merge_boxes(boxes_gt[label], boxes_pred[label]) for label in labels}

    def label_values(label: int) -> dict[str, float]:
        box = boxes[label]
        if box is None:
            n_a = n_b = n_ab = 0
            ma = mb = None
        else:
            ma, mb = gt[box] == label, pred[box] == label
            n_a, n_b, n_ab = int(np.count_nonzero(ma)), int(np.count_nonzero(mb)), int(np.count_nonzero(ma & mb))
        values = {"dice": _dice_from_counts(n_a, n_b, n_ab)}
        if n_a and n_b:
            values.update(_summarise(*_distances(ma, mb, spacing, _origin(box), surfaces)))
        else:
            values.update(_empty_distances(n_a > 0, n_b > 0))
        values.update(_volumes(n_a, n_b, voxel_mm3))
        return values

    workers = min(len(labels), usable_cpus() if threads is None else int(threads))
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:  # the largest labels first: the pool stays busy
            order = sorted(labels, key=lambda lab: -_box_size(boxes[lab]))
            by_label = dict(zip(order, pool.map(label_values, order)))
    else:
        by_label = {label: label_values(label) for label in labels}
    rows = []
    for label in labels:
        name = names.get(label, f"label_{label}")
        rows.extend({"label": label, "name": name, "metric": m, "value": float(by_label[label][m])} for m in METRICS)
    return rows


def _box_size(box) -> int:
    return 0 if box is None else int(np.prod([sl.stop - sl.start for sl in box]))


# ----------------------------------------------------------------------------- files
def evaluate_pair(gt_path, pred_path, labels: Sequence[int], on_mismatch: str = "resample",
                  surfaces: str = "smooth", threads: int | None = None) -> list[dict]:
    """Every metric of every label for one ground-truth file and one prediction file.

    The voxel size comes from the ground truth's affine (norms of its columns; the distance
    transforms assume orthogonal voxel axes, exact for any rotation, approximate for a sheared
    grid). A prediction on another grid (shape
    or affine) is, with ``on_mismatch="resample"``, resampled onto the ground truth's grid by
    nearest neighbour in world coordinates (mm) with a warning (ground-truth voxels outside the
    prediction's extent get label 0); with ``on_mismatch="error"`` it is an :class:`InputError`
    naming both files.

    ``surfaces``, ``threads``: as in :func:`evaluate_arrays`.

    Returns:
        The rows of :func:`evaluate_arrays`.

    Raises:
        InputError: unreadable file, not a 3D label map, different grids in ``"error"`` mode.
    """
    if on_mismatch not in ("resample", "error"):
        raise ValueError(f"on_mismatch must be 'resample' or 'error', got {on_mismatch!r}")
    _check_surfaces(surfaces)
    gt_vol, pred_vol = load_volume(gt_path), load_volume(pred_path)
    gt, pred = _label_data(gt_vol.data, gt_path), _label_data(pred_vol.data, pred_path)
    same = gt.shape == pred.shape and np.allclose(gt_vol.affine, pred_vol.affine, rtol=0, atol=_AFFINE_TOL)
    if not same:
        what = (f"prediction grid (shape {pred.shape}, voxel {format_mm(voxel_size_of(pred_vol.affine))} mm) differs "
                f"from ground truth {gt_path} (shape {gt.shape}, voxel {format_mm(voxel_size_of(gt_vol.affine))} mm)")
        if on_mismatch == "error":
            raise InputError(f"{what}; resample it or use on_mismatch='resample'", pred_path)
        from lab2im.geometry import resample_to_grid

        warnings.warn(f"{pred_path}: {what}; resampled onto the ground-truth grid (nearest neighbour)",
                      stacklevel=2)
        pred = resample_to_grid(pred, pred_vol.affine, gt.shape, gt_vol.affine, order=0, fill=0)
    return evaluate_arrays(gt, pred, labels, voxel_size_of(gt_vol.affine), surfaces, threads)


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
        failed: ``(file, problem)`` of the subjects that could not be evaluated (an unreadable
            file, not a label map, ...); the others were.
    """

    rows: list[dict]
    paired: list[dict]
    summary: dict
    methods: list[str]
    written: list[Path] = field(default_factory=list)
    failed: list = field(default_factory=list)

    def values(self, method: str, label: int, metric: str) -> dict[str, float]:
        """``{subject: value}`` of one method, label and metric."""
        return {r["subject"]: r["value"] for r in self.rows
                if r["method"] == method and r["label"] == label and r["metric"] == metric}


def evaluate_folders(gt_dir, pred_dir, labels: Sequence[int], pred2_dir=None, out_dir=None,
                     on_mismatch: str = "resample", method_names: Sequence[str] | None = None,
                     surfaces: str = "smooth", progress: bool = True, threads: int | None = None) -> Evaluation:
    """Evaluate a folder of predictions (and optionally a second one) against a folder of ground truths.

    Subjects are matched by name (:func:`subject_key`: volume suffix and endings like
    ``_synthseg`` stripped). Ground truths without a prediction and predictions without a ground
    truth are skipped with a warning and listed in ``summary.json``. A subject whose file cannot
    be evaluated (unreadable, not a 3D integer label map, negative labels, a grid mismatch in
    ``"error"`` mode) is skipped, listed in :attr:`Evaluation.failed` and in ``summary.json``
    (``failed``), and the others are evaluated; when no subject can be, that is an
    :class:`InputError` naming the first file. With ``pred2_dir``, the two
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
        surfaces: surfaces of the distances, ``"smooth"`` or ``"fast"`` (see the module
            documentation); recorded in ``summary.json``.
        progress: show a progress bar on stderr when it is a terminal, one step per subject
            and method.
        threads: worker threads for the labels of a subject (:func:`evaluate_arrays`).

    Raises:
        InputError: missing or empty folder, no subject with both a ground truth and a
            prediction, no subject that could be evaluated, an output folder that is an input
            or cannot be written (checked first).
    """
    _check_surfaces(surfaces)
    _check_threads(threads)  # before any file: not a per-subject failure
    labels = _label_list(labels)
    if not labels:
        raise InputError("no labels to evaluate")
    pred_dirs = [pred_dir] + ([pred2_dir] if pred2_dir is not None else [])
    if out_dir is not None:
        check_not_an_input(out_dir, [gt_dir, *pred_dirs])
        check_folder_writable(out_dir)
    methods = _method_names(pred_dirs, method_names)
    gt_files = list_volume_files(gt_dir, "ground-truth label map")
    rows, summary = [], {"labels": labels, "methods": {}, "surfaces": surfaces,
                         "hd95_definition": "95th percentile of the pooled directed surface distances (both "
                         "directions)"}
    matched_by_method, failed = {}, []
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
        done = []
        for subject, (g, p) in tqdm(pairs.items(), desc=f"evaluating {method}", unit="subject",
                                    disable=None if progress else True, file=sys.stderr):
            try:
                subject_rows = evaluate_pair(g, p, labels, on_mismatch, surfaces, threads)
            except InputError as exc:  # one bad file: reported, the other subjects go on
                entry = (exc.path or str(p), exc.problem)
                if entry not in failed:  # a bad ground truth fails once, not once per method
                    failed.append(entry)
                continue
            rows.extend({"subject": subject, "method": method, **row} for row in subject_rows)
            done.append(subject)
        matched_by_method[method] = done
        summary["methods"][method] = {"folder": str(folder), "n_matched": len(done), "matched": done,
                                      "gt_without_prediction": gt_only, "predictions_without_gt": pred_only}
    if failed:
        summary["failed"] = [{"file": str(f), "problem": problem} for f, problem in failed]
    if not rows:
        path, problem = failed[0]
        more = f" (and {len(failed) - 1} more failure(s))" if len(failed) > 1 else ""
        raise InputError(problem + more, path)
    result = Evaluation(rows=rows, paired=[], summary=summary, methods=methods, failed=failed)
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
#: significance level below which :func:`paired_test` names a better method
ALPHA = 0.05


def paired_test(values_a: Sequence[float], values_b: Sequence[float], higher_is_better: bool = True,
                names: Sequence[str] = ("A", "B"), alpha: float = ALPHA) -> dict:
    """Wilcoxon signed-rank test of paired values of two methods (:func:`scipy.stats.wilcoxon`,
    two-sided, zero differences dropped, scipy's default exact / normal method).

    Pairs with a NaN are dropped; a pair where both values are equal (``inf`` included) counts as
    a zero difference.

    Args:
        values_a, values_b: one value per subject, same order.
        higher_is_better: ``True`` for Dice, ``False`` for distances and errors.
        names: the two methods' names, used in ``"better"``.
        alpha: significance level: a method is named better only when ``p_value < alpha``.

    Returns:
        ``{"n", "median_a", "median_b", "median_difference", "better", "statistic", "p_value",
        "note"}``: ``n`` the pairs used; ``median_difference`` the median of ``a - b``;
        ``better`` the name of the method favoured by the median difference when the test is
        significant (else ``None``, the note says which way the median leaned and why no
        winner: too few subjects, p too high); when every difference is zero, statistic 0.0
        and p-value 1.0 with a note (no test needed), and with no pairs, NaNs.

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
    elif not out["p_value"] < alpha:
        out["note"] = (f"not significant (p = {out['p_value']:.3g} >= {alpha:g}"
                       f"{'; too few subjects for any test to be' if np.count_nonzero(d) < 6 else ''}); "
                       f"the median favours {out['better']}")
        out["better"] = None
    return out


# ----------------------------------------------------------------------------- helpers
def _distances(mask_a: np.ndarray, mask_b: np.ndarray, spacing: np.ndarray, origin,
               surfaces: str = "smooth") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(d_ab, areas_a, d_ba, areas_b)``: each surface point's distance (mm) to the other
    surface and its area (mm^2); ``origin``: index of the masks' first voxel in the whole grid."""
    points_a, areas_a = _surface_net(mask_a, spacing, origin, surfaces)
    points_b, areas_b = _surface_net(mask_b, spacing, origin, surfaces)
    d_ab = _nearest_distances(points_b, points_a)
    d_ba = _nearest_distances(points_a, points_b)
    return d_ab, areas_a, d_ba, areas_b


def _summarise(d_ab: np.ndarray, w_a: np.ndarray, d_ba: np.ndarray, w_b: np.ndarray) -> dict[str, float]:
    d, w = np.concatenate([d_ab, d_ba]), np.concatenate([w_a, w_b])
    order = np.argsort(d, kind="stable")
    cumulative = np.cumsum(w[order])
    k = int(np.searchsorted(cumulative, 0.95 * cumulative[-1]))  # first point reaching 95% of the area
    return {"hausdorff": float(d[order[-1]]), "hd95": float(d[order[k]]),
            "mean_surface": float(np.einsum("i,i->", w, d) / cumulative[-1])}  # no BLAS (threads)


def _surface_net(mask: np.ndarray, spacing: np.ndarray, origin,
                 surfaces: str = "smooth") -> tuple[np.ndarray, np.ndarray]:
    """Surface-net points (mm, whole-grid coordinates) and areas (mm^2) of a non-empty mask."""
    if mask.ndim not in (2, 3):
        raise ValueError(f"surface distances need 2D or 3D masks, got {mask.ndim}D")
    code = _cell_codes(mask)
    full = (1 << 2 ** mask.ndim) - 1
    on_surface = (code != 0) & (code != full)
    n = int(np.count_nonzero(on_surface))
    index = np.full(code.shape, -1, np.intp)
    index[on_surface] = np.arange(n)
    # links: two cells sharing a face with inside and outside voxels (both are then on the surface)
    ends_a, ends_b = [], []
    for axis in range(mask.ndim):
        face = sum(1 << bit for bit, offset in enumerate(_cell_offsets(mask.ndim)) if offset[axis] == 1)
        low = tuple(slice(0, -1) if i == axis else slice(None) for i in range(mask.ndim))
        high = tuple(slice(1, None) if i == axis else slice(None) for i in range(mask.ndim))
        shared = code[low] & face
        linked = (shared != 0) & (shared != face)
        ends_a.append(index[low][linked])
        ends_b.append(index[high][linked])
    a, b = np.concatenate(ends_a), np.concatenate(ends_b)
    links = sparse.csr_matrix((np.ones(2 * a.size), (np.concatenate([a, b]), np.concatenate([b, a]))), shape=(n, n))
    # every surface cell has such a face, and the padding makes it an inner one: degree >= 1
    mean_of_neighbours = (sparse.diags(1.0 / links.sum(axis=1).A1) @ links).tocsr()
    # cell (i, j, k) of the padded mask lies between voxels i - 1 and i (unpadded) on each axis;
    # the net is computed relative to the first cell's corner, so that the same mask gives the
    # same bits wherever it lies in a grid (bounding box or whole grid)
    cells = np.stack(np.nonzero(on_surface), axis=1)
    start = cells.min(axis=0)
    low_corner = (cells - start).astype(float)
    high_corner = low_corner + 1.0
    points = low_corner + 0.5
    for _ in range(SURFACE_RELAXATION):
        points = np.clip(mean_of_neighbours @ points, low_corner, high_corner, out=points)
    if surfaces == "smooth":  # (checked by the public functions: "smooth" or "fast")
        points = _bend_to_smoothest(mean_of_neighbours, points, low_corner, high_corner)
    offset = start + (np.asarray(origin, float) - 1.0)
    return (points + offset) * spacing, _cell_areas(tuple(spacing))[code[on_surface]]


def _bend_to_smoothest(mean_of_neighbours: sparse.csr_matrix, points: np.ndarray, low: np.ndarray,
                       high: np.ndarray) -> np.ndarray:
    """Points (voxel units) minimising ``||L x||^2`` with each point in its cell (``low`` to
    ``high``), ``L`` the umbrella Laplacian (mean of the neighbours minus the point): the net
    of least squared curvature. Accelerated projected gradient from ``points`` (FISTA with
    adaptive restart) until no point moves more than :data:`SMOOTH_TOLERANCE` voxel over
    :data:`SMOOTH_CHECK` steps, or :data:`SMOOTH_MAX_STEPS` steps."""
    n = points.shape[0]
    lap = (mean_of_neighbours - sparse.identity(n, format="csr")).tocsr()
    lap_t = lap.T.tocsr()
    absolute = abs(lap)
    # ||L||_2^2 <= ||L||_1 ||L||_inf: a safe step for the gradient L^T L x
    step = 1.0 / float(absolute.sum(axis=0).max() * absolute.sum(axis=1).max())
    x = points
    y, t, reference = x.copy(), 1.0, x.copy()
    for k in range(1, SMOOTH_MAX_STEPS + 1):
        new = y - step * (lap_t @ (lap @ y))
        np.clip(new, low, high, out=new)
        moved = new - x
        t_new = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        # (einsum, not vdot: BLAS threads would fight the label threads of evaluate_arrays)
        if np.einsum("ij,ij->", y - new, moved) > 0:  # momentum against the descent: restart
            t_new, y = 1.0, new.copy()
        else:
            y = moved
            y *= (t - 1.0) / t_new
            y += new
        x, t = new, t_new
        if k % SMOOTH_CHECK == 0:
            if np.abs(x - reference).max() < SMOOTH_TOLERANCE:
                break
            reference = x.copy()
    return x


def _nearest_distances(targets: np.ndarray, queries: np.ndarray) -> np.ndarray:
    # an unbalanced tree without shrunk nodes, 16 points a leaf: the fastest to build and query
    # on brain label surfaces (the answers are exact whatever the tree)
    return KDTree(targets, leafsize=16, balanced_tree=False, compact_nodes=False).query(queries)[0]


@functools.cache
def _cell_offsets(ndim: int) -> tuple[tuple[int, ...], ...]:
    """Bit ``b`` of a cell code is the voxel at offset ``_cell_offsets(ndim)[b]`` in the cell."""
    return tuple(itertools.product((0, 1), repeat=ndim))


def _cell_codes(mask: np.ndarray) -> np.ndarray:
    """Code of every cell of 2^ndim voxels of the mask padded by one outside voxel: shape + 1."""
    padded = np.pad(mask, 1)
    shape = tuple(n + 1 for n in mask.shape)
    code = np.zeros(shape, np.uint8)
    for bit, offset in enumerate(_cell_offsets(mask.ndim)):
        code |= padded[tuple(slice(o, o + n) for o, n in zip(offset, shape))].view(np.uint8) << bit
    return code


@functools.cache
def _cell_face_counts(ndim: int) -> np.ndarray:
    """``(codes, 2, parts, ndim)`` net counts of oriented inside/outside voxel faces in a cell,
    per axis, for each connected part (face-connected) of its inside voxels (``[:, 0]``) and of
    its outside voxels (``[:, 1]``). A face counts +1 along an axis when its part is on the
    low side."""
    offsets = _cell_offsets(ndim)
    counts = np.zeros((2 ** len(offsets), 2, 2 ** (ndim - 1), ndim), np.int64)
    for code in range(counts.shape[0]):
        inside = np.zeros((2,) * ndim, bool)
        for bit, offset in enumerate(offsets):
            inside[offset] = bool(code >> bit & 1)
        for side, voxels in enumerate((inside, ~inside)):
            parts, n_parts = ndimage.label(voxels)
            for part in range(n_parts):
                this = parts == part + 1
                for axis in range(ndim):
                    low, high = np.take(this, 0, axis), np.take(this, 1, axis)
                    counts[code, side, part, axis] = (np.count_nonzero(low & ~np.take(voxels, 1, axis))
                                                      - np.count_nonzero(high & ~np.take(voxels, 0, axis)))
    return counts


@functools.cache
def _cell_areas(spacing: tuple[float, ...]) -> np.ndarray:
    """Surface area (mm^2) of each cell code: per connected part, the norm of its oriented face
    areas (a face's area shared by its 2^(ndim-1) corners); the larger of the inside and the
    outside readings (they differ only for cells where two sheets of surface meet)."""
    s = np.asarray(spacing, float)
    face = np.prod(s) / s / 2 ** (s.size - 1)
    areas = np.linalg.norm(_cell_face_counts(s.size) * face, axis=-1).sum(axis=-1).max(axis=-1)
    areas.setflags(write=False)
    return areas


def _check_surfaces(surfaces: str) -> None:
    if surfaces not in SURFACES:
        raise ValueError(f"surfaces must be one of {SURFACES}, got {surfaces!r}")


def _check_threads(threads) -> None:
    if threads is not None and int(threads) < 1:
        raise InputError(f"threads must be >= 1, got {threads}")


def _origin(box: tuple[slice, ...]) -> tuple[int, ...]:
    return tuple(sl.start for sl in box)


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


def _merge_boxes(box_a, box_b) -> tuple[slice, ...] | None:
    boxes = [b for b in (box_a, box_b) if b is not None]
    if not boxes:
        return None
    return tuple(slice(min(b[i].start for b in boxes), max(b[i].stop for b in boxes)) for i in range(len(boxes[0])))


def _union_box(ma: np.ndarray, mb: np.ndarray) -> tuple[slice, ...] | None:
    return _merge_boxes(_mask_box(ma), _mask_box(mb))


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
    """A 3D integer label map (a float file with whole values is accepted), or InputError."""
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"label map has shape {data.shape}; expected 3D", path)
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)):
            raise InputError("not a label map: it has NaN or infinite values", path)
        if np.any(np.round(data) != data):
            raise InputError("not a label map: it has non-integer values", path)
        data = np.round(data).astype(np.int32)
    if data.size and data.min() < 0:
        raise InputError(f"label map contains negative labels (min {data.min()})", path)
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
    parser.add_argument("--surfaces", choices=SURFACES, default="smooth",
                        help="surfaces of the distance metrics: 'smooth' (least squared curvature, "
                             "sub-voxel accurate; default) or 'fast' (area-minimising, ~8x faster, "
                             "Hausdorff distance up to a voxel too high on coarse axes)")
    parser.add_argument("--threads", type=int, default=None,
                        help="worker threads (labels are evaluated in parallel; default: all usable CPUs)")


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

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"synthseg: warning: {message}", file=sys.stderr)

    labels = parse_labels(args.labels)
    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = show
        result = evaluate_folders(args.gt, args.pred, labels, pred2_dir=args.pred2, out_dir=args.out,
                                  on_mismatch=args.on_mismatch, surfaces=args.surfaces, threads=args.threads)
    n = {m: s["n_matched"] for m, s in result.summary["methods"].items()}
    print(f"evaluated {', '.join(f'{m}: {k} subject(s)' for m, k in n.items())}; {len(labels)} label(s)")
    print(summary_table(result))
    print(f"wrote {len(result.written)} files to {args.out}/")
    for path, problem in result.failed:  # the others were evaluated; the exit status says some were not
        print(f"synthseg: error: {path}: {problem}", file=sys.stderr)
    return 1 if result.failed else 0
