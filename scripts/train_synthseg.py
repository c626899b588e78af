"""Train a contrast-agnostic U-Net from the public training label maps, reproducibly.

    python scripts/train_synthseg.py RUN_DIR --preset small     # 2 mm, 64^3, minutes on 2 CPU cores
    python scripts/train_synthseg.py RUN_DIR --preset cpu       # the shipped model: 2 mm, ~2 h on 2 CPU cores
    python scripts/train_synthseg.py RUN_DIR --preset synthseg  # 1 mm, 160^3, SynthSeg's U-Net (GPU)
    python scripts/train_synthseg.py RUN_DIR --resume           # continue after a stop or a kill

The label maps are built once from PyPI packages (synthseg.training_labels), in the SynthSeg
protocol with skull and scalp; the ``small`` preset resamples them to 2 mm (nearest) so a CPU
can make visible progress in minutes. Every preset is a plain dict below: copy it to change it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PRESETS = {
    # visible progress on 2 CPU cores in minutes (see the README for the measured curve)
    "small": dict(voxel_mm=2.0, crop=64, unet=dict(n_levels=4, base_features=8),
                  training=dict(steps=600, steps_per_checkpoint=50, learning_rate=1e-3, warmup_steps=50,
                                lr_schedule="constant")),
    # the shipped model (models/): 2 mm, 5-level U-Net, trained on 2 CPU cores in about two hours
    "cpu": dict(voxel_mm=2.0, crop=64, unet=dict(n_levels=5, base_features=16),
                training=dict(steps=10_000, steps_per_checkpoint=250, learning_rate=1e-3, warmup_steps=500,
                              lr_schedule="cosine")),
    # the reference configuration (SynthSeg 1.0's network and crop); for a GPU
    "synthseg": dict(voxel_mm=1.0, crop=160, unet=dict(n_levels=5, base_features=24),
                     training=dict(steps=300_000, steps_per_checkpoint=1000, learning_rate=1e-4,
                                   warmup_steps=1000, lr_schedule="constant")),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--steps", type=int, default=None, help="override the preset's number of steps")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ce-after-warmup", type=float, default=None,
                        help="share of cross-entropy kept after the warm-up (new runs; the presets use 0, "
                             "as the shipped model did; 0.1 keeps labels from dying under Dice)")
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)

    from lab2im.errors import InputError
    from synthseg.training import TrainingOptions, training
    from synthseg.training_labels import training_label_maps
    from synthseg.unet import UNetOptions

    preset = PRESETS[args.preset]
    try:
        labels = training_label_maps(preset["voxel_mm"], args.cache_dir)
        if args.resume:
            options = TrainingOptions(steps=args.steps) if args.steps else None
            result = training(labels, args.run_dir, options=options, resume=True)
        else:
            t = dict(preset["training"], seed=args.seed)
            if args.steps:
                t["steps"] = args.steps
            if args.ce_after_warmup is not None:
                t["ce_after_warmup"] = args.ce_after_warmup
            result = training(labels, args.run_dir, unet=UNetOptions(**preset["unet"]),
                              options=TrainingOptions(**t), output_shape=(preset["crop"],) * 3)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"done: step {result.step}, last loss {result.last_loss}, model {result.model_dir / 'unet_last.keras'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
