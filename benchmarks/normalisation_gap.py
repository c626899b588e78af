"""What a network loses at inference from batch normalisation, and from blur, on its own synthetic crops.

    python benchmarks/normalisation_gap.py                         # the shipped model, 24 crops
    python benchmarks/normalisation_gap.py --model A --model B --crops 48
    python benchmarks/normalisation_gap.py --quick                 # smoke run: 2 small crops

Trained with one crop per batch, a network's batch normalisation divides each crop's features by
that crop's own mean and variance; at inference it uses the moving averages gathered over
training, the same for every scan. The two differ when crops differ (every synthetic crop has its
own random contrast), so a network may score well in training and less well at inference on the
very same crops. This benchmark draws ``--crops`` held-out crops from the model's own generator
(the options saved beside it, a seed not used in training, ``--labels`` maps: by default the public
training maps at the model's voxel size) and segments each twice: with the moving statistics
(``moving``, as prediction does) and with the crop's own statistics (``per-crop``, as training
does; the moving statistics are restored after every call). Each crop is also blurred by a
Gaussian of ``--blur`` standard deviations (voxels, isotropic) and rescaled to [0, 1] between its
0.5th and 99.5th percentiles, as templates and thick-slice scans are smoother than most training
crops. Models saved with the same generator options and voxel size score the same crops, so their
scores pair crop by crop (the per-crop scores are in the JSON); models with other options draw
other crops.

Score: per crop, the mean Dice over the labels present in its truth (background excluded) of the
most likely label; the table gives the mean over crops and paired differences (``per-crop -
moving``, ``blurred - sharp``) with 95% intervals (normal approximation over crops). Measured on
the generator's scans, not on real ones: a gap here says what a normalisation that behaves alike
in training and at inference could gain, not that it would generalise (``docs/accuracy.md``).

Writes a table and ``benchmarks/results/normalisation_gap.json`` (``--out``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

PACKAGES = ("synthseg", "keras", "numpy")
MODES = ("moving", "per-crop")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=None,
                   help="model folder (repeat for several; default: the shipped model)")
    p.add_argument("--crops", type=int, default=None, help="synthetic crops (default 24; --quick: 2)")
    p.add_argument("--seed", type=int, default=13579, help="generator seed (not one used in training)")
    p.add_argument("--blur", type=float, nargs="+", default=[0.0, 1.0, 2.0],
                   help="Gaussian blur standard deviations in voxels (0: as generated; default 0 1 2)")
    p.add_argument("--shape", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="crop size in voxels (default: the model's training crop; --quick: 48 48 48)")
    p.add_argument("--labels", type=Path, default=None,
                   help="folder or file of label maps at the model's voxel size (default: the public training maps)")
    p.add_argument("--quick", action="store_true", help="smoke run: two small crops")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR / "normalisation_gap.json")
    args = p.parse_args(argv)
    if args.crops is not None and args.crops < 2:
        p.error(f"--crops must be at least 2 (the intervals need two), got {args.crops}")
    if any(b < 0 for b in args.blur):
        p.error(f"--blur takes standard deviations >= 0 voxels, got {args.blur}")
    return args


def blurred(image, sigma_voxels: float):
    """``image`` ``(X, Y, Z)`` smoothed by an isotropic Gaussian of ``sigma_voxels`` and rescaled
    to [0, 1] between its 0.5th and 99.5th percentiles (clipped); 0 gives it back unchanged."""
    import numpy as np
    from scipy import ndimage

    if sigma_voxels == 0:
        return np.asarray(image, np.float32)
    smooth = ndimage.gaussian_filter(np.asarray(image, np.float32), sigma_voxels)
    lo, hi = np.percentile(smooth, [0.5, 99.5])
    return np.clip((smooth - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0).astype(np.float32)


def mean_label_dice(truth, predicted) -> float:
    """Mean Dice over the labels present in ``truth`` other than 0 (1.0 when there are none)."""
    import numpy as np

    from synthseg.evaluation.metrics import dice

    present = [int(v) for v in np.unique(truth) if v != 0]
    return float(np.mean(list(dice(truth, predicted, present).values()))) if present else 1.0


def segment(network, labels, image, per_crop: bool):
    """Most likely label of every voxel of ``image`` ``(X, Y, Z)``: ``(X, Y, Z)`` int labels.
    ``per_crop`` normalises by the crop's own statistics (training mode) and restores every
    batch-normalisation layer's moving statistics afterwards."""
    import numpy as np

    from synthseg.nn.unet import batch_norm_layers

    saved = [(v, v.numpy()) for layer in batch_norm_layers(network) for v in layer.non_trainable_variables]
    try:
        out = network(image[None, ..., None], training=per_crop)
    finally:
        for variable, value in saved:
            variable.assign(value)
    return np.asarray(labels)[np.argmax(np.asarray(out)[0], axis=-1)]


def measure(model, crops, blurs) -> dict:
    """Per-crop scores of ``model`` on ``crops`` (``[(image, truth), ...]``) for every blur and mode."""
    scores = {f"{b:g}": {m: [] for m in MODES} for b in blurs}
    for image, truth in crops:
        for b in blurs:
            x = blurred(image, b)
            for mode in MODES:
                predicted = segment(model.network, model.labels, x, mode == "per-crop")
                scores[f"{b:g}"][mode].append(mean_label_dice(truth, predicted))
    return scores


def summarise(scores) -> list[dict]:
    """One row per blur: mean Dice per mode, the per-crop gap and the loss to blur (paired)."""
    import numpy as np

    sharp = scores["0"] if "0" in scores else None
    rows = []
    for blur, by_mode in scores.items():
        row = {"blur_voxels": float(blur), **{m: float(np.mean(by_mode[m])) for m in MODES}}
        row["gap"], row["gap_95"] = common.mean_and_ci95(np.subtract(by_mode["per-crop"], by_mode["moving"]))
        row["gap_better"] = int(np.sum(np.greater(by_mode["per-crop"], by_mode["moving"])))
        if sharp is not None and blur != "0":
            for m in MODES:
                row[f"blur_cost_{m}"], row[f"blur_cost_{m}_95"] = common.mean_and_ci95(np.subtract(by_mode[m], sharp[m]))
        rows.append(row)
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    from lab2im.errors import InputError
    from synthseg.generation.brain_generator import BrainGenerator
    from synthseg.inference.model import default_model_path, load_model
    from synthseg.training.synthetic import load_options

    n = args.crops or (2 if args.quick else 24)
    results, table = [], []
    for path in args.model or [str(default_model_path())]:
        try:
            model = load_model(path)
            generator_options = load_options(Path(path))[0]
            voxel_mm = float(sum(model.voxel_size) / len(model.voxel_size))
            labels = args.labels
            if labels is None:
                from synthseg.data.training_labels import training_label_maps

                labels = training_label_maps(voxel_mm)
            shape = args.shape or ((48, 48, 48) if args.quick else generator_options.output_shape)
            generator = BrainGenerator(labels, generator_options, seed=args.seed, output_shape=tuple(shape))
            crops = [generator.generate_image() for _ in range(n)]
        except (InputError, OSError, ValueError) as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
            return 1
        t0 = time.perf_counter()
        scores = measure(model, crops, args.blur)
        rows = summarise(scores)
        results.append({"model": str(path), "crops": n, "shape": [int(v) for v in shape], "rows": rows,
                        "per_crop_scores": scores, "seconds": time.perf_counter() - t0})
        for r in rows:
            cost = (f"{r['blur_cost_moving']:+.3f} / {r['blur_cost_per-crop']:+.3f}"
                    if "blur_cost_moving" in r else "-")
            table.append([str(path), f"{r['blur_voxels']:g}", round(r["moving"], 3), round(r["per-crop"], 3),
                          f"{r['gap']:+.3f} (±{r['gap_95']:.3f})", f"{r['gap_better']}/{n}", cost])
    print(f"{n} held-out synthetic crops per model, seed {args.seed}; mean label Dice (background excluded)")
    print(common.format_table(["model", "blur (voxels)", "moving", "per-crop", "per-crop - moving",
                               "per-crop better", "blur cost moving / per-crop"], table))
    out = common.write_results(args.out, "normalisation_gap",
                               {"crops": n, "seed": args.seed, "blur_voxels": args.blur,
                                "labels": None if args.labels is None else str(args.labels)},
                               results, PACKAGES)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
