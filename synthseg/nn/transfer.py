"""Transfer learning: start a U-Net from another run's (layers matched by name and shape),
optionally with the encoder frozen."""
from __future__ import annotations

import json
from pathlib import Path

import keras

from lab2im.errors import InputError


def load_source_unet(init_from) -> tuple[keras.Model, Path]:
    """Load the U-Net to start from: a ``.keras`` file, or a run folder (its ``unet_best.keras``
    when there is one, else ``unet_last.keras``).

    Raises:
        InputError: missing file, a folder with no U-Net, or a file Keras cannot load.
    """
    p = Path(init_from)
    if p.is_dir():
        found = [p / n for n in ("unet_best.keras", "unet_last.keras") if (p / n).is_file()]
        if not found:
            raise InputError("init_from: folder holds no unet_best.keras or unet_last.keras (not a run folder?)", p)
        p = found[0]
    elif not p.exists():
        raise InputError("init_from: no such file or folder", p)
    elif p.suffix != ".keras":
        raise InputError("init_from: expected a U-Net .keras file or a run folder", p)
    from lab2im.model import load_keras_model

    try:
        model = load_keras_model(p, "the U-Net")  # safe mode: no code in the file is run
    except InputError as exc:
        raise InputError(f"init_from: {exc.problem}", p) from None
    return model, p


def copy_matching_weights(source: keras.Model, target: keras.Model) -> tuple[list[str], list[str]]:
    """Copy the weights of ``source``'s layers into ``target``'s layers of the same name whose
    weights all have the same shapes.

    Returns:
        ``(copied, reinitialised)``: names of the layers of ``target`` (with weights) that were
        copied, and of those left as they were (no layer of that name, or other shapes).
    """
    by_name = {layer.name: layer for layer in _all_layers(source)}
    copied, skipped = [], []
    for layer in target.layers:
        if not layer.weights:
            continue
        src = by_name.get(layer.name)
        if (src is None or len(src.weights) != len(layer.weights)
                or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(src.weights, layer.weights))):
            skipped.append(layer.name)
            continue
        layer.set_weights(src.get_weights())
        copied.append(layer.name)
    return copied, skipped


def _all_layers(model):
    """The layers of ``model``, and those of the models nested in it."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def run_unet_options(init_from):
    """The :class:`~synthseg.nn.unet.UNetOptions` of the run ``init_from`` comes from (a run
    folder, or its ``unet_last.keras`` / ``unet_best.keras``), read from the run's
    ``options.json``; ``None`` when there is no such file or it holds no readable ``unet``."""
    from synthseg.nn.unet import UNetOptions

    p = Path(init_from)
    if p.is_dir():
        folder = p
    elif p.name in ("unet_last.keras", "unet_best.keras"):
        folder = p.parent
    else:
        return None
    try:
        return UNetOptions.from_dict(json.loads((folder / "options.json").read_text())["unet"])
    except (OSError, ValueError, KeyError, TypeError):  # InputError is a ValueError
        return None


def encoder_layers(unet: keras.Model, n_levels: int) -> list:
    """Layers of the encoder of a :func:`~synthseg.nn.unet.build_unet` U-Net: those of the
    resolution levels before the bottleneck (names ``<name>_down<level>_*``, ``level <
    n_levels - 1``)."""
    prefixes = tuple(f"{unet.name}_down{level}_" for level in range(n_levels - 1))
    return [layer for layer in unet.layers if layer.name.startswith(prefixes)]
