"""Sink (massive-activation) dimensions: discovery and a registry of known ones.

Following Sun et al. 2024 ("Massive Activations in Large Language Models"), a
dimension is massive at a layer when its peak magnitude over tokens is orders
of magnitude above the median magnitude of that layer's hidden states. Such
dimensions are fixed by the base LLM and show up on BOS and on visual sink
tokens; the set we report is the one consistent across layers.

The decision rule (per scanned layer l and dim d; :class:`DimThresholds`):

1. **massive**: ``peak_d >= min_ratio * median`` where ``peak_d`` is the
   largest ``|x_d|`` over all tokens and ``median`` the median ``|x|`` over
   every token and dim of the layer (and ``peak_d >= min_abs``, off by
   default). A few sink dims out of thousands cannot move that median, however
   many tokens are sinks, so the ratio is not diluted by sink-heavy images.
2. **not a bias**: ``d`` is large (``|x_d| >= min_ratio * median``) on at most
   ``max_text_fraction`` of the *ordinary text tokens*: the valid tokens that
   are neither BOS nor visual. A bias dim is large on every token, ordinary
   text included; a sink dim is large on BOS, on visual sinks and on at most a
   few delimiters. The fraction is judged on text tokens and never on visual
   ones because on a calibration image that is mostly plain background (a
   document, a product shot, a screenshot) most visual tokens *are* sinks: a
   cap on the fraction of all tokens (the old rule, 25%) rejects exactly the
   sink dims of such images. BOS is excluded because it is the canonical sink.
   A calibration set without ordinary text tokens cannot tell a bias from a
   sink dim and is refused.
3. **consistent**: ``d`` passes 1 and 2 in at least ``min_layer_fraction`` of
   the scanned layers (layer 0's input, the embeddings, is skipped by default).

When no dim passes, :func:`discover_dims` warns (:class:`NoSinkDimsWarning`)
naming the closest candidate, the test it failed and what to try, and
:func:`sink_dims` refuses (:class:`NoSinkDimsError`) unless dims are given.

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
from analysis.checks import FRACTION, check_layers, check_model_layers, check_settings
from analysis.config import DIM_MIN_ABS, DIM_MIN_RATIO, MAX_TEXT_FRACTION, MIN_LAYER_FRACTION
from analysis.errors import UserInputError
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
    """When a dimension counts as massive (see the module docstring for the rule).

    Attributes:
        min_ratio: peak |x_d| over the median |x| of the layer's hidden states.
            Sun et al. report ~1000x for LLaMA-2; 100 leaves headroom.
        min_abs: absolute floor on the peak (Sun et al.: 100 for LLaMA-2-7B);
            0 disables it, which keeps discovery scale-free for small models.
        max_text_fraction: a dim that reaches ``min_ratio`` times the median on
            more than this fraction of the ordinary text tokens (not BOS, not
            visual) is a bias, not a sink dim. Visual tokens are not counted:
            on plain-background images most of them are sinks.
        min_layer_fraction: fraction of the scanned layers in which a dim must be
            massive to be reported.
        first_layer: first layer scanned; massive activations appear after the
            first one or two layers, so layer 0's input (the embeddings) is skipped.
    """

    min_ratio: float = DIM_MIN_RATIO
    min_abs: float = DIM_MIN_ABS
    max_text_fraction: float = MAX_TEXT_FRACTION
    min_layer_fraction: float = MIN_LAYER_FRACTION
    first_layer: int = 1

    def __post_init__(self) -> None:
        check_settings(min_ratio=self.min_ratio, min_abs=self.min_abs)
        for name in ("max_text_fraction", "min_layer_fraction"):
            FRACTION.check(name, getattr(self, name))
        check_layers("first_layer", [self.first_layer])


class NoSinkDimsWarning(UserWarning):
    """Discovery found no sink dim; the message names the closest candidate."""


class NoSinkDimsError(UserInputError):
    """A command that needs sink dims got none (discovery found none, none were given)."""


def layer_dim_stats(
    resid: Float[torch.Tensor, "batch pos d_model"],
    groups: Bool[torch.Tensor, "group batch pos"],
    valid: Bool[torch.Tensor, "batch pos"],
    min_ratio: float,
) -> tuple[
    Float[torch.Tensor, "group d_model"], Float[torch.Tensor, ""], Float[torch.Tensor, " d_model"]
]:
    """Statistics of one layer's residual stream for one batch.

    Returns, per token group (``TOKEN_GROUPS``), the peak |x_d|; the median |x|
    over valid tokens and dims; and per dim the number of ordinary text tokens
    (the ``text`` group: not BOS, not visual) where |x_d| reaches ``min_ratio``
    times that median (a bias dim is large on all of them, a sink dim on few).
    """
    magnitude = resid.detach().float().abs()
    peaks = torch.stack(
        [
            torch.where(group[..., None], magnitude, 0.0).amax(dim=(0, 1))
            for group in groups.unbind(0)
        ]
    )
    median = magnitude[valid].median()
    text = groups[TOKEN_GROUPS.index("text")]
    counts = ((magnitude >= min_ratio * median) & text[..., None]).sum(dim=(0, 1)).float()
    return peaks, median, counts


def dim_tests(
    peak: Float[torch.Tensor, "layer d_model"],
    median: Float[torch.Tensor, " layer"],
    text_fraction: Float[torch.Tensor, "layer d_model"],
    thresholds: DimThresholds,
) -> dict[str, Bool[torch.Tensor, "layer d_model"]]:
    """Each test of the rule per (layer, dim): ``ratio``, ``abs`` and ``not_bias``."""
    ratio = peak / median.clamp_min(1e-12)[:, None]
    return {
        "ratio": ratio >= thresholds.min_ratio,
        "abs": peak >= thresholds.min_abs,
        "not_bias": text_fraction <= thresholds.max_text_fraction,
    }


def massive_mask(
    peak: Float[torch.Tensor, "layer d_model"],
    median: Float[torch.Tensor, " layer"],
    text_fraction: Float[torch.Tensor, "layer d_model"],
    thresholds: DimThresholds,
) -> Bool[torch.Tensor, "layer d_model"]:
    """Which (layer, dim) pairs are massive under ``thresholds`` (all tests pass)."""
    tests = dim_tests(peak, median, text_fraction, thresholds)
    return tests["ratio"] & tests["abs"] & tests["not_bias"]


# ----------------------------------------------------------------------------- discovery


@dataclass
class DimsResult(ResultMixin):
    """Massive-activation dims found over a calibration set.

    ``peak`` holds, per layer, token group (``bos``, ``visual``, ``text``) and
    dim, the largest |x_d|; ``median`` the median |x| of the layer's hidden
    states; ``text_fraction`` the fraction of ordinary text tokens on which the
    dim is large; ``score`` the fraction of scanned layers where it is massive.
    """

    dims: list[int]
    score: Float[torch.Tensor, " d_model"]
    peak: Float[torch.Tensor, "layer group d_model"]
    median: Float[torch.Tensor, " layer"]
    text_fraction: Float[torch.Tensor, "layer d_model"]
    massive: Bool[torch.Tensor, "layer d_model"]
    layers: list[int]
    groups: tuple[str, ...] = TOKEN_GROUPS
    registry: dict[str, Any] | None = None
    agrees_with_registry: bool | None = None
    config: dict[str, Any] = field(default_factory=dict)
    kind = "dims"
    json_fields = ("dims", "layers", "groups", "registry", "agrees_with_registry")
    tensor_fields = ("score", "peak", "median", "text_fraction", "massive")

    @property
    def thresholds(self) -> DimThresholds:
        return DimThresholds(**self.config.get("thresholds", {}))

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
            row["text_fraction"] = float(self.text_fraction[:, dim].median())
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

    def closest(self) -> dict[str, Any]:
        """The rejected dim that came nearest to passing, and which test rejected it.

        Candidates are ranked by the number of layers where their peak passes the
        ratio test, then by their median peak / median ratio. ``reason`` names
        the test that failed in the most layers (``ratio``, ``abs``,
        ``not_bias``) or ``layers`` when each test passes somewhere but not in
        enough layers together.
        """
        th = self.thresholds
        tests = dim_tests(self.peak.amax(1), self.median, self.text_fraction, th)
        ratio = self.ratio().median(0).values
        passing = tests["ratio"].float().sum(0)
        rejected = torch.ones_like(ratio, dtype=torch.bool)
        rejected[list(self.dims)] = False
        key = torch.where(rejected, passing * (ratio.max() + 1) + ratio, -1.0)
        dim = int(torch.argmax(key))
        fails = {name: int((~mask[:, dim]).sum()) for name, mask in tests.items()}
        reason = max(fails, key=lambda name: fails[name]) if any(fails.values()) else "layers"
        return {
            "dim": dim,
            "ratio": float(ratio[dim]),
            "peak": float(self.peak.amax(1)[:, dim].median()),
            "text_fraction": float(self.text_fraction[:, dim].median()),
            "layers_massive": int(self.massive[:, dim].sum()),
            "n_layers": len(self.layers),
            "reason": reason,
        }

    def explain_none(self) -> str:
        """One line: no dim was found, the closest candidate, why it failed, what to try."""
        th, c = self.thresholds, self.closest()
        why = {
            "ratio": f"its peak is only {c['ratio']:.0f}x the median |x| (needs {th.min_ratio:g}x)",
            "abs": f"its peak {c['peak']:.3g} is below min_abs {th.min_abs:g}",
            "not_bias": (
                f"it is large on {c['text_fraction']:.0%} of the ordinary text tokens, so it "
                f"is a bias dim, not a sink dim (at most {th.max_text_fraction:.0%})"
            ),
            "layers": (
                f"it is massive in {c['layers_massive']} of {c['n_layers']} scanned layers "
                f"(needs {th.min_layer_fraction:.0%})"
            ),
        }[c["reason"]]
        return (
            f"No sink (massive-activation) dims found; closest: dim {c['dim']} "
            f"({c['ratio']:.0f}x the median), rejected because {why}. The model may have "
            "no sink dims; try more or other calibration images, a lower --min-ratio, "
            "or pass the dims explicitly (--dims / dims=[...])."
        )

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dims": self.per_dim(),
            "top_by_ratio": self.per_dim(self.top_dims(5)),
        }
        if not self.dims:
            out["closest"] = self.closest()
        return out


def discover_dims(
    model: LoadedModel,
    inputs: ModelInputs | Sequence[ModelInputs],
    *,
    thresholds: DimThresholds | None = None,
    layers: Sequence[int] | None = None,
    show_progress: bool = True,
    warn: bool = True,
) -> DimsResult:
    """Find massive-activation dims from residual streams over a calibration set.

    ``inputs`` is one batch or several (e.g. one per image); statistics are
    reduced inside hooks, so memory does not grow with the calibration set.
    With ``warn`` (default), finding no dim raises a :class:`NoSinkDimsWarning`
    that names the closest candidate and why it was rejected.
    """
    thresholds = thresholds or DimThresholds()
    batches = [inputs] if not isinstance(inputs, Sequence) else list(inputs)
    if not batches:
        raise UserInputError("discover_dims needs at least one batch of inputs.")
    scanned = (
        list(range(min(thresholds.first_layer, model.n_layers - 1), model.n_layers))
        if layers is None
        else sorted({int(x) for x in layers})
    )
    check_model_layers("Sink-dim discovery", scanned, model.n_layers)
    n_layers, d_model = len(scanned), model.d_model
    peak = torch.zeros(n_layers, len(TOKEN_GROUPS), d_model)
    median_sum = torch.zeros(n_layers)
    counts = torch.zeros(n_layers, d_model)
    n_tokens = n_text = 0
    for batch in progress(batches, len(batches), "dims", show_progress):
        groups, valid = _token_groups(model, batch)
        n_valid = int(valid.sum())
        n_tokens += n_valid
        n_text += int(groups[TOKEN_GROUPS.index("text")].sum())

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
    if n_text == 0:
        raise UserInputError(
            "The calibration set has no text tokens besides BOS, so a bias dim cannot be "
            "told from a sink dim; use a prompt with a few words."
        )
    median = median_sum / max(n_tokens, 1)
    text_fraction = counts / n_text
    massive = massive_mask(peak.amax(1), median, text_fraction, thresholds)
    score = massive.float().mean(0)
    dims = [int(d) for d in torch.nonzero(score >= thresholds.min_layer_fraction).flatten()]
    known = registry_entry(model)
    agrees = None if known is None else sorted(known["dims"]) == sorted(dims)
    result = DimsResult(
        dims=sorted(dims),
        score=score,
        peak=peak,
        median=median,
        text_fraction=text_fraction,
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
    if warn and not result.dims:
        warnings.warn(result.explain_none(), NoSinkDimsWarning, stacklevel=2)
    return result


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
    registry_only: bool = False,
) -> list[int]:
    """The sink dims to use for ``model``.

    Explicit ``dims`` win. Otherwise the registry entry is used when the model
    is known; with ``calibration`` inputs the dims are also discovered and a
    warning names any disagreement. Unknown models need calibration inputs;
    when discovery finds no dim on them this raises :class:`NoSinkDimsError`
    (naming the closest candidate and why it was rejected) instead of
    returning nothing. ``registry_only`` (the official VAR preset) never
    discovers: the registry's dims or explicit ones, else :class:`NoSinkDimsError`.
    """
    if dims is not None:
        chosen = sorted({int(d) for d in dims})
        bad = [d for d in chosen if not 0 <= d < model.d_model]
        if not chosen or bad:
            raise UserInputError(
                f"Sink dims must be non-empty and in [0, {model.d_model}); got {list(dims)}."
            )
        return chosen
    known = registry_entry(model)
    if registry_only:
        if known is None:
            raise NoSinkDimsError(
                f"The official preset takes the sink dims from the registry and "
                f"{model.name_or_path} is not in it; pass them explicitly (--dims / dims=[...])."
            )
        return list(known["dims"])
    if discover is None:
        discover = calibration is not None
    found: DimsResult | None = None
    if discover:
        if calibration is None:
            raise UserInputError(
                "Discovering sink dims needs calibration inputs (images + prompts)."
            )
        found = discover_dims(
            model, calibration, thresholds=thresholds, show_progress=False, warn=False
        )
    if known is not None:
        if found is not None and found.dims != sorted(known["dims"]):
            detail = f" {found.explain_none()}" if not found.dims else ""
            warnings.warn(
                f"Discovered sink dims {found.dims} differ from the registry's {known['dims']} "
                f"({known['key']}); using the registry. Pass dims=... to override.{detail}",
                stacklevel=2,
            )
        return list(known["dims"])
    if found is None:
        raise NoSinkDimsError(
            f"{model.name_or_path} is not in the sink-dim registry; pass calibration inputs "
            "to discover its sink dims, or dims=[...] explicitly."
        )
    if not found.dims:
        raise NoSinkDimsError(f"{found.explain_none()} Refusing to run without sink dims.")
    return found.dims
