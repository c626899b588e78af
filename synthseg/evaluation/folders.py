"""Whole studies: ground truth and predictions matched by subject, every metric per subject, method and label, tables, box plots and paired tests written atomically."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lab2im.errors import InputError
from lab2im.io import (
    atomic_write_text,
    check_folder_writable,
    check_not_an_input,
    format_mm,
    list_volume_files,
    load_volume,
    strip_volume_suffix,
    voxel_size_of,
)
from synthseg.evaluation.metrics import (
    check_threads,
    evaluate_arrays,
    label_list,
    label_name_map,
)
from synthseg.evaluation.statistics import paired_test
from synthseg.evaluation.surfaces import check_surfaces

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

_AFFINE_TOL = 1e-4  # mm


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
    check_surfaces(surfaces)
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
    check_surfaces(surfaces)
    check_threads(threads)  # before any file: not a per-subject failure
    labels = label_list(labels)
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
    names = label_name_map()
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

    from synthseg.evaluation.plots import save_figure  # sets the Agg backend

    names = label_name_map()
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


def _short_list(items, n: int = 5) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")
