"""Attention routing: pay for the explicit pattern only where a hook reads it.

(Over 500 lines on purpose: the fast forward of TransformerLens' attention
bridges and :func:`hooked_attention`, the attention function for HF-native
layers, share one route planner and one SDPA + explicit-rows kernel.)

TransformerLens's attention bridges recompute attention eagerly so that
``hook_attn_scores`` and ``hook_pattern`` can fire: every layer builds a
[batch, head, query, key] score matrix and its softmax, 706 MB per layer at
LLaVA-NeXT's 2349 tokens, even when no hook is attached to either point.
:func:`install_attention_routing` (called by :func:`analysis.loading.load_model`)
gives every attention bridge a forward that decides, **at each call**, from the
hooks attached at that moment:

* ``eager``: the bridge's own forward, unchanged, when a hook on
  ``hook_attn_scores`` or ``hook_pattern`` is not one of the two kinds below
  (a user's own hook, ``run_with_cache``, a backward hook), inside
  :func:`eager_attention`, or when the layer uses a feature this router does
  not reproduce (see :func:`routable`);
* ``sdpa``: no hook on either point: torch's ``scaled_dot_product_attention``
  on the same Q, K, V and the same additive mask the eager path adds; every
  other hook point of the bridge (``hook_q``/``k``/``v``, ``hook_rot_q``/``k``,
  ``hook_z``, ``hook_out``, the rotary ``hook_cos``/``hook_sin``) still fires
  on the same tensors;
* ``sdpa`` + **additive mask**: every hook on ``hook_attn_scores`` is a
  *score mask* (:func:`score_mask_hook`): instead of editing the scores it
  returns which (query, key) pairs to block, folded into SDPA's additive mask
  as the dtype's minimum, exactly as the eager knock-out's ``masked_fill``;
* ``rows`` (row-sparse): every hook on ``hook_pattern`` is a *row-sparse*
  hook (:func:`row_sparse_hook`). SDPA computes the output of all rows; for
  the union of the rows the hooks ask for, the router recomputes
  softmax(QK^T * scale + mask) explicitly (float32 softmax, as eager), runs
  ``hook_pattern`` on those rows only, and replaces their output by
  ``edited_rows @ V``. VAR edits only the text-query rows of a prefill (a few
  dozen of ~600-2900) and one row per decoding step, so its cost approaches
  plain SDPA's. When the rows asked for are all of the call's rows (a decoding
  step), the output is ``edited_rows @ V`` alone, with no SDPA pass. Selectors
  return sorted, unique row indices.

What a hook on ``hook_pattern`` receives
----------------------------------------
A plain hook (no marker) always receives the full ``[batch, head, query, key]``
pattern: attaching it makes that layer eager, so existing code keeps working
unchanged. A row-sparse hook receives ``[batch, head, row, key]`` where
``hook.ctx[ROWS_KEY]`` is the Long[row] index of those rows within the call's
query block and ``hook.ctx[N_QUERY_KEY]`` the call's full query count; on the
eager path (another plain hook on the same layer, :func:`eager_attention`)
the context holds neither key and the hook receives the full pattern. So a
hook tells the two apart by ``ROWS_KEY in hook.ctx``, and must handle both;
what it returns replaces the rows it received.

HF-native attention (Qwen2.5-VL, Qwen3-VL)
-----------------------------------------
Where TransformerLens leaves attention to the HF module (mRoPE),
:func:`install_native_routing` registers :func:`hooked_attention` with
transformers' ``AttentionInterface`` and points the text config at it: the HF
module then hands its rotated Q, K, V to this module, which routes them the
same way (SDPA, additive score masks, row-sparse rows, or eager with
``hook_attn_scores`` on the pre-softmax scores and ``hook_pattern`` on the
pattern it multiplies by V), so edits take effect on these families too.

The router keeps no state between calls: the route depends only on the hooks
attached during the call, so the same loaded model runs eager under a
pattern capture and SDPA in the next plain forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from jaxtyping import Bool, Float, Int

if TYPE_CHECKING:
    from analysis.loading import LoadedModel

Route = Literal["eager", "sdpa", "rows"]

#: The name :func:`hooked_attention` is registered under in transformers' AttentionInterface.
HOOKED_ATTENTION = "vsink_eager"
# Key, in an HF attention module's __dict__, of the attention bridge whose hooks it runs.
_BRIDGE_OF = "_vsink_attention_bridge"

# Attributes a hook function carries to opt into a fast route.
SCORE_MASK_ATTR = "vsink_score_mask"
ROWS_ATTR = "vsink_rows"
# Keys a row-sparse hook finds in ``hook.ctx`` when it receives only some rows.
ROWS_KEY = "vsink_rows"
N_QUERY_KEY = "vsink_n_query"

# blocked(n_query, n_key, device) -> Bool[batch, query, key] pairs to block (or None: none).
ScoreMask = Callable[[int, int, torch.device], "Bool[torch.Tensor, 'batch query key'] | None"]
# rows(n_query, n_key, device) -> Long[row] rows the hook reads / edits (None: every row).
RowSelector = Callable[[int, int, torch.device], "Int[torch.Tensor, ' row'] | None"]

_FORCE_EAGER = "_vsink_force_eager"
_ROUTED = "_vsink_routed"
_NATIVE_ROUTED = "_vsink_native_routed"


def score_mask_hook(hook: Callable[..., Any], blocked: ScoreMask) -> Callable[..., Any]:
    """Mark ``hook`` (on ``hook_attn_scores``) as expressible as an additive mask.

    On the eager path ``hook`` runs as usual; on the fast path only ``blocked`` is
    called (once per layer call, with the call's query and key counts), so any
    state the two share advances once either way.
    """
    setattr(hook, SCORE_MASK_ATTR, blocked)
    return hook


def row_sparse_hook(hook: Callable[..., Any], rows: RowSelector) -> Callable[..., Any]:
    """Mark ``hook`` (on ``hook_pattern``) as reading / editing only the rows ``rows`` names."""
    setattr(hook, ROWS_ATTR, rows)
    return hook


def rows_selector(rows: Int[torch.Tensor, " row"], prefill_len: int) -> RowSelector:
    """A selector for a hook that reads the prefill's rows ``rows`` and no decoding row."""

    def select(n_query: int, n_key: int, device: torch.device) -> torch.Tensor:
        if n_query != prefill_len:
            return torch.zeros(0, dtype=torch.long, device=device)
        return rows.to(device)

    return select


def _user_hooks(point: torch.nn.Module) -> list[Callable[..., Any]] | None:
    """The hook functions attached to a HookPoint, or None when any is not a plain
    TransformerLens forward hook (raw PyTorch hooks, backward hooks)."""
    handles = list(getattr(point, "fwd_hooks", []))
    raw = len(point._forward_hooks) + len(point._forward_pre_hooks) + len(point._backward_hooks)
    if raw != len(handles) or getattr(point, "bwd_hooks", None):
        return None
    fns = [getattr(handle, "user_hook", None) for handle in handles]
    return None if any(fn is None for fn in fns) else [fn for fn in fns if fn is not None]


def plan(attn: torch.nn.Module) -> tuple[Route, list[ScoreMask], list[RowSelector]]:
    """The route of one attention bridge for the hooks attached now (see module doc)."""
    if getattr(attn, _FORCE_EAGER, False):
        return "eager", [], []
    if not (getattr(attn, _NATIVE_ROUTED, False) or routable(attn)):
        return "eager", [], []
    return plan_hooks(attn)


def plan_hooks(attn: torch.nn.Module) -> tuple[Route, list[ScoreMask], list[RowSelector]]:
    """The route the hooks attached now to ``attn``'s score and pattern points allow."""
    score_fns = _user_hooks(cast(torch.nn.Module, attn.hook_attn_scores))
    pattern_fns = _user_hooks(cast(torch.nn.Module, attn.hook_pattern))
    if score_fns is None or pattern_fns is None:
        return "eager", [], []
    masks = [getattr(fn, SCORE_MASK_ATTR, None) for fn in score_fns]
    rows = [getattr(fn, ROWS_ATTR, None) for fn in pattern_fns]
    if any(m is None for m in masks) or any(r is None for r in rows):
        return "eager", [], []
    return ("rows" if rows else "sdpa"), masks, rows  # type: ignore[return-value]


def routable(attn: torch.nn.Module) -> bool:
    """Whether this bridge uses only what the fast forward reproduces exactly.

    Covers LLaMA-style attention (LLaVA-1.5, LLaVA-NeXT) and Gemma 3 (per-head
    q/k norm before RoPE, sliding windows through HF's mask); anything else
    (split-QKV inputs, gated or scaled projections, soft-capping, attention
    sinks, per-head results, training-mode dropout, compatibility mode) runs eager.
    """
    from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
        PositionEmbeddingsAttentionBridge,
    )

    if type(attn).forward is not PositionEmbeddingsAttentionBridge.forward:
        return False
    hf_attn = getattr(attn, "original_component", None)
    config = attn.config
    if hf_attn is None or attn.training or getattr(attn, "compatibility_mode", False):
        return False
    flags = (
        "use_split_qkv_input",
        "use_attn_in",
        "gated_q_proj",
        "qk_norm_after_rope",
        "rotary_interleaved_cos_sin",
        "rotary_adjacent_pairs",
        "use_attn_result",
    )
    if any(bool(getattr(config, flag, False)) for flag in flags):
        return False
    for name in ("key_multiplier", "attn_logit_softcapping", "sinks"):
        if getattr(hf_attn, name, None) is not None:
            return False
    hf_config = getattr(hf_attn, "config", None)
    if getattr(hf_config, "clip_qkv", None) is not None:
        return False
    rope = getattr(hf_config, "rope_parameters", None)
    if isinstance(rope, dict) and rope.get("llama_4_scaling_beta") is not None:
        return False
    if attn._qk_norm_phase not in (None, "post_reshape"):
        return False
    gate = attn._modules.get("gate")
    return gate is None or gate.original_component is None


def install_attention_routing(bridge: torch.nn.Module) -> int:
    """Give every rotary attention bridge (the language model's) the routed forward.

    Returns how many; the vision tower's attention is left as it is.

    Idempotent; :func:`remove_attention_routing` restores the bridges' own forward.
    """
    from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
        PositionEmbeddingsAttentionBridge,
    )

    count = 0
    for module in bridge.modules():
        if isinstance(module, PositionEmbeddingsAttentionBridge):
            if not getattr(module, _ROUTED, False):
                # Straight into __dict__: the bridge's __setattr__ would forward a
                # plain assignment to the wrapped HF module.
                module.__dict__["forward"] = _routed_forward.__get__(module)
                setattr(module, _ROUTED, True)
            count += 1
    return count


def remove_attention_routing(bridge: torch.nn.Module) -> int:
    count = 0
    for module in bridge.modules():
        if getattr(module, _ROUTED, False):
            module.__dict__.pop("forward", None)
            setattr(module, _ROUTED, False)
            count += 1
    return count


@contextlib.contextmanager
def eager_attention(model: LoadedModel) -> Iterator[None]:
    """Every attention layer of ``model`` runs the bridge's eager forward inside this block
    (the reference the fast routes are tested against)."""
    modules = [
        m
        for m in model.bridge.modules()
        if getattr(m, _ROUTED, False) or getattr(m, _NATIVE_ROUTED, False)
    ]
    for module in modules:
        setattr(module, _FORCE_EAGER, True)
    try:
        yield
    finally:
        for module in modules:
            setattr(module, _FORCE_EAGER, False)


def _routed_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
    route, masks, rows = plan(self)
    has_rope = kwargs.get("position_embeddings") is not None
    if route == "eager" or not has_rope:
        return type(self).forward(self, *args, **kwargs)
    return _fast_forward(self, masks, rows, *args, **kwargs)


# ----------------------------------------------------------------------------- pure maths


def blocked_to_additive(
    mask: torch.Tensor, blocked: Bool[torch.Tensor, "batch query key"]
) -> torch.Tensor:
    """Fold blocked pairs into an additive [batch, 1, query, key] mask as the dtype's minimum."""
    return mask.masked_fill(blocked[:, None].to(mask.device), torch.finfo(mask.dtype).min)


def pattern_rows(
    query: torch.Tensor,
    key: torch.Tensor,
    mask: torch.Tensor,
    rows: Int[torch.Tensor, " row"],
    scaling: float,
) -> torch.Tensor:
    """softmax(Q_rows K^T * scale + mask_rows) with a float32 softmax, as the eager bridge.

    query [batch, head, query, d_head], key [batch, head, key, d_head], mask
    [batch, 1, query, key]; returns [batch, head, row, key] in the query's dtype.
    """
    scores = torch.matmul(query.index_select(2, rows), key.transpose(-2, -1)) * scaling
    scores = scores + mask.index_select(2, rows)
    return torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)


def union_rows(selected: list[torch.Tensor | None], n_query: int, device: torch.device) -> Any:
    """Sorted union of the rows each hook asked for (None from any hook: every row).

    Selectors return sorted, unique rows; a single hook's are used as they are.
    """
    if any(r is None for r in selected):
        return torch.arange(n_query, device=device)
    if len(selected) == 1:  # one hook: its rows as given (no unique(), no device sync)
        return selected[0].to(device).long()  # type: ignore[union-attr]
    rows = torch.cat([r.to(device).long() for r in selected if r is not None])
    return torch.unique(rows)


# ----------------------------------------------------------------------------- fast forward


def _fast_forward(
    self: Any, masks: list[ScoreMask], selectors: list[RowSelector], *args: Any, **kwargs: Any
) -> tuple[torch.Tensor, None]:
    """The bridge's forward (position_embeddings_attention.py) for routable layers, with
    SDPA instead of the explicit pattern; hook points fire on the same tensors."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

    hf_attn = self.original_component
    if "hidden_states" in kwargs:
        hidden_states = kwargs.pop("hidden_states")
    else:
        hidden_states, args = args[0], args[1:]
    position_embeddings = kwargs.pop("position_embeddings")
    attention_mask = kwargs.pop("attention_mask", None)

    hidden_states = self.hook_in(hidden_states)
    input_shape = hidden_states.shape[:-1]
    head_dim = hf_attn.head_dim
    hidden_shape = (*input_shape, -1, head_dim)
    query = self.q(hidden_states).view(hidden_shape).transpose(1, 2)
    key = self.k(hidden_states).view(hidden_shape).transpose(1, 2)
    value = self.v(hidden_states).view(hidden_shape).transpose(1, 2)

    if "q_norm" in self.submodules and self._qk_norm_phase == "post_reshape":
        if self._qk_norm_per_head:
            query = self.hook_q_normed(self.q_norm(query.transpose(1, 2)).transpose(1, 2))
            if "k_norm" in self.submodules:
                key = self.hook_k_normed(self.k_norm(key.transpose(1, 2)).transpose(1, 2))
        else:
            query = self.hook_q_normed(self.q_norm(query))
            if "k_norm" in self.submodules:
                key = self.hook_k_normed(self.k_norm(key))

    cos, sin = self._apply_position_embedding_hooks(position_embeddings)
    rotary_dim = cos.shape[-1]
    from transformer_lens.utilities.hf_utils import get_rotary_pct_from_config

    if rotary_dim * 2 == head_dim and get_rotary_pct_from_config(self.config) == 1.0:
        cos, sin = torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
    elif rotary_dim < head_dim:
        q_rot, k_rot = apply_rotary_pos_emb(
            query[..., :rotary_dim], key[..., :rotary_dim], cos, sin
        )
        query = torch.cat([q_rot, query[..., rotary_dim:]], dim=-1)
        key = torch.cat([k_rot, key[..., rotary_dim:]], dim=-1)
    else:
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
    if hasattr(self, "hook_rot_q"):
        query = self.hook_rot_q(query)
    if hasattr(self, "hook_rot_k"):
        key = self.hook_rot_k(key)

    key, value = self._update_kv_cache(key, value, **kwargs)
    groups = getattr(hf_attn, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scaling = getattr(hf_attn, "scaling", head_dim**-0.5)
    output = attend(self, query, key, value, attention_mask, scaling, masks, selectors)
    output = output.transpose(1, 2).contiguous().reshape(*input_shape, -1)
    o_weight = getattr(getattr(self.o, "original_component", None), "weight", None)
    if (
        isinstance(o_weight, torch.Tensor)
        and o_weight.dtype.is_floating_point
        and output.dtype != o_weight.dtype
    ):
        output = output.to(dtype=o_weight.dtype)
    output = self.hook_out(self.o(output))
    return output, None


def attend(
    self: Any,
    query: Float[torch.Tensor, "batch head query d_head"],
    key: Float[torch.Tensor, "batch head key d_head"],
    value: Float[torch.Tensor, "batch head key d_head"],
    attention_mask: torch.Tensor | None,
    scaling: float,
    masks: list[ScoreMask],
    selectors: list[RowSelector],
) -> Float[torch.Tensor, "batch head query d_head"]:
    """SDPA (plus the explicit rows the row-sparse hooks ask for) on K/V already GQA-expanded.

    ``self`` is the attention bridge whose ``hook_pattern`` the explicit rows run through;
    ``attention_mask`` is whatever the HF model passed (4D additive, bool, 2D or None).
    """
    batch, _, n_query, _ = query.shape
    n_key = key.shape[-2]
    # The additive mask the eager path adds to its scores, built on a [batch, 1, q, k] zero.
    mask = self._apply_reconstruct_attention_mask(
        attn_scores=query.new_zeros(batch, 1, n_query, n_key),
        attention_mask=attention_mask,
        seq_len=n_key,
        q_seq_len=n_query,
    )
    for blocked_fn in masks:
        blocked = blocked_fn(n_query, n_key, query.device)
        if blocked is not None:
            mask = blocked_to_additive(mask, blocked)

    rows = None
    if selectors:
        rows = union_rows(
            [s(n_query, n_key, query.device) for s in selectors], n_query, query.device
        )
    if rows is not None and rows.numel() == n_query:
        # Every row explicit (a decoding step under VAR): no SDPA pass at all.
        part = _run_pattern_hook(self, pattern_rows(query, key, mask, rows, scaling), rows, n_query)
        output = torch.matmul(part, value)
    else:
        output = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, scale=scaling
        )
        if rows is not None and rows.numel():
            part = pattern_rows(query, key, mask, rows, scaling)
            part = _run_pattern_hook(self, part, rows, n_query)
            output = output.index_copy(2, rows, torch.matmul(part, value))
    return output


def _run_pattern_hook(
    self: Any, part: torch.Tensor, rows: torch.Tensor, n_query: int
) -> torch.Tensor:
    """``hook_pattern`` on the explicit rows, with their index in ``hook.ctx``."""
    ctx = self.hook_pattern.ctx
    ctx[ROWS_KEY], ctx[N_QUERY_KEY] = rows, n_query
    try:
        return self.hook_pattern(part)
    finally:
        ctx.pop(ROWS_KEY, None)
        ctx.pop(N_QUERY_KEY, None)


def route_of(model: LoadedModel, layer: int) -> Route:
    """The route layer ``layer`` would take with the hooks attached now (for tests, docs)."""
    return plan(model.bridge.blocks[layer].attn)[0]


# ----------------------------------------------------------------------------- HF-native attention


def register_attention_function() -> None:
    """Register :func:`hooked_attention` (and HF's eager mask for it) under :data:`HOOKED_ATTENTION`.

    A name -> function entry in transformers' attention registries, the same
    function every time (idempotent).
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(HOOKED_ATTENTION, hooked_attention)
    AttentionMaskInterface.register(HOOKED_ATTENTION, eager_mask)


def install_native_routing(bridge: torch.nn.Module) -> int:
    """Route the language model's HF-native attention through :func:`hooked_attention`.

    Some adapters (Qwen2.5-VL, Qwen3-VL: mRoPE) leave attention to the HF
    module, which fires ``hook_pattern`` only after it has used the pattern, so
    edits there are discarded. HF's attention modules call whatever function
    their config's ``_attn_implementation`` names; this points the text
    config at :data:`HOOKED_ATTENTION` and tells each HF attention module
    which bridge's hook points to run. Returns how many layers were routed.
    """
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    register_attention_function()
    hf_model = cast(Any, bridge).original_model
    count = 0
    for block in cast(Any, bridge).blocks:
        attn = block.attn
        hf_attn = getattr(attn, "original_component", None)
        # Only bridges whose forward delegates to the HF module (TransformerLens' own
        # attention bridges, e.g. LLaVA's, compute attention themselves).
        if hf_attn is None or type(attn).forward is not AttentionBridge.forward:
            continue
        # Straight into __dict__: a module attribute would register the bridge as a
        # submodule of the HF model (duplicate hook names, a cycle in .modules()).
        hf_attn.__dict__[_BRIDGE_OF] = attn
        setattr(attn, _NATIVE_ROUTED, True)
        count += 1
    if count:
        _set_text_attention(hf_model, HOOKED_ATTENTION)
    return count


def remove_native_routing(bridge: torch.nn.Module) -> int:
    """Undo :func:`install_native_routing`: the HF modules compute attention eagerly themselves."""
    count = 0
    for block in cast(Any, bridge).blocks:
        attn = block.attn
        if getattr(attn, _NATIVE_ROUTED, False):
            attn.original_component.__dict__.pop(_BRIDGE_OF, None)
            setattr(attn, _NATIVE_ROUTED, False)
            count += 1
    if count:
        _set_text_attention(cast(Any, bridge).original_model, "eager")
    return count


def _set_text_attention(hf_model: Any, implementation: str) -> None:
    """Set the attention implementation of the text model only (the vision tower keeps its own)."""
    text_config = hf_model.config.get_text_config()
    if text_config is hf_model.config:
        hf_model.set_attn_implementation(implementation)
        return
    key = next(
        (k for k in hf_model.config.sub_configs if getattr(hf_model.config, k) is text_config),
        None,
    )
    if key is None:
        raise RuntimeError(f"{type(hf_model).__name__}: cannot find the text config to route.")
    hf_model.set_attn_implementation({key: implementation})


def hooked_attention(
    module: torch.nn.Module,
    query: Float[torch.Tensor, "batch head query d_head"],
    key: Float[torch.Tensor, "batch kv_head key d_head"],
    value: Float[torch.Tensor, "batch kv_head key d_head"],
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Float[torch.Tensor, "batch query head d_head"], None]:
    """An HF attention function whose scores and pattern pass through the bridge's hook points.

    Called by the HF attention module with Q and K already rotated (mRoPE) and
    K/V already extended by the cache. Routed per call like the other families:
    SDPA where no hook reads the pattern, score masks folded into SDPA's mask,
    row-sparse pattern hooks on their rows only, and otherwise the eager path:
    scores = QK^T * scale + mask -> ``hook_attn_scores`` -> float32 softmax ->
    ``hook_pattern`` -> pattern @ V, as TransformerLens' own attention bridges.

    Returns no attention weights: the bridge would otherwise fire its hooks a
    second time, after the fact, on them.
    """
    from transformers.models.llama.modeling_llama import repeat_kv

    attn = module.__dict__.get(_BRIDGE_OF)
    if attn is None:
        raise RuntimeError(
            f"{type(module).__name__} runs {HOOKED_ATTENTION!r} attention but is linked to no "
            "attention bridge; route it with install_native_routing."
        )
    if hasattr(attn, "hook_rot_q"):
        query = attn.hook_rot_q(query)
    if hasattr(attn, "hook_rot_k"):
        key = attn.hook_rot_k(key)
    groups = int(getattr(module, "num_key_value_groups", 1))
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scale = float(scaling if scaling is not None else query.shape[-1] ** -0.5)
    training = bool(module.training and dropout > 0.0)
    route: Route = "eager"
    masks: list[ScoreMask] = []
    selectors: list[RowSelector] = []
    if not training:
        route, masks, selectors = plan(attn)
    if route == "eager":
        n_query, n_key = query.shape[-2], key.shape[-2]
        scores = torch.matmul(query, key.transpose(-2, -1)) * scale
        scores = attn._apply_reconstruct_attention_mask(
            attn_scores=scores, attention_mask=attention_mask, seq_len=n_key, q_seq_len=n_query
        )
        scores = attn.hook_attn_scores(scores)
        pattern = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        if training:
            pattern = torch.nn.functional.dropout(pattern, p=dropout, training=True)
        output = torch.matmul(attn.hook_pattern(pattern), value)
    else:
        output = attend(attn, query, key, value, attention_mask, scale, masks, selectors)
    return output.transpose(1, 2).contiguous(), None
