"""Plot functions: they take result objects (never models) and return plotly figures.

One function per figure; each returns an interactive ``go.Figure`` that
:func:`write_html` saves (offline) and :func:`to_png` renders to a static PNG
with matplotlib, so no browser or kaleido is needed anywhere.

| function | takes | paper figure |
|---|---|---|
| :func:`text_attention_overlay` | :class:`~analysis.capture.AttentionMaps` | 1: text tokens' attention over the image |
| :func:`phi_overlay` | :class:`~analysis.sinks.SinkResult` | 1: phi of visual tokens, sinks marked |
| :func:`hidden_state_magnitudes` | :class:`~analysis.capture.TokenStates` | 2: massive activation in the sink dims |
| :func:`phi_vs_attention` | :class:`~analysis.capture.ReceivedAttention` | 3a: phi vs attention received |
| :func:`knockout_bars` | :class:`~analysis.ablation.AblationResult` | 3b: knock-out of sinks vs random tokens |
| :func:`contribution_bars` | :class:`~analysis.contribution.ContributionResult` | 3c: residual contribution |
| :func:`attention_comparison` | two ``AttentionMaps`` | 3d: attention with and without sinks |
| :func:`head_contrast` | ``AttentionMaps`` (+ :class:`~analysis.heads.HeadScores`) | 4: high vs low ratio heads |
| :func:`var_before_after` | :class:`~analysis.var.VarAttention` | 5: VAR before / after |
| :func:`head_maps` | ``HeadScores`` | layer x head map of image-centric heads and of r |
| :func:`sink_counts` | ``SinkResult`` | visual sinks per layer |
| :func:`overlay` | per-visual-token values + ``VisualGeometry`` | any value on the image |
| :func:`sweep_figure` | rows of :func:`analysis.sweep.sweep_rows` | metric vs VAR p / rho with CIs |

Overlays draw on the image grid of :class:`~analysis.tokens.VisualGeometry`
(LLaVA's patch grid, LLaVA-NeXT's anyres grid by default or its base tile
with ``tile=0``, Gemma 3's pooled grid), placed over the image by the grid's
pixel extent; visual sinks are marked with open squares whose
``customdata`` holds each marked cell's ``(row, col)``.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Bool, Float
from plotly.subplots import make_subplots

from analysis.fsio import write_atomic
from analysis.stats import mean_ci

if TYPE_CHECKING:
    from analysis.ablation import AblationResult
    from analysis.capture import AttentionMaps, ReceivedAttention, TokenStates
    from analysis.contribution import ContributionResult
    from analysis.heads import HeadScores
    from analysis.sinks import SinkResult
    from analysis.tokens import GridSpec, ImageLike, VisualGeometry
    from analysis.var import VarAttention

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


# ----------------------------------------------------------------------------- helpers


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


def _underlay(image: ImageLike, max_side: int = 448) -> tuple[go.Image, int, int]:
    """The image as a compact PNG-sourced trace in original-pixel coordinates.

    Desaturated so the heat colours stand out; downscaled so an HTML file does
    not carry a full-resolution photo.
    """
    from PIL import ImageEnhance

    from analysis.tokens import load_image

    pil = load_image(image)
    width, height = pil.size
    factor = min(1.0, max_side / max(width, height))
    small = pil.resize((max(1, round(width * factor)), max(1, round(height * factor))))
    small = ImageEnhance.Color(small).enhance(0.35)
    buffer = io.BytesIO()
    small.save(buffer, format="PNG", optimize=True)
    dx, dy = width / small.width, height / small.height
    trace = go.Image(
        source="data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(),
        x0=dx / 2,
        y0=dy / 2,
        dx=dx,
        dy=dy,
        hoverinfo="skip",
        name="image",
    )
    return trace, width, height


def _centres(spec: GridSpec) -> tuple[np.ndarray, np.ndarray]:
    x0, y0, x1, y1 = spec.extent
    xs = x0 + (np.arange(spec.cols) + 0.5) * (x1 - x0) / spec.cols
    ys = y0 + (np.arange(spec.rows) + 0.5) * (y1 - y0) / spec.rows
    return xs, ys


def _ticks(centres: np.ndarray, n: int = 5) -> tuple[list[float], list[str]]:
    picks = sorted({round(i) for i in np.linspace(0, len(centres) - 1, min(n, len(centres)))})
    return [float(centres[i]) for i in picks], [str(i) for i in picks]


def add_overlay(
    fig: go.Figure,
    grid: Float[torch.Tensor, "row col"],
    spec: GridSpec,
    *,
    row: int = 1,
    col: int = 1,
    image: ImageLike | None = None,
    sinks: Bool[torch.Tensor, "row col"] | None = None,
    colorscale: Any = None,
    zmin: float | None = None,
    zmax: float | None = None,
    colorbar_title: str = "",
    showscale: bool = True,
    hover_label: str = "value",
    sink_legend: bool = True,
) -> None:
    """Draw grid values (NaN = no token) over the image in subplot (row, col), sinks marked.

    The panel keeps the image's aspect ratio; axes count patch rows and columns.
    """
    values = grid.detach().float().cpu().numpy()
    xs, ys = _centres(spec)
    if image is not None:
        trace, width, height = _underlay(image)
        fig.add_trace(trace, row=row, col=col)
    else:
        width, height = round(spec.extent[2]), round(spec.extent[3])
    finite = values[np.isfinite(values)]
    low = float(finite.min()) if zmin is None and finite.size else (zmin or 0.0)
    high = float(finite.max()) if zmax is None and finite.size else (zmax or 1.0)
    if high <= low:
        high = low + 1e-12
    fig.add_trace(
        go.Heatmap(
            z=values.astype(np.float32),
            x=xs.astype(np.float32),
            y=ys.astype(np.float32),
            colorscale=colorscale or HEAT,
            zmin=low,
            zmax=high,
            showscale=showscale,
            colorbar=_colorbar(fig, row, col, colorbar_title) if showscale else None,
            hoverongaps=False,
            hovertemplate=f"row %{{customdata[0]}}, col %{{customdata[1]}}<br>{hover_label} "
            "%{z:.4g}<extra></extra>",
            customdata=np.stack(
                np.meshgrid(np.arange(spec.rows), np.arange(spec.cols), indexing="ij"), -1
            ),
            name=hover_label,
        ),
        row=row,
        col=col,
    )
    if sinks is not None and bool(sinks.any()):
        cells = torch.nonzero(sinks.bool()).tolist()
        panel_w, panel_h = _panel_px(fig, row, col)
        scale = min(panel_w / max(width, 1), panel_h / max(height, 1))
        cell = min(
            (spec.extent[2] - spec.extent[0]) / spec.cols,
            (spec.extent[3] - spec.extent[1]) / spec.rows,
        )
        fig.add_trace(
            go.Scatter(
                x=[float(xs[c]) for _, c in cells],
                y=[float(ys[r]) for r, _ in cells],
                mode="markers",
                marker={
                    "symbol": "square-open",
                    "size": max(5.0, cell * scale * 0.95),
                    "color": SINK_COLOR,
                    "line": {"width": 1.6},
                },
                customdata=cells,
                name="visual sink (phi >= tau)",
                legendgroup="sinks",
                showlegend=sink_legend,
                hovertemplate="visual sink: row %{customdata[0]}, col %{customdata[1]}<extra></extra>",
            ),
            row=row,
            col=col,
        )
    tick_x, text_x = _ticks(xs)
    tick_y, text_y = _ticks(ys)
    fig.update_xaxes(
        range=[0, width],
        tickvals=tick_x,
        ticktext=text_x,
        title_text="patch column",
        showgrid=False,
        zeroline=False,
        constrain="domain",
        row=row,
        col=col,
    )
    subplot = fig.get_subplot(row, col)
    fig.update_yaxes(
        range=[height, 0],
        tickvals=tick_y,
        ticktext=text_y,
        title_text="patch row",
        showgrid=False,
        zeroline=False,
        scaleanchor=subplot.yaxis.anchor,
        constrain="domain",
        row=row,
        col=col,
    )


def overlay(
    values: Float[torch.Tensor, " vis"],
    geometry: VisualGeometry,
    image: ImageLike | None = None,
    *,
    sinks: Bool[torch.Tensor, " vis"] | None = None,
    image_index: int = 0,
    tile: int | None = None,
    title: str = "",
    colorbar_title: str = "value",
    colorscale: Any = None,
) -> go.Figure:
    """Any per-visual-token values on the image grid (NeXT: anyres grid unless ``tile=0``)."""
    spec = geometry.grid(image_index, tile)
    fig = _overlay_figure(1, 1, [""], panel=420, aspect=_aspect(image, spec))
    add_overlay(
        fig,
        geometry.to_grid(values, image=image_index, tile=spec.tile),
        spec,
        image=image,
        sinks=None
        if sinks is None
        else geometry.to_grid(sinks.float(), image=image_index, tile=spec.tile) > 0,
        colorbar_title=colorbar_title,
        colorscale=colorscale,
    )
    fig.update_layout(title={"text": title})
    return fig


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


def _sink_grid(
    geometry: VisualGeometry, flags: Bool[torch.Tensor, " vis"], image_index: int, tile: int
) -> Bool[torch.Tensor, "row col"]:
    return geometry.to_grid(flags.float(), image=image_index, tile=tile) > 0


def _grid_layout(n: int, cols: int) -> tuple[int, int]:
    cols = max(1, min(cols, n))
    return math.ceil(n / cols), cols


def _aspect(image: ImageLike | None, spec: GridSpec) -> float:
    """Height / width of what an overlay panel shows: the image, else the grid's extent."""
    if image is not None:
        from analysis.tokens import load_image

        pil = load_image(image)
        return pil.height / pil.width
    x0, y0, x1, y1 = spec.extent
    return (y1 - y0) / max(x1 - x0, 1e-9) if x1 > x0 else spec.rows / spec.cols


def _overlay_figure(
    n: int, cols: int, titles: Sequence[str], *, panel: int = 340, aspect: float = 1.0
) -> go.Figure:
    """Subplots for image panels, sized so each panel has the image's aspect ratio.

    Gaps are in pixels: room for a colour bar and the next panel's axis labels.
    """
    n_rows, n_cols = _grid_layout(n, cols)
    panel_w, panel_h = float(panel), float(panel) * aspect
    gap_x, gap_y = 150.0, 110.0
    plot_w = n_cols * panel_w + (n_cols - 1) * gap_x
    plot_h = n_rows * panel_h + (n_rows - 1) * gap_y
    margin = {"l": 70, "r": 110, "t": 120, "b": 110}
    fig = make_subplots(
        rows=n_rows,
        cols=n_cols,
        subplot_titles=list(titles),
        horizontal_spacing=gap_x / plot_w if n_cols > 1 else 0.0,
        vertical_spacing=gap_y / plot_h if n_rows > 1 else 0.0,
    )
    fig.update_layout(
        width=round(plot_w + margin["l"] + margin["r"]),
        height=round(plot_h + margin["t"] + margin["b"]),
        template=TEMPLATE,
        margin=margin,
    )
    fig.update_layout(legend=_legend_below(fig))
    fig.update_annotations(font_size=14)  # subplot titles: one line over a ~340 px panel
    return fig


# ----------------------------------------------------------------------------- figure 1


def text_attention_overlay(
    maps: AttentionMaps,
    image: ImageLike | None = None,
    *,
    sample: int = 0,
    view: int = 0,
    queries: Sequence[int] | None = None,
    image_index: int = 0,
    tile: int | None = None,
    cols: int = 2,
) -> go.Figure:
    """Paper figure 1: attention of several text tokens over the image, on one colour scale.

    One panel per captured query (or the chosen ``queries`` indices); visual
    sinks at the view's layer input are marked. The same few cells light up
    whatever the text token: that is the visual attention sink.
    """
    chosen = list(range(len(maps.query_positions[sample]))) if queries is None else list(queries)
    geometry = maps.layouts[sample].geometry
    spec = geometry.grid(image_index, tile)
    grids = [maps.grid(sample, view, q, image=image_index, tile=spec.tile) for q in chosen]
    sink_flags = maps.visual_sinks(sample, view)
    titles = []
    for q in chosen:
        values = maps.values(sample, view, q)
        total = float(values.nansum())
        on_sinks = float(values[sink_flags].sum())
        token = clean_token(maps.query_tokens[sample][q])
        share = (
            f", {100 * on_sinks / total:.0f}% of it on sinks"
            if total > 0 and sink_flags.any()
            else ""
        )
        titles.append(f"query '{html.escape(token)}': {100 * total:.0f}% on image{share}")
    high = max(float(torch.nan_to_num(g, nan=0.0).max()) for g in grids)
    fig = _overlay_figure(len(chosen), cols, titles, aspect=_aspect(image, spec))
    n_cols = _grid_layout(len(chosen), cols)[1]
    for index, grid in enumerate(grids):
        row, col = index // n_cols + 1, index % n_cols + 1
        add_overlay(
            fig,
            grid,
            spec,
            row=row,
            col=col,
            image=image,
            sinks=_sink_grid(geometry, sink_flags, image_index, spec.tile),
            zmin=0.0,
            zmax=high,
            showscale=index == len(grids) - 1,
            colorbar_title="attention weight",
            hover_label="attention",
            sink_legend=index == 0,
        )
    fig.update_layout(
        title={
            "text": f"Attention of text tokens over the image ({maps.view_label(view)}, "
            "one colour scale)"
        }
    )
    return fig


def phi_overlay(
    result: SinkResult,
    image: ImageLike | None = None,
    *,
    sample: int = 0,
    layer: int | None = None,
    image_index: int = 0,
    tile: int | None = None,
) -> go.Figure:
    """phi of every visual token at one layer input over the image, sinks (phi >= tau) marked."""
    layer = default_sink_layer(result) if layer is None else layer
    geometry = result.layouts[sample].geometry
    spec = geometry.grid(image_index, tile)
    flags = result.is_sink()[sample, layer, geometry.positions]
    n_sinks = int(flags.sum())
    fig = _overlay_figure(
        1,
        1,
        [f"{n_sinks} of {geometry.n_visual} visual tokens have phi >= {result.tau:g}"],
        panel=420,
    )
    add_overlay(
        fig,
        result.phi_map(sample, layer, image=image_index, tile=spec.tile),
        spec,
        image=image,
        sinks=_sink_grid(geometry, flags, image_index, spec.tile),
        zmin=0.0,
        zmax=max(float(result.visual_phi(sample, layer).max()), result.tau),
        colorbar_title="phi (max |x_d| / RMS over sink dims)",
        hover_label="phi",
    )
    fig.update_layout(
        title={
            "text": f"Visual sink tokens: phi at the input of layer {layer} (dims {result.dims})"
        }
    )
    return fig


def default_sink_layer(result: SinkResult) -> int:
    """The middle layer among those whose input holds visual sinks (else the middle layer)."""
    layers = result.sink_layers()
    return layers[len(layers) // 2] if layers else result.n_layers // 2


# ----------------------------------------------------------------------------- figure 2


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


def _span(layers: Sequence[int]) -> str:
    layers = list(layers)
    if not layers:
        return "none"
    if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 1:
        return f"{layers[0]}-{layers[-1]}"
    return ", ".join(str(x) for x in layers)


def knockout_bars(
    ablation: AblationResult, *, answer: int = 0, level: float = 0.95, seed: int = 0
) -> go.Figure:
    """Paper figure 3b: effect of blocking attention from text to sinks vs random / non-sink tokens.

    Bars are means with bootstrap CIs over samples (and random draws, pooled);
    dots are the individual (sample, draw) values. Left: change of the answer's
    log-probability; right: KL divergence of the next-token distribution.
    """
    delta = ablation.delta_logprob(answer).numpy()
    kl = ablation.kl.numpy()
    targets: dict[str, list[int]] = {}
    for index, name in enumerate(ablation.conditions[1:], start=1):
        targets.setdefault(name.split("[")[0], []).append(index)
    order = [t for t in TARGET_LABELS if t in targets] + [
        t for t in targets if t not in TARGET_LABELS
    ]
    answer_text = html.escape(ablation.answers[answer])
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(
            f"change of log p('{answer_text}')",
            "KL(baseline || knocked out), next token",
        ),
        horizontal_spacing=0.14,
    )
    rng = np.random.default_rng(seed)
    for col, values, label in ((1, delta, "delta log p"), (2, kl, "KL")):
        for x, target in enumerate(order):
            pooled = values[targets[target]].reshape(-1)
            mean, lo, hi = mean_ci(pooled, level=level, seed=seed)
            color = TARGET_COLORS.get(target, "#17becf")
            fig.add_trace(
                go.Bar(
                    x=[x],
                    y=[mean],
                    error_y={
                        "type": "data",
                        "symmetric": False,
                        "array": [hi - mean],
                        "arrayminus": [mean - lo],
                        "color": "#333333",
                        "thickness": 1.5,
                        "width": 6,
                    },
                    marker={"color": color, "opacity": 0.8},
                    name=TARGET_LABELS.get(target, target).replace("<br>", " "),
                    showlegend=False,
                    hovertemplate=f"{target}: mean %{{y:.4g}} [{lo:.4g}, {hi:.4g}]<extra></extra>",
                ),
                row=1,
                col=col,
            )
            fig.add_trace(
                go.Scatter(
                    x=x + rng.uniform(-0.22, 0.22, pooled.size),
                    y=pooled.astype(np.float32),
                    mode="markers",
                    marker={"color": "#111111", "size": 4, "opacity": 0.55},
                    name="one sample / draw",
                    showlegend=col == 1 and x == 0,
                    hovertemplate=f"{label} %{{y:.4g}}<extra>{target}</extra>",
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(
            tickvals=list(range(len(order))),
            ticktext=[TARGET_LABELS.get(t, t) for t in order],
            title_text="attention blocked from text tokens to",
            row=1,
            col=col,
        )
    fig.update_yaxes(title_text="delta log-probability (nats)", row=1, col=1)
    fig.update_yaxes(title_text="KL divergence (nats)", row=1, col=2)
    n_samples = delta.shape[1]
    draws = len(targets.get("random", []))
    mode = ablation.config.get("mode", "pre")
    fig.update_layout(
        title={
            "text": f"Knock-out ({mode}-softmax, all layers): {n_samples} sample(s), "
            f"{draws} random draw(s), bars: mean with {level:.0%} bootstrap CI"
        },
        width=1000,
        height=500,
        template=TEMPLATE,
        margin={"l": 80, "r": 30, "t": 90, "b": 100},
        legend={"x": 1.0, "xanchor": "right", "y": 1.08, "yanchor": "bottom"},
    )
    return fig


def contribution_bars(
    result: ContributionResult, *, layers: Sequence[int] | None = None, level: float = 0.95
) -> go.Figure:
    """Paper figure 3c: residual contribution ||alpha_ij x_j W_OV|| of sinks vs other tokens.

    Per layer and key group: contribution per (text query, key) pair, the
    attention per key and the value norm ||x_j W_OV|| behind it (means over
    heads, bootstrap CI over samples; log scale). Sinks draw attention but
    write little: their value vectors are small.
    """
    if layers is None:
        sink_index = result.groups.index("visual sink") if "visual sink" in result.groups else 0
        present = (result.counts[..., sink_index] > 0).any(0)
        slots = [i for i in range(len(result.layers)) if bool(present[i])] or list(
            range(len(result.layers))
        )
    else:
        slots = [result.layers.index(int(x)) for x in layers]
    panels = (
        ("contribution", "contribution per pair ||alpha_ij x_j W_OV||"),
        ("attention", "attention per key alpha_ij"),
        ("value_norm", "value norm per key ||x_j W_OV||"),
    )
    fig = make_subplots(
        rows=1, cols=3, subplot_titles=[t for _, t in panels], horizontal_spacing=0.09
    )
    for col, (name, _) in enumerate(panels, start=1):
        per_sample = torch.nanmean(getattr(result, name).float(), dim=2)  # [batch, layer, group]
        for g, group in enumerate(result.groups):
            means, lows, highs = [], [], []
            for slot in slots:
                mean, lo, hi = mean_ci(per_sample[:, slot, g].numpy(), level=level)
                means.append(mean)
                lows.append(mean - lo)
                highs.append(hi - mean)
            fig.add_trace(
                go.Bar(
                    x=[str(result.layers[s]) for s in slots],
                    y=means,
                    error_y={
                        "type": "data",
                        "symmetric": False,
                        "array": highs,
                        "arrayminus": lows,
                        "thickness": 1.2,
                        "width": 3,
                    },
                    marker={"color": GROUP_COLORS.get(group, "#17becf")},
                    name=group,
                    legendgroup=group,
                    showlegend=col == 1,
                    hovertemplate=f"{group}, layer %{{x}}: %{{y:.4g}}<extra></extra>",
                ),
                row=1,
                col=col,
            )
        fig.update_yaxes(type="log", row=1, col=col)
        fig.update_xaxes(title_text="layer", type="category", row=1, col=col)
    fig.update_yaxes(title_text="mean over heads (log scale)", row=1, col=1)
    group_means = result.group_mean("contribution")
    sink = group_means.get("visual sink", math.nan)
    other = group_means.get("visual non-sink", math.nan)
    ratio = sink / other if math.isfinite(sink) and math.isfinite(other) and other > 0 else None
    ratio_text = (
        ""
        if ratio is None
        else f": a visual sink writes {ratio:.2g}x as much per pair as a non-sink visual token"
    )
    fig.update_layout(
        title={"text": f"Residual contribution by key group{ratio_text}"},
        barmode="group",
        width=1250,
        height=480,
        template=TEMPLATE,
        margin={"l": 100, "r": 30, "t": 100, "b": 70},
        legend={"orientation": "h", "x": 1.0, "xanchor": "right", "y": 1.1, "yanchor": "bottom"},
    )
    return fig


def attention_comparison(
    before: AttentionMaps,
    after: AttentionMaps,
    image: ImageLike | None = None,
    *,
    sample: int = 0,
    view: int = 0,
    query: int | None = None,
    titles: tuple[str, str] = ("with sinks", "sinks knocked out"),
    shared_scale: bool = False,
    difference: bool = False,
    image_index: int = 0,
    tile: int | None = None,
    title: str | None = None,
) -> go.Figure:
    """Paper figure 3d (and 5): one view's attention over the image in two conditions.

    ``query=None`` averages the captured queries. With ``shared_scale`` both
    maps use one colour scale; ``difference`` adds an after - before panel.
    """
    geometry = before.layouts[sample].geometry
    spec = geometry.grid(image_index, tile)
    grids = [
        maps.grid(sample, view, query, image=image_index, tile=spec.tile)
        for maps in (before, after)
    ]
    what = (
        f"mean of {len(before.query_positions[sample])} text queries"
        if query is None
        else f"query '{html.escape(clean_token(before.query_tokens[sample][query]))}'"
    )
    panel_titles = []
    for name, maps in zip(titles, (before, after), strict=True):
        values = maps.values(sample, view, query)
        sinks = maps.visual_sinks(sample, view)
        panel_titles.append(
            f"{name}: {100 * float(values.nansum()):.0f}% on image, "
            f"{100 * float(values[sinks].sum()):.0f}% on visual sinks"
        )
    if difference:
        panel_titles.append(f"{titles[1]} minus {titles[0]}")
    fig = _overlay_figure(len(panel_titles), 3, panel_titles, aspect=_aspect(image, spec))
    high = max(float(torch.nan_to_num(g, nan=0.0).max()) for g in grids)
    for index, (grid, maps) in enumerate(zip(grids, (before, after), strict=True)):
        add_overlay(
            fig,
            grid,
            spec,
            col=index + 1,
            image=image,
            sinks=_sink_grid(geometry, maps.visual_sinks(sample, view), image_index, spec.tile),
            zmin=0.0,
            zmax=high if shared_scale else None,
            showscale=not shared_scale or index == 1,
            colorbar_title="attention weight",
            hover_label="attention",
            sink_legend=index == 0,
        )
    if difference:
        diff = grids[1] - grids[0]
        # A floor keeps float noise of an unchanged map (VAR selecting no row) white.
        bound = max(float(torch.nan_to_num(diff, nan=0.0).abs().max()), 1e-6)
        add_overlay(
            fig,
            diff,
            spec,
            col=3,
            image=image,
            colorscale=DIVERGING,
            zmin=-bound,
            zmax=bound,
            colorbar_title="change of attention weight",
            hover_label="change",
        )
        fig.update_traces(opacity=0.75, selector={"type": "heatmap", "xaxis": "x3"})
    fig.update_layout(
        title={"text": title or f"Attention over the image, {before.view_label(view)}, {what}"}
    )
    return fig


# ----------------------------------------------------------------------------- heads


def head_maps(
    scores: HeadScores, *, min_fraction: float = 0.5, highlight: Sequence[tuple[int, int]] = ()
) -> go.Figure:
    """Layer x head maps: fraction of text queries where the head is image-centric, and mean r.

    Heads selected for at least ``min_fraction`` of the queries (the
    image-centric heads) are outlined in both maps; ``highlight`` adds
    diamonds (e.g. planted heads). r is left blank in layers whose input has no
    visual sink, where the paper's rule selects no head.
    """
    stats = scores.per_sample()
    selected = stats["selected"].mean(0).numpy()
    r_values = stats["r"].clone()
    r_values[~scores.has_visual_sink] = float("nan")  # r = 1 by definition there: not informative
    r_mean = torch.nanmean(r_values, dim=0).numpy()
    n_layers, n_heads = selected.shape
    chosen = scores.image_centric_heads(min_fraction)
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(
            f"fraction of text queries selected (s >= {scores.min_image_attention:g}, r >= {scores.rho:g})",
            "mean visual non-sink ratio r",
        ),
        horizontal_spacing=0.16,
    )
    fig.update_layout(
        width=1000,
        height=max(380, 42 * n_layers + 200),
        template=TEMPLATE,
        margin={"l": 70, "r": 90, "t": 110, "b": 90},
    )
    heads, layers = np.arange(n_heads), np.arange(n_layers)
    for col, values, title, scale in (
        (1, selected, "fraction of queries", "Blues"),
        (2, r_mean, "r (blank: no visual sink)", "Viridis"),
    ):
        fig.add_trace(
            go.Heatmap(
                z=values.astype(np.float32),
                x=heads,
                y=layers,
                zmin=0.0,
                zmax=1.0,
                colorscale=scale,
                colorbar=_colorbar(fig, 1, col, title),
                hoverongaps=False,
                hovertemplate="layer %{y}, head %{x}: %{z:.3f}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        if n_layers * n_heads <= 400:
            cells = [
                (layer, head)
                for layer in layers
                for head in heads
                if np.isfinite(values[layer, head])
            ]
            fig.add_trace(
                go.Scatter(
                    x=[h for _, h in cells],
                    y=[layer for layer, _ in cells],
                    mode="text",
                    text=[f"{values[layer, h]:.2f}" for layer, h in cells],
                    textfont={
                        "size": 10,
                        "color": [
                            "white"
                            if (col == 1 and values[layer, h] > 0.6)
                            or (col == 2 and values[layer, h] < 0.5)
                            else "black"
                            for layer, h in cells
                        ],
                    },
                    showlegend=False,
                    hoverinfo="skip",
                ),
                row=1,
                col=col,
            )
        panel_w, panel_h = _panel_px(fig, 1, col)
        size = 0.9 * min(panel_w / n_heads, panel_h / n_layers)
        if chosen:
            fig.add_trace(
                go.Scatter(
                    x=[h for _, h in chosen],
                    y=[layer for layer, _ in chosen],
                    mode="markers",
                    marker={
                        "symbol": "square-open",
                        "size": size,
                        "color": "#ff7f0e",
                        "line": {"width": 3},
                    },
                    customdata=chosen,
                    name=f"image-centric (selected for >= {min_fraction:.0%} of queries)",
                    legendgroup="selected",
                    showlegend=col == 1,
                    hovertemplate="image-centric: layer %{y}, head %{x}<extra></extra>",
                ),
                row=1,
                col=col,
            )
        if highlight:
            fig.add_trace(
                go.Scatter(
                    x=[h for _, h in highlight],
                    y=[layer for layer, _ in highlight],
                    mode="markers",
                    marker={
                        "symbol": "diamond-open",
                        "size": size * 0.45,
                        "color": "#d62728",
                        "line": {"width": 2},
                    },
                    name="highlighted",
                    legendgroup="highlight",
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(
            title_text="head", tickvals=list(heads), showgrid=False, zeroline=False, row=1, col=col
        )
        fig.update_yaxes(
            title_text="layer",
            tickvals=list(layers),
            autorange="reversed",
            showgrid=False,
            zeroline=False,
            row=1,
            col=col,
        )
    fig.update_layout(
        title={"text": f"Image-centric heads over {scores.s.shape[0]} sample(s): {chosen}"},
        legend=_legend_below(fig),
    )
    return fig


def head_contrast(
    maps: AttentionMaps,
    scores: HeadScores | None = None,
    image: ImageLike | None = None,
    *,
    sample: int = 0,
    query: int | None = None,
    image_index: int = 0,
    tile: int | None = None,
    cols: int = 2,
) -> go.Figure:
    """Paper figure 4: heads with high vs low visual non-sink ratio r, shown on the image.

    One panel per view of ``maps`` (chosen by the caller, e.g. with
    :func:`analysis.figures.contrast_heads`), each with its own colour scale.
    Titles give r and s of the shown queries; with ``scores`` also the mean
    over all samples. High-r heads look at the object, low-r heads at the sinks.
    """
    geometry = maps.layouts[sample].geometry
    spec = geometry.grid(image_index, tile)
    agg = None if scores is None else scores.per_sample()
    titles = []
    for view in range(maps.n_views):
        values = maps.values(sample, view, query)
        sinks = maps.visual_sinks(sample, view)
        s = float(values.nansum())
        r = 1 - float(values[sinks].sum()) / s if s > 0 else float("nan")
        text = f"L{maps.layers[view]} H{maps.heads[view]}: r = {r:.2f}, s = {s:.2f}"
        if agg is not None and maps.heads[view] is not None:
            mean_r = float(agg["r"][:, maps.layers[view], maps.heads[view]].mean())
            text += f" (mean r {mean_r:.2f})"
        titles.append(text)
    fig = _overlay_figure(maps.n_views, cols, titles, panel=320, aspect=_aspect(image, spec))
    n_cols = _grid_layout(maps.n_views, cols)[1]
    for view in range(maps.n_views):
        add_overlay(
            fig,
            maps.grid(sample, view, query, image=image_index, tile=spec.tile),
            spec,
            row=view // n_cols + 1,
            col=view % n_cols + 1,
            image=image,
            sinks=_sink_grid(geometry, maps.visual_sinks(sample, view), image_index, spec.tile),
            zmin=0.0,
            colorbar_title="attention weight",
            hover_label="attention",
            sink_legend=view == 0,
        )
    what = (
        f"mean of {len(maps.query_positions[sample])} text queries"
        if query is None
        else f"query '{html.escape(clean_token(maps.query_tokens[sample][query]))}'"
    )
    fig.update_layout(
        title={
            "text": f"Heads with high vs low visual non-sink ratio r ({what}; s = image attention)"
        }
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


def var_before_after(
    result: VarAttention,
    image: ImageLike | None = None,
    *,
    sample: int = 0,
    view: int = 0,
    query: int | None = None,
    image_index: int = 0,
    tile: int | None = None,
) -> go.Figure:
    """Paper figure 5: an image-centric head's attention over the image before and after VAR."""
    var = result.config.get("var", {})
    moved = result.record.total_mass
    return attention_comparison(
        result.before,
        result.after,
        image,
        sample=sample,
        view=view,
        query=query,
        titles=("before VAR", "after VAR"),
        shared_scale=True,
        difference=True,
        image_index=image_index,
        tile=tile,
        title=f"VAR (p = {var.get('p', '?')}, rho = {var.get('rho', '?')}) on "
        f"{result.before.view_label(view)}: {moved:.2f} attention mass moved in total",
    )


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


# ----------------------------------------------------------------------------- output


def sweep_figure(rows: Sequence[dict[str, Any]], *, x: str = "p", title: str = "") -> go.Figure:
    """Metric vs a VAR setting with CIs: one line per value of the other setting.

    ``rows`` come from :func:`analysis.sweep.sweep_rows` (``setting``, ``value``
    with ``lo``/``hi``); the baseline row (``setting`` None) is a dashed line
    with its CI as a band.
    """
    points = [r for r in rows if r["setting"]]
    if not points:
        raise ValueError("A sweep figure needs at least one VAR setting.")
    if not all(x in r["setting"] for r in points):
        raise ValueError(f"Every setting must have {x!r}.")
    others = sorted({k for r in points for k in r["setting"] if k != x})
    metric = points[0]["metric"]
    fig = go.Figure()
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in points:
        groups.setdefault(tuple(row["setting"].get(k) for k in others), []).append(row)
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b"]
    for index, (key, members) in enumerate(groups.items()):
        members = sorted(members, key=lambda r: r["setting"][x])
        label = ", ".join(f"{k}={v:g}" for k, v in zip(others, key, strict=True)) or "VAR"
        values = [r["value"] for r in members]
        fig.add_trace(
            go.Scatter(
                x=[r["setting"][x] for r in members],
                y=[v["value"] for v in values],
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [v["hi"] - v["value"] for v in values],
                    "arrayminus": [v["value"] - v["lo"] for v in values],
                    "thickness": 1.5,
                    "width": 5,
                },
                mode="lines+markers",
                name=html.escape(label),
                line={"color": palette[index % len(palette)]},
                hovertemplate=f"{x}=%{{x:g}}: %{{y:.4g}}<extra>{html.escape(label)}</extra>",
            )
        )
    baseline = next((r for r in rows if not r["setting"]), None)
    if baseline is not None:
        base = baseline["value"]
        xs = [r["setting"][x] for r in points]
        lo, hi = min(xs), max(xs)
        fig.add_shape(
            type="rect", x0=lo, x1=hi, y0=base["lo"], y1=base["hi"], line={"width": 0},
            fillcolor="#888888", opacity=0.2, layer="below",
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(
                x=[lo, hi],
                y=[base["value"]] * 2,
                mode="lines",
                line={"color": "#444444", "dash": "dash"},
                name=f"baseline {base['value']:.4g} [{base['lo']:.4g}, {base['hi']:.4g}]",
            )
        )
    fig.update_layout(
        title={"text": title or f"{html.escape(metric)} vs VAR {x} (bars: bootstrap CIs)"},
        xaxis_title=f"VAR {x}",
        yaxis_title=html.escape(metric),
        width=800,
        height=500,
        template=TEMPLATE,
        margin={"l": 80, "r": 30, "t": 80, "b": 70},
    )
    return fig


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


def to_png(fig: go.Figure, path: str | Path, *, scale: float = 2.0) -> Path:
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


def strip_tags(text: str) -> str:
    """Plotly rich text to plain text (``<br>`` becomes a newline)."""
    text = re.sub(r"<br\s*/?>", "\n", text or "")
    return html.unescape(re.sub(r"<[^>]+>", "", text))
