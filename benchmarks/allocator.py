"""U-Net training step time under each memory allocator (see :mod:`synthseg.allocator`).

    python benchmarks/allocator.py                         # the shipped recipe's network, TensorFlow
    python benchmarks/allocator.py --backend jax --repeats 3
    python benchmarks/allocator.py --quick                 # a small network, one repeat (smoke run)

Each allocator setting (``system``; ``glibc``: glibc's tunables; ``jemalloc`` where its library
is installed) times a few U-Net training steps (:func:`synthseg.backend_choice.time_backend`:
its own child process, one warm-up step, the median of the steps) with the environment that
:func:`synthseg.allocator.allocator_environment` gives; repeats are interleaved, so a change in
the machine's load hits every setting alike. The table gives each setting's median seconds per
step and its speed-up over ``system`` (measured in the same run). Writes
``benchmarks/results/allocator.json``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, format_table, load_average, write_results  # noqa: E402
from synthseg.allocator import CHOICES, allocator_environment, jemalloc_library  # noqa: E402
from synthseg.backend_choice import time_backend  # noqa: E402
from synthseg.training.recipes import SHIPPED, recipe  # noqa: E402  (imports no Keras)


def settings_to_time(names=None) -> dict[str, dict[str, str]]:
    """``{setting: environment variables}`` for the settings this machine can run."""
    names = names or [c for c in CHOICES if c != "auto"]
    cleared = dict.fromkeys(("LD_PRELOAD", "MALLOC_CONF", "GLIBC_TUNABLES"), "")  # nothing inherited
    out = {}
    for name in names:
        if name == "jemalloc" and jemalloc_library() is None:
            continue
        chosen, variables = allocator_environment(name, environ={})
        if chosen == name:
            out[name] = {**cleared, **variables, "SYNTHSEG_ALLOCATOR_ACTIVE": name}
    return out


def main(argv=None) -> int:
    shipped = recipe(SHIPPED)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="tensorflow", choices=("tensorflow", "jax", "torch"))
    p.add_argument("--levels", type=int, default=shipped.unet["n_levels"])
    p.add_argument("--features", type=int, default=shipped.unet["base_features"])
    p.add_argument("--crop", type=int, default=shipped.crop)
    p.add_argument("--steps", type=int, default=4, help="timed steps per child (after one warm-up)")
    p.add_argument("--repeats", type=int, default=2, help="children per setting, interleaved")
    p.add_argument("--settings", nargs="+", choices=[c for c in CHOICES if c != "auto"], default=None)
    p.add_argument("--quick", action="store_true", help="3 levels, 8 features, crop 32, one repeat")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "allocator.json")
    args = p.parse_args(argv)
    if args.quick:
        args.levels, args.features, args.crop, args.repeats, args.steps = 3, 8, 32, 1, 2
    settings = settings_to_time(args.settings)
    print(f"U-Net {args.levels} levels x {args.features} features, crop {args.crop}^3, {args.backend}; "
          f"settings: {', '.join(settings)}; jemalloc: {jemalloc_library() or 'not installed'}", flush=True)
    times: dict[str, list[float]] = {name: [] for name in settings}
    for r in range(args.repeats):
        for name, env in settings.items():
            t = time_backend(args.backend, args.levels, args.features, args.crop, steps=args.steps, env=env)
            if t is not None:
                times[name].append(t)
            print(f"  repeat {r + 1}: {name:9s} {'failed' if t is None else f'{t:.2f} s/step'}", flush=True)
    medians = {name: statistics.median(v) if v else None for name, v in times.items()}
    base = medians.get("system")
    results = [{"setting": name, "environment": settings[name], "seconds_per_step": medians[name],
                "all_seconds": times[name],
                "speedup_over_system": base / medians[name] if base and medians[name] else None}
               for name in settings]
    print()
    print(format_table(["allocator", "s/step", "speed-up over system"],
                       [(r["setting"], r["seconds_per_step"], r["speedup_over_system"]) for r in results]))
    path = write_results(args.out, "allocator", {
        "backend": args.backend, "levels": args.levels, "features": args.features, "crop": args.crop,
        "steps": args.steps, "repeats": args.repeats, "load_average_end": load_average()}, results,
        packages=["keras", "tensorflow", "jax", "torch"])
    print(f"\nwrote {path}")
    return 0 if all(m is not None for m in medians.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
