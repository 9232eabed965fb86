"""The planted LLaVA-OneVision builder (see :mod:`analysis.testing.planted` for the circuit).

OneVision's language model is Qwen2: LLaMA's layers plus q/k/v biases, which
stay 0, so the LLaMA text weights of the LLaVA builder are reused as they are.
The vision side differs: SigLIP has no pre-LayerNorm and OneVision reads the
last encoder layer before the post-LayerNorm, so with every encoder weight 0
the tower's output is exactly its patch embedding: channels (u, -u), the
patch-mean normalised colour. The projector's first layer then detects the
dark (sink) and yellow (object) cells as in the LLaVA builder, without the
CLIP LayerNorm's gain. One high-resolution pinpoint equal to the tile (as the
planted LLaVA-NeXT) makes the anyres grid the image itself: base grid, then the
same cells again with an ``image_newline`` per row.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis.testing.planted import (
    D_MLP,
    HEAD_DIM,
    PATCH,
    ROPE_THETA,
    VISION_WIDTH,
    PlantedSpec,
    _detector_projector,
    _llama_weights,
    _Plan,
    _put,
    _visual_base,
    image_size,
)


def _qwen2_text(plan: _Plan, tokenizer: Any) -> dict[str, Any]:
    spec = plan.spec
    return {
        "model_type": "qwen2",
        "vocab_size": len(tokenizer),
        "hidden_size": spec.d_model,
        "intermediate_size": D_MLP,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": spec.n_heads,
        "num_key_value_heads": spec.n_heads,
        "head_dim": HEAD_DIM,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA},
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }


def _siglip_vision(spec: PlantedSpec) -> dict[str, Any]:
    return {
        "model_type": "siglip_vision_model",
        "hidden_size": VISION_WIDTH,
        "intermediate_size": VISION_WIDTH,
        "num_hidden_layers": 1,
        "num_attention_heads": 1,
        "image_size": image_size(spec),
        "patch_size": PATCH,
        "vision_use_head": False,
    }


def _siglip_projector_weights(plan: _Plan, sd: dict[str, Any], rng: np.random.Generator) -> None:
    """Vision tower: patch-mean colour (the raw patch embedding); projector: detectors -> flags."""
    conv = np.zeros((VISION_WIDTH, 3, PATCH, PATCH))
    for c in range(3):
        conv[c, c] = 1.0 / PATCH**2
        conv[3 + c, c] = -1.0 / PATCH**2
    _put(sd, "vision_tower.embeddings.patch_embedding.weight", conv)
    # SigLIP has no norm between the patch mean and the projector: a gain of 1.
    _detector_projector(plan, sd, rng)


def build_onevision(spec: PlantedSpec) -> tuple[Any, Any]:
    """The planted LLaVA-OneVision (model, processor) of ``spec``."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    from analysis.families.llava_onevision import (
        QWEN_TEMPLATE,
        ImageOnlyOnevisionProcessor,
        onevision_tokenizer,
    )

    plan = _Plan(spec)
    # A BOS token (real Qwen2 has none) so BOS sinks can be planted as on the other members.
    tok = onevision_tokenizer(bos="<|endoftext|>")
    size = image_size(spec)
    pinpoints = [[size, size]]  # one hi-res tile = the image itself: no resampling
    config = LlavaOnevisionConfig(
        text_config=_qwen2_text(plan, tok),
        vision_config=_siglip_vision(spec),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    model = LlavaOnevisionForConditionalGeneration(config)
    rng = np.random.default_rng(spec.seed)
    sd = dict(model.state_dict())
    _llama_weights(plan, sd, tok, rng)  # zeroes everything first, vision tower included
    _siglip_projector_weights(plan, sd, rng)
    _put(sd, "image_newline", _visual_base(plan, rng))
    model.load_state_dict(sd, strict=True)
    side = spec.grid
    processor = ImageOnlyOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessorPil(
            size={"height": size, "width": size},
            image_grid_pinpoints=pinpoints,
            image_mean=[0.5] * 3,
            image_std=[0.5] * 3,
        ),
        tokenizer=tok,
        num_image_tokens=side * side,
        vision_feature_select_strategy="full",
        chat_template=QWEN_TEMPLATE,
    )
    return model.eval(), processor
