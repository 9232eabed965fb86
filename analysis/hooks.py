"""Every TransformerBridge hook point the toolkit touches, named in one place.

The bridge exposes HookedTransformer-style aliases (``blocks.{l}.hook_resid_pre``)
on top of its native names; we use the aliases because they are stable across
architecture adapters and read like the paper (residual stream entering layer l,
post-softmax attention pattern of layer l).
"""

from __future__ import annotations

RESID_PRE = "blocks.{layer}.hook_resid_pre"
ATTN_SCORES = "blocks.{layer}.attn.hook_attn_scores"
ATTN_PATTERN = "blocks.{layer}.attn.hook_pattern"
ATTN_V = "blocks.{layer}.attn.hook_v"
ATTN_OUT = "blocks.{layer}.hook_attn_out"


def resid_pre(layer: int) -> str:
    """Residual stream entering ``layer`` (the hidden state the paper's phi reads)."""
    return RESID_PRE.format(layer=layer)


def attn_scores(layer: int) -> str:
    """Pre-softmax attention scores [batch, head, query, key] of ``layer``."""
    return ATTN_SCORES.format(layer=layer)


def attn_pattern(layer: int) -> str:
    """Post-softmax attention pattern [batch, head, query, key] of ``layer``.

    The bridge reimplements attention around this hook, so an edit here changes
    the attention output (VAR and post-softmax knock-outs rely on that).
    """
    return ATTN_PATTERN.format(layer=layer)


def attn_v(layer: int) -> str:
    """Value vectors [batch, pos, head, d_head] of ``layer`` (before GQA expansion)."""
    return ATTN_V.format(layer=layer)


def attn_out(layer: int) -> str:
    """Output of the attention sublayer of ``layer`` added to the residual stream."""
    return ATTN_OUT.format(layer=layer)
