"""Dataset evaluation: baseline, VAR settings and knock-outs in one reproducible run.

:func:`evaluate` runs every condition on the same items and scores each item
twice in one pass: by the log-probabilities of the candidate answers' first
tokens after the prompt (yes vs no) and by greedy generation (parsed with the
official POPE rule). The first-step logits of generation are exactly those of
a plain forward, so one generation call gives both scores.

In the baseline pass the same hooks also collect, per item and without
keeping any attention pattern, the visual sink count of every layer and the
head scores s, r and the image-centric fraction (see :mod:`analysis.heads`);
VAR passes record per item the rows changed and attention mass moved.

A run lives in a folder (:mod:`analysis.eval.runfolder`: manifest, append-only
parts of typed records, :mod:`analysis.eval.records`, repair and merge) and can
be sharded over processes with an explicit :class:`analysis.eval.sharding.Shard`
that the caller creates (``evaluate`` without one is a single process).

Benchmark items (:class:`analysis.scoring.readers.BenchItem`: MME, MMBench,
MMVP, CV-Bench, multiple choice, VQA, GQA) are scored by their benchmark's rule
instead (:mod:`analysis.scoring.runs`): each item's own candidates by
log-probability, the generation by the benchmark's task, and the summary's
``benchmark`` entry holds the metric with CIs and the paired differences. Such
runs write format 2 (records gain ``benchmark``, ``unit``, ``category``,
``answer``, ``candidates``, ``score_*``); runs without a benchmark keep format 1.

Metrics (pure functions in :mod:`analysis.stats`, vectorised over bootstrap
resamples): POPE accuracy,
precision, recall, F1 and yes-ratio with percentile bootstrap CIs, and against
the baseline the paired accuracy difference (bootstrap CI), the exact McNemar
test and the mean change of the label's log-probability and of its margin over
the other answers (the log-odds for yes/no, which does not saturate).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis.capture import progress
from analysis.checks import check_settings
from analysis.config import CI_LEVEL, MIN_IMAGE_ATTENTION, N_BOOT, RHO, SEED, TAU
from analysis.datasets import DatasetError, Item, fingerprint
from analysis.errors import UserInputError
from analysis.eval.errors import EvalError, RunInterrupted
from analysis.eval.records import FORMAT_VERSION, POPE_FORMAT_VERSION, ItemRecord, record_key
from analysis.eval.runfolder import (
    DECODED,
    LOCK,
    MANIFEST,
    RECORDS,
    SUMMARY,
    EvalResult,
    _count_records,
    _model_identity,
    _start_session,
    expected_items,
    load_item_records,
    load_records,
    merge_run,
    part_path,
    read_manifest,
    read_part,
    repair_part,
)
from analysis.eval.runner import (
    _resolve_dims,
    evaluate_config,
    parse_yes_no,
    predict_from_text,
    score_batch,
)
from analysis.eval.sharding import (
    Pending,
    Shard,
    _barrier,
    _my_batches,
    init_distributed,
    rank_device,
    resolve_shard,
    shard_from_env,
)
from analysis.fsio import check_output_dir, exclusive_lock
from analysis.generation import answer_token_ids
from analysis.interventions import registry
from analysis.interventions.base import BuildContext, ConditionError, ConditionSpec, ParseContext
from analysis.interventions.baseline import PrefillStats as PrefillStats  # its old home
from analysis.interventions.knockout import ABLATE_TARGETS as KNOCKOUT_TARGETS
from analysis.stats import (
    bootstrap_ci,
    bootstrap_indices,
    confusion,
    mcnemar_exact,
    percentile_interval,
    pope_metrics,
)
from analysis.stats import mean_stat as _mean_stat
from analysis.tokens import build_batch

if TYPE_CHECKING:
    from analysis.loading import LoadedModel
    from analysis.scoring.readers import BenchItem
    from analysis.tokens import ModelInputs

# Moved to analysis.eval and analysis.stats; re-exported so ``from analysis.evaluation
# import X`` keeps working.
__all__ = [
    "DECODED",
    "FORMAT_VERSION",
    "LOCK",
    "MANIFEST",
    "POPE_FORMAT_VERSION",
    "RECORDS",
    "SUMMARY",
    "Condition",
    "EvalError",
    "EvalResult",
    "ItemRecord",
    "Pending",
    "PrefillStats",
    "RunInterrupted",
    "Shard",
    "bootstrap_ci",
    "bootstrap_indices",
    "confusion",
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


# =============================================================================== conditions

# A condition is a spec of a registered kind (analysis.interventions.registry): it
# parses from the grammar, names itself, builds its hooks and supplies its record
# fields and summary entries, so nothing here depends on which kinds exist.
Condition = ConditionSpec
ABLATE_TARGETS = KNOCKOUT_TARGETS


def parse_conditions(
    spec: str | Sequence[str],
    *,
    tau: float = TAU,
    rho: float = RHO,
    preset: str = "paper",
) -> list[Condition]:
    """Conditions from specs like ``baseline,var,var:p=0.3,rho=0.8,ablate-sinks,ablate-random``.

    * ``baseline``: no intervention;
    * ``var[:p=..,rho=..,s=..,tau=..,layers=2-4,convention=official]``: VAR
      (defaults: p of the paper, the run's ``rho`` and ``tau``, layers 2 .. L-2);
      ``var:preset=official[,..]`` starts from the official preset instead
      (:meth:`analysis.config.VarConfig.preset`; the run's rho and tau do not apply);
      ``preset`` is the one a ``var`` without ``preset=`` starts from;
      ``rho_preset=general|hallucination|vision-centric`` sets rho to the paper's
      value for that task family (:data:`analysis.config.RHO_PRESETS`);
    * the paper's ablations (:mod:`analysis.ablations`): ``var:rows=all|random``
      (all heads; random heads, as many as VAR selects, seeded per item),
      ``var:to=visual`` (the budget to all visual tokens), also named
      ``var-all-heads``, ``var-random-heads``, ``var-to-visual``, and
      ``var:to=text`` (``var:target=text``, ``var-to-text``: the budget to the
      text tokens; :mod:`analysis.interventions.var_text`); options combine
      (``var-to-text:p=0.3``);
    * ``ablate-{sinks,random,nonsink,visual}[:mode=pre|post,layers=..]``:
      attention knock-out; ``ablate-random:draws=K`` expands into K seeded
      draws named ``ablate-random[k]``.

    Names are canonical: options equal to their default are dropped, the rest
    listed in a fixed order, so ``var:p=0.6`` is ``var``; a name parses back to
    an equal condition.
    """
    return registry.parse(spec, ParseContext(tau=tau, rho=rho, preset=preset))


# =============================================================================== evaluate


def evaluate(
    model: LoadedModel,
    items: Sequence[Item] | Sequence[BenchItem],
    *,
    out: str | os.PathLike[str],
    conditions: str | Sequence[str | Condition] = ("baseline",),
    answers: Sequence[str] = ("yes", "no"),
    max_new_tokens: int = 8,
    batch_size: int = 1,
    limit: int | None = None,
    dims: Sequence[int] | None = None,
    tau: float = TAU,
    rho: float = RHO,
    min_image_attention: float = MIN_IMAGE_ATTENTION,
    seed: int = SEED,
    collect_stats: bool = True,
    n_calibration: int = 8,
    n_boot: int = N_BOOT,
    level: float = CI_LEVEL,
    dataset: dict[str, Any] | None = None,
    show_progress: bool = True,
    force: bool = False,
    var_preset: str = "paper",
    shard: Shard | None = None,
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
        out: the run folder (created; an existing run with the same
            configuration is resumed, a different one refused).
        conditions: specs or :class:`Condition` objects (see :func:`parse_conditions`).
        answers: candidate answers; the first is the positive class ("yes").
        max_new_tokens: greedy generation length; 0 scores by log-probs only.
        batch_size: items per forward (left-padded); results do not depend on it.
        dims: sink dims; default: the registry, else discovered on the first
            ``n_calibration`` distinct images. Recorded in the manifest.
        tau, rho, min_image_attention: sink threshold and head selection (VAR defaults too).
        seed: seeds the random knock-out draws (per item) and the bootstrap.
        collect_stats: per-item sink counts and head scores in the baseline pass.
        n_boot, level: bootstrap resamples and CI level of the summary.
        dataset: description of the source (paths) stored in the manifest.
        force: take over the run folder's lock even when its owner seems alive
            (a stale lock, whose process is gone, is taken over anyway).
        var_preset: the VAR preset (``paper`` or ``official``) of ``var`` conditions
            that do not name one.
        shard: this process's place in a multi-process job, from
            :func:`analysis.eval.sharding.init_distributed` at the entry point;
            None (a single process) never touches torch's process group.
    """
    check_settings(
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        limit=limit,
        tau=tau,
        rho=rho,
        min_image_attention=min_image_attention,
        seed=seed,
        n_calibration=n_calibration,
        n_boot=n_boot,
        level=level,
    )
    if not items:
        raise DatasetError("No items to evaluate.")
    # Imported here: analysis.scoring's metrics use this module's bootstrap.
    from analysis.scoring import runs as bench_runs
    from analysis.scoring.readers import BenchItem

    bench = [b for b in items if isinstance(b, BenchItem)]
    if bench and len(bench) != len(items):
        raise DatasetError("Mix of benchmark items and plain items; pass one kind.")
    benchmark = bench_runs.check_items(bench) if bench else None
    plain: list[Item] = [b.item for b in bench] if bench else list(items)  # type: ignore[arg-type]
    if bench:
        answers = bench_runs.union(bench)
        if max_new_tokens <= 0 and not answers:
            raise EvalError(f"{benchmark} is scored on generations: --max-new-tokens must be > 0.")
    else:
        answers = [str(a).strip() for a in answers]
        bad = sorted({i.label for i in plain if i.label is not None and i.label not in answers})
        if bad:
            raise DatasetError(f"Labels {bad} are not among the answers {answers}.")
    answer_token_ids(model, answers)  # fails early when answers share a first token
    parsed = _conditions(conditions, tau=tau, rho=rho, preset=var_preset)
    for condition in parsed:
        try:
            condition.check_layers(model.n_layers)
        except ConditionError as err:  # a run-level error: the run cannot start
            raise EvalError(str(err)) from None
    bad_dims = [d for d in dims or () if not 0 <= int(d) < model.d_model]
    if bad_dims:
        raise EvalError(f"Sink dims {bad_dims} out of range for d_model {model.d_model}.")
    identity = {
        "format": FORMAT_VERSION if bench else POPE_FORMAT_VERSION,
        "model": _model_identity(model),
        "dtype": str(model.dtype).removeprefix("torch."),
        "conditions": [c.describe() for c in parsed],
        "answers": answers,
        "max_new_tokens": max_new_tokens,
        "tau": float(tau),
        "rho": float(rho),
        "min_image_attention": float(min_image_attention),
        "dims_option": None if dims is None else sorted(int(d) for d in dims),
        "seed": int(seed),
        "collect_stats": bool(collect_stats),
        "n_calibration": int(n_calibration),
        "dataset_fingerprint": bench_runs.bench_fingerprint(bench) if bench else fingerprint(plain),
        "n_dataset_items": len(items),
    }
    if benchmark is not None:
        identity["benchmark"] = benchmark
    identity = json.loads(json.dumps(identity))  # compare as it reads back from the manifest
    shard = resolve_shard(shard)
    run = check_output_dir(out, "run folder")
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
            answers=answers,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            limit=limit,
            dims=dims,
            tau=tau,
            rho=rho,
            min_image_attention=min_image_attention,
            seed=seed,
            collect_stats=collect_stats,
            n_calibration=n_calibration,
            n_boot=n_boot,
            level=level,
            dataset=dataset,
            show_progress=show_progress,
            bench={b.item.id: b for b in bench} or None,
        )


def _evaluate_locked(
    model: LoadedModel,
    items: Sequence[Item],
    *,
    run: Path,
    shard: Shard,
    parsed: list[Condition],
    identity: dict[str, Any],
    answers: list[str],
    max_new_tokens: int,
    batch_size: int,
    limit: int | None,
    dims: Sequence[int] | None,
    tau: float,
    rho: float,
    min_image_attention: float,
    seed: int,
    collect_stats: bool,
    n_calibration: int,
    n_boot: int,
    level: float,
    dataset: dict[str, Any] | None,
    show_progress: bool,
    bench: dict[str, BenchItem] | None = None,
) -> EvalResult:
    """The body of :func:`evaluate`, run while rank 0 holds the run folder's lock."""
    if shard.is_main:

        def find_dims() -> dict[str, Any] | None:
            needed = collect_stats or any(c.needs_dims for c in parsed)
            # The official VAR preset fixes the dims per model from the registry.
            registry_only = any(c.registry_dims for c in parsed)
            return (
                _resolve_dims(model, items, dims, n_calibration, registry_only) if needed else None
            )

        session = {"world_size": shard.world_size, "batch_size": batch_size, "limit": limit}
        _start_session(
            run,
            identity,
            model=model,
            find_dims=find_dims,
            dataset=dict(dataset or {}, n_items=len(items)),
            session=session,
            summary_settings={"n_boot": n_boot, "level": level},
        )
    _barrier(shard)
    manifest = read_manifest(run)
    if manifest["config"] != identity:  # another rank saw a different setup
        raise EvalError(f"Rank {shard.rank}: configuration differs from the run's manifest.")
    batches = _my_batches(run, shard, list(items[:limit]), parsed, batch_size)
    settings = _Settings(
        answers,
        max_new_tokens,
        None if manifest["dims"] is None else manifest["dims"]["dims"],
        tau,
        rho,
        min_image_attention,
        seed,
        collect_stats,
        bench,
    )
    desc = "eval" if shard.world_size == 1 else f"eval rank {shard.rank}"
    total = sum(len(b) for b in batches)
    bar = progress(None, total=total, desc=desc, enabled=show_progress)  # type: ignore[arg-type]
    written = 0
    try:
        with part_path(run, shard.rank).open("a", encoding="utf-8") as handle:
            for batch in batches:
                for records in _run_batch(model, batch, parsed, settings):
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


def _conditions(
    conditions: str | Sequence[str | Condition], *, tau: float, rho: float, preset: str = "paper"
) -> list[Condition]:
    specs = [conditions] if isinstance(conditions, str) else list(conditions)
    parsed = [
        c
        for spec in specs
        for c in (
            [spec]
            if isinstance(spec, Condition)
            else parse_conditions(spec, tau=tau, rho=rho, preset=preset)
        )
    ]
    names = [c.name for c in parsed]
    if not parsed or len(set(names)) != len(names):
        raise UserInputError(f"Conditions must be non-empty with unique names, got {names}.")
    return parsed


def _run_batch(
    model: LoadedModel, batch: list[Pending], parsed: list[Condition], settings: _Settings
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
        yield _run_condition(model, inputs, subset, condition, settings)


@dataclass(frozen=True)
class _Settings:
    answers: list[str]
    max_new_tokens: int
    dims: list[int] | None
    tau: float
    rho: float
    min_image_attention: float
    seed: int
    collect_stats: bool
    bench: dict[str, BenchItem] | None = None


def _run_condition(
    model: LoadedModel,
    inputs: ModelInputs,
    subset: list[tuple[int, Item]],
    condition: Condition,
    settings: _Settings,
) -> list[dict[str, Any]]:
    """One condition on one batch: per-item records."""
    context = BuildContext(
        dims=settings.dims,
        tau=settings.tau,
        rho=settings.rho,
        min_image_attention=settings.min_image_attention,
        seed=settings.seed,
        collect_stats=settings.collect_stats,
        sample_keys=[item.id for _, item in subset],
    )
    intervention = condition.build(model, inputs, context)
    fwd = intervention.fwd_hooks()
    from analysis.scoring import runs as bench_runs

    bench = None if settings.bench is None else [settings.bench[i.id] for _, i in subset]
    answers = settings.answers if bench is None else bench_runs.union(bench)
    logprobs, texts = score_batch(
        model, inputs, answers, fwd_hooks=fwd, max_new_tokens=settings.max_new_tokens
    )
    extras = condition.record_fields(intervention)
    if len(extras) != len(subset):
        raise RuntimeError(
            f"Condition {condition.name!r} gave {len(extras)} record rows for {len(subset)} items."
        )
    records = []
    for row, (index, item) in enumerate(subset):
        scores = logprobs[row]
        record: dict[str, Any]
        if bench is not None:
            record = {
                "id": item.id,
                "index": index,
                "condition": condition.name,
                "image": item.image_name,
                "text": item.text,
                "label": item.label,
                **bench_runs.record_fields(
                    bench[row],
                    {a: float(scores[k]) for k, a in enumerate(answers)},
                    None if texts is None else texts[row],
                ),
                **extras[row],
            }
            records.append(record)
            continue
        pred = answers[int(scores.argmax())]
        record = {
            "id": item.id,
            "index": index,
            "condition": condition.name,
            "image": item.image_name,
            "text": item.text,
            "label": item.label,
            "logprobs": {a: float(scores[k]) for k, a in enumerate(answers)},
            "pred_logprob": pred,
            "correct_logprob": None if item.label is None else pred == item.label,
        }
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


# =============================================================================== summary


def summarize(
    records: Sequence[dict[str, Any]],
    manifest: dict[str, Any],
    *,
    n_boot: int = N_BOOT,
    level: float = CI_LEVEL,
) -> dict[str, Any]:
    """The run's numbers, computed from per-item records only (deterministic given the seed)."""
    config = manifest["config"]
    answers, seed = config["answers"], int(config["seed"])
    names = [c["name"] for c in manifest["conditions"]]
    # Each condition's kind from its manifest entry (None for a layout no kind reads).
    kinds = {c["name"]: registry.spec_class(c) for c in manifest["conditions"]}
    by_condition: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in names}
    for record in records:
        by_condition.setdefault(record["condition"], {})[str(record["id"])] = record
    ids = {str(r["id"]) for r in records}
    baseline = by_condition.get("baseline") or None
    boot = {"n_boot": n_boot, "seed": seed, "level": level}
    expected = expected_items(manifest, len(ids))
    out: dict[str, Any] = {
        "n_items": len(ids),
        "n_items_expected": expected,
        "n_records": len(records),
        # Complete: every condition has every item the sessions asked for, not just
        # the items some condition reached (a run cut after 11 of 32 is partial).
        "complete": len(ids) >= expected and all(len(by_condition[n]) == len(ids) for n in names),
        "answers": answers,
        "bootstrap": boot,
        "dims": (manifest.get("dims") or {}).get("dims"),
        "conditions": {},
    }
    benchmark = config.get("benchmark")
    if benchmark is not None:
        from analysis.scoring import runs as bench_runs

        out["benchmark"] = bench_runs.benchmark_summary(
            by_condition, names, n_boot=n_boot, seed=seed, level=level
        )
    for name in names:
        rows = by_condition[name]
        entry: dict[str, Any] = {"n": len(rows)}
        # POPE's yes/no metrics (positive = the first answer) where they mean something.
        for scoring in ("logprob", "generate") if benchmark in (None, "pope") else ():
            scored = _scoring_entry(rows, baseline, name, scoring, answers, boot)
            if scored is not None:
                entry[scoring] = scored
        if baseline is not None and name != "baseline":
            entry.update(_label_deltas(rows, baseline, boot))
        kind = kinds.get(name)
        if kind is not None:
            entry.update(kind.summary_entries(list(rows.values())))
        out["conditions"][name] = entry
    # Run-level entries of a kind (the baseline's sink counts and head ranking).
    for name, kind in kinds.items():
        if kind is not None and by_condition.get(name):
            out.update(kind.run_summary(list(by_condition[name].values())))
    return out


def _scoring_entry(
    rows: dict[str, dict[str, Any]],
    baseline: dict[str, dict[str, Any]] | None,
    name: str,
    scoring: str,
    answers: Sequence[str],
    boot: dict[str, Any],
) -> dict[str, Any] | None:
    pred_key = f"pred_{scoring}"
    labelled = [r for r in rows.values() if r.get("label") is not None and pred_key in r]
    if not labelled:
        return None
    positive = answers[0]
    pred = np.array([r[pred_key] == positive for r in labelled])
    label = np.array([r["label"] == positive for r in labelled])
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
    pairs = [(baseline[str(r["id"])], r) for r in labelled if str(r["id"]) in baseline]
    pairs = [(b, r) for b, r in pairs if pred_key in b]
    if pairs:
        correct_key = f"correct_{scoring}"
        base = np.array([bool(b[correct_key]) for b, _ in pairs])
        other = np.array([bool(r[correct_key]) for _, r in pairs])
        delta = bootstrap_ci(
            _mean_stat,
            [other.astype(np.float64) - base.astype(np.float64)],
            n_boot=boot["n_boot"],
            seed=boot["seed"],
            level=boot["level"],
        )["mean"]
        entry["vs_baseline"] = {
            "n_pairs": len(pairs),
            "delta_accuracy": delta,
            "mcnemar": mcnemar_exact(base, other),
            "changed": int(sum(b[pred_key] != r[pred_key] for b, r in pairs)),
        }
    return entry


def label_margin(logprobs: dict[str, float], label: str) -> float:
    """log p(label) minus the best other answer's: the log-odds for two answers.

    Unlike log p(label) it does not saturate when the answer is near-certain.
    """
    return logprobs[label] - max(v for k, v in logprobs.items() if k != label)


def _label_deltas(
    rows: dict[str, dict[str, Any]], baseline: dict[str, dict[str, Any]], boot: dict[str, Any]
) -> dict[str, Any]:
    """Mean change of log p(label) and of the label's margin against the baseline, paired by
    item, with CIs."""
    pairs = [
        (r, baseline[key])
        for key, r in rows.items()
        if key in baseline and r.get("label") in r.get("logprobs", {})
    ]
    if not pairs:
        return {}
    logprob = np.array([r["logprobs"][r["label"]] - b["logprobs"][r["label"]] for r, b in pairs])
    margin = np.array(
        [
            label_margin(r["logprobs"], r["label"]) - label_margin(b["logprobs"], r["label"])
            for r, b in pairs
        ]
    )
    out = {}
    for key, values in (("delta_logprob_label", logprob), ("delta_margin_label", margin)):
        ci = bootstrap_ci(
            _mean_stat, [values], n_boot=boot["n_boot"], seed=boot["seed"], level=boot["level"]
        )["mean"]
        out[key] = ci | {"n": len(pairs)}
    return out


def summary_rows(summary: dict[str, Any], scoring: str = "logprob") -> list[dict[str, Any]]:
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
