"""2D and 2.5D segmentation of 3D scans: train a 2D U-Net on slices, segment volumes slice by slice.

    >>> from synthseg.training.slices import slice_training
    >>> from synthseg.training.supervised import SupervisedOptions
    >>> from synthseg.nn.unet import UNetOptions
    >>> slice_training("scans/", "segs/", "runs/axial", axis=2, k=3,       # 2.5D, axial slices
    ...                unet=UNetOptions(ndim=2), options=SupervisedOptions(steps=5000))
    >>> from synthseg.inference import predict
    >>> predict("new_scans/", "out/", "runs/axial")    # the run says: axial slices, 3 as channels

**Axes.** Scans and label maps are reoriented to canonical RAS first
(:func:`lab2im.geometry.reorient_to_canonical`: voxels are moved, never interpolated), so
``axis`` means the same anatomical direction whatever the files' orientation:

======  ========  ==================================================
axis    slices    in-plane axes of a slice (rows, columns)
======  ========  ==================================================
0       sagittal  1, 2: posterior -> anterior, inferior -> superior
1       coronal   0, 2: left -> right, inferior -> superior
2       axial     0, 1: left -> right, posterior -> anterior
======  ========  ==================================================

**2.5D.** With ``k > 1`` (odd), each slice is given with its ``(k - 1) / 2`` neighbours on
either side as channels: channel ``j * C + c`` of slice ``i`` is image channel ``c`` of slice
``i + j - (k - 1) / 2`` (``j = 0 .. k - 1``, in increasing slice index; ``C`` image channels).
Beyond the ends of the volume the end slice is repeated (edge padding). The label of a stack is
that of its centre slice. ``k = 1`` is plain 2D.

**Training** (:func:`slice_training`): the pairs are read and checked as
:func:`synthseg.training.supervised.supervised_training` does, standardised per whole volume (the
augmentation's ``normalisation``, as prediction does), cut into slices (:func:`slice_pairs`;
slices whose label map is all background are skipped by default) and trained on with
``supervised_training`` and a 2D U-Net (augmentation in the slice plane; validation Dice per
slice). The run's
``options.json`` records ``"slices": {"axis": a, "k": k}`` in its ``data`` section, which is
how prediction knows the model is a slice model.

**Prediction**: :func:`synthseg.inference.model.load_model` reads that record, and
:func:`synthseg.inference.batch.predict` / ``synthseg predict --model RUN`` then run the same pipeline as
for a 3D model (reorientation, resampling to the model's voxel size, normalisation, clean-up,
mapping back to the native grid, atomic outputs); only the network step differs
(:func:`slice_posteriors`): the volume is cut into slices (stacks) along ``axis``, predicted in
batches of :data:`DEFAULT_BATCH` slices, and the posteriors stacked back. The network grid is
padded to the U-Net's multiple in the slice plane only. Flip averaging flips each slice
left/right (and swaps the lateral label channels); for sagittal slices there is no left/right
axis in the plane, so there is no flip averaging (and no flip augmentation in training).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from lab2im.errors import InputError

#: slices per network call in prediction
DEFAULT_BATCH = 16
#: name of each slicing axis of a canonical RAS volume
AXIS_NAMES = ("sagittal", "coronal", "axial")
#: the left/right axis of a canonical RAS volume
LR_AXIS = 0


@dataclass(frozen=True)
class SliceSpec:
    """How 2D inputs are cut from a 3D RAS volume.

    Attributes:
        axis: axis across which the volume is sliced: 0 sagittal, 1 coronal, 2 axial (RAS).
        k: slices per input, odd: 1 is 2D, 3 or more 2.5D (neighbours as channels).
    """

    axis: int
    k: int = 1

    def __post_init__(self):
        for name in ("axis", "k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InputError(f"slice {name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.axis not in (0, 1, 2):
            raise InputError(f"slice axis must be 0 (sagittal), 1 (coronal) or 2 (axial), got {self.axis}")
        if self.k < 1 or self.k % 2 == 0:
            raise InputError(f"k (slices per input) must be odd and >= 1 (the centre slice and as many "
                             f"neighbours on each side), got {self.k}")

    @property
    def half(self) -> int:
        """Neighbours on each side of the centre slice."""
        return (self.k - 1) // 2

    @property
    def in_plane_axes(self) -> tuple[int, int]:
        """The volume axes that are a slice's rows and columns."""
        return tuple(a for a in range(3) if a != self.axis)

    @property
    def lr_axis(self) -> int | None:
        """Axis of a slice (0 or 1) that is left/right, ``None`` for sagittal slices."""
        return None if self.axis == LR_AXIS else self.in_plane_axes.index(LR_AXIS)

    @property
    def name(self) -> str:
        return AXIS_NAMES[self.axis]

    def to_dict(self) -> dict:
        return {"axis": self.axis, "k": self.k}

    @classmethod
    def from_dict(cls, d, source=None) -> "SliceSpec":
        if not isinstance(d, dict) or set(d) != {"axis", "k"}:
            raise InputError(f"slices must be a mapping with keys 'axis' and 'k', got {d!r}", source)
        try:
            return cls(d["axis"], d["k"])
        except InputError as exc:
            raise InputError(exc.problem, source) from None


# ----------------------------------------------------------------------------- slicing
def _pad_slices(volume: np.ndarray, spec: SliceSpec) -> np.ndarray:
    """``(X, Y, Z[, C])`` -> ``(N + 2 * half, H, W, C)``: slices first, edge-padded."""
    v = np.asarray(volume)
    if v.ndim == 3:
        v = v[..., None]
    if v.ndim != 4:
        raise InputError(f"expected a 3D volume (X, Y, Z) or (X, Y, Z, C), got shape {v.shape}")
    s = np.moveaxis(v, spec.axis, 0)
    h = spec.half
    return np.pad(s, [(h, h), (0, 0), (0, 0), (0, 0)], mode="edge") if h else s


def _stacks(padded: np.ndarray, start: int, stop: int, k: int) -> np.ndarray:
    """Stacks of the slices ``start .. stop - 1`` from :func:`_pad_slices`' output:
    ``(stop - start, H, W, k * C)``, channel ``j * C + c`` from slice ``i + j - half``."""
    return np.concatenate([padded[start + j:stop + j] for j in range(k)], axis=-1)


def stack_slices(volume: np.ndarray, axis: int, k: int = 1) -> np.ndarray:
    """Every slice of a RAS volume across ``axis``, with ``k`` slices (2.5D) as channels.

    Args:
        volume: ``(X, Y, Z)`` or ``(X, Y, Z, C)`` array.
        axis: 0 sagittal, 1 coronal, 2 axial.
        k: slices per stack (odd); see the module docstring for the channel order.

    Returns:
        ``(N, H, W, k * C)`` array (same dtype), ``N`` the size of ``axis`` and ``(H, W)`` the
        other two axes in order.
    """
    spec = SliceSpec(axis, k)
    padded = _pad_slices(volume, spec)
    return _stacks(padded, 0, padded.shape[0] - 2 * spec.half, spec.k)


def label_slices(labels: np.ndarray, axis: int) -> np.ndarray:
    """``(X, Y, Z)`` label map -> ``(N, H, W)`` slices across ``axis`` (a view)."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InputError(f"expected a 3D label map, got shape {labels.shape}")
    return np.moveaxis(labels, SliceSpec(axis).axis, 0)


def unstack_slices(slices: np.ndarray, axis: int) -> np.ndarray:
    """Inverse of :func:`label_slices`: ``(N, H, W, ...)`` slices back into a volume
    (``slices[i]`` becomes index ``i`` along ``axis``), a contiguous array."""
    return np.ascontiguousarray(np.moveaxis(np.asarray(slices), 0, SliceSpec(axis).axis))


def slice_pairs(pairs, spec: SliceSpec, skip_empty: bool = True, normalisation: str = "percentile"):
    """Cut volume pairs into 2D (or 2.5D) pairs.

    Args:
        pairs: a :class:`synthseg.data.pairs.PairSet` of volumes (RAS), as
            :func:`~synthseg.data.pairs.load_pairs` reads them.
        spec: the axis and ``k``.
        skip_empty: leave out the slices whose label map is all background.
        normalisation: intensity standardisation of each whole volume before slicing
            (:func:`synthseg.data.pairs.standardise_pairs`; ``"percentile"``: as read).

    Returns:
        A :class:`~synthseg.data.pairs.PairSet` of slices: images ``(H, W, k * C)``, labels
        ``(H, W)``, ``n_channels = k * C``; ``info`` records the spec (saved in the run) and
        the standardisation (so it is not applied again to single slices).

    Raises:
        InputError: no slice is left (every label map is background only).
    """
    from synthseg.data.pairs import PairSet, standardise_pairs

    if pairs.ndim != 3:
        raise InputError(f"slice_pairs needs 3D pairs, got {pairs.ndim}D ones", pairs.image_files[0])
    pairs = standardise_pairs(pairs, normalisation)
    images, labels, sources = [], [], []
    for volume, (image, lab) in enumerate(zip(pairs.images, pairs.labels)):
        stacks = stack_slices(image, spec.axis, spec.k)
        labs = label_slices(lab, spec.axis)
        keep = range(len(labs))
        if skip_empty:
            keep = np.flatnonzero(labs.reshape(len(labs), -1).any(axis=1))
        images.extend(stacks[i] for i in keep)
        labels.extend(np.ascontiguousarray(labs[i]) for i in keep)
        sources.extend([volume] * len(keep))
    if not labels:
        raise InputError("no slice holds a label other than background", pairs.label_files[0])
    return PairSet(list(pairs.image_files), list(pairs.label_files), images, labels,
                   pairs.n_channels * spec.k, list(pairs.found),
                   info={"slices": spec.to_dict(), "skip_empty_slices": bool(skip_empty),
                         "normalisation": normalisation}, voxel_sizes=list(pairs.voxel_sizes), sources=sources)


def in_plane_augmentation(augmentation, spec: SliceSpec):
    """The augmentation options for slices: the left/right flip axis of the volume becomes
    the slice's; sagittal slices (no left/right axis in the plane) get no flip."""
    if augmentation.flip_prob <= 0:
        return augmentation
    if augmentation.flip_axis == spec.axis:
        return dataclasses.replace(augmentation, flip_prob=0.0)
    return dataclasses.replace(augmentation, flip_axis=spec.in_plane_axes.index(augmentation.flip_axis))


# ----------------------------------------------------------------------------- training
def slice_training(images, labels, model_dir, axis: int, k: int = 1, validation=None, unet=None,
                   options=None, augmentation=None, skip_empty: bool = True, init_from=None,
                   freeze_encoder: bool = False, resume: bool = False, callbacks=()):
    """Train a 2D U-Net on slices (``k = 1``) or stacks of ``k`` slices (2.5D) of 3D pairs.

    Args:
        images, labels: 3D scans and label maps, as for
            :func:`synthseg.training.supervised.supervised_training` (matched by sorted order, each pair
            on one voxel grid).
        model_dir: the run folder (laid out as a supervised run's).
        axis: 0 sagittal, 1 coronal, 2 axial (after reorientation to RAS).
        k: slices per input (odd); ``k > 1`` gives the neighbours as channels.
        validation: ``(images, labels)`` of held-out 3D pairs, sliced the same way; scored per
            slice (mean over slices of the mean Dice over labels).
        unet: :class:`synthseg.nn.unet.UNetOptions` with ``ndim=2`` (default: a 2D U-Net with
            the default architecture).
        options: :class:`synthseg.training.supervised.SupervisedOptions`; ``crop_shape`` is 2D.
        augmentation: :class:`synthseg.training.augmentation.AugmentationOptions`, applied in the slice
            plane; the flip axis is the volume's (0, left/right) and is mapped into the plane
            (:func:`in_plane_augmentation`).
        skip_empty: leave out training slices whose label map is background only. Validation
            keeps every slice: it is scored volume by volume, as prediction segments.
        init_from, freeze_encoder, resume, callbacks: as for ``supervised_training`` (a resumed
            run must be given the same ``axis`` and ``k``).

    Returns:
        :class:`synthseg.training.supervised.SupervisedResult`.

    Raises:
        InputError: a bad axis or ``k`` (before anything is read), and everything
            ``supervised_training`` reports (image and label map on different grids, naming
            both files; mismatched counts; ...), all before training starts.
    """
    from pathlib import Path

    from synthseg.data.pairs import load_pairs
    from synthseg.training.augmentation import AugmentationOptions
    from synthseg.training.supervised import (
        load_supervised_options,
        supervised_training,
    )

    spec = SliceSpec(axis, k)
    if unet is not None and getattr(unet, "ndim", 2) != 2:
        raise InputError(f"slice training needs a 2D U-Net (UNetOptions(ndim=2)), got ndim={unet.ndim}")
    augmentation = augmentation or AugmentationOptions()
    if resume and (Path(model_dir) / "options.json").is_file():
        augmentation = load_supervised_options(model_dir)[2]  # the run's: standardise as it did
    train = slice_pairs(load_pairs(images, labels, "training"), spec, skip_empty, augmentation.normalisation)
    val = None
    if validation is not None:
        if not isinstance(validation, (tuple, list)) or len(validation) != 2:
            raise InputError("validation must be an (images, label maps) pair of sources")
        val = slice_pairs(load_pairs(validation[0], validation[1], "validation"), spec, False,
                          augmentation.normalisation)
    augmentation = in_plane_augmentation(augmentation, spec)
    return supervised_training(train, None, model_dir, validation=val, unet=unet, options=options,
                               augmentation=augmentation, init_from=init_from, freeze_encoder=freeze_encoder,
                               resume=resume, callbacks=callbacks)


# ----------------------------------------------------------------------------- prediction
def slice_posteriors(model, image: np.ndarray, flip: bool = True, window=None,
                     batch_size: int = DEFAULT_BATCH) -> np.ndarray:
    """Posteriors of a volume from a slice model, slice by slice.

    Args:
        model: a :class:`synthseg.inference.model.SegmentationModel` with ``slices`` set.
        image: ``(X, Y, Z)`` float32 normalised image on the network grid (RAS), the in-plane
            axes multiples of ``model.multiple``.
        flip: average each slice's prediction with that of the slice flipped left/right (label
            channels swapped); ignored for sagittal slices.
        window: the :class:`lab2im.volumes.CropPad` that made ``image`` from the network grid;
            the posteriors are then returned on that grid (voxels cropped away: background).
        batch_size: slices per network call.

    Returns:
        ``(X, Y, Z, K)`` float32 posteriors, summing to 1 over the last axis.
    """
    spec = model.slices
    image = np.asarray(image, dtype=np.float32)
    in_plane = [image.shape[a] for a in spec.in_plane_axes] if image.ndim == 3 else []
    if image.ndim != 3 or any(n % model.multiple for n in in_plane):
        raise InputError(f"image shape {image.shape} is not 3D with the {spec.name} slice plane "
                         f"(axes {spec.in_plane_axes}) a multiple of {model.multiple}")
    padded = _pad_slices(image, spec)
    n = image.shape[spec.axis]
    post = np.empty(image.shape + (model.n_labels,), np.float32)
    slices_first = np.moveaxis(post, spec.axis, 0)  # a view: writing slices fills ``post``
    flip_axis = 1 + spec.lr_axis if flip and spec.lr_axis is not None else None
    perm = model.flip_permutation()
    for start in range(0, n, max(1, int(batch_size))):
        stop = min(n, start + max(1, int(batch_size)))
        x = _stacks(padded, start, stop, spec.k)
        p = model._predict(x)
        if flip_axis is not None:
            flipped = model._predict(np.ascontiguousarray(np.flip(x, axis=flip_axis)))
            p = 0.5 * (p + np.flip(flipped, axis=flip_axis)[..., perm])
        slices_first[start:stop] = p
    if window is None:
        return post
    out = window.undo(post, 0.0)
    covered = window.undo(np.ones(window.shape, bool), False)
    out[~covered] = 0.0
    out[~covered, model.background_channel] = 1.0
    return out
