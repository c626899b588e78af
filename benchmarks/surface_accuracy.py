"""Accuracy of the surface distances against analytic values: concentric spheres.

    python benchmarks/surface_accuracy.py            # 100 random pairs per voxel size
    python benchmarks/surface_accuracy.py --quick    # 10 pairs per voxel size

Two concentric spheres of radii ``r < R`` are voxelised (a voxel is inside when its centre is)
on grids of anisotropic voxel sizes. Every point of one sphere is ``R - r`` from the other, so
the Hausdorff distance, HD95 and mean surface distance are all exactly ``R - r``. For each
voxel size, random pairs (``r`` uniform in 4-24 mm, ``R - r`` in 1-8 mm, centre at a random
sub-voxel offset) are evaluated with :func:`synthseg.evaluation.metrics.surface_distances` on both
kinds of surface (``smooth``, the default, and ``fast``) and, for comparison, the common way
(``plain_scipy``: voxel surfaces and distance transforms, as MedPy and MONAI compute them,
:func:`benchmarks.evaluate.plain_scipy_distances`), and the errors (measured minus
``R - r``, mm) are summarised: the range, the largest absolute error, and how many pairs stay
within half a voxel, taken as half the *largest* voxel side (the surface of a mask is known
only to within a voxel along each axis).

Writes a table, ``benchmarks/results/surface_accuracy.json`` (``--out``) and a strip plot of
the errors (``surface_accuracy.png`` beside it).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

PACKAGES = ("synthseg", "numpy", "scipy")
SPACINGS = ((1.0, 1.0, 2.0), (0.8, 1.0, 1.5), (1.0, 1.0, 3.0), (0.5, 0.5, 1.0))
METRICS = ("hausdorff", "hd95", "mean_surface")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=None, help="sphere pairs per voxel size (default 100; --quick: 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: 10 pairs per voxel size")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR / "surface_accuracy.json")
    return p.parse_args(argv)


def sphere_masks(shape, spacing, centre, radii):
    """Boolean masks of spheres (mm) sampled at the voxel centres of a grid of ``spacing`` mm."""
    import numpy as np

    axes = [np.arange(n) * s for n, s in zip(shape, spacing)]
    grids = np.meshgrid(*axes, indexing="ij")
    distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre)))
    return [distance <= radius for radius in radii]


def random_pairs(spacing, n: int, seed: int):
    """``n`` random ``(r, R, mask_r, mask_R)``: radii in mm, centres off the voxel centres."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for _ in range(n):
        r = rng.uniform(4.0, 24.0)
        big_r = r + rng.uniform(1.0, 8.0)
        shape = tuple(int(math.ceil((2 * big_r + 8) / s)) for s in spacing)
        centre = tuple(big_r + 4 + rng.uniform(0, 1) * s for s in spacing)
        yield (r, big_r, *sphere_masks(shape, spacing, centre, (r, big_r)))


def measure(spacing, n: int, seed: int) -> dict:
    """Errors (mm) of each metric for both kinds of surface over ``n`` random pairs."""
    import numpy as np

    from benchmarks.evaluate import plain_scipy_distances
    from synthseg.evaluation.metrics import surface_distances
    from synthseg.evaluation.surfaces import SURFACES

    kinds = (*SURFACES, "plain_scipy")
    errors = {s: {m: [] for m in METRICS} for s in kinds}
    for r, big_r, a, b in random_pairs(spacing, n, seed):
        for kind in kinds:
            if kind == "plain_scipy":
                d = plain_scipy_distances(a, b, spacing)
            else:
                d = surface_distances(a, b, 1, spacing, surfaces=kind)
            for m in METRICS:
                errors[kind][m].append(d[m] - (big_r - r))
    half = max(spacing) / 2
    summary = {}
    for surfaces, by_metric in errors.items():
        summary[surfaces] = {}
        for m, e in by_metric.items():
            e = np.asarray(e)
            summary[surfaces][m] = {"min_mm": float(e.min()), "max_mm": float(e.max()),
                                    "max_abs_mm": float(np.abs(e).max()), "mean_mm": float(e.mean()),
                                    "within_half_voxel": int(np.sum(np.abs(e) <= half)), "n": int(e.size),
                                    "errors_mm": e.tolist()}
    return {"spacing_mm": list(spacing), "half_voxel_mm": half, "surfaces": summary}


def plot(results: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.8), sharey=True)
    kinds = list(results[0]["surfaces"])
    for ax, metric in zip(axes, METRICS):
        for i, res in enumerate(results):
            for j, kind in enumerate(kinds):
                e = np.asarray(res["surfaces"][kind][metric]["errors_mm"])
                x = i + (j - (len(kinds) - 1) / 2) * 0.28 + np.random.default_rng(i).uniform(-0.05, 0.05, e.size)
                ax.scatter(x, e, s=6, alpha=0.6, color=f"C{j}", label=kind if i == 0 else None)
            half = res["half_voxel_mm"]
            ax.hlines([-half, half], i - 0.45, i + 0.45, colors="k", linestyles=":", linewidth=1)
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_xticks(range(len(results)), ["x".join(f"{v:g}" for v in r["spacing_mm"]) for r in results],
                      fontsize=8)
        ax.set_title(metric)
        ax.set_xlabel("voxel size (mm)")
    axes[0].set_ylabel("measured - analytic (mm)")
    axes[0].legend(title="surfaces", fontsize=8)
    fig.suptitle("Concentric spheres: error of the surface distances (dotted: half the largest voxel side)",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    n = args.pairs or (10 if args.quick else 100)
    results = [measure(spacing, n, args.seed + i) for i, spacing in enumerate(SPACINGS)]
    rows = []
    for res in results:
        for kind, by_metric in res["surfaces"].items():
            row = ["x".join(f"{v:g}" for v in res["spacing_mm"]), kind]
            for m in METRICS:
                s = by_metric[m]
                row += [f"{s['min_mm']:+.2f} to {s['max_mm']:+.2f}", f"{s['within_half_voxel']}/{s['n']}"]
            rows.append(row)
    headers = ["voxel mm", "surfaces"]
    for m in METRICS:
        headers += [f"{m} error mm", "within"]
    print(common.format_table(headers, rows))
    print(f"{n} pairs per voxel size; 'within': pairs with |error| <= half the largest voxel side")
    settings = {"pairs": n, "seed": args.seed, "spacings_mm": [list(s) for s in SPACINGS],
                "radii_mm": "r uniform in 4-24, R - r uniform in 1-8", "quick": args.quick}
    out = common.write_results(args.out, "surface_accuracy", settings, results, PACKAGES)
    png = plot(results, args.out.with_suffix(".png"))
    print(f"wrote {out} and {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
