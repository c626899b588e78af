"""The ``synthseg predict`` command (:func:`synthseg.inference.batch.predict`)."""
from __future__ import annotations

from synthseg.inference.arguments import (
    add_input_output,
    add_run_arguments,
    add_tables_and_figures,
    report_line,
)

HELP = "segment scans of any contrast and resolution (like mri_synthseg)"
DESCRIPTION = ("Segment scans with a trained U-Net. Flags follow FreeSurfer's mri_synthseg "
               "(--i/--input, --o/--output, ...).")


def add_arguments(parser) -> None:
    add_input_output(parser)
    add_tables_and_figures(parser)
    parser.add_argument("--post", default=None, help="posteriors: file (one scan) or folder")
    parser.add_argument("--resample", default=None,
                        help="the image the network saw (model voxel size): file or folder")
    parser.add_argument("--crop", type=int, nargs="+", default=None, metavar="N",
                        help="network input size around the centre, 1 or 3 numbers (voxels)")
    parser.add_argument("--model", default=None,
                        help="training run folder or .keras file (default: models/); a 2D/2.5D run trained on "
                             "slices (synthseg.training.slices) is detected from its options.json")
    add_run_arguments(parser)
    parser.add_argument("--network-grid", "--keep-1mm", dest="network_grid", action="store_true",
                        help="outputs on the network grid (canonical RAS, the model's voxel size, e.g. 2 mm), not "
                             "the input's (--keep-1mm is an old name of this flag)")
    parser.add_argument("--no-cleanup", action="store_true",
                        help="keep every connected component and hole (no post-processing)")


def run(args) -> int:
    from synthseg.inference.batch import predict

    report = predict(args.input, args.output, model=args.model, vol=args.vol, post=args.post,
                     resample=args.resample, qc=args.qc, png=args.png, crop=args.crop, flip=not args.no_flip,
                     keep_native=not args.network_grid, skip_existing=args.skip_existing, threads=args.threads,
                     cleanup=not args.no_cleanup, tile_size=args.tile, refine=args.refine)
    # each failure was reported on stderr (one line, file and problem) as it happened
    print(report_line(report))
    return 1 if report.failed else 0
