"""The guard that makes a silent no-op attention edit impossible.

Anything that edits attention (VAR at ``hook_pattern``, knock-outs at
``hook_attn_scores`` or ``hook_pattern``) calls :func:`require_attention_edits`
before it builds its hooks. The first call on a model runs
:func:`probe_attention_edits` (two forwards of a few text tokens) and caches
the answer in ``LoadedModel.extra``; later calls cost nothing.

The probe measures, on every layer at once:

* **pattern edits take effect**: a ``hook_pattern`` hook replaces every row by
  a one-hot on key 0, so every query's attention output must equal key 0's
  value through ``W_O``: the rows of ``hook_attn_out`` must all be equal. Where
  the attention is computed by the HF module and the hook fires after the fact
  (the edit discarded), they differ;
* **``hook_attn_scores`` gets pre-softmax scores**: in the same forward,
  softmax of what that hook received must equal what ``hook_pattern`` received
  (HF-native attention hands it the post-softmax weights instead);
* **score edits take effect**: a ``hook_attn_scores`` hook blocks every key but
  key 0, and the rows of ``hook_attn_out`` must again all be equal.

A family can also declare that edits do not work (``Family.attention_edits``);
then the guard refuses without probing, with the family's reason.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float

from analysis.errors import VsinkError
from analysis.families.base import AttentionEdits
from analysis.hooks import attn_out, attn_pattern, attn_scores

if TYPE_CHECKING:
    from analysis.loading import LoadedModel

#: ``LoadedModel.extra`` key of the cached :class:`AttentionEdits` the probe measured.
EDITS_KEY = "attention_edits"
# Text tokens the probe feeds: enough rows that a discarded edit shows.
_PROBE_TOKENS = 6


class AttentionEditsError(VsinkError):
    """An intervention edits attention on a model where such edits would not take effect."""


def rows_equal(
    out: Float[torch.Tensor, "batch pos d_model"], dtype: torch.dtype
) -> Float[torch.Tensor, ""]:
    """Largest difference between any row and row 0, relative to row 0's size (pure)."""
    out = out.float()
    spread = (out[:, 1:] - out[:, :1]).abs().amax()
    return spread / out[:, :1].abs().amax().clamp_min(torch.finfo(torch.float32).tiny)


def _tolerance(dtype: torch.dtype) -> float:
    # Equal rows are the same value through the same matmul; half types still round.
    return 1e-4 if dtype == torch.float32 else 3e-2


def _probe_ids(model: LoadedModel) -> torch.Tensor:
    """``_PROBE_TOKENS`` distinct ordinary (non-special, non-image) token ids, as [1, pos]."""
    config = model.config
    reserved = set(model.tokenizer.all_special_ids) | {model.image_token_id}
    for name in ("video_token_id", "vision_start_token_id", "vision_end_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            reserved.add(value)
    vocab = int(config.get_text_config().vocab_size)
    ids = [i for i in range(vocab) if i not in reserved][:_PROBE_TOKENS]
    if len(ids) < 3:
        raise AttentionEditsError(
            f"{model.family.name}: the vocabulary has too few ordinary tokens to probe attention edits."
        )
    return torch.tensor([ids], device=model.device)


def _run(model: LoadedModel, ids: torch.Tensor, hooks: list[tuple[str, Any]]) -> None:
    with torch.no_grad(), warnings.catch_warnings(), model.bridge.hooks(fwd_hooks=hooks):
        # TransformerLens warns when it discards an edit; the probe reports that itself.
        warnings.simplefilter("ignore")
        model.hf_model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)


def probe_attention_edits(model: LoadedModel) -> AttentionEdits:
    """Measure whether pattern and score edits take effect on every layer (see module doc)."""
    ids = _probe_ids(model)
    layers = range(model.n_layers)
    scores: dict[int, torch.Tensor] = {}
    patterns: dict[int, torch.Tensor] = {}
    outs: dict[int, torch.Tensor] = {}

    def capture_scores(layer: int) -> Any:
        def hook(tensor: torch.Tensor, hook: Any) -> None:
            scores[layer] = tensor.detach().float()

        return hook

    def one_hot_pattern(layer: int) -> Any:
        def hook(tensor: torch.Tensor, hook: Any) -> torch.Tensor:
            patterns[layer] = tensor.detach().float()
            edited = torch.zeros_like(tensor)
            edited[..., 0] = 1.0
            return edited

        return hook

    def only_key_zero(tensor: torch.Tensor, hook: Any) -> torch.Tensor:
        blocked = torch.ones(tensor.shape[-1], dtype=torch.bool, device=tensor.device)
        blocked[0] = False
        return tensor.masked_fill(blocked, torch.finfo(tensor.dtype).min)

    def record(layer: int) -> Any:
        def hook(tensor: torch.Tensor, hook: Any) -> None:
            outs[layer] = tensor.detach().float()

        return hook

    tol = _tolerance(model.dtype)
    hooks = [(attn_scores(layer), capture_scores(layer)) for layer in layers]
    hooks += [(attn_pattern(layer), one_hot_pattern(layer)) for layer in layers]
    hooks += [(attn_out(layer), record(layer)) for layer in layers]
    _run(model, ids, hooks)
    reasons: list[str] = []
    pre_softmax = {
        layer: layer in scores
        and layer in patterns
        and torch.allclose(scores[layer].softmax(-1), patterns[layer], atol=tol, rtol=0)
        for layer in layers
    }
    pattern_ok = scores_ok = True
    for layer in layers:
        if layer not in patterns or layer not in outs:
            reasons.append(f"hook_pattern of layer {layer} never fired")
            pattern_ok = False
            break
        if outs[layer].abs().amax() == 0:
            # All-zero values (a planted model): equal rows prove nothing; the pattern is
            # then edited in time exactly when the scores hook ran inside the computation.
            effective = pre_softmax[layer]
        else:
            effective = float(rows_equal(outs[layer], model.dtype)) <= tol
        if not effective:
            reasons.append(
                f"an edit at {attn_pattern(layer)} does not reach the attention output (the "
                "attention is computed by the HF module and the hook fires after the fact)"
            )
            pattern_ok = False
            break
    for layer in layers:
        if layer not in scores or layer not in patterns:
            reasons.append(f"hook_attn_scores of layer {layer} never fired")
            scores_ok = False
            break
        if not pre_softmax[layer]:
            reasons.append(
                f"{attn_scores(layer)} receives the post-softmax pattern, not pre-softmax scores"
            )
            scores_ok = False
            break
    if scores_ok:
        outs.clear()
        hooks = [(attn_scores(layer), only_key_zero) for layer in layers]
        hooks += [(attn_out(layer), record(layer)) for layer in layers]
        _run(model, ids, hooks)
        for layer in layers:
            if layer not in outs:
                reasons.append(f"hook_attn_out of layer {layer} never fired")
                scores_ok = False
                break
            if outs[layer].abs().amax() > 0 and float(rows_equal(outs[layer], model.dtype)) > tol:
                reasons.append(f"an edit at {attn_scores(layer)} does not reach the output")
                scores_ok = False
                break
    return AttentionEdits(pattern=pattern_ok, scores=scores_ok, reason="; ".join(reasons))


def attention_edits(model: LoadedModel) -> AttentionEdits:
    """What attention edits do on ``model``: the family's declaration, else the cached probe."""
    declared: AttentionEdits = getattr(model.family, "attention_edits", AttentionEdits())
    if not (declared.pattern and declared.scores):
        return declared
    cached = model.extra.get(EDITS_KEY)
    if not isinstance(cached, AttentionEdits):
        cached = probe_attention_edits(model)
        model.extra[EDITS_KEY] = cached
    return cached


def require_attention_edits(model: LoadedModel, what: str, *, scores: bool = False) -> None:
    """Refuse, in one line, ``what`` on a model where its attention edits would not take effect.

    ``scores``: ``what`` edits ``hook_attn_scores`` (pre-softmax knock-outs), not only
    ``hook_pattern``.
    """
    edits = attention_edits(model)
    if edits.pattern and (edits.scores or not scores):
        return
    kind = "pre-softmax score" if scores and edits.pattern else "attention-pattern"
    raise AttentionEditsError(
        f"{what} needs {kind} edits, which do not take effect on {model.family.name} "
        f"({model.name_or_path}): {edits.reason or 'declared by the family'}."
    )
