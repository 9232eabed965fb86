"""Writing figures: offline HTML, an HTML ``<div>`` and PNG (matplotlib, no browser)."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go

from analysis.config import PNG_SCALE
from analysis.fsio import write_atomic


def write_html(fig: go.Figure, path: str | Path, *, include_plotlyjs: bool | str = True) -> Path:
    """Write an interactive HTML file that works offline.

    ``include_plotlyjs=True`` inlines plotly.js (self-contained, ~4.6 MB);
    ``"directory"`` writes one ``plotly.min.js`` next to the file and links it,
    which is what a folder of figures should use.
    """
    path = Path(path)
    if include_plotlyjs == "directory":  # plotly also writes plotly.min.js next to it
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.write_html(path, include_plotlyjs="directory", full_html=True, config=_HTML_CONFIG)
        return path
    page = fig.to_html(include_plotlyjs=include_plotlyjs, full_html=True, config=_HTML_CONFIG)
    return write_atomic(path, page)


_HTML_CONFIG = {"responsive": True}


def figure_div(fig: go.Figure) -> str:
    """The figure as an HTML ``<div>`` for a page that loads plotly.js once itself."""
    return fig.to_html(include_plotlyjs=False, full_html=False, config={"responsive": True})


def to_png(fig: go.Figure, path: str | Path, *, scale: float = PNG_SCALE) -> Path:
    """Render ``fig`` to a PNG with matplotlib (no browser, no kaleido).

    Supports what this module draws: subplots, heatmaps (with colour bars),
    images, scatter (markers, lines, text, error bars), bars (grouped, error
    bars), shapes, annotations, axis titles / log / reversed axes and legends.
    """
    from analysis.png import render

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    render(fig, path, scale=scale)
    return path
