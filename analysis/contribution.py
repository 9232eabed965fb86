"""Residual contribution of key tokens: how much a sink actually writes into a query.

For head h of layer l, key token j adds ``alpha_ij * x_j W_OV^h`` to query i's
residual stream (paper figure 3c), where ``x_j W_OV^h = v_j^h W_O^h`` is the
value vector mapped through the head's slice of the output projection. Its norm
factorises, ``||alpha_ij x_j W_OV^h|| = alpha_ij * ||v_j^h W_O^h||``, so the
hooks keep one value norm per (key, head) and one masked sum per group: no
[layer, head, query, key] cache is stored.

The paper's finding: visual sinks receive much attention but contribute far
less than other visual tokens, because their value vectors are small after
W_O. Groups are ``visual sink`` (phi >= tau at the layer input), ``visual
non-sink`` and ``text`` (every valid non-visual key, BOS included). Only
causal (query, key) pairs with the query among the text tokens after the
image are averaged. Output-projection bias and any post-attention norm
(Gemma 3) are outside W_OV and not included.

Entry point: :func:`residual_contribution` returns :class:`ContributionResult`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from einops import einsum, rearrange, repeat
from jaxtyping import Bool, Float

from analysis import hooks
from analysis.capture import bind, forward
from analysis.checks import check_model_layers
from analysis.errors import UserInputError
from analysis.results import ResultMixin, provenance
from analysis.sinks import DEFAULT_TAU, phi

if TYPE_CHECKING:
    from analysis.loading import LoadedModel
    from analysis.tokens import ModelInputs

GROUPS = ("visual sink", "visual non-sink", "text")


# ----------------------------------------------------------------------------- pure math


def value_norms(
    v: Float[torch.Tensor, "batch pos kv_head d_head"],
    w_o: Float[torch.Tensor, "head d_head d_model"],
) -> Float[torch.Tensor, "batch pos head"]:
    """``||v_j^h W_O^h||`` per key and query head, through the d_head x d_head Gram matrix.

    ``v W W^T v^T`` avoids materialising [batch, pos, head, d_model] (335 MB per
    sample for a 7B model). Grouped-query attention shares each value head among
    ``head / kv_head`` consecutive query heads, as HF's ``repeat_kv`` does.
    """
    n_heads, n_kv = w_o.shape[0], v.shape[2]
    if n_heads % n_kv:
        raise UserInputError(f"{n_heads} query heads cannot share {n_kv} value heads evenly.")
    v = repeat(v.float(), "batch pos kv d_head -> batch pos (kv rep) d_head", rep=n_heads // n_kv)
    w = w_o.float()
    gram = einsum(w, w, "head i d_model, head j d_model -> head i j")
    squared = einsum(v, gram, v, "batch pos head i, head i j, batch pos head j -> batch pos head")
    return squared.clamp_min(0).sqrt()


def group_means(
    pattern: Float[torch.Tensor, "batch head query key"],
    norms: Float[torch.Tensor, "batch key head"],
    groups: Bool[torch.Tensor, "batch group key"],
    queries: Bool[torch.Tensor, "batch query"],
) -> tuple[Float[torch.Tensor, "batch head group"], Float[torch.Tensor, "batch head group"]]:
    """Mean contribution ``alpha_ij * n_j`` and mean attention ``alpha_ij`` per key group.

    Averages over causal pairs (key <= query) with the query in ``queries`` and
    the key in the group; NaN where a group has no such pair.
    """
    n_query, n_key = pattern.shape[-2:]
    alpha = pattern.float()
    causal = torch.ones(n_query, n_key, dtype=torch.bool, device=alpha.device).tril(n_key - n_query)
    pairs = (queries[:, None, :, None] & groups[:, :, None, :] & causal).float()
    count = pairs.sum((-1, -2))[:, None, :]
    weighted = alpha * rearrange(norms.float(), "batch key head -> batch head 1 key")
    contribution = einsum(weighted, pairs, "batch head q k, batch group q k -> batch head group")
    attention = einsum(alpha, pairs, "batch head q k, batch group q k -> batch head group")
    empty = count == 0
    return (
        (contribution / count).masked_fill(empty, float("nan")),
        (attention / count).masked_fill(empty, float("nan")),
    )


def group_value_norms(
    norms: Float[torch.Tensor, "batch key head"], groups: Bool[torch.Tensor, "batch group key"]
) -> Float[torch.Tensor, "batch head group"]:
    """Mean ``||v_j W_O||`` over the keys of each group (NaN for an empty group)."""
    members = groups.float()
    total = einsum(norms.float(), members, "batch key head, batch group key -> batch head group")
    count = members.sum(-1)[:, None, :]
    return (total / count).masked_fill(count == 0, float("nan"))


def key_groups(
    sinks: Bool[torch.Tensor, "batch key"],
    visual: Bool[torch.Tensor, "batch key"],
    valid: Bool[torch.Tensor, "batch key"],
) -> Bool[torch.Tensor, "batch group key"]:
    """The three key groups of :data:`GROUPS`, padding excluded."""
    visual = visual & valid
    return torch.stack([visual & sinks, visual & ~sinks, valid & ~visual], dim=1)


# ----------------------------------------------------------------------------- result


@dataclass
class ContributionResult(ResultMixin):
    """Per sample, layer, head and key group (:data:`GROUPS`): contribution, attention, norm."""

    groups: list[str]
    contribution: Float[torch.Tensor, "batch layer head group"]
    attention: Float[torch.Tensor, "batch layer head group"]
    value_norm: Float[torch.Tensor, "batch layer head group"]
    counts: Float[torch.Tensor, "batch layer group"]
    layers: list[int]
    config: dict[str, Any] = field(default_factory=dict)
    kind = "contribution"
    json_fields = ("groups", "layers")
    tensor_fields = ("contribution", "attention", "value_norm", "counts")

    def group_mean(self, name: str = "contribution") -> dict[str, float]:
        """Mean over samples, layers and heads, ignoring layers where a group is empty."""
        values = getattr(self, name)
        return {g: float(values[..., i].nanmean()) for i, g in enumerate(self.groups)}

    def per_layer(self, name: str = "contribution") -> Float[torch.Tensor, "layer group"]:
        """Mean over samples and heads, per captured layer (NaN where a group is empty)."""
        return getattr(self, name).nanmean(dim=(0, 2))

    def summary(self) -> dict[str, Any]:
        contribution = self.group_mean("contribution")
        sink, other = contribution["visual sink"], contribution["visual non-sink"]
        return {
            "contribution": contribution,
            "attention": self.group_mean("attention"),
            "value_norm": self.group_mean("value_norm"),
            "sink_to_nonsink_contribution": sink / other if other > 0 else None,
        }


# ----------------------------------------------------------------------------- hooks


def output_projection(model: LoadedModel, layer: int) -> Float[torch.Tensor, "head d_head d_model"]:
    """W_O of ``layer`` split per head, from the family's output projection (an nn.Linear)."""
    try:
        weight = model.family.output_projection(model.bridge, layer).weight
    except AttributeError as err:
        raise UserInputError(
            f"Cannot find the attention output projection of layer {layer} on this bridge."
        ) from err
    return rearrange(
        weight.detach(), "d_model (head d_head) -> head d_head d_model", head=model.n_heads
    )


def residual_contribution(
    model: LoadedModel,
    inputs: ModelInputs,
    *,
    dims: Sequence[int],
    tau: float = DEFAULT_TAU,
    layers: Sequence[int] | None = None,
) -> ContributionResult:
    """``||alpha_ij x_j W_OV^h||`` summarised per key group, in one forward pass."""
    if not dims:
        raise UserInputError("residual_contribution needs the sink dims (see analysis.dims).")
    chosen = check_model_layers(
        "Residual contribution", range(model.n_layers) if layers is None else layers, model.n_layers
    )
    valid = inputs.stack("attention_mask")
    visual, queries = inputs.visual, inputs.queries
    size = inputs.batch_size
    shape = (size, len(chosen), model.n_heads, len(GROUPS))
    contribution, attention, norm_out = (torch.full(shape, float("nan")) for _ in range(3))
    counts = torch.zeros(size, len(chosen), len(GROUPS))
    groups: dict[int, torch.Tensor] = {}
    norms: dict[int, torch.Tensor] = {}

    def on_resid(resid: torch.Tensor, hook: Any, slot: int) -> None:
        device = resid.device
        sinks = phi(resid, dims) >= tau
        groups[slot] = key_groups(sinks, visual.to(device), valid.to(device))

    def on_value(v: torch.Tensor, hook: Any, slot: int) -> None:
        w_o = output_projection(model, chosen[slot]).to(v.device)
        norms[slot] = value_norms(v, w_o)

    def on_pattern(pattern: torch.Tensor, hook: Any, slot: int) -> None:
        mask = groups.pop(slot)
        norm = norms.pop(slot)
        c, a = group_means(pattern, norm, mask, queries.to(pattern.device))
        contribution[:, slot], attention[:, slot] = c.cpu(), a.cpu()
        norm_out[:, slot] = group_value_norms(norm, mask).cpu()
        counts[:, slot] = mask.sum(-1).float().cpu()

    fwd = []
    for slot, layer in enumerate(chosen):
        fwd.append((hooks.resid_pre(layer), bind(on_resid, slot)))
        fwd.append((hooks.attn_v(layer), bind(on_value, slot)))
        fwd.append((hooks.attn_pattern(layer), bind(on_pattern, slot)))
    forward(model, inputs, fwd, logits_to_keep=1)
    return ContributionResult(
        groups=list(GROUPS),
        contribution=contribution,
        attention=attention,
        value_norm=norm_out,
        counts=counts,
        layers=chosen,
        config={
            "model": model.describe(),
            "dims": [int(d) for d in dims],
            "tau": float(tau),
            "layers": chosen,
            "prompts": inputs.prompts,
            **provenance(),
        },
    )
