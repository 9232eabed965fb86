"""Benchmark scoring beyond POPE: answer parsing and metrics written from each
benchmark's published rule (see :mod:`analysis.scoring.metrics`)."""

from analysis.scoring.answers import normalize_vqa, parse_choice, parse_yes_no_prefix
from analysis.scoring.metrics import (
    METRICS,
    Unit,
    cv_bench_scores,
    exact_match,
    group_units,
    mmbench_circular,
    mme_scores,
    mmvp_scores,
    paired_bootstrap,
    vqa_accuracy,
)

__all__ = [
    "METRICS",
    "Unit",
    "cv_bench_scores",
    "exact_match",
    "group_units",
    "mmbench_circular",
    "mme_scores",
    "mmvp_scores",
    "normalize_vqa",
    "paired_bootstrap",
    "parse_choice",
    "parse_yes_no_prefix",
    "vqa_accuracy",
]
