"""The ``synthseg train-slices`` command (:func:`synthseg.training.slices.slice_training`): a 2D
or 2.5D U-Net trained on slices of real 3D scans and their label maps."""
from __future__ import annotations

from synthseg.training.supervised_command import (
    add_arguments as add_supervised_arguments,
)
from synthseg.training.supervised_command import settings, summary

HELP = "train a 2D (or 2.5D) U-Net on slices of real scans and their label maps"
DESCRIPTION = ("Train a 2D U-Net on slices (--k 1) or stacks of k neighbouring slices (2.5D) of real 3D "
               "(scan, label map) pairs, with the flags of train-supervised; `synthseg predict --model RUN` "
               "then segments whole scans slice by slice.")


def add_arguments(parser) -> None:
    add_supervised_arguments(parser)
    parser.add_argument("--axis", type=int, choices=(0, 1, 2), required=True,
                        help="slice axis after reorientation to RAS: 0 sagittal, 1 coronal, 2 axial")
    parser.add_argument("--k", type=int, default=1, help="slices per input, odd (default: 1; 3 or 5: 2.5D)")
    parser.add_argument("--keep-empty", action="store_true",
                        help="also train on slices whose label map is background only")


def run(args) -> int:
    from synthseg.inference.batch import apply_threads
    from synthseg.training.slices import slice_training

    apply_threads(args.threads)
    validation, unet, options, augmentation = settings(args, ndim=2)
    result = slice_training(args.images, args.label_maps, args.model_dir, axis=args.axis, k=args.k,
                            validation=validation, unet=unet, options=options, augmentation=augmentation,
                            skip_empty=not args.keep_empty, init_from=args.init_from,
                            freeze_encoder=args.freeze_encoder, resume=args.resume)
    print(summary(result))
    return 0
