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
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from jaxtyping import Bool, Float, Int

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
from analysis.capture import HookFn, batched, progress
from analysis.checks import check_settings
from analysis.datasets import DatasetError, Item, fingerprint
from analysis.errors import UserInputError
from analysis.fsio import check_output_dir, exclusive_lock, write_atomic
from analysis.generation import answer_logprobs, answer_token_ids, generate, next_token_logprobs
from analysis.heads import RHO_PRESETS, HeadStatsHooks
from analysis.results import ResultMixin, provenance, to_jsonable
from analysis.sinks import DEFAULT_TAU
from analysis.tokens import build_batch
from analysis.var import PRESETS, VarConfig, VarIntervention

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


class EvalError(UserInputError):
    """A run folder or its configuration is unusable; the message says why and what to do."""


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by SIGINT/SIGTERM; what it wrote is kept and the same call resumes."""

    def __init__(self, run: Path, written: int, present: int) -> None:
        super().__init__(f"{run}: interrupted after {written} records")
        self.run, self.written, self.present = run, written, present


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


class PrefillStats(HeadStatsHooks):
    """Sink counts and head scores of one batch, collected during the prefill of a run."""

    def __init__(
        self,
        model: LoadedModel,
        inputs: ModelInputs,
        *,
        dims: Sequence[int],
        tau: float,
        rho: float,
        min_image_attention: float,
    ) -> None:
        super().__init__(model, inputs, dims=dims, tau=tau)
        self.rho, self.min_image_attention = rho, min_image_attention

    def per_sample(self) -> list[dict[str, Any]]:
        """Per sample: visual sinks per layer and [layer][head] means of s, r, selected."""
        scores = self.scores(rho=self.rho, min_image_attention=self.min_image_attention)
        means = scores.per_sample()
        # 4 decimals keep per-item head scores readable and small (32 x 32 heads per item).
        rounded = {k: np.round(v.double().numpy(), 4) for k, v in means.items()}
        return [
            {
                "sinks": self.sink_counts[b].tolist(),
                "heads": {k: v[b].tolist() for k, v in rounded.items()},
            }
            for b in range(self.sink_counts.shape[0])
        ]


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


def expected_items(manifest: dict[str, Any], present: int) -> int:
    """How many items the run's sessions asked for: the largest ``limit`` (all items when
    a session had none), at most the dataset's size; ``present`` for an old manifest."""
    total = manifest.get("config", {}).get("n_dataset_items")
    sessions = manifest.get("sessions") or []
    if total is None or not sessions:
        return present
    limits = [s.get("limit") for s in sessions]
    return int(total) if None in limits else min(int(total), max(int(x) for x in limits))


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
