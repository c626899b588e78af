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
            (:func:`synthseg.data.labels.label_colours`), a fixed random colour for others.
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


def save_overlay(image: np.ndarray, labels: np.ndarray, voxel_size, path, title: str | None = None,
                 colours: dict[int, tuple[int, int, int]] | None = None, n_slices: int = 4,
                 alpha: float = 0.4) -> Path:
    """Write a PNG, atomically: a segmentation over its scan, at the scan's own resolution.

    One row per view (sagittal, coronal, axial): first the scan alone through the middle of the
    segmented region (to judge the image itself), then ``n_slices`` slices with the labels,
    spread across the segmented region (20% to 80% of its extent). Panels are cropped to the
    segmented region with a 15 mm margin and drawn with the voxels' true aspect (thick slices
    look thick). Dark background and white text, readable whatever the contrast; a legend of
    the structures present (left and right counterparts share an entry). Grey
    colours (FreeSurfer draws white matter white) would vanish on a grey scan: they are drawn
    in a light blue instead (:func:`_display_colours`), in the legend too.

    Args:
        image: ``(X, Y, Z)`` scan in RAS orientation (any intensities).
        labels: ``(X, Y, Z)`` segmentation on the same grid (0: background).
        voxel_size: voxel size (mm, per axis) of that grid.
        path: the PNG to write (its folder must exist).
        title: figure title.
        colours: label -> (R, G, B) 0-255 (default: the protocol's FreeSurfer colours).
        n_slices: overlay slices per view.
        alpha: overlay opacity.

    Returns:
        The path written.
    """
    from matplotlib.patches import Patch

    from synthseg.data.labels import label_names

    image, labels = np.asarray(image, np.float32), np.asarray(labels)
    if image.shape != labels.shape or image.ndim != 3:
        raise ValueError(f"image {image.shape} and labels {labels.shape} must be 3D arrays of one shape")
    colours = _display_colours(_checked_colours([image], None, colours))
    voxel = np.asarray(voxel_size, np.float64).ravel()
    voxel = np.broadcast_to(voxel, (3,)) if voxel.size in (1, 3) else np.ones(3)
    fg = labels > 0
    inside = image[fg] if fg.any() else image.ravel()
    lo, hi = np.percentile(inside, [0.5, 99.5])
    if fg.any():
        idx = np.nonzero(fg)
        box = [(int(i.min()), int(i.max()) + 1) for i in idx]
    else:
        box = [(0, n) for n in image.shape]
    margin = [int(round(15.0 / v)) for v in voxel]
    view_box = [slice(max(a - m, 0), min(b + m, n)) for (a, b), m, n in zip(box, margin, image.shape)]
    fig, axes = plt.subplots(3, n_slices + 1, figsize=(3.0 * (n_slices + 1), 9.6), squeeze=False,
                             layout="constrained", facecolor="black")
    fractions = [0.5] + list(np.linspace(0.2, 0.8, n_slices))
    for axis in range(3):  # the sliced axis: 0 sagittal, 1 coronal, 2 axial
        shown = [a for a in range(3) if a != axis]  # (horizontal, vertical) display axes
        for col, fraction in enumerate(fractions):
            ax = axes[axis, col]
            ax.set_facecolor("black")
            ax.set_xticks([])
            ax.set_yticks([])
            a, b = box[axis]
            k = int(np.clip(round(a + fraction * (b - 1 - a)), 0, image.shape[axis] - 1))
            sel = [view_box[0], view_box[1], view_box[2]]
            sel[axis] = k
            sl_img, sl_lab = image[tuple(sel)].T, labels[tuple(sel)].T
            aspect = voxel[shown[1]] / voxel[shown[0]]
            ax.imshow(sl_img, cmap="gray", origin="lower", vmin=lo, vmax=max(hi, lo + 1e-6), aspect=aspect,
                      interpolation="nearest")
            if col > 0:
                ax.imshow(label_colour_image(sl_lab, colours), origin="lower", alpha=alpha, aspect=aspect,
                          interpolation="nearest")
            where = "scan only" if col == 0 else f"{100 * fraction:.0f}%"
            ax.set_title(f"{VIEWS[axis]} {k} ({where})", color="white", fontsize=9)
    names = label_names()
    entries = {}
    for lab in (int(v) for v in np.unique(labels) if v > 0):
        name = names.get(lab, f"label {lab}")
        for side in ("Left-", "Right-"):
            name = name.replace(side, "")
        entries.setdefault(name, tuple(np.array(colours.get(lab, (200, 200, 200))) / 255))
    handles = [Patch(facecolor=c, edgecolor="none", label=n) for n, c in entries.items()]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(6, len(handles)), fontsize=8,
                   frameon=False, labelcolor="white")
    if title:
        fig.suptitle(title, color="white", fontsize=12)
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


#: the colour :func:`_display_colours` gives to grey labels
GREY_REPLACEMENT = (90, 170, 255)


def _display_colours(colours: dict[int, tuple[int, int, int]]) -> dict[int, tuple[int, int, int]]:
    """``colours`` with every nearly grey colour (max - min channel < 40 of 255) replaced by
    :data:`GREY_REPLACEMENT`, so that an overlay stays visible on a grey-level scan."""
    return {k: (GREY_REPLACEMENT if max(c) - min(c) < 40 else tuple(c)) for k, c in colours.items()}


def _checked_colours(images, titles, colours):
    """``colours`` or the protocol's FreeSurfer colours; one title per image if any."""
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    if colours is None:
        from synthseg.data.labels import label_colours

        colours = label_colours()
    return colours


def save_figure(fig, path) -> Path:
    """Write a matplotlib figure as PNG atomically, then close it."""
    try:
        with atomic_output(path, ".png") as tmp:
            fig.savefig(tmp, dpi=90, facecolor=fig.get_facecolor())
    finally:
        plt.close(fig)
    return Path(path)
