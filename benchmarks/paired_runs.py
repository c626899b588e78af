"""Two training runs on the same samples, compared step by step.

    python benchmarks/paired_runs.py runs/cpu15n runs/cpu15            # B (second) against A (first)
    python benchmarks/paired_runs.py runs/cpu15n runs/cpu15 --window 100

Two runs of :func:`synthseg.training.synthetic.training` started with the same seed, batch size
and generator options draw the same label maps and the same random synthetic scans at every
step, whatever their networks and learning rates (the maps of step ``s`` come from ``(seed, s)``;
the generator's random streams are seeded by the run's seed). With the same loss, the difference
of their training losses at one step is then a paired measurement: the sample's own difficulty,
which moves one step's loss by several hundredths, cancels. A recipe change worth a few
thousandths of loss shows after a few hundred steps of each, where scores of single checkpoints
on the development set (``benchmarks/learning_curve.py``) move by about 0.01 from one
checkpoint to the next.

Each step's own loss is recovered from the log's running means
(:func:`synthseg.training.logs.step_values`). For each window of steps both runs trained
(``--window``, default 250) the table gives each run's mean loss, the mean difference ``B - A``
(negative: B fits better) with a 95% interval (normal approximation over the window's steps)
and the share of steps where B's loss was lower; then each checkpoint interval's training Dice
(the log's row at the checkpoint: the Dice of the interval's summed overlaps) and the labels
whose Dice (``dice_per_label.csv``) moved most over the last common intervals. Training loss is
measured on the training distribution while the weights change, so it says which network fits
the generator's scans better, not which reads real scans better: it chooses what to score on
the development set, it does not replace that.

Runs whose seed, batch size, loss or generator options differ are refused (not paired).
Writes a table, ``benchmarks/results/paired_runs.json`` (``--out``) and a plot of the windowed
difference beside it (``.png``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

PACKAGES = ("numpy", "synthseg")
#: the settings that decide which samples a run draws at each step
PAIRING_FIELDS = (("training", "seed"), ("training", "batch_size"), ("training", "ce_after_warmup"),
                  ("training", "ce_weighting"), ("training", "warmup_steps"), ("generator", None))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_a", type=Path, help="the reference run folder")
    p.add_argument("run_b", type=Path, help="the run compared with it")
    p.add_argument("--window", type=int, default=250, help="steps per row of the table (default 250)")
    p.add_argument("--labels", type=int, default=5, help="labels listed at each end of the per-label table")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR / "paired_runs.json")
    args = p.parse_args(argv)
    if args.window < 2:
        p.error(f"--window must be at least 2 steps, got {args.window}")
    return args


def read_run(folder: Path) -> tuple[dict, dict[int, float], dict[int, float], dict[int, dict[str, float]]]:
    """``(options, each step's own loss, training Dice by checkpoint step, per-label Dice by
    checkpoint step)`` of a run folder. A step logged twice keeps its last value (the run that
    went on).

    Raises:
        ValueError: not a training run folder, or an unreadable log (the message names the file).
    """
    from synthseg.training.logs import read_label_dice, read_step_log, step_values

    options_path, log_path = folder / "options.json", folder / "training_log.csv"
    for path in (options_path, log_path):
        if not path.is_file():
            raise ValueError(f"{path}: missing (not a training run folder?)")
    try:
        options = json.loads(options_path.read_text())
        spc = int(options["training"]["steps_per_checkpoint"])
        rows = {int(row["step"]): (row["loss"], row["dice"]) for row in read_step_log(log_path)}
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{folder}: unreadable options.json or training_log.csv ({exc})") from None
    losses = step_values({step: loss for step, (loss, _) in rows.items()}, spc)
    interval_dice = {step: dice for step, (_, dice) in rows.items() if step % spc == 0}
    per_label = {}
    label_path = folder / "dice_per_label.csv"
    if label_path.is_file():
        try:
            per_label = read_label_dice(label_path)
        except (ValueError, KeyError) as exc:
            raise ValueError(f"{label_path}: unreadable ({exc})") from None
    return options, losses, interval_dice, per_label


def pairing_problems(a: dict, b: dict) -> list[str]:
    """The :data:`PAIRING_FIELDS` on which two runs' ``options.json`` differ."""
    problems = []
    for section, key in PAIRING_FIELDS:
        va = a.get(section, {}) if key is None else a.get(section, {}).get(key)
        vb = b.get(section, {}) if key is None else b.get(section, {}).get(key)
        if va != vb:
            problems.append(section if key is None else f"{section}.{key}")
    return problems


def windows(loss_a: dict[int, float], loss_b: dict[int, float], window: int) -> list[dict]:
    """Per window of ``window`` steps (of the steps both runs logged): each run's mean loss, the
    mean paired difference ``b - a`` with its 95% half-width, and the share of steps where b's
    loss was lower. A last window shorter than a quarter of ``window`` is left out (unless it
    is the only one); windows need at least 2 steps."""
    import numpy as np

    steps = sorted(set(loss_a) & set(loss_b))
    rows = []
    for start in range(0, len(steps), window):
        chunk = steps[start:start + window]
        if len(chunk) < max(2, window // 4) and rows:  # a short tail is noise; kept when it is all there is
            continue
        a = np.array([loss_a[s] for s in chunk])
        b = np.array([loss_b[s] for s in chunk])
        d = b - a
        difference, ci95 = common.mean_and_ci95(d)
        rows.append({"first_step": chunk[0], "last_step": chunk[-1], "steps": len(chunk),
                     "loss_a": float(a.mean()), "loss_b": float(b.mean()), "difference": difference,
                     "ci95": ci95, "b_better_share": float(np.mean(d < 0))})
    return rows


def label_changes(per_label_a: dict, per_label_b: dict, last: int = 2) -> dict[str, float]:
    """Mean per-label Dice difference ``b - a`` over the ``last`` checkpoint intervals both runs
    logged, largest gain first."""
    common_steps = sorted(set(per_label_a) & set(per_label_b))[-last:]
    if not common_steps:
        return {}
    names = set.intersection(*(set(per_label_a[s]) & set(per_label_b[s]) for s in common_steps))
    change = {n: sum(per_label_b[s][n] - per_label_a[s][n] for s in common_steps) / len(common_steps) for n in names}
    return dict(sorted(change.items(), key=lambda kv: -kv[1]))


def plot(rows, names, path: Path) -> Path | None:
    """The windowed difference with its 95% intervals, against steps."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    mid = [(r["first_step"] + r["last_step"]) / 2 for r in rows]
    ax.errorbar(mid, [r["difference"] for r in rows], yerr=[r["ci95"] for r in rows], fmt="o-", capsize=3)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"training loss, {names[1]} - {names[0]}")
    ax.set_title("paired training runs (same samples at every step)", fontsize=10)
    fig.tight_layout()
    from lab2im.io import atomic_output

    with atomic_output(path, ".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        opts_a, loss_a, dice_a, labels_a = read_run(args.run_a)
        opts_b, loss_b, dice_b, labels_b = read_run(args.run_b)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    problems = pairing_problems(opts_a, opts_b)
    if problems:
        print(f"error: {args.run_a} and {args.run_b} do not draw the same samples with the same loss: their "
              f"{', '.join(problems)} differ", file=sys.stderr)
        return 1
    rows = windows(loss_a, loss_b, args.window)
    if not rows:
        print(f"error: {args.run_a} and {args.run_b} have fewer than 2 logged steps in common", file=sys.stderr)
        return 1
    names = (args.run_a.name, args.run_b.name)
    print(f"{names[1]} (B) against {names[0]} (A), the same samples at every step: training loss (lower is better)")
    print(common.format_table(
        ["steps", "loss A", "loss B", "B - A", "95% +/-", "B lower"],
        [[f"{r['first_step']}-{r['last_step']}", round(r["loss_a"], 4), round(r["loss_b"], 4),
          round(r["difference"], 4), round(r["ci95"], 4), f"{100 * r['b_better_share']:.0f}%"] for r in rows]))
    intervals = [{"step": s, "dice_a": dice_a[s], "dice_b": dice_b[s], "difference": dice_b[s] - dice_a[s]}
                 for s in sorted(set(dice_a) & set(dice_b))]
    if intervals:
        print("\ntraining Dice of each checkpoint interval")
        print(common.format_table(["to step", "Dice A", "Dice B", "B - A"],
                                  [[i["step"], round(i["dice_a"], 4), round(i["dice_b"], 4), round(i["difference"], 4)]
                                   for i in intervals]))
    changes = label_changes(labels_a, labels_b)
    if changes:
        items = list(changes.items())
        shown = items if len(items) <= 2 * args.labels else items[:args.labels] + items[-args.labels:]
        print("\nper-label Dice, B - A (last two common checkpoint intervals)")
        print(common.format_table(["label", "B - A"], [[n, round(v, 4)] for n, v in shown]))
    out = common.write_results(args.out, "paired_runs",
                               {"run_a": str(args.run_a), "run_b": str(args.run_b), "window": args.window},
                               {"windows": rows, "intervals": intervals, "label_changes": changes}, PACKAGES)
    figure = plot(rows, names, out.with_suffix(".png"))
    print(f"wrote {out}" + (f" and {figure}" if figure else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
