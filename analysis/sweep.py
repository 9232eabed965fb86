"""A grid of VAR settings over one item set: the conditions, and the rows a figure reads.

``p=0.2:0.8:0.2,rho=0.3,0.5,0.8`` is the grid p in {0.2, 0.4, 0.6, 0.8} x rho in
{0.3, 0.5, 0.8}: ``start:stop:step`` is an inclusive range, a list is comma
separated, and a piece without ``=`` continues the previous key's list. Every
point becomes one ``var:...`` condition of a single evaluation run (plus the
baseline), so the sweep is resumable like any run and its differences are
paired on the same items. :func:`sweep_rows` reads a run's summary back into
one row per setting (metric with CI, paired difference with CI) for
:func:`analysis.plots.sweep_figure`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from analysis.errors import UserInputError
from analysis.interventions.var import VAR_KEYS

# Grid keys: the var condition's numeric option names (analysis.interventions.var).
GRID_KEYS = tuple(VAR_KEYS)
MAX_POINTS = 200


def _number(key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserInputError(f"--grid {key}: {text!r} is not a number.") from None
    if not math.isfinite(value):
        raise UserInputError(f"--grid {key}: {text!r} is not a finite number.")
    return value


def _values(key: str, text: str) -> list[float]:
    if ":" not in text:
        return [_number(key, text)]
    parts = text.split(":")
    if len(parts) != 3:
        raise UserInputError(f"--grid {key}: a range is start:stop:step, got {text!r}.")
    start, stop, step = (_number(key, x) for x in parts)
    if step <= 0 or stop < start:
        raise UserInputError(f"--grid {key}: {text!r} needs step > 0 and stop >= start.")
    count = math.floor((stop - start) / step + 1e-9) + 1
    # Rounded so 0.2 + 2 * 0.2 is 0.6, not 0.6000000000000001 (names stay readable).
    return [round(start + k * step, 10) for k in range(count)]


def parse_grid(spec: str) -> dict[str, list[float]]:
    """``"p=0.2:0.8:0.2,rho=0.3,0.5"`` -> ``{"p": [0.2, 0.4, 0.6, 0.8], "rho": [0.3, 0.5]}``."""
    grid: dict[str, list[float]] = {}
    key: str | None = None
    for piece in (x.strip() for x in spec.split(",")):
        if not piece:
            continue
        if "=" in piece:
            key, _, text = (x.strip() for x in piece.partition("="))
            key = key.lower()
            if key not in GRID_KEYS:
                raise UserInputError(f"--grid key {key!r}: use {', '.join(GRID_KEYS)}.")
            if key in grid:
                raise UserInputError(f"--grid lists {key} twice.")
            grid[key] = []
        elif key is None:
            raise UserInputError(f"--grid {piece!r} has no key before it (e.g. p=0.2,0.4).")
        else:
            text = piece
        grid[key] += _values(key, text)
    if not grid:
        raise UserInputError("--grid is empty; e.g. --grid p=0.2:0.8:0.2,rho=0.5,0.8.")
    for name, values in grid.items():
        if len(set(values)) != len(values):
            raise UserInputError(f"--grid {name} lists a value twice: {values}.")
    points = math.prod(len(v) for v in grid.values())
    if points > MAX_POINTS:
        raise UserInputError(f"--grid has {points} points; at most {MAX_POINTS} per run.")
    return grid


def grid_conditions(grid: Mapping[str, Sequence[float]], base: str = "var") -> list[str]:
    """One condition spec per grid point, in grid order (the last key varies fastest).

    ``base`` may carry more options, e.g. ``var:to=text`` or ``var-all-heads``.
    """
    head, _, extra = base.partition(":")
    specs = []
    for point in itertools.product(*grid.values()):
        options = [f"{k}={v:g}" for k, v in zip(grid, point, strict=True)]
        specs.append(f"{head}:" + ",".join([*filter(None, [extra]), *options]))
    return specs


def _metric_of(summary: Mapping[str, Any], name: str, metric: str, scoring: str) -> Any:
    bench = summary.get("benchmark")
    if bench:
        entry = bench.get(scoring, {}).get("conditions", {}).get(name)
        if entry is None:
            return None, None
        return entry["metrics"].get(metric), entry.get("vs_reference", {}).get(metric)
    entry = summary["conditions"].get(name, {}).get(scoring)
    if entry is None:
        return None, None
    versus = entry.get("vs_baseline")
    return entry.get(metric), None if versus is None else versus["delta_accuracy"]


def default_metric(summary: Mapping[str, Any]) -> str:
    """The headline metric: POPE accuracy, or the benchmark's first total."""
    bench = summary.get("benchmark")
    if not bench:
        return "accuracy"
    from analysis.scoring.runs import headline

    for scoring in ("logprob", "generate"):
        if scoring in bench:
            first = next(iter(bench[scoring]["conditions"].values()))["metrics"]
            return headline(first)[0]
    raise UserInputError("The run's summary has no scored benchmark entries.")


def sweep_rows(
    summary: Mapping[str, Any],
    conditions: Sequence[Mapping[str, Any]],
    *,
    metric: str | None = None,
    scoring: str = "logprob",
) -> list[dict[str, Any]]:
    """One row per VAR condition of a run: its settings, the metric and the paired delta.

    ``conditions`` are the manifest's condition descriptions (their VAR settings).
    The baseline, when present, is a row with ``setting`` None.
    """
    metric = metric or default_metric(summary)
    rows = []
    for condition in conditions:
        value, delta = _metric_of(summary, condition["name"], metric, scoring)
        if value is None:
            continue
        var = condition.get("var") or {}
        setting = {k: var[attr] for k, attr in (("p", "p"), ("rho", "rho")) if k in var}
        rows.append(
            {
                "condition": condition["name"],
                "setting": setting or None,
                "metric": metric,
                "value": value,
                "delta": delta,
            }
        )
    if not rows:
        raise UserInputError(f"No condition of the run has {metric!r} scored by {scoring}.")
    return rows
