"""Idefics3 (the SmolVLM v1 lineage): an image cut into square tiles plus a downscaled global view.

The processor resizes the image so its longest edge is ``size["longest_edge"]``,
stretches it up to multiples of the tile size ``M = max_image_size["longest_edge"]``
and cuts it into ``rows x cols`` tiles of ``M x M``; a copy squeezed to ``M x M``
is the global image. Each of these frames goes through the vision tower alone
and the connector's pixel shuffle merges ``scale_factor x scale_factor``
patches into one token, so every frame becomes ``s x s`` image tokens with
``s = image_size / patch_size / scale_factor`` (the processor's ``image_seq_len``
is ``s * s``). In the prompt::

    <fake_token_around_image><row_1_col_1><image>*s*s <fake_token_around_image><row_1_col_2>...
    \\n ... \\n<fake_token_around_image><global-img><image>*s*s<fake_token_around_image>

Only the ``<image>`` tokens are visual; the row/column markers, the
``<fake_token_around_image>`` and ``<global-img>`` tokens are text. An image
that needs no split (or a processor with splitting off) is the global image only.

Grids (:class:`~analysis.tokens.GridSpec`) of one image: tile 0, ``"tiles"``,
is the tiles stitched back together (``rows * s`` x ``cols * s`` tokens over
the whole image, exact because the tiles partition the stretched image), so
its token (r, c) belongs to tile ``(r // s, c // s)``; tile 1, ``"global"``, is
the ``s x s`` global image over the whole image. ``VisualGeometry.grid()``
returns the stitched tiles by default (the highest resolution); an image
without tiles has only the global grid.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from analysis.families.base import Family, UnsupportedConfigError, VisualToken
from analysis.families.registry import register
from analysis.tokens import GridSpec

if TYPE_CHECKING:
    from PIL import Image

    from analysis.loading import LoadedModel
    from analysis.tiny import TinySpec

#: The special tokens the Idefics3 processor writes around the image tokens.
FAKE_TOKEN = "<fake_token_around_image>"
IMAGE_TOKEN = "<image>"
GLOBAL_TOKEN = "<global-img>"
END_OF_UTTERANCE = "<end_of_utterance>"
#: The processor knows row/column markers up to 6 x 6 tiles.
MAX_TILES_PER_SIDE = 6

#: SmolVLM's chat template (transformers' Idefics3 docs) without the leading BOS,
#: which the tokenizer adds itself.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def tokens_per_side(config: Any) -> int:
    """``s``: image tokens per side of one frame after the connector's pixel shuffle."""
    vision = config.vision_config
    return int(vision.image_size) // int(vision.patch_size) // int(config.scale_factor)


def tile_counts(height: int, width: int, image_processor: Any) -> tuple[int, int]:
    """(rows, cols) of tiles the image processor cuts an image of ``(height, width)`` into.

    (0, 0): not split, the global image only. The arithmetic is the PIL image
    processor's ``_preprocess`` (resize, ``resize_for_vision_encoder``,
    ``split_images``) step by step, with its own size helpers.
    """
    from transformers.models.idefics3.image_processing_pil_idefics3 import (
        MAX_IMAGE_SIZE,
        _resize_output_size_rescale_to_max_len,
        _resize_output_size_scale_below_upper_bound,
    )

    if not image_processor.do_image_splitting:
        return 0, 0
    tile = int(image_processor.max_image_size["longest_edge"])
    if image_processor.do_resize:
        longest = int(image_processor.size["longest_edge"])
        height, width = _resize_output_size_rescale_to_max_len(height, width, max_len=longest)
        # The helper is annotated with a dict but called with an int, as the processor does.
        below: Any = _resize_output_size_scale_below_upper_bound
        height, width = below(height, width, max_len=MAX_IMAGE_SIZE)
    # resize_for_vision_encoder: the long side up to a multiple of the tile, the short
    # side from the aspect ratio, then up to a multiple as well.
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect) / tile) * tile
    if height > tile or width > tile:
        return (height - tile) // tile + 1, (width - tile) // tile + 1
    return 0, 0


@register
class Idefics3(Family):
    name = "idefics3"
    architectures = ("Idefics3ForConditionalGeneration",)
    layout = "tiles+global"
    base_llm = "llama"
    notes = (
        "Idefics3 / SmolVLM v1 (SigLIP tiles + a global image, pixel-shuffle connector, "
        "row/column marker tokens)"
    )
    # Idefics3Config's own keys (transformers 5.24 to_dict, beyond the common ones);
    # ``_pad_token_id`` is where 5.24 keeps the deprecated top-level pad id.
    config_keys = frozenset({"image_token_id", "scale_factor", "_pad_token_id"})

    # ------------------------------------------------------------------ config

    def check_values(self, config: Any) -> None:
        text_type = getattr(config.get_text_config(), "model_type", None)
        if text_type != "llama":
            # TransformerLens' Idefics3 adapter maps a LLaMA-shaped text model only.
            raise UnsupportedConfigError(
                f"{self.name}: the text model is {text_type!r}; only a LLaMA text model is "
                "supported (the bridge maps LLaMA blocks)."
            )
        vision = config.vision_config
        image_size, patch_size = vision.image_size, vision.patch_size
        if not isinstance(image_size, int) or not isinstance(patch_size, int):
            raise UnsupportedConfigError(
                f"{self.name}: vision image_size={image_size!r} and patch_size={patch_size!r} "
                "must be single integers (square frames)."
            )
        scale = config.scale_factor
        if not isinstance(scale, int) or scale < 1:
            raise UnsupportedConfigError(
                f"{self.name}: scale_factor={scale!r} is not a positive integer."
            )
        # The patch conv drops a remainder (SmolVLM: 384 px / 14 px = 27 patches), the pixel
        # shuffle cannot: the patches per side must be a multiple of the scale factor.
        if (image_size // patch_size) % scale:
            raise UnsupportedConfigError(
                f"{self.name}: {image_size // patch_size} patches per side (image_size "
                f"{image_size} / patch_size {patch_size}) is not a multiple of scale_factor "
                f"{scale}; the pixel shuffle cannot lay it out."
            )

    def check_processor(self, processor: Any, config: Any) -> None:
        """Refuse a processor whose tiles or token count disagree with the model's config."""
        side = tokens_per_side(config)
        image_processor = processor.image_processor
        tile = (image_processor.max_image_size or {}).get("longest_edge")
        if tile != config.vision_config.image_size:
            raise UnsupportedConfigError(
                f"{self.name}: the image processor's tile size max_image_size={tile} differs "
                f"from the vision tower's image_size {config.vision_config.image_size}."
            )
        if image_processor.do_resize and "longest_edge" not in (image_processor.size or {}):
            raise UnsupportedConfigError(
                f"{self.name}: the image processor's size {image_processor.size!r} has no "
                "longest_edge; only longest-edge resizing is laid out."
            )
        if int(processor.image_seq_len) != side * side:
            raise UnsupportedConfigError(
                f"{self.name}: the processor writes image_seq_len={processor.image_seq_len} "
                f"image tokens per frame, the model makes {side * side}."
            )

    # ------------------------------------------------------------------ processor

    def load_processor(self, name: str, **hub_kwargs: Any) -> Any:
        """AutoProcessor (it picks the PIL image processor without torchvision), else the pieces.

        Where AutoProcessor fails for want of torchvision, the processor is built
        from the tokenizer, ``Idefics3ImageProcessorPil`` and the chat template;
        a folder that lacks one of them is a one-line error naming it.
        """
        from transformers import AutoConfig, AutoProcessor, Idefics3Processor

        from analysis.loading import ModelLoadError

        try:
            processor = AutoProcessor.from_pretrained(name, **hub_kwargs)
        except ImportError as err:
            if "torchvision" not in str(err).lower():
                raise
            processor = self._processor_from_pieces(name, **hub_kwargs)
        if not isinstance(processor, Idefics3Processor):
            raise ModelLoadError(
                f"{name}: no Idefics3 processor found (got {type(processor).__name__}); the "
                "folder needs processor_config.json (or preprocessor_config.json) next to the "
                "tokenizer files, as save_pretrained writes them."
            )
        if getattr(processor, "chat_template", None) is None:
            raise ModelLoadError(
                f"{name}: the processor has no chat template (chat_template.jinja or "
                "chat_template.json); Idefics3 prompts need it to place the image."
            )
        self.check_processor(processor, AutoConfig.from_pretrained(name, **hub_kwargs))
        return processor

    def _processor_from_pieces(self, name: str, **hub_kwargs: Any) -> Any:
        from transformers import (
            AutoConfig,
            AutoTokenizer,
            Idefics3ImageProcessorPil,
            Idefics3Processor,
        )

        from analysis.loading import ModelLoadError

        def piece(what: str, load: Any) -> Any:
            try:
                return load()
            except (OSError, ValueError) as err:
                raise ModelLoadError(f"{name}: cannot load the {what} ({err}).") from err

        tokenizer = piece("tokenizer", lambda: AutoTokenizer.from_pretrained(name, **hub_kwargs))
        image_processor = piece(
            "image processor (preprocessor_config.json)",
            lambda: Idefics3ImageProcessorPil.from_pretrained(name, **hub_kwargs),
        )
        config = piece("config", lambda: AutoConfig.from_pretrained(name, **hub_kwargs))
        side = tokens_per_side(config)
        template = getattr(tokenizer, "chat_template", None) or _local_template(name)
        return Idefics3Processor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            image_seq_len=side * side,
            chat_template=template,
        )

    def processor_images(self, images: list[list[Image.Image]]) -> Any:
        # Idefics3Processor matches images to prompts per sample: one list per prompt.
        return [list(sample) for sample in images]

    # ------------------------------------------------------------------ batches

    #: [batch, frames, ...]: every sample's tiles and global images, padded with zero frames
    #: (which the model drops), so they are cut by sample, not by image.
    per_image_tensors = frozenset({"pixel_values", "pixel_attention_mask"})

    def select_images(
        self, tensors: dict[str, torch.Tensor], sample: int, first: int, count: int
    ) -> dict[str, torch.Tensor]:
        # The sample's own frames, without the batch's padding: the model's own rule (a
        # frame of zeros is padding), so the result equals the sample processed alone.
        frames = tensors["pixel_values"][sample]
        real = frames.flatten(1).ne(0).any(-1)
        return {
            key: value[sample][real].unsqueeze(0)
            for key, value in tensors.items()
            if key in self.per_image_tensors
        }

    # ------------------------------------------------------------------ geometry

    def image_tokens(
        self, model: LoadedModel, image_index: int, size: tuple[int, int]
    ) -> tuple[list[GridSpec], list[VisualToken]]:
        side = tokens_per_side(model.config)
        height, width = size
        extent = (0.0, 0.0, float(width), float(height))
        rows, cols = tile_counts(height, width, model.processor.image_processor)
        grids: list[GridSpec] = []
        tokens: list[VisualToken] = []
        if rows:
            grids.append(GridSpec(image_index, 0, "tiles", rows * side, cols * side, extent))
            # Tiles in prompt order (row-major), each a row-major s x s block of tokens.
            tokens += [
                (0, tr * side + r, tc * side + c, False)
                for tr in range(rows)
                for tc in range(cols)
                for r in range(side)
                for c in range(side)
            ]
        grids.append(GridSpec(image_index, 1, "global", side, side, extent))
        tokens += [(1, r, c, False) for r in range(side) for c in range(side)]
        return grids, tokens

    # ------------------------------------------------------------------ tests

    def build_tiny(self, spec: TinySpec) -> tuple[Any, Any]:
        from transformers import (
            Idefics3Config,
            Idefics3ForConditionalGeneration,
            Idefics3ImageProcessorPil,
            Idefics3Processor,
            LlamaConfig,
        )

        from analysis.tiny import text_kwargs

        tok = idefics3_tokenizer()
        text = LlamaConfig(**text_kwargs(spec, len(tok), tok))
        vision = {
            "hidden_size": spec.vision_hidden,
            "intermediate_size": 2 * spec.vision_hidden,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": spec.image_size,
            "patch_size": spec.patch_size,
        }
        config = Idefics3Config(
            text_config=text,
            vision_config=vision,
            image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
            scale_factor=TINY_SCALE_FACTOR,
        )
        torch.manual_seed(spec.seed)
        model = Idefics3ForConditionalGeneration(config).eval()
        # At this seed the random head's top answer is EOS on every prompt; decoding tests
        # need decoding steps, so the EOS logit is held at 0 (a random model all the same).
        with torch.no_grad():
            model.lm_head.weight[tok.eos_token_id] = 0.0
        side = tokens_per_side(config)
        processor = Idefics3Processor(
            image_processor=Idefics3ImageProcessorPil(
                size={"longest_edge": TINY_MAX_TILES * spec.image_size},
                max_image_size={"longest_edge": spec.image_size},
            ),
            tokenizer=tok,
            image_seq_len=side * side,
            chat_template=CHAT_TEMPLATE,
        )
        return model, processor


#: The tiny model's pixel shuffle and its longest edge in tiles (up to 3 x 3 tiles).
TINY_SCALE_FACTOR = 2
TINY_MAX_TILES = 3


def idefics3_tokenizer() -> Any:
    """The word tokenizer with Idefics3's special tokens (tiny and planted models share it)."""
    from analysis.tiny import word_tokenizer

    specials = {
        "bos": "<|im_start|>",
        "eos": END_OF_UTTERANCE,
        "image_token": IMAGE_TOKEN,
        "fake_image_token": FAKE_TOKEN,
        "global_image_token": GLOBAL_TOKEN,
    }
    for r in range(1, MAX_TILES_PER_SIDE + 1):
        for c in range(1, MAX_TILES_PER_SIDE + 1):
            specials[f"row_{r}_col_{c}"] = f"<row_{r}_col_{c}>"
    return word_tokenizer(specials, "<|im_start|>")


def _local_template(name: str) -> str | None:
    """The chat template saved next to a local checkpoint (``chat_template.jinja`` / ``.json``)."""
    folder = Path(name)
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    if (folder / "chat_template.json").is_file():
        template = json.loads((folder / "chat_template.json").read_text()).get("chat_template")
        return template if isinstance(template, str) else None
    return None
