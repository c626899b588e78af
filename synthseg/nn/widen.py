"""A trained U-Net embedded in a wider one that computes the same function.

A network whose training has levelled off may lack capacity. Training a wider one from scratch
costs every step already spent; :func:`widen_weights` instead copies a trained
:func:`~synthseg.nn.unet.build_unet` network into one with more feature maps per level (same
levels, convolutions per level, kernel, labels), so the wider network starts where the narrow
one stopped:

* each old channel keeps its weights (convolution kernels, biases, batch-norm scale, offset and
  moving statistics), in the first positions of its layer;
* the weights *from* a new channel *into* an old channel (and into the logits) are zero, so the
  old channels, and so the output, are exactly the narrow network's;
* a new channel keeps the wider network's own random initial weights from every input, and its
  batch normalisation its initial state: it computes a random feature that nothing reads yet.
  The first gradient step gives the zero weights reading it non-zero values (their gradient is
  the new channel's activation times the output's error), and training takes it from there.

In a decoder level the first convolution reads the concatenation ``[skip, upsampled]``; the
widened channel order is ``[old skip, new skip, old upsampled, new upsampled]``, which
:func:`widen_weights` maps accordingly.
"""
from __future__ import annotations

import re

import numpy as np

from lab2im.errors import InputError

_DECODER_FIRST_CONV = re.compile(r"_up(\d+)_conv0$")


def _layers_with_weights(model) -> dict:
    return {layer.name: layer for layer in model.layers if layer.weights}


def _input_channels(name: str, old_in: int, new_in: int, source: dict, target: dict) -> np.ndarray:
    """Positions, in the wider layer's input, of the narrow layer's ``old_in`` input channels."""
    m = _DECODER_FIRST_CONV.search(name)
    if m is None:
        return np.arange(old_in)
    prefix = name[:m.start()]
    level = int(m.group(1))
    skips = sorted(n for n in source if re.fullmatch(rf"{re.escape(prefix)}_down{level}_conv\d+", n))
    if not skips or skips[-1] not in target:
        raise InputError(f"cannot find the skip connection of decoder layer {name!r} (no {prefix}_down{level}_conv*)")
    old_skip = int(source[skips[-1]].weights[0].shape[-1])
    new_skip = int(target[skips[-1]].weights[0].shape[-1])
    if old_in - old_skip > new_in - new_skip:
        raise InputError(f"layer {name!r}: the wider network's upsampled input is narrower than the source's")
    return np.concatenate([np.arange(old_skip), new_skip + np.arange(old_in - old_skip)])


def widen_weights(source, target) -> list[str]:
    """Copy U-Net ``source`` into the wider U-Net ``target`` (same layer names), in place, so
    that ``target`` computes ``source``'s function (module docstring).

    Args:
        source: a :func:`~synthseg.nn.unet.build_unet` model.
        target: a model built by :func:`~synthseg.nn.unet.build_unet` with the same options but
            ``base_features`` (or ``feature_multiplier``) at least as large; freshly built, so
            its weights are its random initialisation.

    Returns:
        the names of the layers that were widened (more channels than in ``source``).

    Raises:
        InputError: the two are not the same network up to widths: a layer missing from either,
            another kernel size, fewer channels in ``target``, or another number of labels.
    """
    src, tgt = _layers_with_weights(source), _layers_with_weights(target)
    if set(src) != set(tgt):
        only = sorted(set(src) ^ set(tgt))[:3]
        raise InputError(f"the two U-Nets have different layers (e.g. {only}): another number of levels, "
                         "convolutions or batch normalisation; only the feature counts may differ")
    widened = []
    for name, layer in tgt.items():
        old = [np.asarray(w, np.float32) for w in src[name].get_weights()]
        current = layer.get_weights()  # the target's own initialisation, in its dtypes
        new = [np.asarray(w, np.float32) for w in current]
        if len(old) != len(new):
            raise InputError(f"layer {name!r} has {len(old)} weight arrays in the source and {len(new)} in the target")
        if old[0].ndim >= 3:  # convolution: kernel (*k, C_in, C_out), optional bias (C_out,)
            kernel_old, kernel = old[0], new[0]
            if kernel_old.shape[:-2] != kernel.shape[:-2]:
                raise InputError(f"layer {name!r}: kernel {kernel_old.shape[:-2]} against {kernel.shape[:-2]}")
            c_in, c_out = kernel_old.shape[-2:]
            n_in, n_out = kernel.shape[-2:]
            if c_in > n_in or c_out > n_out:
                raise InputError(f"layer {name!r} has {c_in} -> {c_out} channels in the source and "
                                 f"{n_in} -> {n_out} in the target: the target must be at least as wide")
            if name.endswith("_logits") and c_out != n_out:
                raise InputError(f"the source U-Net has {c_out} labels, the target {n_out}")
            rows = _input_channels(name, c_in, n_in, src, tgt)
            new_rows = np.setdiff1d(np.arange(n_in), rows)
            kernel[..., new_rows, :c_out] = 0.0  # nothing new reaches an old channel
            kernel[..., rows[:, None], np.arange(c_out)[None, :]] = kernel_old
            for i in range(1, len(new)):  # the bias
                new[i][:c_out] = old[i]
        else:  # batch normalisation: gamma, beta, moving mean, moving variance (C,)
            c = old[0].shape[0]
            if c > new[0].shape[0]:
                raise InputError(f"layer {name!r} has {c} channels in the source and {new[0].shape[0]} in the target")
            for o, n in zip(old, new):
                n[:c] = o
        if any(a.shape != b.shape for a, b in zip(old, new)):
            widened.append(name)
        layer.set_weights([n.astype(c.dtype) for n, c in zip(new, current)])
    return widened
