"""VAR figures: attention before / after (fig. 5) and a sweep of p / rho with CIs."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import plotly.graph_objects as go

from analysis.errors import UserInputError
from analysis.viz.overlays import attention_comparison
from analysis.viz.style import (
    TEMPLATE,
)

if TYPE_CHECKING:
    from analysis.tokens import ImageLike
    from analysis.var import VarAttention


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


def sweep_figure(rows: Sequence[dict[str, Any]], *, x: str = "p", title: str = "") -> go.Figure:
    """Metric vs a VAR setting with CIs: one line per value of the other setting.

    ``rows`` come from :func:`analysis.sweep.sweep_rows` (``setting``, ``value``
    with ``lo``/``hi``); the baseline row (``setting`` None) is a dashed line
    with its CI as a band.
    """
    points = [r for r in rows if r["setting"]]
    if not points:
        raise UserInputError("A sweep figure needs at least one VAR setting.")
    if not all(x in r["setting"] for r in points):
        raise UserInputError(f"Every setting must have {x!r}.")
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
