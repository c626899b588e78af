"""A memory allocator that does not hand every large tensor back to the kernel.

A 3D U-Net step allocates and frees tensors of 8-32 MB hundreds of times. glibc's ``malloc``
serves allocations that large with ``mmap`` and returns them with ``munmap`` at once, so every
step faults its memory in again page by page: on a 2-core AMD EPYC without AVX-512
(2026-12-02) the 2 mm model's training step spent as much time in the kernel as in the
computation (about 250,000 page faults per second). Measured there (``benchmarks/allocator.py``,
the shipped recipe's U-Net step, then 2 mm and a 64³ crop, median of 2 interleaved runs): system allocator 5.4 s; glibc
kept from returning memory, on transparent huge pages (``GLIBC_TUNABLES``, nothing to
install) 3.9 s (1.39x); jemalloc (Debian/Ubuntu: ``apt install libjemalloc2``) without decay
and on huge pages 3.3 s (1.64x). The price is memory kept: ``synthseg demo`` (the 1 mm MNI
T1) peaked at 1.63 GB with the system allocator, 1.82 GB with glibc's tunables and 1.78 GB
with jemalloc, in the same time (37-40 s, under load); ``SYNTHSEG_ALLOCATOR=system`` opts out.

An allocator is chosen when a process starts (``LD_PRELOAD``, ``GLIBC_TUNABLES``), so
:func:`reexec_with_fast_allocator` sets the environment and starts the same command again
(``os.execv``: same process id, nothing has run yet); the command line and
``scripts/train_synthseg.py`` call it first. ``SYNTHSEG_ALLOCATOR`` chooses: ``auto`` (default:
jemalloc where its library is installed, else glibc's tunables), ``jemalloc``, ``glibc``, or
``system`` (leave the process as it is).
"""
from __future__ import annotations

import ctypes.util
import os
import sys

#: the user's choice: auto, jemalloc, glibc or system
CHOICE_ENV = "SYNTHSEG_ALLOCATOR"
#: set in the re-executed process: which allocator settings it runs with
ACTIVE_ENV = "SYNTHSEG_ALLOCATOR_ACTIVE"
CHOICES = ("auto", "jemalloc", "glibc", "system")

#: glibc: large blocks from the heap (mmap threshold at its 32 MB maximum), never trimmed, grown
#: 256 MB at a time, on transparent huge pages (``hugetlb`` needs glibc >= 2.35; older ones
#: ignore the tunables they do not know)
GLIBC_TUNABLES = ("glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432:"
                  "glibc.malloc.trim_threshold=4294967295:glibc.malloc.top_pad=268435456")
#: jemalloc: freed pages kept (no decay), a background thread, huge pages
JEMALLOC_CONF = "background_thread:true,dirty_decay_ms:-1,muzzy_decay_ms:-1,thp:always,metadata_thp:always"


def jemalloc_library() -> str | None:
    """The jemalloc shared library's name as the dynamic loader finds it, or ``None``."""
    return ctypes.util.find_library("jemalloc")


def _append(environ, name: str, value: str, sep: str) -> str:
    old = environ.get(name, "")
    return f"{old}{sep}{value}" if old else value


def allocator_environment(choice: str = "auto", environ=None) -> tuple[str, dict[str, str]]:
    """``(name, variables)``: the environment variables that select the allocator ``choice``
    (:data:`CHOICES`; ``auto``: jemalloc if installed, else glibc), added to what ``environ``
    (default ``os.environ``) already holds. ``("system", {})`` for ``system`` and off Linux.

    Raises:
        ValueError: an unknown choice, or ``jemalloc`` asked for but not installed.
    """
    environ = os.environ if environ is None else environ
    if choice not in CHOICES:
        raise ValueError(f"{CHOICE_ENV} must be one of {', '.join(CHOICES)}, got {choice!r}")
    if choice == "system" or not sys.platform.startswith("linux"):
        return "system", {}
    library = jemalloc_library() if choice in ("auto", "jemalloc") else None
    if choice == "jemalloc" and library is None:
        raise ValueError(f"{CHOICE_ENV}=jemalloc, but no jemalloc library is installed (apt install libjemalloc2)")
    if library is not None:
        return "jemalloc", {"LD_PRELOAD": _append(environ, "LD_PRELOAD", library, ":"),
                            "MALLOC_CONF": _append(environ, "MALLOC_CONF", JEMALLOC_CONF, ",")}
    return "glibc", {"GLIBC_TUNABLES": _append(environ, "GLIBC_TUNABLES", GLIBC_TUNABLES, ":")}


def active_allocator() -> str:
    """The allocator settings this process was started with (``system`` if none)."""
    return os.environ.get(ACTIVE_ENV, "system")


def reexec_with_fast_allocator() -> None:
    """Start this command again with the allocator ``SYNTHSEG_ALLOCATOR`` chooses (see the module
    docstring). Returns without doing anything when the process already runs with it, when the
    choice is ``system`` or the choice is not valid (a warning), or when the command cannot
    be started again (it then goes on with the system allocator). Call it before any work.
    """
    if ACTIVE_ENV in os.environ:
        return
    try:
        name, variables = allocator_environment(os.environ.get(CHOICE_ENV, "auto"))
    except ValueError as exc:
        print(f"synthseg: warning: {exc}; keeping the system allocator", file=sys.stderr)
        return
    if not variables:
        return
    env = {**os.environ, **variables, ACTIVE_ENV: name}
    argv = [sys.executable, *sys.orig_argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, argv, env)
    except OSError:
        return
