"""Command-line flags shared by the commands that segment scans (``predict``, ``cascade``), so
that they take the same flags with the same meaning and defaults."""
from __future__ import annotations

from synthseg.inference.tiling import DEFAULT_TILE


def add_input_output(parser) -> None:
    """``--i/--input`` and ``--o/--output`` (FreeSurfer's ``mri_synthseg`` names)."""
    parser.add_argument("--i", "--input", dest="input", required=True,
                        help="scan (NIfTI, MGZ, NRRD, DICOM folder), folder of scans, or .txt list of scans")
    parser.add_argument("--o", "--output", dest="output", required=True,
                        help="segmentation file (one scan) or folder (<name>_synthseg.nii.gz)")


def add_tables_and_figures(parser) -> None:
    """``--vol``, ``--qc`` and ``--png``."""
    parser.add_argument("--vol", default=None, help="CSV of soft volumes (mm^3) per structure and total intracranial")
    parser.add_argument("--qc", default=None, help="CSV of quality scores in [0, 1]; a scan scoring below the model's threshold "
                        "(options.json qc_threshold, on its model card) is reported as likely failed")
    parser.add_argument("--png", default=None, help="overlay PNG: file (one scan) or folder")


def add_run_arguments(parser) -> None:
    """``--threads``, ``--tile``, ``--no-flip``, ``--skip-existing`` and ``--no-refine``."""
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the backend (default: all)")
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE,
                        help=f"largest network input per axis, voxels (default: {DEFAULT_TILE}; 0: whole scan, "
                             "needs about 1.3 kB of memory per voxel)")
    parser.add_argument("--no-flip", action="store_true", help="no left/right flip averaging (about 2x faster)")
    parser.add_argument("--skip-existing", action="store_true", help="skip scans whose outputs all exist")
    parser.add_argument("--no-refine", dest="refine", action="store_const", const=False, default=None,
                        help="use the network's posteriors as they are (default for networks trained on synthetic "
                             "scans: refined by a Gaussian mixture of the scan's own intensities)")


def report_line(report) -> str:
    """The last line a segmenting command prints."""
    return (f"segmented {len(report.done)} scan(s), skipped {len(report.skipped)} (outputs exist), "
            f"failed {len(report.failed)}")
