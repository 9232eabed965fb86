"""What one batch of a run computes: prefill statistics, scores, parsed answers, sink dims.

Each item is scored twice in one pass: by the log-probabilities of the
candidate answers' first tokens after the prompt (yes vs no) and by greedy
generation (parsed with the official POPE rule). The first-step logits of
generation are exactly those of a plain forward, so one generation call gives
both scores. In the baseline pass :class:`analysis.interventions.baseline.PrefillStats` collects, per item and
without keeping any attention pattern, the visual sink count of every layer
and the head scores s, r and the image-centric fraction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float

from analysis.capture import HookFn
from analysis.generation import answer_logprobs, answer_token_ids, generate, next_token_logprobs

if TYPE_CHECKING:
    from analysis.datasets import Item
    from analysis.loading import LoadedModel
    from analysis.tokens import ModelInputs

# Per-item head scores are rounded to this many decimals: readable and small
# (32 x 32 heads per item), far below any difference a run reports.
HEAD_SCORE_DECIMALS = 4


# --------------------------------------------------------------------------- answers


def parse_yes_no(text: str) -> str:
    """The official POPE rule: first sentence, commas dropped, "no"/"No"/"not" as a word -> no.

    Kept verbatim (case-sensitive "No"/"no"/"not") so numbers are comparable
    with the POPE and LLaVA evaluation scripts.
    """
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def predict_from_text(text: str, answers: Sequence[str]) -> str | None:
    """The answer a generated text gives: POPE's rule for yes/no, else the first prefix match."""
    if [a.lower() for a in answers] == ["yes", "no"]:
        return parse_yes_no(text)
    lowered = text.strip().lower()
    return next((a for a in answers if lowered.startswith(a.lower())), None)


# --------------------------------------------------------------------------- hooks


def score_batch(
    model: LoadedModel,
    inputs: ModelInputs,
    answers: Sequence[str],
    *,
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
    max_new_tokens: int = 0,
) -> tuple[Float[torch.Tensor, "batch answer"], list[str] | None]:
    """log p(first token of each answer | prompt) and, when ``max_new_tokens`` > 0, the
    greedy generation, from a single pass.

    The answer log-probs come from the logits of generation's first step
    (caught by a forward hook on the HF model, so family-specific logit
    processing such as soft-capping is included): they equal a plain forward's.
    """
    if max_new_tokens <= 0:
        chosen, _ = answer_logprobs(model, inputs, answers, fwd_hooks=fwd_hooks)
        return chosen, None
    first: list[torch.Tensor] = []

    def catch(module: Any, args: Any, output: Any) -> None:
        if not first:
            first.append(output.logits[:, -1:].detach().float().cpu())

    handle = model.hf_model.register_forward_hook(catch)
    try:
        out = generate(model, inputs, max_new_tokens=max_new_tokens, fwd_hooks=fwd_hooks)
    finally:
        handle.remove()
    ids = answer_token_ids(model, answers)
    return next_token_logprobs(first[0])[:, ids], out.texts


# --------------------------------------------------------------------------- sink dims


def _resolve_dims(
    model: LoadedModel,
    items: Sequence[Item],
    dims: Sequence[int] | None,
    n_calibration: int,
    registry_only: bool = False,
) -> dict[str, Any]:
    """Sink dims for the whole run, decided once and stored in the manifest."""
    from analysis.dims import registry_entry, sink_dims
    from analysis.tokens import build_inputs

    if dims is not None:
        return {"dims": sink_dims(model, dims=dims), "source": "explicit", "calibration": []}
    if registry_only:
        return {
            "dims": sink_dims(model, registry_only=True),
            "source": "registry",
            "calibration": [],
        }
    calibration: list[Item] = []
    for item in items:
        if item.image_name not in {c.image_name for c in calibration}:
            calibration.append(item)
        if len(calibration) >= n_calibration:
            break
    batches = [build_inputs(model, item.image, item.text) for item in calibration]
    chosen = sink_dims(model, batches)
    return {
        "dims": chosen,
        "source": "registry" if registry_entry(model) is not None else "discovered",
        "calibration": [item.id for item in calibration],
    }
