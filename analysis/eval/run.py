"""Running an evaluation: :func:`evaluate` and its loop over batches and conditions.

:func:`evaluate` runs every condition on the same items and scores each item
twice in one pass (:mod:`analysis.eval.runner`): by the log-probabilities of the
candidate answers' first tokens after the prompt and by greedy generation. In
the baseline pass the same hooks collect per item the visual sink count of every
layer and the head scores; VAR passes record the rows changed and mass moved.

Its settings are one :class:`analysis.config.EvalConfig` (or the same settings
as keywords, which build one), so every default is the config's. Where the run
writes (a resumable run folder, :mod:`analysis.eval.runfolder`), how it is
sharded (an explicit :class:`analysis.eval.sharding.Shard`) and how it reports
are arguments of the call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

from analysis.attention_guard import require_attention_edits
from analysis.capture import progress
from analysis.config import EvalConfig
from analysis.datasets import DatasetError, Item, fingerprint
from analysis.errors import UserInputError
from analysis.eval.conditions import Condition, condition_labels, condition_specs
from analysis.eval.errors import EvalError, RunInterrupted
from analysis.eval.records import FORMAT_VERSION, POPE_FORMAT_VERSION
from analysis.eval.runfolder import (
    LOCK,
    SUMMARY,
    EvalResult,
    _count_records,
    _model_identity,
    _start_session,
    load_records,
    merge_run,
    part_path,
    read_manifest,
)
from analysis.eval.runner import _resolve_dims, predict_from_text, score_batch
from analysis.eval.sharding import Pending, Shard, _barrier, _my_batches, resolve_shard
from analysis.fsio import check_output_dir, exclusive_lock
from analysis.generation import answer_token_ids
from analysis.interventions.base import BuildContext, ConditionError
from analysis.tokens import build_batch

if TYPE_CHECKING:
    from analysis.loading import LoadedModel
    from analysis.scoring.readers import BenchItem
    from analysis.tokens import ModelInputs


class EvalSettings(TypedDict, total=False):
    """The keyword form of :class:`EvalConfig` (same names; ``conditions`` may also hold
    :class:`Condition` objects). Omitted keys take the config's defaults."""

    conditions: str | Sequence[str | Condition]
    answers: Sequence[str]
    max_new_tokens: int
    batch_size: int
    limit: int | None
    dims: Sequence[int] | None
    tau: float
    rho: float
    min_image_attention: float
    seed: int
    collect_stats: bool
    n_calibration: int
    n_boot: int
    level: float
    var_preset: str


def eval_config(config: EvalConfig | None = None, **settings: Any) -> EvalConfig:
    """The run's settings: ``config`` (default ``EvalConfig()``) with ``settings`` applied.

    Keywords that are no setting are a ``TypeError`` (as for any function); keywords
    next to a ``config`` must agree with it (a setting given twice, differently, is
    refused rather than one silently winning).
    """
    names = {f.name for f in dataclasses.fields(EvalConfig)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise TypeError(f"evaluate() got unexpected keyword argument(s) {unknown}.")
    base = config if config is not None else EvalConfig()
    if not isinstance(base, EvalConfig):
        raise UserInputError(f"config must be an EvalConfig, got {type(base).__name__}.")
    values = dict(settings)
    if not values:
        return base
    if "conditions" in values:
        # Spec objects stand for their canonical names under the run's parse context.
        values["conditions"] = condition_labels(
            values["conditions"],
            tau=values.get("tau", base.tau),
            rho=values.get("rho", base.rho),
            preset=values.get("var_preset", base.var_preset),
        )
    merged = dataclasses.replace(base, **values)
    if config is not None:
        clash = sorted(k for k in values if getattr(merged, k) != getattr(config, k))
        if clash:
            raise UserInputError(
                f"evaluate(): {', '.join(clash)} given both in config and as keywords, differently."
            )
    return merged


def evaluate(
    model: LoadedModel,
    items: Sequence[Item] | Sequence[BenchItem],
    config: EvalConfig | None = None,
    *,
    out: str | os.PathLike[str],
    dataset: dict[str, Any] | None = None,
    show_progress: bool = True,
    force: bool = False,
    shard: Shard | None = None,
    **settings: Unpack[EvalSettings],
) -> EvalResult:
    """Evaluate every condition on ``items`` (the first ``limit``), resumably, into ``out``.

    Args:
        model: the loaded model (one per process under torchrun).
        items: the whole dataset (its fingerprint guards resumes; ``limit``
            selects the first items to evaluate now, so a run can be extended).
            :class:`BenchItem`s (one benchmark) are scored by their benchmark's
            rule: each item's own candidates (option letters, or yes / no) by
            log-probability, generations by the benchmark's task; ``answers``
            is then ignored (see :mod:`analysis.scoring.runs`).
        config: the run's settings (:class:`analysis.config.EvalConfig`, whose
            fields document them: conditions, answers, max_new_tokens,
            batch_size, limit, dims, tau, rho, min_image_attention, seed,
            collect_stats, n_calibration, n_boot, level, var_preset).
        out: the run folder (created; an existing run with the same
            configuration is resumed, a different one refused).
        dataset: description of the source (paths) stored in the manifest.
        show_progress: a progress bar.
        force: take over the run folder's lock even when its owner seems alive
            (a stale lock, whose process is gone, is taken over anyway).
        shard: this process's place in a multi-process job, from
            :func:`analysis.eval.sharding.init_distributed` at the entry point;
            None (a single process) never touches torch's process group.
        settings: the config's fields as keywords (see :class:`EvalSettings`);
            they build the config, or must agree with the one given.
    """
    config = eval_config(config, **settings)
    if not items:
        raise DatasetError("No items to evaluate.")
    # Imported here: analysis.scoring's metrics use the shared bootstrap of this package.
    from analysis.scoring import runs as bench_runs
    from analysis.scoring.readers import BenchItem

    bench = [b for b in items if isinstance(b, BenchItem)]
    if bench and len(bench) != len(items):
        raise DatasetError("Mix of benchmark items and plain items; pass one kind.")
    benchmark = bench_runs.check_items(bench) if bench else None
    plain: list[Item] = [b.item for b in bench] if bench else list(items)  # type: ignore[arg-type]
    if bench:
        answers = bench_runs.union(bench)
        if config.max_new_tokens <= 0 and not answers:
            raise EvalError(f"{benchmark} is scored on generations: --max-new-tokens must be > 0.")
    else:
        answers = list(config.answers)
        bad = sorted({i.label for i in plain if i.label is not None and i.label not in answers})
        if bad:
            raise DatasetError(f"Labels {bad} are not among the answers {answers}.")
    answer_token_ids(model, answers)  # fails early when answers share a first token
    parsed = condition_specs(
        config.conditions, tau=config.tau, rho=config.rho, preset=config.var_preset
    )
    for condition in parsed:
        try:
            condition.check_layers(model.n_layers)
        except ConditionError as err:  # a run-level error: the run cannot start
            raise EvalError(str(err)) from None
        if condition.attention_edit is not None:  # before the baseline runs, not at its batch
            require_attention_edits(
                model, f"Condition {condition.name!r}", scores=condition.attention_edit == "scores"
            )
    bad_dims = [d for d in config.dims or () if not d < model.d_model]
    if bad_dims:
        raise EvalError(f"Sink dims {bad_dims} out of range for d_model {model.d_model}.")
    identity = _identity(model, config, parsed, answers, plain, bench, benchmark, len(items))
    shard = resolve_shard(shard)
    run = check_output_dir(out, "run folder")
    state = _RunState(config, answers, bench={b.item.id: b for b in bench} or None)
    # One writer per run folder: rank 0 holds the lock for the whole job (the other
    # ranks of a torchrun job write their own parts under it).
    with exclusive_lock(run / LOCK, force=force) if shard.is_main else contextlib.nullcontext():
        return _evaluate_locked(
            model,
            plain,
            run=run,
            shard=shard,
            parsed=parsed,
            identity=identity,
            state=state,
            dataset=dataset,
            show_progress=show_progress,
        )


def _identity(
    model: LoadedModel,
    config: EvalConfig,
    parsed: list[Condition],
    answers: list[str],
    plain: list[Item],
    bench: list[BenchItem],
    benchmark: str | None,
    n_items: int,
) -> dict[str, Any]:
    """The manifest's ``config``: what a resume must match (keys in the order runs wrote)."""
    from analysis.scoring import runs as bench_runs

    identity: dict[str, Any] = {
        "format": FORMAT_VERSION if bench else POPE_FORMAT_VERSION,
        "model": _model_identity(model),
        "dtype": str(model.dtype).removeprefix("torch."),
        "conditions": [c.describe() for c in parsed],
        "answers": answers,
        "max_new_tokens": config.max_new_tokens,
        "tau": float(config.tau),
        "rho": float(config.rho),
        "min_image_attention": float(config.min_image_attention),
        "dims_option": None if config.dims is None else sorted(config.dims),
        "seed": int(config.seed),
        "collect_stats": bool(config.collect_stats),
        "n_calibration": int(config.n_calibration),
        "dataset_fingerprint": bench_runs.bench_fingerprint(bench) if bench else fingerprint(plain),
        "n_dataset_items": n_items,
    }
    if benchmark is not None:
        identity["benchmark"] = benchmark
    return json.loads(json.dumps(identity))  # compare as it reads back from the manifest


@dataclass(frozen=True)
class _RunState:
    """The config and what a run derives from it and its items."""

    config: EvalConfig
    # The candidates scored: the config's answers, or a benchmark's union of candidates.
    answers: list[str]
    # Sink dims of the run (from the manifest, decided once).
    dims: list[int] | None = None
    bench: dict[str, BenchItem] | None = None


def _evaluate_locked(
    model: LoadedModel,
    items: Sequence[Item],
    *,
    run: Path,
    shard: Shard,
    parsed: list[Condition],
    identity: dict[str, Any],
    state: _RunState,
    dataset: dict[str, Any] | None,
    show_progress: bool,
) -> EvalResult:
    """The body of :func:`evaluate`, run while rank 0 holds the run folder's lock."""
    config = state.config
    if shard.is_main:

        def find_dims() -> dict[str, Any] | None:
            needed = config.collect_stats or any(c.needs_dims for c in parsed)
            # The official VAR preset fixes the dims per model from the registry.
            registry_only = any(c.registry_dims for c in parsed)
            if not needed:
                return None
            return _resolve_dims(model, items, config.dims, config.n_calibration, registry_only)

        session = {
            "world_size": shard.world_size,
            "batch_size": config.batch_size,
            "limit": config.limit,
        }
        _start_session(
            run,
            identity,
            model=model,
            find_dims=find_dims,
            dataset=dict(dataset or {}, n_items=len(items)),
            session=session,
            summary_settings={"n_boot": config.n_boot, "level": config.level},
        )
    _barrier(shard)
    manifest = read_manifest(run)
    if manifest["config"] != identity:  # another rank saw a different setup
        raise EvalError(f"Rank {shard.rank}: configuration differs from the run's manifest.")
    batches = _my_batches(run, shard, list(items[: config.limit]), parsed, config.batch_size)
    dims = None if manifest["dims"] is None else manifest["dims"]["dims"]
    state = dataclasses.replace(state, dims=dims)
    desc = "eval" if shard.world_size == 1 else f"eval rank {shard.rank}"
    total = sum(len(b) for b in batches)
    bar = progress(None, total=total, desc=desc, enabled=show_progress)  # type: ignore[arg-type]
    written = 0
    try:
        with part_path(run, shard.rank).open("a", encoding="utf-8") as handle:
            for batch in batches:
                for records in _run_batch(model, batch, parsed, state):
                    # One write per condition and batch, flushed to disk: a kill loses at
                    # most the records being written, and cuts at most one line short.
                    handle.write("".join(json.dumps(r) + "\n" for r in records))
                    handle.flush()
                    os.fsync(handle.fileno())
                    written += len(records)
                bar.update(len(batch))
    except KeyboardInterrupt as err:  # SIGINT, or SIGTERM turned into one by the CLI
        bar.close()
        raise RunInterrupted(run, written, _count_records(run, written)) from err
    bar.close()
    _barrier(shard)
    if shard.is_main:
        merge_run(run)
    _barrier(shard)
    return EvalResult(
        run_dir=run,
        records=load_records(run),
        summary_data=json.loads((run / SUMMARY).read_text()),
        config=read_manifest(run),
    )


def _run_batch(
    model: LoadedModel, batch: list[Pending], parsed: list[Condition], state: _RunState
) -> Iterable[list[dict[str, Any]]]:
    """Records of each pending condition of a batch, condition by condition."""
    whole: ModelInputs | None = None
    for condition in parsed:
        subset = [(index, item) for index, item, pending in batch if condition in pending]
        if not subset:
            continue
        if len(subset) < len(batch):  # a resumed batch where some items are done
            inputs = build_batch(model, [(item.image, item.text) for _, item in subset])
        else:
            whole = whole or build_batch(model, [(i.image, i.text) for _, i, _ in batch])
            inputs = whole
        yield _run_condition(model, inputs, subset, condition, state)


def _run_condition(
    model: LoadedModel,
    inputs: ModelInputs,
    subset: list[tuple[int, Item]],
    condition: Condition,
    state: _RunState,
) -> list[dict[str, Any]]:
    """One condition on one batch: per-item records."""
    config = state.config
    context = BuildContext(
        dims=state.dims,
        tau=config.tau,
        rho=config.rho,
        min_image_attention=config.min_image_attention,
        seed=config.seed,
        collect_stats=config.collect_stats,
        sample_keys=[item.id for _, item in subset],
    )
    intervention = condition.build(model, inputs, context)
    fwd = intervention.fwd_hooks()
    from analysis.scoring import runs as bench_runs

    bench = None if state.bench is None else [state.bench[i.id] for _, i in subset]
    answers = state.answers if bench is None else bench_runs.union(bench)
    logprobs, texts = score_batch(
        model, inputs, answers, fwd_hooks=fwd, max_new_tokens=config.max_new_tokens
    )
    extras = condition.record_fields(intervention)
    if len(extras) != len(subset):
        raise RuntimeError(
            f"Condition {condition.name!r} gave {len(extras)} record rows for {len(subset)} items."
        )
    records = []
    for row, (index, item) in enumerate(subset):
        scores = logprobs[row]
        record: dict[str, Any] = {
            "id": item.id,
            "index": index,
            "condition": condition.name,
            "image": item.image_name,
            "text": item.text,
            "label": item.label,
        }
        if bench is not None:
            record.update(
                bench_runs.record_fields(
                    bench[row],
                    {a: float(scores[k]) for k, a in enumerate(answers)},
                    None if texts is None else texts[row],
                )
            )
            record.update(extras[row])
            records.append(record)
            continue
        pred = answers[int(scores.argmax())]
        record.update(
            logprobs={a: float(scores[k]) for k, a in enumerate(answers)},
            pred_logprob=pred,
            correct_logprob=None if item.label is None else pred == item.label,
        )
        if texts is not None:
            guess = predict_from_text(texts[row], answers)
            record.update(
                generated=texts[row],
                pred_generate=guess,
                correct_generate=None if item.label is None else guess == item.label,
            )
        record.update(extras[row])
        records.append(record)
    return records


#: :func:`evaluate` with its settings as one :class:`EvalConfig` (its earlier name).
evaluate_config = evaluate

__all__ = ["EvalSettings", "eval_config", "evaluate", "evaluate_config"]
