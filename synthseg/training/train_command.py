"""The ``synthseg train`` command (:func:`synthseg.training.synthetic.training`): every setting
from its flag, else from the ``--preset`` recipe (:mod:`synthseg.training.recipes`), else a default."""
from __future__ import annotations

from pathlib import Path

from lab2im.errors import InputError
from synthseg.training.recipes import RECIPES

HELP = "train a contrast-agnostic U-Net on synthetic scans from label maps"
DESCRIPTION = ("Train a U-Net on synthetic scans generated on the fly from label maps. "
               "A killed run continues exactly with --resume.")


def add_arguments(parser) -> None:
    parser.add_argument("labels", nargs="?", default=None,
                        help="training label maps (file, folder or .txt list); with --preset it may be left out: the "
                             "public training maps at the recipe's voxel size")
    parser.add_argument("model_dir", type=Path, help="run folder (checkpoints, logs, options)")
    parser.add_argument("--preset", choices=sorted(RECIPES), default=None,
                        help="start from a training recipe (synthseg.training.recipes; e.g. small, cpu); flags given "
                             "override its settings")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in model_dir from its last checkpoint, with its saved options")
    parser.add_argument("--steps", type=int, default=None,
                        help="total optimiser steps (default: 1000); with --resume, the new total (more or fewer, a "
                             "multiple of the run's checkpoint interval)")
    parser.add_argument("--checkpoint-every", type=int, default=None,
                        help="steps between checkpoints; --steps must be a multiple of it (default: 100)")
    parser.add_argument("--keep-checkpoints", type=int, default=None,
                        help="periodic checkpoints kept besides the last one; 0 keeps all, e.g. for `synthseg validate` "
                             "(default: 5)")
    parser.add_argument("--options", type=Path, default=None,
                        help="generator options (GeneratorOptions JSON, e.g. with the priors of `synthseg estimate-priors`: "
                             "prior_means/prior_stds paths; voxel_size of the label maps); default: the brain protocol's")
    parser.add_argument("--priors", type=Path, default=None, metavar="DIR",
                        help="intensity priors: the output folder of `synthseg estimate-priors` (its labels.npy, "
                             "classes.npy, prior_means.npy, prior_stds.npy and prior distribution); default: the "
                             "generator's uniform priors")
    parser.add_argument("--voxel-size", type=float, default=None, metavar="MM",
                        help="train at this voxel size: the label maps are resampled to it (nearest neighbour, "
                             "into MODEL_DIR/label_maps/) and the model works at it (default: the maps' own; "
                             "with --preset, the recipe's)")
    parser.add_argument("--init-weights", type=Path, default=None,
                        help="start from these U-Net weights (.keras, same architecture and labels; float16 works); "
                             "default: random")
    parser.add_argument("--init-widen", action="store_true", default=None,
                        help="--init-weights may be a narrower U-Net (fewer features per level, all else the same): "
                             "it is embedded in this run's wider one, which starts with its function")
    parser.add_argument("--crop", type=int, default=None,
                        help="training crop, voxels per axis (e.g. 160; default: the label maps' shape)")
    parser.add_argument("--levels", type=int, default=None, help="U-Net levels (default: 5)")
    parser.add_argument("--features", type=int, default=None, help="features at the first level (default: 24)")
    parser.add_argument("--batch-size", type=int, default=None, help="label maps per step (default: 1)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: 1e-4)")
    parser.add_argument("--lr-schedule", choices=("constant", "cosine", "linear"), default=None,
                        help="learning-rate schedule (default: constant)")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="steps of cross-entropy before the loss turns to soft Dice (default: 0)")
    parser.add_argument("--ce-after-warmup", type=float, default=None,
                        help="share of cross-entropy kept after the warm-up, 0-1 (0: Dice only; 0.1 keeps labels from "
                             "dying under Dice)")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="half precision in the U-Net (float16 on a GPU, bfloat16 on a CPU)")
    parser.add_argument("--strategy", choices=("mirrored", "multiworker", "data_parallel"), default=None,
                        help="several devices: tf.distribute mirrored / multi-worker, or Keras data parallel (JAX); "
                             "default: one device")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the backend (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


#: ``synthseg train`` settings a flag, else the ``--preset`` recipe, else these give
TRAIN_DEFAULTS = dict(steps=1000, steps_per_checkpoint=100, keep_checkpoints=5, batch_size=1, learning_rate=1e-4,
                      lr_schedule="constant", warmup_steps=0, ce_after_warmup=0.0, n_levels=5, base_features=24)
_TRAIN_FLAGS = dict(steps="steps", steps_per_checkpoint="checkpoint_every", keep_checkpoints="keep_checkpoints",
                    batch_size="batch_size", learning_rate="lr", lr_schedule="lr_schedule",
                    warmup_steps="warmup_steps", ce_after_warmup="ce_after_warmup")


def settings(args):
    """``(labels, TrainingOptions, UNetOptions, crop)`` of a new run: each setting from its flag,
    else the ``--preset`` recipe, else :data:`TRAIN_DEFAULTS`."""
    from synthseg.nn.unet import UNetOptions
    from synthseg.training.recipes import recipe

    r = recipe(args.preset) if args.preset else None
    base = dict(TRAIN_DEFAULTS, **(r.training if r else {}), **(r.unet if r else {}))
    t = {name: getattr(args, flag) if getattr(args, flag) is not None else base[name]
         for name, flag in _TRAIN_FLAGS.items()}
    if t["steps"] > t["steps_per_checkpoint"] and t["steps"] % t["steps_per_checkpoint"]:
        raise InputError(f"--steps {t['steps']} is not a multiple of --checkpoint-every {t['steps_per_checkpoint']}: "
                         "training runs whole checkpoint intervals")
    options = (r.training_options if r else _plain_training_options)(  # None: the recipe's, else the default
        **t, mixed_precision=args.mixed_precision or None, seed=args.seed, strategy=args.strategy,
        init_weights=None if args.init_weights is None else str(args.init_weights), init_widen=args.init_widen)
    unet = UNetOptions(n_levels=args.levels or base["n_levels"], base_features=args.features or base["base_features"])
    crop = args.crop or (r.crop if r else None)
    labels = args.labels
    if labels is None:
        if r is None:
            raise InputError("give the training label maps (LABELS), or a --preset to train on the public ones")
        from dataclasses import replace

        labels = replace(r, voxel_mm=args.voxel_size or r.voxel_mm).label_maps()
    elif args.voxel_size:
        labels = resampled_label_maps(labels, args.voxel_size, Path(args.model_dir) / RESAMPLED_MAPS)
    return labels, options, unet, crop


#: where ``--voxel-size`` puts the resampled label maps, inside the run folder
RESAMPLED_MAPS = "label_maps"


def resampled_label_maps(labels, voxel_mm: float, out_dir: Path) -> Path:
    """The label maps ``labels`` resampled to ``voxel_mm`` mm (nearest neighbour: no new labels)
    into ``out_dir`` (written atomically; a map already there is kept)."""
    from lab2im.geometry import resample_volume
    from lab2im.io import (
        list_volume_files,
        load_volume,
        save_volume,
        strip_volume_suffix,
    )

    if not voxel_mm > 0:
        raise InputError(f"--voxel-size must be > 0 mm, got {voxel_mm}")
    files = list_volume_files(labels, "label map")
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in files:
        out = out_dir / f"{strip_volume_suffix(f.name)}.nii.gz"
        if not out.exists():
            volume = resample_volume(load_volume(f), voxel_mm, order=0)
            save_volume(volume.data.astype("int32"), out, affine=volume.affine)
    return out_dir


def generator_options(args):
    """:class:`~lab2im.options.GeneratorOptions` from ``--options`` and ``--priors`` (``None``:
    the defaults for the label maps)."""
    import json

    from lab2im.options import GeneratorOptions

    if args.options is None and args.priors is None:
        return None
    fields = GeneratorOptions.load(args.options).to_dict() if args.options else {}
    if args.priors is not None:
        d = args.priors
        missing = [n for n in ("labels.npy", "classes.npy", "prior_means.npy", "prior_stds.npy", "priors.json")
                   if not (d / n).is_file()]
        if missing:
            raise InputError(f"not an estimate-priors folder: no {', '.join(missing)}", d)
        kind = json.loads((d / "priors.json").read_text()).get("prior_distribution", "normal")
        fields.update(generation_labels=str(d / "labels.npy"), generation_classes=str(d / "classes.npy"),
                      prior_means=str(d / "prior_means.npy"), prior_stds=str(d / "prior_stds.npy"),
                      prior_distribution=kind, segmentation_labels=None)
    return GeneratorOptions.from_dict(fields, source=str(args.options or args.priors))


def generator_overrides(args, crop) -> dict:
    """Generator fields of a new run besides its options: the ``--preset`` recipe's own
    (e.g. ``resolution_prob``) and the crop."""
    from synthseg.training.recipes import recipe

    overrides = dict(recipe(args.preset).generator) if args.preset else {}
    if crop:
        overrides["output_shape"] = (crop,) * 3
    return overrides


def _plain_training_options(**fields):
    from synthseg.training.synthetic import TrainingOptions

    return TrainingOptions(**{k: v for k, v in fields.items() if v is not None})


def run(args) -> int:
    from synthseg.inference.batch import apply_threads
    from synthseg.training.synthetic import TrainingOptions, training

    apply_threads(args.threads)
    if args.resume:
        ignored = [flag for flag, value in (("--options", args.options), ("--init-weights", args.init_weights),
                                            ("--init-widen", args.init_widen),
                                            ("--crop", args.crop), ("--preset", args.preset),
                                            ("--priors", args.priors)) if value is not None]
        if ignored:
            raise InputError(f"{', '.join(ignored)}: a resumed run keeps the options it was started with "
                             "(only --steps may change)", args.model_dir)
        resampled = Path(args.model_dir) / RESAMPLED_MAPS
        labels = resampled if resampled.is_dir() else args.labels  # the maps --voxel-size made at the start
        if labels is None:
            raise InputError("give the training label maps (LABELS) the run was started with", args.model_dir)
        options = TrainingOptions(steps=args.steps) if args.steps else None
        result = training(labels, args.model_dir, options=options, resume=True)
    else:
        labels, options, unet, crop = settings(args)
        generator = generator_options(args)
        result = training(labels, args.model_dir, generator=generator, unet=unet, options=options,
                          **generator_overrides(args, crop))
    print(f"trained to step {result.step} (last loss {result.last_loss}); model: {result.model_dir / 'unet_last.keras'}")
    return 0
