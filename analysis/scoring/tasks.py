"""One :class:`Task` per benchmark: how a generated answer is scored and which metric counts it.

Adding a benchmark is one entry in :data:`TASKS` (and a reader module in
:mod:`analysis.scoring.readers` if its file layout is new; it lists the
benchmark among those it serves).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from analysis.errors import UserInputError
from analysis.scoring.answers import parse_choice, parse_yes_no_prefix
from analysis.scoring.metrics import (
    METRICS,
    Unit,
    exact_match,
    group_units,
    vqa_accuracy,
)
from analysis.scoring.readers import BenchItem


def _yes_no(item: BenchItem, text: str) -> float:
    return float(item.item.label is not None and parse_yes_no_prefix(text) == item.item.label)


def _choice(item: BenchItem, text: str) -> float:
    return float(
        item.item.label is not None and parse_choice(text, item.options) == item.item.label
    )


def _vqa(item: BenchItem, text: str) -> float:
    return vqa_accuracy(text, item.human_answers)


def _gqa(item: BenchItem, text: str) -> float:
    return exact_match(text, item.answer or "")


@dataclass(frozen=True)
class Task:
    """A benchmark: the score of one generated answer in [0, 1], and its metric over units."""

    name: str
    score: Callable[[BenchItem, str], float]
    metric: str
    # Scored by the log-probability of its labels' first tokens as well (closed answers).
    closed: bool

    def units(self, items: Sequence[BenchItem], texts: Sequence[str]) -> list[Unit]:
        if len(items) != len(texts):
            raise UserInputError(f"{len(items)} items but {len(texts)} answers.")
        scores = [self.score(item, text) for item, text in zip(items, texts, strict=True)]
        groups = [item.category for item in items]
        return group_units([item.unit for item in items], scores, groups)

    def evaluate(self, items: Sequence[BenchItem], texts: Sequence[str]) -> dict[str, Any]:
        return METRICS[self.metric](self.units(items, texts))


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task("pope", _yes_no, "accuracy", closed=True),
        Task("mme", _yes_no, "mme", closed=True),
        Task("mmbench", _choice, "mmbench", closed=True),
        Task("mmvp", _choice, "mmvp", closed=True),
        Task("cv_bench", _choice, "cv_bench", closed=True),
        Task("choice", _choice, "accuracy", closed=True),
        Task("vqa", _vqa, "accuracy", closed=False),
        Task("gqa", _gqa, "accuracy", closed=False),
    )
}


def task(name: str) -> Task:
    if name not in TASKS:
        raise UserInputError(f"Unknown benchmark {name!r}; choose from {', '.join(TASKS)}.")
    return TASKS[name]
