"""LLaVA-1.5: a CLIP patch grid per image, projected into a LLaMA / Vicuna LLM."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from analysis.families.base import Family, UnsupportedConfigError, VisualToken, grid_tokens
from analysis.families.registry import register
from analysis.tokens import GridSpec

if TYPE_CHECKING:
    from analysis.loading import LoadedModel
    from analysis.tiny import TinySpec

#: Top-level keys of ``LlavaConfig`` (transformers 5.24 ``to_dict()``) and the legacy
#: keys llava-hf checkpoints on the hub still carry (``ignore_index``, ``vocab_size``).
LLAVA_CONFIG_KEYS = frozenset(
    {
        "image_token_index",
        "image_token_id",
        "image_seq_length",
        "vision_feature_layer",
        "vision_feature_select_strategy",
        "projector_hidden_act",
        "multimodal_projector_bias",
        "ignore_index",
    }
)

# What the geometry can lay out: "default" drops CLIP's CLS token, "full" keeps it first.
SELECT_STRATEGIES = ("default", "full")


def check_select_strategy(family: str, config: Any, allowed: tuple[str, ...]) -> None:
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    if strategy not in allowed:
        raise UnsupportedConfigError(
            f"{family}: vision_feature_select_strategy={strategy!r} cannot be laid out; "
            f"supported: {', '.join(allowed)}."
        )


@register
class Llava(Family):
    name = "llava"
    architectures = ("LlavaForConditionalGeneration",)
    layout = "grid"
    base_llm = "llama"
    notes = "LLaVA-1.5 (CLIP ViT-L/14-336 + Vicuna/LLaMA-2)"
    config_keys = LLAVA_CONFIG_KEYS

    def check_values(self, config: Any) -> None:
        check_select_strategy(self.name, config, SELECT_STRATEGIES)

    def image_tokens(
        self, model: LoadedModel, image_index: int, size: tuple[int, int]
    ) -> tuple[list[GridSpec], list[VisualToken]]:
        config = model.config
        vision = config.vision_config
        side = vision.image_size // vision.patch_size
        height, width = size
        # CLIP processors resize the shortest edge then centre-crop a square.
        crop = min(height, width)
        x0, y0 = (width - crop) / 2, (height - crop) / 2
        spec = GridSpec(image_index, 0, "grid", side, side, (x0, y0, x0 + crop, y0 + crop))
        tokens: list[VisualToken] = []
        if getattr(config, "vision_feature_select_strategy", "default") == "full":
            tokens.append((0, -1, -1, True))  # the CLS token: visual but not spatial
        tokens += [(0, r, c, sep) for r, c, sep in grid_tokens(side, side)]
        return [spec], tokens

    def build_tiny(self, spec: TinySpec) -> tuple[Any, Any]:
        from transformers import (
            CLIPImageProcessor,
            CLIPVisionConfig,
            LlamaConfig,
            LlavaConfig,
            LlavaForConditionalGeneration,
            LlavaProcessor,
        )

        from analysis.tiny import (
            LLAVA_TEMPLATE,
            clip_config,
            clip_processor,
            text_kwargs,
            word_tokenizer,
        )

        tok = word_tokenizer({"bos": "<s>", "eos": "</s>", "image_token": "<image>"}, "<s>")
        text = LlamaConfig(**text_kwargs(spec, len(tok), tok))
        vision = clip_config(CLIPVisionConfig, spec)
        config = LlavaConfig(
            text_config=text,
            vision_config=vision,
            # transformers 5 names it image_token_id (its stubs still say image_token_index).
            **{"image_token_id": tok.convert_tokens_to_ids("<image>")},
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
        torch.manual_seed(spec.seed)
        model = LlavaForConditionalGeneration(config).eval()
        processor = LlavaProcessor(
            image_processor=clip_processor(CLIPImageProcessor, spec),
            tokenizer=tok,
            patch_size=spec.patch_size,
            vision_feature_select_strategy="default",
            chat_template=LLAVA_TEMPLATE,
            num_additional_image_tokens=1,
        )
        return model, processor
