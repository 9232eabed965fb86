"""Figure builders: they take result objects (never models) and return plotly figures.

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

Modules: :mod:`~analysis.viz.style` (template, colours, layout helpers),
:mod:`~analysis.viz.overlays` (values over the image), figure builders by topic
(:mod:`~analysis.viz.sinks`, :mod:`~analysis.viz.ablation`, :mod:`~analysis.viz.heads`,
:mod:`~analysis.viz.var`) and :mod:`~analysis.viz.export` (HTML and PNG files).
"""

from __future__ import annotations

from analysis.viz.ablation import contribution_bars, knockout_bars, mean_ci
from analysis.viz.export import figure_div, to_png, write_html
from analysis.viz.heads import head_contrast, head_maps
from analysis.viz.overlays import (
    add_overlay,
    attention_comparison,
    default_sink_layer,
    overlay,
    phi_overlay,
    text_attention_overlay,
)
from analysis.viz.sinks import hidden_state_magnitudes, phi_vs_attention, sink_counts, sink_overview
from analysis.viz.style import (
    DIVERGING,
    GROUP_COLORS,
    HEAT,
    SINK_COLOR,
    TARGET_COLORS,
    TARGET_LABELS,
    TEMPLATE,
    clean_token,
    strip_tags,
)
from analysis.viz.var import sweep_figure, var_before_after

__all__ = [
    "DIVERGING",
    "GROUP_COLORS",
    "HEAT",
    "SINK_COLOR",
    "TARGET_COLORS",
    "TARGET_LABELS",
    "TEMPLATE",
    "add_overlay",
    "attention_comparison",
    "clean_token",
    "contribution_bars",
    "default_sink_layer",
    "figure_div",
    "head_contrast",
    "head_maps",
    "hidden_state_magnitudes",
    "knockout_bars",
    "mean_ci",
    "overlay",
    "phi_overlay",
    "phi_vs_attention",
    "sink_counts",
    "sink_overview",
    "strip_tags",
    "sweep_figure",
    "text_attention_overlay",
    "to_png",
    "var_before_after",
    "write_html",
]
