"""Synthetic volumes per second inside a training step: our generator vs cornucopia and TorchIO
data loaders, each feeding the same U-Net (synthseg.nn.unet) on Keras' torch backend.

    python benchmarks/generation_training.py --threads 1 --repeats 3   # the README figures
    python benchmarks/generation_training.py --configs cpu             # 2 mm maps, 64^3 crops only
    python benchmarks/generation_training.py --quick --no-torchio      # smoke run: 32^3, tiny U-Net

"Generation costs nothing in training" is measured here rather than assumed: one training step is
one synthetic volume (batch 1) made by the peer's generator, then one forward/backward pass and
Adam update of the U-Net (``train_on_batch``, sparse categorical cross-entropy). Every peer feeds
the same U-Net, with the same crop, the same threads and the same backend (``KERAS_BACKEND=torch``,
set by this script):

* ``ours``: ``BrainGenerator(label_map, output_shape=(S,) * 3).model.predict_on_batch`` on the
  torch backend (eager PyTorch under Keras), labels mapped to class indices;
* ``cornucopia_matched`` / ``cornucopia_relabelled`` (and ``cornucopia_defaults`` with
  ``--cornucopia-variants``): ``SynthFromLabelTransform`` as configured in
  :func:`benchmarks.generation.cornucopia_pipelines`, served by a ``torch.utils.data.DataLoader``
  over an endless ``IterableDataset`` (``--workers`` processes; 0: in the training process, as
  on a machine whose cores are all taken by the U-Net);
* ``torchio``: the ``Compose`` of :func:`benchmarks.generation.torchio_pipeline`, same loader;
* ``unet_only``: the U-Net step on a fixed image, the floor every peer adds its generation to.

Each step is timed whole (the pipelines take turns, :func:`benchmarks.common.time_interleaved`)
and split into its two parts (the wait for the synthetic volume and the U-Net step), so the table
gives s/step, volumes/s, the generation's share of the step and ``ours / peer`` (volumes/s).

Configurations (``--configs``): ``cpu``: 2 mm label maps, 64^3 crops, the 5-level 16-feature
U-Net of the cpu2/cpu3 presets of scripts/train_synthseg.py (what is trained on CPUs);
``1mm96``: 1 mm maps, 96^3 crops, the same U-Net (the 96^3 size of benchmarks/generation.py);
``--quick``: ``tiny`` (32^3, 3-level 4-feature U-Net). The label map: ``--labels``, else the
first real training map at the configuration's voxel size
(:func:`synthseg.data.training_labels.training_label_maps`). Results:
``benchmarks/results/generation_training.json`` (``--out``), with the machine, threads and GPU
status (a note says when no GPU was available).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

# name: (label voxel size mm, crop, U-Net levels, base features)
CONFIGS = {
    "cpu": (2.0, 64, 5, 16),
    "1mm96": (1.0, 96, 5, 16),
    "tiny": (2.0, 32, 3, 4),
}
DEFAULT_CONFIGS = ("cpu", "1mm96")
PEERS = ("unet_only", "ours", "torchio", "cornucopia")
PACKAGES = ("synthseg", "keras", "numpy", "torch", "torchio", "simpleitk", "cornucopia", "torch-interpol")


def parse_args(argv=None):
    from benchmarks.generation import CORNUCOPIA_VARIANTS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=None,
                   help=f"configurations (default: {' '.join(DEFAULT_CONFIGS)}; --quick: tiny)")
    p.add_argument("--labels", type=Path, default=None, help="label map file (default: see above)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per peer (default 3; --quick: 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per peer first (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: usable cores)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for cornucopia / TorchIO")
    p.add_argument("--quick", action="store_true", help="smoke run: the tiny configuration, 2 steps")
    p.add_argument("--no-torchio", action="store_true", help="skip the TorchIO loader")
    p.add_argument("--no-cornucopia", action="store_true", help="skip the cornucopia loaders")
    p.add_argument("--cornucopia-variants", nargs="+", choices=CORNUCOPIA_VARIANTS, default=None,
                   help="cornucopia configurations (default: matched relabelled; --quick: matched)")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR / "generation_training.json")
    args = p.parse_args(argv)
    args.configs = args.configs or (["tiny"] if args.quick else list(DEFAULT_CONFIGS))
    args.repeats = args.repeats or (2 if args.quick else 3)
    if args.cornucopia_variants is None:
        args.cornucopia_variants = ["matched"] if args.quick else ["matched", "relabelled"]
    args.cornucopia_variants = [v for v in CORNUCOPIA_VARIANTS if v in args.cornucopia_variants]
    if args.repeats < 1 or args.warmup < 0 or args.workers < 0:
        p.error("--repeats must be >= 1, --warmup and --workers >= 0")
    return args


def label_map_for(voxel_mm: float, given: Path | None) -> Path:
    if given is not None:
        return given
    from synthseg.data.training_labels import training_label_maps

    return sorted(training_label_maps(voxel_mm).glob("*.nii.gz"))[0]


def class_table(options, present):
    """``(classes, lut)``: the U-Net's classes (segmentation labels of the labels present, 0
    first) and a lookup from any generation or segmentation label to its class index."""
    import numpy as np

    gen = [int(v) for v in options.generation_labels]
    seg_of = dict(zip(gen, [int(v) for v in (options.segmentation_labels or gen)]))
    classes = sorted({0} | {seg_of.get(int(v), int(v)) for v in present})
    index = {c: i for i, c in enumerate(classes)}
    top = max(max(gen), max(classes), int(max(present))) + 1
    lut = np.zeros(top, np.int32)
    for v in range(top):
        lut[v] = index.get(seg_of.get(v, v), 0)
    return classes, lut


def _loader(make_sample, workers: int):
    """An endless DataLoader over ``make_sample()`` (one synthetic volume per item)."""
    import torch

    class Endless(torch.utils.data.IterableDataset):
        def __iter__(self):
            while True:
                yield make_sample()

    return iter(torch.utils.data.DataLoader(Endless(), batch_size=None, num_workers=workers))


def measure(config: str, args, threads: int, cornucopia_ok) -> list[dict]:
    import keras
    import numpy as np
    import torch

    from benchmarks import generation as g
    from lab2im.errors import InputError
    from synthseg import BrainGenerator
    from synthseg.nn.unet import UNetOptions, build_unet

    voxel, crop, levels, features = CONFIGS[config]
    try:
        path = label_map_for(voxel, args.labels)
        gen = BrainGenerator(path, seed=0, output_shape=(crop,) * 3)
    except InputError as exc:
        raise SystemExit(f"error: {exc}") from None
    # the map as the generator read it (RAS, int32), for the other loaders
    v = voxel = float(gen.options.voxel_size)
    volume = types.SimpleNamespace(data=gen.label_maps[0, ..., 0], affine=np.diag([v, v, v, 1.0]),
                                   shape=tuple(gen.input_shape))
    present = np.unique(volume.data)
    classes, lut = class_table(gen.options, present)
    unet = build_unet(len(classes), 1, UNetOptions(n_levels=levels, base_features=features))
    unet.compile(optimizer=keras.optimizers.Adam(1e-4), loss=keras.losses.SparseCategoricalCrossentropy())
    x = gen.label_maps[:1]
    fixed = np.asarray(gen.model.predict_on_batch(x)[0], np.float32)
    print(f"[{config}] {path.name} {volume.shape} at {voxel:g} mm, crop {crop}^3, U-Net {levels} levels x "
          f"{features} features ({unet.count_params() / 1e6:.2f} M parameters), {len(classes)} classes", flush=True)

    split: dict[str, dict[str, list[float]]] = {}

    def stepper(name, next_sample):
        """One training step: the peer's next volume (image, class indices), then the U-Net."""
        split[name] = {"generation_s": [], "unet_s": []}

        def step():
            t0 = time.perf_counter()
            image, target = next_sample()
            t1 = time.perf_counter()
            unet.train_on_batch(image, target)
            t2 = time.perf_counter()
            split[name]["generation_s"].append(t1 - t0)
            split[name]["unet_s"].append(t2 - t1)
        return step

    def ours_sample():
        image, labels = gen.model.predict_on_batch(x)
        return np.asarray(image), lut[np.asarray(labels)[..., 0]]

    def from_torch(image, labels, indexed: bool):
        image = image.detach().cpu().numpy()[0][None, ..., None].astype(np.float32, copy=False)
        labels = labels.detach().cpu().numpy()[0][None]
        labels = np.rint(labels).astype(np.int64) if labels.dtype.kind == "f" else labels.astype(np.int64)
        return image, (labels.astype(np.int32) if indexed else lut[labels])

    zero = np.zeros((1, crop, crop, crop), np.int32)
    fns = {"unet_only": stepper("unet_only", lambda: (fixed, zero)),
           "ours": stepper("ours", ours_sample)}
    names = {"unet_only": "U-Net step alone (fixed image)",
             "ours": f"synthseg (Keras {keras.backend.backend()})"}
    unavailable = {}
    details = {}
    if not args.no_torchio:
        try:
            import torchio as tio

            subject = g.torchio_subject(volume)
            compose = tio.Compose([t for _, t in g.torchio_pipeline(crop)])

            def torchio_item():
                out = compose(subject)
                return out["image_from_labels"].data, out["label"].data

            it = _loader(torchio_item, args.workers)
            fns["torchio"] = stepper("torchio", lambda it=it: from_torch(*next(it), indexed=False))
        except ImportError as exc:
            unavailable["torchio"] = f"not installed ({common.error_reason(exc)})"
        names["torchio"] = f"TorchIO {common.package_versions(['torchio'])['torchio'] or ''} loader".replace("  ", " ")
    if not args.no_cornucopia:
        version = common.package_versions(["cornucopia"])["cornucopia"] or ""
        for v in args.cornucopia_variants:
            key = f"cornucopia_{v}"
            names[key] = f"cornucopia {version} ({g.CORNUCOPIA_TITLES[v]}) loader".replace("  ", " ")
            if cornucopia_ok is not True:
                unavailable[key] = cornucopia_ok
                continue
            pipe = g.cornucopia_pipelines([v], crop, gen.options, volume, "cpu")[v]
            cc_x = g.cornucopia_input(volume, crop, "cpu")
            it = _loader(lambda pipe=pipe, cc_x=cc_x: pipe(cc_x), args.workers)
            # "matched" relabels its targets to the U-Net's classes (target_labels); others give raw labels
            fns[key] = stepper(key, lambda it=it, v=v: from_torch(*next(it), indexed=(v == "matched")))
            details[key] = {"settings": pipe.settings, "gmm_priors": pipe.gmm_priors}

    torch.manual_seed(0)
    print(f"[{config}] timing {', '.join(names[k] for k in fns)} (interleaved) ...", flush=True)
    stats = common.time_interleaved(fns, args.repeats, args.warmup)
    rows = []
    for key, name in names.items():
        base = {"config": config, "peer": key, "name": name, "voxel_mm": voxel, "crop": crop,
                "unet_levels": levels, "base_features": features, "unet_parameters": int(unet.count_params()),
                "n_classes": len(classes), "threads": threads, "workers": args.workers if key not in
                ("ours", "unet_only") else None, "label_map": str(path), **details.get(key, {})}
        st = stats.get(key, {"error": unavailable.get(key)})
        if key in unavailable or "error" in st:
            rows.append({**base, "status": "unavailable", "reason": unavailable.get(key) or st["error"]})
            continue
        n = args.repeats  # the timed calls are the last ones recorded
        gen_s = float(np.median(split[key]["generation_s"][-n:]))
        unet_s = float(np.median(split[key]["unet_s"][-n:]))
        rows.append({**base, "status": "ok", "step_s": st["median_s"], "volumes_per_second": 1.0 / st["median_s"],
                     "generation_s": gen_s, "unet_s": unet_s,
                     "generation_share": gen_s / (gen_s + unet_s) if key != "unet_only" else 0.0,
                     "generation_s_all": split[key]["generation_s"], "unet_s_all": split[key]["unet_s"], **st})
    ours = next((r for r in rows if r["peer"] == "ours" and r["status"] == "ok"), None)
    for r in rows:
        if ours is not None and r["status"] == "ok":
            r["ratio_ours_over_this"] = ours["volumes_per_second"] / r["volumes_per_second"]
    return rows


def table(rows: list[dict]) -> str:
    out = []
    for r in rows:
        head = [r["config"], r["name"], f"{r['crop']}^3"]
        if r["status"] != "ok":
            out.append(head + [None, None, None, None, None, f"unavailable: {r['reason'][:60]}"])
            continue
        rat = r.get("ratio_ours_over_this")
        out.append(head + [r["step_s"], r["volumes_per_second"],
                           None if r["peer"] == "unet_only" else r["generation_s"], r["unet_s"],
                           f"{100 * r['generation_share']:.0f}%",
                           "1 (reference)" if r["peer"] == "ours" else (f"{rat:.3g}x" if rat else "-")])
    return common.format_table(["config", "pipeline", "crop", "s/step", "volumes/s", "s generation",
                                "s U-Net", "generation share", "ours / this (vol/s)"], out)


def main(argv=None) -> int:
    from lab2im.io import usable_cpus

    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = "torch"  # the same backend for every peer's U-Net
    backend = common.select_keras_backend("torch")
    threads = args.threads or usable_cpus()
    try:
        import torch
    except ImportError:
        print("error: this benchmark needs torch (Keras' torch backend): pip install -e '.[bench]'",
              file=sys.stderr)
        return 1

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:
        pass
    cornucopia_ok = True
    if not args.no_cornucopia:
        try:
            import cornucopia  # noqa: F401
        except ImportError as exc:
            cornucopia_ok = f"not installed ({common.error_reason(exc)}); pip install -e '.[bench]'"
    if not args.no_torchio:
        try:
            import SimpleITK as sitk

            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        except ImportError:
            pass
    gpu = common.gpu_status()
    print(f"Keras backend {backend}, torch {torch.__version__}, {threads} threads, "
          f"{args.workers} loader workers; {gpu['note']}", flush=True)
    rows = []
    for config in args.configs:
        rows.extend(measure(config, args, threads, cornucopia_ok))
    print()
    print(table(rows))
    print(f"\n{gpu['note']}")
    settings = {"configs": args.configs, "repeats": args.repeats, "warmup": args.warmup, "threads": threads,
                "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
                "workers": args.workers, "keras_backend": backend, "device": "CPU" if not torch.cuda.is_available()
                else f"GPU ({torch.cuda.get_device_name(0)})", "gpu": gpu, "batch_size": 1,
                "loss": "sparse categorical cross-entropy", "optimizer": "Adam(1e-4)",
                "cornucopia_variants": [] if args.no_cornucopia else args.cornucopia_variants,
                "torchio": not args.no_torchio, "quick": args.quick}
    path = common.write_results(args.out, "generation_training", settings, rows, PACKAGES)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
