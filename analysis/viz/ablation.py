"""Bar figures with bootstrap CIs: knock-out effects (fig. 3b) and residual contribution (3c)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from analysis.config import CI_LEVEL, SEED
from analysis.stats import mean_ci
from analysis.viz.style import (
    GROUP_COLORS,
    TARGET_COLORS,
    TARGET_LABELS,
    TEMPLATE,
)

if TYPE_CHECKING:
    from analysis.ablation import AblationResult
    from analysis.contribution import ContributionResult


def knockout_bars(
    ablation: AblationResult, *, answer: int = 0, level: float = CI_LEVEL, seed: int = SEED
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
    result: ContributionResult, *, layers: Sequence[int] | None = None, level: float = CI_LEVEL
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
