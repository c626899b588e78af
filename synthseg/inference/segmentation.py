"""One scan's segmentation: posteriors on the network grid, labels and posteriors on the scan's own grid, volumes (mm^3) and QC scores."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lab2im.geometry import (
    argmax_on_grid,
    resample_to_grid,
)
from lab2im.io import (
    Volume,
    voxel_size_of,
)
from lab2im.volumes import merge_stray_components
from synthseg.inference.model import DEFAULT_QC_THRESHOLD, SegmentationModel, background_channel
from synthseg.inference.postprocessing import clean_posteriors, structure_volumes
from synthseg.inference.preprocessing import Prepared, parse_crop, prepare_volume
from synthseg.inference.refinement import refine_posteriors, refined_rows_on_finer_grid
from synthseg.inference.tiling import (
    DEFAULT_TILE,
    DEFAULT_TILE_OVERLAP,
    tiled_posteriors,
)

#: voxels (network grid) by which the refinement may grow the network's cleaned brain (:func:`refine_and_clean`)
REFINED_GROWTH = 1
NATIVE_SLAB = 16  # voxels per slab along the first axis when mapping posteriors back (memory)
MARGIN_CHUNK = 8192  # voxels per chunk of posterior_margin (they stay in the CPU's cache)

#: overall quality scores below this are likely failures, for a model that names no threshold
#: of its own (:attr:`SegmentationModel.qc_threshold`; benchmarks/qc.py chooses one per network)
QC_THRESHOLD = DEFAULT_QC_THRESHOLD


@dataclass
class Segmentation:
    """The result of :func:`segment_volume` for one scan.

    Attributes:
        prepared: the preprocessed scan (network grid, records of every geometric change).
        channels: ``(X, Y, Z)`` int32 channel index of each voxel on the network grid.
        posteriors: ``(X, Y, Z, K)`` float32 on the network grid (after clean-up).
        labels: the model's labels (channel order).
        cleaned: the clean-up ran (:func:`clean_posteriors`); the native-grid labels are then
            cleaned too.
        raw_counts: ``(K,)`` voxels of each channel in the network's argmax before the clean-up
            (for :meth:`qc_scores`; ``None``: as after it).
        refined: the posteriors were refined by the scan's intensities
            (:mod:`synthseg.inference.refinement`); on a scan with finer voxels than the
            network's, the native-grid labels are then refined again at the scan's resolution.
        network_margin: ``(X, Y, Z)`` margin between the network's own two most likely
            posteriors, before the refinement (for :meth:`qc_scores`; ``None``: from
            :attr:`posteriors`).
    """

    prepared: Prepared
    channels: np.ndarray
    posteriors: np.ndarray
    labels: np.ndarray
    cleaned: bool = True
    raw_counts: np.ndarray | None = None
    refined: bool = False
    network_margin: np.ndarray | None = None

    def __post_init__(self):
        self._canonical = None
        self._native_rows = None  # (result of _native_refinement,) once computed

    @property
    def affine(self) -> np.ndarray:
        """Affine of the network grid (canonical RAS, model voxel size)."""
        return self.prepared.affine

    @property
    def background_channel(self) -> int:
        return background_channel(self.labels)

    @property
    def segmentation(self) -> np.ndarray:
        """Labels (FreeSurfer IDs, int32) on the network grid."""
        return self.labels[self.channels]

    def native_segmentation(self) -> np.ndarray:
        """Labels on the input's own grid (its shape and affine): :meth:`canonical_segmentation`
        with the input's axes."""
        return self.prepared.reorientation.undo(self.canonical_segmentation())

    def canonical_segmentation(self) -> np.ndarray:
        """Labels on the input's grid reoriented to RAS (its voxels, canonical axes).

        When nothing was resampled the labels are only moved (exact). Otherwise each native
        voxel gets the most likely label of the posteriors interpolated linearly at its centre
        (so, unless refined again as below, the result is the argmax of :meth:`native_posteriors`): a model coarser than the
        scan gives smooth, sub-voxel boundaries instead of blocks of network voxels. Computed in
        slabs of :data:`NATIVE_SLAB` voxels (:func:`lab2im.geometry.argmax_on_grid`) to bound memory.
        When the posteriors were :attr:`refined` and the scan's voxels are finer than the
        network's, the brain voxels are then refined at the scan's own resolution with its own
        intensities (:func:`synthseg.inference.refinement.refined_rows_on_finer_grid`).
        """
        prep = self.prepared
        if not prep.resampled:
            return self.segmentation
        if self._canonical is None:
            reo = prep.reorientation
            if self.native_refined and self._native_rows is None:  # one interpolation pass for both
                channels = np.empty(reo.canonical_shape, np.int32)
                found = self._native_refinement(argmax_out=channels)
            else:
                channels = argmax_on_grid(self.posteriors, prep.affine, reo.canonical_shape, reo.canonical_affine,
                                          fill=self.background_channel, slab=NATIVE_SLAB)
                found = self._native_refinement()
            if found is not None:
                mask, refined, rows = found
                channels[mask] = refined[np.argmax(rows, axis=1)]
            if self.cleaned:  # interpolation leaves islands at boundaries: one piece per structure here too
                channels = merge_stray_components(channels, self.background_channel)
            self._canonical = channels
        return self.labels[self._canonical]

    @property
    def native_refined(self) -> bool:
        """The native-grid labels are refined at the scan's resolution (see :meth:`canonical_segmentation`):
        refined posteriors, a resampled scan, and some axis of the scan finer than the network's."""
        prep = self.prepared
        if not (self.refined and prep.resampled and prep.canonical_image is not None):
            return False
        native = voxel_size_of(prep.reorientation.canonical_affine)
        return bool(np.any(native < 0.95 * voxel_size_of(prep.affine)))

    def native_posteriors(self) -> np.ndarray:
        """Posteriors on the input's own grid (linear interpolation when it was resampled).

        When the labels are refined at the scan's resolution (:attr:`native_refined`), so are
        these, by the same refinement: in the brain voxels it refines, each structure's
        posterior is its share of the interpolated brain probability."""
        if not self.native_refined:
            out = self._to_native(self.posteriors, order=1)
            if self.prepared.resampled:
                outside = out.sum(axis=-1) <= 0
                out[outside, self.background_channel] = 1
            return out
        prep, reo = self.prepared, self.prepared.reorientation
        out = resample_to_grid(self.posteriors, prep.affine, reo.canonical_shape, reo.canonical_affine, order=1, fill=0)
        outside = out.sum(axis=-1) <= 0
        out[outside, self.background_channel] = 1
        found = self._native_refinement()
        if found is not None:
            mask, channels, rows = found
            inside = out[mask]
            inside[:, [k for k in range(out.shape[-1]) if k != self.background_channel]] = 0.0
            inside[:, channels] = rows
            out[mask] = inside
        return reo.undo(out)

    def _native_refinement(self, argmax_out=None):
        """The refinement at the scan's resolution, computed once for the labels and the
        posteriors: ``(mask, channels, rows)`` of :func:`refined_rows_on_finer_grid` on the
        canonical grid, or ``None`` (not :attr:`native_refined`, or nothing to refine);
        ``argmax_out`` is filled as there when the refinement is computed by this call."""
        if not self.native_refined:
            return None
        if self._native_rows is None:
            from lab2im.normalisation import normalise_intensities

            prep = self.prepared
            image = normalise_intensities(np.asarray(prep.canonical_image, np.float32))
            found = refined_rows_on_finer_grid(self.posteriors, prep.affine, self.background_channel, image,
                                               prep.reorientation.canonical_affine, argmax_out=argmax_out)
            self._native_rows = (found,)
        return self._native_rows[0]

    def _to_native(self, data: np.ndarray, order: int) -> np.ndarray:
        prep = self.prepared
        if not prep.resampled:  # the network grid is the canonical grid: only move voxels
            return prep.reorientation.undo(data)
        return resample_to_grid(data, prep.affine, prep.native_shape, prep.native_affine, order=order, fill=0)

    @property
    def voxel_volume(self) -> float:
        """Volume of one network-grid voxel (mm³)."""
        return float(np.prod(voxel_size_of(self.affine)))

    def volumes(self) -> dict[int, float]:
        """Soft volume of each label (mm³), consistent with the segmentation.

        Only voxels segmented as a structure count (the background's posteriors, and those of
        voxels the clean-up removed, do not), and in each of them only the structures found in
        it or next to it (26-neighbours): a structure's posterior spread thinly far from where
        it was found does not count. Each counted voxel's posteriors are renormalised over
        those structures, so it contributes exactly one voxel volume: the structures' volumes
        sum to the segmented volume, and each is its voxel count give or take the partial
        volume at its boundary. The background's entry is its voxel count.

        When the labels are refined at the scan's own, finer resolution (:attr:`native_refined`),
        the volumes are instead the voxel counts of :meth:`canonical_segmentation` times the
        scan's voxel volume, so that they stay those of the segmentation the user gets.
        """
        if self.native_refined:
            self.canonical_segmentation()  # computed once, kept
            counts = np.bincount(self._canonical.ravel(), minlength=self.labels.size)
            voxel = float(np.prod(voxel_size_of(self.prepared.reorientation.canonical_affine)))
            return {int(label): float(c) * voxel for label, c in zip(self.labels, counts)}
        sums = structure_volumes(self.posteriors, self.channels, self.background_channel)
        return {int(label): float(s) * self.voxel_volume for label, s in zip(self.labels, sums)}

    def total_intracranial_volume(self) -> float:
        """Sum of the soft volumes of every non-background label (mm³): the segmented volume."""
        return float(sum(v for label, v in self.volumes().items() if label != 0))

    def qc_scores(self) -> tuple[float, dict[str, float | None]]:
        """Quality score of the segmentation, per structure group (:data:`synthseg.data.labels.QC_GROUPS`)
        and overall, each in [0, 1].

        A group's score is its *confidence* (mean over its voxels of the margin between the
        network's highest and second-highest posterior, before any refinement: how sure the
        network was, which the refinement's sharper or softer posteriors would hide; on
        synthetic scans the refined posteriors' margins put 18% of the good scans under 0.5,
        the network's 6%) times its *coherence* (the share of the voxels the network gave to
        the group that the clean-up kept: a scattered, fragmented prediction loses much). A
        group the model segments but did not find scores 0. The overall score is the mean over
        the groups the model segments; a scan scoring below the model's
        :attr:`~synthseg.inference.model.SegmentationModel.qc_threshold` is likely a failure
        (``benchmarks/qc.py`` measures how the scores follow the true Dice on good and degraded
        scans, and chooses the threshold).

        Returns:
            ``(overall score, {group name: score, or None when the model has no label of it})``.
        """
        from synthseg.data.labels import QC_GROUPS

        channels = self.channels
        margin = (self.network_margin if self.network_margin is not None else posterior_margin(self.posteriors)).ravel()
        K = self.labels.size
        flat = channels.ravel()
        counts = np.bincount(flat, minlength=K)
        margins = np.bincount(flat, weights=margin, minlength=K)
        raw = counts if self.raw_counts is None else self.raw_counts
        per = {}
        for name, ids in QC_GROUPS.items():
            cs = [c for c, label in enumerate(self.labels) if int(label) in ids]
            if not cs:
                per[name] = None
                continue
            n, n_raw = counts[cs].sum(), raw[cs].sum()
            per[name] = float(margins[cs].sum() / n * min(1.0, n / n_raw)) if n and n_raw else 0.0
        scored = [v for v in per.values() if v is not None]
        return (float(np.mean(scored)) if scored else 0.0), per


def segment_volume(volume: Volume, model: SegmentationModel, flip: bool = True, crop=None, cleanup: bool = True,
                   tile_size=DEFAULT_TILE, tile_overlap: int = DEFAULT_TILE_OVERLAP,
                   refine: bool | None = None) -> Segmentation:
    """Segment one scan held in memory (steps 2-8 of the module docstring).

    Args:
        volume: 3D (or 4D: first volume) :class:`~lab2im.io.Volume` with its affine.
        model: from :func:`load_model`.
        flip, crop, cleanup, tile_size, tile_overlap, refine: as in :func:`predict`.

    Returns:
        A :class:`Segmentation` (map to the input's grid with its ``native_*`` methods).
    """
    return segment_prepared(prepare_volume(volume, model, parse_crop(crop)), model, flip, cleanup, tile_size, tile_overlap,
                            refine)


def segment_prepared(prep: Prepared, model: SegmentationModel, flip: bool, cleanup: bool, tile_size,
                     tile_overlap: int, refine: bool | None = None) -> Segmentation:
    """Steps 6-8 on a prepared scan; ``refine`` ``None``: the model's default (:attr:`SegmentationModel.refine`)."""
    image = prep.window.apply(prep.image, 0.0)
    if model.slices is not None:
        from synthseg.training.slices import slice_posteriors

        post = slice_posteriors(model, image, flip, prep.window)
    else:
        post = tiled_posteriors(model, image, prep.window, flip, tile_size, tile_overlap)
    refined = bool(model.refine if refine is None else refine)
    post, channels, raw, margin = refine_and_clean(prep.image, post, model.background_channel, refined, cleanup)
    return Segmentation(prepared=prep, channels=channels, posteriors=post, labels=model.labels, cleaned=cleanup,
                        raw_counts=raw, refined=refined, network_margin=margin)


def refine_and_clean(image, post, background: int, refine: bool, cleanup: bool):
    """The network's posteriors to labels on the network grid: refined by the scan's intensities
    (:func:`~synthseg.inference.refinement.refine_posteriors`), then cleaned (:func:`clean_posteriors`).

    The refinement relabels the brain the network found and may move its edge by
    :data:`REFINED_GROWTH` voxels, no more. With the clean-up, only the voxels of the network's
    own cleaned brain, grown by that many voxels (6-neighbours), are refined, and every other
    voxel is background before the refined posteriors are cleaned. Without this, a stray piece
    the network's clean-up removes (a structure found in the neck) could be relabelled by its
    intensity into a structure it touches (the spinal canal's fluid into the brain's CSF) and
    kept; with no growth at all, the refinement could move the brain's edge inwards but never
    outwards, and fragments of a thin CSF layer the network found but its clean-up dropped
    would stay dropped.

    Args:
        image: ``(X, Y, Z)`` the scan's intensities on the network grid.
        post: ``(X, Y, Z, K)`` the network's posteriors (may be modified in place).
        background: the background's channel.

    Returns:
        ``(posteriors, channels, raw_counts, network_margin)`` as :class:`Segmentation`'s fields
        (``raw_counts``: per channel, the voxels of the argmax before the final clean-up;
        ``network_margin``: ``None`` when not refined).
    """
    margin = network_brain = None
    if refine:
        margin = posterior_margin(post)
        if cleanup:
            network_brain = clean_posteriors(post.copy(), background) != background
            network_brain = ndimage.binary_dilation(network_brain, iterations=REFINED_GROWTH)  # across faces
        post = refine_posteriors(image, post, background, region=network_brain, in_place=True)
    argmax = np.argmax(post, axis=-1).astype(np.int32)
    raw = np.bincount(argmax.ravel(), minlength=post.shape[-1])
    if not cleanup:
        return post, argmax, raw, margin
    del argmax
    if network_brain is not None:
        outside = ~network_brain
        post[outside] = 0.0
        post[outside, background] = 1.0
    return post, clean_posteriors(post, background), raw, margin


def posterior_margin(posteriors) -> np.ndarray:
    """``(X, Y, Z)`` float32: the highest minus the second-highest of ``(X, Y, Z, K)`` posteriors
    (0 where the highest is shared).

    A running top two over the channels, a few thousand voxels at a time (they stay in the
    CPU's cache): exact, and about ten times faster than ``np.partition`` along the last axis."""
    posteriors = np.asarray(posteriors)
    flat = posteriors.reshape(-1, posteriors.shape[-1])
    out = np.empty(flat.shape[0], np.float32)
    for start in range(0, flat.shape[0], MARGIN_CHUNK):
        part = flat[start:start + MARGIN_CHUNK]
        first = part[:, 0].astype(np.float32)
        second = np.full_like(first, -np.inf)
        for c in range(1, part.shape[1]):
            value = part[:, c]
            np.maximum(second, np.minimum(first, value), out=second)
            np.maximum(first, value, out=first)
        out[start:start + MARGIN_CHUNK] = first - second if part.shape[1] > 1 else first
    return out.reshape(posteriors.shape[:-1])
