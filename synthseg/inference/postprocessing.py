"""Clean-up of posteriors: largest connected brain component, one component per structure, holes filled; soft volumes of the cleaned segmentation."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

CLEANUP_ROUNDS = 1

#: a voxel belongs to the brain mask of :func:`keep_largest_brain` where its posteriors of
#: all structures but the background sum to more than this (SynthSeg's value)
BRAIN_THRESHOLD = 0.25


def keep_largest_brain(post: np.ndarray, background: int = 0, threshold: float = BRAIN_THRESHOLD) -> int:
    """Keep the brain in one piece: voxels outside the largest connected component (26-connectivity)
    of the brain mask (non-background posterior above ``threshold``) become background, in
    place on ``post`` (one-hot). Structures wrongly found in the face or neck, away from the
    brain, go with them.

    Args:
        post: ``(X, Y, Z, K)`` posteriors, modified in place.
        background: channel of the background.
        threshold: brain-mask threshold on ``1 - post[..., background]``.

    Returns:
        the number of voxels set to background.
    """
    brain = post[..., background] < 1.0 - threshold
    box = _box(brain)
    if box is None:
        return 0
    components, count = ndimage.label(brain[box], ndimage.generate_binary_structure(3, 3))
    if count <= 1:
        return 0
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    sizes[0] = 0
    outside = (components != int(np.argmax(sizes))) & (components > 0)
    sub = post[box]
    values = np.zeros((int(outside.sum()), post.shape[-1]), post.dtype)
    values[:, background] = 1
    sub[outside] = values
    return int(outside.sum())


def clean_posteriors(post: np.ndarray, background: int = 0, rounds: int = CLEANUP_ROUNDS) -> np.ndarray:
    """Clean a segmentation: the brain in one piece (:func:`keep_largest_brain`), then one connected
    component per structure, no holes (in place on ``post``).

    Args:
        post: ``(X, Y, Z, K)`` posteriors, modified in place.
        background: channel of the background.
        rounds: rounds of "remove stray components, renormalise"; voxels still stray after
            them become background (then, if enclosed, the nearest structure).

    Returns:
        ``(X, Y, Z)`` int32 channel indices, the argmax of the cleaned ``post``: every channel
        but the background is one connected component (26-connectivity; filled holes join
        the nearest structure, which borders them in all but contrived cases), and no
        background voxel is enclosed by the other channels (6-connected background).
    """
    K = post.shape[-1]
    keep_largest_brain(post, background)
    idx = np.argmax(post, axis=-1).astype(np.int32)
    structure = ndimage.generate_binary_structure(3, 3)
    todo = set(range(K)) - {background}
    for round_ in range(rounds + 1):
        last = round_ == rounds
        boxes = ndimage.find_objects(idx + 1, max_label=K)
        gained = set()  # labels that received voxels: only they can have new stray parts
        for c in sorted(todo):
            box = boxes[c]
            if box is None:
                continue
            region = idx[box]
            mask = region == c
            components, count = ndimage.label(mask, structure)
            if count <= 1:
                continue
            sizes = np.bincount(components.ravel(), minlength=count + 1)
            sizes[0] = 0
            stray = components != int(np.argmax(sizes))
            stray &= mask
            del components, mask
            sub = post[box]
            values = sub[stray]
            if last:
                values[:] = 0
                values[:, background] = 1
            else:
                values[:, c] = 0
                total = values.sum(axis=-1, keepdims=True)
                empty = total[:, 0] <= 0
                values /= np.where(total > 0, total, 1)
                values[empty, background] = 1
            sub[stray] = values
            new = np.argmax(values, axis=-1).astype(np.int32)
            region[stray] = new
            gained.update(np.unique(new).tolist())
        todo = gained - {background}
        if not todo:
            break
    # holes: background voxels enclosed by the brain get the label of the nearest structure
    foreground = idx != background
    holes = ndimage.binary_fill_holes(foreground) & ~foreground
    box = _box(holes, margin=1)
    if box is not None:
        fg = foreground[box]
        _, nearest = ndimage.distance_transform_edt(~fg, return_indices=True)
        hole = holes[box]
        region = idx[box]
        fill = region[tuple(n[hole] for n in nearest)]
        region[hole] = fill
        sub = post[box]
        values = np.zeros((fill.size, K), np.float32)
        values[np.arange(fill.size), fill] = 1
        sub[hole] = values
    return idx


def structure_volumes(post: np.ndarray, channels: np.ndarray, background: int = 0) -> np.ndarray:
    """Soft voxel count of each channel (see :meth:`Segmentation.volumes`), float64 ``(K,)``.

    Args:
        post: ``(X, Y, Z, K)`` posteriors.
        channels: ``(X, Y, Z)`` segmentation (channel indices) made from them.
        background: channel of the background; its entry is its voxel count.
    """
    K = post.shape[-1]
    structure = ndimage.generate_binary_structure(3, 3)
    boxes = ndimage.find_objects(channels + 1, max_label=K)
    foreground = channels != background
    regions = {}  # channel -> (box, voxels where it counts: found there or next to it)
    total = np.zeros(channels.shape, np.float64)
    for c, box in enumerate(boxes):
        if box is None or c == background:
            continue
        box = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, channels.shape))
        region = ndimage.binary_dilation(channels[box] == c, structure) & foreground[box]
        regions[c] = (box, region)
        total[box][region] += post[box][..., c][region]
    total[total <= 0] = 1.0  # unreachable for an argmax segmentation; no division by zero
    sums = np.zeros(K, np.float64)
    for c, (box, region) in regions.items():
        sums[c] = float(np.sum(post[box][..., c][region] / total[box][region]))
    sums[background] = float(np.sum(~foreground))
    return sums


def _box(mask: np.ndarray, margin: int = 0):
    nz = np.nonzero(mask)
    if nz[0].size == 0:
        return None
    return tuple(slice(max(int(i.min()) - margin, 0), min(int(i.max()) + 1 + margin, n))
                 for i, n in zip(nz, mask.shape))
