"""``baseline``: no intervention; with statistics on, its prefill records sinks and head scores.

In an evaluation run the baseline pass collects, per item and without
keeping any attention pattern, the visual sink count of every layer and the
head scores s, r and the image-centric fraction (:class:`PrefillStats`); the
run summary's ``sinks`` and ``heads`` entries come from those records, the
heads in :func:`analysis.heads.rank_heads` order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis.config import MIN_SELECTED_FRACTION, TOP_HEADS
from analysis.heads import HeadStatsHooks, rank_heads
from analysis.interventions.base import (
    BuildContext,
    ConditionError,
    ConditionSpec,
    Intervention,
    NoIntervention,
    ParseContext,
    refuse_unknown,
    register,
)

if TYPE_CHECKING:
    from analysis.loading import LoadedModel
    from analysis.tokens import ModelInputs


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

    def summary(self) -> dict[str, Any]:
        return {"visual_sinks_per_layer": self.sink_counts.sum(0).tolist()}


@register
@dataclass(frozen=True)
class BaselineSpec(ConditionSpec):
    """No hooks on the model; the reference every other condition is paired with."""

    name: str = "baseline"
    kind = "baseline"
    family = "baseline"
    heads = ("baseline",)
    grammar = "baseline"

    @classmethod
    def parse(
        cls, head: str, options: dict[str, str], token: str, context: ParseContext
    ) -> list[BaselineSpec]:
        refuse_unknown(token, options, ())
        return [cls()]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.family}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BaselineSpec:
        if data.get("kind") != cls.family or data.get("name", "baseline") != "baseline":
            raise ConditionError(f"Not a baseline condition: {dict(data)!r}.")
        return cls()

    def build(self, model: LoadedModel, inputs: ModelInputs, context: BuildContext) -> Intervention:
        if not context.collect_stats:
            return NoIntervention(inputs.batch_size)
        if not context.dims:
            raise ConditionError("The baseline's statistics need sink dims.")
        return PrefillStats(
            model,
            inputs,
            dims=context.dims,
            tau=context.tau,
            rho=context.rho,
            min_image_attention=context.min_image_attention,
        )

    @classmethod
    def run_summary(cls, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return prefill_summary(records)


def prefill_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
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
    scored = [r for r in rows if "heads" in r]
    if scored:
        heads = [r["heads"] for r in scored]
        means = {k: np.mean([h[k] for h in heads], axis=0) for k in ("s", "r", "selected")}
        n_layers = means["s"].shape[0]
        # The share of items whose layer input holds a visual sink, as HeadScores has it.
        with_sink = (
            np.mean([np.asarray(r["sinks"]) > 0 for r in scored], axis=0)
            if all("sinks" in r for r in scored)
            else np.ones(n_layers)
        )
        ranked = [
            {
                "layer": layer,
                "head": head,
                **{k: float(v[layer, head]) for k, v in means.items()},
                "layer_has_visual_sink": float(with_sink[layer]),
            }
            for layer, head in rank_heads(means["selected"], means["r"], with_sink)
        ]
        out["heads"] = {
            "n_items": len(heads),
            "image_centric": [
                [row["layer"], row["head"]]
                for row in ranked
                if row["selected"] >= MIN_SELECTED_FRACTION
            ],
            "top": ranked[:TOP_HEADS],
            "mean": {k: v.tolist() for k, v in means.items()},
        }
    return out
