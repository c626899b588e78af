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
                labels: Sequence[np.ndarray] | None = None,
                colours: dict[int, tuple[int, int, int]] | None = None, alpha: float = 0.45,
                suptitle: str | None = None) -> Path:
    """Write a PNG: one row per volume, its three mid-slices; optional label overlays.

    Args:
        images: 3D volumes ``(X, Y, Z)`` (RAS), shown in grey.
        path: PNG to write (atomically).
        titles: one per row.
        labels: label maps on the same grids, overlaid in ``colours`` with opacity ``alpha``.
        colours: label -> (R, G, B) 0-255 (e.g. :func:`synthseg.labels.label_colours`).
        suptitle: figure title.
    """
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n + (0.4 if suptitle else 0)), squeeze=False)
    for row, image in enumerate(images):
        img = np.asarray(image, np.float32)
        lo, hi = np.percentile(img, [0.5, 99.5]) if img.size else (0, 1)
        slices = mid_slices(img)
        lab_slices = mid_slices(np.asarray(labels[row])) if labels is not None else [None] * 3
        for col, (sl, lab) in enumerate(zip(slices, lab_slices)):
            ax = axes[row, col]
            ax.imshow(sl, cmap="gray", origin="lower", vmin=lo, vmax=hi if hi > lo else lo + 1,
                      interpolation="nearest")
            if lab is not None:
                ax.imshow(label_colour_image(lab, colours), origin="lower", alpha=alpha,
                          interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(VIEWS[col], fontsize=9)
        if titles is not None:
            axes[row, 0].set_ylabel(titles[row], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    return _save_figure(fig, path)


def _save_figure(fig, path) -> Path:
    try:
        with atomic_output(path, ".png") as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
    return Path(path)
