"""Running the bridge with hooks: streaming reducers, and full captures for small jobs.

Analyses keep what they need (a per-layer statistic) inside hooks as the
forward runs, instead of caching every [layer, head, query, key] pattern: a
32-layer, 32-head model on a 600-token prompt would otherwise hold ~1.5 GB
per image. :func:`capture` is for figures and tests on small inputs; the
figure captures, which keep only what one figure draws, are in :mod:`analysis.views`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from analysis import hooks
from analysis.errors import UserInputError
from analysis.results import ResultMixin

if TYPE_CHECKING:
    from analysis.loading import LoadedModel
    from analysis.tokens import ModelInputs

HookFn = Callable[[torch.Tensor, Any], torch.Tensor | None]
T = TypeVar("T")


def forward(
    model: LoadedModel,
    inputs: ModelInputs,
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
    *,
    logits_to_keep: int = 0,
) -> Float[torch.Tensor, "batch pos vocab"]:
    """One no-grad forward of the bridge with ``fwd_hooks`` attached; returns logits.

    ``logits_to_keep`` (HF's argument): 0 returns every position's logits, n > 0
    only the last n (a forward run for its hooks or its next-token scores needs
    one: Gemma 3's 262k-word vocabulary makes all of them ~1 MB per position).
    """
    if logits_to_keep < 0:
        raise UserInputError(f"logits_to_keep must be >= 0, got {logits_to_keep}.")
    device = model.device
    with torch.no_grad():
        return model.bridge.run_with_hooks(
            inputs.input_ids.to(device),
            return_type="logits",
            fwd_hooks=list(fwd_hooks),
            logits_to_keep=logits_to_keep,
            **inputs.forward_kwargs(device),
        )


def batched(items: Sequence[T], batch_size: int) -> Iterator[list[T]]:
    if batch_size < 1:
        raise UserInputError(f"batch_size must be >= 1, got {batch_size}.")
    for start in range(0, len(items), batch_size):
        yield list(items[start : start + batch_size])


def progress(iterable: Iterable[T], total: int | None, desc: str, enabled: bool = True) -> Any:
    """A tqdm bar with items/s, silent when ``enabled`` is False or output is not a terminal."""
    return tqdm(iterable, total=total, desc=desc, unit="item", disable=not enabled, leave=False)


@dataclass
class Capture(ResultMixin):
    """Residual streams entering each captured layer and/or post-softmax patterns."""

    layers: list[int]
    resid: Float[torch.Tensor, "layer batch pos d_model"] | None
    patterns: Float[torch.Tensor, "layer batch head query key"] | None
    logits: Float[torch.Tensor, "batch pos vocab"]
    config: dict[str, Any] = field(default_factory=dict)
    kind = "capture"
    json_fields = ("layers",)
    tensor_fields = ("resid", "patterns")


def capture(
    model: LoadedModel,
    inputs: ModelInputs,
    *,
    layers: Sequence[int] | None = None,
    resid: bool = True,
    patterns: bool = False,
) -> Capture:
    """Run once and keep residual streams (float32, CPU) and/or patterns of ``layers``."""
    chosen = list(range(model.n_layers)) if layers is None else [int(x) for x in layers]
    store: dict[str, torch.Tensor] = {}

    def keep(tensor: torch.Tensor, hook: Any, key: str) -> None:
        store[key] = tensor.detach().float().cpu()

    fwd: list[tuple[str, HookFn]] = []
    for layer in chosen:
        if resid:
            fwd.append((hooks.resid_pre(layer), bind(keep, f"r{layer}")))
        if patterns:
            fwd.append((hooks.attn_pattern(layer), bind(keep, f"p{layer}")))
    logits = forward(model, inputs, fwd).float().cpu()
    return Capture(
        layers=chosen,
        resid=torch.stack([store[f"r{layer}"] for layer in chosen]) if resid else None,
        patterns=torch.stack([store[f"p{layer}"] for layer in chosen]) if patterns else None,
        logits=logits,
        config={"model": model.describe(), "prompts": inputs.prompts},
    )


def bind(fn: Callable[..., None], key: Any) -> HookFn:
    """A hook that calls ``fn(tensor, hook, key)``: one reducer, many layers."""

    def hook(tensor: torch.Tensor, hook: Any) -> None:
        fn(tensor, hook, key)

    return hook


# --------------------------------------------------------------------------- figure captures
#
# The figure captures (attention maps, token states, received attention) live in
# analysis.views; their names still resolve here, loaded on first use (analysis.views
# builds on this module, so importing it eagerly would be a cycle).

if TYPE_CHECKING:
    from analysis.views import AttentionMaps as AttentionMaps
    from analysis.views import ReceivedAttention as ReceivedAttention
    from analysis.views import TokenStates as TokenStates
    from analysis.views import attention_maps as attention_maps
    from analysis.views import attention_received as attention_received
    from analysis.views import pick_queries as pick_queries
    from analysis.views import query_positions as query_positions
    from analysis.views import token_states as token_states

_VIEWS = frozenset(
    {
        "AttentionMaps",
        "ReceivedAttention",
        "TokenStates",
        "attention_maps",
        "attention_received",
        "pick_queries",
        "query_positions",
        "token_states",
    }
)


def __getattr__(name: str) -> Any:
    if name in _VIEWS:
        from analysis import views

        return getattr(views, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
