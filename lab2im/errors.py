"""One exception type for bad user input, so callers (and the CLI) can report it cleanly."""
from __future__ import annotations

import os


class InputError(ValueError):
    """Bad user input: a file or value the library cannot use.

    The message always names the offending file (when there is one) and the problem, e.g.
    ``"labels/sub-01.nii.gz: label map is 4D (shape (10, 10, 10, 3)); expected 3D"``.
    The CLI turns it into a one-line message and a non-zero exit status, never a traceback.
    """

    def __init__(self, problem: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(problem if self.path is None else f"{self.path}: {problem}")


class OutputError(InputError, OSError):
    """An output that could not be written (disk full, read-only file system, no permission).

    The message names the file and the reason, e.g.
    ``"segs/sub-01_synthseg.nii.gz: cannot write (No space left on device); an older file of
    that name is left as it was"``. It is an :class:`InputError` so that every caller that
    reports bad input as one line (the CLI, a batch that goes on with the next scan) reports
    this the same way; it is also an ``OSError`` (``errno`` is the writer's), so code that
    caught the writer's ``OSError`` still does.
    """

    def __init__(self, problem: str, path: str | os.PathLike | None = None, errno: int | None = None):
        super().__init__(problem, path)
        self.errno = errno
