"""``BrainGenerator``: random synthetic brain scans from label maps, in three lines.

    >>> from synthseg import BrainGenerator
    >>> gen = BrainGenerator("training_labels/", seed=0)
    >>> image, labels = gen.generate_image()      # numpy arrays, on the label maps' grid

Label maps are read once, checked (integer 3D maps whose labels are all generation labels),
reoriented to RAS and padded to a common shape; each call then feeds randomly chosen maps
through the labels-to-image model (see :mod:`lab2im.model`).
"""
from __future__ import annotations

import dataclasses
import os
import warnings

import numpy as np

from lab2im.errors import InputError
from lab2im.geometry import reorient_to_canonical
from lab2im.io import Volume, dimension_problem, list_volume_files, load_volume
from lab2im.options import GeneratorOptions
from lab2im.volumes import crop_or_pad
from synthseg.data import labels as protocol


def brain_options(**overrides) -> GeneratorOptions:
    """Generator options for label maps in the SynthSeg protocol (:mod:`synthseg.data.labels`).

    Generation labels include skull and scalp (mapped to background in the target), each
    split at random into parts of independent intensities, and so is the air around the head
    (:func:`synthseg.data.labels.extra_cerebral_partitions`); left and right counterparts share an
    intensity class and are swapped by the flip. Any option can be
    overridden by keyword, e.g. ``brain_options(output_shape=(160, 160, 160))``.
    """
    gen = [int(v) for v in protocol.generation_labels()]
    to_seg = protocol.generation_to_segmentation()
    classes = protocol.tissue_classes()
    base = dict(generation_labels=gen, segmentation_labels=[to_seg[v] for v in gen],
                generation_classes=[classes[v] for v in gen], lr_pairs=protocol.lr_pairs(),
                partitions=protocol.extra_cerebral_partitions())
    base.update(overrides)
    return GeneratorOptions(**base)


def read_label_map(path: str | os.PathLike) -> Volume:
    """Read one label map, reoriented to RAS, as int32.

    Raises:
        InputError: unreadable file, not 3D (a trailing axis of size 1 is dropped; an axis of
            one voxel among the first three makes it 2D, or a single voxel), empty (no voxels or
            all background), NaN/infinite, non-integer or negative values.
    """
    vol = load_volume(path)
    data = vol.data
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"label map is {data.ndim}D (shape {data.shape}); expected a 3D label map", path)
    if data.size == 0:
        raise InputError("label map has no voxels", path)
    problem = dimension_problem(data.shape, "label map")  # an axis of 1 voxel: 2D, or a single voxel
    if problem:
        raise InputError(problem, path)
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)):
            raise InputError("label map contains NaN or infinite values", path)
        if not np.all(np.equal(np.mod(data, 1), 0)):
            raise InputError(f"label map is not integer (data type {data.dtype} with fractional "
                             "values); is this an intensity image rather than a label map?", path)
    if data.min() < 0:
        raise InputError(f"label map contains negative labels (min {data.min()})", path)
    if not np.any(data):
        raise InputError("label map is empty (all voxels are background)", path)
    vol.data = data.astype(np.int32)
    canonical, _ = reorient_to_canonical(vol)
    return canonical


class LabelMapSet:
    """Label maps read, checked and padded to one shape, with the options that fit them.

    Args:
        labels_dir: a label map file, a folder of them, a ``.txt`` list or a list of paths.
        options: generation options; by default :func:`brain_options` when every label found
            belongs to the SynthSeg protocol, else each label found is its own generation and
            segmentation label.
        require_same_shape: refuse maps of different shapes (instead of padding them) unless
            ``output_shape`` is set.
        **overrides: option fields to change.

    Attributes:
        files: the label map paths; ``maps``: int32 ``(N, X, Y, Z, 1)``; ``shape``: ``(X, Y, Z)``;
        ``options``; ``affine``: ``(4, 4)`` RAS voxel-to-world matrix of the output grid (a
        random crop is placed at the centre).

    Raises:
        InputError: bad label maps or options (the message names the file and the problem).
    """

    def __init__(self, labels_dir, options: GeneratorOptions | None = None,
                 require_same_shape: bool = False, **overrides):
        self.files = list_volume_files(labels_dir, "label map")
        maps = [read_label_map(f) for f in self.files]
        _check_voxel_sizes(maps)

        found = sorted(set().union(*(np.unique(m.data).tolist() for m in maps)))
        if options is None:
            voxel = overrides.pop("voxel_size", float(maps[0].voxel_size.mean()))
            if "generation_labels" in overrides:  # the caller's own label set
                options = GeneratorOptions(voxel_size=voxel, **overrides)
            elif set(found) <= set(protocol.generation_labels().tolist()):
                options = brain_options(voxel_size=voxel, **overrides)
            else:
                options = GeneratorOptions(generation_labels=found, voxel_size=voxel, **overrides)
        elif overrides:
            options = dataclasses.replace(options, **overrides)
        self.options = options

        allowed = set(options.generation_labels)
        for f, m in zip(self.files, maps):
            extra = sorted(set(np.unique(m.data).tolist()) - allowed)
            if extra:
                raise InputError(f"label map holds labels that are not generation labels: {extra[:20]}"
                                 f"{' ...' if len(extra) > 20 else ''}", f)

        shapes = sorted({m.shape for m in maps})
        if require_same_shape and len(shapes) > 1 and options.output_shape is None:
            raise InputError(f"label maps have different shapes {shapes[:4]}; set output_shape (the crop "
                             "size) or resample them to one grid", self.files[0].parent)
        self.shape = tuple(int(n) for n in np.max([m.shape for m in maps], axis=0))
        self.maps = np.stack([crop_or_pad(m.data, self.shape)[0] for m in maps])[..., None]
        out_shape = options.output_shape or self.shape
        if len(out_shape) != 3:
            raise InputError(f"output_shape must have 3 entries for 3D label maps, got {out_shape}")
        ref_affine = crop_or_pad(maps[0].data, self.shape)[1].apply_to_affine(maps[0].affine)
        shift = (np.array(self.shape) - np.array(out_shape)) // 2
        self.affine = ref_affine.copy()
        self.affine[:3, 3] = ref_affine[:3, :3] @ shift + ref_affine[:3, 3]


def _check_voxel_sizes(maps):
    ref = maps[0].voxel_size
    for m in maps[1:]:
        if not np.allclose(m.voxel_size, ref, atol=1e-3):
            raise InputError(f"voxel size {np.round(m.voxel_size, 3).tolist()} mm differs from "
                             f"{np.round(ref, 3).tolist()} mm of {maps[0].path}; resample the label maps "
                             "to one voxel size (lab2im.geometry.resample_volume, order=0)", m.path)
    if not np.allclose(ref, ref.mean(), rtol=0.05):
        warnings.warn(f"{maps[0].path}: anisotropic voxels {np.round(ref, 3).tolist()} mm; the "
                      "deformation treats voxels as isotropic", stacklevel=3)


class BrainGenerator:
    """Generate random synthetic scans (and their segmentations) from label maps.

    Args:
        labels_dir: a label map file, a folder of them, a ``.txt`` list or a list of paths.
            Maps must share a voxel size; they are padded to a common shape.
        options: :class:`~lab2im.options.GeneratorOptions`. By default :func:`brain_options`
            when every label found belongs to the SynthSeg protocol, else options that use
            each label found as its own generation and segmentation label.
        batch_size: label maps per minibatch.
        seed: seed of the whole generator (label-map choice and every random layer).
        **overrides: option fields to change, e.g. ``output_shape=(160, 160, 160)``,
            ``prior_means="means.npy"``.

    Attributes:
        options: the options in use.
        files: the label map files.
        affine: ``(4, 4)`` voxel-to-world matrix of the output grid (RAS; a random crop is
            placed at the centre of the padded label maps).
        model: the Keras labels-to-image model.

    Raises:
        InputError: bad label maps or options (the message names the file and the problem).
    """

    def __init__(self, labels_dir, options: GeneratorOptions | None = None, batch_size: int = 1,
                 seed: int | None = None, **overrides):
        data = LabelMapSet(labels_dir, options, **overrides)
        self.files, self.options, self.affine = data.files, data.options, data.affine
        self.label_maps, self.input_shape = data.maps, data.shape
        self.batch_size = int(batch_size)
        self._rng = np.random.default_rng(seed)
        from lab2im.model import (
            labels_to_image_model,  # imports Keras: keep it out of module import
        )

        self.model = labels_to_image_model(self.options, self.input_shape, batch_size=self.batch_size,
                                           seed=seed)

    def generate_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """One minibatch: images ``(B, X, Y, Z, C)`` float32 in [0, 1], labels ``(B, X, Y, Z)`` int32."""
        idx = self._rng.integers(0, len(self.label_maps), size=self.batch_size)
        image, labels = self.model.predict_on_batch(self.label_maps[idx])
        return np.asarray(image), np.asarray(labels)[..., 0]

    def generate_image(self, return_parameters: bool = False):
        """One synthetic scan and its segmentation.

        Args:
            return_parameters: also return what every random stage drew for this scan
                (:func:`lab2im.model.generate_with_parameters`: the affine and deformation, the
                Gaussian means and standard deviations per label, bias field, resolution, gamma,
                ...), from the same random streams: the scan is the one the generator would have
                made anyway. :func:`lab2im.model.replay` makes it again from them.

        Returns:
            ``image``: float32 ``(X, Y, Z)`` (``(X, Y, Z, C)`` for several channels), in [0, 1];
            ``labels``: int32 ``(X, Y, Z)`` segmentation labels. Both lie on :attr:`affine`.
            With ``return_parameters``, a third item: ``{stage name: {parameter: array}}``
            (arrays of the whole minibatch, first axis the sample).
        """
        if return_parameters:
            from lab2im.model import generate_with_parameters

            idx = self._rng.integers(0, len(self.label_maps), size=self.batch_size)
            image, labels, parameters = generate_with_parameters(self.model, self.label_maps[idx])
            image = image[0]
            return (image[..., 0] if image.shape[-1] == 1 else image), labels[0][..., 0], parameters
        image, labels = self.generate_batch()
        image = image[0]
        return (image[..., 0] if image.shape[-1] == 1 else image), labels[0]
