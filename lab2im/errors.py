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
