"""The per-item record of an evaluation run: one typed schema and its on-disk format.

A run writes one JSON line per (item, condition). :class:`ItemRecord` is that
line's schema: the item (``id``, ``index`` in the dataset, ``image``, ``text``,
``label``), the condition's name, and optional groups, each present or absent
as a whole:

* ``bench``: the benchmark fields (format 2: ``benchmark``, ``unit``,
  ``category``, ``answer``, ``candidates``), see :mod:`analysis.scoring.runs`;
* ``logprob``: the candidates' first-token log-probabilities and the answer
  they pick (``logprobs``, ``pred_logprob``, ``correct_logprob``, and with a
  benchmark ``score_logprob``);
* ``generate``: the greedy generation and the answer parsed from it
  (``generated``, ``pred_generate``, ``correct_generate``, with a benchmark
  ``score_generate``);
* what the condition's hooks measured: ``sinks`` and ``heads`` (baseline
  statistics), ``var`` (rows changed, mass moved) or ``blocked`` (knock-out
  counts per layer).

``ItemRecord.from_dict(d).to_dict() == d`` for every record a run writes, keys
in the order they are written, so the JSON lines are unchanged by a read and a
write. A line with a missing or unknown key is refused with its key named.

Format versions: 1 (POPE question files) and 2 (adds the benchmark fields).
Both read; a run writes 2 only when it has a benchmark, so format 1 files stay
byte for byte what older versions wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from analysis.eval.errors import EvalError

# Format 2 adds the benchmark fields of records (see analysis.scoring.runs); runs
# without a benchmark (POPE question files) write the unchanged format 1.
FORMAT_VERSION = 2
POPE_FORMAT_VERSION = 1

_ITEM_KEYS = ("id", "index", "condition", "image", "text", "label")
_BENCH_KEYS = ("benchmark", "unit", "category", "answer", "candidates")
_STAT_KEYS = ("sinks", "heads", "var", "blocked")


@dataclass(frozen=True)
class BenchFields:
    """The benchmark part of a record (format 2)."""

    benchmark: str
    unit: Any
    category: Any
    answer: Any
    candidates: list[str]


@dataclass(frozen=True)
class LogprobScore:
    """Scoring by the candidates' first-token log-probabilities."""

    logprobs: dict[str, float]
    pred: str
    correct: bool | None
    # Benchmark records only (the benchmark rule's score of the prediction).
    score: float | None = None


@dataclass(frozen=True)
class GenerateScore:
    """Scoring by greedy generation."""

    text: str
    pred: str | None
    correct: bool | None
    # Benchmark records only.
    score: float | None = None


@dataclass(frozen=True)
class ItemRecord:
    """One item under one condition; see the module docstring for the groups."""

    id: str
    index: int
    condition: str
    image: str
    text: str
    label: str | None
    bench: BenchFields | None = None
    logprob: LogprobScore | None = None
    generate: GenerateScore | None = None
    sinks: list[int] | None = None
    heads: dict[str, Any] | None = None
    var: dict[str, Any] | None = None
    blocked: list[int] | None = None

    @property
    def key(self) -> tuple[str, str]:
        """(item id, condition): what a run is deduplicated and resumed by."""
        return str(self.id), self.condition

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the record, keys in the order a run writes them."""
        out: dict[str, Any] = {k: getattr(self, k) for k in _ITEM_KEYS}
        benchmark = self.bench is not None
        if self.bench is not None:
            out.update({k: getattr(self.bench, k) for k in _BENCH_KEYS})
        if self.logprob is not None:
            out.update(
                logprobs=self.logprob.logprobs,
                pred_logprob=self.logprob.pred,
                correct_logprob=self.logprob.correct,
            )
            if benchmark:
                out["score_logprob"] = self.logprob.score
        if self.generate is not None:
            out.update(generated=self.generate.text, pred_generate=self.generate.pred)
            if benchmark:
                out["score_generate"] = self.generate.score
            out["correct_generate"] = self.generate.correct
        out.update({k: getattr(self, k) for k in _STAT_KEYS if getattr(self, k) is not None})
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ItemRecord:
        """The record of a JSON object; :class:`EvalError` naming a missing or unknown key."""
        if not isinstance(data, Mapping):
            raise EvalError(f"A record must be a JSON object, got {type(data).__name__}.")
        missing = [k for k in _ITEM_KEYS if k not in data]
        if missing:
            raise EvalError(f"Record {dict(data).get('id')!r} lacks {missing}.")
        benchmark = "benchmark" in data
        allowed = {*_ITEM_KEYS, *_STAT_KEYS, "logprobs", "pred_logprob", "correct_logprob"}
        allowed |= {"generated", "pred_generate", "correct_generate"}
        if benchmark:
            allowed |= {*_BENCH_KEYS, "score_logprob", "score_generate"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise EvalError(f"Record {data['id']!r}: unknown field(s) {unknown}.")

        def group(keys: tuple[str, ...]) -> bool:
            present = [k in data for k in keys]
            if any(present) and not all(present):
                raise EvalError(
                    f"Record {data['id']!r}: fields {list(keys)} come together; "
                    f"has only {[k for k in keys if k in data]}."
                )
            return all(present)

        logprob_keys: tuple[str, ...] = ("logprobs", "pred_logprob", "correct_logprob")
        generate_keys: tuple[str, ...] = ("generated", "pred_generate", "correct_generate")
        if benchmark:
            group(_BENCH_KEYS)
            logprob_keys += ("score_logprob",)
            generate_keys += ("score_generate",)
        return cls(
            **{k: data[k] for k in _ITEM_KEYS},
            bench=BenchFields(**{k: data[k] for k in _BENCH_KEYS}) if benchmark else None,
            logprob=LogprobScore(
                data["logprobs"],
                data["pred_logprob"],
                data["correct_logprob"],
                data.get("score_logprob"),
            )
            if group(logprob_keys)
            else None,
            generate=GenerateScore(
                data["generated"],
                data["pred_generate"],
                data["correct_generate"],
                data.get("score_generate"),
            )
            if group(generate_keys)
            else None,
            **{k: data[k] for k in _STAT_KEYS if k in data},
        )


def record_key(record: ItemRecord | Mapping[str, Any]) -> tuple[str, str]:
    """(item id, condition) of a record, typed or as read from JSON."""
    if isinstance(record, ItemRecord):
        return record.key
    return str(record["id"]), str(record["condition"])
