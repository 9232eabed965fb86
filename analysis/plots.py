"""Plot functions: they take result objects (never models) and return plotly figures."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import plotly.graph_objects as go
from plotly.subplots import make_subplots

if TYPE_CHECKING:
    from analysis.sinks import SinkResult


def sink_overview(result: SinkResult, sample: int = 0, image: int = 0) -> go.Figure:
    """phi of the visual tokens on the image grid (consensus layers) and sinks per layer."""
    n_layers = result.n_layers
    layer = min(2, n_layers - 1)
    phi_grid = result.phi_map(sample, layer, image=image).numpy()
    counts = result.counts()
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(f"phi of visual tokens, layer {layer} input", "sinks per layer"),
        column_widths=[0.45, 0.55],
    )
    fig.add_trace(
        go.Heatmap(z=phi_grid, colorscale="Viridis", colorbar={"title": "phi", "x": 0.42}),
        row=1,
        col=1,
    )
    fig.update_yaxes(autorange="reversed", title_text="patch row", row=1, col=1)
    fig.update_xaxes(title_text="patch column", row=1, col=1)
    layers = list(range(n_layers))
    fig.add_trace(
        go.Bar(x=layers, y=counts["visual"][sample].tolist(), name="visual sinks"), row=1, col=2
    )
    fig.add_trace(
        go.Bar(x=layers, y=counts["text"][sample].tolist(), name="text sinks"), row=1, col=2
    )
    fig.update_xaxes(title_text="layer", row=1, col=2)
    fig.update_yaxes(title_text="tokens with phi >= tau", row=1, col=2)
    fig.update_layout(
        title=f"Sink tokens (tau = {result.tau:g}, dims {result.dims})", barmode="group", height=420
    )
    return fig


def write_html(fig: go.Figure, path: str | Path) -> Path:
    """Self-contained HTML (plotly.js inlined, works offline)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path
