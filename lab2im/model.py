"""``labels_to_image_model``: the random layers composed into one Keras model.

Per minibatch, in this order: spatial deformation (affine + diffeomorphic, with random crop)
-> left/right flip -> random partition of chosen labels into parts -> per-label Gaussian intensities -> bias field -> resolution loss (and
optional blur) -> noise, clipping, min-max normalisation to [0, 1], gamma; and generation
labels converted to segmentation labels. Everything runs on the device Keras runs on.
"""
from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from lab2im.layers import (
    ConvertLabels,
    IntensityAugmentation,
    RandomBiasField,
    RandomBlur,
    RandomFlip,
    RandomPartition,
    RandomSpatialDeformation,
    SampleConditionalGMM,
    SimulateResolution,
)
from lab2im.options import GeneratorOptions

#: names of the random layers, in the order they are applied (and seeded)
STAGES = ("deformation", "flip", "gmm", "bias_field", "resolution", "blur", "intensity")
#: stages added later draw seeds after those of :data:`STAGES` (so the draws of the older
#: stages stay the same for a given seed); listed in the order they were added
LATER_STAGES = ("partition",)


def stage_seeds(seed: int | None) -> dict[str, int | None]:
    """Independent per-layer seeds derived from one model seed (``None`` stays ``None``)."""
    if seed is None:
        return dict.fromkeys(STAGES + LATER_STAGES)
    names = STAGES + LATER_STAGES
    states = np.random.SeedSequence(int(seed)).generate_state(len(names))  # a prefix of a longer draw
    return {name: int(s) % (2**31 - 1) for name, s in zip(names, states)}


def labels_to_image_model(options: GeneratorOptions, input_shape: Sequence[int], batch_size: int = 1,
                          seed: int | None = None) -> keras.Model:
    """Build the labels-to-image model.

    Args:
        options: generation settings.
        input_shape: spatial shape of the input label maps (voxels), 2D or 3D.
        batch_size: minibatch size (fixed, so every shape in the model is static).
        seed: model seed; the same seed gives the same sequence of synthetic images.

    Returns:
        A model mapping an int32 label map ``(B, *input_shape, 1)`` to
        ``[image (B, *out, n_channels) float32 in [0, 1], labels (B, *out, 1) int32]``, where
        ``out`` is ``options.output_shape`` (or ``input_shape``) and the output labels are the
        segmentation labels.
    """
    o = options
    seeds = stage_seeds(seed)
    labels_in = keras.Input(shape=(*input_shape, 1), batch_size=batch_size, dtype="int32", name="labels")

    labels = RandomSpatialDeformation(
        scaling=o.scaling, rotation=o.rotation, shearing=o.shearing, translation=o.translation,
        nonlin_std=o.nonlin_std, nonlin_scale=o.nonlin_scale, integration_steps=o.integration_steps,
        integration_downsample=o.integration_downsample, output_shape=o.output_shape,
        seed=seeds["deformation"], name="deformation")(labels_in)
    if o.flip_prob > 0:
        labels = RandomFlip(o.lr_pairs, axis=o.flip_axis, prob=o.flip_prob, seed=seeds["flip"],
                            name="flip")(labels)
    if o.partitions and o.partition_prob > 0:
        labels = RandomPartition(o.partitions, o.partition_scale, o.partition_prob, seed=seeds["partition"],
                                 name="partition")(labels)

    image = SampleConditionalGMM(
        o.generation_labels, o.generation_classes, prior_means=o.prior_array("prior_means"),
        prior_stds=o.prior_array("prior_stds"), prior_distribution=o.prior_distribution,
        n_channels=o.n_channels, seed=seeds["gmm"], name="gmm")(labels)
    if o.bias_std > 0 and o.bias_prob > 0:
        image = RandomBiasField(o.bias_std, o.bias_scale, o.bias_prob, seed=seeds["bias_field"],
                                name="bias_field")(image)
    if o.randomise_resolution:
        image = SimulateResolution(o.voxel_size, o.max_res_iso, o.max_res_aniso, o.prob_isotropic,
                                   seed=seeds["resolution"], name="resolution")(image)
    if o.blur_sigma > 0:
        image = RandomBlur(o.blur_sigma, seed=seeds["blur"], name="blur")(image)

    # last, so the image the network sees is exactly in [0, 1] and its noise is not blurred
    image = IntensityAugmentation(o.noise_std, o.clip, normalise=True, gamma_std=o.gamma_std,
                                  seed=seeds["intensity"], name="intensity")(image)

    segmentation = o.segmentation_labels or o.generation_labels
    labels_out = ConvertLabels(o.generation_labels, segmentation, name="convert_labels")(labels)
    return keras.Model(labels_in, [image, labels_out], name="labels_to_image")


def load_keras_model(path, what: str = "the network") -> keras.Model:
    """Load a ``.keras`` file in Keras' safe mode: no Python code stored in the file is run.

    A file holding code (a ``Lambda`` layer with a Python function, which Keras would have to
    unpickle and run to rebuild the model) is refused, so an untrusted model file cannot execute
    anything on loading.

    Args:
        path: the ``.keras`` file.
        what: noun for the messages (e.g. ``"the U-Net"``).

    Raises:
        InputError: ``"refused: ... Python code ..."`` for a file holding code, ``"cannot load
            <what> (...)"`` for any other unreadable file, ``"... does not hold a Keras model"``.
    """
    from lab2im.errors import InputError
    from lab2im.io import short_error

    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises many types for unreadable files
        text = str(exc)
        if "safe_mode" in text or "arbitrary code" in text:
            layer = "a `Lambda` layer" if "Lambda" in text else "a layer"
            raise InputError(f"refused: {what} holds Python code ({layer} with a Python function) that would "
                             "run on loading; models are loaded in Keras' safe mode, which never runs such code "
                             "(rebuild it without Lambda layers)", path) from None
        raise InputError(f"cannot load {what} ({short_error(exc)})", path) from None
    if not isinstance(model, keras.Model):
        raise InputError(f"the file does not hold a Keras model ({what})", path)
    return model
