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
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from analysis.ablation import TARGETS, KnockOut, Mode
from analysis.ablations import (
    ABLATION_ALIASES,
    DEFAULT_ROWS,
    DEFAULT_TARGET,
    ROW_RULES,
    Variant,
    describe_variant,
    var_intervention,
)
from analysis.ablations import TARGETS as VAR_TARGETS
from analysis.capture import HookFn, progress
from analysis.checks import check_settings
from analysis.datasets import DatasetError, Item, fingerprint
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
    PrefillStats,
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
from analysis.heads import RHO_PRESETS
from analysis.results import to_jsonable
from analysis.sinks import DEFAULT_TAU
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
from analysis.var import PRESETS, VarConfig, VarIntervention

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

ConditionKind = Literal["baseline", "var", "ablate"]
# Knock-out targets that make sense over a dataset (``positions`` is per prompt).
ABLATE_TARGETS = tuple(t for t in TARGETS if t != "positions")
_VAR_KEYS = {"p": "p", "rho": "rho", "s": "min_image_attention", "tau": "tau"}


@dataclass(frozen=True)
class Condition:
    """One evaluated condition; ``name`` is canonical and keys the records."""

    name: str
    kind: ConditionKind
    var: VarConfig | None = None
    target: str | None = None
    mode: Mode = "pre"
    layers: tuple[int, ...] | None = None
    draw: int = 0
    # A VAR ablation (rows / target other than VAR's); None for VAR itself.
    variant: Variant | None = None

    @property
    def needs_dims(self) -> bool:
        return self.kind == "var" or (
            self.kind == "ablate" and self.target in ("sinks", "random", "nonsink")
        )

    def check_layers(self, n_layers: int) -> None:
        """Refuse layers the model does not have before any work is done."""
        layers = self.var.layers if self.var is not None else self.layers
        bad = [x for x in layers or () if not 0 <= x < n_layers]
        if bad:
            raise EvalError(
                f"Condition {self.name!r}: layers {bad} out of range (the model has "
                f"{n_layers} layers, 0..{n_layers - 1})."
            )

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.var is not None:
            out["var"] = self.var.to_dict()
        if describe_variant(self.variant) is not None:
            out["variant"] = describe_variant(self.variant)
        if self.kind == "ablate":
            out.update(target=self.target, mode=self.mode, layers=self.layers, draw=self.draw)
        return to_jsonable(out)


def _split_specs(spec: str | Sequence[str]) -> list[str]:
    """``"baseline,var:p=0.6,rho=0.8;ablate-sinks"`` -> one string per condition.

    A comma-separated piece with ``=`` and no ``:`` continues the previous
    condition's options, so option lists need no quoting.
    """
    pieces = [spec] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for piece in pieces:
        for token in (t.strip() for t in piece.replace(";", ",").split(",")):
            if not token:
                continue
            if "=" in token and ":" not in token:
                if not out:
                    raise ValueError(f"Condition option {token!r} has no condition before it.")
                out[-1] += "," + token
            else:
                out.append(token)
    return out


def _parse_layers(text: str) -> tuple[int, ...]:
    """``"2-4"`` -> (2, 3, 4); ``"2+5"`` -> (2, 5)."""
    try:
        if "-" in text:
            start, stop = (int(x) for x in text.split("-", 1))
            return tuple(range(start, stop + 1))
        return tuple(sorted({int(x) for x in text.split("+")}))
    except ValueError:
        raise ValueError(f"layers={text!r}: use a range like 2-4 or a list like 2+3+5.") from None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "+".join(str(v) for v in value)
    return str(value)


def parse_conditions(
    spec: str | Sequence[str],
    *,
    tau: float = DEFAULT_TAU,
    rho: float = 0.5,
    preset: str = "paper",
) -> list[Condition]:
    """Conditions from specs like ``baseline,var,var:p=0.3,rho=0.8,ablate-sinks,ablate-random``.

    * ``baseline``: no intervention;
    * ``var[:p=..,rho=..,s=..,tau=..,layers=2-4,convention=official]``: VAR
      (defaults: p 0.6, the run's ``rho`` and ``tau``, layers 2 .. L-2);
      ``var:preset=official[,..]`` starts from the official preset instead
      (:meth:`analysis.var.VarConfig.preset`; the run's rho and tau do not apply);
      ``preset`` is the one a ``var`` without ``preset=`` starts from;
      ``rho_preset=general|hallucination|vision-centric`` sets rho to the paper's
      value for that task family (0.8, 0.5, 0.9);
    * the paper's ablations (:mod:`analysis.ablations`): ``var:rows=all|random``
      (all heads; random heads, as many as VAR selects, seeded per item) and
      ``var:to=text|visual`` (the budget to text tokens; to all visual tokens),
      also named ``var-all-heads``, ``var-random-heads``, ``var-to-text``,
      ``var-to-visual`` (options combine: ``var-to-text:p=0.3``);
    * ``ablate-{sinks,random,nonsink,visual}[:mode=pre|post,layers=..]``:
      attention knock-out; ``ablate-random:draws=K`` expands into K seeded
      draws named ``ablate-random[k]``.

    Names are canonical: options equal to their default are dropped, the rest
    listed in a fixed order, so ``var:p=0.6`` is ``var``.
    """
    conditions: list[Condition] = []
    for token in _split_specs(spec):
        head, _, opts = token.partition(":")
        head = head.strip().lower()
        options: dict[str, str] = dict(ABLATION_ALIASES.get(head, {}))
        head = "var" if head in ABLATION_ALIASES else head
        for pair in filter(None, (o.strip() for o in opts.split(","))):
            key, sep, value = pair.partition("=")
            if not sep or not value.strip():
                raise ValueError(f"Condition {token!r}: option {pair!r} must be key=value.")
            options[key.strip().lower()] = value.strip()
        conditions += _build_condition(head, options, token, tau=tau, rho=rho, preset=preset)
    if not conditions:
        raise ValueError("No conditions given; e.g. --conditions baseline,var,ablate-sinks.")
    names = [c.name for c in conditions]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"Conditions listed twice: {', '.join(duplicates)}.")
    return conditions


def _build_condition(
    head: str, options: dict[str, str], token: str, *, tau: float, rho: float, preset: str
) -> list[Condition]:
    def refuse(allowed: Iterable[str]) -> None:
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(
                f"Condition {token!r}: unknown option(s) {unknown}; allowed: {sorted(allowed)}."
            )

    if head == "baseline":
        refuse(())
        return [Condition("baseline", "baseline")]
    if head == "var":
        refuse([*_VAR_KEYS, "layers", "convention", "preset", "rows", "to", "rho_preset"])
        preset = options.get("preset", preset)
        if preset not in PRESETS:
            raise ValueError(f"Condition {token!r}: preset is {' or '.join(PRESETS)}.")
        # The paper preset takes the run's rho and tau; the official one is fixed.
        defaults = VarConfig(rho=rho, tau=tau) if preset == "paper" else VarConfig.preset(preset)
        values: dict[str, Any] = {}
        if "rho_preset" in options:
            if "rho" in options:
                raise ValueError(f"Condition {token!r}: give rho or rho_preset, not both.")
            if options["rho_preset"] not in RHO_PRESETS:
                raise ValueError(
                    f"Condition {token!r}: rho_preset is one of {', '.join(RHO_PRESETS)}."
                )
            options["rho"] = str(RHO_PRESETS[options.pop("rho_preset")])
        rows = options.get("rows", DEFAULT_ROWS)
        target = options.get("to", DEFAULT_TARGET)
        if rows not in ROW_RULES or target not in VAR_TARGETS:
            raise ValueError(
                f"Condition {token!r}: rows is one of {', '.join(ROW_RULES)}, "
                f"to is one of {', '.join(VAR_TARGETS)}."
            )
        variant = Variant(rows=rows, to=target)
        try:
            for key, attr in _VAR_KEYS.items():
                if key in options:
                    values[attr] = float(options[key])
        except ValueError:
            raise ValueError(f"Condition {token!r}: option values must be numbers.") from None
        if "layers" in options:
            values["layers"] = _parse_layers(options["layers"])
        if "convention" in options:
            values["convention"] = options["convention"]
            if values["convention"] not in ("paper", "official"):
                raise ValueError(f"Condition {token!r}: convention is paper or official.")
        config = VarConfig(**{**defaults.to_dict(), **values})
        shown = [
            f"{key}={_fmt(getattr(config, attr))}"
            for key, attr in [
                *_VAR_KEYS.items(),
                ("layers", "layers"),
                ("convention", "convention"),
            ]
            if getattr(config, attr) != getattr(defaults, attr)
        ]
        shown = ([f"preset={preset}"] if preset != "paper" else []) + shown
        shown += [f"rows={rows}"] if rows != DEFAULT_ROWS else []
        shown += [f"to={target}"] if target != DEFAULT_TARGET else []
        name = "var" + (":" + ",".join(shown) if shown else "")
        return [Condition(name, "var", var=config, variant=None if variant.is_var else variant)]
    if head.startswith("ablate-"):
        target = head.removeprefix("ablate-")
        if target not in ABLATE_TARGETS:
            raise ValueError(
                f"Condition {token!r}: knock-out target must be one of "
                f"{', '.join('ablate-' + t for t in ABLATE_TARGETS)}."
            )
        refuse(["mode", "layers", *(["draws"] if target == "random" else [])])
        mode = options.get("mode", "pre")
        if mode not in ("pre", "post"):
            raise ValueError(f"Condition {token!r}: mode is pre or post.")
        layers = _parse_layers(options["layers"]) if "layers" in options else None
        try:
            draws = int(options.get("draws", "1"))
        except ValueError:
            raise ValueError(f"Condition {token!r}: draws must be an integer.") from None
        if draws < 1:
            raise ValueError(f"Condition {token!r}: draws must be >= 1.")
        shown = [f"mode={mode}"] if mode != "pre" else []
        shown += [f"layers={_fmt(layers)}"] if layers is not None else []
        base = head + (":" + ",".join(shown) if shown else "")
        return [
            Condition(
                base if draws == 1 else f"{base}[{draw}]",
                "ablate",
                target=target,
                mode=mode,  # type: ignore[arg-type]
                layers=layers,
                draw=draw,
            )
            for draw in range(draws)
        ]
    raise ValueError(
        f"Unknown condition {token!r}; use baseline, var[:p=..,rho=..,rows=..,to=..], "
        f"{', '.join(ABLATION_ALIASES)}, "
        f"ablate-{{{','.join(ABLATE_TARGETS)}}}[:mode=..,layers=..,draws=..]."
    )


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
    tau: float = DEFAULT_TAU,
    rho: float = 0.5,
    min_image_attention: float = 0.2,
    seed: int = 0,
    collect_stats: bool = True,
    n_calibration: int = 8,
    n_boot: int = 1000,
    level: float = 0.95,
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
        condition.check_layers(model.n_layers)
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
            registry_only = any(c.var is not None and c.var.registry_dims for c in parsed)
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
        raise ValueError(f"Conditions must be non-empty with unique names, got {names}.")
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
    fwd: list[tuple[str, HookFn]] = []
    stats: PrefillStats | None = None
    var: VarIntervention | None = None
    knock: KnockOut | None = None
    if condition.kind == "baseline" and settings.collect_stats:
        assert settings.dims is not None
        stats = PrefillStats(
            model,
            inputs,
            dims=settings.dims,
            tau=settings.tau,
            rho=settings.rho,
            min_image_attention=settings.min_image_attention,
        )
        fwd = stats.fwd_hooks()
    elif condition.kind == "var":
        var = var_intervention(
            model,
            inputs,
            dims=settings.dims,
            config=condition.var,
            variant=condition.variant,
            seed=settings.seed,
            sample_keys=[item.id for _, item in subset],
        )
        fwd = var.fwd_hooks()
    elif condition.kind == "ablate":
        assert condition.target is not None
        knock = KnockOut(
            model,
            inputs,
            target=condition.target,  # type: ignore[arg-type]
            dims=settings.dims if condition.needs_dims else None,
            tau=settings.tau,
            mode=condition.mode,
            layers=condition.layers,
            seed=settings.seed,
            draw=condition.draw,
            sample_keys=[item.id for _, item in subset],
        )
        fwd = knock.fwd_hooks()
    from analysis.scoring import runs as bench_runs

    bench = None if settings.bench is None else [settings.bench[i.id] for _, i in subset]
    answers = settings.answers if bench is None else bench_runs.union(bench)
    logprobs, texts = score_batch(
        model, inputs, answers, fwd_hooks=fwd, max_new_tokens=settings.max_new_tokens
    )
    extras: list[dict[str, Any]] = [{} for _ in subset]
    if stats is not None:
        extras = stats.per_sample()
    if var is not None:
        extras = [{"var": v} for v in var.per_sample()]
    if knock is not None:
        counts = knock.blocked_counts()
        extras = [
            {"blocked": [counts[layer][b] for layer in sorted(counts)]} for b in range(len(subset))
        ]
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
    n_boot: int = 1000,
    level: float = 0.95,
) -> dict[str, Any]:
    """The run's numbers, computed from per-item records only (deterministic given the seed)."""
    config = manifest["config"]
    answers, seed = config["answers"], int(config["seed"])
    names = [c["name"] for c in manifest["conditions"]]
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
        var_rows = [r["var"] for r in rows.values() if "var" in r]
        if var_rows:
            entry["var"] = {
                "rows_changed_mean": float(np.mean([_var_rows(v) for v in var_rows])),
                "mass_moved_mean": float(
                    np.mean([v["prefill_mass_moved"] + v["decode_mass_moved"] for v in var_rows])
                ),
                "noop_items": sum(_var_rows(v) == 0 for v in var_rows),
            }
        blocked = [r["blocked"] for r in rows.values() if "blocked" in r]
        if blocked:
            entry["blocked_per_layer_mean"] = np.mean(blocked, axis=0).tolist()
        out["conditions"][name] = entry
    if baseline is not None:
        out.update(_prefill_summary(list(baseline.values())))
    return out


def _var_rows(v: dict[str, Any]) -> int:
    return int(v["prefill_rows_changed"] + v["decode_rows_changed"])


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


def _prefill_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Sink counts per image and mean head scores, from the baseline records."""
    out: dict[str, Any] = {}
    per_image: dict[str, list[int]] = {}
    for r in rows:
        if "sinks" in r:
            # Visual tokens precede the question, so their sinks do not depend on it.
            per_image.setdefault(r["image"], r["sinks"])
    if per_image:
        counts = np.array(list(per_image.values()), dtype=np.float64)
        out["sinks"] = {
            "per_layer_mean": counts.mean(0).tolist(),
            "per_image": per_image,
        }
    heads = [r["heads"] for r in rows if "heads" in r]
    if heads:
        means = {k: np.mean([h[k] for h in heads], axis=0) for k in ("s", "r", "selected")}
        n_layers, n_heads = means["s"].shape
        ranked = sorted(
            (
                {
                    "layer": layer,
                    "head": head,
                    **{k: float(v[layer, head]) for k, v in means.items()},
                }
                for layer in range(n_layers)
                for head in range(n_heads)
            ),
            key=lambda row: (-row["selected"], -row["r"], row["layer"], row["head"]),
        )
        out["heads"] = {
            "n_items": len(heads),
            "image_centric": [
                [row["layer"], row["head"]] for row in ranked if row["selected"] >= 0.5
            ],
            "top": ranked[:10],
            "mean": {k: v.tolist() for k, v in means.items()},
        }
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
