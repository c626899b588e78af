"""Per-label metrics of two label maps on one grid: Dice, surface distances (mm), volumes (mm^3); :func:`evaluate_arrays` computes them all at once."""
from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

from lab2im.errors import InputError
from lab2im.io import (
    usable_cpus,
)
from synthseg.evaluation.surfaces import (
    check_surfaces,
    spacing_array,
    two_way_distances,
)

#: Metrics of :func:`evaluate_arrays`, in row order for each label.
METRICS = ("dice", "hausdorff", "hd95", "mean_surface", "volume_true_mm3", "volume_pred_mm3",
           "volume_diff_mm3", "volume_diff_rel")


def dice(a: np.ndarray, b: np.ndarray, labels: Sequence[int]) -> dict[int, float]:
    """Dice overlap of each label between two label maps of the same shape.

    Returns:
        ``{label: dice}``; 1.0 for a label absent from both maps, 0.0 for one absent from one.
    """
    a, b = _same_shape(a, b)
    out = {}
    for label in label_list(labels):
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
    check_surfaces(surfaces)
    a, b = _same_shape(a, b)
    ma, mb = a == label, b == label
    box = _union_box(ma, mb)
    if box is None or not ma.any() or not mb.any():
        return _empty_distances(ma.any(), mb.any())
    return _summarise(*two_way_distances(ma[box], mb[box], spacing_array(spacing, a.ndim), _origin(box), surfaces))


def volume_difference(a: np.ndarray, b: np.ndarray, label: int, spacing=(1.0, 1.0, 1.0)) -> dict[str, float]:
    """Volumes (mm^3) of ``label`` in ground truth ``a`` and prediction ``b``, and their difference.

    Returns:
        ``{"volume_true_mm3", "volume_pred_mm3", "volume_diff_mm3", "volume_diff_rel"}``:
        difference predicted minus true, absolute and relative to the true volume (``inf``
        when the true volume is 0 and the predicted one is not, 0.0 when both are 0).
    """
    a, b = _same_shape(a, b)
    voxel_mm3 = float(np.prod(spacing_array(spacing, a.ndim)))
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
    check_surfaces(surfaces)
    check_threads(threads)
    gt, pred = _same_shape(gt, pred)
    spacing = spacing_array(spacing, gt.ndim)
    voxel_mm3 = float(np.prod(spacing))
    labels = label_list(labels)
    names = label_name_map()
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
            values.update(_summarise(*two_way_distances(ma, mb, spacing, _origin(box), surfaces)))
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


def _summarise(d_ab: np.ndarray, w_a: np.ndarray, d_ba: np.ndarray, w_b: np.ndarray) -> dict[str, float]:
    d, w = np.concatenate([d_ab, d_ba]), np.concatenate([w_a, w_b])
    order = np.argsort(d, kind="stable")
    cumulative = np.cumsum(w[order])
    k = int(np.searchsorted(cumulative, 0.95 * cumulative[-1]))  # first point reaching 95% of the area
    return {"hausdorff": float(d[order[-1]]), "hd95": float(d[order[k]]),
            "mean_surface": float(np.einsum("i,i->", w, d) / cumulative[-1])}  # no BLAS (threads)


def check_threads(threads) -> None:
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


def label_list(labels) -> list[int]:
    arr = np.asarray(labels).ravel()
    if arr.size and not np.all(np.equal(np.mod(arr.astype(float), 1), 0)):
        raise InputError(f"labels must be integers, got {arr.tolist()[:8]}")
    return list(dict.fromkeys(int(v) for v in arr))


def label_name_map() -> dict[int, str]:
    from synthseg.data.labels import label_names

    return label_names()
