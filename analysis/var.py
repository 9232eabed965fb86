"""VAR (visual attention redistribution) as a hook intervention.

The math lives in :mod:`analysis.var_math` (pure functions, re-exported here).
:class:`VarIntervention` turns it into hooks:

* at ``blocks.{l}.hook_resid_pre`` during the prefill it computes phi and the
  sink set of layer ``l`` per sample (text sinks included), and keeps it for
  every later decoding step (keys after the prompt are never sinks);
* at ``blocks.{l}.attn.hook_pattern`` it redistributes attention: during the
  prefill only in rows of text queries after the image, during decoding in
  every new token's row.

No extra forward pass is needed: layer l's input is seen before its attention.
Every call is recorded per layer (rows eligible, rows changed, mass moved) so
a no-op can be told from an effect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool

from analysis import hooks
from analysis.attention import N_QUERY_KEY, ROWS_KEY, row_sparse_hook
from analysis.attention_guard import require_attention_edits
from analysis.capture import AttentionMaps, HookFn, attention_maps, forward
from analysis.checks import check_model_layers
from analysis.config import CONVENTIONS, VAR_PRESETS, VarConfig
from analysis.errors import UserInputError
from analysis.interventions.base import PrefillState, SinkTracker
from analysis.results import ResultMixin
from analysis.var_math import (
    image_attention_stats,
    key_category,
    key_masks,
    official_selection,
    redistribute_attention,
    redistribute_attention_with_stats,
    redistribute_with_tables,
    redistribution_rows,
    to_paper_convention,
)

if TYPE_CHECKING:
    from analysis.loading import LoadedModel
    from analysis.tokens import ModelInputs

__all__ = [
    "CONVENTIONS",
    "PRESETS",
    "VarConfig",
    "VarIntervention",
    "VarRecord",
    "default_var_layers",
    "image_attention_stats",
    "redistribute_attention",
    "redistribute_attention_with_stats",
    "redistribution_rows",
    "run_with_var",
]


# VarConfig lives with every other setting in analysis.config; kept importable here.
PRESETS = VAR_PRESETS


def default_var_layers(n_layers: int, last_layer: bool = False) -> list[int]:
    """Layers 2 .. L-2 (the paper: sinks exist from layer 2 on, the last layer excluded),
    or 2 .. L-1 with ``last_layer`` (the authors' code)."""
    stop = n_layers if last_layer else n_layers - 1
    return list(range(min(2, n_layers), max(stop, 0)))


@dataclass
class VarRecord(ResultMixin):
    """What VAR did, per layer, summed over samples and calls."""

    layers: list[int]
    prefill_rows: list[int]
    prefill_changed: list[int]
    prefill_mass: list[float]
    decode_rows: list[int]
    decode_changed: list[int]
    decode_mass: list[float]
    visual_sinks: list[int]
    config: dict[str, Any] = field(default_factory=dict)
    kind = "var_record"
    json_fields = (
        "layers",
        "prefill_rows",
        "prefill_changed",
        "prefill_mass",
        "decode_rows",
        "decode_changed",
        "decode_mass",
        "visual_sinks",
    )

    @property
    def total_changed(self) -> int:
        return sum(self.prefill_changed) + sum(self.decode_changed)

    @property
    def total_mass(self) -> float:
        return sum(self.prefill_mass) + sum(self.decode_mass)

    def summary(self) -> dict[str, Any]:
        return {
            "rows_changed": self.total_changed,
            "mass_moved": self.total_mass,
            "noop": self.total_changed == 0,
        }


class VarIntervention:
    """VAR hooks for one batch of inputs (reusable for its forward or generation).

    Args:
        model: the loaded model.
        inputs: the prompts the hooks will see (the prefill); their visual and
            query masks come from the token layout.
        dims: sink dimensions (see :func:`analysis.dims.sink_dims`).
        config: VAR settings.
        sinks: optional explicit sink positions [batch, pos] used in every layer
            instead of phi >= tau (ablation of the classifier, tests).
    """

    def __init__(
        self,
        model: LoadedModel,
        inputs: ModelInputs,
        *,
        dims: Sequence[int] | None,
        config: VarConfig | None = None,
        sinks: Bool[torch.Tensor, "batch pos"] | None = None,
    ) -> None:
        self.model = model
        self.config = config or VarConfig()
        if dims is None and sinks is None:
            raise UserInputError("VAR needs sink dims (or explicit sink positions).")
        if dims is not None and not dims:
            raise UserInputError(
                "VAR needs at least one sink dim: with none it would change nothing. "
                "Pass dims explicitly or discover them (analysis.dims.sink_dims)."
            )
        self.dims = None if dims is None else [int(d) for d in dims]
        layers = (
            default_var_layers(model.n_layers, self.config.last_layer)
            if self.config.layers is None
            else sorted({int(x) for x in self.config.layers})
        )
        check_model_layers("VAR", layers, model.n_layers)
        # VAR rewrites hook_pattern: refuse where such edits would be discarded.
        require_attention_edits(model, "VAR")
        self.layers = layers
        self.prefill_len = int(inputs.input_ids.shape[1])
        self.visual = inputs.visual
        self.queries = inputs.queries
        self.valid = inputs.stack("attention_mask")
        # VAR removes attention from every sink, text sinks (BOS, delimiters) included.
        self.tracker = SinkTracker(
            dims=self.dims,
            tau=self.config.tau,
            strict=self.config.strict_tau,
            scope="all",
            valid=self.valid,
            visual=self.visual,
            fixed=sinks,
        )
        self.fixed_sinks = self.tracker.fixed
        self.state = PrefillState(self.prefill_len)
        # Rows eligible per layer are known on the host from the shapes alone.
        self._rows = {key: [0] * len(layers) for key in ("prefill_rows", "decode_rows")}
        self._p, self._rho = to_paper_convention(
            self.config.p, self.config.rho, self.config.convention
        )
        # The official row test caps the visual sink fraction at rho as its config states it.
        self._max_sink_fraction = (
            self.config.rho if self.config.convention == "official" else 1.0 - self.config.rho
        )
        self._query_rows = torch.nonzero(self.queries.any(dim=0)).flatten()
        self._n_queries = int(self.queries.sum())
        self._tables: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        # [layer, sample] totals kept where the patterns live and read only by record()
        # and per_sample(): a host sync per layer and step would stall GPU decoding.
        self._totals: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ hooks

    def fwd_hooks(self) -> list[tuple[str, HookFn]]:
        out: list[tuple[str, HookFn]] = []
        for slot, layer in enumerate(self.layers):
            if self.tracker.needs_resid:
                out.append((hooks.resid_pre(layer), self._sink_hook(layer)))
            out.append((hooks.attn_pattern(layer), self._pattern_hook(layer, slot)))
        return out

    @property
    def _sinks(self) -> dict[int, torch.Tensor]:
        """Sinks per layer seen so far (all sinks, text ones included)."""
        return {layer: self.tracker.sinks(layer) for layer in self.tracker.layers()}

    def _sink_hook(self, layer: int) -> HookFn:
        def hook(resid: torch.Tensor, hook: Any) -> None:
            self.tracker.observe(layer, resid)

        return hook

    def _layer_sinks(self, layer: int, device: torch.device) -> torch.Tensor:
        if not self.tracker.has(layer):
            raise RuntimeError(
                f"VAR saw layer {layer}'s attention before its prefill; run the prompt "
                "(prefill) with these hooks first."
            )
        return self.tracker.sinks(layer, device)

    def _key_tables(
        self, layer: int, device: torch.device, length: int, rebuild: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Key masks, key categories and has-visual-sink of ``layer``, padded past the prompt.

        Built at the prefill and reused by every decoding step (generated keys are
        neither visual nor sinks), with room doubling when generation outgrows it.
        """
        tables = self._tables.get(layer)
        if rebuild or tables is None or tables[0].shape[1] < length:
            sinks = self._layer_sinks(layer, device)
            visual = self.visual.to(device)
            pad = max(length, 2 * self.prefill_len) - self.prefill_len
            sinks = torch.nn.functional.pad(sinks, (0, pad))
            visual = torch.nn.functional.pad(visual, (0, pad))
            tables = (
                key_masks(visual, sinks),
                key_category(visual, sinks),
                (visual & sinks).any(dim=-1),
            )
            self._tables[layer] = tables
        return tables

    def _accumulate(self, key: str, slot: int, per_sample: torch.Tensor) -> None:
        if key not in self._totals:
            self._totals[key] = torch.zeros(
                len(self.layers), per_sample.shape[0], dtype=torch.float64, device=per_sample.device
            )
        totals = self._totals[key]
        # .to() is a no-op on one device and a device-to-device copy under device_map.
        totals[slot] += per_sample.to(totals.device)

    def _pattern_hook(self, layer: int, slot: int) -> HookFn:
        def hook(pattern: torch.Tensor, hook: Any) -> torch.Tensor:
            batch, n_heads, n_query, n_key = pattern.shape
            # Row-sparse route (analysis.attention): only the rows named in ctx came.
            given = hook.ctx.get(ROWS_KEY)
            if given is not None:
                n_query = int(hook.ctx[N_QUERY_KEY])
            device = pattern.device
            prefill = self.state.is_prefill(n_query)
            # Tokens seen so far by this layer; the keys are the most recent n_key of
            # them (sliding-window caches keep only a window).
            seen = self.state.advance(layer, n_query)
            try:
                window = self.state.window(layer, n_key)
            except RuntimeError as err:
                raise RuntimeError(f"VAR: {err}") from None
            masks, category, has_visual_sink = self._key_tables(layer, device, seen, prefill)
            masks, category = masks[:, window], category[:, window]
            if window.start > 0:  # a sliding window dropped early keys, maybe the sinks
                has_visual_sink = (masks[..., 0] > masks[..., 1]).any(dim=-1)
            if prefill:
                # Only text queries after the image may change, about a tenth of a
                # LLaVA prompt's rows: the maths runs on those rows alone.
                rows = self._query_rows.to(device) if given is None else given.to(device)
                part = pattern.index_select(2, rows) if given is None else pattern
                queries = self.queries.to(device).index_select(1, rows)
                self._accumulate("visual_sinks", slot, (masks[..., 0] * masks[..., 2]).sum(-1))
                self._rows["prefill_rows"][slot] += self._n_queries * n_heads
            else:
                part = pattern
                queries = torch.ones(batch, part.shape[2], dtype=torch.bool, device=device)
                self._rows["decode_rows"][slot] += batch * part.shape[2] * n_heads
            selected = None
            if self.config.selection == "official":
                selected = official_selection(
                    part,
                    masks=masks,
                    has_visual_sink=has_visual_sink,
                    queries=queries,
                    max_sink_fraction=self._max_sink_fraction,
                    min_image_attention=self.config.min_image_attention,
                )
            new, changed, moved = self._redistribute(
                layer,
                part,
                masks=masks,
                category=category,
                has_visual_sink=has_visual_sink,
                queries=queries,
                window=window,
                selected=selected,
            )
            phase = "prefill" if prefill else "decode"
            self._accumulate(f"{phase}_changed", slot, changed.sum((1, 2)))
            self._accumulate(f"{phase}_mass", slot, moved.sum((1, 2)))
            if prefill and given is None:
                return pattern.index_copy(2, rows, new)
            return new

        def rows(n_query: int, n_key: int, device: torch.device) -> torch.Tensor | None:
            # The prefill's text-query rows; a decoding step's rows are all new tokens.
            return self._query_rows.to(device) if self.state.is_prefill(n_query) else None

        return row_sparse_hook(hook, rows)

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
        """The redistribution of one call (VAR; :mod:`analysis.ablations` overrides it).

        ``window`` is the keys' span in the sequence seen so far by ``layer``;
        ``selected`` the rows of the official selection rule (None: the paper's).
        """
        return redistribute_with_tables(
            part,
            masks=masks,
            category=category,
            has_visual_sink=has_visual_sink,
            queries=queries,
            p=self._p,
            rho=self._rho,
            min_image_attention=self.config.min_image_attention,
            selected=selected,
        )

    # ------------------------------------------------------------------ records

    def _sums(self, key: str, dim: int) -> list[float]:
        """Totals of ``key`` summed over ``dim`` (0: per sample, 1: per layer), on the host."""
        if key in self._totals:
            return self._totals[key].sum(dim).tolist()
        return [0.0] * (self.valid.shape[0] if dim == 0 else len(self.layers))

    def per_sample(self) -> list[dict[str, float]]:
        """Rows changed and attention mass moved per sample, over every layer and call."""
        columns = {
            "prefill_rows_changed": [int(v) for v in self._sums("prefill_changed", 0)],
            "prefill_mass_moved": self._sums("prefill_mass", 0),
            "decode_rows_changed": [int(v) for v in self._sums("decode_changed", 0)],
            "decode_mass_moved": self._sums("decode_mass", 0),
        }
        return [
            dict(zip(columns, values, strict=True))
            for values in zip(*columns.values(), strict=True)
        ]

    def summary(self) -> dict[str, Any]:
        """Rows changed and mass moved over the batch (:meth:`VarRecord.summary`)."""
        return self.record().summary()

    def record(self) -> VarRecord:
        def counts(key: str) -> list[int]:
            return [int(v) for v in self._sums(key, 1)]

        return VarRecord(
            layers=list(self.layers),
            prefill_rows=self._rows["prefill_rows"],
            prefill_changed=counts("prefill_changed"),
            prefill_mass=self._sums("prefill_mass", 1),
            decode_rows=self._rows["decode_rows"],
            decode_changed=counts("decode_changed"),
            decode_mass=self._sums("decode_mass", 1),
            visual_sinks=counts("visual_sinks"),
            config={"var": self.config.to_dict(), "dims": self.dims},
        )


def run_with_var(
    model: LoadedModel,
    inputs: ModelInputs,
    *,
    dims: Sequence[int] | None,
    config: VarConfig | None = None,
    sinks: Bool[torch.Tensor, "batch pos"] | None = None,
) -> tuple[torch.Tensor, VarRecord]:
    """One forward pass with VAR; returns the logits and the record of what changed."""
    intervention = VarIntervention(model, inputs, dims=dims, config=config, sinks=sinks)
    logits = forward(model, inputs, intervention.fwd_hooks())
    return logits, intervention.record()


# ----------------------------------------------------------------------------- figure capture


@dataclass
class VarAttention(ResultMixin):
    """Attention maps of chosen heads over the image without and with VAR (paper figure 5).

    ``before`` and ``after`` hold the same views and queries; ``after`` was
    captured with the VAR hooks attached, so its sink flags are those VAR used.
    """

    before: AttentionMaps
    after: AttentionMaps
    record: VarRecord
    config: dict[str, Any] = field(default_factory=dict)
    kind = "var_attention"

    def summary(self) -> dict[str, Any]:
        views = []
        for sample in range(len(self.before.layouts)):
            for view in range(self.before.n_views):
                rows = {}
                for name, maps in (("before", self.before), ("after", self.after)):
                    values = maps.attention[sample, view, :, : maps.n_visual[sample]]
                    sinks = maps.visual_sinks(sample, view)
                    rows[name] = {
                        "image_attention": values.sum(-1).tolist(),
                        "visual_sink_attention": values[:, sinks].sum(-1).tolist(),
                    }
                views.append({"sample": sample, "view": self.before.view_label(view), **rows})
        return {"views": views, "record": self.record.summary()}

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "before": self.before.to_json(),
            "after": self.after.to_json(),
            "record": self.record.to_json(),
            "summary": self.summary(),
            "config": self.config,
        }


def var_attention(
    model: LoadedModel,
    inputs: ModelInputs,
    *,
    views: Sequence[tuple[int, int | None]],
    dims: Sequence[int],
    config: VarConfig | None = None,
    queries: Sequence[int] = (-1,),
) -> VarAttention:
    """Attention of ``views`` (layer, head) over the image, baseline and under VAR."""
    config = config or VarConfig()
    before = attention_maps(model, inputs, views=views, queries=queries, dims=dims, tau=config.tau)
    intervention = VarIntervention(model, inputs, dims=dims, config=config)
    after = attention_maps(
        model,
        inputs,
        views=views,
        queries=queries,
        dims=dims,
        tau=config.tau,
        fwd_hooks=intervention.fwd_hooks(),
    )
    return VarAttention(
        before=before,
        after=after,
        record=intervention.record(),
        config={"var": config.to_dict(), "dims": [int(d) for d in dims], **before.config},
    )
