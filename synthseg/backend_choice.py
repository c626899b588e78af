"""Pick the fastest Keras backend for training on this machine, by measuring it.

CPUs differ: on a 2-core AMD EPYC without AVX-512 the PyTorch backend ran the 2 mm model's
training step 2.1x faster than TensorFlow (3.1 s against 6.5 s, generator included), while the
2-core machine the first shipped model was trained on ran TensorFlow at 0.8 s per step, and a
2-core AMD EPYC *with* AVX-512 (2026-12-02) ran the same U-Net step 5.7x faster on TensorFlow
than on PyTorch (1.48 s against 8.47 s, both under load; the whole training step with the
generator 1.3 s against 2.9 s). So the
choice is measured, not assumed: each installed backend times a few U-Net training steps of the
run's architecture on random data, in a child process of its own (a process can hold one
Keras backend only), and the fastest one wins. The same holds for precision: half precision (``mixed_bfloat16`` in the
U-Net) ran 1.35-1.5x faster on a CPU with AMX units and 1.15x faster on one with only
``avx512_bf16`` (TensorFlow 1.29 against 1.48 s, PyTorch 7.32 against 8.47 s), and was
3.0x *slower* on a 2-core Intel Xeon with AVX-512 but no bfloat16 instructions (2026-12-06,
the 1.5 mm recipe's U-Net at 80^3: TensorFlow 4.15 against 1.37 s; JAX 13.9 s either way), so
:func:`fastest_setting` times both precisions on each backend and picks the fastest pair
(:func:`cpu_flags` says which bfloat16 instructions the CPU has, for the record).

    python -m synthseg.backend_choice --levels 5 --features 16 --crop 64      # prints a table
    python -m synthseg.backend_choice --precisions float32 mixed_bfloat16     # and both precisions
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys

#: backends and the package each needs
BACKENDS = {"tensorflow": "tensorflow", "torch": "torch", "jax": "jax"}
#: the U-Net's dtype policies that can be timed (mixed: bfloat16 compute, float32 weights)
PRECISIONS = ("float32", "mixed_bfloat16")


def cpu_flags() -> list[str]:
    """The CPU's bfloat16 / matrix-unit instruction flags (``avx512_bf16``, ``amx_bf16``,
    ``amx_tile``, ...) from ``/proc/cpuinfo``; empty where it cannot be read."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if "bf16" in f or f.startswith("amx"))


def installed_backends() -> list[str]:
    """Backends whose package can be imported here, in :data:`BACKENDS` order."""
    return [name for name, package in BACKENDS.items() if importlib.util.find_spec(package) is not None]


def time_backend(backend: str, levels: int, features: int, crop: int, steps: int = 3,
                 timeout: float = 600, precision: str = "float32", env: dict | None = None) -> float | None:
    """Median seconds of one U-Net training step (batch 1, ``crop``³ voxels, 33 labels) on
    ``backend`` in ``precision`` (:data:`PRECISIONS`), measured in a child process after one
    warm-up step, with this process's environment updated by ``env``; ``None`` if it failed."""
    cmd = [sys.executable, "-m", "synthseg.backend_choice", "--child", "--levels", str(levels),
           "--features", str(features), "--crop", str(crop), "--steps", str(steps), "--precision", precision]
    env = {**os.environ, **(env or {}), "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return float(json.loads(line)["seconds"])
    return None


def fastest_backend(levels: int, features: int, crop: int, candidates=None, report=print) -> str:
    """The backend with the fastest float32 training step among ``candidates`` (default: every
    installed one); TensorFlow when none could be timed (:func:`fastest_setting`)."""
    return fastest_setting(levels, features, crop, candidates, ("float32",), report)[0]


def fastest_setting(levels: int, features: int, crop: int, candidates=None, precisions=PRECISIONS,
                    report=print) -> tuple[str, bool]:
    """``(backend, mixed_precision)``: the fastest training step among ``candidates`` (default:
    every installed backend) x ``precisions``; TensorFlow in float32 when none could be timed."""
    times = {(b, p): time_backend(b, levels, features, crop, precision=p)
             for b in (candidates or installed_backends()) for p in precisions}
    for (backend, precision), seconds in times.items():
        column = f"{precision:<15s} " if len(precisions) > 1 else ""
        report(f"  {backend:<11s} {column}{'failed' if seconds is None else f'{seconds:.2f} s/step'}")
    timed = {k: s for k, s in times.items() if s is not None}
    backend, precision = min(timed, key=timed.get) if timed else ("tensorflow", "float32")
    return backend, precision != "float32"


def _child(levels: int, features: int, crop: int, steps: int, precision: str = "float32") -> None:
    import statistics
    import time

    import keras
    import numpy as np

    from synthseg.nn.unet import UNetOptions, build_unet

    keras.config.set_dtype_policy(precision)
    unet = build_unet(33, 1, UNetOptions(n_levels=levels, base_features=features))
    unet.compile(optimizer=keras.optimizers.Adam(1e-4), loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.random((1, crop, crop, crop, 1), dtype=np.float32)
    y = np.eye(33, dtype=np.float32)[rng.integers(0, 33, (1, crop, crop, crop))]
    unet.train_on_batch(x, y)  # compilation / tracing
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        unet.train_on_batch(x, y)
        times.append(time.perf_counter() - t0)
    print(json.dumps({"backend": keras.backend.backend(), "seconds": statistics.median(times)}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", type=int, default=5)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=None,
                        help="also time these precisions (default: float32 only)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", choices=PRECISIONS, default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.levels, args.features, args.crop, args.steps, args.precision)
        return 0
    print(f"U-Net training step, {args.levels} levels, {args.features} features, {args.crop}^3 voxels "
          f"(CPU bfloat16 flags: {', '.join(cpu_flags()) or 'none'}):")
    if args.precisions:
        backend, mixed = fastest_setting(args.levels, args.features, args.crop, precisions=args.precisions)
        print(f"fastest: {backend}, {'mixed_bfloat16' if mixed else 'float32'}")
    else:
        print(f"fastest: {fastest_backend(args.levels, args.features, args.crop)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
