"""``labels_to_image_model``: the random layers composed into one Keras model.

Per minibatch, in the order of :data:`STAGE_TABLE`: spatial deformation (affine +
diffeomorphic, with random crop) -> left/right flip -> random one-voxel moves of chosen label
boundaries -> random partition of chosen labels into
parts -> per-label Gaussian intensities -> bias field -> resolution loss (and optional blur) ->
noise, clipping, min-max normalisation to [0, 1], gamma; and generation labels converted to
segmentation labels. Everything runs on the device Keras runs on.

A new random layer touches its own file (``lab2im/layers/``), the options and one row of
:data:`STAGE_TABLE`: the row says what the stage reads and writes (label maps or images),
builds its layer from the options, and whether the augmentation of real image/label pairs
uses it too (:class:`synthseg.training.augmentation.PairAugmentation` reads the same table); its seed comes from its *name* (:func:`stage_seed`), so
adding a stage changes no other stage's draws. :func:`generate_with_parameters` returns the
parameters each stage drew for a minibatch (to explain a synthetic image), and
:func:`replay` makes the same minibatch again from them.
"""
from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import keras
import numpy as np

from lab2im.layers import (
    ConvertLabels,
    IntensityAugmentation,
    RandomBiasField,
    RandomBlur,
    RandomFlip,
    RandomLabelMorphology,
    RandomPartition,
    RandomSpatialDeformation,
    SampleConditionalGMM,
    SimulateResolution,
)
from lab2im.layers.base import IMAGE, LABELS
from lab2im.options import GeneratorOptions


@dataclass(frozen=True)
class StageContext:
    """What a stage's layer needs beyond the options: it differs between the generator (label
    maps only, the generator's output shape) and the augmentation of real pairs (scan and label
    map moved together, the training crop).

    Attributes:
        kinds: what the spatial stages move, e.g. ``[LABELS]`` or ``[IMAGE, LABELS]``.
        output_shape: spatial output shape of the deformation (voxels; ``None``: the input's).
        lr_pairs: ``(left, right)`` labels a flip swaps.
    """

    kinds: tuple = (LABELS,)
    output_shape: tuple | None = None
    lr_pairs: tuple = ()


@dataclass(frozen=True)
class Stage:
    """One random stage, shared by the labels-to-image model and the augmentation of real pairs.

    Attributes:
        name: the layer's name, and what its seed is derived from.
        reads, writes: :data:`LABELS` or :data:`IMAGE` (the Gaussian mixture reads label maps
            and writes the image; spatial stages act on label maps, intensity stages on images).
            In the pair augmentation a stage that reads label maps moves the scan with them.
        build: ``(options, seed, context) -> layer``, or ``None`` when the options switch the
            stage off. ``options`` is a :class:`~lab2im.options.GeneratorOptions` or any options
            object with the same field names (e.g. the supervised augmentation's); a field it
            lacks takes the layer's default.
        pairs: the stage also augments real image/label pairs.
        gates: ``((part, probability field), ...)``: parts of the layer's transformation
            (:meth:`~lab2im.layers.base.RandomLayer.gated`) that the pair augmentation switches
            on separately, each with the probability in that options field.
    """

    name: str
    reads: str
    writes: str
    build: Callable
    pairs: bool = False
    gates: tuple = ()


def _deformation(o, seed, ctx):
    return RandomSpatialDeformation(
        scaling=o.scaling, rotation=o.rotation, shearing=o.shearing, translation=getattr(o, "translation", 0.0),
        nonlin_std=o.nonlin_std, nonlin_scale=o.nonlin_scale, integration_steps=getattr(o, "integration_steps", 7),
        integration_downsample=getattr(o, "integration_downsample", 4), output_shape=ctx.output_shape,
        kinds=list(ctx.kinds), seed=seed, name="deformation")


def _flip(o, seed, ctx):
    if o.flip_prob <= 0:
        return None
    return RandomFlip(ctx.lr_pairs, axis=o.flip_axis, prob=o.flip_prob, kinds=list(ctx.kinds), seed=seed, name="flip")


def _morphology(o, seed, ctx):
    if not getattr(o, "morphology_rules", None) or o.morphology_prob <= 0:
        return None
    return RandomLabelMorphology(o.morphology_rules, o.morphology_scale, o.morphology_threshold, o.morphology_prob,
                                 seed=seed, name="morphology")


def _partition(o, seed, ctx):
    if not o.partitions or o.partition_prob <= 0:
        return None
    return RandomPartition(o.partitions, o.partition_scale, o.partition_prob, seed=seed, name="partition")


def _gmm(o, seed, ctx):
    return SampleConditionalGMM(
        o.generation_labels, o.generation_classes, prior_means=o.prior_array("prior_means"),
        prior_stds=o.prior_array("prior_stds"), prior_distribution=o.prior_distribution,
        n_channels=o.n_channels, seed=seed, name="gmm")


def _bias_field(o, seed, ctx):
    if o.bias_std <= 0 or o.bias_prob <= 0:
        return None
    return RandomBiasField(o.bias_std, o.bias_scale, o.bias_prob, seed=seed, name="bias_field")


def _resolution(o, seed, ctx):
    if not o.randomise_resolution:
        return None
    return SimulateResolution(o.voxel_size, o.max_res_iso, o.max_res_aniso, o.prob_isotropic,
                              prob=getattr(o, "resolution_prob", 1.0), seed=seed, name="resolution")


def _blur(o, seed, ctx):
    return RandomBlur(o.blur_sigma, seed=seed, name="blur") if o.blur_sigma > 0 else None


def _intensity(o, seed, ctx):
    return IntensityAugmentation(o.noise_std, getattr(o, "clip", None), normalise=True, gamma_std=o.gamma_std,
                                 seed=seed, name="intensity")


#: the random stages, in the order they are applied
STAGE_TABLE = (
    Stage("deformation", LABELS, LABELS, _deformation, pairs=True,
          gates=(("affine", "affine_prob"), ("velocity", "elastic_prob"))),
    Stage("flip", LABELS, LABELS, _flip, pairs=True),
    Stage("morphology", LABELS, LABELS, _morphology),
    Stage("partition", LABELS, LABELS, _partition),
    Stage("gmm", LABELS, IMAGE, _gmm),
    Stage("bias_field", IMAGE, IMAGE, _bias_field, pairs=True),
    Stage("resolution", IMAGE, IMAGE, _resolution),
    Stage("blur", IMAGE, IMAGE, _blur),
    # last, so the image the network sees is exactly in [0, 1] and its noise is not blurred
    Stage("intensity", IMAGE, IMAGE, _intensity, pairs=True, gates=(("gamma", "gamma_prob"),)),
)
#: the stages whose seeds are drawn as before stage names counted (the first states of
#: ``SeedSequence(seed)``, in this order), so that today's seeds give today's images
LEGACY_SEED_ORDER = ("deformation", "flip", "gmm", "bias_field", "resolution", "blur", "intensity", "partition")


def named_seed(entropy, name: str, legacy_order: Sequence[str] = ()) -> int:
    """A seed for the random stage ``name`` of a model seeded with ``entropy`` (an int or a
    sequence of ints): a stage listed in ``legacy_order`` keeps the seed it had when seeds were
    handed out by position (the first states of ``SeedSequence(entropy)``, in that order); any
    other is derived from ``(entropy, crc32(name))``, independent of where the stage stands."""
    entropy = [int(v) for v in (entropy if isinstance(entropy, (list, tuple)) else [entropy])]
    if name in legacy_order:
        states = np.random.SeedSequence(entropy).generate_state(len(legacy_order))
        return int(states[list(legacy_order).index(name)]) % (2**31 - 1)
    return int(np.random.SeedSequence([*entropy, zlib.crc32(name.encode())]).generate_state(1)[0]) % (2**31 - 1)


def stage_seed(seed: int | None, name: str) -> int | None:
    """The seed of the stage called ``name`` in a labels-to-image model seeded with ``seed``
    (``None`` stays ``None``): :func:`named_seed` with :data:`LEGACY_SEED_ORDER`."""
    return None if seed is None else named_seed(int(seed), name, LEGACY_SEED_ORDER)


def stage_seeds(seed: int | None) -> dict[str, int | None]:
    """``{stage name: seed}`` for every stage of :data:`STAGE_TABLE` (see :func:`stage_seed`)."""
    return {stage.name: stage_seed(seed, stage.name) for stage in STAGE_TABLE}


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
    labels_in = keras.Input(shape=(*input_shape, 1), batch_size=batch_size, dtype="int32", name="labels")
    tensors = {LABELS: labels_in, IMAGE: None}
    context = StageContext(kinds=(LABELS,), output_shape=o.output_shape, lr_pairs=o.lr_pairs)
    for stage in STAGE_TABLE:
        layer = stage.build(o, stage_seed(seed, stage.name), context)
        if layer is not None:
            tensors[stage.writes] = layer(tensors[stage.reads])
    segmentation = o.segmentation_labels or o.generation_labels
    labels_out = ConvertLabels(o.generation_labels, segmentation, name="convert_labels")(tensors[LABELS])
    return keras.Model(labels_in, [tensors[IMAGE], labels_out], name="labels_to_image")


def _run_stages(model: keras.Model, label_maps, parameters: dict | None):
    """The stages of a :func:`labels_to_image_model` run one by one (eagerly): drawing each
    stage's parameters (``parameters`` ``None``) or applying the given ones."""
    from keras import ops

    names = {layer.name for layer in model.layers}
    tensors = {LABELS: ops.convert_to_tensor(np.asarray(label_maps), dtype="int32"), IMAGE: None}
    drawn = {}
    for stage in STAGE_TABLE:
        if stage.name not in names:
            continue
        layer = model.get_layer(stage.name)
        x = tensors[stage.reads]
        t = layer.get_random_transformation(x.shape[0]) if parameters is None else parameters[stage.name]
        tensors[stage.writes] = layer.transform(x, t)
        drawn[stage.name] = t
    labels = model.get_layer("convert_labels")(tensors[LABELS])
    return np.asarray(tensors[IMAGE]), np.asarray(labels), drawn


def generate_with_parameters(model: keras.Model, label_maps) -> tuple[np.ndarray, np.ndarray, dict]:
    """One minibatch of ``model`` (a :func:`labels_to_image_model`) and what made it.

    It draws from the model's own random streams, so it returns the minibatch ``model`` would
    have returned at this point of its sequence.

    Args:
        label_maps: int ``(B, *input_shape, 1)``.

    Returns:
        ``(image, labels, parameters)``: the model's two outputs (numpy) and ``{stage name:
        {parameter: numpy array}}``, the parameters each stage drew (e.g. the deformation's
        affine matrices, the Gaussian means and standard deviations of every label).
    """
    image, labels, drawn = _run_stages(model, label_maps, None)
    return image, labels, {name: {k: np.asarray(v) for k, v in t.items()} for name, t in drawn.items()}


def replay(model: keras.Model, label_maps, parameters: dict) -> tuple[np.ndarray, np.ndarray]:
    """The minibatch made from ``label_maps`` with the ``parameters`` of
    :func:`generate_with_parameters` (the model's random streams are not used)."""
    image, labels, _ = _run_stages(model, label_maps, parameters)
    return image, labels


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


def network_in_dtype(model, dtype: str):
    """A copy of the Keras ``model`` whose every layer computes and stores its weights in
    ``dtype`` (e.g. ``"float32"`` for a network trained under ``mixed_bfloat16``, which CPUs
    without bfloat16 units would run slowly; ``"float16"`` to halve a file's size)."""
    def cast(layer):
        config = layer.get_config()
        if not isinstance(layer, keras.layers.InputLayer):
            config["dtype"] = dtype
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=cast)
    for target, value in zip(copy.weights, model.get_weights()):
        target.assign(np.asarray(value).astype(dtype))
    return copy
