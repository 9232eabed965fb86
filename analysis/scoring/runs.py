"""Benchmarks in evaluation runs: per-item candidates and record fields, and the summary.

:func:`analysis.evaluation.evaluate` calls :func:`candidates` and
:func:`record_fields` for each :class:`BenchItem` and
:func:`benchmark_summary` on the run's records, so a run on MME, MMBench,
MMVP, CV-Bench, a multiple-choice set or a VQA file has the same shape as a
POPE run: the benchmark's metric with a bootstrap CI per condition, and for
each condition its paired difference against the baseline (same resampled
units) and, where every question is scored right or wrong, McNemar's test.

* Closed benchmarks are scored twice: by the log-probability of the first token
  of each of **the item's own** candidates (its option letters, or yes / no),
  and by greedy generation scored by the benchmark's :class:`Task`.
* Open ones (VQA, GQA) by generation only.

A record of a benchmark item carries ``benchmark``, ``unit``, ``category``,
``answer``, ``candidates`` and ``score_logprob`` / ``score_generate`` (the
item's score in [0, 1]); the summary reads only those.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from analysis.errors import UserInputError
from analysis.scoring.answers import parse_choice, parse_yes_no_prefix
from analysis.scoring.metrics import METRICS, Unit, group_units, paired_bootstrap
from analysis.scoring.readers import BenchItem
from analysis.scoring.tasks import task

YES_NO = ("yes", "no")
SCORINGS = ("logprob", "generate")


def candidates(item: BenchItem) -> list[str]:
    """The answers compared by log-probability for this item: its option letters, yes / no
    for closed yes/no benchmarks, none for open-answer ones."""
    if item.options:
        return list(item.options)
    return list(YES_NO) if task(item.benchmark).closed else []


def check_items(items: Sequence[BenchItem]) -> str:
    """One benchmark per run, labels among each item's candidates; the benchmark's name."""
    names = sorted({b.benchmark for b in items})
    if len(names) != 1:
        raise UserInputError(f"One benchmark per run, got {names}.")
    for b in items:
        allowed = candidates(b)
        if allowed and b.item.label is not None and b.item.label not in allowed:
            raise UserInputError(
                f"Item {b.item.id}: label {b.item.label!r} is not one of {allowed}."
            )
    return names[0]


def bench_fingerprint(items: Sequence[BenchItem]) -> str:
    """sha256 of what scores an item: the item, its unit, options, category and answers."""
    import hashlib
    import json

    digest = hashlib.sha256()
    for b in items:
        row = {**b.describe(), "answer": b.answer, "human_answers": list(b.human_answers)}
        digest.update(json.dumps(row, sort_keys=True).encode() + b"\n")
    return digest.hexdigest()


def union(items: Sequence[BenchItem]) -> list[str]:
    """Every candidate of ``items``, in first-seen order (one log-prob column each)."""
    out: dict[str, None] = {}
    for b in items:
        out.update(dict.fromkeys(candidates(b)))
    return list(out)


def predict_text(item: BenchItem, text: str) -> str | None:
    """The answer a generation gives: an option letter, yes / no, or the text itself."""
    if item.options:
        return parse_choice(text, item.options)
    if task(item.benchmark).closed:
        return parse_yes_no_prefix(text)
    return text.strip()


def record_fields(
    item: BenchItem, logprobs: Mapping[str, float] | None, text: str | None
) -> dict[str, Any]:
    """The benchmark part of one record (``logprobs`` over at least the item's candidates)."""
    chosen = candidates(item)
    label = item.item.label
    out: dict[str, Any] = {
        "benchmark": item.benchmark,
        "unit": item.unit,
        "category": item.category,
        "answer": item.answer,
        "candidates": chosen,
    }
    if chosen and logprobs is not None:
        mine = {a: float(logprobs[a]) for a in chosen}
        pred = max(chosen, key=lambda a: mine[a])  # first of equals, like argmax
        out.update(
            logprobs=mine,
            pred_logprob=pred,
            correct_logprob=None if label is None else pred == label,
            score_logprob=None if label is None else float(pred == label),
        )
    if text is not None:
        guess = predict_text(item, text)
        scored = item.human_answers or item.answer is not None or label is not None
        score = task(item.benchmark).score(item, text) if scored else None
        out.update(
            generated=text,
            pred_generate=guess,
            score_generate=score,
            correct_generate=None if score is None else score >= 1.0,
        )
    return out


def _units(rows: Sequence[Mapping[str, Any]], scoring: str) -> list[Unit]:
    key = f"score_{scoring}"
    return group_units(
        [str(r["unit"]) for r in rows],
        [float(r[key]) for r in rows],
        [str(r.get("category", "")) for r in rows],
    )


def benchmark_summary(
    by_condition: Mapping[str, Mapping[str, Mapping[str, Any]]],
    names: Sequence[str],
    *,
    n_boot: int,
    seed: int,
    level: float,
) -> dict[str, Any]:
    """Per scoring: each condition's metrics with CIs and, against the baseline, the paired
    differences and McNemar on per-question correctness (when every score is 0 or 1).

    Only items scored in every condition enter (units stay aligned across conditions).
    """
    from analysis.stats import mcnemar_exact

    first = next((r for rows in by_condition.values() for r in rows.values()), None)
    if first is None or "benchmark" not in first:
        return {}
    bench = task(str(first["benchmark"]))
    metric = METRICS[bench.metric]
    reference = "baseline" if "baseline" in names else names[0]
    out: dict[str, Any] = {"name": bench.name, "metric": bench.metric, "reference": reference}
    for scoring in SCORINGS:
        key = f"score_{scoring}"
        present = [n for n in names if by_condition.get(n)]
        common = (
            set.intersection(
                *(
                    {i for i, r in by_condition[n].items() if r.get(key) is not None}
                    for n in present
                )
            )
            if present
            else set()
        )
        if not common:
            continue
        order = sorted(common, key=lambda i: int(by_condition[present[0]][i]["index"]))
        rows = {n: [by_condition[n][i] for i in order] for n in present}
        units = {n: _units(rows[n], scoring) for n in present}
        others = {n: u for n, u in units.items() if n != reference}
        if reference in units:
            boot = paired_bootstrap(
                metric, units[reference], others, n_boot=n_boot, seed=seed, level=level
            )
            boot[reference] = boot.pop("baseline")
            boot = {k.replace(" - baseline", f" - {reference}"): v for k, v in boot.items()}
        else:
            boot = {
                n: paired_bootstrap(metric, u, {}, n_boot=n_boot, seed=seed, level=level)[
                    "baseline"
                ]
                for n, u in units.items()
            }
        entry: dict[str, Any] = {"n_items": len(order), "n_units": len(units[present[0]])}
        conditions: dict[str, Any] = {}
        for name in present:
            item: dict[str, Any] = {"metrics": boot[name]}
            versus = boot.get(f"{name} - {reference}")
            if versus is not None:
                item["vs_reference"] = versus
                base = np.array([float(r[key]) for r in rows[reference]])
                other = np.array([float(r[key]) for r in rows[name]])
                if np.isin(base, (0.0, 1.0)).all() and np.isin(other, (0.0, 1.0)).all():
                    item["mcnemar"] = mcnemar_exact(base == 1.0, other == 1.0)
            conditions[name] = item
        entry["conditions"] = conditions
        out[scoring] = entry
    return out


def headline(metrics: Mapping[str, Any]) -> list[str]:
    """The metric keys a table shows: the totals (no ``/``), else every key."""
    tops = [k for k in metrics if "/" not in k]
    return tops or list(metrics)


# ---------------------------------------------------------------------------- CHAIR


def _chair_metric(units: Sequence[Unit]) -> dict[str, float]:
    """CHAIR over caption units whose ``correct`` holds (mentions, hallucinated,
    hallucinated-or-not flag, annotated, covered) counts (see :func:`chair_summary`)."""
    mentions, hallucinated, flagged, annotated, covered = (
        sum(u.correct[k] for u in units) for k in range(5)
    )
    return {
        "chair_i": 100.0 * hallucinated / mentions if mentions else 0.0,
        "chair_s": 100.0 * flagged / len(units) if units else float("nan"),
        "recall": 100.0 * covered / annotated if annotated else float("nan"),
    }


def chair_summary(
    records: Sequence[Mapping[str, Any]],
    objects: Mapping[str, set[str]],
    names: Sequence[str],
    *,
    n_boot: int,
    seed: int,
    level: float,
) -> dict[str, Any]:
    """CHAIR_i, CHAIR_s and recall of each condition's generations (the captions), with
    bootstrap CIs over captions and paired differences against the baseline.

    ``objects`` maps an image name (as the records hold it, or its file name) to its
    COCO categories (:func:`analysis.scoring.chair.coco_objects`).
    """
    from pathlib import PurePosixPath

    from analysis.scoring.chair import chair_caption

    by_condition: dict[str, dict[str, Mapping[str, Any]]] = {n: {} for n in names}
    for r in records:
        if "generated" in r and r["condition"] in by_condition:
            by_condition[r["condition"]][str(r["id"])] = r
    present = [n for n in names if by_condition[n]]
    if not present:
        raise UserInputError("The run has no generations: run it with --max-new-tokens > 0.")
    common = set.intersection(*(set(by_condition[n]) for n in present))
    order = sorted(common, key=lambda i: int(by_condition[present[0]][i]["index"]))
    units: dict[str, list[Unit]] = {}
    for name in present:
        units[name] = []
        for key in order:
            record = by_condition[name][key]
            image = str(record["image"])
            truth = objects.get(image, objects.get(PurePosixPath(image).name))
            if truth is None:
                raise UserInputError(f"Image {image!r} has no COCO annotations in the file given.")
            c = chair_caption(str(record["generated"]), truth)
            counts = (
                len(c.mentioned),
                len(c.hallucinated),
                float(bool(c.hallucinated)),
                len(c.annotated),
                len(set(c.mentioned) & set(c.annotated)),
            )
            units[name].append(Unit(tuple(float(x) for x in counts)))
    reference = "baseline" if "baseline" in units else present[0]
    others = {n: u for n, u in units.items() if n != reference}
    boot = paired_bootstrap(
        _chair_metric, units[reference], others, n_boot=n_boot, seed=seed, level=level
    )
    return {
        "n_captions": len(order),
        "reference": reference,
        "conditions": {
            name: {
                "metrics": boot["baseline" if name == reference else name],
                **({"vs_reference": boot[f"{name} - baseline"]} if name != reference else {}),
            }
            for name in present
        },
    }
