"""Static PNG export of plotly figures through matplotlib: no browser, no kaleido.

kaleido needs a Chrome download on a fresh machine, which offline set-ups and
CI runners do not have; matplotlib renders anywhere. :func:`render` walks a
plotly figure (subplot domains, traces, axes, shapes, annotations, legend) and
redraws it, so each figure has one implementation (the plotly one) and the PNG
follows it. It covers the trace types and options :mod:`analysis.viz` uses:
Heatmap, Image, Scatter (markers, lines, text, error bars), Bar (grouped,
error bars, per-bar colours); anything else raises instead of being dropped.

Why this module stays whole (over 500 lines): it is one renderer. Every trace,
shape, annotation and legend handler draws on the same private ``_Canvas``
(the axes by plotly subplot pair, the bar slots, the legend entries, the
paper-to-figure coordinates) and shares the plotly-to-matplotlib conversions (colours,
colour scales, fonts, cell edges); split by element, each part would import
the others' private helpers and the canvas would become a public interface
for no reader's benefit. Its one public entry is :func:`render`.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go

_PX_PER_INCH = 100.0  # plotly sizes are pixels; one figure inch is drawn as 100 of them
_PT = 72.0 / _PX_PER_INCH  # plotly px -> matplotlib points

_SYMBOLS = {
    "circle": ("o", True),
    "circle-open": ("o", False),
    "square": ("s", True),
    "square-open": ("s", False),
    "diamond": ("D", True),
    "diamond-open": ("D", False),
    "x": ("x", True),
    "cross": ("P", True),
    "star": ("*", True),
    "triangle-up": ("^", True),
    "triangle-down": ("v", True),
}
_DASHES = {"dash": "--", "dot": ":", "dashdot": "-.", "longdash": "--", "solid": "-"}


def parse_color(color: Any, default: str = "#1f77b4") -> Any:
    """Plotly colour strings (names, #hex, rgb(), rgba()) as matplotlib colours."""
    if color is None:
        return default
    if isinstance(color, str):
        match = re.fullmatch(r"\s*rgba?\(([^)]*)\)\s*", color)
        if match:
            parts = [float(p) for p in match.group(1).split(",")]
            rgb = [p / 255.0 for p in parts[:3]]
            return (*rgb, parts[3] if len(parts) > 3 else 1.0)
        return color
    return color


def _colormap(colorscale: Any, reverse: bool = False) -> Any:
    from matplotlib import colormaps
    from matplotlib.colors import LinearSegmentedColormap

    if colorscale is None:
        return colormaps["viridis"]
    if isinstance(colorscale, str):
        name = colorscale[:-2] if colorscale.endswith("_r") else colorscale
        cmap = go.Heatmap(colorscale=name).colorscale  # plotly resolves names to stops
        stops = [(float(p), parse_color(c)) for p, c in cmap]
        if colorscale.endswith("_r"):
            reverse = not reverse
    else:
        stops = [(float(p), parse_color(c)) for p, c in colorscale]
    from matplotlib.colors import to_rgba

    stops = [(p, to_rgba(c)) for p, c in stops]
    if reverse:
        stops = [(1 - p, c) for p, c in reversed(stops)]
    return LinearSegmentedColormap.from_list("plotly", stops)


def _text(value: Any) -> str:
    import html

    text = re.sub(r"<br\s*/?>", "\n", str(value or ""))
    return html.unescape(re.sub(r"<[^>]+>", "", text))


def _font_pt(font: Any, default_px: float) -> float:
    size = getattr(font, "size", None) if font is not None else None
    return float(size or default_px) * _PT


def _edges(centres: np.ndarray) -> np.ndarray:
    centres = np.asarray(centres, dtype=np.float64)
    if centres.size == 1:
        return np.array([centres[0] - 0.5, centres[0] + 0.5])
    mids = (centres[1:] + centres[:-1]) / 2
    return np.concatenate([[2 * centres[0] - mids[0]], mids, [2 * centres[-1] - mids[-1]]])


def _array(values: Any) -> np.ndarray:
    if values is None:
        return np.array([])
    array = np.asarray(values)
    if array.dtype == object:
        try:
            return array.astype(np.float64)
        except (TypeError, ValueError):
            return array
    return array


class _Canvas:
    """One matplotlib figure laid out like the plotly figure's paper coordinates."""

    def __init__(self, fig: go.Figure, scale: float) -> None:
        from matplotlib.figure import Figure

        layout = fig.layout
        self.fig = fig
        self.width = float(layout.width or 900)
        self.height = float(layout.height or 500)
        margin = layout.margin
        self.left = margin.l if margin.l is not None else 80
        self.right = margin.r if margin.r is not None else 80
        self.top = margin.t if margin.t is not None else 100
        self.bottom = margin.b if margin.b is not None else 80
        self.mfig = Figure(
            figsize=(self.width / _PX_PER_INCH, self.height / _PX_PER_INCH),
            dpi=_PX_PER_INCH * scale,
            facecolor="white",
        )
        self.axes: dict[tuple[str, str], Any] = {}
        self.images: set[tuple[str, str]] = set()
        self.legend: dict[str, Any] = {}
        self.bar_slots: dict[tuple[str, str], list[int]] = {}

    # coordinates
    def fx(self, x: float) -> float:
        return (self.left + x * (self.width - self.left - self.right)) / self.width

    def fy(self, y: float) -> float:
        return (self.bottom + y * (self.height - self.top - self.bottom)) / self.height

    def axis(self, xid: str, yid: str) -> Any:
        key = (xid, yid)
        if key not in self.axes:
            layout = self.fig.layout
            xdom = getattr(layout, _axis_name(xid)).domain or (0, 1)
            ydom = getattr(layout, _axis_name(yid)).domain or (0, 1)
            x0, x1, y0, y1 = self.fx(xdom[0]), self.fx(xdom[1]), self.fy(ydom[0]), self.fy(ydom[1])
            ax = self.mfig.add_axes((x0, y0, x1 - x0, y1 - y0))
            ax.tick_params(labelsize=9, length=3)
            for spine in ax.spines.values():
                spine.set_linewidth(0.6)
                spine.set_color("#888888")
            self.axes[key] = ax
        return self.axes[key]


def _axis_name(ref: str) -> str:
    """'x2' -> 'xaxis2'."""
    return f"{ref[0]}axis{ref[1:]}"


def _pairs(fig: go.Figure) -> list[tuple[str, str]]:
    """Every (x, y) axis pair: from the layout's subplots, then from the traces."""
    pairs = []
    layout = fig.layout.to_plotly_json()
    for key in sorted(layout, key=lambda k: (len(k), k)):
        if re.fullmatch(r"xaxis\d*", key):
            xid = "x" + key[5:]
            anchor = layout[key].get("anchor", "y")
            if anchor != "free":
                pairs.append((xid, anchor))
    for trace in fig.data:
        pair = (getattr(trace, "xaxis", None) or "x", getattr(trace, "yaxis", None) or "y")
        if pair not in pairs:
            pairs.append(pair)
    return pairs


def render(fig: go.Figure, path: str | Path, *, scale: float = 2.0) -> Path:
    """Draw ``fig`` with matplotlib and save it as a PNG at ``scale`` x its pixel size."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = _Canvas(fig, scale)
    FigureCanvasAgg(canvas.mfig)
    for xid, yid in _pairs(fig):
        canvas.axis(xid, yid)
    _prepare_bars(canvas)
    for trace in fig.data:
        drawer = _DRAWERS.get(trace.type)
        if drawer is None:
            raise NotImplementedError(f"PNG export does not draw {trace.type} traces yet.")
        pair = (trace.xaxis or "x", trace.yaxis or "y")
        drawer(canvas, canvas.axis(*pair), trace, pair)
    for (xid, yid), ax in canvas.axes.items():
        _style_axes(canvas, ax, xid, yid)
    for shape in fig.layout.shapes or ():
        _shape(canvas, shape)
    for note in fig.layout.annotations or ():
        _annotation(canvas, note)
    _title(canvas)
    _legend(canvas)
    path = Path(path)
    buffer = io.BytesIO()
    canvas.mfig.savefig(buffer, format="png", facecolor="white")
    # Agg writes RGBA; the page is opaque, so RGB + optimize makes files ~30% smaller.
    from PIL import Image

    with Image.open(buffer) as image:
        image.convert("RGB").save(path, format="PNG", optimize=True)
    return path


# ----------------------------------------------------------------------------- traces


def _colorbar(canvas: _Canvas, ax: Any, mappable: Any, trace: Any) -> None:
    """A colour bar where plotly puts it (paper x, y, len), else glued to the axes' right."""
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    bar_spec = trace.colorbar
    if bar_spec is not None and bar_spec.x is not None:
        length = bar_spec.len if bar_spec.len is not None else 1.0
        y = bar_spec.y if bar_spec.y is not None else 0.5
        thickness = bar_spec.thickness if bar_spec.thickness is not None else 30
        plot_height = (canvas.height - canvas.top - canvas.bottom) / canvas.height
        cax = canvas.mfig.add_axes(
            (
                canvas.fx(bar_spec.x),
                canvas.fy(y - length / 2),
                thickness / canvas.width,
                length * plot_height,
            )
        )
    else:
        cax = make_axes_locatable(ax).append_axes("right", size="4.5%", pad=0.08)
    bar = canvas.mfig.colorbar(mappable, cax=cax)
    title = bar_spec.title.text if bar_spec is not None and bar_spec.title else None
    if title:
        bar.set_label(_text(title), fontsize=9)
    bar.ax.tick_params(labelsize=8)
    bar.outline.set_linewidth(0.5)


def _heatmap(canvas: _Canvas, ax: Any, trace: Any, pair: tuple[str, str]) -> None:
    from matplotlib.colors import Normalize

    z = np.asarray(trace.z, dtype=np.float64)
    x = _array(trace.x) if trace.x is not None else np.arange(z.shape[1])
    y = _array(trace.y) if trace.y is not None else np.arange(z.shape[0])
    if x.dtype.kind not in "fiu":
        ax.set_xticks(np.arange(len(x)), [str(v) for v in x])
        x = np.arange(len(x))
    if y.dtype.kind not in "fiu":
        ax.set_yticks(np.arange(len(y)), [str(v) for v in y])
        y = np.arange(len(y))
    finite = z[np.isfinite(z)]
    low = trace.zmin if trace.zmin is not None else (finite.min() if finite.size else 0.0)
    high = trace.zmax if trace.zmax is not None else (finite.max() if finite.size else 1.0)
    mesh = ax.pcolormesh(
        _edges(x),
        _edges(y),
        np.ma.masked_invalid(z),
        cmap=_colormap(trace.colorscale, bool(trace.reversescale)),
        norm=Normalize(vmin=low, vmax=high),
        alpha=trace.opacity if trace.opacity is not None else None,
        shading="flat",
        zorder=1,
    )
    if trace.showscale is not False:
        _colorbar(canvas, ax, mesh, trace)


def _image(canvas: _Canvas, ax: Any, trace: Any, pair: tuple[str, str]) -> None:
    from PIL import Image

    if trace.source:
        payload = trace.source.split(",", 1)[1]
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB"))
    else:
        pixels = np.asarray(trace.z, dtype=np.uint8)
    height, width = pixels.shape[:2]
    x0, y0 = trace.x0 or 0.0, trace.y0 or 0.0
    dx, dy = trace.dx or 1.0, trace.dy or 1.0
    extent = (x0 - dx / 2, x0 + (width - 0.5) * dx, y0 + (height - 0.5) * dy, y0 - dy / 2)
    ax.imshow(pixels, extent=extent, origin="upper", interpolation="bilinear", zorder=0)
    canvas.images.add(pair)


def _marker_args(marker: Any, n: int) -> dict[str, Any]:
    symbol = (marker.symbol if marker and marker.symbol else "circle") if marker else "circle"
    if not isinstance(symbol, str):
        symbol = "circle"
    shape, filled = _SYMBOLS.get(symbol, ("o", not symbol.endswith("-open")))
    color = marker.color if marker is not None and marker.color is not None else "#1f77b4"
    if isinstance(color, list | tuple | np.ndarray) and not isinstance(color, str):
        colors = [parse_color(c) for c in color]
    else:
        colors = [parse_color(color)] * n
    size = marker.size if marker is not None and marker.size is not None else 6
    sizes = np.broadcast_to(np.asarray(size, dtype=np.float64), (n,)) * _PT
    width = marker.line.width if marker is not None and marker.line and marker.line.width else 1.0
    args: dict[str, Any] = {"marker": shape, "s": sizes**2, "linewidths": width * _PT * 1.3}
    if filled or shape in ("x", "+"):
        args["c"] = colors
    else:
        args["facecolors"] = "none"
        args["edgecolors"] = colors
    if marker is not None and marker.opacity is not None:
        args["alpha"] = float(marker.opacity)
    return args


_TEXT_POSITION = {
    "top": ("bottom", 4),
    "bottom": ("top", -4),
    "middle": ("center", 0),
}


def _scatter(canvas: _Canvas, ax: Any, trace: Any, pair: tuple[str, str]) -> None:
    x, y = _array(trace.x), _array(trace.y)
    n = len(x)
    mode = trace.mode or ("lines+markers" if n < 20 else "lines")
    handle = None
    if "lines" in mode:
        line = trace.line
        (handle,) = ax.plot(
            x,
            y,
            color=parse_color(line.color if line else None),
            lw=(line.width if line and line.width else 2) * _PT,
            ls=_DASHES.get(line.dash if line and line.dash else "solid", "-"),
            zorder=3,
        )
    if "markers" in mode and n:
        handle = ax.scatter(x, y, zorder=3, **_marker_args(trace.marker, n))
    if trace.error_y and trace.error_y.array is not None and trace.error_y.visible is not False:
        _errorbars(ax, x, y, trace.error_y)
    if "text" in mode and trace.text is not None:
        texts = [trace.text] * n if isinstance(trace.text, str) else list(trace.text)
        position = trace.textposition if isinstance(trace.textposition, str) else "middle center"
        vertical, offset = _TEXT_POSITION.get(position.split()[0], ("center", 0))
        font = trace.textfont
        colors = font.color if font is not None and font.color is not None else "#222222"
        colors = [colors] * n if isinstance(colors, str) else list(colors)
        size = _font_pt(font, 12)
        for xi, yi, text, color in zip(x, y, texts, colors, strict=False):
            ax.annotate(
                _text(text),
                (xi, yi),
                xytext=(0, offset),
                textcoords="offset points",
                ha="center",
                va=vertical,
                fontsize=size,
                color=parse_color(color),
                zorder=4,
                annotation_clip=True,
            )
    _remember_legend(canvas, trace, handle)


def _errorbars(ax: Any, x: np.ndarray, y: np.ndarray, error: Any) -> None:
    upper = np.asarray(error.array, dtype=np.float64)
    lower = (
        upper
        if error.symmetric is not False or error.arrayminus is None
        else np.asarray(error.arrayminus, dtype=np.float64)
    )
    ax.errorbar(
        np.asarray(x, dtype=np.float64),
        np.asarray(y, dtype=np.float64),
        yerr=np.vstack([lower, upper]),
        fmt="none",
        ecolor=parse_color(error.color, "#333333"),
        elinewidth=(error.thickness or 1.5) * _PT,
        capsize=(error.width or 4) * _PT,
        zorder=4,
    )


def _prepare_bars(canvas: _Canvas) -> None:
    """Grouped bars: which slot each bar trace takes on its axes (plotly's barmode group)."""
    for index, trace in enumerate(canvas.fig.data):
        if trace.type == "bar":
            pair = (trace.xaxis or "x", trace.yaxis or "y")
            canvas.bar_slots.setdefault(pair, []).append(index)


def _bar(canvas: _Canvas, ax: Any, trace: Any, pair: tuple[str, str]) -> None:
    from matplotlib.collections import PolyCollection

    layout = canvas.fig.layout
    x, y = _array(trace.x), np.asarray(trace.y, dtype=np.float64)
    if x.dtype.kind not in "fiu":
        categories = _categories(canvas, pair)
        positions = np.array([categories.index(str(v)) for v in x], dtype=np.float64)
        ax.set_xticks(np.arange(len(categories)), categories)
    else:
        positions = x.astype(np.float64)
    spacing = float(np.min(np.diff(np.unique(positions)))) if len(np.unique(positions)) > 1 else 1.0
    gap = layout.bargap if layout.bargap is not None else 0.2
    total = spacing * (1 - gap)
    slots = canvas.bar_slots[pair]
    if layout.barmode == "group" and len(slots) > 1:
        width = total / len(slots)
        offset = (slots.index(list(canvas.fig.data).index(trace)) - (len(slots) - 1) / 2) * width
    else:
        width, offset = total, 0.0
    marker = trace.marker
    color = marker.color if marker is not None and marker.color is not None else "#1f77b4"
    colors = (
        [parse_color(c) for c in color]
        if isinstance(color, list | tuple | np.ndarray)
        else parse_color(color)
    )
    alpha = marker.opacity if marker is not None and marker.opacity is not None else None
    # A missing bar (NaN) draws nothing; on a log axis a zero-height bar is invisible too.
    heights = np.nan_to_num(y, nan=0.0)
    # One PolyCollection instead of ax.bar's patch per bar: a 4096-bar hidden-state plot
    # draws in milliseconds.
    left = positions + offset - width / 2
    boxes = np.stack(
        [
            np.stack([left, np.zeros_like(heights)], -1),
            np.stack([left, heights], -1),
            np.stack([left + width, heights], -1),
            np.stack([left + width, np.zeros_like(heights)], -1),
        ],
        axis=1,
    )
    handle = PolyCollection(
        list(boxes), facecolors=colors, alpha=alpha, linewidths=0, zorder=2, antialiased=False
    )
    ax.add_collection(handle)
    ax.update_datalim(np.concatenate([boxes.reshape(-1, 2), [[left.min(), 0.0]]]))
    ax.autoscale_view()
    if trace.error_y and trace.error_y.array is not None and trace.error_y.visible is not False:
        _errorbars(ax, positions + offset, y, trace.error_y)
    if trace.text is not None and trace.textposition == "outside":
        texts = [trace.text] * len(y) if isinstance(trace.text, str) else list(trace.text)
        for xi, yi, text in zip(positions + offset, y, texts, strict=False):
            if np.isfinite(yi):
                ax.annotate(
                    _text(text),
                    (xi, yi),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=7.5,
                    color="#333333",
                )
    _remember_legend(canvas, trace, handle)


def _categories(canvas: _Canvas, pair: tuple[str, str]) -> list[str]:
    seen: list[str] = []
    for trace in canvas.fig.data:
        if (trace.xaxis or "x", trace.yaxis or "y") == pair and trace.type == "bar":
            for value in trace.x:
                if str(value) not in seen:
                    seen.append(str(value))
    return seen


def _remember_legend(canvas: _Canvas, trace: Any, handle: Any) -> None:
    if handle is None or not trace.name or trace.showlegend is False:
        return
    if canvas.fig.layout.showlegend is False:
        return
    if trace.showlegend is None and sum(t.type in ("bar", "scatter") for t in canvas.fig.data) < 2:
        return
    canvas.legend.setdefault(
        trace.legendgroup or trace.name, (_legend_handle(trace), _text(trace.name))
    )


def _legend_handle(trace: Any) -> Any:
    """A legend proxy of a fixed size (a marker sized to a heatmap cell would swamp the legend)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    marker = trace.marker
    color = marker.color if marker is not None and marker.color is not None else "#1f77b4"
    if not isinstance(color, str):
        color = "#555555"
    if trace.type == "bar":
        return Patch(facecolor=parse_color(color), alpha=marker.opacity if marker else None)
    mode = trace.mode or "markers"
    line_color = trace.line.color if trace.line and trace.line.color else color
    symbol = marker.symbol if marker is not None and isinstance(marker.symbol, str) else "circle"
    shape, filled = _SYMBOLS.get(symbol, ("o", not symbol.endswith("-open")))
    size = marker.size if marker is not None and isinstance(marker.size, int | float) else 6
    return Line2D(
        [],
        [],
        color=parse_color(line_color),
        ls=_DASHES.get(trace.line.dash or "solid", "-") if "lines" in mode else "none",
        marker=shape if "markers" in mode else None,
        markersize=min(float(size), 10.0) * _PT * 1.4,
        markerfacecolor=parse_color(color) if filled else "none",
        markeredgecolor=parse_color(color),
        markeredgewidth=1.5,
        alpha=marker.opacity if marker is not None and marker.opacity is not None else None,
    )


_DRAWERS = {"heatmap": _heatmap, "image": _image, "scatter": _scatter, "bar": _bar}


# ----------------------------------------------------------------------------- layout


def _style_axes(canvas: _Canvas, ax: Any, xid: str, yid: str) -> None:
    layout = canvas.fig.layout
    xaxis, yaxis = getattr(layout, _axis_name(xid)), getattr(layout, _axis_name(yid))
    for axis, which in ((xaxis, "x"), (yaxis, "y")):
        set_label = ax.set_xlabel if which == "x" else ax.set_ylabel
        if axis.title and axis.title.text:
            set_label(_text(axis.title.text), fontsize=_font_pt(axis.title.font, 12))
        if axis.type == "log":
            (ax.set_xscale if which == "x" else ax.set_yscale)("log")
        if axis.range is not None:
            low, high = axis.range
            if axis.type == "log":
                low, high = 10**low, 10**high
            (ax.set_xlim if which == "x" else ax.set_ylim)(low, high)
        if axis.tickvals is not None:
            ticks = list(axis.tickvals)
            labels = [_text(t) for t in axis.ticktext] if axis.ticktext is not None else None
            if which == "x":
                ax.set_xticks(ticks, labels)
            else:
                ax.set_yticks(ticks, labels)
        if axis.showticklabels is False:
            ax.tick_params(**{f"label{'bottom' if which == 'x' else 'left'}": False})
        if axis.visible is False:
            ax.set_axis_off()
    pair = (xid, yid)
    reversed_y = yaxis.autorange == "reversed" or (
        pair in canvas.images and yaxis.range is None and yaxis.autorange is None
    )
    if reversed_y and not ax.yaxis_inverted():
        ax.invert_yaxis()
    if xaxis.autorange == "reversed" and not ax.xaxis_inverted():
        ax.invert_xaxis()
    if yaxis.scaleanchor or pair in canvas.images:
        ax.set_aspect("equal", adjustable="box")
    grid = xaxis.showgrid is not False and yaxis.showgrid is not False
    has_map = pair in canvas.images or any(
        t.type == "heatmap" for t in canvas.fig.data if (t.xaxis or "x", t.yaxis or "y") == pair
    )
    if grid and not has_map:
        ax.grid(True, color="#e5e5e5", lw=0.6, zorder=0)
        ax.set_axisbelow(True)
    if yaxis.zeroline is not False and yaxis.type != "log" and not has_map:
        low, high = ax.get_ylim()
        if min(low, high) < 0 < max(low, high):
            ax.axhline(0, color="#999999", lw=0.8, zorder=1)
    if xaxis.tickangle is not None:
        for label in ax.get_xticklabels():
            label.set_rotation(-float(xaxis.tickangle))


def _ref_transform(canvas: _Canvas, xref: str, yref: str) -> Any:
    from matplotlib.transforms import blended_transform_factory

    def one(ref: str, axis: str) -> Any:
        if ref in (None, "paper"):
            return None
        base = ref.split()[0]
        pair_ax = next(
            (ax for (xid, yid), ax in canvas.axes.items() if (xid if axis == "x" else yid) == base),
            None,
        )
        if pair_ax is None:
            return None
        if ref.endswith("domain"):
            return pair_ax.transAxes
        return pair_ax.transData

    tx, ty = one(xref or "paper", "x"), one(yref or "paper", "y")
    paper = _PaperTransform(canvas)
    return blended_transform_factory(tx or paper.get(), ty or paper.get())


class _PaperTransform:
    """Plotly paper coordinates as a matplotlib transform (figure fraction, margins applied)."""

    def __init__(self, canvas: _Canvas) -> None:
        self.canvas = canvas

    def get(self) -> Any:
        from matplotlib.transforms import Affine2D

        c = self.canvas
        sx = (c.width - c.left - c.right) / c.width
        sy = (c.height - c.top - c.bottom) / c.height
        return (
            Affine2D().scale(sx, sy).translate(c.left / c.width, c.bottom / c.height)
            + c.mfig.transFigure
        )


def _shape(canvas: _Canvas, shape: Any) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    transform = _ref_transform(canvas, shape.xref, shape.yref)
    line = shape.line
    color = parse_color(line.color if line and line.color else "#444444")
    width = (line.width if line and line.width is not None else 2) * _PT
    dash = _DASHES.get(line.dash if line and line.dash else "solid", "-")
    if shape.type == "line":
        artist: Any = Line2D(
            [shape.x0, shape.x1],
            [shape.y0, shape.y1],
            transform=transform,
            color=color,
            lw=width,
            ls=dash,
            zorder=5,
        )
    elif shape.type == "rect":
        artist = Rectangle(
            (shape.x0, shape.y0),
            shape.x1 - shape.x0,
            shape.y1 - shape.y0,
            transform=transform,
            edgecolor=color,
            lw=width,
            ls=dash,
            facecolor=parse_color(shape.fillcolor) if shape.fillcolor else "none",
            alpha=shape.opacity,
            zorder=5,
        )
    else:
        raise NotImplementedError(f"PNG export does not draw {shape.type} shapes yet.")
    artist.set_clip_on(False)
    canvas.mfig.add_artist(artist)


_HA = {"left": "left", "right": "right", "center": "center", "auto": "center", None: "center"}
_VA = {"top": "top", "bottom": "bottom", "middle": "center", "auto": "center", None: "center"}


def _annotation(canvas: _Canvas, note: Any) -> None:
    transform = _ref_transform(canvas, note.xref, note.yref)
    shift_x, shift_y = (note.xshift or 0) * _PT, (note.yshift or 0) * _PT
    from matplotlib.transforms import ScaledTranslation

    offset = ScaledTranslation(shift_x / 72, shift_y / 72, canvas.mfig.dpi_scale_trans)
    data_ref = note.xref not in (None, "paper") and not str(note.xref).endswith("domain")
    canvas.mfig.text(
        note.x if note.x is not None else 0.5,
        note.y if note.y is not None else 0.5,
        _text(note.text),
        transform=transform + offset,
        ha=_HA.get(note.xanchor, "center"),
        va=_VA.get(note.yanchor, "bottom" if data_ref else "center"),
        fontsize=_font_pt(note.font, 12),
        color=parse_color(note.font.color if note.font and note.font.color else "#222222"),
        zorder=6,
    )


def _title(canvas: _Canvas) -> None:
    title = canvas.fig.layout.title
    if not title or not title.text:
        return
    y = 1 - (canvas.top * 0.3) / canvas.height
    x = title.x if title.x is not None else 0.02
    canvas.mfig.text(
        x,
        y,
        _text(title.text),
        ha="left" if title.x is None else _HA.get(title.xanchor, "center"),
        va="center",
        fontsize=_font_pt(title.font, 16),
        color="#222222",
        wrap=True,
    )


def _legend(canvas: _Canvas) -> None:
    if not canvas.legend:
        return
    legend = canvas.fig.layout.legend
    x = legend.x if legend.x is not None else 1.02
    y = legend.y if legend.y is not None else 1.0
    xanchor = legend.xanchor if legend.xanchor not in (None, "auto") else "left"
    yanchor = legend.yanchor if legend.yanchor not in (None, "auto") else "top"
    vertical = {"top": "upper", "bottom": "lower", "middle": "center"}[yanchor]
    horizontal = {"left": "left", "right": "right", "center": "center"}[xanchor]
    loc: Any = "center" if vertical == horizontal == "center" else f"{vertical} {horizontal}"
    handles, labels = zip(*canvas.legend.values(), strict=True)
    canvas.mfig.legend(
        handles,
        labels,
        loc=loc,
        bbox_to_anchor=(canvas.fx(x), canvas.fy(y)),
        ncol=len(handles) if legend.orientation == "h" else 1,
        fontsize=9,
        frameon=False,
        handlelength=1.4,
        numpoints=1,
        scatterpoints=1,
        columnspacing=1.2,
    )
