"""Seconds per training step (synthetic generation + U-Net forward/backward), batch 1.

    python benchmarks/training.py [--backend jax] [--configs small synthseg] [--repeats 5]

For each configuration it times, in one run and on the same label maps, a whole training step
(``train_on_batch`` of the generator + U-Net model) and the generator alone, so the table also
says which share of a step goes to making the synthetic scan. Writes
``benchmarks/results/training[_<backend>].json``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    RESULTS_DIR,
    format_table,
    select_keras_backend,
    time_interleaved,
    write_results,
)
from synthseg.training.recipes import RECIPES  # noqa: E402  (imports no Keras)

# two training recipes (synthseg.training.recipes), as (label voxel size mm, crop, U-Net levels, base features)
CONFIGS = {name: (RECIPES[name].voxel_mm, RECIPES[name].crop, RECIPES[name].unet["n_levels"],
                  RECIPES[name].unet["base_features"]) for name in ("small", "synthseg")}


def measure(name: str, repeats: int) -> dict:
    import keras
    import numpy as np

    from synthseg.data.training_labels import training_label_maps
    from synthseg.generation.brain_generator import LabelMapSet
    from synthseg.nn.losses import SegmentationLoss
    from synthseg.nn.unet import UNetOptions
    from synthseg.training.split_output import SplitOutputLoss
    from synthseg.training.synthetic import build_training_model

    voxel, crop, levels, features = CONFIGS[name]
    data = LabelMapSet(training_label_maps(voxel), output_shape=(crop,) * 3)
    model, unet, labels = build_training_model(data.options, UNetOptions(n_levels=levels, base_features=features),
                                               data.shape, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=SplitOutputLoss(SegmentationLoss(), len(labels)))
    generator = model.get_layer("labels_to_image")
    x = data.maps[:1]
    y = np.zeros((1, 1), np.float32)
    timings = time_interleaved({"step": lambda: model.train_on_batch(x, y),
                                "generation": lambda: generator.predict_on_batch(x)}, repeats=repeats, warmup=2)
    step, gen = timings["step"], timings["generation"]
    return {"config": name, "voxel_mm": voxel, "crop": crop, "unet_levels": levels, "base_features": features,
            "unet_parameters": int(unet.count_params()), "n_labels": len(labels),
            "step_s": step.get("median_s"), "generation_s": gen.get("median_s"),
            "generation_share": (gen["median_s"] / step["median_s"]) if "median_s" in step and "median_s" in gen else None,
            "first_step_s": step.get("first_call_s"), "timings": timings}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default=None, help="Keras backend (default: $KERAS_BACKEND or tensorflow)")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["small", "synthseg"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    backend = select_keras_backend(args.backend)
    import keras

    devices = [str(d) for d in keras.distribution.list_devices()] if backend == "jax" else ["cpu"]
    results = [measure(name, args.repeats) for name in args.configs]
    rows = [(r["config"], f"{r['voxel_mm']:g} mm", f"{r['crop']}^3", r["unet_parameters"], r["step_s"],
             r["generation_s"], r["generation_share"]) for r in results]
    print(f"training step, batch 1, backend {backend}, devices {devices}")
    print(format_table(["config", "labels", "crop", "U-Net params", "s/step", "s generation", "generation share"],
                       rows))
    out = args.out or RESULTS_DIR / ("training.json" if backend == "tensorflow" else f"training_{backend}.json")
    write_results(out, "training", {"backend": backend, "devices": devices, "repeats": args.repeats}, results,
                  packages=["keras", "tensorflow", "jax", "jaxlib"])
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
