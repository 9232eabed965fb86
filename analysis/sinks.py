"""Sink tokens: phi per token and layer, sink sets, maps, stability and validation.

For the hidden state x entering layer l (the residual stream),

    phi(x) = max over d in D_sink of |x_d / RMS(x)|,   RMS(x) = sqrt(mean(x^2) + eps)

(no learned norm weight, eps 1e-6, float32). Token j is a sink at layer l when
phi >= tau (20 in the paper). Visual sinks are sinks at visual positions; text
sinks (BOS, some delimiters) are kept apart.

Entry point: :func:`find_sinks` returns :class:`SinkResult`. Validation
helpers (:func:`label_scores`, :func:`validate_sinks`, :func:`tau_sweep`)
work on results without rerunning the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float

from analysis import config, hooks
from analysis.attention import ROWS_KEY, row_sparse_hook, rows_selector
from analysis.capture import bind, forward
from analysis.checks import check_settings
from analysis.config import MIN_LAYER_FRACTION
from analysis.errors import UserInputError
from analysis.results import ResultMixin, provenance
from analysis.sink_math import RMS_EPS, phi
from analysis.sink_math import sink_mask as sink_mask  # re-exported: the public sink test

if TYPE_CHECKING:
    from analysis.loading import LoadedModel
    from analysis.tokens import ModelInputs, TokenLayout

DEFAULT_TAU = config.TAU


@dataclass
class SinkResult(ResultMixin):
    """phi for every token at every layer input, plus the token layout to read it.

    ``phi`` is 0 at padding positions; every boolean accessor masks padding.
    """

    phi: Float[torch.Tensor, "batch layer pos"]
    tau: float
    dims: list[int]
    visual: Bool[torch.Tensor, "batch pos"]
    valid: Bool[torch.Tensor, "batch pos"]
    bos: Bool[torch.Tensor, "batch pos"]
    layouts: list[TokenLayout]
    config: dict[str, Any] = field(default_factory=dict)
    kind = "sinks"
    json_fields = ("tau", "dims")
    tensor_fields = ("phi", "visual", "valid", "bos")

    @property
    def n_layers(self) -> int:
        return int(self.phi.shape[1])

    def is_sink(self, tau: float | None = None) -> Bool[torch.Tensor, "batch layer pos"]:
        threshold = self.tau if tau is None else tau
        return (self.phi >= threshold) & self.valid[:, None, :]

    def visual_sinks(self, tau: float | None = None) -> Bool[torch.Tensor, "batch layer pos"]:
        return self.is_sink(tau) & self.visual[:, None, :]

    def text_sinks(self, tau: float | None = None) -> Bool[torch.Tensor, "batch layer pos"]:
        return self.is_sink(tau) & ~self.visual[:, None, :]

    def counts(self) -> dict[str, torch.Tensor]:
        """Per sample and layer: number of visual and text sinks, [batch, layer] each."""
        return {
            "visual": self.visual_sinks().sum(-1),
            "text": self.text_sinks().sum(-1),
        }

    def sink_layers(self, min_count: int = 1) -> list[int]:
        """Layers whose input has at least ``min_count`` visual sinks in every sample."""
        counts = self.visual_sinks().sum(-1)
        return [
            layer for layer in range(self.n_layers) if bool((counts[:, layer] >= min_count).all())
        ]

    def consensus(
        self, layers: Sequence[int] | None = None, min_fraction: float = MIN_LAYER_FRACTION
    ) -> Bool[torch.Tensor, "batch pos"]:
        """Tokens that are sinks in at least ``min_fraction`` of ``layers`` (default 2 .. L-1)."""
        chosen = (
            list(range(min(2, self.n_layers - 1), self.n_layers))
            if layers is None
            else list(layers)
        )
        return self.is_sink()[:, chosen].float().mean(1) >= min_fraction

    def visual_phi(self, sample: int, layer: int) -> Float[torch.Tensor, " vis"]:
        """phi of the visual tokens of ``sample`` in geometry order."""
        return self.phi[sample, layer, self.layouts[sample].geometry.positions]

    def sink_map(
        self, sample: int = 0, layer: int | None = None, image: int = 0, tile: int | None = None
    ) -> Float[torch.Tensor, "row col"]:
        """1.0 where a visual token is a sink, on the image grid (NaN where no token).

        With ``layer=None`` the map shows the consensus over layers 2 .. L-1.
        """
        geometry = self.layouts[sample].geometry
        if layer is None:
            flags = self.consensus()[sample, geometry.positions]
        else:
            flags = self.is_sink()[sample, layer, geometry.positions]
        return geometry.to_grid(flags.float(), image=image, tile=tile)

    def phi_map(
        self, sample: int, layer: int, image: int = 0, tile: int | None = None
    ) -> Float[torch.Tensor, "row col"]:
        geometry = self.layouts[sample].geometry
        return geometry.to_grid(self.visual_phi(sample, layer), image=image, tile=tile)

    def stability(self) -> Float[torch.Tensor, "batch layer"]:
        """Jaccard overlap of each layer's visual sink set with the previous layer's.

        Entry [b, l] compares layers l-1 and l (NaN at l = 0 and where both sets are empty).
        """
        sinks = self.visual_sinks().float()
        inter = (sinks[:, 1:] * sinks[:, :-1]).sum(-1)
        union = ((sinks[:, 1:] + sinks[:, :-1]) > 0).float().sum(-1)
        jaccard = torch.where(union > 0, inter / union.clamp_min(1), float("nan"))
        return torch.cat([torch.full_like(jaccard[:, :1], float("nan")), jaccard], dim=1)

    def summary(self) -> dict[str, Any]:
        counts = self.counts()
        per_layer = [
            {
                "layer": layer,
                "visual_sinks_mean": float(counts["visual"][:, layer].float().mean()),
                "text_sinks_mean": float(counts["text"][:, layer].float().mean()),
                "bos_is_sink": bool((self.is_sink()[:, layer] & self.bos).any(-1).all()),
            }
            for layer in range(self.n_layers)
        ]
        samples = []
        consensus = self.consensus()
        for index, layout in enumerate(self.layouts):
            flags = consensus[index]
            text_tokens = [
                layout.tokens[p]
                for p in torch.nonzero(flags & ~self.visual[index]).flatten().tolist()
            ]
            samples.append(
                {
                    "visual_sinks_consensus": int((flags & self.visual[index]).sum()),
                    "n_visual": layout.geometry.n_visual,
                    "text_sink_tokens": text_tokens,
                    "visual_sinks_per_layer": counts["visual"][index].tolist(),
                }
            )
        return {"per_layer": per_layer, "samples": samples}


def find_sinks(
    model: LoadedModel,
    inputs: ModelInputs,
    *,
    dims: Sequence[int],
    tau: float = DEFAULT_TAU,
    eps: float = RMS_EPS,
) -> SinkResult:
    """phi at every layer input for every token of ``inputs`` (one forward pass).

    ``dims`` come from :func:`analysis.dims.sink_dims` (registry, discovery or explicit).
    """
    check_settings(tau=tau)
    bad = [d for d in dims if not 0 <= int(d) < model.d_model]
    if not dims or bad:
        raise UserInputError(
            f"Sink dims must be non-empty and in [0, {model.d_model}); got {list(dims)}."
        )
    batch, n_pos = inputs.input_ids.shape
    phis = torch.zeros(batch, model.n_layers, n_pos)

    def record(resid: torch.Tensor, hook: Any, layer: int) -> None:
        phis[:, layer] = phi(resid, dims, eps).cpu()

    fwd = [(hooks.resid_pre(layer), bind(record, layer)) for layer in range(model.n_layers)]
    forward(model, inputs, fwd, logits_to_keep=1)
    valid = inputs.stack("attention_mask")
    bos = inputs.bos
    return SinkResult(
        phi=phis * valid[:, None, :],
        tau=float(tau),
        dims=[int(d) for d in dims],
        visual=inputs.visual,
        valid=valid,
        bos=bos,
        layouts=inputs.layouts,
        config={
            "model": model.describe(),
            "tau": float(tau),
            "eps": eps,
            "dims": [int(d) for d in dims],
            "prompts": inputs.prompts,
            **provenance(),
        },
    )


# ----------------------------------------------------------------------------- validation


def label_scores(
    predicted: Bool[torch.Tensor, " n"], truth: Bool[torch.Tensor, " n"]
) -> dict[str, float]:
    """Precision, recall and F1 of boolean labels (1.0 when both are empty)."""
    if predicted.shape != truth.shape:
        raise UserInputError(
            f"Shape mismatch: predicted {tuple(predicted.shape)} vs truth {tuple(truth.shape)}."
        )
    tp = int((predicted & truth).sum())
    n_pred, n_true = int(predicted.sum()), int(truth.sum())
    precision = tp / n_pred if n_pred else float(n_true == 0)
    recall = tp / n_true if n_true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": tp,
        "predicted": n_pred,
        "true": n_true,
    }


def validate_sinks(
    result: SinkResult,
    truth: Sequence[Bool[torch.Tensor, " vis"]],
    *,
    layers: Sequence[int] | None = None,
    tau: float | None = None,
) -> list[list[dict[str, float]]]:
    """Label scores of visual sinks against per-sample ground-truth masks over visual tokens.

    Returns ``scores[sample][i]`` for the i-th layer of ``layers`` (default 2 .. L-1).
    """
    if len(truth) != len(result.layouts):
        raise UserInputError(
            f"Need one truth mask per sample ({len(result.layouts)}), got {len(truth)}."
        )
    chosen = (
        list(range(min(2, result.n_layers - 1), result.n_layers))
        if layers is None
        else list(layers)
    )
    sinks = result.is_sink(tau)
    scores = []
    for index, layout in enumerate(result.layouts):
        positions = layout.geometry.positions
        if truth[index].shape != positions.shape:
            raise UserInputError(
                f"Truth mask of sample {index} has {truth[index].numel()} entries; "
                f"the sample has {positions.numel()} visual tokens."
            )
        scores.append(
            [label_scores(sinks[index, layer, positions], truth[index].bool()) for layer in chosen]
        )
    return scores


def tau_sweep(
    result: SinkResult,
    truth: Sequence[Bool[torch.Tensor, " vis"]],
    taus: Sequence[float],
    *,
    layers: Sequence[int] | None = None,
) -> list[dict[str, float]]:
    """Mean precision / recall / F1 over samples and layers for each tau (no rerun needed)."""
    rows = []
    for tau in taus:
        flat = [
            s for sample in validate_sinks(result, truth, layers=layers, tau=tau) for s in sample
        ]
        rows.append(
            {
                "tau": float(tau),
                **{k: sum(s[k] for s in flat) / len(flat) for k in ("precision", "recall", "f1")},
            }
        )
    return rows


def attention_mass_truth(
    model: LoadedModel,
    inputs: ModelInputs,
    *,
    layers: Sequence[int] | None = None,
    factor: float = 5.0,
) -> list[Bool[torch.Tensor, " vis"]]:
    """A model-agnostic reference for sink labels: visual tokens that receive outsized attention.

    A visual token is labelled a sink when the attention it receives from text
    queries after the image, averaged over heads, queries and ``layers``
    (default 2 .. L-1), is at least ``factor`` times the mean over visual tokens.
    """
    chosen = (
        list(range(min(2, model.n_layers - 1), model.n_layers)) if layers is None else list(layers)
    )
    queries = inputs.queries
    received = torch.zeros(inputs.input_ids.shape, dtype=torch.float32)

    def accumulate(pattern: torch.Tensor, hook: Any) -> None:
        given = hook.ctx.get(ROWS_KEY)  # row-sparse route: only the query rows came
        q = (queries if given is None else queries.index_select(1, given.cpu())).float()
        q = q.to(pattern.device)
        per_key = torch.einsum("bhqk,bq->bk", pattern.float(), q) / (
            q.sum(-1, keepdim=True) * pattern.shape[1]
        ).clamp_min(1)
        received.add_(per_key.cpu())

    wanted = rows_selector(torch.nonzero(queries.any(dim=0)).flatten(), inputs.input_ids.shape[1])
    fwd = [(hooks.attn_pattern(layer), row_sparse_hook(accumulate, wanted)) for layer in chosen]
    forward(model, inputs, fwd, logits_to_keep=1)
    truth = []
    for index, layout in enumerate(inputs.layouts):
        values = received[index, layout.geometry.positions]
        truth.append(values >= factor * values.mean())
    return truth
