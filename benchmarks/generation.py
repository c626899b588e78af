"""Synthetic volumes per second: our labels-to-image model vs TorchIO and cornucopia.

    python benchmarks/generation.py                      # 160^3 and 96^3, TensorFlow, + TorchIO + cornucopia
    python benchmarks/generation.py --quick --no-torchio --no-cornucopia  # smoke run: 64^3, ours only
    python benchmarks/generation.py --threads 1 --repeats 3 --warmup 1   # the README figures
    python benchmarks/generation.py --backend jax --out /tmp/generation_jax.json

What is timed (batch 1, one real whole-head label map of 174 x 212 x 178 at 1 mm as input):

* ours: ``BrainGenerator(label_map, seed=0, output_shape=(S, S, S)).model.predict_on_batch``
  after warm-up, i.e. the compiled model (a ``tf.function`` graph on TensorFlow, ``jax.jit``
  on JAX) with every default step: affine + diffeomorphic deformation with random crop, L/R
  flip, per-label GMM, bias field, resolution simulation, clip / normalise / gamma, label
  conversion. On TensorFlow a second copy of the model is timed after
  ``model.compile(jit_compile=True)`` (XLA); if that fails the variant is reported as
  unavailable with the reason.
* TorchIO (CPU): ``tio.Compose`` of the equivalent steps on the same label map, see
  :func:`torchio_pipeline`.
* cornucopia (``SynthFromLabelTransform``, the PyTorch implementation of SynthSeg's generative
  model; CPU, or CUDA when there is a GPU) in three configurations, see
  :func:`cornucopia_pipelines`: ``defaults`` (its documented defaults with ``patch=S``, on the
  label map as stored), ``relabelled`` (the same with the labels present numbered 1..K, which is
  all its GMM needs) and ``matched`` (its steps and ranges set to ours: linear fields, 7-step
  integration, no texture smoothing, no noise, no motion blur, our GMM priors and classes, flip,
  target labels). Its ``defaults`` take minutes per volume at 160^3, so that variant is called
  once (no warm-up: torch-interpol's TorchScript is compiled by the other variants' warm-up);
  the other two get one warm-up call (eager PyTorch compiles nothing else) and at most
  ``--cornucopia-repeats`` (3) timed calls. ``--quick`` times the ``matched`` variant only.

Threads: ``--threads N`` sets torch's intra- and inter-op threads, SimpleITK's threads and
TensorFlow's intra- and inter-op threads to N, so that every pipeline gets the same cores;
without it torch and SimpleITK use the usable cores and TensorFlow its default (all cores).

Each pipeline gets ``--warmup`` untimed calls (the first one, compilation included, is reported
as ``first_call_s``), then ``--repeats`` timed calls, the pipelines taking turns call by call
so that load from other processes slows them alike; the median is reported, with the load
average before and after, and every ratio ``ours / peer`` (volumes per second) in the table and
the JSON. A per-step breakdown of every pipeline follows (ours: each layer run alone as a
compiled one-layer model on the previous layer's output; TorchIO and cornucopia: each transform
called in turn, cornucopia's deformation split into drawing the field and resampling; a
cornucopia variant whose whole call took over ``--breakdown-max-s`` is not broken down again).
Results go to ``benchmarks/results/generation.json`` (``--out``), with the machine, the GPU
status (a note says when none was available) and package versions, and ``cornucopia_notes``:
what cornucopia does that we don't, with the measured step times.

The label map: ``--labels`` if given, else the first of the real training label maps in
``$SYNTHSEG_DATA/training_labels`` (default cache ``~/.cache/synthseg``), built by
:func:`synthseg.data.training_labels.training_label_maps` on first use (needs PyPI).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

DEFAULT_SIZES = (160, 96)
DEFAULT_REPEATS = {160: 5, 96: 10}  # other sizes: 5
QUICK_SIZE, QUICK_REPEATS, QUICK_WARMUP = 64, 3, 1
PACKAGES = ("synthseg", "keras", "tensorflow", "jax", "jaxlib", "numpy", "torch", "torchio",
            "simpleitk", "cornucopia", "torch-interpol")
CORNUCOPIA_VARIANTS = ("relabelled", "matched", "defaults")  # "defaults" last: it takes minutes
QUICK_CORNUCOPIA_VARIANTS = ("matched",)
CORNUCOPIA_REPEATS = 3  # at most, for "relabelled" and "matched"; "defaults": one call


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help=f"cubic output sizes (default: {' '.join(map(str, DEFAULT_SIZES))}; --quick: {QUICK_SIZE})")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed calls per measurement (default: 10 at 96^3, 5 at 160^3 and other sizes; "
                        f"--quick: {QUICK_REPEATS})")
    p.add_argument("--warmup", type=int, default=None, help=f"untimed calls first (default 2; --quick: {QUICK_WARMUP})")
    p.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_SIZE}^3, few repeats")
    p.add_argument("--backend", choices=("tensorflow", "jax", "torch"), default=None,
                   help="Keras backend (default: $KERAS_BACKEND, else tensorflow)")
    p.add_argument("--labels", type=Path, default=None, help="label map file to use (default: see above)")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR / "generation.json", help="JSON results path")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch / SimpleITK (and TensorFlow when given); default: usable cores")
    p.add_argument("--no-torchio", action="store_true", help="skip the TorchIO pipeline (no torch needed)")
    p.add_argument("--no-cornucopia", action="store_true", help="skip the cornucopia pipelines")
    p.add_argument("--cornucopia-variants", nargs="+", choices=CORNUCOPIA_VARIANTS, default=None,
                   help=f"cornucopia configurations (default: all; --quick: {' '.join(QUICK_CORNUCOPIA_VARIANTS)})")
    p.add_argument("--cornucopia-repeats", type=int, default=CORNUCOPIA_REPEATS,
                   help="at most this many timed calls of cornucopia's relabelled and matched variants "
                        f"(default {CORNUCOPIA_REPEATS}; its defaults variant: one call)")
    p.add_argument("--cornucopia-device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="device of the cornucopia pipelines (auto: CUDA when available)")
    p.add_argument("--breakdown-max-s", type=float, default=120.0,
                   help="skip the breakdown of a cornucopia variant whose call took longer (default 120 s)")
    p.add_argument("--no-xla", action="store_true", help="skip the XLA variant (TensorFlow)")
    p.add_argument("--no-breakdown", action="store_true", help="skip the per-step breakdowns")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes = args.sizes or [QUICK_SIZE]
        args.repeats = args.repeats or QUICK_REPEATS
        args.warmup = QUICK_WARMUP if args.warmup is None else args.warmup
    args.sizes = args.sizes or list(DEFAULT_SIZES)
    args.warmup = 2 if args.warmup is None else args.warmup
    if args.cornucopia_variants is None:
        args.cornucopia_variants = list(QUICK_CORNUCOPIA_VARIANTS if args.quick else CORNUCOPIA_VARIANTS)
    # "defaults" last, whatever the order given: its single call comes after the others' warm-up
    args.cornucopia_variants = [v for v in CORNUCOPIA_VARIANTS if v in args.cornucopia_variants]
    if args.cornucopia_repeats < 1:
        p.error("--cornucopia-repeats must be >= 1")
    if args.repeats is not None and args.repeats < 1:
        p.error("--repeats must be >= 1")
    if any(s < 1 for s in args.sizes):
        p.error("--sizes must be positive")
    return args


def repeats_for(args, size: int) -> int:
    return args.repeats or DEFAULT_REPEATS.get(size, 5)


# ----------------------------------------------------------------------------- label map
def default_label_map() -> Path:
    """The first real training label map (1 mm) in the data cache, built there on first use."""
    from synthseg.data.training_labels import training_label_maps

    return sorted(training_label_maps().glob("*.nii.gz"))[0]


# ----------------------------------------------------------------------------- ours
def keras_device(backend: str) -> str:
    """The device Keras computes on, in words."""
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return f"GPU ({details.get('device_name', gpus[0].name)})"
        return "CPU"
    if backend == "jax":
        import jax

        d = jax.devices()[0]
        return "CPU" if d.platform == "cpu" else f"{d.platform.upper()} ({d.device_kind})"
    if backend == "torch":
        import torch

        return f"GPU ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "CPU"
    return "unknown"


def measure(label_path, size: int, args, backend: str, device: str, subject=None,
            cornucopia=None) -> tuple[list[dict], dict]:
    """Time every pipeline at one output size, interleaved (see :func:`common.time_interleaved`).

    Ours: ``predict_on_batch`` of the compiled model; on TensorFlow a second model of the same
    generator is compiled with XLA (``jit_compile=True``). TorchIO: the ``Compose`` of
    :func:`torchio_pipeline` on ``subject`` (skipped when ``None``). cornucopia:
    :func:`cornucopia_pipelines` on the label map, ``cornucopia = (volume, device)`` (skipped
    when ``None``; a string: the reason it is unavailable, e.g. not installed).

    Returns:
        The result rows and the per-step breakdowns (``{}`` with ``--no-breakdown``).
    """
    from synthseg import BrainGenerator

    t0 = time.perf_counter()
    gen = BrainGenerator(label_path, seed=0, output_shape=(size,) * 3)
    build_s = time.perf_counter() - t0
    x = gen.label_maps[:1]
    label = {"tensorflow": "TF graph", "jax": "JAX jit", "torch": "torch"}[backend]
    names = {"default": f"synthseg ({label})"}
    fns = {"default": lambda: gen.model.predict_on_batch(x)}
    jit = {"default": bool(gen.model.jit_compile)}
    repeats = {"default": repeats_for(args, size)}
    warmup = {"default": args.warmup}
    unavailable = {}
    if backend == "tensorflow" and not args.no_xla:
        names["xla"] = "synthseg (TF XLA)"
        try:
            gen_xla = BrainGenerator(label_path, seed=0, output_shape=(size,) * 3)
            gen_xla.model.compile(jit_compile=True)
            fns["xla"] = lambda: gen_xla.model.predict_on_batch(x)
            jit["xla"] = True
        except Exception as exc:  # reported, not raised
            unavailable["xla"] = common.error_reason(exc)
    result = {}
    if subject is not None:
        import torchio as tio

        steps = torchio_pipeline(size)
        compose = tio.Compose([t for _, t in steps])
        names["torchio"] = f"TorchIO {common.package_versions(['torchio'])['torchio']}"

        def run_torchio():
            result["subject"] = compose(subject)

        fns["torchio"] = run_torchio
    cc_pipes, cc_x, cc_device = {}, None, None
    if cornucopia is not None:
        version = common.package_versions(["cornucopia"])["cornucopia"]
        for v in args.cornucopia_variants:
            names[f"cornucopia_{v}"] = f"cornucopia {version or ''} ({CORNUCOPIA_TITLES[v]})".replace("  ", " ")
        if isinstance(cornucopia, str):
            for v in args.cornucopia_variants:
                unavailable[f"cornucopia_{v}"] = cornucopia
        else:
            volume, cc_device = cornucopia
            cc_x = cornucopia_input(volume, size, cc_device)
            cc_pipes = cornucopia_pipelines(args.cornucopia_variants, size, gen.options, volume, cc_device)
            for v, pipe in cc_pipes.items():
                key = f"cornucopia_{v}"
                fns[key] = lambda pipe=pipe, key=key: result.__setitem__(key, pipe(cc_x))
                # its defaults take minutes per volume at 160^3: one call, no warm-up
                repeats[key] = 1 if v == "defaults" else min(args.cornucopia_repeats, repeats_for(args, size))
                warmup[key] = 0 if v == "defaults" else min(args.warmup, 1)
    for key in fns:
        repeats.setdefault(key, repeats_for(args, size))
        warmup.setdefault(key, args.warmup)
    print(f"[{size}^3] timing {', '.join(names[k] for k in fns)} (interleaved) ...", flush=True)
    stats = common.time_interleaved(fns, repeats, warmup)
    for key, reason in unavailable.items():
        stats[key] = {"error": reason}
    if "subject" in result:
        shape = tuple(result["subject"]["image_from_labels"].shape)
        assert shape == (1, size, size, size), f"TorchIO output shape {shape}"
    for key in cc_pipes:
        if f"cornucopia_{key}" in result:
            img, lab = result[f"cornucopia_{key}"]
            assert tuple(img.shape) == tuple(lab.shape) == (1, size, size, size), \
                f"cornucopia output shapes {tuple(img.shape)}, {tuple(lab.shape)}"

    rows = []
    for key, name in names.items():
        pipeline = key.split("_")[0] if key.startswith(("torchio", "cornucopia")) else "ours"
        if pipeline == "torchio":
            extra = {"backend": "torch", "device": "CPU"}
        elif pipeline == "cornucopia":
            v = key[len("cornucopia_"):]
            extra = {"backend": "torch", "device": (cc_device or "cpu").upper()}
            if v in cc_pipes:
                extra.update(settings=cc_pipes[v].settings, gmm_priors=cc_pipes[v].gmm_priors,
                             flip=cc_pipes[v].flip is not None, gmm_classes_looped=cc_pipes[v].gmm_classes(cc_x))
        else:
            extra = {"backend": backend, "device": device, "jit_compile": jit.get(key), "model_build_s": build_s}
        variant = key[len("cornucopia_"):] if pipeline == "cornucopia" else key
        if "error" in stats[key]:
            rows.append({"pipeline": pipeline, "name": name, "variant": variant, "size": size,
                         "status": "unavailable", "reason": stats[key]["error"], **extra})
        else:
            rows.append(_row(pipeline, name, variant, size, stats[key], **extra))

    breakdown = {}
    if not args.no_breakdown:
        reps = min(3, repeats_for(args, size))
        print(f"[{size}^3] per-step breakdown ...", flush=True)
        if "error" not in stats["default"]:
            breakdown["ours"] = layer_breakdown(gen.model, x, reps, 1)
        if subject is not None and "error" not in stats["torchio"]:
            breakdown["torchio"] = torchio_breakdown(subject, size, reps)
        for v, pipe in cc_pipes.items():
            st = stats[f"cornucopia_{v}"]
            if "error" in st:
                continue
            if st["median_s"] > args.breakdown_max_s:
                breakdown[f"cornucopia_{v}"] = {
                    "skipped": f"its call took {st['median_s']:.0f} s > --breakdown-max-s {args.breakdown_max_s:g}"}
                continue
            breakdown[f"cornucopia_{v}"] = pipe.breakdown(cc_x, 1)  # seconds per call: one pass
    return rows, breakdown


def _row(pipeline, name, variant, size, stats, **extra) -> dict:
    med = stats["median_s"]
    return {"pipeline": pipeline, "name": name, "variant": variant, "size": size, "status": "ok",
            "seconds_per_volume": med, "volumes_per_second": 1.0 / med, **stats, **extra}


def layer_breakdown(model, x, repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds of each layer of ``model``, each run alone as a compiled one-layer model.

    Layers are fed the output the previous layers actually produced from ``x``, so each one sees
    realistic input. The per-layer times add up to about the whole model's (less the fusion
    across layers a single graph allows).
    """
    import keras
    import numpy as np

    values = {id(model.inputs[0]): np.asarray(x)}
    times = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        inp = values[id(layer.input)]
        k_in = keras.Input(shape=inp.shape[1:], batch_size=inp.shape[0], dtype=str(inp.dtype))
        sub = keras.Model(k_in, layer(k_in))
        result = {}

        def run(sub=sub, inp=inp, result=result):
            result["y"] = sub.predict_on_batch(inp)

        times[layer.name] = common.time_calls(run, repeats, warmup)["median_s"]
        values[id(layer.output)] = np.asarray(result["y"])
    return times


# ----------------------------------------------------------------------------- TorchIO
def torchio_pipeline(size: int):
    """TorchIO's equivalent of our default generator, as ``[(name, transform)]``.

    Spatial steps act on the whole label map (nearest neighbour) before the crop, as ours do
    (ours computes only the cropped output grid; TorchIO's output grid is always the input's):

    * ``RandomAffineElasticDeformation``: TorchIO's one-resampling affine + B-spline step (on
      the 174 x 212 x 178 map, about as fast as ``RandomAffine`` then
      ``RandomElasticDeformation``: 3.3 vs 3.2 s on 2 cores): scales 0.2, degrees 15
      (TorchIO has no shearing), 7 control points per axis (ours: a 7^3 velocity grid at 160^3),
      max displacement 4 mm (ours: velocity std U(0, 4) voxels);
    * ``CropOrPad`` to S^3 (centred; ours is a random crop), ``RandomFlip`` left/right;
    * ``RandomLabelsToImage``: one Gaussian per label, means U(25, 225), stds U(5, 25);
    * ``RandomBiasField`` (coefficients 0.7; ours: log-field std U(0, 0.7));
    * resolution loss: ``RandomAnisotropy`` (one axis downsampled 1-8x and back; ours: one axis
      1-8 mm, or 10 % isotropic 1-4 mm) and ``RandomBlur`` std U(0, 3) mm (ours: Gaussian
      0.75 x slice thickness);
    * ``Clamp(0, 300)``, ``RescaleIntensity(0, 1)``, ``RandomGamma`` log-gamma U(-0.5, 0.5)
      (ours: N(0, 0.5)).
    """
    import torchio as tio

    return [
        ("affine+elastic", tio.RandomAffineElasticDeformation(
            affine_kwargs={"scales": 0.2, "degrees": 15},
            elastic_kwargs={"num_control_points": 7, "max_displacement": 4.0})),
        ("crop", tio.CropOrPad((size,) * 3)),
        ("flip", tio.RandomFlip(axes=("LR",))),
        ("labels_to_image", tio.RandomLabelsToImage(label_key="label", used_labels=None,
                                                    default_mean=(25.0, 225.0), default_std=(5.0, 25.0))),
        ("bias_field", tio.RandomBiasField(coefficients=0.7)),
        ("anisotropy", tio.RandomAnisotropy(axes=(0, 1, 2), downsampling=(1.0, 8.0))),
        ("blur", tio.RandomBlur(std=(0.0, 3.0))),
        ("clamp", tio.Clamp(0.0, 300.0)),
        ("rescale", tio.RescaleIntensity(out_min_max=(0.0, 1.0))),
        ("gamma", tio.RandomGamma(log_gamma=0.5)),
    ]


def setup_torch(threads: int, simpleitk: bool = True) -> dict:
    """torch's intra- and inter-op threads (and SimpleITK's, for TorchIO) set to ``threads``."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # only settable before torch's first parallel work
        pass
    torch.manual_seed(0)
    out = {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads()}
    if simpleitk:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        out["simpleitk_threads"] = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    return out


def torchio_subject(volume):
    import torch
    import torchio as tio

    return tio.Subject(label=tio.LabelMap(tensor=torch.from_numpy(volume.data[None].copy()),
                                          affine=volume.affine))


def torchio_breakdown(subject, size: int, repeats: int) -> dict[str, float]:
    """Median seconds of each TorchIO transform, called in turn as ``Compose`` does."""
    import statistics

    steps = torchio_pipeline(size)
    per_step = {name: [] for name, _ in steps}
    for _ in range(repeats):
        s = subject
        for name, t in steps:
            t0 = time.perf_counter()
            s = t(s)
            per_step[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in per_step.items()}


# ----------------------------------------------------------------------------- cornucopia
CORNUCOPIA_TITLES = {"defaults": "defaults", "relabelled": "defaults, labels 1..K", "matched": "matched to ours"}
# what each intensity step of SynthFromLabelTransform is, by class (cornucopia.synth.IntensityTransform)
_INTENSITY_STEPS = {"RandomMulFieldTransform": "bias_field", "RandomGammaTransform": "gamma",
                    "RandomSmoothTransform": "motion_blur", "SwitchTransform": "resolution",
                    "QuantileTransform": "quantile_normalise", "RandomChiNoiseTransform": "noise",
                    "RandomizedTransform": "noise"}


def cornucopia_device(choice: str) -> str:
    """``"cuda"`` or ``"cpu"`` for ``--cornucopia-device`` (``auto``: CUDA when torch sees one)."""
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--cornucopia-device cuda: torch sees no CUDA device")
    return choice


def cornucopia_input(volume, size: int, device: str = "cpu"):
    """The label map as cornucopia takes it: a ``(1, X, Y, Z)`` int64 tensor on ``device``.

    Axes shorter than ``size`` are zero-padded (centred) first, since cornucopia's patch must
    fit in the map (the real 174 x 212 x 178 map needs no padding at 160^3).
    """
    import numpy as np
    import torch

    data = volume.data
    pad = [(max(0, size - n) // 2, max(0, size - n) - max(0, size - n) // 2) for n in data.shape]
    if any(a or b for a, b in pad):
        data = np.pad(data, pad)
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.int64))[None].to(device)


def cornucopia_matched_settings(size: int, options, present_labels, map_shape) -> dict:
    """``SynthFromLabelTransform`` arguments that make cornucopia do our steps, with our ranges.

    * Generation classes: the labels present, grouped by our ``generation_classes`` (left and
      right share an intensity); the background gets a Gaussian too (``sample_in_background``),
      as ours does. Targets: our ``segmentation_labels`` (extra-cerebral labels become 0).
    * Geometry: our rotation, shearing and scaling bounds; elastic control points and
      bias-field control points as ours at this size (``nonlin_scale``, ``bias_scale`` x S);
      maximum displacement our ``nonlin_std`` voxels (as a fraction of the field of view, the
      unit cornucopia takes); ``elastic_steps`` = our scaling-and-squaring steps (diffeomorphic);
      ``order=1``: linear fields, as ours (``resize_linear``) instead of cubic splines.
    * Intensities: no texture smoothing inside labels (``gmm_fwhm=0``), no noise unless ours
      has some, no motion blur (ours blurs only in the resolution step), our maximum
      thick-slice resolution, our gamma std; cornucopia's quantile normalisation stays (ours
      clips and min-max normalises).
    The GMM priors (ours: means U(25, 225), stds U(5, 25)) are set by
    :func:`cornucopia_pipelines`, which ``SynthFromLabelTransform`` does not take.
    """
    import math

    import numpy as np

    gen_labels = [int(v) for v in options.generation_labels]
    classes = list(options.generation_classes or range(len(gen_labels)))
    seg = list(options.segmentation_labels or gen_labels)
    class_of, seg_of = dict(zip(gen_labels, classes)), dict(zip(gen_labels, seg))
    present = sorted(int(v) for v in present_labels)
    groups, targets = {}, {}
    for v in present:
        if v != 0 and class_of.get(v, v) != class_of.get(0, 0):
            groups.setdefault(class_of.get(v, v), []).append(v)
        if seg_of.get(v, v):
            targets.setdefault(int(seg_of.get(v, v)), []).append(v)
    fov = float(np.mean(map_shape))
    return {
        "patch": size, "synth_labels": [tuple(g) for _, g in sorted(groups.items())],
        "target_labels": [tuple(targets[t]) for t in sorted(targets)], "order": 1,
        "translations": float(options.translation) / fov, "rotation": float(options.rotation),
        "shears": float(options.shearing), "zooms": float(options.scaling),
        "elastic": float(options.nonlin_std) / fov,
        "elastic_nodes": max(2, math.ceil(options.nonlin_scale * size)),
        "elastic_steps": int(options.integration_steps), "gmm_fwhm": 0,
        "bias": max(2, math.ceil(options.bias_scale * size)) if options.bias_prob > 0 else False,
        "gamma": float(options.gamma_std) or False, "motion_fwhm": False,
        "resolution": (float(options.max_res_aniso) / float(options.voxel_size)
                       if options.randomise_resolution else False),
        "snr": 10 if options.noise_std else False, "sample_in_background": True}


class CornucopiaPipeline:
    """One cornucopia configuration: ``SynthFromLabelTransform`` (+ a left/right flip for
    ``matched``), called on a ``(1, X, Y, Z)`` label tensor; returns ``(image, labels)``."""

    def __init__(self, variant: str, settings: dict, gmm_priors: dict | None, flip_axis: int | None,
                 device: str = "cpu"):
        import cornucopia as cc

        self.variant, self.settings, self.gmm_priors, self.device = variant, settings, gmm_priors, device
        self.synth = cc.SynthFromLabelTransform(**settings)
        if gmm_priors:
            self.synth.gmm = cc.RandomGaussianMixtureTransform(
                mu=cc.random.Uniform(*gmm_priors["means"]), sigma=cc.random.Uniform(*gmm_priors["stds"]),
                fwhm=0, background=None)
        # one axis given: RandomFlipTransform flips it at every call (ours: probability 0.5)
        self.flip = None if flip_axis is None else cc.RandomFlipTransform(axes=1 + flip_axis)

    def _sync(self):
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def __call__(self, x):
        out = self.synth(x)
        img, lab = (out["image"], out["label"]) if isinstance(out, dict) else out
        if self.flip is not None:
            img, lab = self.flip(img, lab)
        self._sync()
        return img, lab

    def gmm_classes(self, x) -> int:
        """How many classes cornucopia's GMM loops over: every integer up to the largest label
        of the map it gets (the raw map: FreeSurfer numbers; relabelled: 1..K), background included."""
        labels = self.settings.get("synth_labels")
        return len(labels) + 1 if labels else int(x.max()) + 1

    def breakdown(self, x, repeats: int = 1) -> dict[str, float]:
        """Median seconds of each step, called in turn as ``ApplySynthFromLabelTransform`` does
        (deformation split into drawing the field, i.e. ``unroll``, and resampling the labels)."""
        import statistics

        import cornucopia as cc

        s = self.synth
        per: dict[str, list[float]] = {}

        def timed(name, fn, *a):
            t0 = time.perf_counter()
            out = fn(*a)
            self._sync()
            per.setdefault(name, []).append(time.perf_counter() - t0)
            return out

        noise = bool(self.settings.get("snr", 10))
        for _ in range(repeats):
            deform = timed("deform: field", s.deform.unroll, x)
            dfm = timed("deform: resample", deform, x)
            gen = (timed("relabel", cc.RelabelTransform(list(s.synth_labels)), dfm) if s.synth_labels else dfm)
            img = timed("gmm", s.gmm, gen)
            for t in s.intensity.transforms:
                name = _INTENSITY_STEPS.get(type(t).__name__, type(t).__name__)
                img = timed(name + (" + noise" if name == "resolution" and noise else ""), t, img)
            lab = timed("target_labels", s.postproc_labels, dfm)
            if self.flip is not None:
                timed("flip", self.flip, img, lab)
        return {k: statistics.median(v) for k, v in per.items()}


def cornucopia_pipelines(variants, size: int, options, volume, device: str = "cpu") -> dict[str, CornucopiaPipeline]:
    """cornucopia's ``SynthFromLabelTransform`` in each configuration of ``variants``:

    * ``defaults``: ``SynthFromLabelTransform(patch=S)``, its documented defaults, on the label
      map as stored;
    * ``relabelled``: the same with ``synth_labels`` = the labels present, so that its GMM
      sees labels 1..K instead of FreeSurfer numbers up to 258 (all else default);
    * ``matched``: :func:`cornucopia_matched_settings`, our GMM priors and our flip.
    """
    import numpy as np

    present = np.unique(volume.data)
    out = {}
    for v in variants:
        priors, flip = None, None
        if v == "defaults":
            settings = {"patch": size}
        elif v == "relabelled":
            settings = {"patch": size, "synth_labels": [int(u) for u in present if u != 0]}
        elif v == "matched":
            settings = cornucopia_matched_settings(size, options, present, volume.shape)
            if options.prior_distribution == "uniform" and all(
                    np.ndim(p) == 1 and len(p) == 2 for p in (options.prior_means, options.prior_stds)):
                priors = {"means": tuple(map(float, options.prior_means)),
                          "stds": tuple(map(float, options.prior_stds))}
            flip = int(options.flip_axis) if options.flip_prob > 0 else None
        else:
            raise ValueError(f"unknown cornucopia variant {v!r}")
        out[v] = CornucopiaPipeline(v, settings, priors, flip, device)
    return out


def cornucopia_notes(results: list[dict], breakdowns: dict, volume, options) -> list[str]:
    """What cornucopia does that we don't (read in its source, cornucopia 0.5.1), with the
    measured step times of this run."""
    import numpy as np

    def step(size, variant, name):
        return breakdowns.get(str(size), {}).get(f"cornucopia_{variant}", {}).get(name)

    top, n_present = int(volume.data.max()), int(np.unique(volume.data).size)
    shape = " x ".join(map(str, volume.shape))
    notes = [
        ("cornucopia runs one sample at a time in eager PyTorch (no graph compilation, no fusion); "
         "float32 by default (torch's default dtype; no float64 found on this path)."),
    ]
    for r in results:
        if r["pipeline"] != "cornucopia" or r["status"] != "ok":
            continue
        size, v = r["size"], r["variant"]
        gmm = step(size, v, "gmm")
        line = (f"{size}^3 {v}: {r['seconds_per_volume']:.2f} s/volume; its GMM loops over "
                f"{r['gmm_classes_looped']} classes")
        if gmm is not None:
            line += f" and took {gmm:.2f} s ({gmm / r['gmm_classes_looped'] * 1e3:.1f} ms per class)"
        field, res = step(size, v, "deform: field"), step(size, v, "deform: resample")
        if field is not None:
            line += f"; deformation field {field:.2f} s, resampling {res:.2f} s"
        bias = step(size, v, "bias_field")
        if bias is not None:
            line += f"; bias field {bias:.2f} s"
        notes.append(line + ".")
    notes += [
        ("GMM (cornucopia.labels.GaussianMixtureFinalTransform): it loops over every integer "
         f"from 0 to the largest label (range(x.max() + 1)), present or not: {top + 1} classes on "
         f"this map as stored (largest label {top}, {n_present} labels present). With its default "
         "texture smoothing (gmm_fwhm=10: per-class FWHM U(0, 10) voxels) each class draws a "
         "Gaussian noise volume of the whole patch and smooths it with three separable Gaussian "
         "convolutions (2 * floor(4 sigma + 1) + 1 taps, up to 37), then masks it: classes x S^3 x "
         "taps work. Ours draws one mean and std per class and gathers them per voxel (no texture "
         "smoothing)."),
        ("Deformation: with its default order=3 the elastic field is a cubic B-spline evaluated at "
         "every output voxel by torch-interpol (TorchScript grid_pull on CPU), and the bias field "
         "(order 3, interpol.resize) likewise; ours resizes small grids linearly. With "
         "elastic_steps > 0 (the matched setting: our "
         f"{options.integration_steps} steps) it integrates the velocity on the whole input map "
         f"({shape}) and samples it at the patch; ours integrates at 1/{options.integration_downsample} "
         "of the output resolution."),
        ("Steps we do not have: texture smoothing in the GMM, motion blur (FWHM U(0, 3)), chi "
         "noise with a g-factor map (snr 10) inside the resolution step, quantile normalisation. "
         "The matched variant turns the first three off."),
    ]
    return notes


# ----------------------------------------------------------------------------- report
def ratios(results: list[dict]) -> dict:
    """Throughput ratio ours / TorchIO per size and variant (``None`` where one is missing)."""
    return {size: {ours: by_peer["torchio"] for ours, by_peer in per.items() if "torchio" in by_peer}
            for size, per in peer_ratios(results).items()
            if any("torchio" in by_peer for by_peer in per.values())}


def _peer_key(r: dict) -> str:
    return r["pipeline"] if r["pipeline"] == "torchio" else f"{r['pipeline']}_{r['variant']}"


def peer_ratios(results: list[dict]) -> dict:
    """``{size: {our variant: {peer: ours / peer volumes per second}}}`` for every measured peer
    (``torchio``, ``cornucopia_<variant>``): how many times faster ours is."""
    out: dict = {}
    for r in results:
        if r["pipeline"] != "ours" or r["status"] != "ok":
            continue
        for t in results:
            if t["pipeline"] != "ours" and t["size"] == r["size"] and t["status"] == "ok":
                out.setdefault(str(r["size"]), {}).setdefault(r["variant"], {})[_peer_key(t)] = (
                    r["volumes_per_second"] / t["volumes_per_second"])
    return out


def results_table(results: list[dict], ratio: dict | None = None) -> str:
    """One row per pipeline and size; the last column says how many times more volumes per
    second our default model makes than that pipeline (1 for itself)."""
    rows = []
    for r in results:
        shape = f"{r['size']}^3"
        if r["status"] != "ok":
            reason = r["reason"].split(".call(). ")[-1]  # Keras' wrapper says little
            rows.append([r["name"], shape, None, None, f"unavailable: {reason[:70]}"])
            continue
        ref = next((t for t in results if t["pipeline"] == "ours" and t["variant"] == "default"
                    and t["size"] == r["size"] and t["status"] == "ok"), None)
        rat = ref["volumes_per_second"] / r["volumes_per_second"] if ref is not None else None
        rows.append([r["name"], shape, r["seconds_per_volume"], r["volumes_per_second"],
                     "1 (reference)" if r is ref else (f"{rat:.3g}x" if rat is not None else "-")])
    return common.format_table(["pipeline", "output", "s/volume (median)", "volumes/s",
                                "ours (default) / this, vol/s"], rows)


def breakdown_table(title: str, times: dict) -> str:
    if "skipped" in times:
        return f"{title}\n  skipped: {times['skipped']}"
    total = sum(times.values())
    rows = [[k, v, f"{100 * v / total:.0f}%"] for k, v in times.items()]
    rows.append(["(sum)", total, "100%"])
    return f"{title}\n" + common.format_table(["step", "s (median)", "share"], rows)


_BREAKDOWN_TITLES = {"ours": ("ours", "one-layer compiled models"),
                     "torchio": ("TorchIO", "transforms called in turn")}


def main(argv=None) -> int:
    from lab2im.io import usable_cpus  # no Keras import: the backend is chosen next

    args = parse_args(argv)
    backend = common.select_keras_backend(args.backend)
    threads = args.threads or usable_cpus()
    if backend == "tensorflow":  # the breakdown's one-layer models trigger retracing warnings
        import logging

        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if backend == "tensorflow" and args.threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    import keras

    from lab2im.errors import InputError
    from synthseg import brain_options
    from synthseg.generation.brain_generator import read_label_map

    try:
        label_path = args.labels or default_label_map()
        volume = read_label_map(label_path)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    device = keras_device(backend)
    settings = {"label_map": str(label_path), "label_map_shape": list(volume.shape),
                "voxel_size_mm": [round(float(v), 4) for v in volume.voxel_size], "batch_size": 1,
                "sizes": args.sizes, "warmup": args.warmup,
                "repeats": {str(s): repeats_for(args, s) for s in args.sizes},
                "keras_backend": keras.backend.backend(), "device": device, "threads": threads,
                "tensorflow_threads": args.threads or "default (all cores)",
                "quick": args.quick, "torchio": not args.no_torchio,
                "cornucopia": [] if args.no_cornucopia else args.cornucopia_variants,
                "cornucopia_repeats": {"defaults": 1, "other variants": args.cornucopia_repeats},
                "cornucopia_warmup": {"defaults": 0, "other variants": min(args.warmup, 1)}, "seed": 0}
    subject, cc_spec, torch_missing = None, None, None
    if not args.no_torchio or not args.no_cornucopia:
        try:
            settings.update(setup_torch(threads, simpleitk=not args.no_torchio))
        except ImportError as exc:
            if not args.no_torchio:  # TorchIO was asked for by name: no silent skip
                print(f"error: {exc} (install the bench extra: pip install -e '.[bench]', "
                      "or pass --no-torchio)", file=sys.stderr)
                return 1
            torch_missing = exc
    if not args.no_torchio:
        subject = torchio_subject(volume)
    if torch_missing is not None and not args.no_cornucopia:  # the cornucopia row says so, ours runs
        cc_spec = f"not installed ({common.error_reason(torch_missing)}); pip install -e '.[bench]'"
    elif not args.no_cornucopia:
        try:
            import cornucopia  # noqa: F401

            cc_device = cornucopia_device(args.cornucopia_device)
            cc_spec = (volume, cc_device)
            settings["cornucopia_device"] = cc_device
        except ImportError as exc:  # reported in the table and the JSON, the rest still runs
            cc_spec = f"not installed ({common.error_reason(exc)}); pip install -e '.[bench]'"
    gpu = common.gpu_status()
    settings["gpu"] = gpu
    print(f"label map {label_path} {volume.shape}; Keras {keras.__version__} on {backend} ({device}); "
          f"{threads} threads; {gpu['note']}", flush=True)

    results, breakdowns = [], {}
    for size in args.sizes:
        rows, bd = measure(label_path, size, args, backend, device,
                           None if args.no_torchio else subject, cc_spec)
        results.extend(rows)
        if bd:
            breakdowns[str(size)] = bd

    ratio, all_ratios = ratios(results), peer_ratios(results)
    print()
    print(results_table(results))
    for size, bd in breakdowns.items():
        for who, times in bd.items():
            title, how = _BREAKDOWN_TITLES.get(who, (None, "transforms called in turn"))
            if title is None:
                title = next(r["name"] for r in results if r["pipeline"] == "cornucopia"
                             and f"cornucopia_{r['variant']}" == who)
            print()
            print(breakdown_table(f"{title} at {size}^3, per step ({how}):", times))
    notes = (cornucopia_notes(results, breakdowns, volume, brain_options())
             if isinstance(cc_spec, tuple) else [])
    if notes:
        print("\ncornucopia, what it does that we don't:")
        for n in notes:
            print(f"  - {n}")
    print(f"\n{gpu['note']}")
    path = common.write_results(args.out, "generation", settings, results, PACKAGES,
                                ratio_ours_over_torchio=ratio, ratio_ours_over_peers=all_ratios,
                                breakdown_s=breakdowns, cornucopia_notes=notes)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
