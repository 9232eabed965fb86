"""The errors of an evaluation run."""

from __future__ import annotations

from pathlib import Path

from analysis.errors import UserInputError


class EvalError(UserInputError):
    """A run folder or its configuration is unusable; the message says why and what to do.

    Also a ``ValueError``, as it always was, so callers catching that keep working.
    """


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by SIGINT/SIGTERM; what it wrote is kept and the same call resumes."""

    def __init__(self, run: Path, written: int, present: int) -> None:
        super().__init__(f"{run}: interrupted after {written} records")
        self.run, self.written, self.present = run, written, present
