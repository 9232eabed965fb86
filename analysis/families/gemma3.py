"""Gemma 3: a SigLIP grid average-pooled to a square, between begin/end-of-image tokens."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from analysis.families.base import Family, UnsupportedConfigError, VisualToken, grid_tokens
from analysis.families.registry import register
from analysis.tokens import GridSpec

if TYPE_CHECKING:
    from PIL import Image

    from analysis.loading import LoadedModel
    from analysis.tiny import TinySpec


@register
class Gemma3(Family):
    name = "gemma3"
    architectures = ("Gemma3ForConditionalGeneration",)
    layout = "pooled_grid"
    base_llm = "gemma3"
    notes = "Gemma 3 (SigLIP + pooled 2D grid, bidirectional attention among image tokens)"
    # Gemma3Config's keys (transformers 5.24) and their *_id aliases.
    config_keys = frozenset(
        {
            "mm_tokens_per_image",
            "boi_token_index",
            "boi_token_id",
            "eoi_token_index",
            "eoi_token_id",
            "image_token_index",
            "image_token_id",
        }
    )

    def check_values(self, config: Any) -> None:
        per_image = int(getattr(config, "mm_tokens_per_image", 0) or 0)
        if per_image <= 0 or math.isqrt(per_image) ** 2 != per_image:
            raise UnsupportedConfigError(
                f"{self.name}: mm_tokens_per_image={per_image} is not a square grid; "
                "the pooled layout needs a square number of tokens per image."
            )

    def processor_images(self, images: list[list[Image.Image]]) -> Any:
        # Gemma3Processor matches images to prompts per sample: one list per prompt.
        return [list(sample) for sample in images]

    def image_tokens(
        self, model: LoadedModel, image_index: int, size: tuple[int, int]
    ) -> tuple[list[GridSpec], list[VisualToken]]:
        side = math.isqrt(int(model.config.mm_tokens_per_image))
        height, width = size
        spec = GridSpec(image_index, 0, "grid", side, side, (0.0, 0.0, float(width), float(height)))
        return [spec], [(0, r, c, sep) for r, c, sep in grid_tokens(side, side)]

    def build_tiny(self, spec: TinySpec) -> tuple[Any, Any]:
        from transformers import (
            Gemma3Config,
            Gemma3ForConditionalGeneration,
            Gemma3ImageProcessor,
            Gemma3Processor,
        )

        from analysis.tiny import GEMMA3_TEMPLATE, gemma3_tokenizer, text_kwargs

        tok = gemma3_tokenizer()
        text = text_kwargs(spec, len(tok), tok)
        text.update(
            head_dim=spec.d_head or spec.d_model // spec.n_heads,
            sliding_window=16,
            layer_types=[
                "sliding_attention" if i % 2 == 0 else "full_attention"
                for i in range(spec.n_layers)
            ],
        )
        vision = {
            "hidden_size": spec.vision_hidden,
            "intermediate_size": 2 * spec.vision_hidden,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": spec.image_size,
            "patch_size": spec.patch_size,
        }
        side = spec.image_size // spec.patch_size
        tokens_per_image = (side // 2) ** 2  # the 2x2 average pool of Gemma 3's projector
        config = Gemma3Config(
            text_config=text,
            vision_config=vision,
            mm_tokens_per_image=tokens_per_image,
            boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
            eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
            image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
        )
        torch.manual_seed(spec.seed)
        model = Gemma3ForConditionalGeneration(config).eval()
        processor = Gemma3Processor(
            image_processor=Gemma3ImageProcessor(
                size={"height": spec.image_size, "width": spec.image_size}
            ),
            tokenizer=tok,
            chat_template=GEMMA3_TEMPLATE,
            image_seq_length=tokens_per_image,
        )
        return model, processor
