"""Read and write volumes (NIfTI ``.nii``/``.nii.gz`` and FreeSurfer ``.mgz``), keeping affine and header.

Every reader error is an :class:`lab2im.errors.InputError` naming the file and the problem;
every write is atomic (temporary file in the destination folder, then ``os.replace``), so an
interrupted run never leaves a half-written output behind.
"""
from __future__ import annotations

import contextlib
import gzip
import os
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from lab2im.errors import InputError

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mgz")


@dataclass
class Volume:
    """A volume with its geometry.

    Attributes:
        data: array, shape ``(X, Y, Z)`` or ``(X, Y, Z, C)``.
        affine: ``(4, 4)`` voxel-to-world (mm) matrix.
        header: the nibabel header it was read with (``None`` for new volumes).
        path: where it was read from, for error messages (``None`` for new volumes).
    """

    data: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    header: object = None
    path: str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def voxel_size(self) -> np.ndarray:
        """Voxel size in mm along the three array axes (norms of the affine's columns)."""
        return voxel_size_of(self.affine)


def voxel_size_of(affine: np.ndarray) -> np.ndarray:
    """Voxel size (mm) along each array axis of a ``(4, 4)`` affine."""
    return np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))


def has_volume_suffix(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(VOLUME_SUFFIXES)


def strip_volume_suffix(path: str | os.PathLike) -> str:
    """``'a/sub-01.nii.gz'`` -> ``'a/sub-01'``."""
    s = os.fspath(path)
    for suffix in VOLUME_SUFFIXES:
        if s.lower().endswith(suffix):
            return s[: -len(suffix)]
    return s


def load_volume(path: str | os.PathLike, dtype=None) -> Volume:
    """Read a NIfTI or MGZ file into a :class:`Volume`.

    Args:
        path: file to read.
        dtype: numpy dtype to convert the data to; by default the on-disk data type for
            integer data, float32 for scaled or floating-point data.

    Raises:
        InputError: missing path, a folder, an empty/truncated/corrupt file, a file that is
            not an image, or a header whose size does not match the data.
    """
    p = Path(path)
    if not p.exists():
        raise InputError("no such file", p)
    if p.is_dir():
        raise InputError("is a directory, expected an image file", p)
    if p.stat().st_size == 0:
        raise InputError("file is empty", p)
    try:
        img = nib.load(str(p))
    except Exception as exc:  # nibabel raises many types for unreadable files
        raise InputError(f"not a readable NIfTI/MGZ image ({short_error(exc)})", p) from None
    try:
        raw = np.asanyarray(img.dataobj)
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError) as exc:
        raise InputError(f"image data is truncated or corrupt ({short_error(exc)})", p) from None
    if dtype is None:
        # native byte order: MGZ (and some NIfTI) data is big-endian on disk
        dtype = raw.dtype.newbyteorder("=") if np.issubdtype(raw.dtype, np.integer) else np.float32
    data = np.asarray(raw, dtype=dtype)
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError("header has an invalid (singular or non-finite) affine", p)
    return Volume(data=data, affine=affine, header=img.header, path=str(p))


def save_volume(volume: Volume | np.ndarray, path: str | os.PathLike, affine=None, header=None,
                dtype=None) -> Path:
    """Write a volume atomically to ``path`` (``.nii``, ``.nii.gz`` or ``.mgz``).

    Args:
        volume: a :class:`Volume`, or a bare array (then ``affine`` is used, identity by default).
        path: destination; its folder must exist and be writable.
        affine: ``(4, 4)`` affine, overrides the volume's.
        header: nibabel header to copy (data type and scaling are reset to the data's).
        dtype: data type on disk; defaults to the array's (bool is stored as uint8).

    Returns:
        The path written.

    Raises:
        InputError: unknown suffix, missing or unwritable folder.
    """
    if isinstance(volume, Volume):
        data = volume.data
        affine = volume.affine if affine is None else affine
        header = volume.header if header is None else header
    else:
        data = np.asarray(volume)
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if dtype is not None:
        data = data.astype(dtype)
    elif data.dtype == bool:
        data = data.astype(np.uint8)
    elif data.dtype == np.float64:
        data = data.astype(np.float32)
    elif data.dtype == np.int64:
        data = data.astype(np.int32)

    p = Path(path)
    name = p.name.lower()
    if name.endswith(".mgz"):
        cls = nib.MGHImage
    elif name.endswith((".nii", ".nii.gz")):
        cls = nib.Nifti1Image
    else:
        raise InputError(f"unknown output format; use one of {', '.join(VOLUME_SUFFIXES)}", p)
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise InputError("output folder does not exist", folder)
    if not os.access(folder, os.W_OK):
        raise InputError("output folder is not writable", folder)

    hdr = None
    if header is not None and cls is nib.Nifti1Image and isinstance(header, nib.Nifti1Header):
        hdr = header.copy()
        hdr.set_data_dtype(data.dtype)
        hdr.set_slope_inter(1, 0)
    img = cls(data, affine, hdr)
    if cls is nib.Nifti1Image:
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)

    suffix = ".nii.gz" if name.endswith(".nii.gz") else p.suffix
    with atomic_output(p, suffix) as tmp:
        nib.save(img, str(tmp))
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = ""):
    """Write a file atomically: yield a temporary path in ``path``'s folder, then rename it.

    On success the file gets the usual permissions (0o666 less the umask) and replaces
    ``path`` in one step; on any error the temporary file is removed and ``path`` is left as
    it was. ``suffix`` is appended to the temporary name (writers that pick the format from
    the name need it, e.g. ``".nii.gz"``).

    Raises:
        InputError: the folder does not exist.
    """
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise InputError("output folder does not exist", folder)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=f".tmp{suffix}", dir=folder)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def make_writable_folder(folder: str | os.PathLike, problem: str = "cannot write in this folder") -> Path:
    """Create ``folder`` if needed and check, by writing a temporary file, that it is writable.

    Raises:
        InputError: ``"<folder>: <problem> (<reason>)"`` when it cannot be created or written.
    """
    p = Path(folder)
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise InputError(f"{problem} ({exc.strerror or type(exc).__name__})", p) from None
    return p


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def list_volume_files(source, what: str = "volume") -> list[Path]:
    """Expand ``source`` into a sorted list of volume files.

    Args:
        source: a volume file, a folder (its ``.nii``/``.nii.gz``/``.mgz`` files), a ``.txt``
            file listing one path per line, or a sequence of paths.
        what: noun used in error messages (e.g. ``"label map"``).

    Raises:
        InputError: missing path, a folder with no volumes, a listed file that does not exist.
    """
    if isinstance(source, (list, tuple)):
        files = [Path(s) for s in source]
        for f in files:
            if not f.exists():
                raise InputError(f"{what} file does not exist", f)
        if not files:
            raise InputError(f"empty list of {what} files")
        return files
    p = Path(source)
    if not p.exists():
        raise InputError("no such file or directory", p)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and has_volume_suffix(f.name))
        if not files:
            raise InputError(f"folder contains no {what} files ({', '.join(VOLUME_SUFFIXES)})", p)
        return files
    if p.suffix.lower() == ".txt":
        lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
        if not lines:
            raise InputError(f"list file names no {what} files", p)
        return list_volume_files([p.parent / ln if not os.path.isabs(ln) else Path(ln) for ln in lines], what)
    return [p]


def short_error(exc: BaseException) -> str:
    """``"Type: first line of the message"`` (at most 160 characters), for one-line reports."""
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0][:160]}" if msg else type(exc).__name__
