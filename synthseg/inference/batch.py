"""Batch prediction over files and folders: output naming, background reading, per-scan error reports, atomic outputs and the volume/QC tables."""
from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import io
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lab2im.errors import InputError
from lab2im.io import (
    INPUT_SUFFIXES,
    NRRD_SUFFIXES,
    VOLUME_SUFFIXES,
    atomic_write_text,
    check_folder_writable,
    has_input_suffix,
    has_volume_suffix,
    list_volume_files,
    make_writable_folder,
    remove_stale_temporaries,
    save_volume,
    short_error,
    strip_volume_suffix,
    voxel_size_of,
)
from synthseg.inference.model import SegmentationModel, load_model
from synthseg.inference.preprocessing import parse_crop, prepare_volume
from synthseg.inference.reading import read_scan
from synthseg.inference.segmentation import Segmentation, segment_prepared
from synthseg.inference.tiling import DEFAULT_TILE, DEFAULT_TILE_OVERLAP

SEG_SUFFIX, POST_SUFFIX, RESAMPLED_SUFFIX = "_synthseg", "_posteriors", "_resampled"


@dataclass
class PredictReport:
    """What :func:`predict` did.

    Attributes:
        done: inputs segmented.
        skipped: inputs skipped because their outputs existed (``skip_existing``).
        failed: ``(input, problem)`` of the inputs that could not be segmented.
        warnings: ``(input, message)``.
        seconds: per input segmented, wall time (reading excluded when it overlapped the previous scan).
        outputs: every file written.
    """

    done: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    outputs: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def check(self) -> "PredictReport":
        """Raise :class:`InputError` if any scan failed (naming the first); else return self."""
        if self.failed:
            path, problem = self.failed[0]
            more = f" (and {len(self.failed) - 1} more failure(s))" if len(self.failed) > 1 else ""
            raise InputError(problem + more, path)
        return self


def set_threads(threads: int | None) -> str | None:
    """Limit the backend's CPU threads (TensorFlow: intra- and inter-op; PyTorch: intra-op).

    Must run before the backend starts computing (the CLI does it first thing).

    Returns:
        A warning message when the setting could not be applied, else ``None``.
    """
    if threads is None:
        return None
    if int(threads) < 1:
        raise InputError(f"threads must be >= 1, got {threads}")
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        t = tf.config.threading
        if t.get_intra_op_parallelism_threads() == threads and t.get_inter_op_parallelism_threads() == threads:
            return None
        try:
            t.set_intra_op_parallelism_threads(int(threads))
            t.set_inter_op_parallelism_threads(int(threads))
        except RuntimeError:
            return "threads: TensorFlow has already started; the thread count was not changed"
        return None
    if backend == "torch":
        import torch

        torch.set_num_threads(int(threads))
        return None
    return f"threads: not supported on the {backend} backend (set XLA_FLAGS before starting)"


def apply_threads(threads: int | None) -> str | None:
    """:func:`set_threads`, its warning (if any) printed as one line on stderr; returns it."""
    warning = set_threads(threads)
    if warning:
        print(f"synthseg: warning: {warning}", file=sys.stderr)
    return warning


@dataclass
class PredictOptions:
    """How :func:`predict` segments each scan (where it writes is its own arguments).

    Attributes:
        crop: network input size around the centre (voxels, 1 or 3 numbers; rounded up to the
            required multiple); ``None``: the whole scan.
        flip: average with the left/right-flipped prediction.
        keep_native: outputs on the input's grid (else on the network grid).
        skip_existing: skip the scans whose outputs all exist.
        threads: CPU threads of the backend (see :func:`set_threads`).
        progress: show a progress bar (stderr).
        cleanup: keep the largest component of each structure and fill holes.
        refine: refine the posteriors with the scan's own intensities
            (:mod:`synthseg.inference.refinement`); ``None``: the model's default (on for
            networks trained on synthetic scans).
        tile_size, tile_overlap: network input tiles, voxels (see
            :meth:`~synthseg.inference.model.SegmentationModel.posteriors`).
    """

    crop: object = None
    flip: bool = True
    keep_native: bool = True
    skip_existing: bool = False
    threads: int | None = None
    progress: bool = True
    cleanup: bool = True
    refine: bool | None = None
    tile_size: int | None = DEFAULT_TILE
    tile_overlap: int = DEFAULT_TILE_OVERLAP


def predict(inputs, outputs, model=None, vol=None, post=None, resample=None, qc=None, png=None,
            options: PredictOptions | None = None, **settings) -> PredictReport:
    """Segment scans from files and write the outputs (``mri_synthseg``'s flags; see
    :mod:`synthseg.inference`).

    Args:
        inputs: a scan (NIfTI/MGZ/NRRD/DICOM), a folder of scans, or a ``.txt`` file listing one per line.
        outputs: a file (one input) or a folder (``<name>_synthseg.nii.gz`` per input).
        model: a :class:`SegmentationModel`, a path for :func:`load_model`, or ``None`` (the
            model shipped in ``models/``).
        vol: CSV of the soft volumes (mm³) of every structure and the total intracranial volume.
        post: posteriors, a file (one input) or a folder.
        resample: the image the network saw, a file (one input) or a folder.
        qc: CSV of the quality scores.
        png: overlays, a ``.png`` file (one input) or a folder.
        options: :class:`PredictOptions`; ``settings`` (its field names, e.g. ``flip=False``)
            change single fields.

    Returns:
        A :class:`PredictReport`; failures of single scans are in ``report.failed`` (the others
        are still done), call ``report.check()`` to raise on them.

    Raises:
        InputError: before any scan is touched: missing inputs, unusable output locations,
            a model that cannot be loaded, bad options.
    """
    try:
        o = dataclasses.replace(options or PredictOptions(), **settings)
    except TypeError as exc:
        raise InputError(f"unknown prediction setting ({exc})") from None
    report = PredictReport()
    warning = apply_threads(o.threads)
    if warning:
        report.warnings.append((None, warning))
    files = list_volume_files(inputs, "image")
    for warning in _ignored_entries(inputs):
        report.warnings.append((Path(inputs), warning))
        print(f"synthseg: warning: {inputs}: {warning}", file=sys.stderr)
    crop = parse_crop(o.crop)
    names = output_names(files)
    plan = OutputPlan(files, names, {"segmentation": (outputs, SEG_SUFFIX, ".nii.gz"),
                                     "posteriors": (post, POST_SUFFIX, ".nii.gz"),
                                     "resampled image": (resample, RESAMPLED_SUFFIX, ".nii.gz"),
                                     "overlay": (png, SEG_SUFFIX, ".png")}, (vol, qc))
    if not isinstance(model, SegmentationModel):
        model = load_model(model)
    plan.prepare_folders()
    tables = ScanTables(model, vol, qc)
    todo = []
    for i, f in enumerate(files):
        if o.skip_existing and all(p.exists() for p in plan.scan_outputs(i)) and tables.has(names[i]):
            report.skipped.append(f)
        else:
            todo.append(i)

    def load(i):
        vol_, warns = read_scan(files[i])
        return prepare_volume(vol_, model, crop, name=names[i], warnings=warns)

    def segment(i, prep):
        seg = segment_prepared(prep, model, o.flip, o.cleanup, o.tile_size, o.tile_overlap, o.refine)
        report.outputs.extend(_write_outputs(seg, o.keep_native, *(plan.path(what, i) for what in
                                                                   ("posteriors", "resampled image", "overlay",
                                                                    "segmentation"))))
        written, warnings = tables.add(names[i], seg)
        for path in written:
            _add(report.outputs, path)
        return warnings

    run_batch(files, todo, load, segment, report, o.progress)
    return report


class OutputPlan:
    """Where a batch writes each scan's outputs, checked before any scan is read: distinct from
    the inputs and from each other, in writable folders, CSV tables that are not folders.

    Args:
        files, names: the inputs and their output names (:func:`output_names`).
        per_scan: ``{what: (target, suffix, extension)}``: a file (one input) or folder
            (``<name><suffix><extension>`` per input) for each kind of output; ``target``
            ``None``: not asked for.
        tables: CSV files (``None`` entries are ignored).
    """

    def __init__(self, files, names, per_scan: dict, tables=()):
        self.paths = {what: output_paths(files, names, target, suffix, ext, what)
                      for what, (target, suffix, ext) in per_scan.items()}
        self.csv_paths = [Path(p) for p in tables if p is not None]
        for p in self.csv_paths:
            if p.is_dir():
                raise InputError("is a folder; expected a CSV file name", p)
            _check_folder(_parent(p))
        check_distinct(files, self.groups())

    def groups(self) -> list:
        return [*self.paths.values(), self.csv_paths]

    def path(self, what: str, i: int) -> Path | None:
        """Scan ``i``'s output of kind ``what`` (``None``: not asked for)."""
        paths = self.paths[what]
        return None if paths is None else paths[i]

    def prepare_folders(self) -> None:
        """Create the output folders; remove the temporary files a killed run left (``kill -9``
        skips the clean-up)."""
        for folder in sorted({_parent(p) for group in self.groups() for p in group or []}):
            make_writable_folder(folder, "output folder cannot be written")
        for group in self.groups():
            for p in group or []:
                remove_stale_temporaries(p)

    def scan_outputs(self, i: int) -> list[Path]:
        return [p[i] for p in self.paths.values() if p is not None]


def run_batch(files, todo, load, segment, report: PredictReport, progress: bool = True) -> None:
    """``segment(i, load(i))`` for each index in ``todo``, the next scan read in a background
    thread while one is segmented; a scan that fails is reported (file and problem, on stderr
    and in ``report.failed``) and the others go on. ``report.done`` and ``report.seconds``
    record the others; the warnings of the scan's preparation and those ``segment`` returns
    (a list of messages, or ``None``) go on stderr and into ``report.warnings``; Ctrl-C cancels
    the pending read and stops."""
    from tqdm import tqdm

    bar = tqdm(total=len(files), initial=len(report.skipped), desc="segmenting", unit="scan",
               disable=not progress, file=sys.stderr)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="synthseg-read") as pool:
        pending = pool.submit(load, todo[0]) if todo else None
        for k, i in enumerate(todo):
            nxt = pool.submit(load, todo[k + 1]) if k + 1 < len(todo) else None
            t0 = time.perf_counter()
            prep = None
            try:
                prep = pending.result()
                for w in prep.warnings:
                    report.warnings.append((files[i], w))
                    bar.write(f"synthseg: warning: {files[i]}: {w}", file=sys.stderr)
                for w in segment(i, prep) or ():
                    report.warnings.append((files[i], w))
                    bar.write(f"synthseg: warning: {files[i]}: {w}", file=sys.stderr)
                report.done.append(files[i])
                report.seconds[files[i]] = time.perf_counter() - t0
            except (KeyboardInterrupt, SystemExit):
                if nxt is not None:
                    nxt.cancel()
                raise
            except Exception as exc:  # one bad scan is reported, the others go on
                if isinstance(exc, InputError):  # about another file (an output): name it too
                    problem = exc.problem if exc.path in (None, str(files[i])) else str(exc)
                else:
                    problem = f"unexpected error ({short_error(exc)})"
                report.failed.append((files[i], problem))
                bar.write(f"synthseg: error: {files[i]}: {problem}", file=sys.stderr)
            finally:
                prep = None  # free this scan's arrays before the next one's are made
            pending = nxt
            bar.update(1)
    bar.close()


def _ignored_entries(inputs) -> list[str]:
    """What an input folder holds besides scans, as warnings (nothing is skipped silently)."""
    if isinstance(inputs, (list, tuple)) or not Path(inputs).is_dir():
        return []
    entries = [e for e in sorted(Path(inputs).iterdir()) if not e.name.startswith(".")]
    files = [e.name for e in entries if e.is_file() and not has_input_suffix(e.name)]
    folders = [e.name + "/" for e in entries if e.is_dir()]
    warnings = []
    for kind, found, why in (("file(s)", files, f"not a scan ({', '.join(INPUT_SUFFIXES)})"),
                             ("folder(s)", folders, "folders are not searched: list their scans in a .txt file")):
        if found:
            shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
            warnings.append(f"skipped {len(found)} {kind}: {shown} ({why})")
    return warnings


def output_names(files: list[Path]) -> list[str]:
    """Names of the scans' outputs (and CSV rows): the file names without suffix, or, when two
    would be equal (``sub-01/mri/orig.mgz``, ``sub-02/mri/orig.mgz``), every scan's path below
    the folder the scans have in common, joined with ``_`` (``sub-01_mri_orig``).

    Raises:
        InputError: the same file listed twice.
    """
    names = [strip_volume_suffix(f.name) for f in files]
    if len(set(names)) == len(names):
        return names
    resolved = [f.resolve() for f in files]
    seen = {}
    for f, r in zip(files, resolved):
        if r in seen:
            raise InputError(f"the same scan is listed twice ({seen[r]} and {f})", f)
        seen[r] = f
    common = Path(os.path.commonpath([r.parent for r in resolved]))
    return ["_".join(strip_volume_suffix(r.relative_to(common)).split(os.sep)) for r in resolved]


#: names that are files of other kinds: refused where a segmentation (NIfTI) or a PNG is expected
_OTHER_FILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".csv", ".tsv", ".txt", ".json", ".npy", ".npz", ".keras",
                        ".pdf", ".svg", ".tif", ".tiff", ".h5") + NRRD_SUFFIXES


def _add(paths: list, path: Path) -> None:
    if path not in paths:
        paths.append(path)


def _write_outputs(seg: Segmentation, keep_native: bool, post_path, res_path, png_path, seg_path) -> list[Path]:
    """Write one scan's files (the segmentation last, so its presence means the rest is there)."""
    prep = seg.prepared
    written = []
    if keep_native:
        affine, header = prep.native_affine, prep.native_header
    else:
        affine, header = prep.affine, None
    if post_path is not None:
        data = seg.native_posteriors() if keep_native else seg.posteriors
        written.append(save_volume(data, post_path, affine=affine, header=header, dtype=np.float32))
        del data
    if res_path is not None:
        written.append(save_volume(prep.image, res_path, affine=prep.affine, dtype=np.float32))
    canonical = seg.canonical_segmentation() if (keep_native or png_path is not None) else None
    if png_path is not None:
        from synthseg.evaluation.plots import save_overlay

        if prep.canonical_image is not None:  # the scan at its own resolution
            image, labels_png, voxel = prep.canonical_image, canonical, voxel_size_of(prep.reorientation.canonical_affine)
        else:
            image, labels_png, voxel = prep.image, seg.segmentation, voxel_size_of(prep.affine)
        written.append(save_overlay(image, labels_png, voxel, png_path, title=f"{prep.name}: segmentation"))
    labels = prep.reorientation.undo(canonical) if keep_native else seg.segmentation
    written.append(save_volume(labels, seg_path, affine=affine, header=header, dtype=np.int32))
    return written


def output_paths(files, names, target, suffix: str, ext: str, what: str) -> list[Path] | None:
    """One output path per input: ``target`` itself (a file, one input) or ``target/<name><suffix><ext>``."""
    if target is None:
        return None
    t = Path(target)
    wanted = "a .png file" if ext == ".png" else f"a NIfTI/MGZ file ({', '.join(VOLUME_SUFFIXES)})"
    if not t.is_dir() and (has_volume_suffix(t) if ext == ".png" else t.name.lower().endswith(_OTHER_FILE_SUFFIXES)):
        raise InputError(f"{what}: expected {wanted} or a folder, not a file of another kind", t)
    as_file = (has_volume_suffix(t) if ext != ".png" else t.suffix.lower() == ".png") and not t.is_dir()
    if as_file:
        if len(files) > 1:
            raise InputError(f"{what}: {len(files)} input scans but one output file; give a folder", t)
        _check_folder(_parent(t))
        return [t]
    if t.exists() and not t.is_dir():
        raise InputError(f"{what}: expected {wanted} or a folder", t)
    _check_folder(t)
    paths = [t / f"{n}{suffix}{ext}" for n in names]
    seen = {}
    for f, p in zip(files, paths):
        if p in seen:
            raise InputError(f"{what}: inputs {seen[p]} and {f} would both write {p.name}; rename one", t)
        seen[p] = f
    return paths


def _parent(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def _check_folder(folder: Path) -> None:
    """Check that ``folder`` exists and is writable, or can be created (creates nothing)."""
    check_folder_writable(folder)


def check_distinct(files, groups) -> None:
    inputs = {f.resolve() for f in files}
    seen = set()
    for group in groups:
        for p in group or []:
            r = p.resolve()
            if r in inputs:
                raise InputError("an output would overwrite an input", p)
            if r in seen:
                raise InputError("two outputs would be written to the same file", p)
            seen.add(r)


class ScanTables:
    """The volumes and quality-score CSVs of a batch (either may be ``None``): one row per scan,
    columns from the model's labels and QC groups, rewritten atomically after each scan; a scan
    scoring below the model's :attr:`~SegmentationModel.qc_threshold` gets a warning."""

    def __init__(self, model: SegmentationModel, vol=None, qc=None):
        from synthseg.data.labels import QC_GROUPS

        self.qc_threshold = model.qc_threshold
        names = model.label_names()
        self.structures = [(int(v), names[c]) for c, v in enumerate(model.labels) if v != 0]
        self.groups = [name for name, ids in QC_GROUPS.items() if set(ids) & set(model.labels.tolist())]
        self.vol = None if vol is None else _CsvTable(
            Path(vol), ["subject", "total intracranial"] + [n for _, n in self.structures], "volumes")
        self.qc = None if qc is None else _CsvTable(Path(qc), ["subject", "qc"] + self.groups, "quality scores")

    def has(self, subject: str) -> bool:
        """Every table asked for holds a row of ``subject``."""
        return all(t is None or t.has(subject) for t in (self.vol, self.qc))

    def add(self, subject: str, seg: Segmentation | None) -> tuple[list[Path], list[str]]:
        """Write ``subject``'s rows (``seg`` ``None``: nothing found, volumes and scores 0).

        Returns:
            ``(paths written, warnings)``: with the QC table, a warning when the overall score is
            below the model's threshold (likely a failed segmentation).
        """
        written, warnings = [], []
        if self.vol is not None:
            volumes = seg.volumes() if seg is not None else {}
            values = [volumes.get(v, 0.0) for v, _ in self.structures]
            self.vol.set(subject, [f"{sum(values):.3f}"] + [f"{x:.3f}" for x in values])
            written.append(self.vol.write())
        if self.qc is not None:
            score, per = seg.qc_scores() if seg is not None else (0.0, {})
            self.qc.set(subject, [f"{score:.4f}"] + [f"{per.get(g) or 0.0:.4f}" for g in self.groups])
            written.append(self.qc.write())
            if score < self.qc_threshold:
                warnings.append(f"quality score {score:.2f} is below the model's threshold {self.qc_threshold:.2f}: "
                                "likely a failed segmentation, check it")
        return written, warnings


class _CsvTable:
    """A CSV with one row per subject, rewritten atomically after each change. The rows of an
    existing file are kept (a re-run on some subjects updates their rows, the others stay);
    a file that is not such a table, or has other columns (another model's), is refused."""

    def __init__(self, path: Path, header: list[str], what: str):
        self.path, self.header, self.rows = path, header, {}
        if not path.exists():
            return
        try:
            with open(path, newline="") as f:
                rows = list(csv.reader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise InputError(f"{what}: cannot read the existing table ({short_error(exc)}); "
                             "give another file name or remove it", path) from None
        if not rows:
            return
        if rows[0] != header:
            raise InputError(f"{what}: the existing table has other columns ({len(rows[0])}, expected "
                             f"{len(header)}: written by another model?); its rows would be lost, so it is "
                             "left alone: give another file name or remove it", path)
        self.rows = {r[0]: r[1:] for r in rows[1:] if len(r) == len(header)}

    def has(self, subject: str) -> bool:
        return subject in self.rows

    def set(self, subject: str, values: list[str]) -> None:
        self.rows[subject] = values

    def write(self) -> Path:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.header)
        for subject, values in self.rows.items():
            w.writerow([subject] + list(values))
        return atomic_write_text(self.path, buf.getvalue())
