"""Two-stage (cascade) segmentation: find a region, segment it finely, paste it back.

A first (coarse) model segments the whole scan; the voxels of its ``region_labels`` (default:
every structure) form the region. The scan is cropped on its **native grid** (no
interpolation) to the region's bounding box plus a margin in mm, a second (fine) model segments
the crop through the prediction pipeline (:func:`synthseg.inference.segmentation.segment_volume`:
reorientation, resampling to the fine model's voxel size, normalisation, tiling), its result
is mapped back onto the crop's grid, and the crop is pasted into an all-background volume on
the scan's native grid. So the output has the input's exact shape, affine and header; every
voxel outside the box is background 0.

    >>> from synthseg.inference.cascade import segment_cascade, cascade
    >>> from synthseg.inference import load_model
    >>> brain, hippo = load_model("runs/brain"), load_model("runs/hippocampus_05mm")
    >>> result = segment_cascade(volume, brain, hippo, region_labels=[17, 53], margin_mm=8)
    >>> result.segmentation.shape == volume.shape[:3], result.box
    >>> report = cascade("scans/", "segs/", brain, hippo, region_labels=[17, 53])  # files, batches

Resolution: the fine model segments at its own voxel size (its run's ``voxel_size``);
``fine_voxel_size`` overrides it (e.g. 0.5 mm for a model whose options say 1 mm but that
was trained on 0.5 mm crops). The box is at least :data:`synthseg.inference.reading.MIN_VOXELS` voxels
per axis at both resolutions (grown around its centre, within the scan).

An empty region (the first model found none of ``region_labels``) is an error naming the scan
(:class:`~lab2im.errors.InputError`; in a batch the scan is reported and skipped) unless
``on_empty="background"``: then the segmentation is all background and ``box`` is ``None``.

Command line: ``synthseg cascade --i SCANS --o OUT --coarse RUN --fine RUN [--region-labels
17 53 --margin 10 --fine-voxel-size 0.5 --region REGION_OUT]``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from lab2im.errors import InputError
from lab2im.io import (
    Volume,
    list_volume_files,
    save_volume,
)
from lab2im.volumes import bounding_box
from synthseg.inference.arguments import (
    add_input_output,
    add_run_arguments,
    add_tables_and_figures,
    report_line,
)
from synthseg.inference.batch import (
    SEG_SUFFIX,
    OutputPlan,
    PredictReport,
    ScanTables,
    output_names,
    run_batch,
)
from synthseg.inference.model import SegmentationModel, load_model
from synthseg.inference.reading import MIN_VOXELS, first_volume, read_scan
from synthseg.inference.segmentation import Segmentation, segment_volume
from synthseg.inference.tiling import DEFAULT_TILE, DEFAULT_TILE_OVERLAP

ON_EMPTY = ("error", "background")


@dataclass
class CascadeResult:
    """What :func:`segment_cascade` found for one scan.

    Attributes:
        segmentation: ``(X, Y, Z)`` int32 labels of the fine model on the scan's native grid
            (0 outside ``box``).
        region: ``(X, Y, Z)`` int32 labels of the coarse model on the native grid.
        box: the crop, one slice per native array axis (``None`` when the region was empty
            and ``on_empty="background"``).
        crop_affine: the crop's voxel-to-world matrix (``None`` with ``box``).
        fine: the fine model's :class:`~synthseg.inference.segmentation.Segmentation` of the crop (its
            network grid, posteriors; ``None`` with ``box``).
        warnings: messages about the input.
    """

    segmentation: np.ndarray
    region: np.ndarray
    box: tuple | None
    crop_affine: np.ndarray | None
    fine: Segmentation | None
    warnings: list = field(default_factory=list)


def region_box(mask: np.ndarray, voxel_size, margin_mm: float, min_voxels=MIN_VOXELS) -> tuple[slice, ...] | None:
    """Bounding box of ``mask`` grown by ``margin_mm`` (rounded up to whole voxels on each axis)
    and to at least ``min_voxels`` per axis (around its centre), clipped to the array.

    Args:
        mask: boolean ``(X, Y, Z)``.
        voxel_size: mm per voxel along each array axis.
        margin_mm: margin on every side (mm, >= 0).
        min_voxels: smallest box side, a number or one per axis.

    Returns:
        Slices, or ``None`` when ``mask`` is empty.
    """
    if margin_mm < 0:
        raise InputError(f"margin must be >= 0 mm, got {margin_mm}")
    vs = np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), (3,))
    margin = [math.ceil(margin_mm / v - 1e-9) for v in vs]
    box = bounding_box(mask, margin)
    if box is None:
        return None
    need = np.broadcast_to(np.asarray(min_voxels, dtype=np.int64), (3,))
    out = []
    for s, n, size in zip(box, need, mask.shape):
        lo, hi = s.start, s.stop
        n = min(int(n), size)
        if hi - lo < n:
            grow = n - (hi - lo)
            lo = max(0, lo - grow // 2)
            hi = lo + n
            if hi > size:
                lo, hi = size - n, size
        out.append(slice(int(lo), int(hi)))
    return tuple(out)


def crop_volume(volume: Volume, box) -> Volume:
    """``volume`` cut to ``box`` on its own grid: the voxels themselves, with the affine moved so
    every voxel keeps its world position."""
    start = np.eye(4)
    start[:3, 3] = [s.start for s in box]
    data = np.ascontiguousarray(volume.data[tuple(box)])
    return Volume(data=data, affine=np.asarray(volume.affine, np.float64) @ start, header=None, path=volume.path)


def segment_cascade(volume: Volume, coarse: SegmentationModel, fine: SegmentationModel, region_labels=None,
                    margin_mm: float = 10.0, fine_voxel_size=None, on_empty: str = "error", flip: bool = True,
                    cleanup: bool = True, tile_size=DEFAULT_TILE, tile_overlap: int = DEFAULT_TILE_OVERLAP,
                    refine: bool | None = None) -> CascadeResult:
    """Segment one scan held in memory with a coarse then a fine model (see the module docstring).

    Args:
        volume: a 3D (or 4D: first volume) :class:`~lab2im.io.Volume` with its affine.
        coarse, fine: the two models (:func:`synthseg.inference.model.load_model`).
        region_labels: the coarse model's labels that make the region (``None``: every label
            but background).
        margin_mm: margin around the region's bounding box (mm).
        fine_voxel_size: the fine stage's voxel size (mm, a number or 3); ``None``: the fine
            model's.
        on_empty: ``"error"`` or ``"background"`` (see the module docstring).
        flip, cleanup, tile_size, tile_overlap, refine: as in :func:`synthseg.inference.batch.predict`, for both stages.

    Raises:
        InputError: a bad scan (as in prediction), region labels the coarse model does not
            predict, an empty region with ``on_empty="error"``.
    """
    if on_empty not in ON_EMPTY:
        raise InputError(f"on_empty must be one of {list(ON_EMPTY)}, got {on_empty!r}")
    labels = coarse.labels.tolist()
    wanted = [v for v in labels if v != 0] if region_labels is None else [int(v) for v in np.ravel(region_labels)]
    unknown = sorted(set(wanted) - set(labels))
    if unknown or not wanted or 0 in wanted:
        raise InputError(f"region labels must be labels of the first model other than background "
                         f"({[v for v in labels if v != 0]}); got {sorted(set(wanted))}", coarse.path)
    if fine_voxel_size is not None:
        fine = dataclasses.replace(fine, voxel_size=fine_voxel_size)
    data, warnings = first_volume(np.asarray(volume.data, dtype=np.float32), volume.path)
    native = Volume(data=data, affine=np.asarray(volume.affine, np.float64), header=volume.header, path=volume.path)

    kw = dict(flip=flip, cleanup=cleanup, tile_size=tile_size, tile_overlap=tile_overlap, refine=refine)
    region = segment_volume(native, coarse, **kw).native_segmentation().astype(np.int32)
    native_vs = native.voxel_size
    min_voxels = [math.ceil(MIN_VOXELS * max(1.0, f / n)) for f, n in zip(fine.voxel_size, native_vs)]
    box = region_box(np.isin(region, wanted), native_vs, margin_mm, min_voxels)
    out = np.zeros(data.shape, np.int32)
    if box is None:
        if on_empty == "error":
            raise InputError(f"the first model found no region (labels {sorted(set(wanted))}) in this scan; "
                             "nothing to segment finely (on_empty='background' gives an empty segmentation)",
                             volume.path)
        return CascadeResult(out, region, None, None, None, warnings)
    crop = crop_volume(native, box)
    seg = segment_volume(crop, fine, **kw)
    out[box] = seg.native_segmentation()
    return CascadeResult(out, region, box, crop.affine, seg, warnings)


def cascade(inputs, outputs, coarse, fine, region_labels=None, margin_mm: float = 10.0, fine_voxel_size=None,
            region=None, on_empty: str = "error", flip: bool = True, cleanup: bool = True, tile_size=DEFAULT_TILE,
            tile_overlap: int = DEFAULT_TILE_OVERLAP, progress: bool = True,
            skip_existing: bool = False, vol=None, qc=None, png=None, refine: bool | None = None) -> PredictReport:
    """Segment scans from files with :func:`segment_cascade` and write the results on each
    scan's native grid (atomically).

    Args:
        inputs: a scan, a folder of scans or a ``.txt`` list.
        outputs: a file (one input) or a folder (``<name>_synthseg.nii.gz``).
        coarse, fine: :class:`~synthseg.inference.model.SegmentationModel` or paths for
            :func:`~synthseg.inference.model.load_model`.
        region: optional file or folder for the coarse model's segmentation (``<name>_region.nii.gz``).
        skip_existing: skip the scans whose outputs all exist (a re-run after a stop).
        vol, qc: CSVs of the fine model's soft volumes and quality scores (as in
            :func:`synthseg.inference.batch.predict`; 0 for a scan where no region was found).
        png: overlays of the fine segmentation on the scan: a ``.png`` file (one scan) or a folder.
        Others: as in :func:`segment_cascade`.

    Returns:
        A :class:`~synthseg.inference.batch.PredictReport` (failed scans are listed, the others done).
    """
    files = list_volume_files(inputs, "image")
    names = output_names(files)
    plan = OutputPlan(files, names, {"segmentation": (outputs, SEG_SUFFIX, ".nii.gz"),
                                     "region": (region, "_region", ".nii.gz"),
                                     "overlay": (png, SEG_SUFFIX, ".png")}, (vol, qc))
    coarse = coarse if isinstance(coarse, SegmentationModel) else load_model(coarse)
    fine = fine if isinstance(fine, SegmentationModel) else load_model(fine)
    plan.prepare_folders()
    tables = ScanTables(fine, vol, qc)
    report = PredictReport()
    todo = []
    for i, f in enumerate(files):
        if skip_existing and all(p.exists() for p in plan.scan_outputs(i)) and tables.has(names[i]):
            report.skipped.append(f)
        else:
            todo.append(i)

    def load(i):
        volume, warns = read_scan(files[i])
        return _Read(volume, warns)

    def segment(i, read):
        scan = read.volume
        result = segment_cascade(scan, coarse, fine, region_labels, margin_mm, fine_voxel_size, on_empty, flip,
                                 cleanup, tile_size, tile_overlap, refine)
        report.warnings.extend((files[i], w) for w in result.warnings)
        if plan.path("region", i) is not None:
            report.outputs.append(save_volume(result.region, plan.path("region", i), affine=scan.affine,
                                              header=scan.header, dtype=np.int32))
        if plan.path("overlay", i) is not None:
            report.outputs.append(_overlay(scan, result.segmentation, plan.path("overlay", i), names[i]))
        written, warnings = tables.add(names[i], result.fine)
        for path in written:
            if path not in report.outputs:
                report.outputs.append(path)
        report.outputs.append(save_volume(result.segmentation, plan.path("segmentation", i), affine=scan.affine,
                                          header=scan.header, dtype=np.int32))
        return warnings

    run_batch(files, todo, load, segment, report, progress)
    return report


@dataclass
class _Read:
    """A scan as read, and the warnings reading it gave."""

    volume: Volume
    warnings: list


def _overlay(volume: Volume, labels: np.ndarray, path, name: str):
    """The segmentation over its scan (:func:`synthseg.evaluation.plots.save_overlay`), both turned to RAS."""
    from lab2im.geometry import reorient_to_canonical
    from synthseg.evaluation.plots import save_overlay

    image, _ = reorient_to_canonical(Volume(volume.data, volume.affine))
    seg, _ = reorient_to_canonical(Volume(labels, volume.affine))
    return save_overlay(image.data, seg.data, image.voxel_size, path, title=f"{name}: cascade segmentation")


# ----------------------------------------------------------------------------- command line
HELP = ("two-stage segmentation: a first model finds a region, a second one segments it at fine resolution; "
        "written on the native grid")


def add_arguments(parser) -> None:
    add_input_output(parser)
    parser.add_argument("--coarse", "--model", dest="coarse", default=None,
                        help="first model (run folder or .keras): finds the region (default: the shipped model)")
    parser.add_argument("--fine", required=True, help="second model (run folder or .keras): segments the crop")
    parser.add_argument("--region-labels", type=int, nargs="+", default=None, metavar="L",
                        help="labels of the first model that make the region (default: every structure)")
    parser.add_argument("--margin", type=float, default=10.0, help="margin around the region, mm (default: 10)")
    parser.add_argument("--fine-voxel-size", type=float, nargs="+", default=None, metavar="MM",
                        help="voxel size of the second stage, 1 or 3 numbers (default: the fine model's)")
    parser.add_argument("--region", default=None, help="also write the first model's segmentation: file or folder")
    parser.add_argument("--on-empty", choices=ON_EMPTY, default="error",
                        help="no region found: report the scan as failed (error) or write background (default: error)")
    add_tables_and_figures(parser)
    add_run_arguments(parser)


def run(args) -> int:
    from synthseg.inference.batch import apply_threads

    apply_threads(args.threads)
    voxel = args.fine_voxel_size
    if voxel is not None and len(voxel) not in (1, 3):
        raise InputError(f"--fine-voxel-size takes 1 or 3 numbers, got {len(voxel)}")
    report = cascade(args.input, args.output, args.coarse, args.fine, args.region_labels, args.margin,
                     None if voxel is None else (voxel * 3 if len(voxel) == 1 else voxel), args.region,
                     args.on_empty, flip=not args.no_flip, tile_size=args.tile, skip_existing=args.skip_existing,
                     vol=args.vol, qc=args.qc, png=args.png, refine=args.refine)
    print(report_line(report))
    return 0 if report.ok else 1
