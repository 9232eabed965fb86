"""Qwen2.5-VL: a dynamic-resolution grid merged 2x2, mRoPE text attention routed so edits take effect.

Three things differ from the LLaVA-style families:

* **Geometry.** The image processor resizes each image to multiples of
  ``patch_size * merge_size`` pixels (HF's ``smart_resize``, within the
  processor's min/max pixel budget), cuts 14-px patches and the vision tower
  merges 2x2 neighbours: one ``<|image_pad|>`` token per merged patch, in
  raster order, between ``<|vision_start|>`` and ``<|vision_end|>``.
* **Processor without torchvision.** ``AutoProcessor`` builds a video
  processor, which needs torchvision; :class:`QwenImageProcessor` is the same
  processor with the image half only (PIL image processor + tokenizer + chat
  template), and :meth:`QwenVLFamily.load_processor` rebuilds it from a
  checkpoint folder without touching the video processor.
* **Attention.** TransformerLens keeps the text attention HF-native (mRoPE),
  so a ``hook_pattern`` edit would be discarded; :meth:`prepare_bridge` routes
  it through :func:`analysis.attention.hooked_attention`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from analysis.errors import VsinkError
from analysis.families.base import AttentionEdits, Family, VisualToken
from analysis.families.registry import refuse, register

if TYPE_CHECKING:
    from analysis.loading import LoadedModel
    from analysis.tiny import TinySpec
    from analysis.tokens import GridSpec

QWEN_SPECIALS = {
    "eos": "<|im_end|>",
    "im_start": "<|im_start|>",
    "vision_start": "<|vision_start|>",
    "image_token": "<|image_pad|>",
    "vision_end": "<|vision_end|>",
    "video_token": "<|video_pad|>",
}

QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Top-level keys of a Qwen2.5-VL / Qwen3-VL config (the text model's own keys live
# under text_config; older checkpoints also repeat some of them at the top).
_QWEN_KEYS = frozenset(
    {
        "image_token_id",
        "video_token_id",
        "vision_start_token_id",
        "vision_end_token_id",
        "vision_token_id",
        "attention_dropout",
        "hidden_act",
        "hidden_size",
        "intermediate_size",
        "max_position_embeddings",
        "max_window_layers",
        "num_attention_heads",
        "num_hidden_layers",
        "num_key_value_heads",
        "rms_norm_eps",
        "rope_theta",
        "rope_scaling",
        "rope_parameters",
        "sliding_window",
        "use_sliding_window",
        "layer_types",
    }
)


class ProcessorFolderError(VsinkError):
    """A checkpoint folder lacks what this family's processor is built from."""


def image_only_processor(base: type) -> type:
    """``base`` (a Qwen-VL ProcessorMixin) with its image half only: no video processor.

    ProcessorMixin reads its sub-processors from ``__init__``'s signature, so
    leaving ``video_processor`` out of it is what stops the class from needing
    one (and torchvision). Videos are refused by the processor itself.
    """
    from transformers.processing_utils import ProcessorMixin

    class ImageOnly(base):
        def __init__(
            self,
            image_processor: Any = None,
            tokenizer: Any = None,
            chat_template: str | None = None,
            **kwargs: Any,
        ) -> None:
            specials = QWEN_SPECIALS
            self.image_token = getattr(tokenizer, "image_token", None) or specials["image_token"]
            self.video_token = getattr(tokenizer, "video_token", None) or specials["video_token"]
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            for name in ("vision_start", "vision_end"):  # Qwen3-VL's processor reads these
                token = getattr(tokenizer, f"{name}_token", None) or specials[name]
                setattr(self, f"{name}_token", token)
                setattr(self, f"{name}_token_id", tokenizer.convert_tokens_to_ids(token))
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    ImageOnly.__name__ = ImageOnly.__qualname__ = f"{base.__name__}ImageOnly"
    return ImageOnly


@functools.cache
def _qwen2_5_processor_class() -> type:
    from transformers import Qwen2_5_VLProcessor

    return image_only_processor(Qwen2_5_VLProcessor)


def merged_grid(image_processor: Any, size: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of merged tokens for an image of ``size`` (height, width), as the processor resizes it."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    patch, merge = int(image_processor.patch_size), int(image_processor.merge_size)
    factor = patch * merge
    height, width = size
    resized_h, resized_w = smart_resize(
        height,
        width,
        factor,
        min_pixels=int(image_processor.size["shortest_edge"]),
        max_pixels=int(image_processor.size["longest_edge"]),
    )
    return resized_h // factor, resized_w // factor


def mrope_section(d_head: int) -> list[int]:
    """Qwen's split of the rotary half-dimension into (temporal, height, width): 16/24/24 of 64."""
    half = d_head // 2
    temporal = half // 4
    height = (half - temporal) // 2
    return [temporal, height, half - temporal - height]


class QwenVLFamily(Family):
    """What Qwen2.5-VL and Qwen3-VL share: processor, geometry, attention routing."""

    layout = (
        "dynamic grid: the image resized to multiples of patch*merge px (smart_resize), "
        "patches merged 2x2, one <|image_pad|> per merged patch in raster order between "
        "<|vision_start|> and <|vision_end|>"
    )
    config_keys = _QWEN_KEYS
    attention_edits = AttentionEdits(pattern=True, scores=True)
    position_ids_from_mask = False
    #: TransformerLens adapter class (module, name) whose torchvision check is lifted at boot.
    adapter: ClassVar[tuple[str, str]]

    def processor_class(self) -> type:
        raise NotImplementedError

    def image_processor_class(self) -> Any:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil,
        )

        return Qwen2VLImageProcessorPil

    # ------------------------------------------------------------------ processor

    def load_processor(self, name: str, **hub_kwargs: Any) -> Any:
        """Tokenizer + PIL image processor + chat template from ``name``, never the video processor."""
        from transformers import AutoTokenizer
        from transformers.processing_utils import ProcessorMixin

        kwargs = {k: v for k, v in hub_kwargs.items() if k != "trust_remote_code"}
        try:
            image_processor = self.image_processor_class().from_pretrained(name, **kwargs)
        except OSError as err:
            raise ProcessorFolderError(
                f"{self.name}: {name} has no image processor config (preprocessor_config.json, or "
                "processor_config.json with an image_processor entry); save the processor there "
                f"with processor.save_pretrained. Cause: {str(err).splitlines()[0]}"
            ) from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, **hub_kwargs)
        except (OSError, ValueError) as err:
            raise ProcessorFolderError(
                f"{self.name}: {name} has no usable tokenizer (tokenizer.json / tokenizer_config.json). "
                f"Cause: {str(err).splitlines()[0]}"
            ) from None
        try:
            processor_dict, _ = ProcessorMixin.get_processor_dict(name, **kwargs)
        except OSError:
            processor_dict = {}
        template = processor_dict.get("chat_template") or getattr(tokenizer, "chat_template", None)
        return self.processor_class()(
            image_processor=image_processor, tokenizer=tokenizer, chat_template=template
        )

    # ------------------------------------------------------------------ batches

    per_image_tensors = frozenset({"pixel_values", "image_grid_thw"})

    def select_images(
        self, tensors: dict[str, torch.Tensor], sample: int, first: int, count: int
    ) -> dict[str, torch.Tensor]:
        """``pixel_values`` holds every image's patches end to end (``image_grid_thw`` of each)."""
        grid = tensors["image_grid_thw"]
        patches = [0, *torch.cumsum(grid.prod(-1), 0).tolist()]
        return {
            "pixel_values": tensors["pixel_values"][patches[first] : patches[first + count]],
            "image_grid_thw": grid[first : first + count],
        }

    # ------------------------------------------------------------------ geometry

    def image_tokens(
        self, model: LoadedModel, image_index: int, size: tuple[int, int]
    ) -> tuple[list[GridSpec], list[VisualToken]]:
        from analysis.tokens import GridSpec

        rows, cols = merged_grid(model.processor.image_processor, size)
        height, width = size
        # The image is resized, not cropped: the grid covers all of it.
        spec = GridSpec(image_index, 0, "grid", rows, cols, (0.0, 0.0, float(width), float(height)))
        return [spec], [(0, r, c, False) for r in range(rows) for c in range(cols)]

    # ------------------------------------------------------------------ the bridge

    @contextlib.contextmanager
    def _lifted_library_check(self) -> Iterator[None]:
        """The adapter declares ``required_libraries=["torchvision"]`` for the processor; the
        toolkit hands the bridge its own torchvision-free processor, so the check is lifted."""
        import importlib

        module_name, class_name = self.adapter
        cls = getattr(importlib.import_module(module_name), class_name)
        previous = cls.__dict__.get("required_libraries")
        cls.required_libraries = []
        try:
            yield
        finally:
            if previous is None:
                del cls.required_libraries
            else:
                cls.required_libraries = previous

    def boot_context(self) -> contextlib.AbstractContextManager[None]:
        return self._lifted_library_check()

    def prepare_bridge(self, bridge: Any) -> None:
        from analysis.attention import install_native_routing

        tokenizer = getattr(getattr(bridge, "processor", None), "tokenizer", None)
        if tokenizer is not None and tokenizer.bos_token == tokenizer.eos_token:
            # TransformerLens fills a missing BOS with EOS (in place); Qwen has no BOS, and
            # <|im_end|> taken for one would mislabel positions and `vsink info`.
            tokenizer.bos_token = None

        if install_native_routing(bridge) == 0:
            raise VsinkError(
                f"{self.name}: no HF-native attention layer found to route; this TransformerLens "
                "version lays the model out differently and attention edits would be discarded."
            )


@register
class Qwen25VL(QwenVLFamily):
    name = "qwen2_5_vl"
    architectures = ("Qwen2_5_VLForConditionalGeneration",)
    base_llm = "qwen2"
    notes = (
        "Qwen2.5-VL (windowed ViT, 2x2 patch merger, mRoPE; text attention routed through "
        "the toolkit's hooked attention function so pattern and score edits take effect)"
    )
    adapter = (
        "transformer_lens.model_bridge.supported_architectures.qwen2_5_vl",
        "Qwen2_5_VLArchitectureAdapter",
    )

    def processor_class(self) -> type:
        return _qwen2_5_processor_class()

    def build_tiny(self, spec: TinySpec) -> tuple[Any, Any]:
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        tok = qwen_tokenizer()
        d_head = spec.d_model // spec.n_heads  # Qwen2.5-VL derives head_dim; spec.d_head unused
        text = {
            "vocab_size": len(tok),
            "hidden_size": spec.d_model,
            "intermediate_size": spec.d_mlp,
            "num_hidden_layers": spec.n_layers,
            "num_attention_heads": spec.n_heads,
            "num_key_value_heads": spec.n_kv_heads,
            "max_position_embeddings": 1024,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": mrope_section(d_head),
            },
            "bos_token_id": None,
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
            # Window attention over 2x2 merged tokens; the last block attends fully.
            "window_size": 2 * merge * spec.patch_size,
            "fullatt_block_indexes": [1],
            "out_hidden_size": spec.d_model,
        }
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **qwen_token_ids(tok))
        torch.manual_seed(spec.seed)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
        processor = self.processor_class()(
            image_processor=tiny_image_processor(self.image_processor_class(), spec, merge),
            tokenizer=tok,
            chat_template=QWEN_TEMPLATE,
        )
        return model, processor


def qwen_tokenizer() -> Any:
    """The word tokenizer with Qwen's special tokens (no BOS, as Qwen)."""
    from analysis.tiny import word_tokenizer

    return word_tokenizer(QWEN_SPECIALS, None, extra_words=("system",))


def qwen_token_ids(tok: Any) -> dict[str, Any]:
    ids = tok.convert_tokens_to_ids
    return {
        "image_token_id": ids(QWEN_SPECIALS["image_token"]),
        "video_token_id": ids(QWEN_SPECIALS["video_token"]),
        "vision_start_token_id": ids(QWEN_SPECIALS["vision_start"]),
        "vision_end_token_id": ids(QWEN_SPECIALS["vision_end"]),
    }


def tiny_image_processor(cls: Any, spec: TinySpec, merge: int) -> Any:
    """A PIL image processor whose pixel budget gives 2x2 to 4x4 merged tokens per image."""
    factor = spec.patch_size * merge
    return cls(
        patch_size=spec.patch_size,
        merge_size=merge,
        temporal_patch_size=2,
        size={"shortest_edge": 4 * factor * factor, "longest_edge": 16 * factor * factor},
    )


refuse(
    "Qwen2VLForConditionalGeneration",
    "TransformerLens 4.3 has no architecture adapter for Qwen2-VL (the bridge cannot boot: "
    "'Could not determine supported architecture'), and its vision tower (LayerNorm blocks, "
    "fc1/fc2 MLP, no window attention) does not fit the Qwen2.5-VL adapter; Qwen2.5-VL "
    "(qwen2_5_vl) and Qwen3-VL checkpoints are supported.",
)
