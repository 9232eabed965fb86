"""The summary of a run, computed from its per-item records only (deterministic given the seed).

Per condition: POPE accuracy, precision, recall, F1 and yes-ratio with
percentile bootstrap CIs (:mod:`analysis.stats`), and against the baseline the
paired accuracy difference (bootstrap CI), the exact McNemar test and the mean
change of the label's log-probability and of its margin over the other answers
(the log-odds for yes/no, which does not saturate). Each condition's kind adds
its own entries (:meth:`analysis.interventions.base.ConditionSpec.summary_entries`),
a benchmark run its metric (:func:`analysis.scoring.runs.benchmark_summary`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from analysis.config import CI_LEVEL, N_BOOT
from analysis.eval.records import ItemRecord
from analysis.eval.runfolder import expected_items
from analysis.interventions import registry
from analysis.stats import bootstrap_ci, confusion, mcnemar_exact, pope_metrics
from analysis.stats import mean_stat as _mean_stat

# The two ways an item is scored: by the answers' log-probabilities, by generation.
SCORINGS = ("logprob", "generate")


def summarize(
    records: Sequence[ItemRecord | Mapping[str, Any]],
    manifest: dict[str, Any],
    *,
    n_boot: int = N_BOOT,
    level: float = CI_LEVEL,
) -> dict[str, Any]:
    """The run's numbers from its records (typed, or the JSON objects a run writes)."""
    typed = [r if isinstance(r, ItemRecord) else ItemRecord.from_dict(r) for r in records]
    config = manifest["config"]
    answers, seed = config["answers"], int(config["seed"])
    names = [c["name"] for c in manifest["conditions"]]
    # Each condition's kind from its manifest entry (None for a layout no kind reads).
    kinds = {c["name"]: registry.spec_class(c) for c in manifest["conditions"]}
    by_condition: dict[str, dict[str, ItemRecord]] = {name: {} for name in names}
    for record in typed:
        by_condition.setdefault(record.condition, {})[str(record.id)] = record
    ids = {str(r.id) for r in typed}
    baseline = by_condition.get("baseline") or None
    boot = {"n_boot": n_boot, "seed": seed, "level": level}
    expected = expected_items(manifest, len(ids))
    out: dict[str, Any] = {
        "n_items": len(ids),
        "n_items_expected": expected,
        "n_records": len(typed),
        # Complete: every condition has every item the sessions asked for, not just
        # the items some condition reached (a run cut after 11 of 32 is partial).
        "complete": len(ids) >= expected and all(len(by_condition[n]) == len(ids) for n in names),
        "answers": answers,
        "bootstrap": boot,
        "dims": (manifest.get("dims") or {}).get("dims"),
        "conditions": {},
    }
    # The kinds' summaries and the benchmark metrics read the records as JSON objects.
    as_json = {
        name: {key: r.to_dict() for key, r in rows.items()} for name, rows in by_condition.items()
    }
    benchmark = config.get("benchmark")
    if benchmark is not None:
        from analysis.scoring import runs as bench_runs

        out["benchmark"] = bench_runs.benchmark_summary(
            as_json, names, n_boot=n_boot, seed=seed, level=level
        )
    for name in names:
        rows = by_condition[name]
        entry: dict[str, Any] = {"n": len(rows)}
        # POPE's yes/no metrics (positive = the first answer) where they mean something.
        for scoring in SCORINGS if benchmark in (None, "pope") else ():
            scored = _scoring_entry(rows, baseline, name, scoring, answers, boot)
            if scored is not None:
                entry[scoring] = scored
        if baseline is not None and name != "baseline":
            entry.update(_label_deltas(rows, baseline, boot))
        kind = kinds.get(name)
        if kind is not None:
            entry.update(kind.summary_entries(list(as_json[name].values())))
        out["conditions"][name] = entry
    # Run-level entries of a kind (the baseline's sink counts and head ranking).
    for name, kind in kinds.items():
        if kind is not None and as_json.get(name):
            out.update(kind.run_summary(list(as_json[name].values())))
    return out


def _scored(record: ItemRecord, scoring: str) -> tuple[str | None, bool | None] | None:
    """(prediction, correct) of a record under one scoring; None when not scored so."""
    score = record.logprob if scoring == "logprob" else record.generate
    return None if score is None else (score.pred, score.correct)


def _scoring_entry(
    rows: dict[str, ItemRecord],
    baseline: dict[str, ItemRecord] | None,
    name: str,
    scoring: str,
    answers: Sequence[str],
    boot: dict[str, Any],
) -> dict[str, Any] | None:
    labelled = [
        (r, scored)
        for r in rows.values()
        if r.label is not None and (scored := _scored(r, scoring)) is not None
    ]
    if not labelled:
        return None
    positive = answers[0]
    pred = np.array([scored[0] == positive for _, scored in labelled])
    label = np.array([r.label == positive for r, _ in labelled])
    entry: dict[str, Any] = {"n": len(labelled)}
    entry.update(
        bootstrap_ci(
            pope_metrics,
            [pred, label],
            n_boot=boot["n_boot"],
            seed=boot["seed"],
            level=boot["level"],
        )
    )
    entry["counts"] = {k: int(v) for k, v in confusion(pred, label).items()}
    if baseline is None or name == "baseline":
        return entry
    pairs = [
        (base, scored)
        for r, scored in labelled
        if str(r.id) in baseline and (base := _scored(baseline[str(r.id)], scoring)) is not None
    ]
    if pairs:
        base_correct = np.array([bool(b[1]) for b, _ in pairs])
        other = np.array([bool(s[1]) for _, s in pairs])
        delta = bootstrap_ci(
            _mean_stat,
            [other.astype(np.float64) - base_correct.astype(np.float64)],
            n_boot=boot["n_boot"],
            seed=boot["seed"],
            level=boot["level"],
        )["mean"]
        entry["vs_baseline"] = {
            "n_pairs": len(pairs),
            "delta_accuracy": delta,
            "mcnemar": mcnemar_exact(base_correct, other),
            "changed": int(sum(b[0] != s[0] for b, s in pairs)),
        }
    return entry


def label_margin(logprobs: Mapping[str, float], label: str) -> float:
    """log p(label) minus the best other answer's: the log-odds for two answers.

    Unlike log p(label) it does not saturate when the answer is near-certain.
    """
    return logprobs[label] - max(v for k, v in logprobs.items() if k != label)


def _label_deltas(
    rows: dict[str, ItemRecord], baseline: dict[str, ItemRecord], boot: dict[str, Any]
) -> dict[str, Any]:
    """Mean change of log p(label) and of the label's margin against the baseline, paired by
    item, with CIs."""
    pairs = [
        (r.label, r.logprob.logprobs, base.logprob.logprobs)
        for key, r in rows.items()
        if (base := baseline.get(key)) is not None
        and r.logprob is not None
        and base.logprob is not None
        and r.label is not None
        and r.label in r.logprob.logprobs
    ]
    if not pairs:
        return {}
    logprob = np.array([mine[label] - base[label] for label, mine, base in pairs])
    margin = np.array(
        [label_margin(mine, label) - label_margin(base, label) for label, mine, base in pairs]
    )
    out = {}
    for key, values in (("delta_logprob_label", logprob), ("delta_margin_label", margin)):
        ci = bootstrap_ci(
            _mean_stat, [values], n_boot=boot["n_boot"], seed=boot["seed"], level=boot["level"]
        )["mean"]
        out[key] = ci | {"n": len(pairs)}
    return out


def summary_rows(summary: dict[str, Any], scoring: str = SCORINGS[0]) -> list[dict[str, Any]]:
    """Flat rows (one per condition) for tables."""
    rows = []
    for name, entry in summary["conditions"].items():
        scored = entry.get(scoring)
        if scored is None:
            continue
        row = {"condition": name, "n": scored["n"]}
        for metric in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
            row[metric] = scored[metric]
        versus = scored.get("vs_baseline")
        row["delta_accuracy"] = versus["delta_accuracy"] if versus else None
        row["mcnemar_p"] = versus["mcnemar"]["p"] if versus else None
        row["delta_logprob"] = entry.get("delta_logprob_label")
        rows.append(row)
    return rows


__all__ = ["SCORINGS", "label_margin", "summarize", "summary_rows"]
