"""Greedy generation and answer scoring under hook interventions.

Generation runs HF's own ``generate`` on the wrapped model: the bridge's
components sit inside it, so hooks (VAR, knock-outs) fire at every step, the
KV cache, left padding and each family's position handling (e.g. Gemma 3's
image-token attention) stay HF's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int

from analysis.capture import HookFn, forward

if TYPE_CHECKING:
    from analysis.loading import LoadedModel
    from analysis.tokens import ModelInputs


@dataclass
class Generation:
    """Generated token ids (prompt excluded) and their decoded text, per sample."""

    tokens: list[list[int]]
    texts: list[str]


def generate(
    model: LoadedModel,
    inputs: ModelInputs,
    *,
    max_new_tokens: int = 16,
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
) -> Generation:
    """Greedy decoding with a KV cache, ``fwd_hooks`` active at every step."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    device = model.device
    tensors = {k: v.to(device) for k, v in inputs.tensors.items()}
    eos = list(model.eos_token_ids) or None
    with torch.no_grad(), model.bridge.hooks(fwd_hooks=list(fwd_hooks)):
        out = model.hf_model.generate(
            **tensors,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            use_cache=True,
            eos_token_id=eos,
            pad_token_id=model.pad_token_id if model.pad_token_id is not None else (eos or [0])[0],
        )
    new = out[:, inputs.input_ids.shape[1] :].cpu()
    tokens = [_strip(row.tolist(), set(model.eos_token_ids), model.pad_token_id) for row in new]
    texts = [model.tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]
    return Generation(tokens, texts)


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
            raise ValueError(f"Answer {answer!r} tokenizes to nothing.")
        ids.append(int(encoded[0]))
    if len(set(ids)) != len(ids):
        raise ValueError(f"Answers {list(answers)} share a first token; they cannot be told apart.")
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
    logprobs = next_token_logprobs(forward(model, inputs, fwd_hooks)).cpu()
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
