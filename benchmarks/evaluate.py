"""Time to compute every evaluation metric for one pair of 1 mm brain segmentations: ours
(bounding box per label) vs the same computation on the full grid.

    python benchmarks/evaluate.py                 # real 1 mm label map, 5 timed rounds
    python benchmarks/evaluate.py --quick         # smoke run: 1 round
    python benchmarks/evaluate.py --labels my_aseg.nii.gz --out /tmp/evaluate.json

The pair: the ground truth is a real whole-head training label map (``--labels``, default the
first of :func:`synthseg.data.training_labels.training_label_maps`, 174 x 212 x 178 at 1 mm) with
skull (165) and extra-cerebral soft tissue (258) set to background, leaving a brain
segmentation of ~32 labels. The "prediction" is the same map shifted by one voxel along the
first axis, then with boundary noise: along each axis in turn, each voxel whose neighbour has
another label takes that label with probability ``--noise`` (0.2). Every non-background label
of the ground truth is evaluated.

What is timed, for the same pair and labels:

* ours: :func:`synthseg.evaluation.metrics.evaluate_arrays`: Dice, Hausdorff, HD95, mean surface
  distance and volumes, each label handled within the bounding box of its two masks (boxes
  for all labels from one :func:`scipy.ndimage.find_objects` pass per map), with the default
  smooth surfaces, labels in parallel threads (all usable CPUs);
* ours, one thread: the same on one thread;
* ours, fast surfaces: ``surfaces="fast"`` (area-minimising nets only, no curvature
  smoothing: less accurate on coarse axes, see :mod:`synthseg.evaluation`), all CPUs;
* full grid: the plain version (:func:`full_grid_metrics`, one thread): per label, the two
  masks and their smooth surfaces (:func:`synthseg.evaluation.surfaces.surface_points`) on the whole
  grid, distances from KD-trees and the area-weighted statistics written out;
* plain scipy: what most tools do (:func:`plain_scipy_distances`, MedPy/MONAI-style voxel
  surfaces and Euclidean distance transforms on the full grid, one thread): a different,
  less accurate definition (``benchmarks/surface_accuracy.py`` measures it on spheres), timed
  for scale.

The five are called in turn (``--warmup`` untimed rounds, then ``--repeats`` timed rounds, see
:func:`benchmarks.common.time_interleaved`) and their results are checked to agree. The table
gives the median times and their ratios to ours; ``benchmarks/results/evaluate.json`` (``--out``) keeps
everything, with the machine.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

PACKAGES = ("synthseg", "numpy", "scipy")
EXCLUDED = (0, 165, 258)  # background, skull, extra-cerebral soft tissue


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", type=Path, default=None, help="ground-truth label map (default: the first real "
                   "training label map, built in the data cache on first use)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3; --quick: 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 1; --quick: 0)")
    p.add_argument("--noise", type=float, default=0.2, help="boundary noise probability (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: one timed round")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR / "evaluate.json")
    return p.parse_args(argv)


def default_label_map() -> Path:
    from synthseg.data.training_labels import training_label_maps

    return sorted(training_label_maps().glob("*.nii.gz"))[0]


def make_pair(gt, noise: float, seed: int):
    """(ground truth, prediction): brain labels only; the prediction shifted by one voxel with boundary noise."""
    import numpy as np

    gt = np.where(np.isin(gt, EXCLUDED[1:]), 0, gt).astype(np.int32)
    pred = np.roll(gt, 1, axis=0)
    rng = np.random.default_rng(seed)
    for axis in range(3):
        neighbour = np.roll(pred, 1, axis=axis)
        flip = (neighbour != pred) & (rng.random(pred.shape) < noise)
        pred[flip] = neighbour[flip]
    return gt, pred


def plain_scipy_distances(mask_a, mask_b, spacing) -> dict:
    """Surface distances the common way (MedPy's ``hd``/``hd95``/``assd``, MONAI alike): the
    surface of a mask is its voxels with a face-neighbour outside it; distances from
    :func:`scipy.ndimage.distance_transform_edt` (voxel size as ``sampling``) of the other
    surface's complement, on the full grid. ``hd95``: 95th percentile of the pooled directed
    distances; ``mean_surface``: mean of the two directed means."""
    import numpy as np
    from scipy import ndimage

    def surface(mask):
        return mask & ~ndimage.binary_erosion(mask, ndimage.generate_binary_structure(mask.ndim, 1),
                                              border_value=0)

    sa, sb = surface(mask_a), surface(mask_b)
    d_ab = ndimage.distance_transform_edt(~sb, sampling=spacing)[sa]
    d_ba = ndimage.distance_transform_edt(~sa, sampling=spacing)[sb]
    pooled = np.concatenate([d_ab, d_ba])
    return {"hausdorff": float(pooled.max()), "hd95": float(np.percentile(pooled, 95)),
            "mean_surface": float((d_ab.mean() + d_ba.mean()) / 2)}


def plain_scipy_metrics(gt, pred, labels, spacing) -> None:
    """:func:`plain_scipy_distances` for every label on the full grid (timing only)."""
    for label in labels:
        ma, mb = gt == label, pred == label
        if ma.any() and mb.any():
            plain_scipy_distances(ma, mb, spacing)


def full_grid_metrics(gt, pred, labels, spacing, surfaces: str = "smooth") -> list[dict]:
    """The same metrics as :func:`synthseg.evaluation.metrics.evaluate_arrays`, the plain way: masks and
    surfaces on the whole grid, one label at a time."""
    import math

    import numpy as np
    from scipy.spatial import KDTree

    from synthseg.evaluation.surfaces import surface_points

    voxel_mm3 = float(np.prod(spacing))
    rows = []
    for label in labels:
        ma, mb = gt == label, pred == label
        n_a, n_b, n_ab = int(ma.sum()), int(mb.sum()), int(np.sum(ma & mb))
        values = {"dice": 1.0 if n_a + n_b == 0 else 2.0 * n_ab / (n_a + n_b)}
        if n_a and n_b:
            (pa, wa), (pb, wb) = surface_points(ma, spacing, surfaces), surface_points(mb, spacing, surfaces)
            d = np.concatenate([KDTree(pb).query(pa)[0], KDTree(pa).query(pb)[0]])
            w = np.concatenate([wa, wb])
            order = np.argsort(d, kind="stable")
            cumulative = np.cumsum(w[order])
            hd95 = d[order][np.argmax(cumulative >= 0.95 * cumulative[-1])]
            values.update(hausdorff=float(d.max()), hd95=float(hd95), mean_surface=float(np.sum(w * d) / w.sum()))
        else:
            d = 0.0 if n_a == n_b == 0 else math.inf
            values.update(hausdorff=d, hd95=d, mean_surface=d)
        va, vb = n_a * voxel_mm3, n_b * voxel_mm3
        values.update(volume_true_mm3=va, volume_pred_mm3=vb, volume_diff_mm3=vb - va,
                      volume_diff_rel=(vb - va) / va if va else (math.inf if vb else 0.0))
        rows.extend({"label": label, "metric": m, "value": v} for m, v in values.items())
    return rows


def max_difference(rows_a, rows_b) -> float:
    """Largest absolute difference between two sets of metric rows (inf where they disagree on
    which values are infinite)."""
    import math

    a = {(r["label"], r["metric"]): r["value"] for r in rows_a}
    b = {(r["label"], r["metric"]): r["value"] for r in rows_b}
    if a.keys() != b.keys():
        return math.inf
    worst = 0.0
    for key, va in a.items():
        vb = b[key]
        if math.isinf(va) or math.isinf(vb):
            if va != vb:
                return math.inf
            continue
        worst = max(worst, abs(va - vb))
    return worst


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np

    from lab2im.io import load_volume
    from synthseg.evaluation.metrics import evaluate_arrays

    repeats = args.repeats or (1 if args.quick else 3)
    warmup = args.warmup if args.warmup is not None else (0 if args.quick else 1)
    path = args.labels or default_label_map()
    vol = load_volume(path)
    spacing = vol.voxel_size
    gt, pred = make_pair(vol.data, args.noise, args.seed)
    labels = [int(v) for v in np.unique(gt) if v not in EXCLUDED]
    print(f"label map {path}: shape {gt.shape}, voxel {spacing.round(3).tolist()} mm, {len(labels)} labels",
          file=sys.stderr)

    ours_rows = evaluate_arrays(gt, pred, labels, spacing)
    full_rows = full_grid_metrics(gt, pred, labels, spacing)
    diff = max_difference(ours_rows, full_rows)
    fast_rows = evaluate_arrays(gt, pred, labels, spacing, surfaces="fast")
    smooth_vs_fast = max_difference(ours_rows, fast_rows)
    if not diff <= 1e-9:
        print(f"error: the two implementations disagree (max difference {diff})", file=sys.stderr)
        return 1
    dice = [r["value"] for r in ours_rows if r["metric"] == "dice"]
    hd95 = [r["value"] for r in ours_rows if r["metric"] == "hd95"]

    timings = common.time_interleaved({
        "bounding_box": lambda: evaluate_arrays(gt, pred, labels, spacing),
        "bounding_box_1_thread": lambda: evaluate_arrays(gt, pred, labels, spacing, threads=1),
        "bounding_box_fast": lambda: evaluate_arrays(gt, pred, labels, spacing, surfaces="fast"),
        "full_grid": lambda: full_grid_metrics(gt, pred, labels, spacing),
        "plain_scipy": lambda: plain_scipy_metrics(gt, pred, labels, spacing),
    }, repeats=repeats, warmup=warmup)
    plain = timings["plain_scipy"]
    ours, one, fast, full = (timings[k] for k in ("bounding_box", "bounding_box_1_thread", "bounding_box_fast",
                                                  "full_grid"))
    speedup = full["median_s"] / ours["median_s"]
    cpus = common.machine_info()["cpus_usable"]
    rows = [[f"ours (bounding box per label), smooth surfaces, {cpus} threads", ours["median_s"], ours["min_s"], 1.0],
            ["ours, smooth surfaces, 1 thread", one["median_s"], one["min_s"], one["median_s"] / ours["median_s"]],
            [f"ours, fast surfaces, {cpus} threads", fast["median_s"], fast["min_s"],
             fast["median_s"] / ours["median_s"]],
            ["full grid, smooth surfaces, 1 thread", full["median_s"], full["min_s"], speedup],
            ["plain scipy (voxel surfaces + EDT, full grid), 1 thread", plain["median_s"], plain["min_s"],
             plain["median_s"] / ours["median_s"]]]
    print(common.format_table(["implementation", "median s", "min s", "time vs ours"], rows))
    print(f"speed-up over the full grid {speedup:.1f}x ({full['median_s'] / one['median_s']:.1f}x on one thread); "
          f"{len(labels)} labels, {gt.size} voxels; results agree "
          f"to {diff:.1e}; smooth vs fast surfaces differ by up to {smooth_vs_fast:.2f} mm; mean Dice "
          f"{np.mean(dice):.3f}, median HD95 {np.median(hd95):.2f} mm; load average "
          f"{ours['load_average_before']} -> {ours['load_average_after']}")

    settings = {"label_map": str(path), "shape": list(gt.shape), "voxel_mm": spacing.tolist(),
                "labels": labels, "n_labels": len(labels), "excluded_labels": list(EXCLUDED),
                "prediction": f"ground truth shifted by 1 voxel along axis 0, boundary noise p={args.noise}",
                "noise": args.noise, "seed": args.seed, "repeats": repeats, "warmup": warmup,
                "quick": args.quick}
    results = {"bounding_box": ours, "bounding_box_1_thread": one, "bounding_box_fast": fast, "full_grid": full,
               "plain_scipy": plain,
               "speedup_median": speedup, "speedup_median_1_thread": full["median_s"] / one["median_s"],
               "fast_vs_smooth_time": fast["median_s"] / ours["median_s"],
               "max_abs_difference": diff, "max_smooth_vs_fast_difference_mm": smooth_vs_fast, "mean_dice": float(np.mean(dice)),
               "median_hd95_mm": float(np.median(hd95))}
    out = common.write_results(args.out, "evaluate", settings, results, PACKAGES)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
