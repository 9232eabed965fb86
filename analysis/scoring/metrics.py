"""Benchmark metrics, each written from its published rule, with paired bootstrap CIs.

Every metric is a function of **units**, the things the benchmark's own rule
counts: a question (VQA, plain accuracy), an image with its two questions
(MME's accuracy+), a circular group of rotations (MMBench), a pair (MMVP).
:func:`paired_bootstrap` resamples units, the same draws for the baseline and a
condition, so a metric's CI and its paired difference come from one rule for
every benchmark.

* VQA (VQAv2 / VizWiz / TextVQA): answers normalised (:func:`normalize_vqa`);
  an answer's accuracy is the mean over the 10 leave-one-out subsets of the
  human answers of ``min(1, matches among the other 9 / 3)``. As in the official
  script, the human answers are normalised only when they disagree.
* GQA: exact match after the same normalisation.
* MME: per category, accuracy over questions and accuracy+ over images (both
  questions right), each in percent; the category score is their sum (max 200);
  perception sums its 10 categories, cognition its 4.
* MMBench (circular): an item counts when every rotation of its options is
  answered right.
* MMVP: accuracy over questions and pair accuracy (both questions of a pair).
* CV-Bench: overall = ((accuracy on ADE20K + accuracy on COCO) / 2 + accuracy
  on Omni3D) / 2.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis.config import CI_LEVEL, N_BOOT, SEED
from analysis.errors import UserInputError
from analysis.scoring.answers import normalize_vqa
from analysis.stats import bootstrap_indices, interval, paired_difference

MME_PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION = (
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning",
)
CV_BENCH_SOURCES = ("ADE20K", "COCO", "Omni3D")
VQA_MATCHES_FOR_FULL_CREDIT = 3


# ---------------------------------------------------------------------------- VQA


def vqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """VQA accuracy of one predicted answer against its (usually 10) human answers."""
    if not human_answers:
        raise UserInputError("VQA accuracy needs at least one human answer.")
    answer = normalize_vqa(prediction)
    humans = [a.replace("\n", " ").replace("\t", " ").strip() for a in human_answers]
    if len(set(humans)) > 1:
        humans = [normalize_vqa(a) for a in humans]
    if len(humans) == 1:
        return float(humans[0] == answer)
    scores = []
    for left_out in range(len(humans)):
        others = humans[:left_out] + humans[left_out + 1 :]
        matches = sum(other == answer for other in others)
        scores.append(min(1.0, matches / VQA_MATCHES_FOR_FULL_CREDIT))
    return float(np.mean(scores))


def exact_match(prediction: str, answer: str) -> float:
    """GQA-style exact match after the VQA normalisation."""
    return float(normalize_vqa(prediction) == normalize_vqa(answer))


# ------------------------------------------------------------------------ units


@dataclass(frozen=True)
class Unit:
    """One counted thing: its correctness per question, and labels the metric groups by."""

    correct: tuple[float, ...]
    group: str = ""

    @property
    def all_right(self) -> float:
        return float(all(c >= 1.0 for c in self.correct))


def group_units(
    keys: Sequence[str], scores: Sequence[float], groups: Sequence[str] | None = None
) -> list[Unit]:
    """Units from per-question scores: questions sharing a key form one unit, in first-seen order."""
    if len(keys) != len(scores) or (groups is not None and len(groups) != len(keys)):
        raise UserInputError("keys, scores and groups must have one entry per question.")
    order: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        order.setdefault(key, []).append(index)
    out = []
    for indices in order.values():
        group = "" if groups is None else groups[indices[0]]
        if groups is not None and any(groups[i] != group for i in indices):
            raise UserInputError(f"questions of one unit fall in different groups: {indices}")
        out.append(Unit(tuple(float(scores[i]) for i in indices), group))
    return out


def accuracy(units: Sequence[Unit]) -> dict[str, float]:
    """Mean per-question score (percent)."""
    values = [c for unit in units for c in unit.correct]
    return {"accuracy": 100.0 * float(np.mean(values)) if values else float("nan")}


def all_right_accuracy(units: Sequence[Unit], name: str) -> dict[str, float]:
    """Percent of units whose every question is right (MMBench circular, MMVP pairs)."""
    return {name: 100.0 * float(np.mean([u.all_right for u in units])) if units else float("nan")}


def mme_scores(units: Sequence[Unit]) -> dict[str, float]:
    """MME: units are images (two questions each), grouped by category."""
    out: dict[str, float] = {}
    for category in sorted({u.group for u in units}):
        mine = [u for u in units if u.group == category]
        acc = accuracy(mine)["accuracy"]
        plus = all_right_accuracy(mine, "plus")["plus"]
        out[f"{category}/accuracy"] = acc
        out[f"{category}/accuracy_plus"] = plus
        out[f"{category}/score"] = acc + plus
    present = {u.group for u in units}
    for name, categories in (("perception", MME_PERCEPTION), ("cognition", MME_COGNITION)):
        if present & set(categories):
            out[name] = sum(out[f"{c}/score"] for c in categories if c in present)
    return out


def mmvp_scores(units: Sequence[Unit]) -> dict[str, float]:
    """MMVP: units are pairs."""
    return {**accuracy(units), **all_right_accuracy(units, "pair_accuracy")}


def mmbench_circular(units: Sequence[Unit]) -> dict[str, float]:
    """MMBench: units are circular groups (one question per rotation)."""
    return {**all_right_accuracy(units, "circular_accuracy"), **accuracy(units)}


def cv_bench_scores(units: Sequence[Unit]) -> dict[str, float]:
    """CV-Bench: units are questions grouped by source (ADE20K, COCO, Omni3D)."""
    out = {}
    for source in CV_BENCH_SOURCES:
        mine = [u for u in units if u.group == source]
        if mine:
            out[f"{source}/accuracy"] = accuracy(mine)["accuracy"]
    if all(f"{s}/accuracy" in out for s in CV_BENCH_SOURCES):
        two_d = (out["ADE20K/accuracy"] + out["COCO/accuracy"]) / 2
        out["overall"] = (two_d + out["Omni3D/accuracy"]) / 2
    return out


METRICS: dict[str, Callable[[Sequence[Unit]], dict[str, float]]] = {
    "accuracy": accuracy,
    "mme": mme_scores,
    "mmvp": mmvp_scores,
    "mmbench": mmbench_circular,
    "cv_bench": cv_bench_scores,
}


# ---------------------------------------------------------------------- bootstrap


def paired_bootstrap(
    metric: Callable[[Sequence[Unit]], Mapping[str, float]],
    baseline: Sequence[Unit],
    others: Mapping[str, Sequence[Unit]],
    *,
    n_boot: int = N_BOOT,
    seed: int = SEED,
    level: float = CI_LEVEL,
) -> dict[str, Any]:
    """Each metric with its percentile CI per condition, and each condition's paired
    difference against the baseline (same resampled units for both).

    Units must be aligned: unit ``i`` of every condition is the same image / group.
    The draws are :func:`analysis.stats.bootstrap_indices`, the same as the
    per-item bootstrap of the POPE summaries for the same n and seed.
    """
    n = len(baseline)
    if n == 0:
        raise UserInputError("paired_bootstrap needs at least one unit.")
    for name, units in others.items():
        if len(units) != n:
            raise UserInputError(f"condition {name!r} has {len(units)} units, the baseline {n}.")
    draws = bootstrap_indices(n, n_boot, seed)
    conditions = {"baseline": list(baseline), **{k: list(v) for k, v in others.items()}}
    points = {name: dict(metric(units)) for name, units in conditions.items()}
    samples = {
        name: [metric([units[i] for i in row]) for row in draws]
        for name, units in conditions.items()
    }

    def column(name: str, key: str) -> np.ndarray:
        # A resample can miss a whole category (MME, CV-Bench): that draw has no value.
        return np.array([s.get(key, np.nan) for s in samples[name]], dtype=float)

    result: dict[str, Any] = {
        name: {key: interval(value, column(name, key), level) for key, value in point.items()}
        for name, point in points.items()
    }
    base = points["baseline"]
    for name in others:
        result[f"{name} - baseline"] = {
            key: paired_difference(
                points[name][key], base[key], column(name, key), column("baseline", key), level
            )
            for key in base
        }
    return result
