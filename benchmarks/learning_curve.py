"""Learning curves: development-set Dice of a training run's checkpoints against steps and CPU time.

    python benchmarks/learning_curve.py runs/a runs/b                     # every checkpoint of each run
    python benchmarks/learning_curve.py runs/a=runs/a_kept --every 200    # checkpoints kept elsewhere
    python benchmarks/learning_curve.py runs/a --init models/synthseg_1.5mm/unet_last.keras
    python benchmarks/learning_curve.py runs/b --keep --after ab_dk:600   # b continued ab_dk's step 600
    python benchmarks/learning_curve.py runs/b=new_ckpts --keep --extend  # add b's newer checkpoints

Recipes are compared at equal budget: each run's checkpoints (``step-*.npz``) are restored and
scored on development scans with the accuracy benchmark's measure (whole prediction pipeline,
tissue Dice GM/WM/CSF, brain labels far outside the brain mask; see ``benchmarks/accuracy.py``),
and the training time to reach each checkpoint is read from the run's ``training_log.csv``:
the process's CPU time, summed over resumes (a paused or starved run gains none), or, for steps
logged before that column existed, the wall seconds between steps times the CPU cores the run
used (``--cores``). ``--init`` scores the weights a run started from as its step 0. ``--keep``
keeps the curves already in the output file for runs not scored now (their folders may be
gone), and ``--after NAME:STEP`` places the runs scored now after step STEP of the kept curve
NAME (they started from its weights there): their steps and CPU minutes are counted from it.
``--extend`` (with ``--keep``) adds the points to the run's kept curve instead of replacing it.
``--average K ...`` also scores, for each run, the mean weights of its last K scored
checkpoints (stochastic weight averaging: no training cost), as a curve ``NAME+avg``.

Writes ``benchmarks/results/learning_curve.json`` and a plot (mean tissue Dice against steps
and against CPU minutes, one line per run), and prints a table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, format_table, write_results  # noqa: E402

DEFAULT_CASES = ("mni2009c_2mm_t1", "mni2009c_2mm_t2", "spm_avg152_pd")


def cpu_seconds(run_dir: Path, cores: float) -> dict[int, float]:
    """``{step: CPU seconds of training up to that step}`` from the run's ``training_log.csv``
    (process CPU time summed over resumes; wall time x ``cores`` for steps logged without it;
    see :func:`synthseg.training.logs.cumulative_cpu_seconds`)."""
    from synthseg.training.logs import cumulative_cpu_seconds, read_step_log

    rows = read_step_log(Path(run_dir) / "training_log.csv")
    return {int(r["step"]): t for r, t in zip(rows, cumulative_cpu_seconds(rows, cores))}


def parse_run(text: str) -> tuple[Path, Path]:
    """``RUN`` or ``RUN=CHECKPOINT_FOLDER`` -> (run folder, folder of its ``step-*.npz``)."""
    run, _, kept = text.partition("=")
    return Path(run), Path(kept) if kept else Path(run) / "checkpoints"


def scored_checkpoints(kept: Path, every: int, seconds: dict) -> list[tuple[int, Path]]:
    """``[(step, path)]`` of the ``step-*.npz`` in ``kept`` every ``every`` steps that the
    training log times (``seconds``, see :func:`cpu_seconds`), in step order."""
    from synthseg.evaluation.validate import STEP_FILE

    found = sorted((int(STEP_FILE.search(p.name).group(1)), p) for p in kept.glob("step-*.npz"))
    return [(step, p) for step, p in found if not step % every and step in seconds]


def score(seg_model, cases, flip: bool) -> dict:
    """Mean tissue Dice (and the worst outside-brain volume) of one network on ``cases``."""
    import numpy as np

    from benchmarks.accuracy import measure

    results = [measure(name, seg_model, flip) for name in cases]
    outside = [r["outside_brain_ml"] for r in results if r["outside_brain_ml"] is not None]
    return {"mean_dice": float(np.mean([r["mean_dice"] for r in results])),
            "per_case": {r["case"]: r["dice"] for r in results},
            "max_outside_brain_ml": max(outside) if outside else None}


def curve(run_dir: Path, kept: Path, cases, every: int, cores: int, flip: bool, init=None,
          refine: bool = False) -> list[dict]:
    """Score the checkpoints of one run (every ``every`` steps); see the module docstring."""
    from synthseg.evaluation.validate import network_for_run
    from synthseg.training.checkpoints import load_network_weights
    from synthseg.training.synthetic import load_initial_weights

    seg_model = network_for_run(run_dir)
    seg_model.refine = refine
    seconds = cpu_seconds(run_dir, cores)
    points = []
    if init:
        load_initial_weights(seg_model.network, init)
        points.append({"step": 0, "cpu_minutes": 0.0, **score(seg_model, cases, flip)})
        print(f"{run_dir.name} step 0 (init): {points[-1]['mean_dice']:.3f}", flush=True)
    for step, path in scored_checkpoints(kept, every, seconds):
        load_network_weights(path, seg_model.network)
        points.append({"step": step, "cpu_minutes": seconds[step] / 60.0,
                       **score(seg_model, cases, flip)})
        print(f"{run_dir.name} step {step}: {points[-1]['mean_dice']:.3f}", flush=True)
    return points


def averaged_points(run_dir: Path, kept: Path, cases, every: int, cores: int, flip: bool, counts,
                    refine: bool = False) -> list[dict]:
    """One point per ``count`` in ``counts``: the mean weights of the run's last ``count``
    checkpoints scored by :func:`curve` (every ``every`` steps; see
    :func:`synthseg.training.checkpoints.average_network_weights`), at the last one's step and
    CPU time (averaging costs no training)."""
    from synthseg.evaluation.validate import network_for_run
    from synthseg.training.checkpoints import average_network_weights

    seg_model = network_for_run(run_dir)
    seg_model.refine = refine
    seconds = cpu_seconds(run_dir, cores)
    found = scored_checkpoints(kept, every, seconds)
    points = []
    for count in counts:
        chosen = found[-count:]
        if len(chosen) < 2:
            continue
        steps = average_network_weights([p for _, p in chosen], seg_model.network)
        points.append({"step": steps[-1], "cpu_minutes": seconds[steps[-1]] / 60.0,
                       "averaged_steps": steps, **score(seg_model, cases, flip)})
        print(f"{run_dir.name} mean of steps {steps[0]}..{steps[-1]} ({len(steps)}): "
              f"{points[-1]['mean_dice']:.3f}", flush=True)
    return points


def kept_curves(path: Path) -> dict[str, list[dict]]:
    """The curves already written to ``path`` (none if it does not exist)."""
    import json

    if not Path(path).is_file():
        return {}
    return dict(json.loads(Path(path).read_text()).get("results", {}))


def start_point(curves: dict[str, list[dict]], after: str | None) -> dict:
    """The point ``NAME:STEP`` of a kept curve (step 0 at 0 minutes without ``after``)."""
    from lab2im.errors import InputError

    if after is None:
        return {"step": 0, "cpu_minutes": 0.0}
    name, _, step = after.rpartition(":")
    points = [p for p in curves.get(name, []) if str(p["step"]) == step]
    if not points:
        raise InputError(f"--after {after}: no step {step} in a kept curve {name!r} (have {sorted(curves)}; "
                         "use --keep)")
    return {k: v for k, v in points[0].items() if k != "continued"}


def extended(kept: list[dict], new: list[dict]) -> list[dict]:
    """``kept`` points with ``new`` added, in step order; a new point replaces a kept one at the
    same step and of the same kind (``--extend``: score a run's latest checkpoints without
    scoring its earlier ones again, or after they were deleted). The point a run continues from
    (``--after``, marked ``continued``) and its initial weights scored at the same step
    (``--init``) are different points: neither replaces the other."""
    def key(p):
        return p["step"], "continued" in p

    by_key = {key(p): p for p in kept}
    by_key.update({key(p): p for p in new})
    return [by_key[k] for k in sorted(by_key, key=lambda k: (k[0], not k[1]))]


def plot(curves: dict[str, list[dict]], path: Path) -> Path:
    from synthseg.evaluation.plots import plt, save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for ax in axes:  # more curves than the default ten colours
        ax.set_prop_cycle(color=plt.cm.tab20.colors)
    for name, points in curves.items():
        for ax, key in zip(axes, ("step", "cpu_minutes")):
            xy = ([p[key] for p in points], [p["mean_dice"] for p in points])
            if name.endswith("+avg"):  # one point per number of checkpoints averaged, at the last one's step
                ax.scatter(*xy, marker="*", s=90, zorder=3, label=name)
            else:
                ax.plot(*xy, marker="o", label=name)
    axes[0].set_xlabel("training step")
    axes[1].set_xlabel("CPU minutes (process CPU time, or wall time x cores where not logged)")
    for ax in axes:
        ax.set_ylabel("mean tissue Dice (development scans)")
        ax.grid(alpha=0.3)
    # one legend beside the panels, so it hides none of the latest points
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize=7,
               ncols=1 + len(curves) // 16)
    return save_figure(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders, each RUN or RUN=FOLDER_OF_CHECKPOINTS")
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), help="development scans")
    parser.add_argument("--every", type=int, default=100, help="score checkpoints every this many steps")
    parser.add_argument("--cores", type=int, default=1, help="CPU cores each run trained on (for steps logged without CPU time)")
    parser.add_argument("--init", default=None, help="U-Net .keras the runs started from (scored as step 0)")
    parser.add_argument("--flip", action="store_true", help="left/right flip averaging (twice the time)")
    parser.add_argument("--refine", action="store_true",
                        help="score with the intensity refinement of prediction (synthseg.inference.refinement); "
                             "default: the networks alone, so that recipes are compared, not the pipeline")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "learning_curve.json")
    parser.add_argument("--keep", action="store_true", help="keep the output file's curves of other runs")
    parser.add_argument("--extend", action="store_true",
                        help="add the points to the run's kept curves (needs --keep) instead of replacing them: "
                             "kept points at other steps stay")
    parser.add_argument("--after", default=None, metavar="NAME:STEP",
                        help="the runs continue the kept curve NAME from its step STEP (needs --keep)")
    parser.add_argument("--average", type=int, nargs="+", default=[], metavar="K",
                        help="also score the mean weights of each run's last K scored checkpoints "
                             "(a curve NAME+avg of one point per K)")
    args = parser.parse_args(argv)

    from lab2im.errors import InputError

    if args.extend and not args.keep:
        print("error: --extend adds to the kept curves: it needs --keep", file=sys.stderr)
        return 1
    curves = kept_curves(args.out) if args.keep else {}
    try:
        start = start_point(curves, args.after)
        for text in args.runs:
            run_dir, kept = parse_run(text)
            points = curve(run_dir, kept, args.cases, args.every, args.cores, args.flip, args.init, args.refine)
            averaged = averaged_points(run_dir, kept, args.cases, args.every, args.cores, args.flip, args.average,
                                       args.refine)
            for point in points + averaged:
                point["step"] += start["step"]
                point["cpu_minutes"] += start["cpu_minutes"]
                if "averaged_steps" in point:
                    point["averaged_steps"] = [s + start["step"] for s in point["averaged_steps"]]
            new = {run_dir.name: ([dict(start, continued=args.after)] if args.after else []) + points}
            if averaged:
                new[run_dir.name + "+avg"] = averaged
            for name, points_of in new.items():
                curves[name] = extended(curves.get(name, []), points_of) if args.extend else points_of
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rows = [(name, p["step"], f"{p['cpu_minutes']:.0f}", p["mean_dice"],
             "-" if p.get("max_outside_brain_ml") is None else f"{p['max_outside_brain_ml']:.1f}",
             f"{len(p['averaged_steps'])} last" if "averaged_steps" in p else "")
            for name, points in curves.items() for p in points]
    print(format_table(["run", "step", "CPU min", "mean tissue Dice", "outside brain (mL)", "weights averaged"],
                       rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = plot(curves, args.out.with_suffix(".png"))
    write_results(args.out, "learning_curve", {"cases": args.cases, "cores": args.cores, "flip": args.flip,
                                               "refine": args.refine, "init": args.init}, curves, packages=["keras", "torch", "tensorflow"])
    print(f"wrote {args.out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
