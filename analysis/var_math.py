"""Visual attention redistribution (VAR) as pure, vectorised tensor maths.

Everything here acts on post-softmax attention patterns
``alpha[batch, head, query, key]`` of one layer, with per-sample key masks
(``visual``: image tokens ``I_vis``; ``sinks``: sink tokens ``I_sink``, text
sinks such as BOS included) and a per-sample query mask (``queries``: the rows
VAR may touch, e.g. text queries after the image). No model, no hooks: the
hook code calls these functions.

Definitions (PAPER_NOTES sections 5 and 6), for one row ``i``::

    s_i     = sum_{j in I_vis} alpha_ij                          image attention
    r_i     = sum_{j in I_vis \\ I_sink} alpha_ij / s_i          visual non-sink ratio
    Omega_i = p * sum_{j in I_sink} alpha_ij                     budget
    alpha'_ij = (1 - p) alpha_ij                                 j in I_sink
    alpha'_ij = alpha_ij + Omega_i alpha_ij / sum_{k in I_vis \\ I_sink} alpha_ik
                                                                 j in I_vis \\ I_sink
    alpha'_ij = alpha_ij                                         otherwise

A row is redistributed only when it is an allowed query, ``s_i >= 0.2``,
``r_i >= rho``, its sample has at least one visual sink (the official code
selects no head in a layer without one) and it has positive attention on
non-sink visual keys (otherwise there is nowhere to put Omega).

The authors' code selects rows differently (:func:`official_selection`): a
visual *sink fraction* ``sum_{j in I_vis & I_sink} alpha_ij / (s_i + n_vis *
1e-6) <= rho`` with ``s_i >= 0.2``, both computed in the attention's own dtype
(fp16 in its runs, where 0.2 is 0.19995). The ``official`` preset of
:class:`analysis.var.VarConfig` uses that rule; the redistribution itself is
the same.

Numerics: all arithmetic is float32 whatever the input dtype and the result is
cast back, so fp16/bf16 patterns are handled without overflow or NaN.
Unselected rows come back bit-identical (they are multiplied by exactly 1) and
``p == 0`` is an exact identity.

The masked key sums are a single batched matmul against the key masks, so they
allocate nothing pattern-sized; the flip side is that if the caller enabled
TF32 matmuls on CUDA those sums carry TF32 rounding (about 1e-3 relative),
which then shows up as row sums off by at most about ``1e-3 * Omega``.
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Bool, Float

from analysis.config import MIN_IMAGE_ATTENTION, RHO, P
from analysis.errors import UserInputError

__all__ = [
    "OFFICIAL_VISUAL_EPS",
    "image_attention_stats",
    "key_category",
    "key_masks",
    "official_selection",
    "official_sink_fraction",
    "redistribute_attention",
    "redistribute_attention_with_stats",
    "redistribute_with_tables",
    "redistribution_rows",
    "to_paper_convention",
]

Convention = Literal["paper", "official"]

# The official code adds this much per visual key to the sink fraction's denominator.
OFFICIAL_VISUAL_EPS = 1e-6

# Key categories used to build the per-key multiplicative update with a gather.
_OTHER, _SINK, _VISUAL_NON_SINK = 0, 1, 2


def _check_pattern_and_masks(
    pattern: torch.Tensor,
    visual: torch.Tensor,
    sinks: torch.Tensor,
    queries: torch.Tensor | None = None,
) -> None:
    if not isinstance(pattern, torch.Tensor) or pattern.ndim != 4:
        shape = tuple(pattern.shape) if isinstance(pattern, torch.Tensor) else type(pattern)
        raise ValueError(f"pattern must be a [batch, head, query, key] tensor, got {shape}")
    if not pattern.is_floating_point():
        raise ValueError(f"pattern must be a floating-point tensor, got dtype {pattern.dtype}")
    batch, _, n_query, n_key = pattern.shape
    named = {
        "visual": (visual, (batch, n_key), "[batch, key]"),
        "sinks": (sinks, (batch, n_key), "[batch, key]"),
    }
    if queries is not None:
        named["queries"] = (queries, (batch, n_query), "[batch, query]")
    for name, (mask, expected, axes) in named.items():
        if not isinstance(mask, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise ValueError(f"{name} must be a bool mask, got dtype {mask.dtype}")
        if tuple(mask.shape) != expected:
            raise ValueError(
                f"{name} must have shape {axes} = {expected} to match pattern "
                f"{tuple(pattern.shape)}, got {tuple(mask.shape)}"
            )
        if mask.device != pattern.device:
            raise ValueError(f"{name} is on {mask.device} but pattern is on {pattern.device}")


def _check_fraction(name: str, value: float) -> None:
    # Written so that NaN fails too.
    if not (0.0 <= float(value) <= 1.0):
        raise UserInputError(f"{name} must be in [0, 1], got {value}")


def _key_sums(
    pattern: Float[torch.Tensor, "batch head query key"],
    visual: Bool[torch.Tensor, "batch key"],
    sinks: Bool[torch.Tensor, "batch key"],
) -> tuple[
    Float[torch.Tensor, "batch head query"],
    Float[torch.Tensor, "batch head query"],
    Float[torch.Tensor, "batch head query"],
]:
    """Float32 row sums over visual keys, visual non-sink keys and sink keys.

    One matmul against a ``[batch, key, 3]`` 0/1 matrix, so the only
    pattern-sized allocation is the float32 upcast (none for float32 input).
    """
    return _masked_sums(pattern, key_masks(visual, sinks))


def key_masks(
    visual: Bool[torch.Tensor, "batch key"], sinks: Bool[torch.Tensor, "batch key"]
) -> Float[torch.Tensor, "batch key 3"]:
    """0/1 columns: visual keys, visual non-sink keys, sink keys."""
    return torch.stack([visual, visual & ~sinks, sinks], dim=-1).to(torch.float32)


def key_category(
    visual: Bool[torch.Tensor, "batch key"], sinks: Bool[torch.Tensor, "batch key"]
) -> torch.Tensor:
    """Per key: sink, visual non-sink or other (the index of its update in a row)."""
    category = torch.full_like(visual, _OTHER, dtype=torch.long)
    category = torch.where(visual, _VISUAL_NON_SINK, category)
    return torch.where(sinks, _SINK, category)


def _masked_sums(
    pattern: Float[torch.Tensor, "batch head query key"],
    masks: Float[torch.Tensor, "batch key 3"],
) -> tuple[
    Float[torch.Tensor, "batch head query"],
    Float[torch.Tensor, "batch head query"],
    Float[torch.Tensor, "batch head query"],
]:
    # torch.einsum directly: the einops front end costs more than the sum on a decoding step.
    sums = torch.einsum("bhqk,bkm->bhqm", pattern.to(torch.float32), masks)
    image, visual_non_sink, sink = sums.unbind(dim=-1)
    return image, visual_non_sink, sink


def _ratio(
    visual_non_sink: Float[torch.Tensor, "batch head query"],
    image: Float[torch.Tensor, "batch head query"],
) -> Float[torch.Tensor, "batch head query"]:
    # Divide by 1 where s == 0 so no NaN is ever created (r is 0 there).
    has_image = image > 0
    return torch.where(has_image, visual_non_sink / torch.where(has_image, image, 1.0), 0.0)


def image_attention_stats(
    pattern: Float[torch.Tensor, "batch head query key"],
    *,
    visual: Bool[torch.Tensor, "batch key"],
    sinks: Bool[torch.Tensor, "batch key"],
) -> tuple[Float[torch.Tensor, "batch head query"], Float[torch.Tensor, "batch head query"]]:
    """Image attention ``s`` and visual non-sink ratio ``r`` of every row.

    ``s_i = sum_{j in I_vis} alpha_ij`` and
    ``r_i = sum_{j in I_vis \\ I_sink} alpha_ij / s_i``, with ``r_i = 0``
    where ``s_i == 0`` (no image attention means nothing to redistribute to).

    Args:
        pattern: post-softmax attention ``[batch, head, query, key]``, any float dtype.
        visual: image-token keys ``[batch, key]``.
        sinks: sink keys (text and visual) ``[batch, key]``.

    Returns:
        ``(s, r)``, both float32 ``[batch, head, query]``.
    """
    _check_pattern_and_masks(pattern, visual, sinks)
    image, visual_non_sink, _ = _key_sums(pattern, visual, sinks)
    return image, _ratio(visual_non_sink, image)


def to_paper_convention(p: float, rho: float, convention: str) -> tuple[float, float]:
    """Map ``(p, rho)`` to the paper's meaning: p = fraction moved, r >= rho.

    The official code stores both inverted: its ``p`` is the fraction of sink
    attention KEPT (it moves ``1 - p``; author-confirmed in its issue #5) and
    its ``rho`` is a maximum on the visual sink fraction ``1 - r``, i.e.
    ``(1 - r) <= rho_official``, which is ``r >= 1 - rho_official``.
    """
    _check_fraction("p", p)
    _check_fraction("rho", rho)
    if convention == "paper":
        return float(p), float(rho)
    if convention == "official":
        return 1.0 - float(p), 1.0 - float(rho)
    raise UserInputError(f"convention must be 'paper' or 'official', got {convention!r}")


def _select(
    image: Float[torch.Tensor, "batch head query"],
    visual_non_sink: Float[torch.Tensor, "batch head query"],
    *,
    has_visual_sink: Bool[torch.Tensor, " batch"],
    queries: Bool[torch.Tensor, "batch query"],
    rho: float,
    min_image_attention: float,
) -> Bool[torch.Tensor, "batch head query"]:
    # Official rule: no visual sink in the sample -> no head is image-centric.
    ratio = _ratio(visual_non_sink, image)
    return (
        queries[:, None, :]
        & has_visual_sink[:, None, None]
        & (image >= min_image_attention)
        & (ratio >= rho)
        # Needed only when rho == 0: without it Omega would be spread over zero mass.
        & (visual_non_sink > 0)
    )


def official_sink_fraction(
    pattern: Float[torch.Tensor, "batch head query key"],
    masks: Float[torch.Tensor, "batch key 3"],
    visual_eps: float = OFFICIAL_VISUAL_EPS,
) -> tuple[Float[torch.Tensor, "batch head query"], Float[torch.Tensor, "batch head query"]]:
    """The authors' row statistics, in the pattern's own dtype (fp16 stays fp16).

    Returns ``(s, fraction)`` with ``s = sum_{j in I_vis} alpha_ij`` and
    ``fraction = sum_{j in I_vis & I_sink} alpha_ij / (s + n_vis * visual_eps)``,
    ``n_vis`` the number of visual keys of the sample.
    """
    dtype = pattern.dtype
    visual, visual_non_sink = masks[..., 0], masks[..., 1]
    columns = torch.stack([visual, visual - visual_non_sink], dim=-1).to(dtype)
    sums = torch.einsum("bhqk,bkm->bhqm", pattern, columns)
    image, visual_sink = sums.unbind(dim=-1)
    eps = (visual.sum(-1) * visual_eps).to(dtype)[:, None, None]
    return image, visual_sink / (image + eps)


def official_selection(
    pattern: Float[torch.Tensor, "batch head query key"],
    *,
    masks: Float[torch.Tensor, "batch key 3"],
    has_visual_sink: Bool[torch.Tensor, " batch"],
    queries: Bool[torch.Tensor, "batch query"],
    max_sink_fraction: float,
    min_image_attention: float,
    visual_eps: float = OFFICIAL_VISUAL_EPS,
) -> Bool[torch.Tensor, "batch head query"]:
    """Rows the authors' code redistributes (its rho is ``max_sink_fraction``).

    ``s >= min_image_attention`` and ``fraction <= max_sink_fraction``, both
    compared in the pattern's dtype (a Python threshold is rounded to it, so
    in fp16 0.2 is 0.19995), plus the rules every selection shares: an allowed
    query, a visual sink in the sample, some non-sink visual attention.
    """
    _check_fraction("max_sink_fraction", max_sink_fraction)
    _check_fraction("min_image_attention", min_image_attention)
    image, fraction = official_sink_fraction(pattern, masks, visual_eps)
    visual_non_sink = torch.einsum("bhqk,bk->bhq", pattern.to(torch.float32), masks[..., 1])
    return (
        queries[:, None, :]
        & has_visual_sink[:, None, None]
        & (image >= min_image_attention)
        & (fraction <= max_sink_fraction)
        & (visual_non_sink > 0)
    )


def redistribution_rows(
    pattern: Float[torch.Tensor, "batch head query key"],
    *,
    visual: Bool[torch.Tensor, "batch key"],
    sinks: Bool[torch.Tensor, "batch key"],
    queries: Bool[torch.Tensor, "batch query"],
    rho: float = RHO,
    min_image_attention: float = MIN_IMAGE_ATTENTION,
) -> Bool[torch.Tensor, "batch head query"]:
    """Rows ``(batch, head, query)`` that VAR redistributes (paper convention).

    Row ``i`` of sample ``b`` is selected iff ``queries[b, i]``,
    ``s_i >= min_image_attention``, ``r_i >= rho``, sample ``b`` has a key
    that is both visual and a sink, and ``sum_{j in I_vis \\ I_sink} alpha_ij > 0``.

    Args:
        pattern: post-softmax attention ``[batch, head, query, key]``.
        visual: image-token keys ``[batch, key]``.
        sinks: sink keys ``[batch, key]``.
        queries: queries VAR may change ``[batch, query]``.
        rho: minimum visual non-sink ratio, in ``[0, 1]``.
        min_image_attention: minimum image attention ``s``, in ``[0, 1]``.
    """
    _check_pattern_and_masks(pattern, visual, sinks, queries)
    _check_fraction("rho", rho)
    _check_fraction("min_image_attention", min_image_attention)
    image, visual_non_sink, _ = _key_sums(pattern, visual, sinks)
    return _select(
        image,
        visual_non_sink,
        has_visual_sink=(visual & sinks).any(dim=-1),
        queries=queries,
        rho=rho,
        min_image_attention=min_image_attention,
    )


def redistribute_attention_with_stats(
    pattern: Float[torch.Tensor, "batch head query key"],
    *,
    visual: Bool[torch.Tensor, "batch key"],
    sinks: Bool[torch.Tensor, "batch key"],
    queries: Bool[torch.Tensor, "batch query"],
    p: float = P,
    rho: float = RHO,
    min_image_attention: float = MIN_IMAGE_ATTENTION,
    convention: Convention = "paper",
) -> tuple[
    Float[torch.Tensor, "batch head query key"],
    Bool[torch.Tensor, "batch head query"],
    Float[torch.Tensor, "batch head query"],
]:
    """Apply VAR to one layer's attention pattern and report what moved.

    In every selected row (see :func:`redistribution_rows`)::

        Omega = p * sum_{j in I_sink} alpha_ij
        alpha'_ij = (1 - p) alpha_ij                            j in I_sink
        alpha'_ij = alpha_ij (1 + Omega / V_i),  V_i = sum_{k in I_vis \\ I_sink} alpha_ik
                                                                j in I_vis \\ I_sink
        alpha'_ij = alpha_ij                                    otherwise

    so each row keeps its sum. All other rows are returned bit-identical.

    Args:
        pattern: post-softmax attention ``[batch, head, query, key]`` (fp32/fp16/bf16).
            Not modified.
        visual: image-token keys ``[batch, key]``.
        sinks: sink keys ``[batch, key]``; all of them (text sinks too) give up mass.
        queries: queries VAR may change ``[batch, query]``.
        p: fraction of sink attention moved (``convention="paper"``).
        rho: minimum visual non-sink ratio (``convention="paper"``).
        min_image_attention: minimum image attention ``s`` of a selected row.
        convention: ``"paper"`` or ``"official"``. The official code stores ``p`` as
            the fraction kept (moves ``1 - p``) and ``rho`` as a maximum on the visual
            sink fraction (selects ``1 - r <= rho``); those are mapped to
            ``p_paper = 1 - p`` and ``rho_paper = 1 - rho``.

    Returns:
        ``(new_pattern, changed_rows, moved_mass)``: the redistributed pattern in the
        input dtype; the selected rows ``[batch, head, query]`` (a selected row with no
        sink attention, or ``p == 0``, is reported but numerically unchanged); and the
        float32 mass ``Omega`` moved off the sinks per row, 0 in unselected rows.
    """
    p, rho = to_paper_convention(p, rho, convention)
    _check_fraction("min_image_attention", min_image_attention)
    _check_pattern_and_masks(pattern, visual, sinks, queries)

    return redistribute_with_tables(
        pattern,
        masks=key_masks(visual, sinks),
        category=key_category(visual, sinks),
        has_visual_sink=(visual & sinks).any(dim=-1),
        queries=queries,
        p=p,
        rho=rho,
        min_image_attention=min_image_attention,
    )


def redistribute_with_tables(
    pattern: Float[torch.Tensor, "batch head query key"],
    *,
    masks: Float[torch.Tensor, "batch key 3"],
    category: torch.Tensor,
    has_visual_sink: Bool[torch.Tensor, " batch"],
    queries: Bool[torch.Tensor, "batch query"],
    p: float,
    rho: float,
    min_image_attention: float,
    selected: Bool[torch.Tensor, "batch head query"] | None = None,
) -> tuple[
    Float[torch.Tensor, "batch head query key"],
    Bool[torch.Tensor, "batch head query"],
    Float[torch.Tensor, "batch head query"],
]:
    """VAR on checked inputs, paper convention, with the per-key tables given.

    The hook (:mod:`analysis.var`) builds ``masks``, ``category`` and
    ``has_visual_sink`` once per layer and calls this on every step, so a
    decoding step costs a few small kernels and no mask rebuilding.
    ``selected`` replaces the paper's row test (e.g. :func:`official_selection`);
    ``rho`` is then unused.
    """
    image, visual_non_sink, sink_mass = _masked_sums(pattern, masks)
    changed = (
        _select(
            image,
            visual_non_sink,
            has_visual_sink=has_visual_sink,
            queries=queries,
            rho=rho,
            min_image_attention=min_image_attention,
        )
        if selected is None
        else selected
    )
    moved = torch.where(changed, p * sink_mass, 0.0)
    safe_denominator = torch.where(changed, visual_non_sink, 1.0)

    # alpha' = alpha + alpha * delta with delta = -p on sinks, Omega / V on
    # non-sink visual keys and exactly 0 elsewhere (incl. every unselected row),
    # so untouched entries are reproduced bit for bit.
    per_category = torch.stack(
        [
            torch.zeros_like(moved),
            torch.where(changed, -p, 0.0),
            moved / safe_denominator,
        ],
        dim=-1,
    )
    # A stride-0 view: the index costs no pattern-sized memory.
    index = category[:, None, None, :].expand(pattern.shape)
    # gather, not a matmul against one-hot masks, so delta is exact even under TF32.
    delta = torch.gather(per_category, -1, index)
    # In place on the single float32 temporary; mixed-dtype in-place ops compute in float32.
    new_pattern = delta.mul_(pattern).add_(pattern).to(pattern.dtype)
    return new_pattern, changed, moved


def redistribute_attention(
    pattern: Float[torch.Tensor, "batch head query key"],
    *,
    visual: Bool[torch.Tensor, "batch key"],
    sinks: Bool[torch.Tensor, "batch key"],
    queries: Bool[torch.Tensor, "batch query"],
    p: float = P,
    rho: float = RHO,
    min_image_attention: float = MIN_IMAGE_ATTENTION,
    convention: Convention = "paper",
) -> Float[torch.Tensor, "batch head query key"]:
    """VAR on one layer's pattern; see :func:`redistribute_attention_with_stats`."""
    new_pattern, _, _ = redistribute_attention_with_stats(
        pattern,
        visual=visual,
        sinks=sinks,
        queries=queries,
        p=p,
        rho=rho,
        min_image_attention=min_image_attention,
        convention=convention,
    )
    return new_pattern
