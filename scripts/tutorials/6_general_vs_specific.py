"""Tutorial 6: one general model versus one specific model per dataset.

Three small labelled datasets, each with its own contrast and label protocol, as sites of a
multi-centre study would have them:

* ``A``: T1-like, FreeSurfer IDs (left / right white matter 2 / 41, cortex 3 / 42,
  ventricles 4, CSF 24), stored as a **CSV manifest**;
* ``B``: T2-like, tissue IDs (1 CSF, 2 grey matter, 3 white matter, 4 skull), stored
  left-right flipped (LAS) in a **BIDS-like** folder (``sub-*/anat/*_T2w.nii.gz``, label
  maps in ``derivatives/manual/``);
* ``C``: low-contrast, noisy and blurred along one axis (thick slices), IDs 10 / 20 / 30,
  in **``images/`` + ``labels/``** folders.

The scans are synthetic "heads" (nested, randomly deformed ellipsoids) so that the tutorial
needs no download and runs in a couple of minutes on a laptop CPU. The steps are those of a
real study:

1. :func:`synthseg.data.merge.merge_datasets` maps every dataset's labels to the common protocol
   (1 white matter, 2 grey matter, 3 CSF; B's skull goes to background) through
   ``protocol.yaml``, refuses unmapped labels, and splits each dataset into train / val /
   test (``merged/split.json``, the split that evaluation reads again);
2. :func:`synthseg.training.supervised.supervised_training` trains one **general** model on every
   dataset's training scans and one **specific** model per dataset, same U-Net, same
   augmentation, and the same number of passes over each model's training scans: the general
   model, with N datasets' scans, gets N times the steps (``--same-steps``: as many as each
   specific model);
3. every model segments every test scan (:func:`synthseg.inference.segmentation.segment_volume`, the
   prediction pipeline) and the mean Dice over the three common labels is compared, on each
   dataset's own test scans, with a paired Wilcoxon signed-rank test
   (:func:`synthseg.evaluation.statistics.paired_test`).

    python scripts/tutorials/6_general_vs_specific.py [--out DIR] [--steps 300] [--subjects 10] [--quick]

``--quick`` (the tests) trains 60 steps per specific model on 8 subjects of 24^3 voxels. Writes
``datasets/``, ``protocol.yaml``, ``merged/``, ``runs/``, ``dice.csv`` (dataset, subject,
model, label, dice), ``summary.json`` (per-dataset means, the paired test) and
``general_vs_specific.png`` (box plots), and prints a table.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from lab2im.io import atomic_write_text, load_volume, save_volume  # noqa: E402

COMMON = {1: "white matter", 2: "grey matter", 3: "csf"}
# anatomy labels of the synthetic heads (what every dataset's protocol is derived from)
BG, SKULL, CSF, GM, WM_L, WM_R, GM_L, GM_R, VENT = 0, 1, 2, 3, 4, 5, 6, 7, 8
# per dataset: anatomy -> its own label ID, and the image's mean intensity per anatomy label
PROTOCOLS = {
    "A": {SKULL: 0, CSF: 24, WM_L: 2, WM_R: 41, GM_L: 3, GM_R: 42, VENT: 4},  # aseg-like
    "B": {SKULL: 4, CSF: 1, WM_L: 3, WM_R: 3, GM_L: 2, GM_R: 2, VENT: 1},     # tissue classes + skull
    "C": {SKULL: 0, CSF: 30, WM_L: 10, WM_R: 10, GM_L: 20, GM_R: 20, VENT: 30},
}
MAPS = {  # protocol.yaml: each dataset's labels -> common labels
    "A": {2: 1, 41: 1, 3: 2, 42: 2, 4: 3, 24: 3},
    "B": {1: 3, 2: 2, 3: 1, 4: 0},
    "C": {10: 1, 20: 2, 30: 3},
}
CONTRAST = {  # mean intensity of background, skull, CSF, GM, WM
    "A": (5, 20, 40, 90, 140),     # T1-like
    "B": (5, 30, 150, 100, 60),    # T2-like
    "C": (20, 50, 90, 70, 55),     # low contrast
}
NOISE = {"A": 6.0, "B": 8.0, "C": 10.0}


# ----------------------------------------------------------------------------- synthetic heads
def anatomy(size: int, rng) -> np.ndarray:
    """A random head: skull, CSF, cortex and white matter (left / right), ventricles."""
    grid = np.stack(np.meshgrid(*(np.arange(size) - (size - 1) / 2,) * 3, indexing="ij"))
    centre = rng.uniform(-1, 1, 3)
    axes = size / 2 * rng.uniform(0.78, 0.92, 3)
    r = np.sqrt(sum(((g - c) / a) ** 2 for g, c, a in zip(grid, centre, axes)))
    bumps = ndimage.gaussian_filter(rng.normal(0, 1, (size,) * 3), size / 6)
    r = r + 0.6 * bumps / max(np.abs(bumps).max(), 1e-6) * 0.12
    brain = rng.uniform(0.72, 0.8)
    lab = np.zeros((size,) * 3, np.int16)
    lab[r <= 1.0] = SKULL
    lab[r <= 0.9] = CSF
    lab[r <= brain] = GM
    wm = r <= brain - rng.uniform(0.14, 0.2)
    left = grid[0] - centre[0] < 0  # RAS: low x is left
    lab[wm & left], lab[wm & ~left] = WM_L, WM_R
    lab[(lab == GM) & left], lab[(lab == GM) & ~left] = GM_L, GM_R
    for side in (-1, 1):  # two ventricles beside the midline
        v = sum(((g - c - o) / a) ** 2 for g, c, o, a in
                zip(grid, centre, (side * size * 0.09, 0, 0), (size * 0.05, size * 0.14, size * 0.07)))
        lab[v <= 1] = VENT
    return lab


def image_of(lab: np.ndarray, dataset: str, rng) -> np.ndarray:
    bg, skull, csf, gm, wm = CONTRAST[dataset]
    means = {BG: bg, SKULL: skull, CSF: csf, GM_L: gm, GM_R: gm, WM_L: wm, WM_R: wm, VENT: csf}
    img = np.zeros(lab.shape, np.float32)
    for k, m in means.items():
        img[lab == k] = m * rng.uniform(0.9, 1.1)
    bias = np.exp(ndimage.gaussian_filter(rng.normal(0, 1, lab.shape), lab.shape[0] / 4) * 4.0)
    img = img * (bias / bias.mean()).astype(np.float32)
    sigma = (0.6, 0.6, 1.8) if dataset == "C" else 0.6  # C: thick slices along z
    img = ndimage.gaussian_filter(img, sigma)
    return (img + rng.normal(0, NOISE[dataset], lab.shape)).clip(0).astype(np.float32)


def write_datasets(root: Path, n: int, size: int, seed: int) -> dict[str, Path]:
    """The three source datasets, in three layouts; returns ``{name: source}``."""
    las = np.diag([-1.0, 1.0, 1.0, 1.0])
    las[0, 3] = size - 1  # B: the same head stored with x flipped
    rows = ["subject,image,label"]
    for d_index, dataset in enumerate(PROTOCOLS):
        for i in range(n):
            rng = np.random.default_rng([seed, d_index, i])
            anat = anatomy(size, rng)
            img = image_of(anat, dataset, rng)
            lab = np.zeros(anat.shape, np.int16)
            for k, v in PROTOCOLS[dataset].items():
                lab[anat == k] = v
            if dataset == "A":
                save_volume(img, _mk(root / "A" / "scans") / f"a{i:02d}_t1.nii.gz")
                save_volume(lab, _mk(root / "A" / "segs") / f"a{i:02d}_aseg.nii.gz")
                rows.append(f"a{i:02d},scans/a{i:02d}_t1.nii.gz,segs/a{i:02d}_aseg.nii.gz")
            elif dataset == "B":
                anat_dir = _mk(root / "B" / f"sub-{i:02d}" / "anat")
                seg_dir = _mk(root / "B" / "derivatives" / "manual" / f"sub-{i:02d}" / "anat")
                save_volume(img[::-1].copy(), anat_dir / f"sub-{i:02d}_T2w.nii.gz", affine=las)
                save_volume(lab[::-1].copy(), seg_dir / f"sub-{i:02d}_desc-tissue_dseg.nii.gz", affine=las)
            else:
                save_volume(img, _mk(root / "C" / "images") / f"c{i:02d}.nii.gz")
                save_volume(lab, _mk(root / "C" / "labels") / f"c{i:02d}_seg.nii.gz")
    atomic_write_text(root / "A" / "manifest.csv", "\n".join(rows) + "\n")
    return {"A": root / "A" / "manifest.csv", "B": root / "B", "C": root / "C"}


def _mk(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def protocol_yaml(path: Path) -> Path:
    lines = ["# common labels", "labels:"] + [f"  {k}: {v}" for k, v in {0: "background", **COMMON}.items()]
    lines += ["# each dataset's label -> common label (0: background)", "datasets:"]
    for dataset, m in MAPS.items():
        lines.append(f"  {dataset}: {{{', '.join(f'{a}: {b}' for a, b in m.items())}}}")
    return atomic_write_text(path, "\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- plot
def box_plot(scores: dict, datasets: list[str], path: Path) -> Path:
    from synthseg.evaluation.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    data, ticks, colours = [], [], []
    for i, d in enumerate(datasets):
        for j, model in enumerate(("general", "specific")):
            data.append(scores[d][model])
            ticks.append(3 * i + j + 1)
            colours.append("#4c72b0" if model == "general" else "#dd8452")
    parts = ax.boxplot(data, positions=ticks, widths=0.8, patch_artist=True, medianprops={"color": "black"})
    for patch, colour in zip(parts["boxes"], colours):
        patch.set_facecolor(colour)
    for pos, values in zip(ticks, data):
        ax.plot(np.full(len(values), pos), values, "k.", markersize=4)
    ax.set_xticks([3 * i + 1.5 for i in range(len(datasets))], [f"dataset {d}" for d in datasets])
    ax.set_ylabel("mean Dice (WM, GM, CSF)")
    ax.set_title("test scans: general model (blue), the dataset's own (orange)", fontsize=10)
    ax.set_ylim(0, 1)
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("tutorial_outputs/6_general_vs_specific"))
    parser.add_argument("--steps", type=int, default=300,
                        help="training steps of each specific model (default: 300); the general model gets "
                             "this times the number of datasets")
    parser.add_argument("--same-steps", action="store_true", help="the general model gets --steps steps too")
    parser.add_argument("--subjects", type=int, default=10, help="subjects per dataset (default: 10)")
    parser.add_argument("--size", type=int, default=32, help="scan side, voxels of 1 mm (default: 32)")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 1e-3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="60 steps, 8 subjects of 24^3 (for the tests)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.subjects, args.size = 60, 8, 24
    if args.size % 4 or args.size < 16:
        parser.error("--size must be a multiple of 4, at least 16 (a 3-level U-Net)")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    from synthseg.data.merge import merge_datasets
    from synthseg.evaluation.metrics import dice
    from synthseg.evaluation.statistics import paired_test
    from synthseg.inference.model import load_model
    from synthseg.inference.reading import read_scan
    from synthseg.inference.segmentation import segment_volume
    from synthseg.nn.unet import UNetOptions
    from synthseg.training.augmentation import AugmentationOptions
    from synthseg.training.supervised import SupervisedOptions, supervised_training

    # 1. three datasets, one protocol map, one merged set with a per-dataset split
    sources = write_datasets(out / "datasets", args.subjects, args.size, args.seed)
    protocol = protocol_yaml(out / "protocol.yaml")
    merged = merge_datasets(sources, protocol, out / "merged", fractions=(0.5, 0.125, 0.375), seed=args.seed,
                            modality={"B": "T2w"})
    print(f"merged {len(merged.pairs)} scans into common labels {merged.labels} ({', '.join(COMMON.values())})")
    for d, c in merged.counts().items():
        print(f"  dataset {d}: {c['train']} train, {c['val']} val, {c['test']} test")

    # 2. one general model, one model per dataset: same network, steps and augmentation
    # no batch normalisation: with one scan per step, the running statistics that prediction
    # uses would average the general model's very different contrasts (T1- and T2-like)
    unet = UNetOptions(n_levels=3, base_features=8, batch_norm=False)
    augmentation = AugmentationOptions(prob=0.5, flip_prob=0.0, rotation=8, scaling=0.1, nonlin_std=1.0,
                                       bias_std=0.3, gamma_std=0.2)
    models = {}
    for name in ["general"] + merged.datasets:
        dataset = None if name == "general" else name
        steps = args.steps * (len(merged.datasets) if name == "general" and not args.same_steps else 1)
        options = SupervisedOptions(steps=steps, steps_per_checkpoint=max(steps // 6, 1), learning_rate=args.lr,
                                    warmup_steps=min(50, steps // 4), labels=merged.labels, seed=args.seed, progress=False,
                                    tensorboard=False)
        run = out / "runs" / name
        t = time.time()
        result = supervised_training(*merged.files("train", dataset), run, validation=merged.files("val", dataset),
                                     unet=unet, options=options, augmentation=augmentation,
                                     resume=(run / "last.npz").exists())
        models[name] = load_model(run)  # its best validation checkpoint
        best = "-" if result.best_dice is None else f"{result.best_dice:.3f}"
        print(f"trained {name:8s} on {len(merged.files('train', dataset)[0]):2d} scans: {result.step} steps, "
              f"best validation Dice {best} ({time.time() - t:.0f} s)")

    # 3. every model on every test scan; Dice of the common labels
    labels = [v for v in merged.labels if v != 0]
    rows, mean_dice = [], {}
    for pair in merged.select("test"):
        volume, _ = read_scan(pair.image)
        truth = np.asarray(load_volume(pair.label).data, np.int32)
        for name, model in models.items():
            pred = segment_volume(volume, model, flip=False).native_segmentation()
            scores = dice(truth, pred, labels)
            rows += [[pair.dataset, pair.subject, name, v, f"{s:.4f}"] for v, s in scores.items()]
            mean_dice[(pair.dataset, pair.subject, name)] = float(np.mean(list(scores.values())))
    with open(out / "dice.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["dataset", "subject", "model", "label", "dice"])
        w.writerows(rows)

    # 4. table, paired test, plot
    tests = [(p.dataset, p.subject) for p in merged.select("test")]
    scores = {d: {"general": [], "specific": []} for d in merged.datasets}
    for d, s in tests:
        scores[d]["general"].append(mean_dice[(d, s, "general")])
        scores[d]["specific"].append(mean_dice[(d, s, d)])
    print(f"\nmean Dice on each dataset's test scans ({', '.join(COMMON.values())}); columns: model")
    print(f"{'test set':10s}" + "".join(f"{m:>10s}" for m in models) + "   general - own")
    summary = {"steps": args.steps, "general_steps": args.steps * (1 if args.same_steps else len(merged.datasets)),
               "subjects": args.subjects, "size": args.size, "datasets": {}}
    for d in merged.datasets:
        cells = {m: float(np.mean([mean_dice[(d, s, m)] for dd, s in tests if dd == d])) for m in models}
        print(f"{d:10s}" + "".join(f"{cells[m]:10.3f}" for m in models) + f"   {cells['general'] - cells[d]:+.3f}")
        summary["datasets"][d] = {"n_test": len(scores[d]["general"]), "mean_dice": cells}
    general = [mean_dice[(d, s, "general")] for d, s in tests]
    specific = [mean_dice[(d, s, d)] for d, s in tests]
    test = paired_test(general, specific, higher_is_better=True, names=("general", "specific"))
    summary["paired_test"] = test
    summary["mean_general"], summary["mean_specific"] = float(np.mean(general)), float(np.mean(specific))
    print(f"\nall {test['n']} test scans: general {summary['mean_general']:.3f}, specific "
          f"{summary['mean_specific']:.3f} (median difference {test['median_difference']:+.3f}); "
          f"Wilcoxon signed-rank p = {test['p_value']:.3g}"
          + (f" ({test['note']})" if test["note"] else ""))
    summary["plot"] = str(box_plot(scores, merged.datasets, out / "general_vs_specific.png"))
    summary["seconds"] = round(time.time() - t0, 1)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out / 'dice.csv'}, {out / 'summary.json'} and {summary['plot']} ({summary['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
