"""LLaVA-NeXT / LLaVA-1.6: a base tile plus an unpadded anyres grid with one newline token per row."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from analysis.families.base import Family, UnsupportedConfigError, VisualToken, grid_tokens
from analysis.families.llava import LLAVA_CONFIG_KEYS, check_select_strategy
from analysis.families.registry import register
from analysis.tokens import GridSpec

if TYPE_CHECKING:
    from analysis.loading import LoadedModel
    from analysis.tiny import TinySpec


@register
class LlavaNext(Family):
    name = "llava_next"
    architectures = ("LlavaNextForConditionalGeneration",)
    layout = "anyres"
    base_llm = "llama/mistral"
    notes = "LLaVA-NeXT / LLaVA-1.6 (anyres tiles + image_newline)"
    # LlavaNextConfig's keys (transformers 5.24) and the hub's legacy
    # ``use_image_newline_parameter`` (llava-v1.6 checkpoints; the model always has the newline).
    config_keys = LLAVA_CONFIG_KEYS | {"image_grid_pinpoints", "use_image_newline_parameter"}

    def check_values(self, config: Any) -> None:
        # "full" keeps CLS in every tile, which the anyres reshape of the features does not take.
        check_select_strategy(self.name, config, ("default",))
        pinpoints = getattr(config, "image_grid_pinpoints", None)
        if not pinpoints:
            raise UnsupportedConfigError(
                f"{self.name}: the config has no image_grid_pinpoints; anyres needs them."
            )
        tile = int(config.vision_config.image_size)
        for point in pinpoints:
            if (
                not isinstance(point, list | tuple)
                or len(point) != 2
                or any(int(v) <= 0 or int(v) % tile for v in point)
            ):
                raise UnsupportedConfigError(
                    f"{self.name}: image_grid_pinpoints entry {point!r} is not a (height, width) "
                    f"pair of positive multiples of the tile size {tile}."
                )

    def image_tokens(
        self, model: LoadedModel, image_index: int, size: tuple[int, int]
    ) -> tuple[list[GridSpec], list[VisualToken]]:
        from transformers.models.llava_next.modeling_llava_next import (
            get_anyres_image_grid_shape,
            unpad_image,
        )

        config = model.config
        vision = config.vision_config
        side = vision.image_size // vision.patch_size
        height, width = size
        extent = (0.0, 0.0, float(width), float(height))
        base = GridSpec(image_index, 0, "base", side, side, extent)
        tiles_h, tiles_w = get_anyres_image_grid_shape(
            (height, width), config.image_grid_pinpoints, vision.image_size
        )
        # Reuse HF's own unpadding on a dummy tensor so the shape matches the model exactly.
        dummy = torch.zeros(1, tiles_h * side, tiles_w * side)
        rows, cols = (int(n) for n in unpad_image(dummy, torch.tensor([height, width])).shape[1:])
        has_newline = getattr(model.hf_model.model, "image_newline", None) is not None
        hires = GridSpec(image_index, 1, "anyres", rows, cols, extent, has_newline)
        tokens: list[VisualToken] = [(0, r, c, sep) for r, c, sep in grid_tokens(side, side)]
        tokens += [(1, r, c, sep) for r, c, sep in grid_tokens(rows, cols, has_newline)]
        return [base, hires], tokens

    def build_tiny(self, spec: TinySpec) -> tuple[Any, Any]:
        from transformers import (
            CLIPVisionConfig,
            LlamaConfig,
            LlavaNextConfig,
            LlavaNextForConditionalGeneration,
            LlavaNextImageProcessor,
            LlavaNextProcessor,
        )

        from analysis.tiny import LLAVA_TEMPLATE, clip_config, text_kwargs, word_tokenizer

        tok = word_tokenizer({"bos": "<s>", "eos": "</s>", "image_token": "<image>"}, "<s>")
        text = LlamaConfig(**text_kwargs(spec, len(tok), tok))
        vision = clip_config(CLIPVisionConfig, spec)
        s = spec.image_size
        pinpoints = [[s, 2 * s], [2 * s, s], [2 * s, 2 * s], [s, 3 * s], [3 * s, s]]
        config = LlavaNextConfig(
            text_config=text,
            vision_config=vision,
            **{"image_token_id": tok.convert_tokens_to_ids("<image>")},
            image_grid_pinpoints=pinpoints,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
        torch.manual_seed(spec.seed)
        model = LlavaNextForConditionalGeneration(config).eval()
        image_processor = LlavaNextImageProcessor(
            size={"shortest_edge": s},
            crop_size={"height": s, "width": s},
            image_grid_pinpoints=pinpoints,
        )
        processor = LlavaNextProcessor(
            image_processor=image_processor,
            tokenizer=tok,
            patch_size=spec.patch_size,
            vision_feature_select_strategy="default",
            chat_template=LLAVA_TEMPLATE,
            num_additional_image_tokens=1,
        )
        return model, processor
