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
  ``fwd_hooks()``, ``per_sample()`` (one row per sample) and ``summary()``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from jaxtyping import Bool

from analysis.sink_math import phi, sink_mask

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
            raise ValueError(f"Sink scope must be one of {SINK_SCOPES}, got {scope!r}.")
        if dims is None and fixed is None:
            raise ValueError("Sink tracking needs sink dims or explicit sink positions.")
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
