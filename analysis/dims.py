"""Sink (massive-activation) dimensions: discovery and a registry of known ones.

Following Sun et al. 2024 ("Massive Activations in Large Language Models"), a
dimension is massive at a layer when its peak magnitude over tokens is orders
of magnitude above the median magnitude of that layer's hidden states (and,
optionally, above an absolute floor; Sun et al. use 100 for LLaMA-2-7B). Such
dimensions are fixed by the base LLM and show up on BOS and on visual sink
tokens; the set we report is the one consistent across layers.

Entry points: :func:`discover_dims` (returns :class:`DimsResult`),
:func:`sink_dims` (registry first, discovery otherwise, warning on
disagreement) and :func:`registry_entry`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float

from analysis import hooks
from analysis.capture import bind, forward, progress
from analysis.results import ResultMixin, provenance

if TYPE_CHECKING:
    from analysis.loading import LoadedModel
    from analysis.tokens import ModelInputs

REGISTRY_PATH = Path(__file__).resolve().parent / "data" / "sink_dims.json"
TOKEN_GROUPS = ("bos", "visual", "text")


# ----------------------------------------------------------------------------- registry


@cache
def load_registry() -> list[dict[str, Any]]:
    return json.loads(REGISTRY_PATH.read_text())["entries"]


def registry_entry(model: LoadedModel | str) -> dict[str, Any] | None:
    """The registry entry for a model (by HF id or ``_name_or_path``), or None."""
    names = {model} if isinstance(model, str) else _model_names(model)
    for entry in load_registry():
        if names & set(entry["model_ids"]):
            return entry
    return None


def _model_names(model: LoadedModel) -> set[str]:
    names = {model.name_or_path}
    for config in (model.config, model.config.get_text_config()):
        name = getattr(config, "_name_or_path", None)
        if name:
            names.add(str(name))
    return names


# ----------------------------------------------------------------------------- pure math


@dataclass(frozen=True)
class DimThresholds:
    """When a dimension counts as massive (defaults work for LLaMA-7B and the demo).

    Attributes:
        min_ratio: peak |x_d| over the median |x| of the layer's hidden states.
            Sun et al. report ~1000x for LLaMA-2; 100 leaves headroom.
        min_abs: absolute floor on the peak (Sun et al.: 100 for LLaMA-2-7B);
            0 disables it, which keeps discovery scale-free for small models.
        max_token_fraction: a massive dim is large on few tokens; a dim above half
            its peak on more than this fraction of tokens is a bias, not a sink dim.
        min_layer_fraction: fraction of the scanned layers in which a dim must be
            massive to be reported.
        first_layer: first layer scanned; massive activations appear after the
            first one or two layers, so layer 0's input (the embeddings) is skipped.
    """

    min_ratio: float = 100.0
    min_abs: float = 0.0
    max_token_fraction: float = 0.25
    min_layer_fraction: float = 0.5
    first_layer: int = 1


def layer_dim_stats(
    resid: Float[torch.Tensor, "batch pos d_model"],
    groups: Bool[torch.Tensor, "group batch pos"],
    valid: Bool[torch.Tensor, "batch pos"],
    min_ratio: float,
) -> tuple[
    Float[torch.Tensor, "group d_model"], Float[torch.Tensor, ""], Float[torch.Tensor, " d_model"]
]:
    """Statistics of one layer's residual stream for one batch.

    Returns, per token group, the peak |x_d|; the median |x| over valid tokens
    and dims; and per dim the number of valid tokens where |x_d| reaches
    ``min_ratio`` times that median (a sink dim is massive on few tokens, a
    bias dim on all of them).
    """
    magnitude = resid.detach().float().abs()
    peaks = torch.stack(
        [
            torch.where(group[..., None], magnitude, 0.0).amax(dim=(0, 1))
            for group in groups.unbind(0)
        ]
    )
    median = magnitude[valid].median()
    counts = ((magnitude >= min_ratio * median) & valid[..., None]).sum(dim=(0, 1)).float()
    return peaks, median, counts


def massive_mask(
    peak: Float[torch.Tensor, "layer d_model"],
    median: Float[torch.Tensor, " layer"],
    token_fraction: Float[torch.Tensor, "layer d_model"],
    thresholds: DimThresholds,
) -> Bool[torch.Tensor, "layer d_model"]:
    """Which (layer, dim) pairs are massive under ``thresholds``."""
    ratio = peak / median.clamp_min(1e-12)[:, None]
    return (
        (ratio >= thresholds.min_ratio)
        & (peak >= thresholds.min_abs)
        & (token_fraction <= thresholds.max_token_fraction)
    )


# ----------------------------------------------------------------------------- discovery


@dataclass
class DimsResult(ResultMixin):
    """Massive-activation dims found over a calibration set.

    ``peak`` holds, per layer, token group (``bos``, ``visual``, ``text``) and
    dim, the largest |x_d|; ``median`` the median |x| of the layer's hidden
    states; ``score`` the fraction of scanned layers where the dim is massive.
    """

    dims: list[int]
    score: Float[torch.Tensor, " d_model"]
    peak: Float[torch.Tensor, "layer group d_model"]
    median: Float[torch.Tensor, " layer"]
    token_fraction: Float[torch.Tensor, "layer d_model"]
    massive: Bool[torch.Tensor, "layer d_model"]
    layers: list[int]
    groups: tuple[str, ...] = TOKEN_GROUPS
    registry: dict[str, Any] | None = None
    agrees_with_registry: bool | None = None
    config: dict[str, Any] = field(default_factory=dict)
    kind = "dims"
    json_fields = ("dims", "layers", "groups", "registry", "agrees_with_registry")
    tensor_fields = ("score", "peak", "median", "token_fraction", "massive")

    def ratio(self, group: str = "all") -> Float[torch.Tensor, "layer d_model"]:
        """Peak / median per layer and dim, for one token group or all."""
        peak = self.peak.amax(1) if group == "all" else self.peak[:, self.groups.index(group)]
        return peak / self.median.clamp_min(1e-12)[:, None]

    def per_dim(self, dims: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """Per-dim scores and median-over-layers ratios on BOS / visual / text tokens."""
        chosen = list(self.dims if dims is None else dims)
        rows = []
        for dim in chosen:
            row: dict[str, Any] = {"dim": int(dim), "score": float(self.score[dim])}
            for group in self.groups:
                row[f"ratio_{group}"] = float(self.ratio(group)[:, dim].median())
            row["layers_massive"] = [
                layer
                for layer, hit in zip(self.layers, self.massive[:, dim].tolist(), strict=True)
                if hit
            ]
            rows.append(row)
        return rows

    def top_dims(self, k: int = 8) -> list[int]:
        order = torch.argsort(self.ratio().median(0).values, descending=True)
        return [int(d) for d in order[:k]]

    def summary(self) -> dict[str, Any]:
        return {"dims": self.per_dim(), "top_by_ratio": self.per_dim(self.top_dims(5))}


def discover_dims(
    model: LoadedModel,
    inputs: ModelInputs | Sequence[ModelInputs],
    *,
    thresholds: DimThresholds | None = None,
    layers: Sequence[int] | None = None,
    show_progress: bool = True,
) -> DimsResult:
    """Find massive-activation dims from residual streams over a calibration set.

    ``inputs`` is one batch or several (e.g. one per image); statistics are
    reduced inside hooks, so memory does not grow with the calibration set.
    """
    thresholds = thresholds or DimThresholds()
    batches = [inputs] if not isinstance(inputs, Sequence) else list(inputs)
    if not batches:
        raise ValueError("discover_dims needs at least one batch of inputs.")
    scanned = (
        list(range(min(thresholds.first_layer, model.n_layers - 1), model.n_layers))
        if layers is None
        else sorted({int(x) for x in layers})
    )
    for layer in scanned:
        if not 0 <= layer < model.n_layers:
            raise ValueError(f"Layer {layer} out of range for a {model.n_layers}-layer model.")
    n_layers, d_model = len(scanned), model.d_model
    peak = torch.zeros(n_layers, len(TOKEN_GROUPS), d_model)
    median_sum = torch.zeros(n_layers)
    counts = torch.zeros(n_layers, d_model)
    n_tokens = 0
    for batch in progress(batches, len(batches), "dims", show_progress):
        groups, valid = _token_groups(model, batch)
        n_valid = int(valid.sum())
        n_tokens += n_valid

        def reduce(
            resid: torch.Tensor,
            hook: Any,
            slot: int,
            groups: torch.Tensor = groups,
            valid: torch.Tensor = valid,
            n_valid: int = n_valid,
        ) -> None:
            device = resid.device
            p, med, c = layer_dim_stats(
                resid, groups.to(device), valid.to(device), thresholds.min_ratio
            )
            peak[slot] = torch.maximum(peak[slot], p.cpu())
            median_sum[slot] += med.cpu() * n_valid  # token-weighted mean of batch medians
            counts[slot] += c.cpu()

        forward(
            model,
            batch,
            [(hooks.resid_pre(layer), bind(reduce, i)) for i, layer in enumerate(scanned)],
            logits_to_keep=1,
        )
    median = median_sum / max(n_tokens, 1)
    token_fraction = counts / max(n_tokens, 1)
    massive = massive_mask(peak.amax(1), median, token_fraction, thresholds)
    score = massive.float().mean(0)
    dims = [int(d) for d in torch.nonzero(score >= thresholds.min_layer_fraction).flatten()]
    dims.sort(key=lambda d: -float(score[d]))
    known = registry_entry(model)
    agrees = None if known is None else sorted(known["dims"]) == sorted(dims)
    return DimsResult(
        dims=sorted(dims),
        score=score,
        peak=peak,
        median=median,
        token_fraction=token_fraction,
        massive=massive,
        layers=scanned,
        registry=known,
        agrees_with_registry=agrees,
        config={
            "model": model.describe(),
            "thresholds": thresholds.__dict__,
            "n_batches": len(batches),
            "n_samples": sum(b.batch_size for b in batches),
            "prompts": sorted({p for b in batches for p in b.prompts}),
            **provenance(),
        },
    )


def _token_groups(
    model: LoadedModel, inputs: ModelInputs
) -> tuple[Bool[torch.Tensor, "group batch pos"], Bool[torch.Tensor, "batch pos"]]:
    valid = inputs.stack("attention_mask")
    visual = inputs.visual
    bos = torch.zeros_like(valid)
    for index, layout in enumerate(inputs.layouts):
        if layout.bos_position is not None:
            bos[index, layout.bos_position] = True
    text = valid & ~visual & ~bos
    return torch.stack([bos, visual, text]), valid


def sink_dims(
    model: LoadedModel,
    calibration: ModelInputs | Sequence[ModelInputs] | None = None,
    *,
    dims: Sequence[int] | None = None,
    thresholds: DimThresholds | None = None,
    discover: bool | None = None,
) -> list[int]:
    """The sink dims to use for ``model``.

    Explicit ``dims`` win. Otherwise the registry entry is used when the model
    is known; with ``calibration`` inputs the dims are also discovered and a
    warning names any disagreement. Unknown models need calibration inputs.
    """
    if dims is not None:
        chosen = sorted({int(d) for d in dims})
        bad = [d for d in chosen if not 0 <= d < model.d_model]
        if not chosen or bad:
            raise ValueError(
                f"Sink dims must be non-empty and in [0, {model.d_model}); got {list(dims)}."
            )
        return chosen
    known = registry_entry(model)
    if discover is None:
        discover = calibration is not None
    found: list[int] | None = None
    if discover:
        if calibration is None:
            raise ValueError("Discovering sink dims needs calibration inputs (images + prompts).")
        found = discover_dims(model, calibration, thresholds=thresholds, show_progress=False).dims
    if known is not None:
        if found is not None and sorted(found) != sorted(known["dims"]):
            warnings.warn(
                f"Discovered sink dims {found} differ from the registry's {known['dims']} "
                f"({known['key']}); using the registry. Pass dims=... to override.",
                stacklevel=2,
            )
        return list(known["dims"])
    if found is None:
        raise ValueError(
            f"{model.name_or_path} is not in the sink-dim registry; pass calibration inputs "
            "to discover its sink dims, or dims=[...] explicitly."
        )
    if not found:
        raise ValueError(
            "No massive-activation dims were found on the calibration set; this model may "
            "have none (random weights) or the thresholds are too strict (see DimThresholds)."
        )
    return found
