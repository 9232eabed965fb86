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

A run lives in a folder:

* ``manifest.json``: the configuration (checked on restart: a different
  configuration is refused instead of mixing results), the sink dims used,
  model, package versions, git commit, one entry per session;
* ``part-{rank}.jsonl``: append-only per-item records keyed by (item id,
  condition); a restarted run skips done keys, and a line cut short by a kill
  is dropped and overwritten;
* ``records.jsonl`` and ``summary.json``: written by :func:`merge_run`
  (automatic at the end) from the parts alone, deduplicated and sorted by item.

Launched with ``torchrun --nproc-per-node N`` (or ``accelerate launch``) each
process takes every N-th batch of the pending items and writes its own part;
rank 0 merges after a barrier. Batches are formed before sharding, so a fresh
sharded run computes bit for bit what a single process computes.

Benchmark items (:class:`analysis.scoring.readers.BenchItem`: MME, MMBench,
MMVP, CV-Bench, multiple choice, VQA, GQA) are scored by their benchmark's rule
instead (:mod:`analysis.scoring.runs`): each item's own candidates by
log-probability, the generation by the benchmark's task, and the summary's
``benchmark`` entry holds the metric with CIs and the paired differences. Such
runs write format 2 (records gain ``benchmark``, ``unit``, ``category``,
``answer``, ``candidates``, ``score_*``); runs without a benchmark keep format 1.

Metrics (pure functions, vectorised over bootstrap resamples): POPE accuracy,
precision, recall, F1 and yes-ratio with percentile bootstrap CIs, and against
the baseline the paired accuracy difference (bootstrap CI), the exact McNemar
test and the mean change of the label's log-probability and of its margin over
the other answers (the log-odds for yes/no, which does not saturate).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int

from analysis.capture import HookFn, batched, progress
from analysis.checks import check_settings
from analysis.config import CI_LEVEL, MIN_IMAGE_ATTENTION, N_BOOT, RHO, SEED, TAU
from analysis.datasets import DatasetError, Item, fingerprint
from analysis.fsio import check_output_dir, exclusive_lock, write_atomic
from analysis.generation import answer_logprobs, answer_token_ids, generate, next_token_logprobs
from analysis.interventions import registry
from analysis.interventions.base import BuildContext, ConditionError, ConditionSpec, ParseContext
from analysis.interventions.baseline import PrefillStats as PrefillStats  # its old home
from analysis.interventions.knockout import ABLATE_TARGETS as KNOCKOUT_TARGETS
from analysis.results import ResultMixin, provenance
from analysis.tokens import build_batch

if TYPE_CHECKING:
    from analysis.loading import LoadedModel
    from analysis.scoring.readers import BenchItem
    from analysis.tokens import ModelInputs

MANIFEST = "manifest.json"
RECORDS = "records.jsonl"
SUMMARY = "summary.json"
LOCK = "vsink.lock"
# Base64 images of a benchmark file are decoded into this folder of the run.
DECODED = "images"
# Format 2 adds the benchmark fields of records (see analysis.scoring.runs); runs
# without a benchmark (POPE question files) write the unchanged format 1.
FORMAT_VERSION = 2
POPE_FORMAT_VERSION = 1


class EvalError(ValueError):
    """A run folder or its configuration is unusable; the message says why and what to do."""


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by SIGINT/SIGTERM; what it wrote is kept and the same call resumes."""

    def __init__(self, run: Path, written: int, present: int) -> None:
        super().__init__(f"{run}: interrupted after {written} records")
        self.run, self.written, self.present = run, written, present


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


# =============================================================================== metrics


def parse_yes_no(text: str) -> str:
    """The official POPE rule: first sentence, commas dropped, "no"/"No"/"not" as a word -> no.

    Kept verbatim (case-sensitive "No"/"no"/"not") so numbers are comparable
    with the POPE and LLaVA evaluation scripts.
    """
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def predict_from_text(text: str, answers: Sequence[str]) -> str | None:
    """The answer a generated text gives: POPE's rule for yes/no, else the first prefix match."""
    if [a.lower() for a in answers] == ["yes", "no"]:
        return parse_yes_no(text)
    lowered = text.strip().lower()
    return next((a for a in answers if lowered.startswith(a.lower())), None)


def confusion(
    pred: Bool[np.ndarray, "*boot item"], label: Bool[np.ndarray, "*boot item"]
) -> dict[str, Int[np.ndarray, "*boot"]]:
    """True/false positives/negatives along the item axis (positive = first answer, "yes")."""
    return {
        "tp": (pred & label).sum(-1),
        "fp": (pred & ~label).sum(-1),
        "tn": (~pred & ~label).sum(-1),
        "fn": (~pred & label).sum(-1),
    }


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # sklearn's zero_division=0: no predicted (or true) positives -> 0, not NaN.
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def pope_metrics(
    pred: Bool[np.ndarray, "*boot item"], label: Bool[np.ndarray, "*boot item"]
) -> dict[str, Float[np.ndarray, "*boot"]]:
    """POPE accuracy, precision, recall, F1 and yes-ratio, over the last axis."""
    c = confusion(pred, label)
    n = pred.shape[-1]
    precision = _ratio(c["tp"], c["tp"] + c["fp"])
    recall = _ratio(c["tp"], c["tp"] + c["fn"])
    return {
        "accuracy": _ratio(c["tp"] + c["tn"], np.full_like(c["tp"], n)),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "yes_ratio": _ratio(c["tp"] + c["fp"], np.full_like(c["tp"], n)),
    }


def bootstrap_indices(n: int, n_boot: int, seed: int) -> Int[np.ndarray, "boot item"]:
    """Resampling indices; the same (n, n_boot, seed) gives the same draws, so paired
    statistics of different conditions resample the same items."""
    if n < 1 or n_boot < 1:
        raise ValueError(f"bootstrap needs n >= 1 and n_boot >= 1 (got {n}, {n_boot}).")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def percentile_interval(
    samples: Float[np.ndarray, " boot"], level: float = 0.95
) -> tuple[float, float]:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}.")
    lo, hi = np.quantile(samples, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def bootstrap_ci(
    stat: Callable[..., dict[str, np.ndarray]],
    arrays: Sequence[np.ndarray],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, float]]:
    """Point estimate and percentile CI of each statistic ``stat(*arrays)`` returns.

    ``stat`` reduces the last (item) axis and broadcasts over leading axes, so
    all resamples are computed at once: ``stat(*[a[idx] for a in arrays])``.
    """
    index = bootstrap_indices(arrays[0].shape[-1], n_boot, seed)
    point = stat(*arrays)
    resampled = stat(*[a[index] for a in arrays])
    out = {}
    for name, value in point.items():
        lo, hi = percentile_interval(resampled[name], level)
        out[name] = {"value": float(value), "lo": lo, "hi": hi}
    return out


def mcnemar_exact(
    base_correct: Bool[np.ndarray, " item"], other_correct: Bool[np.ndarray, " item"]
) -> dict[str, float]:
    """Exact (binomial) McNemar test on paired correctness.

    b = right at baseline and wrong under the condition, c = the reverse;
    p = two-sided binomial test of b out of b + c at 1/2 (1.0 when b + c = 0).
    """
    from scipy.stats import binom

    b = int((base_correct & ~other_correct).sum())
    c = int((~base_correct & other_correct).sum())
    n = b + c
    p = 1.0 if n == 0 else min(1.0, 2.0 * float(binom.cdf(min(b, c), n, 0.5)))
    return {"b": b, "c": c, "p": p}


def _mean_stat(values: np.ndarray) -> dict[str, np.ndarray]:
    return {"mean": values.mean(-1)}


# =============================================================================== hooks


def score_batch(
    model: LoadedModel,
    inputs: ModelInputs,
    answers: Sequence[str],
    *,
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
    max_new_tokens: int = 0,
) -> tuple[Float[torch.Tensor, "batch answer"], list[str] | None]:
    """log p(first token of each answer | prompt) and, when ``max_new_tokens`` > 0, the
    greedy generation, from a single pass.

    The answer log-probs come from the logits of generation's first step
    (caught by a forward hook on the HF model, so family-specific logit
    processing such as soft-capping is included): they equal a plain forward's.
    """
    if max_new_tokens <= 0:
        chosen, _ = answer_logprobs(model, inputs, answers, fwd_hooks=fwd_hooks)
        return chosen, None
    first: list[torch.Tensor] = []

    def catch(module: Any, args: Any, output: Any) -> None:
        if not first:
            first.append(output.logits[:, -1:].detach().float().cpu())

    handle = model.hf_model.register_forward_hook(catch)
    try:
        out = generate(model, inputs, max_new_tokens=max_new_tokens, fwd_hooks=fwd_hooks)
    finally:
        handle.remove()
    ids = answer_token_ids(model, answers)
    return next_token_logprobs(first[0])[:, ids], out.texts


# =============================================================================== run folder


@dataclass(frozen=True)
class Shard:
    """This process's place in a ``torchrun``/``accelerate launch`` job (0 of 1 alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def shard_from_env() -> Shard:
    """RANK / WORLD_SIZE / LOCAL_RANK as set by torchrun and accelerate."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise EvalError("RANK / WORLD_SIZE / LOCAL_RANK must be integers.") from None
    if world < 1 or not 0 <= rank < world:
        raise EvalError(f"Bad distributed environment: RANK={rank}, WORLD_SIZE={world}.")
    return Shard(rank, world, local)


def init_distributed(timeout_hours: float = 24.0) -> Shard:
    """Join the process group when launched by torchrun/accelerate (idempotent).

    gloo on every device: the processes only exchange barriers and never
    tensors, so NCCL (which needs one GPU per rank) would add nothing. The
    long timeout lets a fast rank wait at the final barrier for a slow one.
    """
    shard = shard_from_env()
    if shard.world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            "gloo",
            rank=shard.rank,
            world_size=shard.world_size,
            timeout=timedelta(hours=timeout_hours),
        )
    return shard


def rank_device(device: str | None, shard: Shard) -> str | None:
    """One GPU per rank under torchrun: ``cuda`` (or the default) becomes ``cuda:LOCAL_RANK``."""
    if shard.world_size == 1 or not torch.cuda.is_available():
        return device
    if device is None or device == "cuda":
        return f"cuda:{shard.local_rank}"
    return device


def _barrier(shard: Shard) -> None:
    if shard.world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()


def part_path(run_dir: Path, rank: int) -> Path:
    return run_dir / f"part-{rank}.jsonl"


def read_part(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Records of one part and the byte length of its complete lines.

    Records are written one whole line per ``write``; a last line without its
    newline was cut by a kill and is dropped. A complete line that is not JSON
    means the file was edited or corrupted: refused.
    """
    data = path.read_bytes() if path.exists() else b""
    end = data.rfind(b"\n") + 1
    records = []
    for number, line in enumerate(data[:end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise EvalError(f"{path}:{number} is not a JSON record; the part is corrupt.") from None
    return records, end


def repair_part(path: Path) -> int:
    """Cut a truncated last line so appends start on a fresh line; returns bytes dropped."""
    if not path.exists():
        return 0
    _, end = read_part(path)
    dropped = path.stat().st_size - end
    if dropped:
        with path.open("r+b") as handle:
            handle.truncate(end)
    return dropped


def record_key(record: dict[str, Any]) -> tuple[str, str]:
    return str(record["id"]), str(record["condition"])


def load_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of a run from its parts: deduplicated (first wins), sorted by item, condition."""
    run = Path(run_dir)
    manifest = read_manifest(run)
    order = {c["name"]: i for i, c in enumerate(manifest["conditions"])}
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(run.glob("part-*.jsonl"), key=lambda p: int(p.stem.split("-")[1])):
        for record in read_part(path)[0]:
            seen.setdefault(record_key(record), record)
    return sorted(
        seen.values(), key=lambda r: (int(r["index"]), order.get(r["condition"], len(order)))
    )


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise EvalError(f"{Path(run_dir)} is not an evaluation run (no {MANIFEST}).")
    manifest = json.loads(path.read_text())
    version = manifest.get("config", {}).get("format", POPE_FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise EvalError(
            f"{path}: run format {version!r} is newer than this vsink reads "
            f"(<= {FORMAT_VERSION}); update vsink."
        )
    return manifest


def _config_diff(old: Any, new: Any, path: str = "") -> list[str]:
    """The leaves that differ, e.g. ``conditions[1].var.p: 0.6 -> 0.3``."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            line
            for k in sorted(set(old) | set(new))
            for line in _config_diff(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))
        ]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            line
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            for line in _config_diff(a, b, f"{path}[{i}]")
        ]
    if old == new:
        return []
    return [f"{path}: {json.dumps(old)[:120]} -> {json.dumps(new)[:120]}"]


def _model_identity(model: LoadedModel) -> dict[str, Any]:
    config = model.config
    text = json.dumps(config.to_dict(), sort_keys=True, default=str)
    return {
        "name_or_path": model.name_or_path,
        "revision": model.revision,
        # The hub commit the files were resolved to (None for local folders).
        "commit": getattr(config, "_commit_hash", None),
        "config_sha256": hashlib.sha256(text.encode()).hexdigest(),
    }


# =============================================================================== result


@dataclass
class EvalResult(ResultMixin):
    """A finished (or merged) run: per-item records, summary and the manifest."""

    run_dir: Path
    records: list[dict[str, Any]]
    summary_data: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    kind = "evaluation"
    json_fields = ("run_dir",)

    def summary(self) -> dict[str, Any]:
        return self.summary_data

    def accuracy(self, condition: str = "baseline", scoring: str = "logprob") -> float:
        return float(self.summary_data["conditions"][condition][scoring]["accuracy"]["value"])


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
    shard = init_distributed()
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


def _count_records(run: Path, fallback: int) -> int:
    """Records present in a run folder (``fallback`` when the parts cannot be read)."""
    try:
        return len(load_records(run))
    except (OSError, ValueError):
        return fallback


Pending = tuple[int, Item, list[Condition]]  # (dataset index, item, conditions not yet done)


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


def _start_session(
    run: Path,
    identity: dict[str, Any],
    *,
    model: LoadedModel,
    find_dims: Callable[[], dict[str, Any] | None],
    dataset: dict[str, Any],
    session: dict[str, Any],
    summary_settings: dict[str, Any],
) -> None:
    """Create or check the manifest (rank 0 only) and record this session in it."""
    manifest = _open_manifest(run, identity)
    origin = provenance()
    if "dims" not in manifest:  # a new run: decide the sink dims once, for every session
        manifest.update(
            dims=find_dims(),
            conditions=identity["conditions"],
            model=model.describe() | _model_identity(model),
            dataset=dict(dataset, fingerprint=identity["dataset_fingerprint"]),
            provenance=origin,
        )
    manifest["summary_settings"] = summary_settings  # not identity: the latest wins
    manifest.setdefault("sessions", []).append(
        {
            "started": origin["created"],
            "device": str(model.device),
            "git_commit": origin["git_commit"],
            **session,
        }
    )
    # allow_nan=False: NaN is not JSON; validation keeps it out, this keeps it out for sure.
    write_atomic(run / MANIFEST, json.dumps(manifest, indent=2, allow_nan=False))


def _my_batches(
    run: Path, shard: Shard, selected: list[Item], parsed: list[Condition], batch_size: int
) -> list[list[Pending]]:
    """This rank's batches of the items with conditions not done yet.

    Batches are formed over all pending items and then dealt round-robin, so
    a fresh sharded run puts the same items together as a single process.
    """
    repair_part(part_path(run, shard.rank))
    _barrier(shard)
    done = {record_key(r) for r in load_records(run)}
    _barrier(shard)  # nobody appends before everyone has read the same done set
    todo = [
        (index, item, [c for c in parsed if (item.id, c.name) not in done])
        for index, item in enumerate(selected)
    ]
    pending = [t for t in todo if t[2]]
    return list(batched(pending, batch_size))[shard.rank :: shard.world_size]


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


def _open_manifest(run: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """The run's manifest: new when the folder is new, checked against ``identity`` otherwise."""
    path = run / MANIFEST
    if path.is_file():
        manifest = json.loads(path.read_text())
        if manifest.get("config") != identity:
            changes = _config_diff(manifest.get("config", {}), identity)
            raise EvalError(
                f"{run} holds a run with a different configuration; refusing to mix results. "
                f"Use another --out, or the original settings. Differences: {'; '.join(changes)}"
            )
        return manifest
    if run.exists() and any(
        not p.name.startswith((LOCK, "." + LOCK)) and p.name != DECODED for p in run.iterdir()
    ):
        raise EvalError(f"{run} exists, is not empty and has no {MANIFEST}: choose another --out.")
    run.mkdir(parents=True, exist_ok=True)
    return {"kind": "vsink-eval", "config": identity}


def _resolve_dims(
    model: LoadedModel,
    items: Sequence[Item],
    dims: Sequence[int] | None,
    n_calibration: int,
    registry_only: bool = False,
) -> dict[str, Any]:
    """Sink dims for the whole run, decided once and stored in the manifest."""
    from analysis.dims import registry_entry, sink_dims
    from analysis.tokens import build_inputs

    if dims is not None:
        return {"dims": sink_dims(model, dims=dims), "source": "explicit", "calibration": []}
    if registry_only:
        return {
            "dims": sink_dims(model, registry_only=True),
            "source": "registry",
            "calibration": [],
        }
    calibration: list[Item] = []
    for item in items:
        if item.image_name not in {c.image_name for c in calibration}:
            calibration.append(item)
        if len(calibration) >= n_calibration:
            break
    batches = [build_inputs(model, item.image, item.text) for item in calibration]
    chosen = sink_dims(model, batches)
    return {
        "dims": chosen,
        "source": "registry" if registry_entry(model) is not None else "discovered",
        "calibration": [item.id for item in calibration],
    }


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


def merge_run(
    run_dir: str | os.PathLike[str], *, n_boot: int | None = None, level: float | None = None
) -> EvalResult:
    """Merge the parts of a run into ``records.jsonl`` and ``summary.json`` (idempotent)."""
    run = Path(run_dir).expanduser()
    manifest = read_manifest(run)
    records = load_records(run)
    if not records:
        raise EvalError(f"{run} has no records yet.")
    settings = manifest.get("summary_settings", {})
    summary = summarize(
        records,
        manifest,
        n_boot=int(n_boot if n_boot is not None else settings.get("n_boot", 1000)),
        level=float(level if level is not None else settings.get("level", 0.95)),
    )
    write_atomic(run / RECORDS, "".join(json.dumps(r) + "\n" for r in records))
    write_atomic(run / SUMMARY, json.dumps(summary, indent=2))
    return EvalResult(run_dir=run, records=records, summary_data=summary, config=manifest)


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


def expected_items(manifest: dict[str, Any], present: int) -> int:
    """How many items the run's sessions asked for: the largest ``limit`` (all items when
    a session had none), at most the dataset's size; ``present`` for an old manifest."""
    total = manifest.get("config", {}).get("n_dataset_items")
    sessions = manifest.get("sessions") or []
    if total is None or not sessions:
        return present
    limits = [s.get("limit") for s in sessions]
    return int(total) if None in limits else min(int(total), max(int(x) for x in limits))


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
