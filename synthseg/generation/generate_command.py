"""The ``synthseg generate`` command: synthetic scans and their label maps from label maps, as
NIfTI pairs and a PNG mosaic (also what ``synthseg demo --generator`` shows)."""
from __future__ import annotations

import sys
from pathlib import Path

HELP = "generate synthetic scans from your label maps"


def write_examples(labels, out_dir: Path, n: int, size: int | None, seed: int | None,
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


def add_arguments(parser) -> None:
    parser.add_argument("labels", help="label map file, folder of label maps, or .txt list")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--n", type=int, default=5, help="number of scans (default: 5)")
    parser.add_argument("--size", type=int, default=None, help="output crop, voxels per axis (default: none)")
    parser.add_argument("--options", type=Path, default=None, help="GeneratorOptions JSON file")
    parser.add_argument("--seed", type=int, default=None, help="random seed")


def run(args) -> int:
    written = write_examples(args.labels, Path(args.out), args.n, args.size, args.seed, args.options,
                        f"synthetic scans from {args.labels}")
    print(f"wrote {len(written)} files to {args.out}/")
    return 0
