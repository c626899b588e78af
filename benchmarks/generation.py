"""Synthetic volumes per second: our labels-to-image model vs an equivalent TorchIO pipeline.

    python benchmarks/generation.py                      # 160^3 and 96^3, TensorFlow, + TorchIO
    python benchmarks/generation.py --quick --no-torchio # smoke run: 64^3, few repeats
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
  :func:`torchio_pipeline`. torch's intra-op threads and SimpleITK's threads are set to the
  usable cores (``--threads``); TensorFlow uses all cores by default.

Each pipeline gets ``--warmup`` untimed calls (the first one, compilation included, is reported
as ``first_call_s``), then ``--repeats`` timed calls, the pipelines taking turns call by call
so that load from other processes slows them alike; the median is reported, with the load
average before and after. A per-step breakdown
of both pipelines follows (ours: each layer run alone as a compiled one-layer model on the
previous layer's output; TorchIO: each transform called in turn). Results go to
``benchmarks/results/generation.json`` (``--out``), with the machine and package versions.

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
            "simpleitk")


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
    p.add_argument("--no-xla", action="store_true", help="skip the XLA variant (TensorFlow)")
    p.add_argument("--no-breakdown", action="store_true", help="skip the per-step breakdowns")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes = args.sizes or [QUICK_SIZE]
        args.repeats = args.repeats or QUICK_REPEATS
        args.warmup = QUICK_WARMUP if args.warmup is None else args.warmup
    args.sizes = args.sizes or list(DEFAULT_SIZES)
    args.warmup = 2 if args.warmup is None else args.warmup
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


def measure(label_path, size: int, args, backend: str, device: str, subject=None) -> tuple[list[dict], dict]:
    """Time every pipeline at one output size, interleaved (see :func:`common.time_interleaved`).

    Ours: ``predict_on_batch`` of the compiled model; on TensorFlow a second model of the same
    generator is compiled with XLA (``jit_compile=True``). TorchIO: the ``Compose`` of
    :func:`torchio_pipeline` on ``subject`` (skipped when ``None``).

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
    print(f"[{size}^3] timing {', '.join(names[k] for k in fns)} (interleaved) ...", flush=True)
    stats = common.time_interleaved(fns, repeats_for(args, size), args.warmup)
    for key, reason in unavailable.items():
        stats[key] = {"error": reason}
    if "subject" in result:
        shape = tuple(result["subject"]["image_from_labels"].shape)
        assert shape == (1, size, size, size), f"TorchIO output shape {shape}"

    rows = []
    for key, name in names.items():
        pipeline = "torchio" if key == "torchio" else "ours"
        extra = ({"backend": "torch", "device": "CPU"} if pipeline == "torchio" else
                 {"backend": backend, "device": device, "jit_compile": jit.get(key),
                  "model_build_s": build_s})
        if "error" in stats[key]:
            rows.append({"pipeline": pipeline, "name": name, "variant": key, "size": size,
                         "status": "unavailable", "reason": stats[key]["error"], **extra})
        else:
            rows.append(_row(pipeline, name, key, size, stats[key], **extra))

    breakdown = {}
    if not args.no_breakdown:
        reps = min(3, repeats_for(args, size))
        print(f"[{size}^3] per-step breakdown ...", flush=True)
        if "error" not in stats["default"]:
            breakdown["ours"] = layer_breakdown(gen.model, x, reps, 1)
        if subject is not None and "error" not in stats["torchio"]:
            breakdown["torchio"] = torchio_breakdown(subject, size, reps)
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


def setup_torch(threads: int) -> dict:
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    torch.manual_seed(0)
    return {"torch_threads": torch.get_num_threads(),
            "simpleitk_threads": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()}


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


# ----------------------------------------------------------------------------- report
def ratios(results: list[dict]) -> dict:
    """Throughput ratio ours / TorchIO per size and variant (``None`` where one is missing)."""
    out = {}
    for r in results:
        if r["pipeline"] != "ours" or r["status"] != "ok":
            continue
        ref = next((t for t in results if t["pipeline"] == "torchio" and t["size"] == r["size"]
                    and t["status"] == "ok"), None)
        if ref is not None:
            out.setdefault(str(r["size"]), {})[r["variant"]] = r["volumes_per_second"] / ref["volumes_per_second"]
    return out


def results_table(results: list[dict], ratio: dict) -> str:
    rows = []
    for r in results:
        shape = f"{r['size']}^3"
        if r["status"] != "ok":
            reason = r["reason"].split(".call(). ")[-1]  # Keras' wrapper says little
            rows.append([r["name"], shape, None, None, f"unavailable: {reason[:70]}"])
            continue
        rat = ratio.get(str(r["size"]), {}).get(r["variant"]) if r["pipeline"] == "ours" else None
        rows.append([r["name"], shape, r["seconds_per_volume"], r["volumes_per_second"],
                     rat if rat is not None else ("1 (reference)" if r["pipeline"] == "torchio" else "-")])
    return common.format_table(["pipeline", "output", "s/volume (median)", "volumes/s",
                                "ours/TorchIO (vol/s)"], rows)


def breakdown_table(title: str, times: dict[str, float]) -> str:
    total = sum(times.values())
    rows = [[k, v, f"{100 * v / total:.0f}%"] for k, v in times.items()]
    rows.append(["(sum)", total, "100%"])
    return f"{title}\n" + common.format_table(["step", "s (median)", "share"], rows)


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

    import keras

    from lab2im.errors import InputError
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
                "quick": args.quick, "torchio": not args.no_torchio, "seed": 0}
    subject = None
    if not args.no_torchio:
        settings.update(setup_torch(threads))
        subject = torchio_subject(volume)
    print(f"label map {label_path} {volume.shape}; Keras {keras.__version__} on {backend} ({device}); "
          f"{threads} threads", flush=True)

    results, breakdowns = [], {}
    for size in args.sizes:
        rows, bd = measure(label_path, size, args, backend, device,
                           None if args.no_torchio else subject)
        results.extend(rows)
        if bd:
            breakdowns[str(size)] = bd

    ratio = ratios(results)
    print()
    print(results_table(results, ratio))
    for size, bd in breakdowns.items():
        for who, times in bd.items():
            print()
            print(breakdown_table(f"{'ours' if who == 'ours' else 'TorchIO'} at {size}^3, per step "
                                  f"({'one-layer compiled models' if who == 'ours' else 'transforms called in turn'}):",
                                  times))
    path = common.write_results(args.out, "generation", settings, results, PACKAGES,
                                ratio_ours_over_torchio=ratio, breakdown_s=breakdowns)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
