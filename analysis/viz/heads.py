"""Head figures: the layer x head maps and high vs low ratio heads (fig. 4)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from analysis.config import MIN_SELECTED_FRACTION
from analysis.viz.overlays import (
    _aspect,
    _overlay_figure,
    _sink_grid,
    add_overlay,
)
from analysis.viz.style import (
    TEMPLATE,
    _colorbar,
    _grid_layout,
    _legend_below,
    _panel_px,
    clean_token,
)

if TYPE_CHECKING:
    from analysis.capture import AttentionMaps
    from analysis.heads import HeadScores
    from analysis.tokens import ImageLike


def head_maps(
    scores: HeadScores,
    *,
    min_fraction: float = MIN_SELECTED_FRACTION,
    highlight: Sequence[tuple[int, int]] = (),
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
