"""Head scores: image attention s and visual non-sink ratio r per (layer, head, query).

For layer l, head h and text query i after the image (alpha post-softmax):

    s = sum over j in I_vis of alpha_ij
    r = sum over j in I_vis \\ I_sink of alpha_ij / s

(l, h, i) is image-centric when s >= 0.2 and r >= rho. When a layer's input has
no visual sink, r is 1 by definition, but the paper's method selects no head
there: :class:`HeadScores` applies that rule and says so in ``rule``.

The statistics are computed inside hooks as the forward runs and only
[layer, head, query] numbers are kept, never [layer, head, query, key] patterns.
Entry point: :func:`score_heads` (one or many batches) returns :class:`HeadScores`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float

from analysis import hooks
from analysis.attention import N_QUERY_KEY, ROWS_KEY, row_sparse_hook
from analysis.capture import HookFn, bind, forward, progress
from analysis.checks import check_settings
from analysis.config import (
    CI_LEVEL,
    MIN_IMAGE_ATTENTION,
    MIN_SELECTED_FRACTION,
    N_BOOT,
    N_BOOT_QUICK,
    RHO,
    SEED,
    TAU,
)
from analysis.config import RHO_PRESETS as RHO_PRESETS
from analysis.errors import UserInputError
from analysis.interventions.base import PrefillState, SinkTracker
from analysis.results import ResultMixin, provenance
from analysis.stats import mean_interval
from analysis.var_math import image_attention_stats

if TYPE_CHECKING:
    from analysis.loading import LoadedModel
    from analysis.tokens import ModelInputs

SELECTION_RULE = (
    "image-centric when s >= min_image_attention and r >= rho, and only in layers whose "
    "input has at least one visual sink (the paper's rule; r is 1 by definition there)"
)


def resolve_rho(rho: float | None = None, preset: str | None = None) -> float:
    """rho from a number or a paper preset (general 0.8, hallucination 0.5, vision-centric 0.9)."""
    if preset is not None:
        if preset not in RHO_PRESETS:
            raise UserInputError(f"Unknown preset {preset!r}; choose from {sorted(RHO_PRESETS)}.")
        if rho is not None and rho != RHO_PRESETS[preset]:
            raise UserInputError(
                f"Pass either rho or preset, not both (preset {preset} means {RHO_PRESETS[preset]})."
            )
        return RHO_PRESETS[preset]
    return check_settings(rho=RHO if rho is None else rho)["rho"]


def rank_heads(
    selected: Sequence[Sequence[float]] | torch.Tensor | Any,
    r: Sequence[Sequence[float]] | torch.Tensor | Any,
    layer_has_visual_sink: Sequence[float] | torch.Tensor | Any,
) -> list[tuple[int, int]]:
    """Every (layer, head), best first: the one ordering of heads in the toolkit.

    By the fraction of text queries selected (descending), then the fraction of
    samples whose layer input holds a visual sink (r is 1 by definition where
    there is none, so such heads rank after heads with real evidence), then the
    mean r (descending), then layer and head. Inputs are [layer, head] means
    (``selected``, ``r``) and per-layer fractions, as tensors, arrays or lists;
    :meth:`HeadScores.ranked` and the evaluation summary both use it.
    """
    chosen = torch.as_tensor(selected, dtype=torch.float64)
    ratio = torch.as_tensor(r, dtype=torch.float64)
    with_sink = torch.as_tensor(layer_has_visual_sink, dtype=torch.float64)
    if chosen.ndim != 2 or chosen.shape != ratio.shape or with_sink.shape != chosen.shape[:1]:
        raise ValueError(
            f"rank_heads needs [layer, head] selected and r and [layer] sink fractions, got "
            f"{tuple(chosen.shape)}, {tuple(ratio.shape)} and {tuple(with_sink.shape)}."
        )
    n_layers, n_heads = chosen.shape
    sel, rat, sink = chosen.tolist(), ratio.tolist(), with_sink.tolist()
    return sorted(
        ((layer, head) for layer in range(n_layers) for head in range(n_heads)),
        key=lambda lh: (-sel[lh[0]][lh[1]], -sink[lh[0]], -rat[lh[0]][lh[1]], lh[0], lh[1]),
    )


@dataclass
class HeadScores(ResultMixin):
    """Per sample, layer, head and query position: s, r and the image-centric flag.

    ``queries`` marks the text queries after the image (other positions hold 0).
    ``has_visual_sink`` is per sample and layer.
    """

    s: Float[torch.Tensor, "batch layer head pos"]
    r: Float[torch.Tensor, "batch layer head pos"]
    queries: Bool[torch.Tensor, "batch pos"]
    has_visual_sink: Bool[torch.Tensor, "batch layer"]
    rho: float
    min_image_attention: float
    rule: str = SELECTION_RULE
    config: dict[str, Any] = field(default_factory=dict)
    kind = "heads"
    json_fields = ("rho", "min_image_attention", "rule")
    tensor_fields = ("s", "r", "queries", "has_visual_sink")

    @property
    def selected(self) -> Bool[torch.Tensor, "batch layer head pos"]:
        return (
            (self.s >= self.min_image_attention)
            & (self.r >= self.rho)
            & self.queries[:, None, None, :]
            & self.has_visual_sink[:, :, None, None]
        )

    def per_sample(self) -> dict[str, Float[torch.Tensor, "batch layer head"]]:
        """Means over each sample's text queries: s, r, fraction of queries selected."""
        q = self.queries[:, None, None, :].float()
        n = q.sum(-1).clamp_min(1)
        return {
            "s": (self.s * q).sum(-1) / n,
            "r": (self.r * q).sum(-1) / n,
            "selected": (self.selected.float() * q).sum(-1) / n,
        }

    def aggregate(
        self, n_boot: int = N_BOOT, seed: int = SEED, level: float = CI_LEVEL
    ) -> dict[str, torch.Tensor]:
        """Mean and spread over samples per (layer, head), with bootstrap CIs over samples."""
        stats = self.per_sample()
        out: dict[str, torch.Tensor] = {}
        for name, values in stats.items():
            out[f"{name}_mean"] = values.mean(0)
            out[f"{name}_std"] = values.std(0, unbiased=False)
            lo, hi = mean_interval(values.double().numpy(), n_boot=n_boot, seed=seed, level=level)
            out[f"{name}_lo"], out[f"{name}_hi"] = (
                torch.from_numpy(x).to(values) for x in (lo, hi)
            )
        return out

    def ranked(self, top: int | None = None) -> list[dict[str, Any]]:
        """Heads in :func:`rank_heads` order, with their means and quick bootstrap CIs."""
        agg = self.aggregate(n_boot=N_BOOT_QUICK)
        # r is 1 by definition where a layer has no visual sink: such heads rank last.
        with_sink = self.has_visual_sink.float().mean(0)
        order = rank_heads(agg["selected_mean"], agg["r_mean"], with_sink)
        rows = [
            {
                "layer": layer,
                "head": head,
                "layer_has_visual_sink": float(with_sink[layer]),
                **{k: float(v[layer, head]) for k, v in agg.items()},
            }
            for layer, head in order
        ]
        return [row for row in rows if row["selected_mean"] > 0] if top is None else rows[:top]

    def image_centric_heads(
        self, min_fraction: float = MIN_SELECTED_FRACTION
    ) -> list[tuple[int, int]]:
        """(layer, head) pairs selected for at least ``min_fraction`` of text queries on average."""
        frac = self.per_sample()["selected"].mean(0)
        return [(int(l_), int(h)) for l_, h in torch.nonzero(frac >= min_fraction).tolist()]

    def summary(self) -> dict[str, Any]:
        return {
            "n_samples": int(self.s.shape[0]),
            "image_centric_heads": self.image_centric_heads(),
            "ranked": self.ranked()[:20],
        }

    def to_csv(self, path: str) -> None:
        import csv
        import io

        from analysis.fsio import write_atomic

        rows = self.ranked(top=10**9)
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(path, buffer.getvalue())


def score_heads(
    model: LoadedModel,
    inputs: ModelInputs | Sequence[ModelInputs],
    *,
    dims: Sequence[int],
    tau: float = TAU,
    rho: float | None = None,
    preset: str | None = None,
    min_image_attention: float = MIN_IMAGE_ATTENTION,
    show_progress: bool = True,
) -> HeadScores:
    """s and r for every layer, head and text query, over one or several batches."""
    rho_value = resolve_rho(rho, preset)
    check_settings(tau=tau, min_image_attention=min_image_attention)
    batches = [inputs] if not isinstance(inputs, Sequence) else list(inputs)
    n_pos = max(b.input_ids.shape[1] for b in batches)
    s_all, r_all, q_all, sink_all = [], [], [], []
    for batch in progress(batches, len(batches), "heads", show_progress):
        s_out, r_out, has_sink = _score_batch(model, batch, dims, tau)
        length = batch.input_ids.shape[1]
        pad = n_pos - length  # left-pad batches of different lengths to a common width
        s_all.append(torch.nn.functional.pad(s_out, (pad, 0)))
        r_all.append(torch.nn.functional.pad(r_out, (pad, 0)))
        q_all.append(torch.nn.functional.pad(batch.queries, (pad, 0)))
        sink_all.append(has_sink)
    return HeadScores(
        s=torch.cat(s_all),
        r=torch.cat(r_all),
        queries=torch.cat(q_all),
        has_visual_sink=torch.cat(sink_all),
        rho=rho_value,
        min_image_attention=min_image_attention,
        config={
            "model": model.describe(),
            "dims": [int(d) for d in dims],
            "tau": tau,
            "rho": rho_value,
            "preset": preset,
            "min_image_attention": min_image_attention,
            "n_samples": sum(b.batch_size for b in batches),
            **provenance(),
        },
    )


class HeadStatsHooks:
    """Hooks that reduce one batch's prefill to visual sink counts and s, r per head and query.

    Per layer: the visual sinks of the layer input (phi >= tau), then s and r
    of every (head, query) from that layer's pattern. Decoding steps (a
    different query length) are ignored, so the hooks can ride along with
    generation.
    """

    def __init__(
        self, model: LoadedModel, inputs: ModelInputs, *, dims: Sequence[int], tau: float
    ) -> None:
        self.dims, self.tau = [int(d) for d in dims], float(tau)
        self.n_layers = model.n_layers
        self.visual = inputs.visual
        self.valid = inputs.stack("attention_mask")
        self.queries = inputs.queries
        batch, self.prefill_len = inputs.input_ids.shape
        shape = (batch, model.n_layers, model.n_heads, self.prefill_len)
        self.s: Float[torch.Tensor, "batch layer head pos"] = torch.zeros(shape)
        self.r: Float[torch.Tensor, "batch layer head pos"] = torch.zeros(shape)
        self.sink_counts = torch.zeros(batch, model.n_layers, dtype=torch.long)
        self.state = PrefillState(self.prefill_len)
        # s and r split the image attention at the visual sinks: text sinks do not count.
        self.tracker = SinkTracker(
            dims=self.dims, tau=self.tau, scope="visual", valid=self.valid, visual=self.visual
        )

    def fwd_hooks(self) -> list[tuple[str, HookFn]]:
        out: list[tuple[str, HookFn]] = []
        for layer in range(self.n_layers):
            out.append((hooks.resid_pre(layer), bind(self._on_resid, layer)))
            pattern_hook = row_sparse_hook(bind(self._on_pattern, layer), self._rows)
            out.append((hooks.attn_pattern(layer), pattern_hook))
        return out

    def _rows(self, n_query: int, n_key: int, device: torch.device) -> torch.Tensor:
        """Only the text-query rows of the prefill are read (none of a decoding step's)."""
        if not self.state.is_prefill(n_query):
            return torch.zeros(0, dtype=torch.long, device=device)
        return torch.nonzero(self.queries.any(dim=0)).flatten().to(device)

    def _on_resid(self, resid: torch.Tensor, hook: Any, layer: int) -> None:
        sinks = self.tracker.observe(layer, resid)
        if sinks is not None:
            self.sink_counts[:, layer] = sinks.sum(-1).cpu()

    def _on_pattern(self, pattern: torch.Tensor, hook: Any, layer: int) -> None:
        rows = hook.ctx.get(ROWS_KEY)
        n_query = pattern.shape[2] if rows is None else int(hook.ctx[N_QUERY_KEY])
        if not self.state.is_prefill(n_query):
            return
        if rows is None:  # the full pattern (eager layer): read the query rows alone
            rows = self._rows(n_query, pattern.shape[3], pattern.device)
            pattern = pattern.index_select(2, rows)
        visual = self.visual.to(pattern.device)
        sinks = self.tracker.sinks(layer, pattern.device)
        s, r = image_attention_stats(pattern, visual=visual, sinks=sinks)
        rows = rows.cpu()
        queries = self.queries.index_select(1, rows)[:, None, :]
        self.s[:, layer].index_copy_(-1, rows, s.cpu() * queries)
        self.r[:, layer].index_copy_(-1, rows, r.cpu() * queries)

    def scores(self, *, rho: float, min_image_attention: float) -> HeadScores:
        return HeadScores(
            s=self.s,
            r=self.r,
            queries=self.queries,
            has_visual_sink=self.sink_counts > 0,
            rho=rho,
            min_image_attention=min_image_attention,
        )


def _score_batch(
    model: LoadedModel, batch: ModelInputs, dims: Sequence[int], tau: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward with :class:`HeadStatsHooks`; returns s, r and which layers hold a sink."""
    stats = HeadStatsHooks(model, batch, dims=dims, tau=tau)
    forward(model, batch, stats.fwd_hooks(), logits_to_keep=1)
    return stats.s, stats.r, stats.sink_counts > 0
