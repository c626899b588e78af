"""A corpus of bad (and borderline) input files, built on the fly by the tests: nothing binary is
committed. ``tests/test_reliability.py`` runs every command on every kind of input.

    >>> from tests.corpus import KINDS, build
    >>> path = build(tmp_path, "truncated")          # writes tmp_path/truncated.nii.gz
    >>> partner = label_partner(tmp_path, "truncated")  # a good label map for the pairing commands

Each kind is one file named ``<key>.nii.gz`` (``.nii`` for the header/data size mismatch; the
missing file is not created). Every file is small (the 1024^3 one is a header only), so the
whole corpus builds in well under a second.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

#: Shape of the regular volumes of the corpus (a blocks phantom: 4 labels + background).
SHAPE = (24, 28, 20)
#: Labels of the phantom and their intensities in the phantom image.
INTENSITY = {0: 0.0, 2: 25.0, 3: 50.0, 41: 75.0, 42: 100.0}
LABELS = sorted(INTENSITY)
#: A label outside the SynthSeg protocol (and outside every tiny test model).
UNKNOWN_LABEL = 999
#: Voxel size (mm) of the anisotropic kind, and its shape: a 12.8 x 12.8 x 64 mm field of view.
ANISOTROPIC_MM = (0.2, 0.2, 8.0)
ANISOTROPIC_SHAPE = (64, 64, 8)
HUGE_SHAPE = (1024, 1024, 1024)


@dataclass(frozen=True)
class Kind:
    """One kind of input: ``key`` (test id and file stem) and ``title`` (row of the README table)."""

    key: str
    title: str
    suffix: str = ".nii.gz"
    is_file: bool = True  # False: the kind is about the output location, the input is a good scan

    @property
    def filename(self) -> str:
        return f"{self.key}{self.suffix}"


KINDS = [
    Kind("missing", "missing path"),
    Kind("directory", "directory instead of a file"),
    Kind("empty", "empty file (0 bytes)"),
    Kind("truncated", "truncated `.nii.gz`"),
    Kind("not_an_image", "text file named `.nii.gz`"),
    Kind("size_mismatch", "header larger than the data (`.nii`)", suffix=".nii"),
    Kind("huge", "header of 1024³ voxels"),
    Kind("four_d", "4D (3 volumes)"),
    Kind("two_d", "2D"),
    Kind("one_voxel", "1 voxel"),
    Kind("nan_inf", "NaN and Inf voxels"),
    Kind("all_zero", "all-zero image"),
    Kind("float_labels", "float label map (fractional values)"),
    Kind("negative_labels", "negative labels"),
    Kind("unknown_labels", "labels unknown to the model (999)"),
    Kind("anisotropic", "0.2 x 0.2 x 8 mm voxels"),
    Kind("unwritable_output", "output folder not writable", is_file=False),
    Kind("output_is_input", "output path = input path", is_file=False),
]
BY_KEY = {k.key: k for k in KINDS}


def blocks_labels(shape=SHAPE) -> np.ndarray:
    """Nested blocks (labels 2, 3, 41, 42 on background 0) scaled to ``shape`` (int32)."""
    lab = np.zeros(shape, np.int32)
    x, y, z = shape
    lab[x // 12:x - x // 12, y // 9:y - y // 9, z // 10:z - z // 10] = 2
    lab[x // 2:x - x // 12, y // 9:y - y // 9, z // 10:z - z // 10] = 41
    lab[x // 5:x * 5 // 12, y * 2 // 7:y * 5 // 7, z * 3 // 10:z * 7 // 10] = 3
    lab[x * 5 // 8:x * 5 // 6, y * 2 // 7:y * 5 // 7, z * 3 // 10:z * 7 // 10] = 42
    return lab


def phantom(labels: np.ndarray) -> np.ndarray:
    """Intensity image of a label map (:data:`INTENSITY` per label), float32."""
    image = np.zeros(labels.shape, np.float32)
    for label, value in INTENSITY.items():
        image[labels == label] = value
    return image


def save(path: Path, data, affine=None) -> Path:
    """Write ``data`` as NIfTI at ``path`` (folder created), identity affine by default."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path


def good_scan(folder, name="good.nii.gz") -> Path:
    """A good scan (the phantom image) in ``folder``."""
    return save(Path(folder) / name, phantom(blocks_labels()))


def good_labels(folder, name="good.nii.gz") -> Path:
    """A good label map (the phantom's labels) in ``folder``."""
    return save(Path(folder) / name, blocks_labels())


def grid_of(key: str) -> tuple[tuple[int, ...], np.ndarray] | None:
    """``(shape, affine)`` of the kind's image when it has a 3D grid other than the default, else ``None``."""
    if key == "anisotropic":
        return ANISOTROPIC_SHAPE, np.diag([*ANISOTROPIC_MM, 1.0])
    if key == "one_voxel":
        return (1, 1, 1), np.eye(4)
    if key == "four_d":
        return SHAPE, np.eye(4)
    return None


def build(folder, key: str, as_labels: bool = False) -> Path:
    """Write the file of kind ``key`` into ``folder`` (created) and return its path.

    ``as_labels``: made from the phantom's label map (int32) rather than its image (float32), for
    the commands that read label maps (a 4D, 2D or anisotropic *label map*, ...). The label kinds
    (``float_labels``, ``negative_labels``, ``unknown_labels``) are label maps either way.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    kind = BY_KEY[key]
    path = folder / kind.filename
    labels = blocks_labels()
    image = labels if as_labels else phantom(labels)
    if key == "missing":
        return path
    if key == "directory":
        path.mkdir()
        return path
    if key == "empty":
        path.write_bytes(b"")
        return path
    if key == "truncated":
        blob = save(path, image).read_bytes()
        path.write_bytes(blob[: len(blob) // 2])
        return path
    if key == "not_an_image":
        path.write_bytes(gzip.compress(b"subject,age\nsub-01,42\n" * 40))
        return path
    if key == "size_mismatch":  # the header says 40 slices, the file holds 20
        save(path, image)
        header = nib.load(str(path)).header.copy()
        header.set_data_shape(SHAPE[:2] + (2 * SHAPE[2],))
        blob = path.read_bytes()
        path.write_bytes(header.binaryblock + blob[header.sizeof_hdr:])
        return path
    if key == "huge":  # a header only: the data is never read
        header = nib.Nifti1Header()
        header.set_data_shape(HUGE_SHAPE)
        header.set_data_dtype(np.float32)
        header.set_qform(np.eye(4), code=1)
        header.set_sform(np.eye(4), code=1)
        path.write_bytes(gzip.compress(header.binaryblock + b"\x00" * 4 + b"\x00" * 4096))
        return path
    if key == "four_d":
        second = np.random.default_rng(0).integers(0, 100, SHAPE).astype(image.dtype)
        return save(path, np.stack([image, second, image[::-1]], axis=-1))
    if key == "two_d":
        return save(path, image[:, :, SHAPE[2] // 2])
    if key == "one_voxel":
        return save(path, np.full((1, 1, 1), 2, np.int32))
    if key == "nan_inf":
        bad = image.astype(np.float32)
        bad[3, 4, 5], bad[0, 0, 0], bad[1, 1, 1] = np.nan, np.inf, -np.inf
        return save(path, bad)
    if key == "all_zero":
        return save(path, np.zeros(SHAPE, image.dtype))
    if key == "float_labels":  # e.g. a label map resampled with linear interpolation
        smooth = labels.astype(np.float32)
        smooth[labels == 3] = 2.5
        return save(path, smooth)
    if key == "negative_labels":
        neg = labels.copy()
        neg[0:2, 0:2, 0:2] = -1
        return save(path, neg)
    if key == "unknown_labels":
        extra = labels.copy()
        extra[0:3, 0:3, 0:3] = UNKNOWN_LABEL
        return save(path, extra)
    if key == "anisotropic":
        shape, affine = grid_of(key)
        lab = blocks_labels(shape)
        return save(path, lab if as_labels else phantom(lab), affine)
    if key in ("unwritable_output", "output_is_input"):
        return (good_labels if as_labels else good_scan)(folder, kind.filename)
    raise KeyError(key)


def label_partner(folder, key: str, name: str | None = None) -> Path:
    """A good label map on the grid of kind ``key``'s image (for pairing with it), in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or BY_KEY[key].filename)
    grid = grid_of(key)
    if grid is None:
        return save(path, blocks_labels())
    shape, affine = grid
    if shape == (1, 1, 1):
        return save(path, np.full(shape, 2, np.int32), affine)
    return save(path, blocks_labels(shape), affine)


def scan_partner(folder, key: str, name: str | None = None) -> Path:
    """A good scan on the grid of kind ``key``'s label map (for pairing with it), in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or BY_KEY[key].filename)
    return save(path, phantom(blocks_labels()))
