"""LLaVA-OneVision: SigLIP + Qwen2, anyres-max tiles (a base image plus an unpadded, possibly downscaled grid).

Visual-token layout of one image in a single-image sample: the base tile (the
whole image resized to the tower's square input, ``side x side`` tokens), then
the high-resolution tiles stitched into one grid, unpadded back to the image's
aspect ratio and, when it holds more than ``anyres_max_N`` tiles' worth of
tokens, bilinearly downscaled (``pack_image_features``), with an
``image_newline`` token closing every row. In a sample with several images each
image is padded to a square and gets only the base grid plus one trailing
``image_newline`` token.

The processor is built from the tokenizer and the PIL image processor alone:
HF's ``AutoProcessor`` also instantiates the video processor, which needs
torchvision (see :class:`ImageOnlyOnevisionProcessor`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from transformers import LlavaOnevisionProcessor

from analysis.errors import VsinkError
from analysis.families.base import Family, UnsupportedConfigError, VisualToken, grid_tokens
from analysis.families.registry import register

if TYPE_CHECKING:
    from PIL import Image

    from analysis.loading import LoadedModel
    from analysis.tiny import TinySpec
    from analysis.tokens import GridSpec

_ANYRES_MAX = re.compile(r"^anyres_max_(\d+)$")

QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)


class ProcessorFolderError(VsinkError):
    """A checkpoint's processor files are missing a piece this family needs."""


class ImageOnlyOnevisionProcessor(LlavaOnevisionProcessor):
    """HF's LLaVA-OneVision processor without its video processor.

    The ``__init__`` signature names only ``image_processor`` and ``tokenizer``,
    so ``ProcessorMixin`` neither loads nor requires a video processor (which
    needs torchvision); image-token expansion is HF's own
    (``LlavaOnevisionProcessor.replace_image_token``). Saved folders name
    ``LlavaOnevisionProcessor``, so they stay ordinary HF checkpoints.
    """

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        num_image_tokens: int | None = None,
        vision_feature_select_strategy: str | None = None,
        chat_template: str | None = None,
        image_token: str = "<image>",
        video_token: str = "<video>",
        vision_aspect_ratio: str = "anyres_max_9",
        **kwargs: Any,
    ) -> None:
        # ProcessorMixin pairs positional pieces with get_attributes() (image_processor,
        # tokenizer here), so the parent's video_processor slot is dropped, not checked.
        super().__init__(
            image_processor,
            tokenizer,
            None,
            num_image_tokens=num_image_tokens,
            vision_feature_select_strategy=vision_feature_select_strategy,
            chat_template=chat_template,
            image_token=image_token,
            video_token=video_token,
            vision_aspect_ratio=vision_aspect_ratio,
        )

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["processor_class"] = LlavaOnevisionProcessor.__name__
        return out


def _config_error(message: str) -> UnsupportedConfigError:
    return UnsupportedConfigError(f"llava_onevision: {message}")


@register
class LlavaOnevision(Family):
    name: ClassVar[str] = "llava_onevision"
    architectures: ClassVar[tuple[str, ...]] = ("LlavaOnevisionForConditionalGeneration",)
    layout: ClassVar[str] = "anyres_max"
    base_llm: ClassVar[str] = "qwen2"
    notes: ClassVar[str] = (
        "LLaVA-OneVision (SigLIP + Qwen2): base tile, then the anyres grid unpadded and "
        "downscaled above anyres_max_N tiles, image_newline per row; several images per "
        "sample: one square-padded tile + one image_newline each; images only (no video "
        "processor, which needs torchvision)"
    )
    # LlavaOnevisionConfig().to_dict() keys beyond the common ones (transformers 5.24);
    # tests/test_family_onevision.py checks the list against the installed class.
    config_keys: ClassVar[frozenset[str]] = frozenset(
        {
            "image_grid_pinpoints",
            "image_token_index",
            "multimodal_projector_bias",
            "projector_hidden_act",
            "video_token_index",
            "vision_aspect_ratio",
            "vision_feature_layer",
            "vision_feature_select_strategy",
        }
    )

    # ------------------------------------------------------------------ config

    def check_values(self, config: Any) -> None:
        vision = config.vision_config
        if getattr(vision, "model_type", None) != "siglip_vision_model":
            raise _config_error(
                f"the vision tower is {getattr(vision, 'model_type', None)!r}; the layout assumes "
                "SigLIP (side x side patch tokens per tile, no CLS token)."
            )
        if config.vision_feature_select_strategy != "full":
            raise _config_error(
                f"vision_feature_select_strategy={config.vision_feature_select_strategy!r}: "
                "'default' drops a CLS token SigLIP does not have, and the model cannot regrid "
                "its tiles; only 'full' is laid out."
            )
        if not _ANYRES_MAX.match(str(config.vision_aspect_ratio)):
            raise _config_error(
                f"vision_aspect_ratio={config.vision_aspect_ratio!r} is not of the form "
                "'anyres_max_N'."
            )
        size, patch = int(vision.image_size), int(vision.patch_size)
        if size % patch:
            raise _config_error(f"image_size {size} is not a multiple of patch_size {patch}.")
        pinpoints = getattr(config, "image_grid_pinpoints", None)
        if not pinpoints:
            raise _config_error("the config has no image_grid_pinpoints; anyres needs them.")
        bad = [
            p
            for p in pinpoints
            if not isinstance(p, list | tuple)
            or len(p) != 2
            or any(not isinstance(v, int) or v <= 0 or v % size for v in p)
        ]
        if bad:
            raise _config_error(
                f"image_grid_pinpoints {bad} are not (height, width) pairs of positive "
                f"multiples of the tile size {size}."
            )

    # ------------------------------------------------------------------ processor

    def load_processor(self, name: str, **hub_kwargs: Any) -> Any:
        local = Path(name)
        if local.is_dir():
            _check_processor_folder(local)
        try:
            processor = ImageOnlyOnevisionProcessor.from_pretrained(name, **hub_kwargs)
        except (OSError, ValueError, TypeError) as err:
            raise ProcessorFolderError(
                f"Cannot build the LLaVA-OneVision processor of {name!r} from its tokenizer and "
                f"image processor (the video processor is never loaded). Cause: {err}"
            ) from err
        if processor.num_image_tokens is None:
            raise ProcessorFolderError(
                f"{name}: processor_config.json does not give num_image_tokens (the tokens per "
                "tile, (image_size // patch_size) ** 2); add it, as HF's checkpoints do."
            )
        return processor

    def processor_images(self, images: list[list[Image.Image]]) -> Any:
        # Nested per sample: the image processor counts images per sample
        # (batch_num_images), and multi-image samples get a different layout.
        return images

    # ``batch_num_images`` has one entry per sample: not a per-token tensor either.
    per_image_tensors: ClassVar[frozenset[str]] = frozenset(
        {"pixel_values", "image_sizes", "batch_num_images"}
    )

    def select_images(
        self, tensors: dict[str, torch.Tensor], sample: int, first: int, count: int
    ) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {
            key: tensors[key][first : first + count]
            for key in ("pixel_values", "image_sizes")
            if key in tensors
        }
        pixels = out.get("pixel_values")
        if pixels is not None and pixels.dim() == 5 and bool(pixels.ne(0).any()):
            # The processor zero-pads every image's tiles to the batch's most; cut back to
            # these images' most, as if built alone (the model reads only each image's own
            # tiles, so this changes no number; a normalised real tile is never all zeros
            # in practice, and if it were the model's reshape would fail, not go wrong).
            used = pixels.flatten(2).ne(0).any(-1).any(0)
            out["pixel_values"] = pixels[:, : int(used.nonzero().max()) + 1]
        if "batch_num_images" in tensors:
            out["batch_num_images"] = tensors["batch_num_images"][sample : sample + 1]
        return out

    # ------------------------------------------------------------------ geometry

    def sample_tokens(
        self, model: LoadedModel, sizes: list[tuple[int, int]]
    ) -> list[tuple[list[GridSpec], list[VisualToken]]]:
        # Only a sample's single image is tiled (the processor's batch_num_images).
        return [
            self.image_tokens(model, index, size, n_images=len(sizes))
            for index, size in enumerate(sizes)
        ]

    def image_tokens(
        self, model: LoadedModel, image_index: int, size: tuple[int, int], n_images: int = 1
    ) -> tuple[list[GridSpec], list[VisualToken]]:
        """One image's grids and tokens; ``n_images``: how many images its sample holds."""
        from analysis.tokens import GridSpec

        vision = model.config.vision_config
        side = int(vision.image_size) // int(vision.patch_size)
        height, width = size
        tokens: list[VisualToken] = []
        if n_images > 1:
            # pad_to_square centres the image on a square canvas before the resize.
            edge = max(height, width)
            x0, y0 = (width - edge) / 2, (height - edge) / 2
            base = GridSpec(image_index, 0, "base", side, side, (x0, y0, x0 + edge, y0 + edge))
            tokens += [(0, r, c, sep) for r, c, sep in grid_tokens(side, side)]
            tokens.append((0, -1, -1, True))  # the one image_newline after the grid
            return [base], tokens
        extent = (0.0, 0.0, float(width), float(height))
        base = GridSpec(image_index, 0, "base", side, side, extent)
        rows, cols = anyres_grid(model.hf_model.model, side, size)
        hires = GridSpec(image_index, 1, "anyres", rows, cols, extent, True)
        tokens += [(0, r, c, sep) for r, c, sep in grid_tokens(side, side)]
        tokens += [(1, r, c, sep) for r, c, sep in grid_tokens(rows, cols, separator_col=True)]
        return [base, hires], tokens

    # ------------------------------------------------------------------ tests

    def build_tiny(self, spec: TinySpec) -> tuple[Any, Any]:
        from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
        from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
            LlavaOnevisionImageProcessorPil,
        )

        from analysis.tiny import text_kwargs

        tok = onevision_tokenizer()
        s, side = spec.image_size, spec.image_size // spec.patch_size
        # 3x3 tiles exceed anyres_max_4 (ratio 1.5 > 1.1), so a large square image is downscaled.
        pinpoints = [[s, s], [s, 2 * s], [2 * s, s], [2 * s, 2 * s], [s, 3 * s], [3 * s, s]]
        pinpoints.append([3 * s, 3 * s])
        config = LlavaOnevisionConfig(
            text_config={"model_type": "qwen2", **text_kwargs(spec, len(tok), tok)},
            vision_config={
                "model_type": "siglip_vision_model",
                "hidden_size": spec.vision_hidden,
                "intermediate_size": 2 * spec.vision_hidden,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": s,
                "patch_size": spec.patch_size,
                "vision_use_head": False,
            },
            image_token_index=tok.convert_tokens_to_ids("<image>"),
            video_token_index=tok.convert_tokens_to_ids("<video>"),
            image_grid_pinpoints=pinpoints,
            vision_aspect_ratio=TINY_ASPECT_RATIO,
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
        )
        torch.manual_seed(spec.seed)
        model = LlavaOnevisionForConditionalGeneration(config).eval()
        processor = ImageOnlyOnevisionProcessor(
            image_processor=LlavaOnevisionImageProcessorPil(
                size={"height": s, "width": s}, image_grid_pinpoints=pinpoints
            ),
            tokenizer=tok,
            num_image_tokens=side * side,
            vision_feature_select_strategy="full",
            chat_template=QWEN_TEMPLATE,
            vision_aspect_ratio=TINY_ASPECT_RATIO,
        )
        return model, processor


#: The tiny model's anyres-max limit: low enough that 3x3 tiles are downscaled.
TINY_ASPECT_RATIO = "anyres_max_4"


def onevision_tokenizer(bos: str | None = None) -> Any:
    """The word tokenizer with Qwen2's chat specials plus image/video tokens.

    No BOS by default, as Qwen2; the planted model asks for one.
    """
    from analysis.tiny import word_tokenizer

    specials = {
        **({"bos": bos} if bos else {}),
        "eos": "<|im_end|>",
        "im_start": "<|im_start|>",
        "image_token": "<image>",
        "video_token": "<video>",
    }
    return word_tokenizer(specials, bos)


def anyres_grid(hf_inner: Any, side: int, size: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of the high-resolution grid of an image of ``size`` (height, width).

    Runs HF's own ``pack_image_features`` on one-channel dummy features, once
    without and once with a newline vector: the difference in length is the
    number of rows, so unpadding and the anyres-max downscale are exactly the
    model's.
    """
    from transformers.models.llava_onevision.modeling_llava_onevision import (
        image_size_to_num_patches,
    )

    config = hf_inner.config
    n_tiles = image_size_to_num_patches(
        list(size), config.image_grid_pinpoints, config.vision_config.image_size
    )
    dummy = torch.zeros(n_tiles, side * side, 1)
    sizes = torch.tensor([list(size)])
    lengths = []
    for newline in (None, torch.zeros(1)):
        _, lens = hf_inner.pack_image_features(
            [dummy], sizes, image_newline=newline, vision_aspect_ratio=config.vision_aspect_ratio
        )
        lengths.append(int(lens[0]))
    rows = lengths[1] - lengths[0]
    cols = (lengths[0] - side * side) // rows
    return rows, cols


def _check_processor_folder(folder: Path) -> None:
    """Name the missing piece of a local checkpoint folder in one line."""
    has = {p.name for p in folder.iterdir()}
    if not has & {"tokenizer.json", "tokenizer_config.json", "vocab.json"}:
        raise ProcessorFolderError(
            f"{folder} has no tokenizer (tokenizer.json / tokenizer_config.json): save the "
            "tokenizer with the model (processor.save_pretrained)."
        )
    if "processor_config.json" not in has:
        raise ProcessorFolderError(
            f"{folder} has no processor_config.json (num_image_tokens, vision_aspect_ratio, "
            "image processor settings): save the processor with the model."
        )
    if "preprocessor_config.json" not in has:
        import json

        settings = json.loads((folder / "processor_config.json").read_text())
        if "image_processor" not in settings:
            raise ProcessorFolderError(
                f"{folder} has no image processor settings (preprocessor_config.json, or an "
                "'image_processor' entry in processor_config.json)."
            )
