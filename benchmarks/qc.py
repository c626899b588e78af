"""Does the quality score follow the quality of the segmentation? QC against true Dice on good
and deliberately degraded scans.

    python benchmarks/qc.py                    # the shipped model, 4 scans per condition
    python benchmarks/qc.py --model runs/x --n 6

Scans are synthetic (the generator on the training label maps at the model's voxel size), so
their true segmentation is known; none of the development scans is used. Each scan is
segmented as generated and degraded in the ways real scans fail:

* ``good``: as generated; ``inverted``: intensities turned upside down (a contrast-agnostic
  model should cope);
* ``noise``: Gaussian noise of 30% of the intensity range; ``bias``: a strong smooth
  multiplicative field (x 0.2 to x 5);
* ``thick``: slices three times as thick (averaged), the header saying so;
* ``crop``: only the upper 40% of the head;
* ``orientation``: a header with two axes swapped (the brain lies on its side for the network);
* ``not a brain``: smooth random noise (true quality 0).

The true quality of a scan is the mean Dice over the QC groups present in its truth
(:data:`synthseg.data.labels.QC_GROUPS`; 0 for a scan with no brain). Prints a table, writes
``benchmarks/results/qc.json`` (Spearman correlation of QC and true quality over all scans,
per-group correlations, the threshold that best separates scans of true quality >= 0.5 from
the others, and its accuracy) and a scatter plot ``qc.png``. Target (issue 13): Spearman >= 0.7.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, format_table, write_results  # noqa: E402

CONDITIONS = ("good", "inverted", "noise", "bias", "thick", "crop", "orientation", "not a brain")
GOOD_DICE = 0.5  # scans of true quality at least this count as good for the threshold


def degrade(condition: str, image, truth, affine, rng):
    """``(image, truth, affine)`` of ``condition`` (see the module docstring); arrays ``(X, Y, Z)``."""
    import numpy as np
    from scipy import ndimage

    image = np.asarray(image, np.float32)
    lo, hi = float(image.min()), float(image.max())
    if condition == "inverted":
        return hi + lo - image, truth, affine
    if condition == "noise":
        return image + rng.normal(0, 0.3 * (hi - lo), image.shape).astype(np.float32), truth, affine
    if condition == "bias":
        field = ndimage.zoom(rng.normal(0, 1, (4, 4, 4)), np.array(image.shape) / 4, order=3)[
            tuple(slice(0, n) for n in image.shape)]
        field = np.log(5.0) * field / max(np.abs(field).max(), 1e-6)
        return image * np.exp(field).astype(np.float32), truth, affine
    if condition == "thick":
        z = image.shape[2] // 3 * 3
        thick = image[:, :, :z].reshape(image.shape[0], image.shape[1], -1, 3).mean(-1)
        out_affine = affine.copy()
        out_affine[:3, 2] *= 3
        out_affine[:3, 3] += affine[:3, 2]  # the centre of each thick slice: its middle thin slice
        return thick, truth[:, :, 1:z:3], out_affine
    if condition == "crop":
        z0 = int(image.shape[2] * 0.6)
        out_affine = affine.copy()
        out_affine[:3, 3] += affine[:3, 2] * z0
        return image[:, :, z0:], truth[:, :, z0:], out_affine
    if condition == "orientation":
        swapped = affine.copy()
        swapped[:, [0, 1]] = affine[:, [1, 0]]
        return image, truth, swapped
    if condition == "not a brain":
        noise = ndimage.gaussian_filter(rng.normal(0, 1, image.shape), 3).astype(np.float32)
        return noise, np.zeros_like(truth), affine
    if condition == "good":
        return image, truth, affine
    raise ValueError(f"unknown condition {condition!r}")


def true_quality(truth, predicted) -> tuple[float, dict[str, float | None]]:
    """Mean Dice over the QC groups present in ``truth`` (0 without any), and each group's."""
    import numpy as np

    from synthseg.data.labels import QC_GROUPS

    per = {}
    for name, ids in QC_GROUPS.items():
        t, p = np.isin(truth, ids), np.isin(predicted, ids)
        per[name] = float(2 * np.sum(t & p) / (t.sum() + p.sum())) if t.any() else None
    present = [v for v in per.values() if v is not None]
    return (float(np.mean(present)) if present else 0.0), per


def best_threshold(scores, good) -> tuple[float, float]:
    """The QC threshold with the highest balanced accuracy for ``good`` (bool) scans, halfway
    between the scores it separates (the middle of the gap, not its edge): ``(threshold, accuracy)``."""
    import numpy as np

    scores, good = np.asarray(scores, float), np.asarray(good, bool)
    values = np.unique(scores)
    candidates = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
    best = (float(candidates[0]), -1.0)
    for t in candidates:
        passed = scores >= t
        parts = [np.mean(passed[good]) if good.any() else 1.0, np.mean(~passed[~good]) if (~good).any() else 1.0]
        accuracy = float(np.mean(parts))
        if accuracy > best[1]:
            best = (float(t), accuracy)
    return best


def plot(rows: list[dict], threshold: float, rho: float, path: Path) -> Path:
    from synthseg.evaluation.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(6.5, 4.5), layout="constrained")
    for condition in CONDITIONS:
        pts = [r for r in rows if r["condition"] == condition]
        ax.scatter([r["qc"] for r in pts], [r["true_quality"] for r in pts], label=condition, s=30)
    ax.axvline(threshold, color="grey", linestyle="--", label=f"threshold {threshold:.2f}")
    ax.set_xlabel("QC score (overall)")
    ax.set_ylabel("true quality (mean Dice of the QC groups)")
    ax.set_title(f"QC vs true quality: Spearman {rho:.2f}", fontsize=10)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="run folder or .keras file (default: the shipped model)")
    parser.add_argument("--n", type=int, default=4, help="synthetic scans per condition (default: 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flip", action="store_true", help="left/right flip averaging (twice the time)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "qc.json")
    args = parser.parse_args(argv)

    import numpy as np
    from scipy import stats
    from tqdm import tqdm

    from lab2im.io import Volume
    from synthseg import BrainGenerator
    from synthseg.data.training_labels import training_label_maps
    from synthseg.inference.model import load_model
    from synthseg.inference.segmentation import segment_volume

    model = load_model(args.model)
    voxel = float(model.voxel_size[0])
    gen = BrainGenerator(training_label_maps(voxel), seed=args.seed)
    rng = np.random.default_rng(args.seed)
    rows = []
    with tqdm(total=args.n * len(CONDITIONS), desc="qc benchmark", unit="scan", file=sys.stderr) as bar:
        for i in range(args.n):
            image, truth = gen.generate_image()
            image = image if image.ndim == 3 else image[..., 0]
            for condition in CONDITIONS:
                img, tru, affine = degrade(condition, image, truth, gen.affine, rng)
                seg = segment_volume(Volume(img, affine), model, flip=args.flip)
                qc, per_qc = seg.qc_scores()
                quality, per_true = true_quality(tru, seg.native_segmentation())
                rows.append({"scan": i, "condition": condition, "qc": qc, "true_quality": quality,
                             "qc_groups": per_qc, "dice_groups": per_true})
                bar.update(1)
    rho = float(stats.spearmanr([r["qc"] for r in rows], [r["true_quality"] for r in rows]).statistic)
    per_group = {}
    for name in rows[0]["qc_groups"]:
        pairs = [(r["qc_groups"][name], r["dice_groups"][name]) for r in rows
                 if r["qc_groups"][name] is not None and r["dice_groups"][name] is not None]
        per_group[name] = float(stats.spearmanr(*zip(*pairs)).statistic) if len(pairs) > 2 else None
    threshold, accuracy = best_threshold([r["qc"] for r in rows], [r["true_quality"] >= GOOD_DICE for r in rows])
    table = []
    for condition in CONDITIONS:
        pts = [r for r in rows if r["condition"] == condition]
        table.append((condition, f"{np.mean([r['qc'] for r in pts]):.3f}",
                      f"{np.mean([r['true_quality'] for r in pts]):.3f}",
                      f"{np.mean([r['qc'] >= threshold for r in pts]):.0%}"))
    print(format_table(["condition", "mean QC", "mean true quality", "passes threshold"], table))
    print(f"Spearman(QC, true quality) = {rho:.3f} over {len(rows)} scans; threshold {threshold:.3f} separates "
          f"true quality >= {GOOD_DICE} with balanced accuracy {accuracy:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = plot(rows, threshold, rho, args.out.with_suffix(".png"))
    write_results(args.out, "qc", {"model": args.model or "shipped", "n": args.n, "seed": args.seed,
                                   "flip": args.flip, "good_dice": GOOD_DICE},
                  {"spearman": rho, "spearman_per_group": per_group, "threshold": threshold,
                   "balanced_accuracy": accuracy, "scans": rows}, packages=["keras"])
    print(f"wrote {args.out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
