"""The figure builders, importable as ``analysis.plots`` (they live in :mod:`analysis.viz`)."""

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
