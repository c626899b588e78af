"""Read a DICOM series (a folder of single-frame slices) into a :class:`lab2im.io.Volume`.

Geometry follows the NIfTI/nibabel conventions used everywhere else in lab2im:

* array axes are ``(i, j, k)`` = (DICOM column, DICOM row, slice), so ``data[i, j, k]`` is
  pixel ``(row j, column i)`` of the ``k``-th slice, slices sorted by their position along the
  slice normal (``ImageOrientationPatient`` row x column cosines);
* the affine maps voxel indices to world coordinates in mm in **RAS** (DICOM's patient frame
  is LPS, so its first two world axes are negated). Saving the volume with
  :func:`lab2im.io.save_volume` gives a NIfTI with the correct geometry.

Voxel values are the stored pixel values mapped through ``RescaleSlope`` and
``RescaleIntercept`` (slice by slice), i.e. Hounsfield units for CT, as float32.

Only files with the standard DICOM preamble (``"DICM"`` at byte 128) are read; other files in
the folder, and sub-folders, are ignored. Multi-frame (enhanced) DICOM is not supported.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lab2im.errors import InputError
from lab2im.io import Volume, load_volume

# LPS (DICOM patient frame) -> RAS (NIfTI world frame)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_ORIENTATION_TOL = 1e-4  # direction cosines
_SPACING_REL_TOL = 0.01  # relative tolerance on pixel and slice spacings
_SPACING_ABS_TOL = 1e-3  # mm, absolute floor of the tolerance (DICOM positions are decimal strings)


# ----------------------------------------------------------------------------- detection
def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _candidate_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file())


def is_dicom_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder holding at least one DICOM file (``"DICM"`` preamble).

    Only the first 132 bytes of each file are read, and only until a DICOM file is found.
    """
    p = Path(path)
    if not p.is_dir():
        return False
    try:
        return any(_has_dicom_preamble(f) for f in _candidate_files(p))
    except OSError:
        return False


# ----------------------------------------------------------------------------- windowing
def apply_window(data: np.ndarray, center: float, width: float) -> np.ndarray:
    """CT intensity windowing: clip values to ``[center - width / 2, center + width / 2]``.

    Args:
        data: array of intensities (e.g. Hounsfield units), any shape.
        center: window centre (level), same units as ``data``.
        width: window width, > 0, same units as ``data``.

    Returns:
        A new array of the same shape: float arrays keep their dtype, others become float32.

    Raises:
        InputError: ``width`` is not positive or a value is not finite.
    """
    center, width = float(center), float(width)
    if not (np.isfinite(center) and np.isfinite(width)) or width <= 0:
        raise InputError(f"invalid CT window (center {center}, width {width}); "
                         "the width must be positive and both values finite")
    data = np.asarray(data)
    dtype = data.dtype if np.issubdtype(data.dtype, np.floating) else np.float32
    return np.clip(data.astype(dtype), center - width / 2, center + width / 2).astype(dtype, copy=False)


# ----------------------------------------------------------------------------- reading
@dataclass
class _Slice:
    path: Path
    orientation: np.ndarray  # (6,) row then column direction cosines (LPS)
    position: np.ndarray  # (3,) ImagePositionPatient, centre of the first pixel (mm, LPS)
    spacing: np.ndarray  # (2,) PixelSpacing: between rows, between columns (mm)
    rows: int
    columns: int
    slope: float
    intercept: float
    thickness: float | None
    instance: int | None


@dataclass
class _Series:
    uid: str
    description: str
    number: str
    files: list  # of (path, pydicom Dataset read without pixels)

    def label(self) -> str:
        desc = f'"{self.description}"' if self.description else "no description"
        num = f"series number {self.number}, " if self.number else ""
        return f"{self.uid} ({num}{desc}, {len(self.files)} slice{'s' if len(self.files) != 1 else ''})"


def _scan_folder(folder: Path) -> tuple[dict[str, _Series], int]:
    """Read the headers of every DICOM image file in ``folder``, grouped by SeriesInstanceUID.

    Returns:
        ``(series by UID, number of files ignored)``.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    series: dict[str, _Series] = {}
    ignored = 0
    for f in _candidate_files(folder):
        if not _has_dicom_preamble(f):
            ignored += 1
            continue
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"unreadable DICOM file ({type(exc).__name__}: {exc})", f) from None
        if "Rows" not in ds or "Columns" not in ds:  # DICOMDIR, structured report, ...: no image
            ignored += 1
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid:
            raise InputError("DICOM image has no SeriesInstanceUID", f)
        if uid not in series:
            series[uid] = _Series(uid, str(ds.get("SeriesDescription", "") or "").strip(),
                                  str(ds.get("SeriesNumber", "") or "").strip(), [])
        series[uid].files.append((f, ds))
    return series, ignored


def _float_list(ds, keyword: str, count: int, path: Path) -> np.ndarray:
    value = ds.get(keyword)
    if value is None or value == "":
        raise InputError(f"DICOM slice has no {keyword}; cannot place it in space", path)
    try:
        arr = np.array([float(v) for v in (value if hasattr(value, "__len__") and not isinstance(value, str)
                                           else [value])], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"DICOM {keyword} is not numeric ({value!r})", path) from None
    if arr.shape != (count,) or not np.all(np.isfinite(arr)):
        raise InputError(f"DICOM {keyword} should hold {count} finite numbers, got {value!r}", path)
    return arr


def _optional_float(ds, keyword: str, default, path: Path):
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InputError(f"DICOM {keyword} is not numeric ({value!r})", path) from None
    if not np.isfinite(out):
        raise InputError(f"DICOM {keyword} is not finite ({value!r})", path)
    return out


def _parse_slice(path: Path, ds) -> _Slice:
    frames = ds.get("NumberOfFrames")
    if frames not in (None, "") and int(frames) > 1:
        raise InputError(f"multi-frame (enhanced) DICOM with {int(frames)} frames is not supported; "
                         "convert it to single-frame slices or NIfTI (e.g. with dcm2niix)", path)
    samples = ds.get("SamplesPerPixel", 1)
    if samples not in (None, "") and int(samples) != 1:
        raise InputError(f"colour DICOM ({int(samples)} samples per pixel) is not supported; "
                         "expected a greyscale image", path)
    orientation = _float_list(ds, "ImageOrientationPatient", 6, path)
    row_dir, col_dir = orientation[:3], orientation[3:]
    if (abs(np.linalg.norm(row_dir) - 1) > 1e-2 or abs(np.linalg.norm(col_dir) - 1) > 1e-2
            or abs(row_dir @ col_dir) > 1e-2):
        raise InputError("DICOM ImageOrientationPatient is not two orthogonal unit vectors "
                         f"({orientation.tolist()})", path)
    # re-orthonormalise: the cosines are stored as decimal strings with limited precision
    row_dir = row_dir / np.linalg.norm(row_dir)
    col_dir = col_dir - (col_dir @ row_dir) * row_dir
    col_dir = col_dir / np.linalg.norm(col_dir)
    spacing = _float_list(ds, "PixelSpacing", 2, path)
    if np.any(spacing <= 0):
        raise InputError(f"DICOM PixelSpacing must be positive, got {spacing.tolist()}", path)
    instance = ds.get("InstanceNumber")
    return _Slice(
        path=path,
        orientation=np.concatenate([row_dir, col_dir]),
        position=_float_list(ds, "ImagePositionPatient", 3, path),
        spacing=spacing,
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        slope=_optional_float(ds, "RescaleSlope", 1.0, path),
        intercept=_optional_float(ds, "RescaleIntercept", 0.0, path),
        thickness=_optional_float(ds, "SliceThickness", None, path),
        instance=None if instance in (None, "") else int(instance),
    )


def _check_consistent(slices: list[_Slice], where: str, folder: Path) -> None:
    first = slices[0]
    for s in slices[1:]:
        if np.max(np.abs(s.orientation - first.orientation)) > _ORIENTATION_TOL:
            raise InputError(f"{where}: slices have different orientations "
                             f"(ImageOrientationPatient {np.round(first.orientation, 5).tolist()} in "
                             f"{first.path.name}, {np.round(s.orientation, 5).tolist()} in {s.path.name})",
                             folder)
        if np.any(np.abs(s.spacing - first.spacing) > _SPACING_REL_TOL * first.spacing + _SPACING_ABS_TOL):
            raise InputError(f"{where}: slices have different pixel spacings ({first.spacing.tolist()} mm "
                             f"in {first.path.name}, {s.spacing.tolist()} mm in {s.path.name})", folder)
        if (s.rows, s.columns) != (first.rows, first.columns):
            raise InputError(f"{where}: slices have different sizes ({first.rows} rows x {first.columns} "
                             f"columns in {first.path.name}, {s.rows} x {s.columns} in {s.path.name})",
                             folder)


def _sort_and_check_spacing(slices: list[_Slice], normal: np.ndarray, where: str,
                            folder: Path) -> tuple[list[_Slice], np.ndarray]:
    """Sort slices along ``normal``; check that they are evenly spaced.

    Returns:
        The sorted slices and the ``(3,)`` step between consecutive slice origins (mm, LPS).
    """
    distances = np.array([s.position @ normal for s in slices])
    order = np.argsort(distances, kind="stable")
    slices = [slices[i] for i in order]
    distances = distances[order]
    if len(slices) == 1:
        thickness = slices[0].thickness
        return slices, normal * (thickness if thickness and thickness > 0 else 1.0)

    gaps = np.diff(distances)
    tol_abs = _SPACING_ABS_TOL
    same = np.flatnonzero(gaps <= tol_abs)
    if same.size:
        a, b = slices[same[0]], slices[same[0] + 1]
        raise InputError(f"{where}: slices at the same position ({same.size} pair"
                         f"{'s' if same.size > 1 else ''}, e.g. {a.path.name} and {b.path.name} at "
                         f"{distances[same[0]]:.3f} mm along the slice normal); the series may hold "
                         "several volumes (echoes, time points) or duplicate files", folder)
    spacing = float(np.median(gaps))
    tol = _SPACING_REL_TOL * spacing + tol_abs
    bad = np.flatnonzero(np.abs(gaps - spacing) > tol)
    if bad.size:
        g = int(bad[0])
        gap = gaps[g]
        missing = int(round(gap / spacing)) - 1
        if missing >= 1 and abs(gap - (missing + 1) * spacing) <= (missing + 1) * tol:
            what = f"{missing} missing slice{'s' if missing > 1 else ''}"
        else:
            what = "irregular slice spacing"
        raise InputError(
            f"{where}: {what} between slice {g + 1} ({slices[g].path.name}, at {distances[g]:.3f} mm) "
            f"and slice {g + 2} ({slices[g + 1].path.name}, at {distances[g + 1]:.3f} mm) of "
            f"{len(slices)} sorted along the slice normal: gap {gap:.3f} mm, expected {spacing:.3f} mm"
            + (f" ({bad.size} irregular gaps in all)" if bad.size > 1 else ""), folder)

    # the slice origins must lie on one line, evenly spaced (a gantry tilt gives a sheared but
    # still regular grid, which the affine represents exactly)
    positions = np.stack([s.position for s in slices])
    step = (positions[-1] - positions[0]) / (len(slices) - 1)
    expected = positions[0] + np.arange(len(slices))[:, None] * step
    off = np.linalg.norm(positions - expected, axis=1)
    worst = int(np.argmax(off))
    if off[worst] > tol:
        raise InputError(f"{where}: slice origins (ImagePositionPatient) are not on a regular grid: "
                         f"{slices[worst].path.name} is {off[worst]:.3f} mm away from its expected "
                         "position", folder)
    return slices, step


def _read_pixels(path: Path) -> np.ndarray:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
        pixels = ds.pixel_array
    except Exception as exc:  # missing pixel data, compressed without a decoder, truncated file...
        msg = str(exc).strip().splitlines()
        raise InputError(f"cannot read DICOM pixel data ({type(exc).__name__}: "
                         f"{msg[0][:200] if msg else ''})", path) from None
    return pixels


def load_dicom_series(folder: str | os.PathLike, series_uid: str | None = None,
                      window: tuple[float, float] | None = None) -> Volume:
    """Read a DICOM series from a folder of single-frame slices into a :class:`Volume`.

    Args:
        folder: folder holding the slice files (not searched recursively; non-DICOM files
            and DICOM files without an image, e.g. a DICOMDIR, are ignored).
        series_uid: SeriesInstanceUID of the series to read; required when the folder holds
            several series.
        window: optional CT window ``(center, width)`` (same units as the rescaled values,
            e.g. HU): values are clipped to ``[center - width / 2, center + width / 2]``.

    Returns:
        A :class:`Volume` with float32 data of shape ``(columns, rows, slices)`` (values after
        ``RescaleSlope``/``RescaleIntercept``, e.g. Hounsfield units), a ``(4, 4)`` RAS
        voxel-to-world affine in mm, ``header=None`` and ``path=folder``.

    Raises:
        InputError: missing folder, no DICOM images, several series and no ``series_uid`` (the
            message lists them), an unknown ``series_uid``, slices with different orientations,
            pixel spacings or sizes, missing slices or irregular slice spacing, slices
            sharing a position, missing geometry tags, unreadable pixel data.
    """
    p = Path(folder)
    if not p.exists():
        raise InputError("no such folder", p)
    if not p.is_dir():
        raise InputError("not a folder; expected a folder of DICOM files", p)
    series, ignored = _scan_folder(p)
    if not series:
        raise InputError(f"no DICOM files in {p}"
                         + (f" ({ignored} other file{'s' if ignored != 1 else ''} ignored)" if ignored else
                            " (the folder is empty)"), p)
    if series_uid is None:
        if len(series) > 1:
            listing = "; ".join(s.label() for s in series.values())
            raise InputError(f"folder holds {len(series)} DICOM series; choose one with series_uid: "
                             f"{listing}", p)
        chosen = next(iter(series.values()))
    else:
        series_uid = str(series_uid).strip()
        if series_uid not in series:
            listing = "; ".join(s.label() for s in series.values())
            raise InputError(f"no DICOM series with SeriesInstanceUID {series_uid}; the folder holds: "
                             f"{listing}", p)
        chosen = series[series_uid]
    where = f"DICOM series {chosen.label()}"

    slices = [_parse_slice(f, ds) for f, ds in chosen.files]
    _check_consistent(slices, where, p)
    row_dir, col_dir = slices[0].orientation[:3], slices[0].orientation[3:]
    normal = np.cross(row_dir, col_dir)
    slices, step = _sort_and_check_spacing(slices, normal, where, p)

    rows, cols = slices[0].rows, slices[0].columns
    data = np.empty((cols, rows, len(slices)), dtype=np.float32)
    for k, s in enumerate(slices):
        pixels = _read_pixels(s.path)
        if pixels.shape != (rows, cols):
            raise InputError(f"pixel data has shape {pixels.shape}; the header says {rows} rows x "
                             f"{cols} columns", s.path)
        values = pixels.astype(np.float64) * s.slope + s.intercept
        data[:, :, k] = values.T  # (row j, column i) -> (i, j)

    # DICOM: pixel (row r, column c) of a slice lies at
    #   ImagePositionPatient + c * column_spacing * row_dir + r * row_spacing * col_dir   (LPS)
    row_spacing, col_spacing = slices[0].spacing
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing  # array axis i = column index
    lps[:3, 1] = col_dir * row_spacing  # array axis j = row index
    lps[:3, 2] = step  # array axis k = slice index
    lps[:3, 3] = slices[0].position
    affine = _LPS_TO_RAS @ lps
    if window is not None:
        try:
            center, width = window
        except (TypeError, ValueError):
            raise InputError(f"CT window must be (center, width), got {window!r}") from None
        data = apply_window(data, center, width)
    return Volume(data=data, affine=affine, header=None, path=str(p))


def load_any(path: str | os.PathLike, series_uid: str | None = None,
             window: tuple[float, float] | None = None) -> Volume:
    """Read a volume from a NIfTI/MGZ file or a folder of DICOM slices.

    Args:
        path: an image file (read with :func:`lab2im.io.load_volume`) or a folder (read with
            :func:`load_dicom_series`).
        series_uid: for a DICOM folder holding several series, the one to read.
        window: optional intensity window ``(center, width)`` (see :func:`apply_window`),
            applied to either kind of input.

    Raises:
        InputError: as :func:`lab2im.io.load_volume` or :func:`load_dicom_series`;
            ``series_uid`` given for a file that is not a DICOM folder.
    """
    p = Path(path)
    if p.is_dir():
        return load_dicom_series(p, series_uid=series_uid, window=window)
    if series_uid is not None:
        raise InputError("series_uid only applies to a folder of DICOM files", p)
    volume = load_volume(p)
    if window is not None:
        try:
            center, width = window
        except (TypeError, ValueError):
            raise InputError(f"intensity window must be (center, width), got {window!r}") from None
        volume.data = apply_window(volume.data, center, width)
    return volume
