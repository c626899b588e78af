"""Save a training run's U-Net as float16 weights to continue from on another machine.

    python scripts/save_continue_weights.py runs/dk models/continue/cpu2_dk_fp16.keras
    python scripts/train_synthseg.py runs/next --preset cpu2 --init-weights models/continue/cpu2_dk_fp16.keras

A run folder's checkpoints (optimiser state included) resume a run exactly but are large and
ignored by git; a float16 copy of the network is half the size of its float32 ``.keras`` file
and enough to start a new run from (``--init-weights``). SOURCE is a run folder (its
``unet_last.keras``) or a ``.keras`` file; OUT is written atomically. The step of the run's last checkpoint is
printed, for the commit message.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="run folder or .keras file")
    parser.add_argument("out", type=Path, help="float16 .keras file to write")
    args = parser.parse_args(argv)
    from lab2im.errors import InputError
    from synthseg.training.checkpoints import save_float16_copy

    source = args.source / "unet_last.keras" if args.source.is_dir() else args.source
    if args.out.suffix != ".keras":
        print(f"error: {args.out}: the output must be a .keras file", file=sys.stderr)
        return 1
    try:
        out = save_float16_copy(source, args.out)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    step = ""
    last = source.parent / "last.npz"  # unet_last.keras is saved with it (a training log runs ahead of both)
    if last.is_file():
        from synthseg.training.checkpoints import read_header

        step = f" (step {read_header(last)['step']})"
    print(f"wrote {out}{step}: {out.stat().st_size / 1e6:.1f} MB, from {source} "
          f"({source.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
