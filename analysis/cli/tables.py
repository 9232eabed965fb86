"""What the commands print: the two consoles, the result tables and the ``--json`` files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    from analysis.fsio import write_atomic

    if path is None:
        return
    write_atomic(path, json.dumps(payload, indent=2))
    console.print(f"wrote {escape(str(path))}")


def _ci(entry: dict[str, float] | None, spec: str = ".3f") -> str:
    """``value [lo, hi]`` in one format spec (``+.2g`` for small changes)."""
    if entry is None:
        return "-"
    return f"{entry['value']:{spec}} [{entry['lo']:{spec}}, {entry['hi']:{spec}}]"


def print_wide(table: Table) -> None:
    """A terminal gets its own width; a pipe or log gets long lines instead of wrapped cells."""
    if console.is_terminal:
        console.print(table)
    else:
        Console(width=max(console.width, 160)).print(table)


def print_benchmark(bench: dict[str, Any], title: str, level: int) -> None:
    """One table per scoring: each headline metric with its CI, the paired difference against
    the reference condition (the baseline) with its CI, and McNemar's p."""
    from analysis.scoring.runs import headline

    for scoring, label in (("logprob", "option log-prob"), ("generate", "generation")):
        entry = bench.get(scoring)
        if not entry:
            continue
        reference = bench["reference"]
        first = next(iter(entry["conditions"].values()))["metrics"]
        keys = headline(first)
        table = Table(
            title=f"{title}: {bench['name']} scored by {label}, {entry['n_items']} questions in "
            f"{entry['n_units']} units ({level}% bootstrap CIs)"
        )
        table.add_column("condition")
        for key in keys:
            table.add_column(escape(key))
            table.add_column(escape(f"Δ {key} vs {reference}"))
        table.add_column("McNemar p")
        for name, item in entry["conditions"].items():
            cells = [escape(name)]
            for key in keys:
                versus = item.get("vs_reference", {}).get(key)
                cells += [_ci(item["metrics"].get(key), ".2f"), _ci(versus, "+.2f")]
            mcnemar = item.get("mcnemar")
            cells.append("-" if mcnemar is None else f"{mcnemar['p']:.3g}")
            table.add_row(*cells)
        print_wide(table)


def print_summary(summary: dict[str, Any], title: str) -> None:
    """One table per scoring (log-prob, generation), then sinks, heads and VAR lines."""
    from analysis.evaluation import summary_rows

    level = round(100 * summary["bootstrap"]["level"])
    print_benchmark(summary.get("benchmark") or {}, title, level)
    for scoring, label in (("logprob", "answer log-prob"), ("generate", "generation")):
        rows = summary_rows(summary, scoring)
        if not rows:
            continue
        table = Table(title=f"{title}: scored by {label} ({level}% bootstrap CIs)")
        for column in (
            "condition",
            "n",
            "accuracy",
            "precision",
            "recall",
            "F1",
            "yes",
            "Δ accuracy",
            "McNemar p",
            "Δ log p(label)",
        ):
            table.add_column(column)
        for row in rows:
            table.add_row(
                escape(row["condition"]),
                str(row["n"]),
                _ci(row["accuracy"]),
                f"{row['precision']['value']:.3f}",
                f"{row['recall']['value']:.3f}",
                _ci(row["f1"]),
                f"{row['yes_ratio']['value']:.3f}",
                _ci(row["delta_accuracy"], "+.3f"),
                "-" if row["mcnemar_p"] is None else f"{row['mcnemar_p']:.3g}",
                _ci(row["delta_logprob"], "+.2g"),
            )
        print_wide(table)
    if not summary.get("benchmark") and not any(
        summary_rows(summary, s) for s in ("logprob", "generate")
    ):
        console.print("no labelled items: records hold the answers, no accuracy to report")
    if "sinks" in summary:
        means = ", ".join(f"{v:.1f}" for v in summary["sinks"]["per_layer_mean"])
        console.print(
            f"visual sinks per image by layer (mean over {len(summary['sinks']['per_image'])} "
            f"images): {means}"
        )
    if "heads" in summary:
        console.print(
            escape(f"image-centric heads (layer, head): {summary['heads']['image_centric']}")
        )
    from analysis.interventions.registry import summary_lines

    for line in summary_lines(summary):
        console.print(escape(line))
    if not summary["complete"]:
        expected = summary.get("n_items_expected", summary["n_items"])
        console.print(
            f"[yellow]partial: {summary['n_items']} of {expected} items present, some "
            "conditions lack some items (rerun the same command to resume)[/]"
        )
