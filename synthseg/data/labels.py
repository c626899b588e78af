"""The segmentation protocol, in FreeSurfer label IDs.

One table (:data:`_STRUCTURES`) defines everything: which structures are segmented, their
FreeSurfer IDs (one neutral ID, or a left and a right ID), their tissue group for evaluation
(GM / WM / CSF), and whether they are only *generation* labels (present in training label
maps to shape the synthetic image, mapped to background in the segmentation target).
A second table (:data:`_FREESURFER_LUT`) holds the names and colours of those IDs as in
FreeSurfer's ``FreeSurferColorLUT.txt``.

Label lists follow the SynthSeg convention: neutral labels first (background included), then
the left labels, then the right labels in the same order, so ``right[i]`` is the counterpart
of ``left[i]`` and a left/right flip only needs the number of neutral labels.

Example::

    >>> from synthseg import labels
    >>> labels.segmentation_labels()[:6]
    array([ 0, 14, 15, 16, 24,  2], dtype=int32)
    >>> labels.n_neutral(), labels.n_neutral(generation=True)
    (5, 15)
    >>> labels.lr_pairs()[0]
    (2, 41)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BACKGROUND = 0
CSF = 24
SKULL = 165
SOFT_TISSUE = 258  # FreeSurfer "Head-ExtraCerebral": scalp, muscle, fat, ... (anything non-bone)

TISSUE_GROUPS = ("GM", "WM", "CSF")


@dataclass(frozen=True)
class Structure:
    """One row of the protocol.

    Attributes:
        key: short identifier, e.g. ``"hippocampus"``.
        left: FreeSurfer ID of the neutral structure, or of its left part.
        right: FreeSurfer ID of the right part; ``None`` for neutral structures.
        group: tissue group for evaluation (``"GM"``, ``"WM"``, ``"CSF"``) or ``None``
            (background and extra-cerebral tissue).
        segmented: ``False`` for generation-only labels, mapped to background in the target.
    """

    key: str
    left: int
    right: int | None
    group: str | None
    segmented: bool = True

    @property
    def ids(self) -> tuple[int, ...]:
        return (self.left,) if self.right is None else (self.left, self.right)


# key, neutral-or-left ID, right ID, tissue group, segmented.
# Order matters: it is the order of the label lists (neutral rows in list order, then paired
# rows give the left list and, in the same order, the right list).
_STRUCTURES: tuple[Structure, ...] = (
    Structure("background", 0, None, None),
    Structure("third_ventricle", 14, None, "CSF"),
    Structure("fourth_ventricle", 15, None, "CSF"),
    Structure("brainstem", 16, None, "WM"),
    Structure("csf", CSF, None, "CSF"),
    Structure("skull", SKULL, None, None, segmented=False),
    Structure("head_soft_tissue", SOFT_TISSUE, None, None, segmented=False),
    Structure("cerebral_white_matter", 2, 41, "WM"),
    Structure("cerebral_cortex", 3, 42, "GM"),
    Structure("lateral_ventricle", 4, 43, "CSF"),
    Structure("inferior_lateral_ventricle", 5, 44, "CSF"),
    Structure("cerebellum_white_matter", 7, 46, "WM"),
    Structure("cerebellum_cortex", 8, 47, "GM"),
    Structure("thalamus", 10, 49, "GM"),
    Structure("caudate", 11, 50, "GM"),
    Structure("putamen", 12, 51, "GM"),
    Structure("pallidum", 13, 52, "GM"),
    Structure("hippocampus", 17, 53, "GM"),
    Structure("amygdala", 18, 54, "GM"),
    Structure("accumbens", 26, 58, "GM"),
    Structure("ventral_dc", 28, 60, "GM"),
    # generation-only parts of the extra-cerebral classes, drawn at random by the generator
    # (lab2im.layers.RandomPartition, see extra_cerebral_partitions); last, so the classes of
    # the rows above keep their numbers
    *(Structure(f"extra_cerebral_part_{i}", label, None, None, segmented=False)
      for i, label in enumerate(range(502, 510), start=1)),
)

#: generation-only labels into which the generator splits each extra-cerebral class at random
EXTRA_CEREBRAL_PARTS: dict[int, tuple[int, ...]] = {
    BACKGROUND: (502, 503),
    SKULL: (504, 505),
    SOFT_TISSUE: (506, 507, 508, 509),
}

# FreeSurferColorLUT.txt (FreeSurfer 7): ID -> (name, (R, G, B)).
_FREESURFER_LUT: dict[int, tuple[str, tuple[int, int, int]]] = {
    0: ("Unknown", (0, 0, 0)),
    2: ("Left-Cerebral-White-Matter", (245, 245, 245)),
    3: ("Left-Cerebral-Cortex", (205, 62, 78)),
    4: ("Left-Lateral-Ventricle", (120, 18, 134)),
    5: ("Left-Inf-Lat-Vent", (196, 58, 250)),
    7: ("Left-Cerebellum-White-Matter", (220, 248, 164)),
    8: ("Left-Cerebellum-Cortex", (230, 148, 34)),
    10: ("Left-Thalamus", (0, 118, 14)),
    11: ("Left-Caudate", (122, 186, 220)),
    12: ("Left-Putamen", (236, 13, 176)),
    13: ("Left-Pallidum", (12, 48, 255)),
    14: ("3rd-Ventricle", (204, 182, 142)),
    15: ("4th-Ventricle", (42, 204, 164)),
    16: ("Brain-Stem", (119, 159, 176)),
    17: ("Left-Hippocampus", (220, 216, 20)),
    18: ("Left-Amygdala", (103, 255, 255)),
    24: ("CSF", (60, 60, 60)),
    26: ("Left-Accumbens-area", (255, 165, 0)),
    28: ("Left-VentralDC", (165, 42, 42)),
    41: ("Right-Cerebral-White-Matter", (245, 245, 245)),
    42: ("Right-Cerebral-Cortex", (205, 62, 78)),
    43: ("Right-Lateral-Ventricle", (120, 18, 134)),
    44: ("Right-Inf-Lat-Vent", (196, 58, 250)),
    46: ("Right-Cerebellum-White-Matter", (220, 248, 164)),
    47: ("Right-Cerebellum-Cortex", (230, 148, 34)),
    49: ("Right-Thalamus", (0, 118, 14)),
    50: ("Right-Caudate", (122, 186, 220)),
    51: ("Right-Putamen", (236, 13, 176)),
    52: ("Right-Pallidum", (13, 48, 255)),
    53: ("Right-Hippocampus", (220, 216, 20)),
    54: ("Right-Amygdala", (103, 255, 255)),
    58: ("Right-Accumbens-area", (255, 165, 0)),
    60: ("Right-VentralDC", (165, 42, 42)),
    165: ("Skull", (120, 120, 120)),
    258: ("Head-ExtraCerebral", (150, 150, 200)),
    **{label: (f"Extra-Cerebral-Part-{i}", (150 + 10 * i, 120, 90))
       for i, label in enumerate(range(502, 510), start=1)},
}


def structures(generation: bool = True) -> tuple[Structure, ...]:
    """Rows of the protocol table.

    Args:
        generation: include the generation-only rows (skull, soft tissue).
    """
    return tuple(s for s in _STRUCTURES if generation or s.segmented)


def _ordered(generation: bool) -> tuple[list[int], list[int], list[int]]:
    """(neutral, left, right) ID lists; generation-only labels join the neutral part."""
    rows = structures(generation)
    neutral = [s.left for s in rows if s.right is None]
    left = [s.left for s in rows if s.right is not None]
    right = [s.right for s in rows if s.right is not None]
    return neutral, left, right


def segmentation_labels() -> np.ndarray:
    """Labels the network predicts: neutral, then left, then right.

    Returns:
        int32 array, shape ``(33,)``: 5 neutral labels and 14 left/right pairs.
    """
    neutral, left, right = _ordered(generation=False)
    return np.asarray(neutral + left + right, dtype=np.int32)


def generation_labels() -> np.ndarray:
    """Labels that may appear in training label maps: the segmentation labels plus the
    extra-cerebral generation labels (skull 165, soft tissue 258, and the random parts
    502-509 of :func:`extra_cerebral_partitions`), which go in the neutral part (after the
    segmentation's neutral labels).

    Returns:
        int32 array, shape ``(43,)``: 15 neutral labels and 14 left/right pairs.
    """
    neutral, left, right = _ordered(generation=True)
    return np.asarray(neutral + left + right, dtype=np.int32)


def n_neutral(generation: bool = False) -> int:
    """Number of neutral labels at the start of :func:`segmentation_labels` (5) or, with
    ``generation=True``, of :func:`generation_labels` (7)."""
    return len(_ordered(generation)[0])


def extra_cerebral_partitions() -> list[list[int]]:
    """``[label, part_1, ...]`` for background, skull and soft tissue (:data:`EXTRA_CEREBRAL_PARTS`):
    the ``partitions`` option of the generator, so non-brain tissue gets a random patchwork
    of independent intensities (as SynthSeg 2.0's 14 extra-cerebral generation labels)."""
    return [[label, *parts] for label, parts in EXTRA_CEREBRAL_PARTS.items()]


def boundary_morphology_rules() -> list[tuple[list[int], list[int]]]:
    """``(grow, into)`` label groups whose boundary the generator may move by one voxel
    (the ``morphology_rules`` option, :class:`lab2im.layers.RandomLabelMorphology`), one rule
    per hemisphere: cerebral cortex against CSF (sulcal width, the cortex's outer surface),
    cerebral cortex against cerebral white matter (cortical thickness from the inside) and
    lateral ventricle against cerebral white matter (ventricle size), so one label map gives
    brains of many thicknesses. Left and right never share a rule, so a moved voxel at the
    midline keeps its own hemisphere's label."""
    rules = []
    for cortex, white, ventricle in ((3, 2, 4), (42, 41, 43)):
        rules += [([cortex], [CSF]), ([cortex], [white]), ([ventricle], [white])]
    return rules


def lr_pairs() -> list[tuple[int, int]]:
    """``(left_id, right_id)`` for each paired structure, in list order (14 pairs)."""
    _, left, right = _ordered(generation=True)
    return list(zip(left, right))


def lr_swap() -> dict[int, int]:
    """Label -> label after a left/right flip, for every generation label (neutral ones map
    to themselves)."""
    swap = {int(label): int(label) for label in generation_labels()}
    for left, right in lr_pairs():
        swap[left], swap[right] = right, left
    return swap


def label_names() -> dict[int, str]:
    """FreeSurfer name of every generation label, e.g. ``{17: "Left-Hippocampus", ...}``."""
    return {int(label): _FREESURFER_LUT[int(label)][0] for label in generation_labels()}


def label_colours() -> dict[int, tuple[int, int, int]]:
    """FreeSurfer colour (R, G, B in 0-255) of every generation label."""
    return {int(label): _FREESURFER_LUT[int(label)][1] for label in generation_labels()}


def tissue_groups() -> dict[str, tuple[int, ...]]:
    """Segmentation labels of each tissue group, for tissue-level evaluation.

    GM: cerebral and cerebellar cortex, thalamus, caudate, putamen, pallidum, hippocampus,
    amygdala, accumbens, ventral DC. WM: cerebral and cerebellar white matter, brainstem.
    CSF: lateral, inferior lateral, 3rd and 4th ventricles, CSF. Together they partition the
    non-background segmentation labels.

    Returns:
        ``{"GM": (...), "WM": (...), "CSF": (...)}``, IDs in list order.
    """
    order = {int(label): i for i, label in enumerate(segmentation_labels())}
    groups = {}
    for group in TISSUE_GROUPS:
        ids = [i for s in structures(generation=False) if s.group == group for i in s.ids]
        groups[group] = tuple(sorted(ids, key=order.__getitem__))
    return groups


#: the structure groups scored by the quality control (SynthSeg's QC groups): FreeSurfer IDs
QC_GROUPS = {
    "white matter": (2, 41),
    "cerebral cortex": (3, 42),
    "CSF": (4, 43, 5, 44, 14, 15, 24),
    "cerebellum": (7, 8, 46, 47),
    "brainstem": (16,),
    "thalamus": (10, 49),
    "putamen+pallidum": (12, 13, 51, 52),
    "hippocampus+amygdala": (17, 18, 53, 54),
}


def generation_to_segmentation() -> dict[int, int]:
    """Generation label -> segmentation label (generation-only labels -> 0, others unchanged)."""
    return {i: (i if s.segmented else BACKGROUND) for s in _STRUCTURES for i in s.ids}


def tissue_classes() -> dict[int, int]:
    """Suggested generation class of each generation label: labels of one class share the
    random intensity distribution of the synthetic images.

    Each structure is its own class and left/right counterparts share one; classes are
    numbered 0, 1, ... in table order (background is class 0). For an array aligned with
    :func:`generation_labels`: ``[tissue_classes()[l] for l in generation_labels()]``.
    """
    return {i: c for c, s in enumerate(_STRUCTURES) for i in s.ids}


def tissue_class_names() -> list[str]:
    """Name (structure key) of each class of :func:`tissue_classes`, indexed by class."""
    return [s.key for s in _STRUCTURES]
