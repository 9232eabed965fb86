"""The toolkit's error base: the CLI prints a :class:`VsinkError` as one line (exit 2)."""

from __future__ import annotations


class VsinkError(Exception):
    """An error whose message says what is wrong and what to do; no traceback needed."""
