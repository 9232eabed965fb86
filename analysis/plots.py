"""The figure builders, importable as ``analysis.plots`` (they live in :mod:`analysis.viz`)."""

from __future__ import annotations

from analysis import viz
from analysis.viz import *  # noqa: F403  (the same names, one list: viz.__all__)

__all__ = list(viz.__all__)
