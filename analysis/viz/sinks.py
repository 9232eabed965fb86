"""Sink figures: massive activations (fig. 2), phi vs attention (fig. 3a), sinks per layer."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.viz.style import (
    GROUP_COLORS,
    TEMPLATE,
    _span,
    clean_token,
)

if TYPE_CHECKING:
    from analysis.capture import ReceivedAttention, TokenStates
    from analysis.sinks import SinkResult


def hidden_state_magnitudes(states: TokenStates) -> go.Figure:
    """Paper figure 2: |x_d| over every hidden dimension for BOS, a visual sink, a non-sink token.

    The sink dims are drawn in red and labelled: BOS and visual sinks carry
    massive activations there, the non-sink visual token does not.
    """
    magnitude = states.states.abs().float().numpy()
    n_tokens, d_model = magnitude.shape
    titles = [
        f"{label}: '{html.escape(clean_token(token))}' at position {pos}, phi = {value:.1f}"
        for label, token, pos, value in zip(
            states.labels, states.tokens, states.positions, states.phi, strict=True
        )
    ]
    fig = make_subplots(
        rows=n_tokens, cols=1, shared_xaxes=True, subplot_titles=titles, vertical_spacing=0.09
    )
    dims = list(states.dims)
    colors = np.full(d_model, "#7f7f7f", dtype=object)
    colors[dims] = GROUP_COLORS["visual sink"]
    for index in range(n_tokens):
        fig.add_trace(
            go.Bar(
                x=np.arange(d_model),
                y=magnitude[index].astype(np.float32),
                marker={"color": colors.tolist(), "line": {"width": 0}},
                name=states.labels[index],
                showlegend=False,
                hovertemplate="dim %{x}<br>|x_d| %{y:.4g}<extra></extra>",
            ),
            row=index + 1,
            col=1,
        )
        peak = float(magnitude[index].max())
        fig.add_trace(
            go.Scatter(
                x=dims,
                y=[float(magnitude[index, d]) for d in dims],
                mode="markers+text",
                text=[f"dim {d}" for d in dims],
                textposition="top center",
                marker={"color": GROUP_COLORS["visual sink"], "size": 7, "symbol": "diamond"},
                name="sink dims",
                showlegend=index == 0,
                hovertemplate="sink dim %{x}<br>|x_d| %{y:.4g}<extra></extra>",
            ),
            row=index + 1,
            col=1,
        )
        fig.update_yaxes(title_text="|x_d|", range=[0, peak * 1.3], row=index + 1, col=1)
    # Every panel gets the range: static renderers do not follow shared_xaxes.
    fig.update_xaxes(range=[-0.5, d_model - 0.5])
    fig.update_xaxes(title_text="hidden dimension d", row=n_tokens, col=1)
    fig.update_layout(
        title={
            "text": f"Hidden-state magnitude per dimension at the input of layer {states.layer} "
            f"(sink dims {dims})"
        },
        width=1000,
        height=260 * n_tokens + 120,
        template=TEMPLATE,
        bargap=0.0,
        margin={"l": 80, "r": 40, "t": 100, "b": 70},
        legend={"x": 1.0, "xanchor": "right", "y": 1.0, "yanchor": "bottom", "orientation": "h"},
    )
    return fig


# ----------------------------------------------------------------------------- figure 3


def phi_vs_attention(
    received: ReceivedAttention, *, layers: Sequence[int] | None = None
) -> go.Figure:
    """Paper figure 3a: phi of each token vs the attention it receives from text queries.

    Points pool samples and ``layers`` (default: the layers whose input holds
    a visual sink in some sample); the dashed line is tau.
    """
    groups = received.groups()
    if layers is None:
        has_sink = groups["visual sink"].any(-1).any(0)
        slots = [i for i in range(len(received.layers)) if bool(has_sink[i])] or list(
            range(len(received.layers))
        )
    else:
        slots = [received.layers.index(int(x)) for x in layers]
    chosen_layers = [received.layers[i] for i in slots]
    fig = go.Figure()
    for name in ("visual non-sink", "text", "visual sink", "BOS"):
        mask = groups[name][:, slots]
        x = received.phi[:, slots][mask].numpy().astype(np.float32)
        y = received.received[:, slots][mask].numpy().astype(np.float32)
        keep = y > 0
        if not keep.any():
            continue
        fig.add_trace(
            go.Scatter(
                x=x[keep],
                y=y[keep],
                mode="markers",
                name=f"{name} ({int(keep.sum())})",
                marker={
                    "color": GROUP_COLORS[name],
                    "size": 9 if name == "BOS" else 5,
                    "opacity": 0.35 if name == "visual non-sink" else 0.85,
                    "symbol": "star" if name == "BOS" else "circle",
                },
                hovertemplate="phi %{x:.2f}<br>received %{y:.3g}<extra>" + name + "</extra>",
            )
        )
    fig.add_vline(
        x=received.tau,
        line={"dash": "dash", "color": "#444444", "width": 1.2},
        annotation_text=f"tau = {received.tau:g}",
        annotation_position="top left",
    )
    fig.update_xaxes(title_text="phi (max |x_d| / RMS(x) over sink dims, layer input)")
    fig.update_yaxes(title_text="attention received (mean over heads and text queries)", type="log")
    fig.update_layout(
        title={
            "text": f"phi vs attention received (layers {_span(chosen_layers)}, "
            f"{received.phi.shape[0]} sample(s))"
        },
        width=980,
        height=560,
        template=TEMPLATE,
        margin={"l": 90, "r": 200, "t": 80, "b": 70},
        # Outside the axes: data can sit anywhere in phi x attention.
        legend={"x": 1.02, "y": 1.0, "xanchor": "left", "yanchor": "top"},
    )
    return fig


def sink_counts(result: SinkResult) -> go.Figure:
    """Visual (and text) sink tokens per layer input: mean over samples, min-max whiskers."""
    counts = result.counts()
    layers = list(range(result.n_layers))
    fig = go.Figure()
    for name, color in (("visual", GROUP_COLORS["visual sink"]), ("text", GROUP_COLORS["text"])):
        values = counts[name].float()
        mean = values.mean(0)
        fig.add_trace(
            go.Bar(
                x=layers,
                y=mean.tolist(),
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": (values.amax(0) - mean).tolist(),
                    "arrayminus": (mean - values.amin(0)).tolist(),
                    "thickness": 1.2,
                    "width": 4,
                },
                marker={"color": color},
                name=f"{name} sinks",
                hovertemplate=f"layer %{{x}}: %{{y:.2f}} {name} sinks<extra></extra>",
            )
        )
    n_visual = [layout.geometry.n_visual for layout in result.layouts]
    fig.update_xaxes(title_text="layer (sinks at its input)", tickvals=layers)
    fig.update_yaxes(title_text=f"tokens with phi >= {result.tau:g}")
    fig.update_layout(
        title={
            "text": f"Sink tokens per layer ({len(n_visual)} sample(s), {max(n_visual)} visual "
            "tokens each; bars: mean, whiskers: min-max)"
        },
        barmode="group",
        width=820,
        height=460,
        template=TEMPLATE,
        margin={"l": 80, "r": 30, "t": 90, "b": 70},
        legend={"x": 0.01, "y": 0.99, "xanchor": "left", "yanchor": "top"},
    )
    return fig


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
