"""Small helpers shared by the benchmark scripts: timing, machine info, tables, JSON results.

Every benchmark writes one JSON file (see :func:`write_results`) holding its settings, its
measurements and a ``machine`` block, so a number can always be traced to where it was taken.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def select_keras_backend(name: str | None) -> str:
    """Set ``KERAS_BACKEND`` before Keras is imported and return the backend in use.

    ``name`` (e.g. from a ``--backend`` option) wins; otherwise the user's ``KERAS_BACKEND`` is
    kept; otherwise TensorFlow, Keras' default.

    Raises:
        RuntimeError: Keras is already imported with another backend.
    """
    wanted = name or os.environ.get("KERAS_BACKEND") or "tensorflow"
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != wanted:
            raise RuntimeError(f"Keras is already imported with backend {keras.backend.backend()!r}; "
                               f"cannot switch to {wanted!r}")
    os.environ["KERAS_BACKEND"] = wanted
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return wanted


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1) -> dict:
    """Call ``fn`` ``warmup`` times untimed (the first of them timed separately), then ``repeats`` times.

    Returns:
        ``{"first_call_s", "times_s", "median_s", "min_s", "mean_s", "repeats", "warmup",
        "load_average_before", "load_average_after"}``;
        ``first_call_s`` is the first warm-up call (tracing / compilation included), ``None``
        without warm-up.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    first = None
    load_before = load_average()
    for i in range(warmup):
        t0 = time.perf_counter()
        fn()
        if i == 0:
            first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"first_call_s": first, "times_s": times, "median_s": statistics.median(times),
            "min_s": min(times), "mean_s": statistics.fmean(times), "repeats": repeats,
            "warmup": warmup, "load_average_before": load_before, "load_average_after": load_average()}


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int | Mapping[str, int],
                     warmup: int | Mapping[str, int] = 1) -> dict[str, dict]:
    """Like :func:`time_calls` for several functions, timed in turn (round robin).

    Interleaving spreads any slowdown from other processes evenly over the functions compared,
    so their ratio stays fair on a busy machine. A function that raises during warm-up is left
    out of the timed rounds and reported as ``{"error": "Type: message"}``.

    ``repeats`` and ``warmup`` may be dicts by function name (e.g. one call for a function that
    takes minutes): a function with fewer repeats leaves the rounds when it has had them. All
    warm-ups run first, in the order of ``fns``.
    """
    reps = {n: int(repeats[n] if isinstance(repeats, Mapping) else repeats) for n in fns}
    warm = {n: int(warmup[n] if isinstance(warmup, Mapping) else warmup) for n in fns}
    if any(r < 1 for r in reps.values()):
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    out: dict[str, dict] = {}
    live = {}
    for name, fn in fns.items():
        out[name] = {"first_call_s": None, "times_s": [], "repeats": reps[name], "warmup": warm[name]}
        try:
            for i in range(warm[name]):
                t0 = time.perf_counter()
                fn()
                if i == 0:
                    out[name]["first_call_s"] = time.perf_counter() - t0
        except Exception as exc:  # reported, not raised: the other functions still get timed
            out[name] = {"error": error_reason(exc)}
            continue
        live[name] = fn
    load_before = load_average()
    for i in range(max((reps[n] for n in live), default=0)):
        for name, fn in live.items():
            if i >= reps[name]:
                continue
            t0 = time.perf_counter()
            fn()
            out[name]["times_s"].append(time.perf_counter() - t0)
    load_after = load_average()
    for name in live:
        times = out[name]["times_s"]
        out[name].update(median_s=statistics.median(times), min_s=min(times), mean_s=statistics.fmean(times),
                         load_average_before=load_before, load_average_after=load_after)
    return out


def mean_and_ci95(values) -> tuple[float, float]:
    """Mean of ``values`` and the half-width of its 95% interval (normal approximation; at least
    two values)."""
    import numpy as np

    v = np.asarray(values, np.float64)
    return float(v.mean()), float(1.96 * v.std(ddof=1) / np.sqrt(len(v)))


def error_reason(exc: BaseException, max_len: int = 400) -> str:
    """``"Type: message"`` on one line, without colour codes; Keras' "Exception encountered when
    calling ..." wrapper keeps the message it wraps."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].startswith("Exception encountered"):
        lines = lines[:2]
    else:
        lines = lines[:1]
    return f"{type(exc).__name__}: {' '.join(lines)}"[:max_len]


def load_average() -> float | None:
    """The 1-minute load average (``None`` where unknown): above the core count, timings are
    inflated by other processes."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    """Installed versions of distributions (``None`` when not installed); imports nothing."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(packages: Iterable[str] = ()) -> dict:
    """Where a benchmark ran: CPU, core counts, OS, Python and package versions."""
    from lab2im.io import usable_cpus

    usable = usable_cpus()
    mem_gib = None
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return {"cpu_model": _cpu_model(), "cpu_count": os.cpu_count(), "cpus_usable": usable,
            "memory_gib": mem_gib, "platform": platform.platform(), "machine": platform.machine(),
            "python": platform.python_version(), "load_average_1min": load_average(),
            "packages": package_versions(packages)}


def now_iso() -> str:
    """The current UTC date and time, ISO 8601, to the second."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def write_json_atomic(path: str | os.PathLike, data) -> Path:
    """Write ``data`` as indented JSON atomically (:func:`lab2im.io.atomic_write_text`)."""
    from lab2im.io import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(obj):
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_results(path, name: str, settings: dict, results, packages: Iterable[str] = (), **extra) -> Path:
    """Write one benchmark's results, with the date and :func:`machine_info`, atomically."""
    data = {"benchmark": name, "date": now_iso(), "machine": machine_info(packages),
            "settings": settings, "results": results, **extra}
    return write_json_atomic(path, data)


def format_table(headers: Sequence[str], rows: Iterable[Sequence]) -> str:
    """A plain-text table: text left-aligned, numbers right-aligned; ``None`` shows as ``-``."""
    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    rows = [list(r) for r in rows]
    text = [[cell(v) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in text]) for i, h in enumerate(headers)]
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) for i in range(len(headers))]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric)).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep] + [line(r) for r in text])


def gpu_status() -> dict:
    """Which GPUs this machine offers (``nvidia-smi -L``, else torch's CUDA when torch is
    installed), with a one-line note for the results: without one, the figures are CPU only."""
    import shutil
    import subprocess

    gpus: list[str] = []
    if shutil.which("nvidia-smi"):
        try:
            r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
            gpus = [ln.strip() for ln in r.stdout.splitlines() if ln.strip().startswith("GPU")]
        except (OSError, subprocess.SubprocessError):
            pass
    if not gpus and "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    note = (f"GPU: {'; '.join(gpus)}" if gpus else
            "no GPU was available in this session: every figure is on CPU")
    return {"gpu_available": bool(gpus), "gpus": gpus, "note": note}
