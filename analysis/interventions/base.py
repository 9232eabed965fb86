"""What every intervention shares: its protocol, prefill/decode bookkeeping and sink tracking.

An intervention is a set of hooks built for one batch of prompts. The same
hooks serve a single forward and a cached generation: the first call of a
layer with the prompt's length is the *prefill*, every later call a
*decoding* step whose queries are the new tokens and whose keys are the most
recent tokens seen (a sliding-window cache keeps only a window).

* :class:`PrefillState` counts the tokens each layer has seen and says which
  key window a call holds;
* :class:`SinkTracker` computes the sink positions of a layer from its input at
  the prefill (phi >= tau on the sink dims) and keeps them for every decoding
  step; its ``scope`` says whether text sinks (BOS, delimiters) count
  (``"all"``, what VAR removes attention from) or only visual ones
  (``"visual"``, what a knock-out or the head scores read).
* :class:`Intervention` is the protocol the evaluation runner uses:
  ``fwd_hooks()``, ``per_sample()`` (one row per sample) and ``summary()``;
* :class:`ConditionSpec` is what one condition of a run is: a frozen dataclass
  per kind, parsed from the condition grammar (:mod:`analysis.interventions.registry`),
  round-tripping through ``to_dict`` / ``from_dict`` and its canonical label,
  that builds its :class:`Intervention` on a model and a batch and supplies
  its record fields and summary entries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, TypeVar, runtime_checkable

import torch
from jaxtyping import Bool

from analysis.checks import layers_out_of_range
from analysis.config import MIN_IMAGE_ATTENTION, RHO, SEED, TAU, VAR_PRESET
from analysis.errors import UserInputError, VsinkError
from analysis.sink_math import phi, sink_mask

if TYPE_CHECKING:
    from analysis.loading import LoadedModel
    from analysis.tokens import ModelInputs

SpecT = TypeVar("SpecT", bound="ConditionSpec")

HookFn = Callable[..., Any]
SinkScope = Literal["visual", "all"]
SINK_SCOPES: tuple[str, ...] = ("visual", "all")


@runtime_checkable
class Intervention(Protocol):
    """Hooks for one batch, and what they did."""

    def fwd_hooks(self) -> list[tuple[str, HookFn]]:
        """(hook name, function) pairs for ``model.bridge.hooks``."""
        ...

    def per_sample(self) -> list[dict[str, Any]]:
        """One row per sample of the batch (JSON-able), merged into its record."""
        ...

    def summary(self) -> dict[str, Any]:
        """What the hooks did over the whole batch (JSON-able)."""
        ...


@dataclass
class NoIntervention:
    """No hooks at all (the baseline without statistics)."""

    batch_size: int

    def fwd_hooks(self) -> list[tuple[str, HookFn]]:
        return []

    def per_sample(self) -> list[dict[str, Any]]:
        return [{} for _ in range(self.batch_size)]

    def summary(self) -> dict[str, Any]:
        return {}


@dataclass
class PrefillState:
    """Which call of a layer is the prefill, and how many tokens it has seen so far.

    ``prefill_len`` is the prompt's (padded) length; a call with that many
    queries is the prefill and restarts the count, any other call is a
    decoding step that adds its queries.
    """

    prefill_len: int
    _seen: dict[int, int] = field(default_factory=dict)

    def is_prefill(self, n_query: int) -> bool:
        return n_query == self.prefill_len

    def advance(self, layer: int, n_query: int) -> int:
        """Record one call of ``layer`` with ``n_query`` queries; the tokens seen after it."""
        if self.is_prefill(n_query):
            seen = n_query
        else:
            seen = self._seen.get(layer, self.prefill_len) + n_query
        self._seen[layer] = seen
        return seen

    def seen(self, layer: int) -> int:
        """Tokens ``layer`` has seen (the prompt before any call)."""
        return self._seen.get(layer, self.prefill_len)

    def window(self, layer: int, n_key: int) -> slice:
        """The span of the sequence seen so far that a call's ``n_key`` keys cover."""
        seen = self.seen(layer)
        if n_key > seen:
            raise RuntimeError(
                f"Hooks at layer {layer} got {n_key} keys after {seen} tokens: "
                "they were built for another prompt."
            )
        return slice(seen - n_key, seen)


class SinkTracker:
    """Sink positions per layer, from that layer's input at the prefill.

    Args:
        dims: sink dimensions of phi (None when ``fixed`` is given).
        tau, strict: sinks are ``phi >= tau`` (``phi > tau`` with ``strict``).
        scope: ``"all"`` keeps text sinks too; ``"visual"`` keeps only visual ones.
        valid: real (non-padding) positions [batch, pos] of the prompt.
        visual: visual positions [batch, pos] of the prompt.
        fixed: explicit sink positions used in every layer instead of phi.

    Decoding steps are ignored by :meth:`observe`: keys after the prompt are
    never sinks, so the prefill's sets stay valid (:meth:`padded` extends them).
    """

    def __init__(
        self,
        *,
        dims: Sequence[int] | None,
        tau: float,
        scope: SinkScope,
        valid: Bool[torch.Tensor, "batch pos"],
        visual: Bool[torch.Tensor, "batch pos"],
        strict: bool = False,
        fixed: Bool[torch.Tensor, "batch pos"] | None = None,
    ) -> None:
        if scope not in SINK_SCOPES:
            raise UserInputError(f"Sink scope must be one of {SINK_SCOPES}, got {scope!r}.")
        if dims is None and fixed is None:
            raise UserInputError("Sink tracking needs sink dims or explicit sink positions.")
        self.dims = None if dims is None else [int(d) for d in dims]
        self.tau, self.strict, self.scope = float(tau), bool(strict), scope
        self.valid, self.visual = valid.bool(), visual.bool()
        self.prefill_len = int(valid.shape[1])
        allowed = self.valid & self.visual if scope == "visual" else self.valid
        self.allowed = allowed
        self.fixed = None if fixed is None else fixed.bool() & allowed
        self._sinks: dict[int, torch.Tensor] = {}

    @property
    def needs_resid(self) -> bool:
        """Whether the layers' inputs must be hooked (no explicit sinks)."""
        return self.fixed is None

    def observe(self, layer: int, resid: torch.Tensor) -> torch.Tensor | None:
        """The sinks of ``layer`` from its input, when this is the prefill (None otherwise)."""
        if resid.shape[1] != self.prefill_len:
            return None  # a decoding step: keep the prefill's sinks
        if self.fixed is not None:
            sinks = self.fixed.to(resid.device)
        else:
            assert self.dims is not None
            flags = sink_mask(phi(resid, self.dims), self.tau, strict=self.strict)
            sinks = flags & self.allowed.to(resid.device)
        self._sinks[layer] = sinks
        return sinks

    def has(self, layer: int) -> bool:
        return self.fixed is not None or layer in self._sinks

    def sinks(self, layer: int, device: torch.device | str | None = None) -> torch.Tensor:
        """The prompt's sinks of ``layer`` [batch, pos]; an error before its prefill."""
        if self.fixed is not None:
            out = self.fixed
        elif layer in self._sinks:
            out = self._sinks[layer]
        else:
            raise RuntimeError(
                f"Layer {layer}'s attention came before its prefill; run the prompt "
                "(prefill) with these hooks first."
            )
        return out if device is None else out.to(device)

    def padded(
        self, layer: int, length: int, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """The sinks of ``layer`` over ``length`` tokens (generated tokens are no sinks)."""
        sinks = self.sinks(layer, device)
        return torch.nn.functional.pad(sinks, (0, max(length - self.prefill_len, 0)))

    def layers(self) -> list[int]:
        """Layers whose prefill has been seen."""
        return sorted(self._sinks)

    def counts(self, layer: int) -> torch.Tensor:
        """Sinks per sample of ``layer`` (of the tracker's scope)."""
        return self.sinks(layer).sum(-1)


# ----------------------------------------------------------------------------- condition specs


class ConditionError(VsinkError, ValueError):
    """A condition spec is unusable; the message names it and what is allowed."""


@dataclass(frozen=True)
class ParseContext:
    """The run-level settings a condition's defaults come from (``var`` takes the run's
    rho and tau; ``preset`` is the VAR preset of a ``var`` that names none)."""

    tau: float = TAU
    rho: float = RHO
    preset: str = VAR_PRESET


@dataclass(frozen=True)
class BuildContext:
    """What a spec needs besides itself to build its hooks on one batch."""

    dims: Sequence[int] | None
    tau: float = TAU
    rho: float = RHO
    min_image_attention: float = MIN_IMAGE_ATTENTION
    seed: int = SEED
    collect_stats: bool = True
    # An identity per sample (dataset item ids) that seeds its random draws.
    sample_keys: Sequence[str | int] | None = None


class ConditionSpec:
    """One condition of a run. Subclasses are frozen dataclasses whose first field is
    ``name``, the canonical label (it keys the records and parses back to an equal spec).

    Class attributes a kind sets:
        kind: the registry key (unique).
        family: the ``kind`` written in ``to_dict`` (the run manifest's layout).
        heads: the grammar heads it answers (``var``, ``ablate-sinks``).
        aliases: other heads that mean a head plus options (``var-to-text``).
        priority: among kinds sharing a head, higher ones are asked first
            whether they :meth:`claims` the options.
        grammar: one line for error messages and help text.
    """

    kind: ClassVar[str]
    family: ClassVar[str]
    heads: ClassVar[tuple[str, ...]]
    aliases: ClassVar[Mapping[str, Mapping[str, str]]] = {}
    priority: ClassVar[int] = 0
    grammar: ClassVar[str] = ""
    name: str

    # ---------------------------------------------------------------- grammar and layout

    @classmethod
    def answers(cls, head: str) -> bool:
        """Whether a token's head is one of this kind's (its ``heads`` by default)."""
        return head in cls.heads

    @classmethod
    def claims(cls, options: Mapping[str, str]) -> bool:
        """Whether this kind handles a token of one of its heads with these options."""
        return True

    @classmethod
    def claims_dict(cls, data: Mapping[str, Any]) -> bool:
        """Whether a ``to_dict`` layout of its ``family`` is this kind's."""
        return True

    @classmethod
    def parse(
        cls: type[SpecT],
        head: str,
        options: dict[str, str],
        token: str,
        context: ParseContext,
    ) -> list[SpecT]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls: type[SpecT], data: Mapping[str, Any]) -> SpecT:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def label(self) -> str:
        return self.name

    def describe(self) -> dict[str, Any]:
        """The manifest's entry of this condition (:meth:`to_dict`)."""
        return self.to_dict()

    # ---------------------------------------------------------------- what a run needs

    @property
    def needs_dims(self) -> bool:
        """Whether the hooks need sink dims."""
        return False

    @property
    def registry_dims(self) -> bool:
        """Whether the sink dims must come from the registry alone."""
        return False

    @property
    def attention_edit(self) -> Literal["pattern", "scores"] | None:
        """What its hooks edit in attention (``hook_pattern`` / ``hook_attn_scores``), if anything:
        the run refuses up front where such edits would be discarded."""
        return None

    @property
    def layers_used(self) -> tuple[int, ...] | None:
        """Layers the condition names (None: its default)."""
        return None

    def check_layers(self, n_layers: int) -> None:
        """Refuse layers the model does not have before any work is done."""
        message = layers_out_of_range(f"Condition {self.name!r}", self.layers_used or (), n_layers)
        if message is not None:
            raise ConditionError(message)

    def build(self, model: LoadedModel, inputs: ModelInputs, context: BuildContext) -> Intervention:
        """The hooks of this condition for one batch."""
        raise NotImplementedError

    def record_fields(self, intervention: Intervention) -> list[dict[str, Any]]:
        """Per sample, the fields this condition adds to its record."""
        return intervention.per_sample()

    @classmethod
    def summary_entries(cls, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Entries of this condition's summary, from its records alone."""
        return {}

    @classmethod
    def summary_text(cls, name: str, entry: Mapping[str, Any]) -> list[str]:
        """Plain-text lines about this condition's summary entry (printed by the CLI)."""
        return []

    @classmethod
    def run_summary(cls, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Top-level summary entries this condition's records supply (the baseline's
        sink counts and head scores)."""
        return {}


# The registry of condition kinds (filled by :func:`register` as each kind's module loads;
# :mod:`analysis.interventions.registry` imports every shipped kind).
_KINDS: dict[str, type[ConditionSpec]] = {}


def register(cls: type[SpecT]) -> type[SpecT]:
    """Register a kind (a class decorator); its kind key and aliases must be new."""
    if cls.kind in _KINDS and _KINDS[cls.kind].__qualname__ != cls.__qualname__:
        raise ValueError(f"Condition kind {cls.kind!r} is registered twice.")
    taken = {a for k, other in _KINDS.items() if k != cls.kind for a in other.aliases}
    clash = sorted(taken & set(cls.aliases))
    if clash:
        raise ValueError(f"Condition aliases {clash} of {cls.kind!r} are taken.")
    _KINDS[cls.kind] = cls
    return cls


def refuse_unknown(token: str, options: Mapping[str, str], allowed: Sequence[str]) -> None:
    """A :class:`ConditionError` naming the options a kind does not take."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConditionError(
            f"Condition {token!r}: unknown option(s) {unknown}; allowed: {sorted(allowed)}."
        )


def parse_layers(text: str) -> tuple[int, ...]:
    """``"2-4"`` -> (2, 3, 4); ``"2+5"`` -> (2, 5)."""
    try:
        if "-" in text:
            start, stop = (int(x) for x in text.split("-", 1))
            return tuple(range(start, stop + 1))
        return tuple(sorted({int(x) for x in text.split("+")}))
    except ValueError:
        raise ConditionError(
            f"layers={text!r}: use a range like 2-4 or a list like 2+3+5."
        ) from None


def fmt_option(value: Any) -> str:
    """An option value as the canonical label writes it."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "+".join(str(v) for v in value)
    return str(value)
