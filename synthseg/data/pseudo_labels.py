"""A training anatomy from a real scan without labels: the pipeline's own segmentation.

The public training maps are two brains, both averages in MNI space (``cvs_avg35`` and the
Neuromorphometrics atlas): a network trained on them learns two folding patterns. Any real
whole-head scan in MNI space adds one more. :func:`pseudo_label_map` segments it with a trained
model (network, flip averaging, refinement by the scan's own intensities at its resolution, so
the cortex follows the scan's sulci), places the labels on the public maps' 1 mm grid and fills
everything outside the brain as the public maps are filled (SPM's TPM: skull, soft tissue, air;
CSF at most :data:`~synthseg.data.training_labels.MAX_CSF_MM` from the brain), so the map is
used exactly like them (``Recipe.extra_maps``).

The labels are a model's, not an expert's: errors of the model are learnt back. The committed
map :data:`~synthseg.data.training_labels.COLIN27_MAP` was made this way from Colin27 (one real
subject, 27 scans averaged: sharp, high contrast)::

    python scripts/build_colin27_map.py --model DIR     # DIR: the model that made it (cpu9)
    python -m synthseg.data.pseudo_labels SCAN OUT.nii.gz [--model DIR]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from lab2im.errors import InputError
from lab2im.io import load_volume, save_volume
from synthseg.data import datasets
from synthseg.data import training_labels as tl


def training_grid(cache_dir=None) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape (voxels) and ``(4, 4)`` affine (1 mm, RAS, MNI) of the public training maps."""
    first = sorted(tl.training_label_maps(tl.VOXEL_MM, cache_dir).glob("*.nii.gz"))[0]
    vol = load_volume(first)
    return vol.shape, vol.affine


def whole_head_map(segmentation: np.ndarray, seg_affine: np.ndarray, shape, affine: np.ndarray,
                   tpm) -> np.ndarray:
    """A segmentation's brain on a training grid, with the TPM fill outside it.

    Args:
        segmentation: ``(X, Y, Z)`` protocol labels (0 outside the brain), in MNI space.
        seg_affine: its ``(4, 4)`` affine (mm).
        shape, affine: the training grid (voxels, mm).
        tpm: SPM's 4D TPM :class:`~lab2im.io.Volume` (see :func:`~synthseg.data.training_labels.tpm_extra_labels`).

    Returns:
        int32 label map of ``shape``, holding only generation labels of the protocol.

    Raises:
        RuntimeError: a left structure on the right (the scan is not in RAS MNI space) or a
            label outside the protocol.
    """
    extra = tl.tpm_extra_labels(tpm, shape, affine)
    labels = tl.whole_head(np.asarray(segmentation, np.int32), seg_affine, extra, shape, affine)
    labels, _ = tl.bound_csf(labels, tl.VOXEL_MM)
    tl.check_labels(labels, "the pseudo-label map")
    tl.check_sides(labels, affine, "the pseudo-label map")
    return labels


def pseudo_label_map(scan, out, model=None, cache_dir=None, flip: bool = True) -> Path:
    """Segment a whole-head scan in MNI space and write it as a training label map.

    Args:
        scan: the scan's path (any contrast; NIfTI/MGZ), in MNI space.
        out: output ``.nii.gz`` (written atomically).
        model: model folder for :func:`synthseg.inference.model.load_model` (default: the
            shipped model).
        cache_dir: data cache (for the TPM and the public maps' grid).
        flip: left/right flip averaging (twice the network time).

    Returns:
        ``out``: an int32 map on the public training maps' grid (1 mm).

    Raises:
        InputError: the scan cannot be read, the output folder does not exist (checked before
            the scan is segmented), or the labels do not fit MNI space.
    """
    from synthseg.inference.model import load_model
    from synthseg.inference.segmentation import segment_volume

    if not Path(out).parent.is_dir():
        raise InputError("the output folder does not exist", Path(out).parent)
    volume = load_volume(scan)
    seg = segment_volume(volume, load_model(model), flip=flip)
    shape, affine = training_grid(cache_dir)
    tpm = load_volume(datasets.fetch("spm_tpm", cache_dir), dtype=np.float32)
    try:
        labels = whole_head_map(seg.native_segmentation(), volume.affine, shape, affine, tpm)
    except RuntimeError as exc:
        raise InputError(f"{exc}: is the scan in MNI space?", scan) from None
    return save_volume(labels, out, affine=affine, dtype=tl.OUTPUT_DTYPE)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scan", type=Path, help="whole-head scan in MNI space")
    parser.add_argument("out", type=Path, help="output label map (.nii.gz)")
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped one)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="data cache (default: $SYNTHSEG_DATA or ~/.cache/synthseg)")
    args = parser.parse_args(argv)
    return run(args.scan, args.out, args.model, args.cache_dir)


def run(scan, out, model=None, cache_dir=None) -> int:
    """The command line's work (also ``scripts/build_colin27_map.py``'s): :func:`pseudo_label_map`,
    then the map's summary on stdout; exit status 0, or 1 with the error on stderr."""
    try:
        path = pseudo_label_map(scan, out, model, cache_dir)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(tl.summary(path, np.asarray(load_volume(path).data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
