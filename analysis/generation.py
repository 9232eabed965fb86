"""Greedy generation and answer scoring under hook interventions.

Generation runs HF's own ``generate`` on the wrapped model: the bridge's
components sit inside it, so hooks (VAR, knock-outs) fire at every step, the
KV cache, left padding and each family's position handling (e.g. Gemma 3's
image-token attention) stay HF's. After every cached generation the cache is
checked to hold every position fed (:func:`analysis.compat.check_cache_filled`):
a transformers / TransformerLens mismatch that leaves it empty raises instead of
decoding without the prompt.

:func:`reference_greedy` is the slow reference the cached path is tested
against: an uncached loop of full forwards, hooks rebuilt for each longer sequence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int

from analysis.capture import HookFn, forward
from analysis.compat import check_cache_filled
from analysis.errors import UserInputError

if TYPE_CHECKING:
    from analysis.loading import LoadedModel
    from analysis.tokens import ModelInputs


@dataclass
class Generation:
    """Generated token ids (prompt excluded) and their decoded text, per sample.

    ``step_logits`` (with ``keep_logits=True``): the next-token logits of every
    decoding step, [batch, vocab] each, as float32 on the CPU.
    """

    tokens: list[list[int]]
    texts: list[str]
    step_logits: list[torch.Tensor] = field(default_factory=list)


def generate(
    model: LoadedModel,
    inputs: ModelInputs,
    *,
    max_new_tokens: int = 16,
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
    stop_at_eos: bool = True,
    keep_logits: bool = False,
) -> Generation:
    """Greedy decoding with a KV cache, ``fwd_hooks`` active at every step.

    ``stop_at_eos=False`` decodes exactly ``max_new_tokens`` tokens and keeps the
    EOS ids in ``tokens`` (for comparisons against :func:`reference_greedy`).
    The image placeholder token is never generated. ``keep_logits`` keeps each
    step's raw logits (before that suppression).
    """
    if max_new_tokens < 1:
        raise UserInputError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    device = model.device
    tensors = {k: v.to(device) for k, v in inputs.tensors.items()}
    eos = list(model.eos_token_ids) or None
    pad = model.pad_token_id if model.pad_token_id is not None else (eos or [0])[0]
    with torch.no_grad(), model.bridge.hooks(fwd_hooks=list(fwd_hooks)):
        out = model.hf_model.generate(
            **tensors,
            max_new_tokens=max_new_tokens,
            min_new_tokens=None if stop_at_eos else max_new_tokens,
            do_sample=False,
            num_beams=1,
            use_cache=True,
            eos_token_id=eos if stop_at_eos else None,
            pad_token_id=pad,
            # An image placeholder in the output would be read as an image slot.
            suppress_tokens=[model.image_token_id],
            return_dict_in_generate=True,
            output_logits=keep_logits,
        )
    check_cache_filled(out)
    new = out.sequences[:, inputs.input_ids.shape[1] :].cpu()
    if stop_at_eos:
        tokens = [_strip(row.tolist(), set(model.eos_token_ids), model.pad_token_id) for row in new]
    else:
        tokens = [row.tolist() for row in new]
    texts = [model.tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]
    logits = [step.float().cpu() for step in out.logits] if keep_logits else []
    return Generation(tokens, texts, logits)


HookFactory = Callable[["ModelInputs"], Sequence[tuple[str, HookFn]]]


def reference_greedy(
    model: LoadedModel,
    inputs: ModelInputs,
    *,
    max_new_tokens: int,
    make_hooks: HookFactory | None = None,
) -> Generation:
    """Greedy decoding without a cache: one full forward per token (slow; a reference).

    ``make_hooks(extended)`` builds the hooks for each step's sequence, the prompt
    plus the tokens generated so far (:meth:`ModelInputs.extend`), so an
    intervention sees the generated tokens as text queries after the image, as
    its decoding rows in the cached path. Position ids follow the attention mask
    as in ``generate``, so left-padded batches match it (families whose model
    derives its own from the mask, Qwen's 3D mRoPE positions, get none passed).
    EOS does not stop it.
    """
    device = model.device
    current = inputs
    steps: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        tensors = {k: v.to(device) for k, v in current.tensors.items()}
        if model.family.position_ids_from_mask:
            mask = tensors["attention_mask"].long()
            tensors["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        hooks = list(make_hooks(current)) if make_hooks is not None else []
        with torch.no_grad(), model.bridge.hooks(fwd_hooks=hooks):
            logits = model.hf_model(**tensors, use_cache=False).logits
        step = logits[:, -1].float().cpu()
        steps.append(step)
        allowed = step.clone()
        allowed[:, model.image_token_id] = -torch.inf  # as generate's suppress_tokens
        current = current.extend(allowed.argmax(-1, keepdim=True))
    new = current.input_ids[:, inputs.input_ids.shape[1] :]
    tokens = [row.tolist() for row in new]
    texts = [model.tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]
    return Generation(tokens, texts, steps)


def _strip(ids: list[int], eos: set[int], pad: int | None) -> list[int]:
    out = []
    for token in ids:
        if token in eos:
            break
        if pad is not None and token == pad:
            continue
        out.append(token)
    return out


def answer_token_ids(model: LoadedModel, answers: Sequence[str]) -> list[int]:
    """First token id of each answer as the model would produce it after the prompt."""
    ids = []
    for answer in answers:
        encoded = model.tokenizer(answer, add_special_tokens=False)["input_ids"]
        if not encoded:
            raise UserInputError(f"Answer {answer!r} tokenizes to nothing.")
        ids.append(int(encoded[0]))
    if len(set(ids)) != len(ids):
        raise UserInputError(
            f"Answers {list(answers)} share a first token; they cannot be told apart."
        )
    return ids


def next_token_logprobs(
    logits: Float[torch.Tensor, "batch pos vocab"],
) -> Float[torch.Tensor, "batch vocab"]:
    """Log-probabilities of the next token after each (left-padded) prompt."""
    return torch.log_softmax(logits[:, -1].float(), dim=-1)


def answer_logprobs(
    model: LoadedModel,
    inputs: ModelInputs,
    answers: Sequence[str],
    *,
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
) -> tuple[Float[torch.Tensor, "batch answer"], Float[torch.Tensor, "batch vocab"]]:
    """log p(first token of each answer | prompt), and the full next-token log-probs."""
    ids = answer_token_ids(model, answers)
    logprobs = next_token_logprobs(forward(model, inputs, fwd_hooks, logits_to_keep=1)).cpu()
    return logprobs[:, ids], logprobs


def kl_divergence(
    reference: Float[torch.Tensor, "batch vocab"], other: Float[torch.Tensor, "batch vocab"]
) -> Float[torch.Tensor, " batch"]:
    """KL(reference || other) of next-token distributions given as log-probabilities."""
    return (reference.exp() * (reference - other)).sum(-1)


def greedy_tokens(logprobs: Float[torch.Tensor, "batch vocab"]) -> Int[torch.Tensor, " batch"]:
    return logprobs.argmax(-1)


def decode_tokens(model: LoadedModel, ids: Sequence[int]) -> list[str]:
    return [model.tokenizer.decode([int(i)]).strip() for i in ids]


def describe_generation(model: LoadedModel, generation: Generation) -> list[dict[str, Any]]:
    return [
        {"text": t, "tokens": ids}
        for t, ids in zip(generation.texts, generation.tokens, strict=True)
    ]
