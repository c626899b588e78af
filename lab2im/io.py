"""Read and write volumes (NIfTI ``.nii``/``.nii.gz`` and FreeSurfer ``.mgz``), keeping affine and header;
read NRRD (``.nrrd``/``.nhdr``, 3D Slicer's and pyradiomics' format) too.

Every reader error is an :class:`lab2im.errors.InputError` naming the file and the problem;
every write is atomic (temporary file in the destination folder, then ``os.replace``), so an
interrupted run never leaves a half-written output behind, and a write that fails (disk full,
read-only file system) is an :class:`lab2im.errors.OutputError` naming the file, with the
previous file of that name left as it was.

Input rules (:func:`load_volume`):

* A file whose header describes more than :data:`MAX_VOXELS` voxels (2**28, about 268 million:
  1 GiB as float32; e.g. 1024^3 is refused, 640^3 is read) is refused *before its data is read*,
  so a corrupt or hostile header cannot make a process allocate gigabytes and be killed. Raise
  the limit with ``max_voxels=`` or the environment variable ``LAB2IM_MAX_VOXELS``. With
  ``first_volume=True`` (used by prediction for 4D scans) only the first 3D volume is read and
  counted.
* An uncompressed ``.nii`` file shorter than its header says (header/data size mismatch) is
  refused naming both sizes; a compressed one is reported as truncated.
"""
from __future__ import annotations

import contextlib
import glob
import gzip
import os
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from lab2im.errors import InputError, OutputError

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mgz")  # written and read
NRRD_SUFFIXES = (".nrrd", ".nhdr")  # read only (outputs are NIfTI)
INPUT_SUFFIXES = VOLUME_SUFFIXES + NRRD_SUFFIXES
#: Largest number of voxels :func:`load_volume` reads (the product of the header's dimensions;
#: of the first three with ``first_volume=True``): 2**28, 1 GiB as float32. Environment
#: variable ``LAB2IM_MAX_VOXELS`` overrides it.
MAX_VOXELS = 2 ** 28
#: Temporary files of :func:`atomic_output` are ``<folder>/.<name>.<random>.tmp<suffix>``.
TEMP_PREFIX = "."


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


def format_mm(values) -> str:
    """Voxel sizes (or any per-axis lengths) for messages: ``(1, 1, 2.5)`` -> ``"1x1x2.5"``."""
    return "x".join(f"{float(v):.3g}" for v in values)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask on Linux, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def has_volume_suffix(path: str | os.PathLike) -> bool:
    """A name this module writes (and reads): NIfTI or MGZ."""
    return str(path).lower().endswith(VOLUME_SUFFIXES)


def has_input_suffix(path: str | os.PathLike) -> bool:
    """A name :func:`load_volume` reads: NIfTI, MGZ or NRRD."""
    return str(path).lower().endswith(INPUT_SUFFIXES)


def strip_volume_suffix(path: str | os.PathLike) -> str:
    """``'a/sub-01.nii.gz'`` -> ``'a/sub-01'`` (any of :data:`INPUT_SUFFIXES`)."""
    s = os.fspath(path)
    for suffix in INPUT_SUFFIXES:
        if s.lower().endswith(suffix):
            return s[: -len(suffix)]
    return s


def max_voxels_limit() -> int:
    """The voxel limit of :func:`load_volume`: ``LAB2IM_MAX_VOXELS`` if set, else :data:`MAX_VOXELS`."""
    value = os.environ.get("LAB2IM_MAX_VOXELS")
    if not value:
        return MAX_VOXELS
    try:
        limit = int(float(value))
    except ValueError:
        raise InputError(f"LAB2IM_MAX_VOXELS must be a number of voxels, got {value!r}") from None
    if limit < 1:
        raise InputError(f"LAB2IM_MAX_VOXELS must be >= 1, got {value!r}")
    return limit


def load_volume(path: str | os.PathLike, dtype=None, max_voxels: int | None = None,
                first_volume: bool = False) -> Volume:
    """Read a NIfTI, MGZ or NRRD file into a :class:`Volume` (NRRD: :func:`_load_nrrd`).

    Args:
        path: file to read.
        dtype: numpy dtype to convert the data to; by default the on-disk data type for
            integer data, float32 for scaled or floating-point data.
        max_voxels: refuse files with more voxels than this (default :func:`max_voxels_limit`);
            checked from the header, before any data is read.
        first_volume: read only the first 3D volume of a 4D (or 5D) image; the data is then 3D
            (the full shape stays in ``volume.header.get_data_shape()``).

    Raises:
        InputError: missing path, a folder, an empty/truncated/corrupt file, a file that is
            not an image, a header whose size does not match the data, or more voxels than
            ``max_voxels``.
    """
    p = Path(path)
    if not p.exists():
        raise InputError("no such file", p)
    if p.is_dir():
        raise InputError("is a directory, expected an image file", p)
    size = p.stat().st_size
    if size == 0:
        raise InputError("file is empty", p)
    limit = max_voxels_limit() if max_voxels is None else int(max_voxels)
    if p.name.lower().endswith(NRRD_SUFFIXES):
        return _load_nrrd(p, dtype, limit, first_volume)
    try:
        img = nib.load(str(p))
    except Exception as exc:  # nibabel raises many types for unreadable files
        raise InputError(f"not a readable NIfTI/MGZ image ({short_error(exc)})", p) from None
    shape = tuple(int(n) for n in img.shape)
    read_shape = shape[:3] if first_volume and len(shape) > 3 else shape
    _check_voxel_count(read_shape, shape, limit, p)
    _check_data_size(img, p, size)
    try:
        if read_shape != shape:
            raw = np.asanyarray(img.dataobj[(slice(None),) * 3 + (0,) * (len(shape) - 3)])
        else:
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


def _check_voxel_count(read_shape, shape, limit: int, path: Path) -> None:
    n_voxels = int(np.prod(read_shape, dtype=np.float64))
    if n_voxels > limit:
        raise InputError(f"image is too large: its header describes {n_voxels:,} voxels (shape {shape}), more "
                         f"than the limit of {limit:,} (set LAB2IM_MAX_VOXELS to raise it); the data was not read",
                         path)


#: NRRD ``space`` values -> sign of each world axis to turn it into RAS
_NRRD_SPACES = {
    "right-anterior-superior": (1, 1, 1), "ras": (1, 1, 1),
    "left-anterior-superior": (-1, 1, 1), "las": (-1, 1, 1),
    "left-posterior-superior": (-1, -1, 1), "lps": (-1, -1, 1),
}


def _load_nrrd(p: Path, dtype, limit: int, first_volume: bool) -> Volume:
    """Read a NRRD file with pynrrd: the spatial axes (those with a ``space directions``
    vector) become the first three, in file order, and the affine is their directions and
    ``space origin`` turned into RAS (from LPS, LAS or RAS ``space``). Other axes (a vector or
    list axis, e.g. diffusion gradients) go last. A file without ``space directions`` gets
    ``spacings`` (1 mm if absent) along the axes and its origin at 0. The volume's ``header``
    is ``None`` (outputs are NIfTI, made from the affine)."""
    import nrrd

    try:
        header = nrrd.read_header(str(p))
    except Exception as exc:  # pynrrd raises NRRDError, ValueError, ... for bad headers
        raise InputError(f"not a readable NRRD image ({short_error(exc)})", p) from None
    sizes = tuple(int(n) for n in header.get("sizes", ()))
    directions = header.get("space directions")
    if directions is not None:
        spatial = [i for i, d in enumerate(directions) if d is not None and np.all(np.isfinite(d))]
    else:
        spatial = list(range(min(3, len(sizes))))
    if len(spatial) != 3:
        raise InputError(f"NRRD image has {len(spatial)} spatial axes (sizes {sizes}); expected 3", p)
    others = [i for i in range(len(sizes)) if i not in spatial]
    shape = tuple(sizes[i] for i in spatial + others)
    read_shape = shape[:3] if first_volume and others else shape
    _check_voxel_count(read_shape, shape, limit, p)
    try:
        raw, _ = nrrd.read(str(p), index_order="F")
    except Exception as exc:
        raise InputError(f"image data is truncated or corrupt ({short_error(exc)})", p) from None
    raw = np.moveaxis(np.asarray(raw), spatial + others, list(range(len(sizes))))
    if first_volume and others:
        raw = raw[(slice(None),) * 3 + (0,) * len(others)]
    affine = np.eye(4)
    if directions is not None:
        affine[:3, :3] = np.asarray([directions[i] for i in spatial], np.float64).T
        origin = header.get("space origin")
        affine[:3, 3] = np.zeros(3) if origin is None else np.asarray(origin, np.float64)
        space = str(header.get("space", "right-anterior-superior")).lower()
        if space not in _NRRD_SPACES:
            raise InputError(f"NRRD space {space!r} is not supported (use one of: RAS, LAS, LPS)", p)
        affine[:3] *= np.asarray(_NRRD_SPACES[space], np.float64)[:, None]
    else:
        spacings = header.get("spacings")
        steps = [1.0 if spacings is None or not np.isfinite(spacings[i]) else float(spacings[i]) for i in spatial]
        affine[:3, :3] = np.diag(steps)
    if dtype is None:
        dtype = raw.dtype.newbyteorder("=") if np.issubdtype(raw.dtype, np.integer) else np.float32
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError("header has an invalid (singular or non-finite) affine", p)
    return Volume(data=np.asarray(raw, dtype=dtype), affine=affine, header=None, path=str(p))


def _check_data_size(img, path: Path, file_size: int) -> None:
    """Refuse an uncompressed file shorter than its header says (before reading it)."""
    proxy = getattr(img, "dataobj", None)
    offset = getattr(proxy, "offset", None)
    if offset is None or path.name.lower().endswith((".gz", ".mgz")):
        return
    try:
        itemsize = np.dtype(proxy.dtype).itemsize
    except (AttributeError, TypeError):
        return
    needed = int(offset) + int(np.prod(img.shape, dtype=np.float64)) * itemsize
    if file_size < needed:
        raise InputError(f"image data is truncated or corrupt (header/data size mismatch: the header describes "
                         f"shape {tuple(img.shape)} of {np.dtype(proxy.dtype).name}, {needed:,} bytes with the "
                         f"header, but the file has {file_size:,} bytes)", path)


def check_image(data: np.ndarray, path=None, min_voxels: int = 2, what: str = "image") -> None:
    """Raise :class:`InputError` for a scan that cannot be used.

    The rules: 3 spatial axes (a 4th, channels or volumes, is allowed) of at least
    ``min_voxels`` voxels each (an axis of 1 voxel makes it 2D, or a single voxel), every voxel
    finite (NaN or infinite voxels are *not* silently replaced: the processing that produced
    them is usually wrong), and not every voxel equal (an empty image).
    """
    problem = dimension_problem(data.shape, what)
    if problem:
        raise InputError(problem, path)
    if min(data.shape[:3]) < min_voxels:
        raise InputError(f"{what} is too small (shape {data.shape}); every axis needs at least "
                         f"{min_voxels} voxels", path)
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - np.count_nonzero(finite))
        raise InputError(f"{what} has {bad} NaN or infinite voxel(s); replace them (e.g. by 0) first", path)
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise InputError(f"{what} is empty (every voxel is {lo:g})", path)


def dimension_problem(shape, what: str = "image") -> str | None:
    """``"<what> is 2D (shape ...); expected a 3D volume"`` (or 1D, or a single voxel) when fewer
    than 3 of the first three axes have more than one voxel; ``None`` for a 3D shape."""
    shape = tuple(int(n) for n in shape)
    n = sum(s > 1 for s in shape[:3])
    if len(shape) >= 3 and n == 3:
        return None
    if len(shape) < 3:
        n = sum(s > 1 for s in shape)
    kind = "a single voxel" if n == 0 else f"{n}D"
    return f"{what} is {kind} (shape {shape}); expected a 3D volume"


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
        OutputError: the file could not be written (disk full, read-only file system, no
            permission): an ``OSError`` of the writer or of the rename, with the file named.
    """
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise InputError("output folder does not exist", folder)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{p.name}.", suffix=f".tmp{suffix}", dir=folder)
    except OSError as exc:
        raise _output_error(exc, p) from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, p)
    except OutputError:  # already names its file (a nested write)
        raise
    except OSError as exc:
        raise _output_error(exc, p) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _output_error(exc: OSError, path: Path) -> OutputError:
    reason = exc.strerror or short_error(exc)
    return OutputError(f"cannot write ({reason}); an older file of that name is left as it was", path, exc.errno)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that an :func:`atomic_output` of ``path`` left behind when its
    process was killed (``kill -9`` skips the clean-up); returns those removed. Call it only
    when no other process is writing ``path``."""
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    removed = []
    if folder.is_dir():
        for tmp in folder.glob(f"{glob.escape(TEMP_PREFIX + p.name)}.*.tmp*"):
            if tmp.is_file():
                with contextlib.suppress(OSError):
                    tmp.unlink()
                    removed.append(tmp)
    return removed


def make_writable_folder(folder: str | os.PathLike, problem: str = "cannot write in this folder") -> Path:
    """Create ``folder`` if needed and check, by writing a temporary file, that it is writable.

    Raises:
        InputError: ``"<folder>: <problem> (<reason>)"`` when it cannot be created or written.
    """
    p = Path(folder)
    try:
        p.mkdir(parents=True, exist_ok=True)
        if not os.access(p, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
        with tempfile.NamedTemporaryFile(dir=p, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise InputError(f"{problem} ({exc.strerror or type(exc).__name__})", p) from None
    return p


def check_folder_writable(folder: str | os.PathLike) -> None:
    """Check that ``folder`` exists and is writable, or can be created (creates nothing).

    Raises:
        InputError: ``"output folder is not writable"``, or ``"output folder cannot be created:
            <ancestor> is a file"`` / ``"... is not writable"``.
    """
    folder = Path(folder)
    p = folder
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    if p.exists() and not p.is_dir():
        raise InputError(f"output folder cannot be created: {p} is a file", folder)
    if not os.access(p, os.W_OK | os.X_OK):
        raise InputError("output folder is not writable" if p == folder else
                         f"output folder cannot be created: {p} is not writable", folder)


def check_not_an_input(output: str | os.PathLike, sources, what: str = "output folder") -> None:
    """Refuse an output location that is one of the inputs (a file or folder given as input).

    Args:
        output: the output file or folder.
        sources: input sources: paths, or lists/tuples of paths (other objects are ignored).
        what: noun for the message.

    Raises:
        InputError: ``"<output>: <what> is an input (...); choose another"``.
    """
    out = Path(output).resolve()
    for source in sources:
        for item in source if isinstance(source, (list, tuple)) else [source]:
            if isinstance(item, (str, os.PathLike)) and Path(item).resolve() == out:
                raise InputError(f"{what} is an input ({item}); it would be overwritten: choose another", output)


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
        files = sorted(f for f in p.iterdir() if f.is_file() and has_input_suffix(f.name))
        if not files:
            raise InputError(f"folder contains no {what} files ({', '.join(INPUT_SUFFIXES)})", p)
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
