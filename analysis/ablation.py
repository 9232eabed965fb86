"""Attention knock-out: block attention from chosen queries to chosen keys.

Two modes, both as hooks:

* ``pre`` (default): scores of blocked (query, key) pairs are set to the dtype's
  minimum before the softmax, so each row renormalises over what is left;
* ``post``: blocked entries of the post-softmax pattern are zeroed and rows are
  not renormalised.

Targets are resolved per layer: ``sinks`` (visual sinks of that layer's input,
from the phi classifier in the same pass), ``random`` (the same number of
random non-sink visual tokens, seeded, one set per draw), ``nonsink`` (all
non-sink visual tokens), ``visual`` (all visual tokens) and ``positions`` (an
explicit list). Queries default to text tokens; during decoding every new
token is a query. The entry point :func:`ablate` compares each condition with
the unablated run on the answer's log-probability, the KL divergence of the
next-token distribution and the greedy answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Bool

from analysis import hooks
from analysis.attention import N_QUERY_KEY, ROWS_KEY, row_sparse_hook, score_mask_hook
from analysis.attention_guard import require_attention_edits
from analysis.capture import HookFn
from analysis.checks import check_model_layers, check_settings
from analysis.config import DRAWS, SEED, TAU
from analysis.errors import UserInputError
from analysis.generation import answer_logprobs, kl_divergence
from analysis.interventions.base import PrefillState, SinkTracker
from analysis.results import ResultMixin, provenance

if TYPE_CHECKING:
    from analysis.loading import LoadedModel
    from analysis.tokens import ModelInputs

Target = Literal["sinks", "random", "nonsink", "visual", "positions"]
Mode = Literal["pre", "post"]
TARGETS: tuple[str, ...] = ("sinks", "random", "nonsink", "visual", "positions")


def block_scores(
    scores: torch.Tensor,
    queries: Bool[torch.Tensor, "batch query"],
    keys: Bool[torch.Tensor, "batch key"],
) -> torch.Tensor:
    """Pre-softmax knock-out: blocked pairs get the dtype's minimum (rows renormalise)."""
    blocked = queries[:, None, :, None] & keys[:, None, None, :]
    return scores.masked_fill(blocked, torch.finfo(scores.dtype).min)


def zero_pattern(
    pattern: torch.Tensor,
    queries: Bool[torch.Tensor, "batch query"],
    keys: Bool[torch.Tensor, "batch key"],
) -> torch.Tensor:
    """Post-softmax knock-out: blocked pairs are zeroed, rows are not renormalised."""
    blocked = queries[:, None, :, None] & keys[:, None, None, :]
    return pattern.masked_fill(blocked, 0.0)


class KnockOut:
    """Knock-out hooks for one batch of prompts (forward or generation).

    Args:
        target: which keys to block (see module doc).
        layers: layers to apply it in (default: all).
        queries: query positions [batch, pos] for the prefill (default: text tokens).
        positions: key positions for ``target="positions"`` (same for every sample).
        draw: index of the random draw (``target="random"``), combined with ``seed``.
        sample_keys: an identity per sample (e.g. a dataset item id) that seeds its
            random draw, so an item gets the same tokens whatever batch or process
            it lands in; default: the row index.
    """

    def __init__(
        self,
        model: LoadedModel,
        inputs: ModelInputs,
        *,
        target: Target,
        dims: Sequence[int] | None = None,
        tau: float = TAU,
        mode: Mode = "pre",
        layers: Sequence[int] | None = None,
        queries: Bool[torch.Tensor, "batch pos"] | None = None,
        positions: Sequence[int] | None = None,
        seed: int = SEED,
        draw: int = 0,
        sample_keys: Sequence[str | int] | None = None,
    ) -> None:
        if target not in TARGETS:
            raise UserInputError(f"Unknown target {target!r}; choose from {TARGETS}.")
        check_settings(tau=tau, seed=seed)
        if mode not in ("pre", "post"):
            raise UserInputError(f"Unknown mode {mode!r}; use 'pre' or 'post'.")
        if target in ("sinks", "random", "nonsink") and not dims:
            raise UserInputError(f"target={target!r} needs sink dims.")
        if target == "positions" and not positions:
            raise UserInputError("target='positions' needs a non-empty positions list.")
        self.model, self.target, self.mode, self.tau = model, target, mode, tau
        self.dims = None if dims is None else [int(d) for d in dims]
        self.layers = check_model_layers(
            "Knock-out", range(model.n_layers) if layers is None else layers, model.n_layers
        )
        # A knock-out edits hook_attn_scores (pre) or hook_pattern (post): refuse where discarded.
        require_attention_edits(model, f"A {mode}-softmax knock-out", scores=mode == "pre")
        self.prefill_len = int(inputs.input_ids.shape[1])
        self.valid = inputs.stack("attention_mask")
        self.visual = inputs.visual
        self.queries = inputs.text if queries is None else queries.bool() & self.valid
        self.positions = positions
        self.seed, self.draw = seed, draw
        self.sample_keys = (
            list(range(self.valid.shape[0])) if sample_keys is None else list(sample_keys)
        )
        if len(self.sample_keys) != self.valid.shape[0]:
            raise UserInputError(
                f"{len(self.sample_keys)} sample keys for a batch of {self.valid.shape[0]}."
            )
        self.keys: dict[int, torch.Tensor] = {}
        self.state = PrefillState(self.prefill_len)
        # Knock-outs block visual sinks only (text sinks such as BOS are left alone).
        self.tracker = (
            SinkTracker(
                dims=self.dims, tau=tau, scope="visual", valid=self.valid, visual=self.visual
            )
            if self.dims
            else None
        )
        if positions is not None:
            explicit = torch.zeros_like(self.valid)
            for p in positions:
                if not 0 <= int(p) < self.prefill_len:
                    raise UserInputError(
                        f"Position {p} outside the prompt (length {self.prefill_len})."
                    )
                explicit[:, int(p)] = True
            self._explicit: torch.Tensor | None = explicit & self.valid
        else:
            self._explicit = None

    def _resolve_keys(self, layer: int, resid: torch.Tensor | None) -> torch.Tensor:
        if self.target == "positions":
            assert self._explicit is not None
            return self._explicit
        if self.target == "visual":
            return self.visual & self.valid
        assert resid is not None
        assert self.tracker is not None
        observed = self.tracker.observe(layer, resid)
        assert observed is not None  # called at the prefill only
        sinks = observed.cpu()
        if self.target == "sinks":
            return sinks
        nonsink = self.visual & self.valid & ~sinks
        if self.target == "nonsink":
            return nonsink
        seeds = [stable_seed(self.seed, key, self.draw, layer) for key in self.sample_keys]
        return random_keys(sinks, nonsink, seeds)

    def fwd_hooks(self) -> list[tuple[str, HookFn]]:
        out: list[tuple[str, HookFn]] = []
        for layer in self.layers:
            out.append((hooks.resid_pre(layer), self._resid_hook(layer)))
            name = hooks.attn_scores(layer) if self.mode == "pre" else hooks.attn_pattern(layer)
            out.append((name, self._attn_hook(layer)))
        return out

    def _resid_hook(self, layer: int) -> HookFn:
        def hook(resid: torch.Tensor, hook: Any) -> None:
            if self.state.is_prefill(resid.shape[1]):
                self.keys[layer] = self._resolve_keys(layer, resid)

        return hook

    def _blocked(
        self, layer: int, batch: int, n_query: int, n_key: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocked queries [batch, query] and keys [batch, key] of one call of ``layer``."""
        prefill = self.state.is_prefill(n_query)
        seen = self.state.advance(layer, n_query)
        generated = seen - self.prefill_len
        keys = torch.cat([self.keys[layer], self.keys[layer].new_zeros(batch, generated)], dim=1)
        keys = keys[:, self.state.window(layer, n_key)].to(device)
        if prefill:
            queries = self.queries.to(device)
        else:
            queries = torch.ones(batch, n_query, dtype=torch.bool, device=device)
        return queries, keys

    def _attn_hook(self, layer: int) -> HookFn:
        def hook(tensor: torch.Tensor, hook: Any) -> torch.Tensor:
            batch, _, n_query, n_key = tensor.shape
            if self.mode == "post" and ROWS_KEY in hook.ctx:
                n_query = hook.ctx[N_QUERY_KEY]
            queries, keys = self._blocked(layer, batch, n_query, n_key, tensor.device)
            if self.mode == "pre":
                return block_scores(tensor, queries, keys)
            if ROWS_KEY in hook.ctx:  # row-sparse: only the blocked query rows came
                queries = queries.index_select(1, hook.ctx[ROWS_KEY].to(tensor.device))
            return zero_pattern(tensor, queries, keys)

        if self.mode == "pre":
            # On SDPA layers only the blocked pairs are asked for, as an additive mask.
            def blocked(n_query: int, n_key: int, device: torch.device) -> torch.Tensor:
                queries, keys = self._blocked(layer, self.valid.shape[0], n_query, n_key, device)
                return queries[:, :, None] & keys[:, None, :]

            return score_mask_hook(hook, blocked)

        def rows(n_query: int, n_key: int, device: torch.device) -> torch.Tensor | None:
            # Post-softmax: the pattern is read only in the rows of blocked queries.
            if not self.state.is_prefill(n_query):
                return None
            return torch.nonzero(self.queries.any(dim=0)).flatten().to(device)

        return row_sparse_hook(hook, rows)

    def blocked_counts(self) -> dict[int, list[int]]:
        """Per layer, the number of blocked keys per sample (after a prefill)."""
        return {layer: keys.sum(-1).tolist() for layer, keys in self.keys.items()}

    def per_sample(self) -> list[dict[str, Any]]:
        """Per sample: blocked keys of each knocked-out layer, in layer order."""
        counts = self.blocked_counts()
        return [
            {"blocked": [counts[layer][b] for layer in sorted(counts)]}
            for b in range(self.valid.shape[0])
        ]

    def summary(self) -> dict[str, Any]:
        """Blocked keys per layer, summed over the batch."""
        return {"blocked": {layer: sum(n) for layer, n in self.blocked_counts().items()}}


def stable_seed(*parts: Any) -> int:
    """A seed from any values, stable across processes and Python runs (unlike hash())."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def random_keys(
    sinks: Bool[torch.Tensor, "batch pos"],
    pool: Bool[torch.Tensor, "batch pos"],
    seeds: Sequence[int],
) -> Bool[torch.Tensor, "batch pos"]:
    """Per row, as many random ``pool`` positions as the row has ``sinks``, drawn with ``seeds[row]``.

    Candidates are taken in position order, so left padding does not change
    which tokens are drawn.
    """
    out = torch.zeros_like(pool)
    for row, seed in enumerate(seeds):
        candidates = torch.nonzero(pool[row]).flatten()
        k = min(int(sinks[row].sum()), candidates.numel())
        if k:
            generator = torch.Generator().manual_seed(int(seed))
            out[row, candidates[torch.randperm(candidates.numel(), generator=generator)[:k]]] = True
    return out


@dataclass
class AblationResult(ResultMixin):
    """Per condition and sample: answer log-prob change, KL, greedy change."""

    conditions: list[str]
    answers: list[str]
    answer_logprob: torch.Tensor  # [condition, batch, answer]
    kl: torch.Tensor  # [condition, batch]
    greedy: list[list[str]]  # [condition][batch]
    blocked: list[dict[int, list[int]]]
    config: dict[str, Any] = field(default_factory=dict)
    kind = "ablation"
    json_fields = ("conditions", "answers", "greedy", "blocked")
    tensor_fields = ("answer_logprob", "kl")

    def delta_logprob(self, answer: int = 0) -> torch.Tensor:
        """[condition, batch] change of log p(answer) against the baseline (condition 0)."""
        values = self.answer_logprob[..., answer]
        return values - values[0:1]

    def summary(self) -> dict[str, Any]:
        delta = self.delta_logprob()
        return {
            name: {
                "delta_logprob_mean": float(delta[i].mean()),
                "kl_mean": float(self.kl[i].mean()),
                "greedy_changed": sum(
                    g != b for g, b in zip(self.greedy[i], self.greedy[0], strict=True)
                ),
            }
            for i, name in enumerate(self.conditions)
        }


def ablate(
    model: LoadedModel,
    inputs: ModelInputs,
    *,
    targets: Sequence[Target],
    answers: Sequence[str],
    dims: Sequence[int] | None = None,
    tau: float = TAU,
    mode: Mode = "pre",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    draws: int = DRAWS,
    seed: int = SEED,
) -> AblationResult:
    """Run the baseline and each knock-out condition; ``random`` runs ``draws`` times."""
    from analysis.generation import decode_tokens

    check_settings(tau=tau, draws=draws, seed=seed)
    base_lp, base_full = answer_logprobs(model, inputs, answers)
    conditions: list[str] = ["baseline"]
    logprobs = [base_lp]
    kls = [torch.zeros(inputs.batch_size)]
    greedy: list[list[str]] = []
    blocked: list[dict[int, list[int]]] = [{}]
    greedy.append(decode_tokens(model, base_full.argmax(-1).tolist()))
    for target in targets:
        for draw in range(draws if target == "random" else 1):
            knock = KnockOut(
                model,
                inputs,
                target=target,
                dims=dims,
                tau=tau,
                mode=mode,
                layers=layers,
                positions=positions,
                seed=seed,
                draw=draw,
            )
            lp, full = answer_logprobs(model, inputs, answers, fwd_hooks=knock.fwd_hooks())
            conditions.append(target if target != "random" else f"random[{draw}]")
            logprobs.append(lp)
            kls.append(kl_divergence(base_full, full))
            greedy.append(decode_tokens(model, full.argmax(-1).tolist()))
            blocked.append(knock.blocked_counts())
    return AblationResult(
        conditions=conditions,
        answers=list(answers),
        answer_logprob=torch.stack(logprobs),
        kl=torch.stack(kls),
        greedy=greedy,
        blocked=blocked,
        config={
            "model": model.describe(),
            "targets": list(targets),
            "mode": mode,
            "layers": layers,
            "dims": dims,
            "tau": tau,
            "draws": draws,
            "seed": seed,
            "prompts": inputs.prompts,
            **provenance(),
        },
    )
