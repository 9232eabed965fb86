"""The toolkit's error base: the CLI prints a :class:`VsinkError` as one line (exit 2).

Anything else that escapes a command is a bug and keeps its traceback.
"""

from __future__ import annotations


class VsinkError(Exception):
    """An error whose message says what is wrong and what to do; no traceback needed."""


class UserInputError(VsinkError, ValueError):
    """A bad argument or setting (also a ValueError, so callers catching that still work)."""
