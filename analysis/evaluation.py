"""Dataset evaluation: baseline, VAR settings and knock-outs in one reproducible run.

The front door of :mod:`analysis.eval`, which holds the parts:

* :mod:`analysis.eval.conditions`: the condition grammar parsed into registered specs
  (:func:`parse_conditions`, :data:`Condition`);
* :mod:`analysis.eval.run`: :func:`evaluate`, whose settings are one
  :class:`analysis.config.EvalConfig` (or the same settings as keywords);
* :mod:`analysis.eval.runner`: what one batch computes (scores, parsed answers, sink dims);
* :mod:`analysis.eval.records`: the typed per-item :class:`ItemRecord` and the format version;
* :mod:`analysis.eval.runfolder`: manifest, append-only parts, repair, merge;
* :mod:`analysis.eval.sharding`: the explicit :class:`Shard` a caller passes in;
* :mod:`analysis.eval.summary`: :func:`summarize`, from the records only.

Benchmark items (:class:`analysis.scoring.readers.BenchItem`: MME, MMBench,
MMVP, CV-Bench, multiple choice, VQA, GQA) are scored by their benchmark's rule
instead (:mod:`analysis.scoring.runs`). The metrics and the one bootstrap are
pure functions in :mod:`analysis.stats`, re-exported here too.
"""

from __future__ import annotations

from analysis.config import EvalConfig
from analysis.eval.conditions import ABLATE_TARGETS, Condition, parse_conditions
from analysis.eval.errors import EvalError, RunInterrupted
from analysis.eval.records import FORMAT_VERSION, POPE_FORMAT_VERSION, ItemRecord, record_key
from analysis.eval.run import EvalSettings, eval_config, evaluate, evaluate_config
from analysis.eval.runfolder import (
    DECODED,
    LOCK,
    MANIFEST,
    RECORDS,
    SUMMARY,
    EvalResult,
    expected_items,
    load_item_records,
    load_records,
    merge_run,
    part_path,
    read_manifest,
    read_part,
    repair_part,
)
from analysis.eval.runner import parse_yes_no, predict_from_text, score_batch
from analysis.eval.sharding import (
    Pending,
    Shard,
    init_distributed,
    rank_device,
    resolve_shard,
    shard_from_env,
)
from analysis.eval.summary import label_margin, summarize, summary_rows
from analysis.interventions.baseline import PrefillStats
from analysis.stats import (
    bootstrap_ci,
    bootstrap_indices,
    confusion,
    mcnemar_exact,
    percentile_interval,
    pope_metrics,
)

__all__ = [
    "ABLATE_TARGETS",
    "DECODED",
    "FORMAT_VERSION",
    "LOCK",
    "MANIFEST",
    "POPE_FORMAT_VERSION",
    "RECORDS",
    "SUMMARY",
    "Condition",
    "EvalConfig",
    "EvalError",
    "EvalResult",
    "EvalSettings",
    "ItemRecord",
    "Pending",
    "PrefillStats",
    "RunInterrupted",
    "Shard",
    "bootstrap_ci",
    "bootstrap_indices",
    "confusion",
    "eval_config",
    "evaluate",
    "evaluate_config",
    "expected_items",
    "init_distributed",
    "label_margin",
    "load_item_records",
    "load_records",
    "mcnemar_exact",
    "merge_run",
    "parse_conditions",
    "parse_yes_no",
    "part_path",
    "percentile_interval",
    "pope_metrics",
    "predict_from_text",
    "rank_device",
    "read_manifest",
    "read_part",
    "record_key",
    "repair_part",
    "resolve_shard",
    "score_batch",
    "shard_from_env",
    "summarize",
    "summary_rows",
]
