"""PNG figures people would rather look at than read: slice mosaics and label overlays."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lab2im.io import atomic_output  # noqa: E402

VIEWS = ("sagittal", "coronal", "axial")


def mid_slices(volume: np.ndarray) -> list[np.ndarray]:
    """Sagittal, coronal and axial middle slices of a RAS volume ``(X, Y, Z)``, each oriented
    for display (superior / anterior up)."""
    x, y, z = (n // 2 for n in volume.shape[:3])
    return [volume[x].T, volume[:, y].T, volume[:, :, z].T]


def label_colour_image(labels: np.ndarray, colours: dict[int, tuple[int, int, int]] | None) -> np.ndarray:
    """RGBA image ``(*labels.shape, 4)`` of a label slice; background transparent.

    Args:
        labels: integer slice.
        colours: label -> (R, G, B) 0-255; ``None`` or missing labels get a fixed random colour.
    """
    rgba = np.zeros((*labels.shape, 4), np.float32)
    for lab in np.unique(labels):
        if lab == 0:
            continue
        if colours and int(lab) in colours:
            rgb = np.array(colours[int(lab)], np.float32) / 255
        else:
            rgb = np.random.default_rng(int(lab)).uniform(0.2, 1.0, 3)
        rgba[labels == lab] = (*rgb, 1.0)
    return rgba


def save_mosaic(images: Sequence[np.ndarray], path, titles: Sequence[str] | None = None,
                labels: Sequence[np.ndarray | None] | None = None,
                colours: dict[int, tuple[int, int, int]] | None = None, alpha: float = 0.45,
                suptitle: str | None = None, vrange: tuple[float, float] | None = None) -> Path:
    """Write a PNG, atomically: one row per volume, its sagittal, coronal and axial mid-slices.

    Args:
        images: 3D volumes ``(X, Y, Z)`` in RAS orientation, shown in grey.
        path: the PNG to write (its folder must exist).
        titles: one per row, written above it.
        labels: label maps on the images' grids, one per row (``None`` for no overlay), drawn
            in ``colours`` with opacity ``alpha``.
        colours: label -> (R, G, B) 0-255; default: FreeSurfer colours of the protocol labels
            (:func:`synthseg.labels.label_colours`), a fixed random colour for others.
        suptitle: figure title.
        vrange: grey-level window, e.g. ``(0, 1)`` to compare generator outputs row to row;
            ``None`` stretches each row between its 0.5th and 99.5th percentiles.

    Returns:
        The path written.
    """
    colours = _checked_colours(images, titles, colours)
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(9.0, 3.3 * n + (0.4 if suptitle else 0.0)), squeeze=False,
                             layout="constrained")
    for row, image in enumerate(images):
        img = np.asarray(image, np.float32)
        lo, hi = vrange if vrange is not None else np.percentile(img, [0.5, 99.5])
        overlay = None if labels is None or labels[row] is None else mid_slices(np.asarray(labels[row]))
        for col, sl in enumerate(mid_slices(img)):
            ax = axes[row, col]
            ax.imshow(sl, cmap="gray", origin="lower", vmin=lo, vmax=max(hi, lo + 1e-6), interpolation="nearest")
            if overlay is not None:
                ax.imshow(label_colour_image(overlay[col], colours), origin="lower", alpha=alpha,
                          interpolation="nearest")
            ax.text(0.02, 0.02, VIEWS[col], transform=ax.transAxes, color="yellow", fontsize=7, va="bottom")
            ax.set_xticks([])
            ax.set_yticks([])
        if titles is not None:
            axes[row, 1].set_title(titles[row], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    return save_figure(fig, path)


def save_slices(images: Sequence[np.ndarray], path, titles: Sequence[str] | None = None,
                labels: Sequence[np.ndarray | None] | None = None, ncols: int = 4,
                colours: dict[int, tuple[int, int, int]] | None = None, alpha: float = 0.45,
                suptitle: str | None = None, vrange: tuple[float, float] | None = None) -> Path:
    """Write a PNG, atomically: a grid of 2D images, ``ncols`` per row.

    Args:
        images: 2D arrays ``(X, Y)``, e.g. axial slices of RAS volumes: shown with the first
            axis horizontal and the second vertical, upwards (as :func:`mid_slices` shows them).
        path: the PNG to write (its folder must exist).
        titles: one per image.
        labels: 2D label maps on the images' grids, one per image (``None`` for no overlay).
        ncols: images per row.
        colours, alpha, suptitle, vrange: as in :func:`save_mosaic` (``vrange`` ``None``
            stretches each image between its 0.5th and 99.5th percentiles).

    Returns:
        The path written.
    """
    colours = _checked_colours(images, titles, colours)
    n = len(images)
    cols = max(1, min(int(ncols), n))
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows + (0.4 if suptitle else 0.0)),
                             squeeze=False, layout="constrained")
    for i, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        img = np.asarray(images[i], np.float32)
        if img.ndim != 2:
            raise ValueError(f"image {i} has shape {img.shape}; expected a 2D array")
        lo, hi = vrange if vrange is not None else np.percentile(img, [0.5, 99.5])
        ax.imshow(img.T, cmap="gray", origin="lower", vmin=lo, vmax=max(hi, lo + 1e-6), interpolation="nearest")
        if labels is not None and labels[i] is not None:
            ax.imshow(label_colour_image(np.asarray(labels[i]).T, colours), origin="lower", alpha=alpha,
                      interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return save_figure(fig, path)


def _checked_colours(images, titles, colours):
    """``colours`` or the protocol's FreeSurfer colours; one title per image if any."""
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    if colours is None:
        from synthseg.labels import label_colours

        colours = label_colours()
    return colours


def save_figure(fig, path) -> Path:
    """Write a matplotlib figure as PNG atomically, then close it."""
    try:
        with atomic_output(path, ".png") as tmp:
            fig.savefig(tmp, dpi=90)
    finally:
        plt.close(fig)
    return Path(path)
