"""The run folder: the contract between training, prediction, validation and shipping.

Every training run (synthetic, supervised, slices) lives in one folder, and its
``options.json`` says what it is::

    {"kind": "synthetic", "schema_version": 2, "generator": {...}, "unet": {...}, "training": {...}}
    {"kind": "supervised", "schema_version": 2, "unet", "supervised", "augmentation", "transfer", "data"}
    {"kind": "slices", ...}   the sections of a supervised run; ``data.slices`` names the axis and k

:func:`read_spec` is the one reader (each stage then turns the sections it needs into its
options objects), :func:`write_spec` the one writer (atomic). Older folders still load: a file
without ``kind`` is a synthetic run (schema 1, as the shipped model's), a supervised one with
``data.slices`` is a slice run. :func:`prepare_folder` checks a folder before a run starts and
:func:`set_determinism` asks the backend for deterministic ops; the checkpoints
(:mod:`synthseg.training.checkpoints`) and the CSV logs (:mod:`synthseg.training.callbacks`) are
the rest of the folder.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from lab2im.errors import InputError
from lab2im.io import atomic_write_text, make_writable_folder, short_error

OPTIONS_FILE = "options.json"
#: version of the ``options.json`` layout written now (1: the files written before ``kind`` was)
SCHEMA_VERSION = 2
_SUPERVISED_SECTIONS = ("unet", "supervised", "augmentation", "transfer", "data")
#: the sections each kind of run writes (``transfer`` and ``data`` may be empty)
SECTIONS = {"synthetic": ("generator", "unet", "training"),
            "supervised": _SUPERVISED_SECTIONS,
            "slices": _SUPERVISED_SECTIONS}
KINDS = tuple(SECTIONS)
#: sections any kind may have: ``prediction``, the defaults prediction takes for this network
#: (``qc_threshold``, chosen by ``benchmarks/qc.py``; written by ``scripts/ship_model.py --qc``)
OPTIONAL_SECTIONS = ("prediction",)
#: kinds trained on real image/label pairs (read by :func:`synthseg.training.supervised.load_supervised_options`)
PAIR_KINDS = ("supervised", "slices")


@dataclass(frozen=True)
class RunSpec:
    """A run's ``options.json``: its ``kind``, the layout version and the raw sections.

    Attributes:
        kind: one of :data:`KINDS`.
        schema_version: the layout version the file was written with (1 for old files).
        sections: section name -> the JSON object as written.
        path: the ``options.json`` file (for error messages).
    """

    kind: str
    schema_version: int
    sections: dict = field(repr=False)
    path: Path

    def section(self, name: str) -> dict:
        """One section (``{}`` for an absent optional one: ``transfer``, ``data``, ``prediction``)."""
        value = self.sections.get(name)
        if value is None and name in ("transfer", "data", *OPTIONAL_SECTIONS):
            return {}
        if not isinstance(value, dict):
            raise InputError(f"options file lacks or garbles its {name!r} section", self.path)
        return value

    def require(self, *kinds: str, hint: str = "") -> "RunSpec":
        """This spec, if its kind is one of ``kinds``; else a clear error."""
        if self.kind not in kinds:
            raise InputError(f"a {self.kind} training run, not a {' or '.join(kinds)} one{hint}", self.path)
        return self


def read_spec(run_dir) -> RunSpec:
    """Read and check ``run_dir/options.json``.

    Raises:
        InputError: no such file, not JSON, an unknown kind, a newer schema version, or
            sections the kind does not have (each naming the file).
    """
    path = Path(run_dir) / OPTIONS_FILE
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError("no options.json: not a synthseg training folder", run_dir) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"options file is not valid JSON ({short_error(exc)})", path) from None
    if not isinstance(d, dict):
        raise InputError("options file does not hold a JSON object", path)
    version = d.pop("schema_version", 1)
    if not isinstance(version, int) or version < 1:
        raise InputError(f"schema_version must be a positive integer, got {version!r}", path)
    if version > SCHEMA_VERSION:
        raise InputError(f"written by a newer synthseg (schema_version {version}, this one reads up to "
                         f"{SCHEMA_VERSION}): upgrade synthseg", path)
    kind = d.pop("kind", None)
    if kind is None:  # schema 1: only synthetic runs had no kind
        if "generator" not in d:
            raise InputError("options file has no 'kind' and no 'generator' section: not a synthseg run", path)
        kind = "synthetic"
    if kind not in SECTIONS:
        raise InputError(f"unknown kind of run {kind!r} (known: {', '.join(KINDS)})", path)
    if kind == "supervised" and isinstance(d.get("data"), dict) and d["data"].get("slices") is not None:
        kind = "slices"  # slice runs were written as supervised ones before schema 2
    unknown = sorted(set(d) - set(SECTIONS[kind]) - set(OPTIONAL_SECTIONS))
    if unknown:
        raise InputError(f"unknown section(s) {unknown} for a {kind} run", path)
    return RunSpec(kind, version, d, path)


def write_spec(run_dir, kind: str, **sections) -> Path:
    """Write ``run_dir/options.json`` atomically: ``kind``, :data:`SCHEMA_VERSION` and the
    sections (JSON-serialisable dicts) of that kind, in :data:`SECTIONS` order."""
    if kind not in SECTIONS:
        raise ValueError(f"unknown kind {kind!r}")
    extra = sorted(set(sections) - set(SECTIONS[kind]) - set(OPTIONAL_SECTIONS))
    if extra:
        raise ValueError(f"a {kind} run has no section(s) {extra}")
    body = {"kind": kind, "schema_version": SCHEMA_VERSION}
    body.update({name: sections[name] for name in SECTIONS[kind] + OPTIONAL_SECTIONS if name in sections})
    path = Path(run_dir) / OPTIONS_FILE
    atomic_write_text(path, json.dumps(body, indent=2) + "\n")
    return path


def unet_options(spec: RunSpec):
    """The run's :class:`synthseg.nn.unet.UNetOptions`."""
    from synthseg.nn.unet import UNetOptions

    return UNetOptions.from_dict(spec.section("unet"), source=str(spec.path))


def prepare_folder(run_dir: Path, resume: bool) -> Path | None:
    """Check the run folder before any heavy work; return the checkpoint to resume from.

    A new run needs a writable folder that holds no run (it is created with ``checkpoints/``);
    a resumed one needs a readable ``last.npz``.
    """
    from synthseg.training.checkpoints import read_header

    run_dir = Path(run_dir)
    last = run_dir / "last.npz"
    if resume:
        if not last.exists():
            raise InputError("nothing to resume: no last.npz (start a new run, without resume / --resume)", run_dir)
        read_header(last)  # a corrupt checkpoint is reported before anything is built
        return last
    if last.exists() or (run_dir / OPTIONS_FILE).exists():
        raise InputError("folder already holds a training run; continue it with resume (--resume on the "
                         "command line) or choose another folder", run_dir)
    make_writable_folder(run_dir, "cannot write checkpoints here")
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    return None


def set_determinism(deterministic: bool) -> None:
    """Ask the backend for deterministic ops (TensorFlow; the other backends are already
    deterministic on the CPU for these models)."""
    import keras

    if deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
