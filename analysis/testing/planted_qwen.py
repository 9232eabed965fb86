"""The planted Qwen2.5-VL and Qwen3-VL: the zoo's circuit (:mod:`analysis.testing.planted`) on
Qwen's layout.

The text model is the zoo's LLaMA-style circuit unchanged (Qwen2 layers are
LLaMA layers plus zero q/k/v biases): the same embeddings, sink MLP, sink and
image-centric attention, written by :func:`analysis.testing.planted._llama_weights`.
Two things are Qwen's own:

* **Heads of 32 dims.** Qwen2.5-VL derives ``head_dim = d_model / n_heads``,
  so a spec needs ``n_heads = d_model / 32`` (32 heads at 1024). mRoPE with
  rope_theta 1e30 rotates the zoo's query/key dim (:data:`QK`, a pair of the
  height section) by ~1e-15 rad per position, so scores do not depend on
  position, as in the other members.
* **The vision side.** One cell of the board is one merged token (2x2
  patches), so images are ``grid * 2 * PATCH`` pixels, which ``smart_resize``
  keeps as they are. The patch embedding averages each patch's normalised
  R, G, B into channels (u, -u); the one vision block adds a constant (1, -1)
  through its attention output bias (every other block weight is 0, so it is
  otherwise the identity); the merger's RMSNorm then scales a patch by a
  colour-dependent gain, its first linear layer holds the zoo's colour
  detectors (dark cells, the object colour) on the first patch of each 2x2
  group and its second writes the flags, the visual base vector (ONE, VIS,
  bias, noise) and, with ``source="projector"``, the massive activation.

Qwen has no BOS token: a spec must put its sinks on visual tokens (and may add
the delimiter as a text sink).

**Qwen3-VL** (:func:`build_qwen3_vl`) is the same circuit with three changes:

* **Per-head q/k RMS norms.** A normalised query or key has norm
  ``sqrt(head_dim)`` whatever its size, so the logits are written as directions,
  as for Gemma 3 (:func:`analysis.testing.planted._gemma_attention`): the query
  is one unit direction, each key a direction in the plane (QK, CONST_K) whose QK
  share sets the logit, and the q_norm weight (Qwen scales by ``weight``, Gemma
  by ``1 + weight``) is the gain. ``head_dim`` is explicit (32), so ``n_heads``
  is free.
* **DeepStack.** Every weight of the DeepStack mergers is 0 (LayerNorm weight
  and bias, both linear layers), so the features they add to the visual
  positions after the first text layer are exactly 0.
* **Names and norms of the vision side.** The merger's norm is a LayerNorm; the
  patch channels (u, -u, 1, -1, 0...) have mean 0, so it equals the RMSNorm of
  Qwen2.5-VL and the same gains hold. The learned position embedding is 0.
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import torch

from analysis.errors import UserInputError
from analysis.testing.planted import (
    D_MLP,
    HEAD_DIM,
    PATCH,
    ROPE_THETA,
    VISION_WIDTH,
    PlantedSpec,
    _detector_projector,
    _gemma_attention,
    _llama_weights,
    _Plan,
    _put,
    image_size,
)

MERGE = 2  # Qwen's 2x2 patch merger: one merged token per cell
CONST = (10, 11)  # vision channels carrying the constant (1, -1)


class _NoBos:
    """The tokenizer as the zoo's text embeddings see it: ``<unk>`` (never in a prompt) as BOS."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.bos_token_id = tokenizer.unk_token_id
        self.eos_token_id = tokenizer.eos_token_id

    def __len__(self) -> int:
        return len(self._tokenizer)

    def convert_tokens_to_ids(self, token: str) -> int:
        return int(self._tokenizer.convert_tokens_to_ids(token))


def _rms_gain(u: np.ndarray) -> float:
    """The merger's RMSNorm (weight 1) on a patch with channels (u, -u, 1, -1, 0...)."""
    mean_square = (2 * float((u**2).sum()) + 2.0) / VISION_WIDTH
    return 1.0 / math.sqrt(mean_square + 1e-6)


def check_spec(spec: PlantedSpec, head_dim_from_width: bool = True) -> None:
    if head_dim_from_width and spec.d_model != spec.n_heads * HEAD_DIM:
        raise UserInputError(
            f"PlantedSpec {spec.name!r}: Qwen2.5-VL's head_dim is d_model / n_heads; "
            f"n_heads must be {spec.d_model // HEAD_DIM} for heads of {HEAD_DIM}."
        )
    if spec.bos_sink:
        raise UserInputError(
            f"PlantedSpec {spec.name!r}: Qwen has no BOS; sinks_on must be 'visual'."
        )


# Module names of the merger: Qwen2.5-VL's and Qwen3-VL's.
_MERGER_25 = ("visual.merger.ln_q", "visual.merger.mlp.0", "visual.merger.mlp.2")
_MERGER_3 = ("visual.merger.norm", "visual.merger.linear_fc1", "visual.merger.linear_fc2")


def _vision_weights(
    plan: _Plan,
    sd: dict[str, torch.Tensor],
    rng: np.random.Generator,
    merger: tuple[str, str, str] = _MERGER_25,
) -> None:
    norm, fc1, fc2 = merger
    conv = np.zeros((VISION_WIDTH, 3, 2, PATCH, PATCH))  # [out, colour, frame, y, x]
    for c in range(3):
        conv[c, c] = 1.0 / (2 * PATCH**2)
        conv[3 + c, c] = -1.0 / (2 * PATCH**2)
    _put(sd, "visual.patch_embed.proj.weight", conv)
    constant = np.zeros(VISION_WIDTH)
    constant[CONST[0]], constant[CONST[1]] = 1.0, -1.0
    _put(sd, "visual.blocks.0.attn.proj.bias", constant)  # q, k, v = 0: the output is the bias
    _put(sd, f"{norm}.weight", np.ones(VISION_WIDTH))
    width = VISION_WIDTH * MERGE**2
    _detector_projector(plan, sd, rng, gain=_rms_gain, fc1=fc1, fc2=fc2, width=width, hidden=width)


def build_qwen2_5_vl(spec: PlantedSpec) -> tuple[Any, Any]:
    """The planted Qwen2.5-VL model and its processor (image half only, no torchvision)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from analysis.families.qwen2_5_vl import mrope_section, qwen_token_ids, qwen_tokenizer

    check_spec(spec)
    plan = _Plan(spec)
    tok = qwen_tokenizer()
    size = image_size(spec)
    text = {
        "vocab_size": len(tok),
        "hidden_size": spec.d_model,
        "intermediate_size": D_MLP,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": spec.n_heads,
        "num_key_value_heads": spec.n_heads,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": ROPE_THETA,
            "mrope_section": mrope_section(HEAD_DIM),
        },
        "bos_token_id": None,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    vision = {
        "depth": 1,
        "hidden_size": VISION_WIDTH,
        "intermediate_size": VISION_WIDTH,
        "num_heads": 1,
        "patch_size": PATCH,
        "spatial_merge_size": MERGE,
        "temporal_patch_size": 2,
        "window_size": size,  # one window: the block attends over the whole image
        "fullatt_block_indexes": [0],
        "out_hidden_size": spec.d_model,
    }
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=False, **qwen_token_ids(tok)
    )
    model = Qwen2_5_VLForConditionalGeneration(config)
    rng = np.random.default_rng(spec.seed)
    sd = dict(model.state_dict())
    _llama_weights(plan, sd, _NoBos(tok), rng)  # zeroes every weight first
    _vision_weights(plan, sd, rng)
    model.load_state_dict(sd, strict=True)
    return model.eval(), _processor(spec, "qwen2_5_vl", tok)


def _processor(spec: PlantedSpec, family_name: str, tok: Any) -> Any:
    from analysis.families import get
    from analysis.families.qwen2_5_vl import QWEN_TEMPLATE, QwenVLFamily

    size = image_size(spec)
    family = cast(QwenVLFamily, get(family_name))
    image_processor = family.image_processor_class()(
        patch_size=PATCH,
        merge_size=MERGE,
        temporal_patch_size=2,
        # Exactly the board's pixels: smart_resize leaves the image as it is.
        size={"shortest_edge": size * size, "longest_edge": size * size},
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    return family.processor_class()(
        image_processor=image_processor, tokenizer=tok, chat_template=QWEN_TEMPLATE
    )


def build_qwen3_vl(spec: PlantedSpec) -> tuple[Any, Any]:
    """The planted Qwen3-VL model and its processor (image half only, no torchvision)."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from analysis.families.qwen2_5_vl import qwen_token_ids, qwen_tokenizer
    from analysis.families.qwen3_vl import interleaved_mrope_section

    check_spec(spec, head_dim_from_width=False)
    plan = _Plan(spec)
    tok = qwen_tokenizer()
    text = {
        "vocab_size": len(tok),
        "hidden_size": spec.d_model,
        "intermediate_size": D_MLP,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": spec.n_heads,
        "num_key_value_heads": spec.n_heads,
        "head_dim": HEAD_DIM,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": ROPE_THETA,
            "mrope_section": interleaved_mrope_section(HEAD_DIM),
            "mrope_interleaved": True,
        },
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    vision = {
        "depth": 1,
        "hidden_size": VISION_WIDTH,
        "intermediate_size": VISION_WIDTH,
        "num_heads": 1,
        "patch_size": PATCH,
        "spatial_merge_size": MERGE,
        "temporal_patch_size": 2,
        "out_hidden_size": spec.d_model,
        "num_position_embeddings": 16,  # all 0: the interpolated table adds nothing
        "deepstack_visual_indexes": [0],  # its merger is all 0: it adds 0 after text layer 0
    }
    config = Qwen3VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=False, **qwen_token_ids(tok)
    )
    model = Qwen3VLForConditionalGeneration(config)
    rng = np.random.default_rng(spec.seed)
    sd = dict(model.state_dict())
    _llama_weights(plan, sd, _NoBos(tok), rng)  # zeroes every weight first
    for layer in range(spec.n_layers):
        # The q/k norms: the keys as directions, the q_norm weight as the gain.
        prefix = f"language_model.layers.{layer}.self_attn."
        q, k, gain = _gemma_attention(plan, layer)
        _put(sd, prefix + "q_proj.weight", q.reshape(-1, spec.d_model))
        _put(sd, prefix + "k_proj.weight", k.reshape(-1, spec.d_model))
        _put(sd, prefix + "q_norm.weight", np.full(HEAD_DIM, gain))
    _vision_weights(plan, sd, rng, _MERGER_3)
    model.load_state_dict(sd, strict=True)
    return model.eval(), _processor(spec, "qwen3_vl", tok)
