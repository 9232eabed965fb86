"""Qwen3-VL: Qwen2.5-VL's processor, geometry and attention routing, plus DeepStack.

What differs from :mod:`analysis.families.qwen2_5_vl`: 16-px patches with a
learned (interpolated) position embedding, interleaved mRoPE with per-head
q/k norms in the text attention (both inside the HF module, before the
attention function the toolkit routes), and **DeepStack**: features of a few
vision-tower layers are added to the visual positions of the residual stream
after the first text layers. The addition happens between decoder layers, so
``hook_resid_pre`` of layer l+1 (and everything the analyses read) includes it,
while ``hook_resid_post`` of those first layers does not; an edit at
``hook_resid_pre`` of an early layer is followed by the next DeepStack addition.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import torch

from analysis.families.qwen2_5_vl import (
    QWEN_TEMPLATE,
    QwenVLFamily,
    image_only_processor,
    qwen_token_ids,
    qwen_tokenizer,
    tiny_image_processor,
)
from analysis.families.registry import register

if TYPE_CHECKING:
    from analysis.tiny import TinySpec


@functools.cache
def _processor_class() -> type:
    from transformers import Qwen3VLProcessor

    return image_only_processor(Qwen3VLProcessor)


def interleaved_mrope_section(d_head: int) -> list[int]:
    """Qwen3-VL's (temporal, height, width) split of the rotary half: 24/20/20 of 64."""
    half = d_head // 2
    spatial = half * 20 // 64
    return [half - 2 * spatial, spatial, spatial]


@register
class Qwen3VL(QwenVLFamily):
    name = "qwen3_vl"
    architectures = ("Qwen3VLForConditionalGeneration",)
    base_llm = "qwen3"
    notes = (
        "Qwen3-VL (16-px patches, 2x2 merger, interleaved mRoPE, DeepStack: vision features "
        "added to the visual positions after the first text layers; text attention routed "
        "through the toolkit's hooked attention function)"
    )
    adapter = (
        "transformer_lens.model_bridge.supported_architectures.qwen3_vl",
        "Qwen3VLArchitectureAdapter",
    )

    def processor_class(self) -> type:
        return _processor_class()

    def build_tiny(self, spec: TinySpec) -> tuple[Any, Any]:
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

        tok = qwen_tokenizer()
        d_head = spec.d_head or spec.d_model // spec.n_heads
        text = {
            "vocab_size": len(tok),
            "hidden_size": spec.d_model,
            "intermediate_size": spec.d_mlp,
            "num_hidden_layers": spec.n_layers,
            "num_attention_heads": spec.n_heads,
            "num_key_value_heads": spec.n_kv_heads,
            "head_dim": d_head,
            "max_position_embeddings": 1024,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": interleaved_mrope_section(d_head),
                "mrope_interleaved": True,
            },
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        }
        merge = 2
        vision = {
            "depth": 2,
            "hidden_size": spec.vision_hidden,
            "intermediate_size": 2 * spec.vision_hidden,
            "num_heads": 2,
            "patch_size": spec.patch_size,
            "spatial_merge_size": merge,
            "temporal_patch_size": 2,
            "out_hidden_size": spec.d_model,
            "num_position_embeddings": 16,  # a 4x4 table, interpolated to each grid
            # Both tower layers feed DeepStack: added after text layers 0 and 1.
            "deepstack_visual_indexes": [0, 1],
        }
        config = Qwen3VLConfig(text_config=text, vision_config=vision, **qwen_token_ids(tok))
        torch.manual_seed(spec.seed)
        model = Qwen3VLForConditionalGeneration(config).eval()
        processor = self.processor_class()(
            image_processor=tiny_image_processor(self.image_processor_class(), spec, merge),
            tokenizer=tok,
            chat_template=QWEN_TEMPLATE,
        )
        return model, processor
