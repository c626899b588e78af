"""The ``synthseg train-supervised`` command (:func:`synthseg.training.supervised.supervised_training`):
a U-Net trained or fine-tuned on real scans and their label maps."""
from __future__ import annotations

from pathlib import Path

from lab2im.errors import InputError

HELP = "train or fine-tune a U-Net on real scans and their label maps (transfer learning, early stopping)"
DESCRIPTION = ("Train a U-Net on real (scan, label map) pairs with augmentation, optionally starting from a "
               "trained model (--init-from) and keeping the model that scores best on validation pairs. "
               "A killed run continues exactly with --resume.")


def add_arguments(parser) -> None:
    """The flags of ``train-supervised`` (``train-slices`` adds its own, see
    :mod:`synthseg.training.slices_command`)."""
    parser.add_argument("model_dir", type=Path, help="run folder (checkpoints, logs, options)")
    parser.add_argument("--images", required=True, help="training scans (file, folder or .txt list)")
    parser.add_argument("--label-maps", required=True,
                        help="their label maps (file, folder or .txt list), in the same sorted order")
    parser.add_argument("--val-images", default=None, help="validation scans (default: no validation)")
    parser.add_argument("--val-label-maps", default=None, help="their label maps")
    parser.add_argument("--init-from", default=None,
                        help="start from this U-Net (.keras or run folder): layers of the same name and shape are "
                             "copied (transfer learning); default: random")
    parser.add_argument("--freeze-encoder", action="store_true", help="keep the encoder's weights (needs --init-from)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in model_dir from its last checkpoint, with its saved options "
                             "(--steps may raise the total)")
    parser.add_argument("--steps", type=int, default=None, help="total optimiser steps (default: 1000)")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (default: 100)")
    parser.add_argument("--keep-checkpoints", type=int, default=5,
                        help="periodic checkpoints kept besides the last one; 0 keeps all (default: 5)")
    parser.add_argument("--validate-every", type=int, default=None,
                        help="steps between validations (default: --checkpoint-every)")
    parser.add_argument("--patience", type=int, default=None,
                        help="stop after this many validations without improvement (default: never)")
    parser.add_argument("--crop", type=int, nargs="+", default=None, metavar="N",
                        help="training crop, voxels (1 number for every axis, or one per axis); default: the "
                             "largest scan, rounded up to the U-Net's multiple")
    parser.add_argument("--levels", type=int, default=None,
                        help="U-Net levels (default: 5, or the --init-from run's)")
    parser.add_argument("--features", type=int, default=None,
                        help="features at the first level (default: 24, or the --init-from run's)")
    parser.add_argument("--batch-size", type=int, default=1, help="pairs per step (default: 1)")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate (default: 1e-4)")
    parser.add_argument("--lr-schedule", choices=("constant", "cosine", "linear"), default="constant",
                        help="learning-rate schedule (default: constant)")
    parser.add_argument("--ce-after-warmup", type=float, default=0.0,
                        help="share of cross-entropy kept beside Dice, 0-1 (default: 0)")
    parser.add_argument("--no-augmentation", action="store_true", help="train on the pairs as they are")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the backend (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def settings(args, ndim: int = 3):
    """``(validation, unet, options, augmentation)`` of a supervised or slice run from the flags
    (on ``--resume``: ``None`` for what the run keeps, options only for a new ``--steps``)."""
    from synthseg.nn.unet import UNetOptions
    from synthseg.training.augmentation import AugmentationOptions
    from synthseg.training.supervised import SupervisedOptions

    if (args.val_images is None) != (args.val_label_maps is None):
        raise InputError("--val-images and --val-label-maps go together")
    validation = None if args.val_images is None else (args.val_images, args.val_label_maps)
    unet = None
    if args.levels or args.features or args.init_from is None:
        base = UNetOptions(ndim=ndim)
        unet = UNetOptions(ndim=ndim, n_levels=args.levels or base.n_levels,
                           base_features=args.features or base.base_features)
    crop = args.crop
    if crop is not None:
        if len(crop) not in (1, ndim):
            raise InputError(f"--crop takes 1 or {ndim} numbers, got {len(crop)}")
        crop = tuple(crop * ndim if len(crop) == 1 else crop)
    options = SupervisedOptions(steps=args.steps or 1000, steps_per_checkpoint=args.checkpoint_every,
                                keep_checkpoints=args.keep_checkpoints, batch_size=args.batch_size,
                                learning_rate=args.lr, lr_schedule=args.lr_schedule,
                                ce_after_warmup=args.ce_after_warmup, seed=args.seed, crop_shape=crop,
                                validate_every=args.validate_every, patience=args.patience)
    augmentation = AugmentationOptions(prob=0.0, flip_prob=0.0) if args.no_augmentation else None
    if args.resume:  # the run's own options; only the total of steps may change
        return validation, None, options if args.steps else None, None
    return validation, unet, options, augmentation


def summary(result) -> str:
    best = "" if result.best_dice is None else f", best validation Dice {result.best_dice:.4f} at step {result.best_step}"
    return (f"trained to step {result.step}{best}{' (stopped early)' if result.stopped_early else ''}; "
            f"model: {result.model_dir / ('unet_best.keras' if result.best_dice is not None else 'unet_last.keras')}")


def run(args) -> int:
    from synthseg.inference.batch import apply_threads
    from synthseg.training.supervised import supervised_training

    apply_threads(args.threads)
    validation, unet, options, augmentation = settings(args)
    result = supervised_training(args.images, args.label_maps, args.model_dir, validation=validation, unet=unet,
                                 options=options, augmentation=augmentation, init_from=args.init_from,
                                 freeze_encoder=args.freeze_encoder, resume=args.resume)
    print(summary(result))
    return 0
