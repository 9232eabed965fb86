"""The paper's VAR ablations: which rows are redistributed and where the budget goes.

VAR moves ``Omega = p * sum_{j in I_sink} alpha_ij`` off the sink tokens of the
image-centric rows onto the non-sink visual tokens. The paper's ablations change
one of the two choices (PAPER_NOTES section 7):

* **rows** (:data:`ROW_RULES`): ``image`` (VAR: image-centric rows, s >= 0.2 and
  r >= rho), ``all`` (every allowed query row of every head) or ``random``
  (per sample, layer and query as many heads as ``image`` selects, drawn at
  random with a seed per item);
* **target** (:data:`TARGETS`): ``nonsink`` (VAR: visual non-sink tokens),
  ``visual`` (all visual tokens, sinks included) or ``text`` (text tokens that are
  not sinks, generated tokens included).

In every chosen row, with ``T`` the target keys::

    alpha'_ij = (1 - p) alpha_ij                          j in I_sink \\ T
    alpha'_ij = alpha_ij + Omega alpha_ij / sum_{k in T} alpha_ik   j in T \\ I_sink
    alpha'_ij = (1 - p) alpha_ij + Omega alpha_ij / sum_{k in T} alpha_ik
                                                          j in T and I_sink (``visual``)

so each row keeps its sum; a row with no attention on ``T`` is left alone.
``rows="image", target="nonsink"`` is VAR exactly (tested against
:mod:`analysis.var_math`). Every function is pure; :class:`VariantIntervention`
is the thin hook adapter on top of :class:`analysis.var.VarIntervention`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float

from analysis.ablation import stable_seed
from analysis.config import SEED
from analysis.errors import UserInputError
from analysis.var import VarConfig, VarIntervention
from analysis.var_math import image_attention_stats

if TYPE_CHECKING:
    from analysis.loading import LoadedModel
    from analysis.tokens import ModelInputs

KeyMask = Bool[torch.Tensor, "batch key"]

# Where the budget goes: the target keys from (visual, sinks, valid).
TARGETS: dict[str, Callable[[KeyMask, KeyMask, KeyMask], KeyMask]] = {
    "nonsink": lambda visual, sinks, valid: visual & ~sinks,
    "visual": lambda visual, sinks, valid: visual & valid,
    "text": lambda visual, sinks, valid: valid & ~visual & ~sinks,
}
ROW_RULES = ("image", "all", "random")
DEFAULT_ROWS, DEFAULT_TARGET = "image", "nonsink"
# Named conditions of the paper's ablation table, as options of ``var``
# (``var-to-text`` is its own kind: analysis.interventions.var_text).
ABLATION_ALIASES: dict[str, dict[str, str]] = {
    "var-all-heads": {"rows": "all"},
    "var-random-heads": {"rows": "random"},
    "var-to-visual": {"to": "visual"},
}


@dataclass(frozen=True)
class Variant:
    """A VAR ablation: which rows (:data:`ROW_RULES`) and which target (:data:`TARGETS`)."""

    rows: str = DEFAULT_ROWS
    to: str = DEFAULT_TARGET

    def __post_init__(self) -> None:
        if self.rows not in ROW_RULES:
            raise UserInputError(
                f"VAR rows must be one of {', '.join(ROW_RULES)}, got {self.rows!r}."
            )
        if self.to not in TARGETS:
            raise UserInputError(
                f"VAR target must be one of {', '.join(TARGETS)}, got {self.to!r}."
            )

    @property
    def is_var(self) -> bool:
        return self.rows == DEFAULT_ROWS and self.to == DEFAULT_TARGET

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


# ----------------------------------------------------------------------------- pure maths


def image_centric_rows(
    pattern: Float[torch.Tensor, "batch head query key"],
    *,
    visual: KeyMask,
    sinks: KeyMask,
    queries: Bool[torch.Tensor, "batch query"],
    rho: float,
    min_image_attention: float,
) -> Bool[torch.Tensor, "batch head query"]:
    """VAR's selection without its target check: allowed query, visual sink in the
    sample, ``s >= min_image_attention`` and ``r >= rho``."""
    s, r = image_attention_stats(pattern, visual=visual, sinks=sinks)
    allowed = all_rows(pattern, visual=visual, sinks=sinks, queries=queries)
    return allowed & (s >= min_image_attention) & (r >= rho)


def all_rows(
    pattern: Float[torch.Tensor, "batch head query key"],
    *,
    visual: KeyMask,
    sinks: KeyMask,
    queries: Bool[torch.Tensor, "batch query"],
) -> Bool[torch.Tensor, "batch head query"]:
    """Every allowed query row of every head, in samples with a visual sink."""
    has_visual_sink = (visual & sinks).any(-1)
    rows = queries[:, None, :] & has_visual_sink[:, None, None]
    return rows.expand(pattern.shape[:3])


def random_rows_like(
    selected: Bool[torch.Tensor, "batch head query"],
    scores: Float[torch.Tensor, "batch head query"],
) -> Bool[torch.Tensor, "batch head query"]:
    """Per (sample, query), as many heads as ``selected`` has, chosen by the lowest ``scores``.

    ``scores`` are the random draws (one per head); ties are broken by head order.
    """
    if selected.shape != scores.shape:
        raise ValueError(f"selected {tuple(selected.shape)} and scores {tuple(scores.shape)}")
    count = selected.sum(1, keepdim=True)
    rank = scores.argsort(dim=1, stable=True).argsort(dim=1)
    return rank < count


def redistribute_to(
    pattern: Float[torch.Tensor, "batch head query key"],
    *,
    sinks: KeyMask,
    target: KeyMask,
    rows: Bool[torch.Tensor, "batch head query"],
    p: float,
) -> tuple[
    Float[torch.Tensor, "batch head query key"],
    Bool[torch.Tensor, "batch head query"],
    Float[torch.Tensor, "batch head query"],
]:
    """Move ``p`` of the sink attention of ``rows`` onto ``target`` keys, in proportion.

    Returns the new pattern (input dtype, arithmetic in float32), the rows
    changed (``rows`` with attention on the target) and the mass moved per row.
    Rows outside the result are bit-identical.
    """
    if not 0.0 <= float(p) <= 1.0:
        raise UserInputError(f"p must be in [0, 1], got {p}")
    values = pattern.to(torch.float32)
    masks = torch.stack([sinks, target], dim=-1).to(torch.float32)
    sums = torch.einsum("bhqk,bkm->bhqm", values, masks)
    sink_mass, target_mass = sums.unbind(-1)
    changed = rows & (target_mass > 0)
    moved = torch.where(changed, p * sink_mass, 0.0)
    gain = moved / torch.where(changed, target_mass, 1.0)
    cut = torch.where(changed, -float(p), 0.0)
    delta = cut[..., None] * sinks[:, None, None, :].to(torch.float32) + gain[..., None] * target[
        :, None, None, :
    ].to(torch.float32)
    return (delta * values + values).to(pattern.dtype), changed, moved


def variant_rows(
    variant: Variant,
    pattern: Float[torch.Tensor, "batch head query key"],
    *,
    visual: KeyMask,
    sinks: KeyMask,
    queries: Bool[torch.Tensor, "batch query"],
    rho: float,
    min_image_attention: float,
    scores: Float[torch.Tensor, "batch head query"] | None = None,
    image_rows: Bool[torch.Tensor, "batch head query"] | None = None,
) -> Bool[torch.Tensor, "batch head query"]:
    """The rows a variant redistributes (``scores``: the random draws, for ``random``;
    ``image_rows``: the image-centric rows when another rule chose them, e.g. the
    official preset's selection)."""
    if variant.rows == "all":
        return all_rows(pattern, visual=visual, sinks=sinks, queries=queries)
    chosen = image_rows
    if chosen is None:
        chosen = image_centric_rows(
            pattern,
            visual=visual,
            sinks=sinks,
            queries=queries,
            rho=rho,
            min_image_attention=min_image_attention,
        )
    if variant.rows == "random":
        if scores is None:
            raise UserInputError("random rows need the random scores.")
        return random_rows_like(chosen, scores) & queries[:, None, :]
    return chosen


def apply_variant(
    variant: Variant,
    pattern: Float[torch.Tensor, "batch head query key"],
    *,
    visual: KeyMask,
    sinks: KeyMask,
    valid: KeyMask,
    queries: Bool[torch.Tensor, "batch query"],
    p: float,
    rho: float,
    min_image_attention: float,
    scores: Float[torch.Tensor, "batch head query"] | None = None,
    image_rows: Bool[torch.Tensor, "batch head query"] | None = None,
) -> tuple[
    Float[torch.Tensor, "batch head query key"],
    Bool[torch.Tensor, "batch head query"],
    Float[torch.Tensor, "batch head query"],
]:
    """One layer's pattern under a VAR variant (paper convention for ``p`` and ``rho``)."""
    rows = variant_rows(
        variant,
        pattern,
        visual=visual,
        sinks=sinks,
        queries=queries,
        rho=rho,
        min_image_attention=min_image_attention,
        scores=scores,
        image_rows=image_rows,
    )
    target = TARGETS[variant.to](visual, sinks, valid)
    return redistribute_to(pattern, sinks=sinks, target=target, rows=rows, p=p)


# ----------------------------------------------------------------------------- hooks


class VariantIntervention(VarIntervention):
    """VAR's hooks with a variant's rows and target (the sinks, layers and phases are VAR's).

    ``sample_keys`` (dataset item ids) seed the random heads per item, layer and
    step (0 for the prefill, then 1, 2, .. per generated token), drawn for the
    item's own query rows in order, so a draw does not depend on the batch an
    item falls in or on its padding.
    """

    def __init__(
        self,
        model: LoadedModel,
        inputs: ModelInputs,
        *,
        dims: Sequence[int] | None,
        config: VarConfig | None = None,
        variant: Variant,
        seed: int = SEED,
        sample_keys: Sequence[str | int] | None = None,
    ) -> None:
        super().__init__(model, inputs, dims=dims, config=config)
        self.variant, self.seed = variant, int(seed)
        batch = self.valid.shape[0]
        self.sample_keys = list(range(batch)) if sample_keys is None else list(sample_keys)
        if len(self.sample_keys) != batch:
            raise UserInputError(f"{len(self.sample_keys)} sample keys for a batch of {batch}.")
        self._steps: dict[int, int] = {}

    def _scores(
        self, layer: int, n_heads: int, queries: Bool[torch.Tensor, "batch query"]
    ) -> Float[torch.Tensor, "batch head query"]:
        """Uniform draws per item for its own query rows, in order (other rows get 1)."""
        step = self._steps.get(layer, 0)
        self._steps[layer] = step + 1
        allowed = queries.cpu()
        scores = torch.ones((allowed.shape[0], n_heads, allowed.shape[1]))
        for b, key in enumerate(self.sample_keys):
            generator = torch.Generator().manual_seed(stable_seed(self.seed, key, layer, step))
            rows = torch.nonzero(allowed[b]).flatten()
            scores[b][:, rows] = torch.rand((n_heads, rows.numel()), generator=generator)
        return scores

    def _redistribute(
        self,
        layer: int,
        part: torch.Tensor,
        *,
        masks: torch.Tensor,
        category: torch.Tensor,
        has_visual_sink: torch.Tensor,
        queries: torch.Tensor,
        window: slice,
        selected: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = part.device
        visual, sinks = masks[..., 0] > 0, masks[..., 2] > 0
        # Keys after the prompt are generated text: valid, not visual, not sinks.
        valid = self.valid.to(device)
        valid = torch.nn.functional.pad(valid, (0, window.stop - valid.shape[1]), value=True)
        scores = None
        if self.variant.rows == "random":
            scores = self._scores(layer, part.shape[1], queries).to(device)
        return apply_variant(
            self.variant,
            part,
            visual=visual,
            sinks=sinks,
            valid=valid[:, window],
            queries=queries,
            p=self._p,
            rho=self._rho,
            min_image_attention=self.config.min_image_attention,
            scores=scores,
            image_rows=selected,
        )


def var_intervention(
    model: LoadedModel,
    inputs: ModelInputs,
    *,
    dims: Sequence[int] | None,
    config: VarConfig | None,
    variant: Variant | None = None,
    seed: int = SEED,
    sample_keys: Sequence[str | int] | None = None,
) -> VarIntervention:
    """VAR's hooks, or a variant's when ``variant`` is an ablation."""
    if variant is None or variant.is_var:
        return VarIntervention(model, inputs, dims=dims, config=config)
    return VariantIntervention(
        model,
        inputs,
        dims=dims,
        config=config,
        variant=variant,
        seed=seed,
        sample_keys=sample_keys,
    )


def describe_variant(variant: Variant | None) -> dict[str, Any] | None:
    return None if variant is None or variant.is_var else variant.to_dict()
