"""The look shared by every figure: template, colours, colour scales and layout helpers."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

TEMPLATE = "plotly_white"
SINK_COLOR = "#00e5ff"
GROUP_COLORS = {
    "BOS": "#222222",
    "text": "#1f77b4",
    "visual sink": "#d62728",
    "visual non-sink": "#8c8c8c",
}
TARGET_LABELS = {
    "sinks": "visual sinks",
    "random": "random visual<br>(same count)",
    "nonsink": "all visual<br>non-sinks",
    "visual": "all visual",
    "positions": "chosen<br>positions",
}
TARGET_COLORS = {
    "sinks": "#d62728",
    "random": "#7f7f7f",
    "nonsink": "#1f77b4",
    "visual": "#9467bd",
    "positions": "#2ca02c",
}
# Viridis with an alpha ramp: low attention leaves the image visible, high attention covers it.
HEAT = [
    [0.0, "rgba(68,1,84,0.0)"],
    [0.08, "rgba(72,40,120,0.35)"],
    [0.3, "rgba(49,104,142,0.7)"],
    [0.55, "rgba(33,145,140,0.8)"],
    [0.8, "rgba(94,201,98,0.88)"],
    [1.0, "rgba(253,231,37,0.95)"],
]
DIVERGING = "RdBu_r"


def clean_token(token: str) -> str:
    """A token as a reader would write it (SentencePiece / BPE space markers removed)."""
    text = token.replace("\u2581", " ").replace("\u0120", " ").replace("\u010a", "\\n")
    text = text.replace("\n", "\\n").strip()
    return text or repr(token)


def _subplot_domains(fig: go.Figure, row: int, col: int) -> tuple[tuple[float, float], ...]:
    subplot = fig.get_subplot(row, col)
    return tuple(subplot.xaxis.domain), tuple(subplot.yaxis.domain)


def _colorbar(fig: go.Figure, row: int, col: int, title: str) -> dict[str, Any]:
    """A colour bar just right of subplot (row, col), as tall as it."""
    (_, x1), (y0, y1) = _subplot_domains(fig, row, col)
    return {
        "title": {"text": title, "side": "right"},
        "x": x1 + 0.005,
        "xanchor": "left",
        "y": (y0 + y1) / 2,
        "len": (y1 - y0) * 0.95,
        "thickness": 12,
    }


def _panel_px(fig: go.Figure, row: int, col: int) -> tuple[float, float]:
    margin = fig.layout.margin
    width, height = fig.layout.width or 900, fig.layout.height or 500
    left = margin.l if margin.l is not None else 80
    right = margin.r if margin.r is not None else 80
    top = margin.t if margin.t is not None else 100
    bottom = margin.b if margin.b is not None else 80
    (x0, x1), (y0, y1) = _subplot_domains(fig, row, col)
    return (width - left - right) * (x1 - x0), (height - top - bottom) * (y1 - y0)


def _legend_below(fig: go.Figure, offset_px: float = 62.0) -> dict[str, Any]:
    """A horizontal legend ``offset_px`` below the plot area (under the x-axis titles)."""
    margin = fig.layout.margin
    plot_h = (fig.layout.height or 500) - (margin.t or 0) - (margin.b or 0)
    return {
        "orientation": "h",
        "x": 0.0,
        "xanchor": "left",
        "y": -offset_px / max(plot_h, 1.0),
        "yanchor": "top",
    }


def _grid_layout(n: int, cols: int) -> tuple[int, int]:
    cols = max(1, min(cols, n))
    return math.ceil(n / cols), cols


def _span(layers: Sequence[int]) -> str:
    layers = list(layers)
    if not layers:
        return "none"
    if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 1:
        return f"{layers[0]}-{layers[-1]}"
    return ", ".join(str(x) for x in layers)


def strip_tags(text: str) -> str:
    """Plotly rich text to plain text (``<br>`` becomes a newline)."""
    text = re.sub(r"<br\s*/?>", "\n", text or "")
    return html.unescape(re.sub(r"<[^>]+>", "", text))
