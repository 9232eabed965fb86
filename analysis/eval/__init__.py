"""An evaluation run's parts: typed records, the run folder, sharding and per-batch scoring.

* :mod:`analysis.eval.records`: :class:`ItemRecord` (one item under one
  condition) and the on-disk format version;
* :mod:`analysis.eval.runfolder`: manifest, append-only parts, repair, merge;
* :mod:`analysis.eval.sharding`: the explicit :class:`Shard` a caller passes in;
* :mod:`analysis.eval.runner`: what a batch computes;
* :mod:`analysis.eval.conditions`: the condition grammar parsed into registered specs;
* :mod:`analysis.eval.run`: :func:`evaluate` (settings: one :class:`analysis.config.EvalConfig`);
* :mod:`analysis.eval.summary`: :func:`summarize`, from the records only.

:mod:`analysis.evaluation` re-exports all of them.
"""

from analysis.eval.errors import EvalError, RunInterrupted
from analysis.eval.records import FORMAT_VERSION, ItemRecord, record_key
from analysis.eval.runfolder import (
    EvalResult,
    load_item_records,
    load_records,
    merge_run,
    read_manifest,
)
from analysis.eval.sharding import Shard, init_distributed, resolve_shard, shard_from_env

__all__ = [
    "FORMAT_VERSION",
    "EvalError",
    "EvalResult",
    "ItemRecord",
    "RunInterrupted",
    "Shard",
    "init_distributed",
    "load_item_records",
    "load_records",
    "merge_run",
    "read_manifest",
    "record_key",
    "resolve_shard",
    "shard_from_env",
]
