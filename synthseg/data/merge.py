"""Merge labelled datasets into one training set through a label-protocol map.

Datasets labelled with different protocols (FreeSurfer's aseg in one, three tissue classes in
another, ...) are brought to one set of *common labels*, so that one general model can be
trained on all of them and compared with one model per dataset on each dataset's own test
scans. Each dataset keeps its own train / validation / test split, written to disk so that
training and evaluation use the same one.

    >>> from synthseg.data.merge import merge_datasets
    >>> merged = merge_datasets({"oasis": "oasis.csv", "abide": "abide_bids/"}, "protocol.yaml", "merged/")
    >>> images, labels = merged.files("train")                  # every dataset's training pairs
    >>> test_images, test_labels = merged.files("test", "oasis")  # one dataset's test pairs
    >>> merged = load_merged("merged/")                          # later: the same split

**Dataset sources** (:func:`read_dataset`), one per dataset, each pair an image and its label
map on the same voxel grid (checked from the headers; a pair whose grids differ is an error
naming both files):

* a **CSV manifest** (``.csv``): a header with ``image`` and ``label`` columns and optionally
  ``subject``; paths are relative to the CSV's folder (or absolute). Without ``subject``, the
  image's file name (without ``.nii``/``.nii.gz``/``.mgz``) is the subject.
* a folder with **``images/`` and ``labels/``**: pairs matched by name; a label map's name
  (without its suffix) is the image's, or the image's followed by ``_seg``, ``_dseg``,
  ``_label`` or ``_labels``. The subject is the image's name.
* a **BIDS-like** folder: images ``sub-<id>/[ses-<id>/]anat/<entities>_<modality>.nii[.gz]``
  (``modality`` ``T1w`` by default), label maps in
  ``derivatives/<pipeline>/sub-<id>/[ses-<id>/]anat/<entities>[_<more entities>]_dseg.nii[.gz]``
  (one per image; e.g. ``sub-01_ses-1_T1w.nii.gz`` and
  ``derivatives/manual/sub-01/ses-1/anat/sub-01_ses-1_desc-aseg_dseg.nii.gz``). The subject
  is ``<entities>`` (``sub-01_ses-1``). Images without a label map are skipped, with a warning.

Subjects must be unique within a dataset and usable as file names (letters, digits, ``.``,
``_``, ``-``).

**Protocol map** (:func:`read_protocol`, a JSON or YAML file, or the same as a dict)::

    labels:            # optional: the common labels and their names; when given, every
      0: background    # label a map produces must be listed
      1: white matter
      2: grey matter
      3: csf
    datasets:          # for each dataset: its label -> a common label (0: background)
      oasis: {2: 1, 41: 1, 3: 2, 42: 2, 4: 3, 43: 3, 24: 3, 17: 0}
      abide: {1: 3, 2: 2, 3: 1}

Label 0 is background (it maps to 0 unless the map says otherwise). A label map holding a
value its dataset's map does not list is **refused**: the error names the file, the dataset
and the values, so no structure is silently turned into background. Map a structure to 0 on
purpose to drop it.

**Split**: per dataset, its subjects (sorted) are permuted by a generator seeded with ``seed``
and the dataset's name (CRC-32), then cut into test, validation and training parts of
``fractions`` (rounded; a non-zero fraction gets at least one subject when the dataset has 3
or more). A dataset's split depends only on its own subjects, ``seed`` and ``fractions``:
adding another dataset does not change it.

**Output folder** (``out_dir``)::

    labels/<dataset>/<subject>.nii.gz   label maps in common labels (the source's grid and header)
    split.json                          the contract: seed, fractions, common labels, maps, pairs
    split.csv                           dataset, subject, split, image, label, source_label
    lists/<split>_{images,labels}.txt   every dataset's pairs of a split (synthseg predict --i ...)
    lists/<dataset>_<split>_{images,labels}.txt

Images are not copied: ``split.json`` holds their absolute paths (label maps: relative to the
folder). Command line: ``synthseg merge --dataset NAME=SOURCE ... --protocol FILE --out DIR``.
"""
from __future__ import annotations

import csv
import io
import json
import re
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lab2im.errors import InputError
from lab2im.io import (
    VOLUME_SUFFIXES,
    atomic_write_text,
    has_volume_suffix,
    load_volume,
    make_writable_folder,
    save_volume,
    short_error,
    strip_volume_suffix,
)
from lab2im.volumes import convert_labels, unique_labels

SPLITS = ("train", "val", "test")
LABEL_SUFFIXES = ("_seg", "_dseg", "_label", "_labels")
FORMAT = "synthseg-merge-1"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_GRID_TOL = 1e-3  # voxels / mm


# ----------------------------------------------------------------------------- protocol
@dataclass
class Protocol:
    """A label-protocol map.

    Attributes:
        maps: ``{dataset: {dataset label: common label}}`` (0 always maps to 0 unless listed).
        names: ``{common label: name}`` when the file lists the common labels, else ``None``.
        path: the file it was read from (``None`` for a dict).
    """

    maps: dict
    names: dict | None = None
    path: Path | None = None

    @property
    def labels(self) -> list[int]:
        """The common labels (background 0 included), sorted."""
        if self.names is not None:
            return sorted(set(self.names) | {0})
        return sorted({v for m in self.maps.values() for v in m.values()} | {0})

    def table(self, dataset: str) -> dict[int, int]:
        """The map of ``dataset``, with 0 -> 0 added when the map does not list 0."""
        if dataset not in self.maps:
            raise InputError(f"the protocol map has no entry for dataset {dataset!r} (it maps "
                             f"{sorted(self.maps)})", self.path)
        return {0: 0, **self.maps[dataset]}

    def convert(self, dataset: str, data: np.ndarray, path=None) -> np.ndarray:
        """``data`` (a label map of ``dataset``) in common labels (int32).

        Raises:
            InputError: a value the dataset's map does not list (names ``path``, the dataset
                and the values).
        """
        table = self.table(dataset)
        present = unique_labels(data)
        unmapped = sorted(int(v) for v in present if int(v) not in table)
        if unmapped:
            where = f" ({self.path})" if self.path else ""
            raise InputError(f"dataset {dataset!r}: label value(s) {unmapped} are not in the protocol map{where}; "
                             "map each to a common label, or to 0 for background", path)
        src = sorted(table)
        return convert_labels(data, src, [table[v] for v in src])

    def to_dict(self) -> dict:
        d = {"datasets": {k: {str(a): b for a, b in sorted(m.items())} for k, m in self.maps.items()}}
        if self.names is not None:
            d["labels"] = {str(k): v for k, v in sorted(self.names.items())}
        return d


def read_protocol(source) -> Protocol:
    """Read a protocol map: a ``.json``, ``.yaml`` or ``.yml`` file, a :class:`Protocol`, or a dict
    ``{"datasets": {...}, "labels": {...}}`` (see the module docstring).

    Raises:
        InputError: unreadable file, unknown keys, labels that are not integers >= 0, a map to a
            label missing from ``labels``.
    """
    if isinstance(source, Protocol):
        return source
    path = None
    if isinstance(source, dict):
        d = source
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError("protocol map: no such file", path)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"protocol map is unreadable ({short_error(exc)})", path) from None
        if path.suffix.lower() == ".json":
            try:
                d = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError(f"protocol map is not valid JSON ({exc})", path) from None
        elif path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            try:
                d = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise InputError(f"protocol map is not valid YAML ({short_error(exc)})", path) from None
        else:
            raise InputError("protocol map must be a .json, .yaml or .yml file", path)
    if not isinstance(d, dict):
        raise InputError("protocol map must hold a mapping with a 'datasets' entry", path)
    unknown = sorted(set(d) - {"datasets", "labels"})
    if unknown:
        raise InputError(f"protocol map: unknown key(s) {unknown}; expected 'datasets' and optionally 'labels'",
                         path)
    if not isinstance(d.get("datasets"), dict) or not d["datasets"]:
        raise InputError("protocol map needs a non-empty 'datasets' mapping (dataset -> {label: common label})",
                         path)
    names = None
    if d.get("labels") is not None:
        if not isinstance(d["labels"], (dict, list)):
            raise InputError("protocol map: 'labels' must map common labels to names (or list them)", path)
        items = d["labels"].items() if isinstance(d["labels"], dict) else ((v, f"label_{v}") for v in d["labels"])
        names = {_label(k, "common label", path): str(v) for k, v in items}
    maps = {}
    for name, m in d["datasets"].items():
        name = str(name)
        if not _SAFE_NAME.match(name):
            raise InputError(f"protocol map: dataset name {name!r} must be letters, digits, '.', '_' or '-'", path)
        if not isinstance(m, dict):
            raise InputError(f"protocol map: dataset {name!r} needs a mapping {{its label: common label}}", path)
        table = {_label(k, f"label of dataset {name!r}", path): _label(v, f"common label of dataset {name!r}", path)
                 for k, v in m.items()}
        if names is not None:
            extra = sorted(set(table.values()) - set(names) - {0})
            if extra:
                raise InputError(f"protocol map: dataset {name!r} maps to common label(s) {extra} that 'labels' "
                                 f"does not list ({sorted(names)})", path)
        maps[name] = table
    return Protocol(maps=maps, names=names, path=path)


def _label(value, what: str, path) -> int:
    try:
        v = int(str(value).strip())
    except ValueError:
        raise InputError(f"protocol map: {what} {value!r} is not an integer", path) from None
    if v < 0:
        raise InputError(f"protocol map: {what} {v} is negative", path)
    return v


# ----------------------------------------------------------------------------- dataset sources
@dataclass
class SourcePair:
    """One image and its label map, as found in a dataset source."""

    subject: str
    image: Path
    label: Path


def read_dataset(source, name: str = "dataset", modality: str = "T1w", warn=None) -> list[SourcePair]:
    """The image / label-map pairs of one dataset (a CSV manifest, an ``images/`` + ``labels/``
    folder or a BIDS-like folder; see the module docstring), sorted by subject.

    Args:
        source: the CSV file or the folder.
        name: the dataset's name, for messages.
        modality: the BIDS suffix of the images (``T1w``, ``T2w``, ``FLAIR``, ...).
        warn: called with a message for each skipped image (default: print to stderr).

    Raises:
        InputError: a missing source or listed file, an unknown layout, an image without a
            label map (manifest, folders) or with several (BIDS), a duplicate or unusable subject.
    """
    p = Path(source)
    warn = warn or (lambda msg: print(f"synthseg: warning: {msg}", file=sys.stderr))
    if not p.exists():
        raise InputError(f"dataset {name!r}: no such file or folder", p)
    if p.is_file():
        if p.suffix.lower() != ".csv":
            raise InputError(f"dataset {name!r}: a file source must be a .csv manifest", p)
        pairs = _read_manifest(p, name)
    elif (p / "images").is_dir() and (p / "labels").is_dir():
        pairs = _read_folders(p, name)
    elif any(c.is_dir() and c.name.startswith("sub-") for c in p.iterdir()):
        pairs = _read_bids(p, name, modality, warn)
    else:
        raise InputError(f"dataset {name!r}: unknown layout; expected a .csv manifest, a folder with images/ and "
                         "labels/, or a BIDS-like folder (sub-*/anat/*_<modality>.nii.gz with label maps in "
                         "derivatives/*/sub-*/anat/*_dseg.nii.gz)", p)
    if not pairs:
        raise InputError(f"dataset {name!r}: no image / label-map pairs found", p)
    seen = {}
    for pair in pairs:
        if not _SAFE_NAME.match(pair.subject):
            raise InputError(f"dataset {name!r}: subject {pair.subject!r} must be letters, digits, '.', '_' or '-' "
                             "(it names the converted label map)", pair.image)
        if pair.subject in seen:
            raise InputError(f"dataset {name!r}: subject {pair.subject!r} appears twice (also {seen[pair.subject]}); "
                             "give each pair its own subject", pair.image)
        seen[pair.subject] = pair.image
    return sorted(pairs, key=lambda q: q.subject)


def _read_manifest(path: Path, name: str) -> list[SourcePair]:
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            header = [(h or "").strip() for h in reader.fieldnames or []]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"dataset {name!r}: manifest is unreadable ({short_error(exc)})", path) from None
    missing = [c for c in ("image", "label") if c not in header]
    if missing:
        raise InputError(f"dataset {name!r}: manifest lacks column(s) {missing} (it has {header}); expected "
                         "image,label[,subject]", path)
    pairs = []
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if isinstance(v, str) or v is None}
        files = []
        for column in ("image", "label"):
            if not row.get(column):
                raise InputError(f"dataset {name!r}: line {line} of the manifest has no {column}", path)
            f = Path(row[column])
            f = f if f.is_absolute() else path.parent / f
            if not f.is_file():
                raise InputError(f"dataset {name!r}: {column} listed on line {line} of {path} does not exist", f)
            files.append(f)
        subject = row.get("subject") or strip_volume_suffix(files[0].name)
        pairs.append(SourcePair(subject, *files))
    return pairs


def _volume_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and has_volume_suffix(f.name))


def _read_folders(root: Path, name: str) -> list[SourcePair]:
    images, labels = _volume_files(root / "images"), _volume_files(root / "labels")
    by_stem = {}
    for f in labels:
        by_stem.setdefault(strip_volume_suffix(f.name), []).append(f)
    pairs, used = [], set()
    for img in images:
        stem = strip_volume_suffix(img.name)
        found = [f for s in [stem] + [stem + x for x in LABEL_SUFFIXES] for f in by_stem.get(s, [])]
        if not found:
            raise InputError(f"dataset {name!r}: no label map for this image in {root / 'labels'} (expected "
                             f"{stem}{{,{','.join(LABEL_SUFFIXES)}}}{{{','.join(VOLUME_SUFFIXES)}}})", img)
        if len(found) > 1:
            raise InputError(f"dataset {name!r}: several label maps match this image: "
                             f"{', '.join(f.name for f in found)}", img)
        used.add(found[0])
        pairs.append(SourcePair(stem, img, found[0]))
    orphans = [f.name for f in labels if f not in used]
    if orphans:
        raise InputError(f"dataset {name!r}: label map(s) without an image in {root / 'images'}: "
                         f"{', '.join(orphans[:5])}{' ...' if len(orphans) > 5 else ''}", root / "labels")
    return pairs


def _read_bids(root: Path, name: str, modality: str, warn) -> list[SourcePair]:
    tail = f"_{modality}"
    images = []
    for sub in sorted(c for c in root.iterdir() if c.is_dir() and c.name.startswith("sub-")):
        for anat in [sub / "anat"] + sorted(s / "anat" for s in sub.iterdir() if s.name.startswith("ses-")):
            if anat.is_dir():
                images += [f for f in _volume_files(anat) if strip_volume_suffix(f.name).endswith(tail)]
    if not images:
        raise InputError(f"dataset {name!r}: no sub-*/[ses-*/]anat/*{tail}.nii[.gz] images (pass modality=... for "
                         "another suffix)", root)
    derivatives = sorted(d for d in (root / "derivatives").iterdir() if d.is_dir()) \
        if (root / "derivatives").is_dir() else []
    pairs = []
    for img in images:
        entities = strip_volume_suffix(img.name)[: -len(tail)]
        relative = img.parent.relative_to(root)
        found = []
        for d in derivatives:
            folder = d / relative
            if folder.is_dir():
                found += [f for f in _volume_files(folder)
                          if strip_volume_suffix(f.name).endswith("_dseg")
                          and (strip_volume_suffix(f.name) == f"{entities}_dseg" or f.name.startswith(entities + "_"))]
        if not found:
            warn(f"dataset {name!r}: {img}: no derivatives/*/{relative}/{entities}*_dseg label map; skipped")
            continue
        if len(found) > 1:
            exact = [f for f in found if strip_volume_suffix(f.name) == f"{entities}_dseg"]
            if len(exact) != 1:
                raise InputError(f"dataset {name!r}: several label maps match this image: "
                                 f"{', '.join(str(f.relative_to(root)) for f in found)}; use a CSV manifest", img)
            found = exact
        pairs.append(SourcePair(entities, img, found[0]))
    return pairs


# ----------------------------------------------------------------------------- grids
def same_grid(shape_a, affine_a, shape_b, affine_b, tol: float = _GRID_TOL) -> bool:
    """Whether two voxel grids hold the same voxel centres (the same grid up to the order and
    direction of the axes, e.g. LAS and RAS storage of one grid)."""
    shape_a, shape_b = tuple(int(n) for n in shape_a[:3]), tuple(int(n) for n in shape_b[:3])
    m = np.linalg.inv(np.asarray(affine_b, float)) @ np.asarray(affine_a, float)  # voxel of a -> voxel of b
    r = m[:3, :3]
    signed_perm = np.rint(r)
    if not np.allclose(r, signed_perm, atol=tol) or not np.all(np.abs(signed_perm).sum(axis=0) == 1) \
            or not np.all(np.abs(signed_perm).sum(axis=1) == 1):
        return False
    if not np.allclose(m[:3, 3], np.rint(m[:3, 3]), atol=tol):
        return False
    corners = np.array([[i, j, k] for i in (0, shape_a[0] - 1) for j in (0, shape_a[1] - 1)
                        for k in (0, shape_a[2] - 1)], float)
    mapped = np.rint(corners @ r.T + m[:3, 3])
    return bool(np.all(mapped.min(axis=0) == 0) and np.all(mapped.max(axis=0) == np.asarray(shape_b) - 1))


def _image_grid(path: Path, name: str):
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape, affine = tuple(img.shape), np.asarray(img.affine, float)
    except Exception as exc:  # nibabel raises many types for unreadable files
        raise InputError(f"dataset {name!r}: image is not a readable NIfTI/MGZ file ({short_error(exc)})",
                         path) from None
    if len(shape) < 3 or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"dataset {name!r}: image is not 3D or has an invalid affine (shape {shape})", path)
    return shape[:3], affine


# ----------------------------------------------------------------------------- split
def split_subjects(subjects, fractions=(0.7, 0.15, 0.15), seed: int = 0, dataset: str = "") -> dict[str, str]:
    """``{subject: "train" | "val" | "test"}`` for one dataset (see the module docstring).

    Raises:
        InputError: bad fractions, or too few subjects to leave one for training.
    """
    f = _fractions(fractions)
    subjects = sorted(subjects)
    n = len(subjects)
    counts = {}
    for s in ("test", "val"):
        k = int(np.floor(n * f[s] + 0.5))
        if f[s] > 0 and k == 0 and n >= 3:
            k = 1
        counts[s] = k
    if n - counts["test"] - counts["val"] < 1:
        raise InputError(f"dataset {dataset!r} has {n} subject(s): too few to split into train / val / test "
                         f"fractions {tuple(f.values())} with at least one for training")
    order = np.random.default_rng([int(seed), zlib.crc32(dataset.encode())]).permutation(n)
    out = {}
    for rank, i in enumerate(order):
        out[subjects[i]] = ("test" if rank < counts["test"] else
                            "val" if rank < counts["test"] + counts["val"] else "train")
    return out


def _fractions(fractions) -> dict[str, float]:
    try:
        values = [float(v) for v in fractions]
    except (TypeError, ValueError):
        raise InputError(f"fractions must be 3 numbers (train, val, test), got {fractions!r}") from None
    if len(values) != 3 or min(values) < 0 or values[0] <= 0 or abs(sum(values) - 1) > 1e-6:
        raise InputError(f"fractions must be 3 numbers >= 0 (train > 0) summing to 1, got {fractions!r}")
    return dict(zip(SPLITS, values))


# ----------------------------------------------------------------------------- merged dataset
@dataclass
class MergedPair:
    """One pair of the merged set: the image, its label map in common labels, where it came from."""

    dataset: str
    subject: str
    split: str
    image: Path
    label: Path
    source_label: Path


@dataclass
class MergedDataset:
    """The merged training set (what :func:`merge_datasets` wrote, or :func:`load_merged` read).

    Attributes:
        root: the output folder.
        pairs: every :class:`MergedPair`, by dataset (in the order given) then subject.
        labels: the common labels (background 0 included).
        protocol: the :class:`Protocol` used.
        seed, fractions: of the split.
    """

    root: Path
    pairs: list
    labels: list
    protocol: Protocol
    seed: int = 0
    fractions: dict = field(default_factory=dict)

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(p.dataset for p in self.pairs))

    def select(self, split: str | None = None, dataset: str | None = None) -> list[MergedPair]:
        """The pairs of ``split`` (``None``: all) and ``dataset`` (``None``: all)."""
        if split is not None and split not in SPLITS:
            raise InputError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if dataset is not None and dataset not in self.datasets:
            raise InputError(f"no dataset {dataset!r} in the merged set (it has {self.datasets})", self.root)
        return [p for p in self.pairs if (split is None or p.split == split)
                and (dataset is None or p.dataset == dataset)]

    def files(self, split: str = "train", dataset: str | None = None) -> tuple[list[Path], list[Path]]:
        """``(images, label maps)`` of a split (and dataset), in the same order: what
        :func:`synthseg.training.supervised.supervised_training` takes.

        Raises:
            InputError: the selection is empty.
        """
        pairs = self.select(split, dataset)
        if not pairs:
            raise InputError(f"the merged set has no {split!r} pairs" + (f" in dataset {dataset!r}" if dataset else ""),
                             self.root)
        return [p.image for p in pairs], [p.label for p in pairs]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{dataset: {split: number of pairs}}``."""
        return {d: {s: len(self.select(s, d)) for s in SPLITS} for d in self.datasets}


def merge_datasets(sources: dict, protocol, out_dir, fractions=(0.7, 0.15, 0.15), seed: int = 0,
                   modality: str = "T1w") -> MergedDataset:
    """Merge datasets into one training set in common labels, with a per-dataset split.

    Args:
        sources: ``{dataset name: source}`` (a CSV manifest or a folder, see the module
            docstring); the names are those of the protocol map.
        protocol: the protocol map (a JSON/YAML file, a dict or a :class:`Protocol`).
        out_dir: output folder (created; files of an earlier merge are replaced).
        fractions: ``(train, val, test)`` shares of each dataset's subjects.
        seed: seed of the split.
        modality: the image suffix of BIDS-like sources (``"T1w"``, ...), or ``{dataset: suffix}``
            (datasets not listed: ``T1w``).

    Returns:
        The :class:`MergedDataset` (also written to ``out_dir/split.json``).

    Raises:
        InputError: before anything is written for a bad protocol, source or fraction; a missing
            file; an image and label map on different grids (naming both); a label value the
            dataset's map does not list (naming the file, the dataset and the values).
    """
    protocol = read_protocol(protocol)
    if not isinstance(sources, dict) or not sources:
        raise InputError("sources must be a non-empty mapping {dataset name: CSV manifest or folder}")
    f = _fractions(fractions)
    missing = [str(n) for n in sources if str(n) not in protocol.maps]
    if missing:
        raise InputError(f"dataset(s) {missing} have no entry in the protocol map (it maps {sorted(protocol.maps)})",
                         protocol.path)
    suffixes = {str(k): str(v) for k, v in modality.items()} if isinstance(modality, dict) else {}
    unknown = sorted(set(suffixes) - {str(n) for n in sources})
    if unknown:
        raise InputError(f"modality given for unknown dataset(s) {unknown}")
    found = {str(n): read_dataset(src, str(n), suffixes.get(str(n), "T1w") if isinstance(modality, dict) else modality)
             for n, src in sources.items()}
    splits = {n: split_subjects([p.subject for p in pairs], f.values(), seed, n) for n, pairs in found.items()}

    # check every pair (grids, labels) before writing anything
    converted = {}
    for n, pairs in found.items():
        for pair in pairs:
            shape, affine = _image_grid(pair.image, n)
            lab = load_volume(pair.label)
            data = lab.data[..., 0] if lab.data.ndim == 4 and lab.data.shape[-1] == 1 else lab.data
            lab.data = None  # the converted map replaces it
            if data.ndim != 3:
                raise InputError(f"dataset {n!r}: label map is {data.ndim}D (shape {data.shape}); expected 3D",
                                 pair.label)
            if not same_grid(shape, affine, data.shape, lab.affine):
                raise InputError(f"dataset {n!r}: image and its label map {pair.label} are not on the same voxel grid "
                                 f"(shapes {shape} and {data.shape}; resample the label map to the image, "
                                 "lab2im.geometry.resample_to_grid with order=0)", pair.image)
            try:
                common = protocol.convert(n, data, pair.label)
            except InputError as exc:
                raise InputError(exc.problem, exc.path or pair.label) from None
            converted[(n, pair.subject)] = (common, lab)

    root = make_writable_folder(out_dir, "merge output folder cannot be written")
    top = max(protocol.labels)
    dtype = np.uint8 if top < 256 else np.int16 if top < 32768 else np.int32
    merged = []
    for n, pairs in found.items():
        folder = make_writable_folder(root / "labels" / n)
        for pair in pairs:
            common, lab = converted.pop((n, pair.subject))
            out = save_volume(common, folder / f"{pair.subject}.nii.gz", affine=lab.affine, header=lab.header,
                              dtype=dtype)
            merged.append(MergedPair(n, pair.subject, splits[n][pair.subject], pair.image.resolve(), out.resolve(),
                                     pair.label.resolve()))
    result = MergedDataset(root=root.resolve(), pairs=merged, labels=protocol.labels, protocol=protocol, seed=int(seed),
                           fractions=f)
    _write(result)
    return result


def _write(m: MergedDataset) -> None:
    root = m.root
    d = {"format": FORMAT, "seed": m.seed, "fractions": m.fractions, "labels": m.labels,
         "label_names": None if m.protocol.names is None else {str(k): v for k, v in sorted(m.protocol.names.items())},
         "protocol": m.protocol.to_dict()["datasets"],
         "pairs": [{"dataset": p.dataset, "subject": p.subject, "split": p.split, "image": str(p.image),
                    "label": str(p.label.relative_to(root)), "source_label": str(p.source_label)} for p in m.pairs]}
    atomic_write_text(root / "split.json", json.dumps(d, indent=2) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["dataset", "subject", "split", "image", "label", "source_label"])
    for p in m.pairs:
        w.writerow([p.dataset, p.subject, p.split, p.image, p.label, p.source_label])
    atomic_write_text(root / "split.csv", buf.getvalue())
    lists = make_writable_folder(root / "lists")
    for split in SPLITS:
        for dataset in [None] + m.datasets:
            pairs = m.select(split, dataset)
            prefix = f"{dataset}_{split}" if dataset else split
            for kind in ("image", "label"):
                text = "".join(f"{getattr(p, kind)}\n" for p in pairs)
                atomic_write_text(lists / f"{prefix}_{kind}s.txt", text)


def load_merged(path) -> MergedDataset:
    """Read a merged set: its folder or its ``split.json``.

    Raises:
        InputError: missing or garbled ``split.json``, or a converted label map that is gone.
    """
    p = Path(path)
    file = p / "split.json" if p.is_dir() else p
    if not file.is_file():
        raise InputError("no split.json: not a merged dataset folder (see synthseg.data.merge)", p)
    try:
        d = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"split file is unreadable ({short_error(exc)})", file) from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise InputError(f"not a split file of synthseg.data.merge (format {FORMAT!r})", file)
    root = file.parent.resolve()
    try:
        names = d.get("label_names")
        protocol = read_protocol({"datasets": d["protocol"], "labels": names})
        pairs = [MergedPair(r["dataset"], r["subject"], r["split"], Path(r["image"]), root / r["label"],
                            Path(r["source_label"])) for r in d["pairs"]]
        result = MergedDataset(root=root, pairs=pairs, labels=[int(v) for v in d["labels"]], protocol=protocol,
                               seed=int(d["seed"]), fractions=dict(d["fractions"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"split file lacks or garbles a field ({short_error(exc)})", file) from None
    for pair in pairs:
        if not pair.label.is_file():
            raise InputError("converted label map listed in split.json is missing (run the merge again)", pair.label)
    return result


# ----------------------------------------------------------------------------- command line
HELP = "merge labelled datasets into one training set through a label-protocol map (per-dataset train/val/test split)"


def add_arguments(parser) -> None:
    parser.add_argument("--dataset", action="append", required=True, metavar="NAME=SOURCE",
                        help="a dataset: its name in the protocol map and its CSV manifest or folder (repeat)")
    parser.add_argument("--protocol", required=True, help="label-protocol map (.json, .yaml or .yml)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--fractions", type=float, nargs=3, default=(0.7, 0.15, 0.15), metavar=("TRAIN", "VAL", "TEST"),
                        help="shares of each dataset's subjects (default: 0.7 0.15 0.15)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default: 0)")
    parser.add_argument("--modality", action="append", default=None, metavar="[NAME=]SUFFIX",
                        help="image suffix in BIDS-like folders, for every dataset or one (repeat; default: T1w)")


def run(args) -> int:
    sources = {}
    for item in args.dataset:
        name, sep, source = item.partition("=")
        if not sep or not name or not source:
            raise InputError(f"--dataset must be NAME=SOURCE, got {item!r}")
        if name in sources:
            raise InputError(f"--dataset {name!r} is given twice")
        sources[name] = source
    modality = {}
    for item in args.modality or []:
        name, sep, suffix = item.rpartition("=")
        if not suffix:
            raise InputError(f"--modality must be SUFFIX or NAME=SUFFIX, got {item!r}")
        for n in ([name] if sep else sources):
            modality[n] = suffix
    merged = merge_datasets(sources, args.protocol, args.out, args.fractions, args.seed, modality)
    print(f"{'dataset':<16} {'train':>6} {'val':>6} {'test':>6}")
    for dataset, counts in merged.counts().items():
        print(f"{dataset:<16} {counts['train']:>6} {counts['val']:>6} {counts['test']:>6}")
    print(f"common labels {merged.labels}; wrote {merged.root / 'split.json'}")
    return 0
