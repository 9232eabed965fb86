"""Values over the image: the overlay primitive, paper figure 1 and attention maps side by side (3d).

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
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Bool, Float
from plotly.subplots import make_subplots

from analysis.viz.style import (
    DIVERGING,
    HEAT,
    SINK_COLOR,
    TEMPLATE,
    _colorbar,
    _grid_layout,
    _legend_below,
    _panel_px,
    clean_token,
)

if TYPE_CHECKING:
    from analysis.capture import AttentionMaps
    from analysis.sinks import SinkResult
    from analysis.tokens import GridSpec, ImageLike, VisualGeometry


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


def _sink_grid(
    geometry: VisualGeometry, flags: Bool[torch.Tensor, " vis"], image_index: int, tile: int
) -> Bool[torch.Tensor, "row col"]:
    return geometry.to_grid(flags.float(), image=image_index, tile=tile) > 0


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
