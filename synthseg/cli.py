"""``synthseg`` command line: thin wrappers over the library's functions.

Every command reports bad input as one line naming the file and the problem, and exits with a
non-zero status; outputs are written atomically.
"""
from __future__ import annotations

import argparse
import sys
import warnings

from lab2im.errors import InputError

#: every subcommand: ``name -> (module, help attribute)``; each module has ``add_arguments(parser)``
#: and ``run(args) -> int`` (and may have ``DESCRIPTION``), beside the stage code it runs
COMMANDS = {
    "demo": ("synthseg.demo", "HELP"),
    "generate": ("synthseg.generation.generate_command", "HELP"),
    "build-labels": ("synthseg.data.training_labels", "BUILD_HELP"),
    "train": ("synthseg.training.train_command", "HELP"),
    "train-supervised": ("synthseg.training.supervised_command", "HELP"),
    "train-slices": ("synthseg.training.slices_command", "HELP"),
    "estimate-priors": ("synthseg.generation.estimate_priors", "HELP"),
    "predict": ("synthseg.inference.predict_command", "HELP"),
    "cascade": ("synthseg.inference.cascade", "HELP"),
    "validate": ("synthseg.evaluation.validate", "HELP"),
    "evaluate": ("synthseg.evaluation.evaluate", "HELP"),
    "merge": ("synthseg.data.merge", "HELP"),
    "fetch": ("synthseg.data.datasets", "FETCH_HELP"),
}
#: commands that run a network or the generator: the backend is started quietly before them
BACKEND_COMMANDS = {"demo", "generate", "train", "train-supervised", "train-slices", "predict", "validate", "cascade"}


def build_parser() -> argparse.ArgumentParser:
    import importlib
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("synthseg")
    except PackageNotFoundError:  # run from a source tree that is not installed
        installed = "unknown (not installed)"
    parser = argparse.ArgumentParser(prog="synthseg", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"synthseg {installed}")
    parser.add_argument("--verbose", action="store_true",
                        help="show the backend's start-up messages (TensorFlow's C++ logs); default: quiet")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_name) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=getattr(module, help_name), description=getattr(module, "DESCRIPTION", None))
        module.add_arguments(p)
        p.set_defaults(run=module.run)
        p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,  # also after the command
                       help="show the backend's start-up messages")
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"synthseg: warning: {message}", file=sys.stderr if file is None else file)


def entry() -> int:
    """The ``synthseg`` console script: :func:`main` in a process started with the faster
    memory allocator (:func:`synthseg.allocator.reexec_with_fast_allocator`)."""
    from synthseg.allocator import reexec_with_fast_allocator

    reexec_with_fast_allocator()
    return main()


def main(argv=None) -> int:
    """Run a command; bad input (:class:`~lab2im.errors.InputError`, which includes outputs that
    cannot be written), file-system errors and running out of memory are one line on stderr and
    exit status 1 (interrupted: 130); warnings are one line each (``synthseg: warning: ...``)."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        try:
            if args.command in BACKEND_COMMANDS:
                from synthseg.quiet import start_backend

                start_backend(args.verbose)
            return args.run(args)
        except InputError as exc:
            print(f"synthseg: error: {exc}", file=sys.stderr)
            return 1
        except MemoryError:
            print(f"synthseg: error: out of memory in '{args.command}' (smaller inputs, --tile or --crop help "
                  "prediction)", file=sys.stderr)
            return 1
        except OSError as exc:  # the file system: permissions, disk full, a vanished file
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"synthseg: error: {where}{exc.strerror or exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("synthseg: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
