"""Figure captures: what one figure draws, kept by hooks during a single forward.

Each capture keeps only what its figure shows (a few query rows of a few heads,
three hidden states, per-token received attention), so figures of large models
never need the full [layer, head, query, key] cache of :func:`analysis.capture.capture`.

* :func:`attention_maps` / :class:`AttentionMaps`: chosen text queries' attention
  over the visual tokens, per view (a layer and a head, or the layer's mean);
* :func:`token_states` / :class:`TokenStates`: hidden states of chosen tokens;
* :func:`attention_received` / :class:`ReceivedAttention`: attention each token
  receives, with its phi;
* :func:`pick_queries`, :func:`query_positions`: which text queries to show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from einops import einsum, rearrange, repeat
from jaxtyping import Bool, Float

from analysis import hooks
from analysis.attention import ROWS_KEY, row_sparse_hook, rows_selector
from analysis.capture import HookFn, bind, forward
from analysis.checks import check_model_layers
from analysis.config import TAU
from analysis.errors import UserInputError
from analysis.interventions.base import SinkTracker
from analysis.results import ResultMixin, provenance
from analysis.sink_math import phi

if TYPE_CHECKING:
    from analysis.loading import LoadedModel
    from analysis.tokens import ModelInputs, TokenLayout


def pick_queries(n_queries: int, n: int = 4) -> list[int]:
    """``n`` indices spread evenly over ``n_queries`` text queries, first and last included."""
    if n_queries < 1:
        raise UserInputError("The sample has no text query after the image.")
    if n <= 1:
        return [n_queries - 1]
    picks = torch.linspace(0, n_queries - 1, min(n, n_queries)).round().long().tolist()
    return sorted(set(picks))


def query_positions(layout: TokenLayout, picks: Sequence[int]) -> list[int]:
    """Absolute positions of the text queries after the image chosen by index (negative from the end)."""
    available = torch.nonzero(layout.queries).flatten().tolist()
    out = []
    for pick in picks:
        if not -len(available) <= int(pick) < len(available):
            raise UserInputError(
                f"Query index {pick} out of range: the sample has {len(available)} text "
                "queries after the image."
            )
        out.append(available[int(pick)])
    return out


def _visual_index(inputs: ModelInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample visual positions padded to a common length, and the mask of real entries."""
    positions = [layout.geometry.positions for layout in inputs.layouts]
    width = max((p.numel() for p in positions), default=0)
    index = torch.zeros(len(positions), width, dtype=torch.long)
    real = torch.zeros(len(positions), width, dtype=torch.bool)
    for row, pos in enumerate(positions):
        index[row, : pos.numel()] = pos
        real[row, : pos.numel()] = True
    return index, real


@dataclass
class AttentionMaps(ResultMixin):
    """Attention from chosen text queries to every visual token, for chosen views.

    A view is one layer and one head, or the mean over the layer's heads
    (``heads[v] is None``). ``attention[b, v, q, t]`` is the post-softmax weight
    from query ``query_positions[b][q]`` to the t-th visual token of sample b in
    geometry order (NaN past the sample's ``n_visual``). ``sinks[b, v, t]``
    marks visual sinks (phi >= tau) at the input of the view's layer; all False
    when no sink dims were given.
    """

    attention: Float[torch.Tensor, "batch view query vis"]
    sinks: Bool[torch.Tensor, "batch view vis"]
    layers: list[int]
    heads: list[int | None]
    query_positions: list[list[int]]
    query_tokens: list[list[str]]
    n_visual: list[int]
    layouts: list[TokenLayout]
    tau: float | None = None
    dims: list[int] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    kind = "attention_maps"
    json_fields = ("layers", "heads", "query_positions", "query_tokens", "n_visual", "tau", "dims")
    tensor_fields = ("attention", "sinks")

    @property
    def n_views(self) -> int:
        return len(self.layers)

    def view_label(self, view: int) -> str:
        head = self.heads[view]
        where = "mean over heads" if head is None else f"head {head}"
        return f"layer {self.layers[view]}, {where}"

    def values(
        self, sample: int = 0, view: int = 0, query: int | None = None
    ) -> Float[torch.Tensor, " vis"]:
        """Attention per visual token; ``query=None`` averages the captured queries."""
        rows = self.attention[sample, view, :, : self.n_visual[sample]]
        return rows.mean(0) if query is None else rows[query]

    def visual_sinks(self, sample: int = 0, view: int = 0) -> Bool[torch.Tensor, " vis"]:
        return self.sinks[sample, view, : self.n_visual[sample]]

    def grid(
        self,
        sample: int = 0,
        view: int = 0,
        query: int | None = None,
        image: int = 0,
        tile: int | None = None,
    ) -> Float[torch.Tensor, "row col"]:
        geometry = self.layouts[sample].geometry
        return geometry.to_grid(self.values(sample, view, query), image=image, tile=tile)

    def summary(self) -> dict[str, Any]:
        out = []
        for sample in range(len(self.layouts)):
            for view in range(self.n_views):
                values = self.attention[sample, view, :, : self.n_visual[sample]]
                sinks = self.visual_sinks(sample, view)
                out.append(
                    {
                        "sample": sample,
                        "view": self.view_label(view),
                        "image_attention": values.sum(-1).tolist(),
                        "attention_on_visual_sinks": values[:, sinks].sum(-1).tolist(),
                        "n_visual_sinks": int(sinks.sum()),
                    }
                )
        return {"views": out}


def attention_maps(
    model: LoadedModel,
    inputs: ModelInputs,
    *,
    views: Sequence[tuple[int, int | None]],
    queries: Sequence[int] = (-1,),
    dims: Sequence[int] | None = None,
    tau: float = TAU,
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
) -> AttentionMaps:
    """Attention maps over the image of chosen text queries, for (layer, head) views.

    ``queries`` index each sample's text queries after the image (``-1``: the
    last prompt token). ``fwd_hooks`` run first, so the maps show attention
    under an intervention (a knock-out, VAR) when given one.
    """
    views = [(int(layer), None if head is None else int(head)) for layer, head in views]
    check_model_layers("Attention maps", [layer for layer, _ in views], model.n_layers)
    for _, head in views:
        if head is not None and not 0 <= head < model.n_heads:
            raise UserInputError(f"Head {head} out of range (model has {model.n_heads}).")
    if not views:
        raise UserInputError("attention_maps needs at least one (layer, head) view.")
    positions = [query_positions(layout, queries) for layout in inputs.layouts]
    query_index = torch.tensor(positions, dtype=torch.long)  # [batch, query]
    vis_index, vis_real = _visual_index(inputs)
    batch = inputs.batch_size
    attention = torch.full((batch, len(views), len(queries), vis_index.shape[1]), float("nan"))
    sinks = torch.zeros(batch, len(views), vis_index.shape[1], dtype=torch.bool)
    layer_sinks: dict[int, torch.Tensor] = {}
    rows = torch.arange(batch)
    wanted = rows_selector(torch.unique(query_index), inputs.input_ids.shape[1])
    # The maps flag visual sinks only (a text sink is not on the image).
    tracker = SinkTracker(
        dims=dims or (),
        tau=tau,
        scope="visual",
        valid=inputs.stack("attention_mask"),
        visual=inputs.visual,
    )

    def on_resid(resid: torch.Tensor, hook: Any, layer: int) -> None:
        flags = tracker.observe(layer, resid)
        if flags is not None:
            layer_sinks[layer] = flags.cpu()[rows[:, None], vis_index] & vis_real

    def on_pattern(pattern: torch.Tensor, hook: Any, layer: int) -> None:
        # Gather only the chosen query rows and visual key columns: [batch, head, query, vis].
        device = pattern.device
        given = hook.ctx.get(ROWS_KEY)  # row-sparse route: only wanted_rows came
        local = query_index if given is None else torch.searchsorted(given.cpu(), query_index)
        picked = pattern[rows.to(device)[:, None], :, local.to(device)]
        picked = rearrange(picked, "batch query head key -> batch head query key")
        picked = picked.gather(
            -1,
            repeat(
                vis_index.to(pattern.device),
                "batch vis -> batch head query vis",
                head=picked.shape[1],
                query=picked.shape[2],
            ),
        ).float()
        for slot, (view_layer, head) in enumerate(views):
            if view_layer != layer:
                continue
            chosen = picked.mean(1) if head is None else picked[:, head]
            attention[:, slot] = chosen.cpu().masked_fill(~vis_real[:, None, :], float("nan"))
            if layer in layer_sinks:
                sinks[:, slot] = layer_sinks[layer]

    fwd: list[tuple[str, HookFn]] = list(fwd_hooks)
    for layer in sorted({layer for layer, _ in views}):
        if dims:
            fwd.append((hooks.resid_pre(layer), bind(on_resid, layer)))
        fwd.append((hooks.attn_pattern(layer), row_sparse_hook(bind(on_pattern, layer), wanted)))
    forward(model, inputs, fwd, logits_to_keep=1)
    return AttentionMaps(
        attention=attention,
        sinks=sinks,
        layers=[layer for layer, _ in views],
        heads=[head for _, head in views],
        query_positions=positions,
        query_tokens=[
            [layout.tokens[p] for p in pos]
            for layout, pos in zip(inputs.layouts, positions, strict=True)
        ],
        n_visual=[layout.geometry.n_visual for layout in inputs.layouts],
        layouts=inputs.layouts,
        tau=float(tau) if dims else None,
        dims=None if not dims else [int(d) for d in dims],
        config={
            "model": model.describe(),
            "views": views,
            "queries": list(queries),
            "intervention_hooks": len(fwd_hooks),
            "prompts": inputs.prompts,
            **provenance(),
        },
    )


@dataclass
class TokenStates(ResultMixin):
    """Hidden states (residual stream entering ``layer``) of a few labelled tokens of one sample."""

    states: Float[torch.Tensor, "token d_model"]
    labels: list[str]
    positions: list[int]
    tokens: list[str]
    phi: list[float]
    layer: int
    sample: int
    dims: list[int]
    tau: float
    config: dict[str, Any] = field(default_factory=dict)
    kind = "token_states"
    json_fields = ("labels", "positions", "tokens", "phi", "layer", "sample", "dims", "tau")
    tensor_fields = ("states",)

    def summary(self) -> dict[str, Any]:
        magnitude = self.states.abs()
        median = magnitude.median(-1).values
        return {
            "tokens": [
                {
                    "label": label,
                    "token": token,
                    "phi": value,
                    "top_dims": magnitude[i].topk(min(5, magnitude.shape[-1])).indices.tolist(),
                    "sink_dim_over_median": [
                        float(magnitude[i, d] / median[i].clamp_min(1e-12)) for d in self.dims
                    ],
                }
                for i, (label, token, value) in enumerate(
                    zip(self.labels, self.tokens, self.phi, strict=True)
                )
            ]
        }


def token_states(
    model: LoadedModel,
    inputs: ModelInputs,
    *,
    layer: int,
    dims: Sequence[int],
    tau: float = TAU,
    sample: int = 0,
    positions: dict[str, int] | None = None,
) -> TokenStates:
    """Hidden states of BOS, a visual sink and a non-sink visual token at ``layer``'s input.

    The visual sink is the visual token with the highest phi; the non-sink one
    is the visual token with the median phi among non-sinks. ``positions``
    (label -> absolute position) replaces the automatic choice.
    """
    check_model_layers("Received attention", [layer], model.n_layers)
    layout = inputs.layouts[sample]
    store: dict[str, torch.Tensor] = {}

    def keep(resid: torch.Tensor, hook: Any) -> None:
        store["resid"] = resid[sample].detach().float().cpu()

    forward(model, inputs, [(hooks.resid_pre(layer), keep)], logits_to_keep=1)
    resid = store["resid"]
    scores = phi(resid, dims)
    if positions is None:
        positions = {}
        if layout.bos_position is not None:
            positions["BOS"] = layout.bos_position
        visual = layout.geometry.positions
        if visual.numel():
            top = visual[scores[visual].argmax()]
            sink_label = "visual sink" if scores[top] >= tau else "visual, highest phi (no sink)"
            positions[sink_label] = int(top)
            others = visual[scores[visual] < tau]
            if others.numel():
                order = scores[others].argsort()
                positions["visual non-sink"] = int(others[order[others.numel() // 2]])
    chosen = list(positions.items())
    return TokenStates(
        states=resid[[p for _, p in chosen]],
        labels=[label for label, _ in chosen],
        positions=[p for _, p in chosen],
        tokens=[layout.tokens[p] for _, p in chosen],
        phi=[float(scores[p]) for _, p in chosen],
        layer=int(layer),
        sample=sample,
        dims=[int(d) for d in dims],
        tau=float(tau),
        config={"model": model.describe(), "prompt": inputs.prompts[sample], **provenance()},
    )


@dataclass
class ReceivedAttention(ResultMixin):
    """phi of every token and the attention it receives, per layer.

    ``received[b, l, j]`` is alpha_ij averaged over the heads of layer l and the
    text queries i after the image (queries before j contribute 0, causal).
    """

    phi: Float[torch.Tensor, "batch layer pos"]
    received: Float[torch.Tensor, "batch layer pos"]
    visual: Bool[torch.Tensor, "batch pos"]
    valid: Bool[torch.Tensor, "batch pos"]
    bos: Bool[torch.Tensor, "batch pos"]
    layers: list[int]
    tau: float
    dims: list[int]
    config: dict[str, Any] = field(default_factory=dict)
    kind = "received_attention"
    json_fields = ("layers", "tau", "dims")
    tensor_fields = ("phi", "received", "visual", "valid", "bos")

    def groups(self) -> dict[str, Bool[torch.Tensor, "batch layer pos"]]:
        """Token groups per layer: BOS, other text, visual sink, visual non-sink."""
        sink = self.phi >= self.tau
        valid = self.valid[:, None, :].expand_as(sink)
        visual = self.visual[:, None, :] & valid
        bos = self.bos[:, None, :] & valid
        return {
            "BOS": bos,
            "text": valid & ~visual & ~bos,
            "visual sink": visual & sink,
            "visual non-sink": visual & ~sink,
        }

    def summary(self) -> dict[str, Any]:
        out = {}
        for name, mask in self.groups().items():
            per_layer = []
            for slot, layer in enumerate(self.layers):
                chosen = mask[:, slot]
                mean = float(self.received[:, slot][chosen].mean()) if chosen.any() else None
                per_layer.append({"layer": layer, "mean_received": mean, "n": int(chosen.sum())})
            out[name] = per_layer
        return {"per_group": out}


def attention_received(
    model: LoadedModel,
    inputs: ModelInputs,
    *,
    dims: Sequence[int],
    tau: float = TAU,
    layers: Sequence[int] | None = None,
) -> ReceivedAttention:
    """phi and the attention each token receives from the text queries after the image."""
    chosen = list(range(model.n_layers)) if layers is None else [int(x) for x in layers]
    batch, n_pos = inputs.input_ids.shape
    phis = torch.zeros(batch, len(chosen), n_pos)
    received = torch.zeros_like(phis)
    queries = inputs.queries.float()
    n_queries = queries.sum(-1).clamp_min(1)
    wanted = rows_selector(torch.nonzero(inputs.queries.any(dim=0)).flatten(), n_pos)

    def on_resid(resid: torch.Tensor, hook: Any, slot: int) -> None:
        phis[:, slot] = phi(resid, dims).cpu()

    def on_pattern(pattern: torch.Tensor, hook: Any, slot: int) -> None:
        given = hook.ctx.get(ROWS_KEY)  # row-sparse route: only the query rows came
        q = (queries if given is None else queries.index_select(1, given.cpu())).to(pattern.device)
        per_key = einsum(pattern.float(), q, "batch head query key, batch query -> batch key")
        received[:, slot] = (
            per_key / (n_queries.to(pattern.device)[:, None] * pattern.shape[1])
        ).cpu()

    fwd: list[tuple[str, HookFn]] = []
    for slot, layer in enumerate(chosen):
        fwd.append((hooks.resid_pre(layer), bind(on_resid, slot)))
        fwd.append((hooks.attn_pattern(layer), row_sparse_hook(bind(on_pattern, slot), wanted)))
    forward(model, inputs, fwd, logits_to_keep=1)
    valid = inputs.stack("attention_mask")
    bos = inputs.bos
    return ReceivedAttention(
        phi=phis * valid[:, None, :],
        received=received * valid[:, None, :],
        visual=inputs.visual,
        valid=valid,
        bos=bos,
        layers=chosen,
        tau=float(tau),
        dims=[int(d) for d in dims],
        config={
            "model": model.describe(),
            "dims": [int(d) for d in dims],
            "tau": float(tau),
            "prompts": inputs.prompts,
            **provenance(),
        },
    )
