"""Real ``(scan, label map)`` pairs for supervised training: reading, checking, normalising
and batching (:class:`PairSet`, :func:`load_pairs`, :func:`pair_batches`).

Scans and label maps are read, checked and reoriented to RAS; scans are standardised to
[0, 1] (:func:`robust_normalise`) or by z-score (:func:`standardise_pairs`); the voxel size of
each scan is kept, as prediction resamples scans to the training resolution.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field

import numpy as np

from lab2im.errors import InputError
from lab2im.io import check_image, format_mm, list_volume_files, load_volume
from lab2im.normalisation import check_method, normalise_intensities, zscore_foreground
from lab2im.volumes import crop_or_pad


def robust_normalise(data: np.ndarray) -> np.ndarray:
    """Map each channel's 0.5th-99.5th percentiles linearly to [0, 1] and clip (float32):
    :func:`lab2im.normalisation.normalise_intensities` with ``"percentile"``, the prediction
    pipeline's normalisation (where the percentiles coincide, the minimum and maximum are used;
    non-finite values count as 0; a constant channel becomes all zeros).

    Args:
        data: ``(X, Y, Z)`` or ``(X, Y, Z, C)``.
    """
    return normalise_intensities(data, "percentile")


@dataclass
class PairSet:
    """Scan/label-map pairs, read, checked, reoriented to RAS and normalised.

    Attributes:
        image_files, label_files: the files, matched by sorted order (for 2D slices made by
            :func:`synthseg.training.slices.slice_pairs`: the volumes the slices come from).
        images: float32 ``(X, Y, Z, C)`` arrays in [0, 1]; ``labels``: int32 ``(X, Y, Z)``
            (or ``(H, W, C)`` and ``(H, W)`` for 2D pairs).
        n_channels: image channels (the same for every scan).
        found: sorted labels present in the label maps.
        info: how the pairs were made, saved in the run's ``options.json`` (``data`` section),
            e.g. ``{"slices": {"axis": 2, "k": 3}}`` for 2.5D slices.
        voxel_sizes: voxel size (mm, RAS axes) of each scan read (empty when unknown).
        sources: for each pair, the index (in ``image_files``) of the scan it was cut from
            (slices of :func:`synthseg.training.slices.slice_pairs`); empty: each pair is a whole scan.
    """

    image_files: list
    label_files: list
    images: list
    labels: list
    n_channels: int
    found: list
    info: dict = field(default_factory=dict)
    voxel_sizes: list = field(default_factory=list)
    sources: list = field(default_factory=list)

    @property
    def ndim(self) -> int:
        """Spatial dimensions of the pairs (3 for volumes, 2 for slices)."""
        return int(self.labels[0].ndim)

    @property
    def voxel_size(self) -> list[float] | None:
        """The median voxel size (mm, per RAS axis) of the scans, ``None`` when unknown: the
        resolution the network learns at, to which prediction resamples scans."""
        if not self.voxel_sizes:
            return None
        return [round(float(v), 6) for v in np.median(np.asarray(self.voxel_sizes, float), axis=0)]

    @property
    def max_shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in np.max([lab.shape for lab in self.labels], axis=0))

    def set_labels(self, label_list) -> None:
        """Set labels that are not in ``label_list`` to background 0."""
        keep = np.asarray(sorted(label_list))
        for i, lab in enumerate(self.labels):
            self.labels[i] = np.where(np.isin(lab, keep), lab, 0).astype(np.int32)


def load_pairs(images, labels, what: str = "training") -> PairSet:
    """Read scan/label-map pairs (files, folders, ``.txt`` lists or lists of paths).

    Scans are read with :func:`lab2im.io.load_volume`, label maps with
    :func:`synthseg.generation.brain_generator.read_label_map`; both are reoriented to RAS, and scans are
    normalised with :func:`robust_normalise`.

    Raises:
        InputError: no files, different numbers of scans and label maps, an unreadable file,
            a scan that is 2D (an axis of one voxel) or has NaN/infinite voxels or is empty
            (:func:`lab2im.io.check_image`), a scan and its label map on different grids (the
            message names both), or scans with different numbers of channels.
    """
    from lab2im.geometry import reorient_to_canonical
    from synthseg.generation.brain_generator import read_label_map

    image_files = list_volume_files(images, f"{what} image")
    label_files = list_volume_files(labels, f"{what} label map")
    if len(image_files) != len(label_files):
        raise InputError(f"{len(image_files)} {what} image(s) but {len(label_files)} label map(s) "
                         f"(images: {images}, label maps: {labels}); pairs are matched by sorted file "
                         "name, so there must be as many of each")
    out_images, out_labels, channels, found, voxel_sizes = [], [], None, set(), []
    for img_file, lab_file in zip(image_files, label_files):
        vol = load_volume(img_file)
        if vol.data.ndim == 4 and vol.data.shape[-1] == 1:
            vol.data = vol.data[..., 0]
        if vol.data.ndim not in (3, 4):
            raise InputError(f"image is {vol.data.ndim}D (shape {vol.data.shape}); expected a 3D scan "
                             "(optionally with channels last)", img_file)
        check_image(vol.data, img_file)  # 2D or a single voxel, NaN/Inf voxels, empty: refused
        lab = read_label_map(lab_file)  # checked and reoriented to RAS
        vol, _ = reorient_to_canonical(vol)
        if vol.shape[:3] != lab.shape or not np.allclose(vol.affine, lab.affine, atol=1e-3):
            diff = (f"shapes {vol.shape[:3]} and {lab.shape}" if vol.shape[:3] != lab.shape else
                    f"voxel-to-world matrices differ by up to {np.abs(vol.affine - lab.affine).max():.3g} mm")
            raise InputError(f"image and its label map {lab_file} are not on the same voxel grid ({diff}, "
                             "after reorientation to RAS); resample the label map to the image "
                             "(lab2im.geometry.resample_to_grid, order=0)", img_file)
        n_ch = 1 if vol.data.ndim == 3 else int(vol.data.shape[-1])
        if channels is not None and n_ch != channels:
            raise InputError(f"image has {n_ch} channel(s) but {image_files[0]} has {channels}", img_file)
        channels = n_ch
        data = robust_normalise(vol.data)
        out_images.append(data[..., None] if data.ndim == 3 else data)
        out_labels.append(lab.data)
        voxel_sizes.append([float(v) for v in vol.voxel_size])
        found.update(np.unique(lab.data).tolist())
    sizes = np.asarray(voxel_sizes)
    if np.any(sizes.max(axis=0) > 1.1 * sizes.min(axis=0)):
        warnings.warn(f"{what} scans have voxel sizes from {format_mm(sizes.min(axis=0))} to "
                      f"{format_mm(sizes.max(axis=0))} "
                      f"mm; the network learns them as they are, and prediction resamples scans to the median, "
                      f"{format_mm(np.median(sizes, axis=0))} mm", stacklevel=2)
    return PairSet(image_files, label_files, out_images, out_labels, channels, sorted(int(v) for v in found),
                   voxel_sizes=voxel_sizes)


def standardise_pairs(pairs: PairSet, method: str) -> PairSet:
    """A copy of ``pairs`` (read with the ``"percentile"`` normalisation, as :func:`load_pairs`
    does) with its images standardised by ``method`` instead: the same result as
    :func:`lab2im.normalisation.normalise_intensities` with ``method`` on the scans as read."""
    if check_method(method) == "percentile":
        return pairs
    images = []
    for image in pairs.images:
        out = np.empty(image.shape, np.float32)
        for c in range(image.shape[-1]):
            out[..., c] = zscore_foreground(image[..., c])
        images.append(out)
    return dataclasses.replace(pairs, images=images)


def pair_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, start_step: int,
                 partners: bool = False):
    """Endless minibatches ``((images, labels), dummy)``; the pairs of step ``s`` depend only
    on ``(seed, s)``, so a resumed run draws what the uninterrupted run would have drawn.

    With ``partners`` (mixup), ``((images, labels, partner_images, partner_labels), dummy)``:
    a second pair for each sample, drawn after the first (the first pairs are those drawn
    without ``partners``)."""
    step = start_step
    dummy = np.zeros((batch_size, 1), np.float32)
    while True:
        rng = np.random.default_rng([seed, step])
        idx = rng.integers(0, len(images), size=batch_size)
        if partners:
            other = rng.integers(0, len(images), size=batch_size)
            yield (images[idx], labels[idx].astype(np.int32), images[other], labels[other].astype(np.int32)), dummy
        else:
            yield (images[idx], labels[idx].astype(np.int32)), dummy
        step += 1


def stack_pairs(pairs: PairSet, shape) -> tuple[np.ndarray, np.ndarray]:
    """Pad/crop every pair (centred) to ``shape``: images ``(N, *shape, C)`` float32 and
    labels ``(N, *shape, 1)`` in the smallest integer type that holds them."""
    top = max(int(lab.max()) for lab in pairs.labels)
    dtype = np.uint8 if top < 256 else np.int16 if top < 32768 else np.int32
    images = np.stack([crop_or_pad(im, shape)[0] for im in pairs.images])
    labels = np.stack([crop_or_pad(lab, shape)[0].astype(dtype) for lab in pairs.labels])[..., None]
    return images, labels
