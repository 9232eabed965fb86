"""Tiny random-weight LMMs of every supported family, built from configs.

They are saved with ``save_pretrained`` (model, processor, tokenizer, chat
template) and meant to be loaded back through :func:`analysis.loading.load_model`,
so tests and benchmarks exercise the same path as a real checkpoint without
downloading anything. Random weights have no sinks; they test plumbing,
shapes and numerics, not the phenomenon (the demo model does that).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

WORDS = [
    "is",
    "there",
    "a",
    "an",
    "the",
    "red",
    "green",
    "blue",
    "yellow",
    "object",
    "image",
    "in",
    "of",
    "what",
    "color",
    "describe",
    "picture",
    "yes",
    "no",
    "this",
    "?",
    ".",
    ",",
    ":",
    "left",
    "right",
    "top",
    "bottom",
    "user",
    "assistant",
]

_LLAVA_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% else %} ASSISTANT: {{ m['content'][0]['text'] }}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)

_GEMMA3_TEMPLATE = (
    "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<start_of_image>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@dataclass(frozen=True)
class TinySpec:
    """Sizes of a tiny model; defaults keep a forward pass in milliseconds."""

    n_layers: int = 4
    d_model: int = 64
    n_heads: int = 4
    n_kv_heads: int = 4
    d_head: int | None = None
    d_mlp: int = 128
    vision_hidden: int = 32
    image_size: int = 28
    patch_size: int = 7
    seed: int = 0


def word_tokenizer(specials: dict[str, str], bos: str | None, extra_words: tuple[str, ...] = ()):
    """A word-level fast tokenizer (no download): specials first, then a small vocabulary."""
    import tokenizers as tk
    from transformers import PreTrainedTokenizerFast

    names = ["<unk>", "<pad>", *specials.values(), *WORDS, *extra_words]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(names))}
    tokenizer = tk.Tokenizer(tk.models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.normalizer = tk.normalizers.Lowercase()
    tokenizer.pre_tokenizer = tk.pre_tokenizers.Whitespace()
    tokenizer.decoder = tk.decoders.WordPiece(prefix="##")
    if bos is not None:
        tokenizer.post_processor = tk.processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])]
        )
    roles = {"bos": "bos_token", "eos": "eos_token"}
    kwargs = {roles[k]: v for k, v in specials.items() if k in roles}
    extra = {k: v for k, v in specials.items() if k not in roles}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=extra,
        **kwargs,
    )
    # Special tokens must survive the lowercase normaliser and the word splitter.
    fast.add_special_tokens({"additional_special_tokens": list(extra.values())})
    return fast


def _text_kwargs(spec: TinySpec, vocab_size: int, tokenizer: Any) -> dict[str, Any]:
    return {
        "vocab_size": vocab_size,
        "hidden_size": spec.d_model,
        "intermediate_size": spec.d_mlp,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": spec.n_heads,
        "num_key_value_heads": spec.n_kv_heads,
        "max_position_embeddings": 1024,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        **({"head_dim": spec.d_head} if spec.d_head else {}),
    }


def build_llava(spec: TinySpec) -> tuple[Any, Any]:
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = word_tokenizer({"bos": "<s>", "eos": "</s>", "image_token": "<image>"}, "<s>")
    text = LlamaConfig(**_text_kwargs(spec, len(tok), tok))
    vision = _clip_config(CLIPVisionConfig, spec)
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
        image_processor=_clip_processor(CLIPImageProcessor, spec),
        tokenizer=tok,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        chat_template=_LLAVA_TEMPLATE,
        num_additional_image_tokens=1,
    )
    return model, processor


def build_llava_next(spec: TinySpec) -> tuple[Any, Any]:
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    tok = word_tokenizer({"bos": "<s>", "eos": "</s>", "image_token": "<image>"}, "<s>")
    text = LlamaConfig(**_text_kwargs(spec, len(tok), tok))
    vision = _clip_config(CLIPVisionConfig, spec)
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
        chat_template=_LLAVA_TEMPLATE,
        num_additional_image_tokens=1,
    )
    return model, processor


def gemma3_tokenizer() -> Any:
    """The word tokenizer with Gemma 3's special tokens (tiny and planted models share it)."""
    specials = {
        "bos": "<bos>",
        "eos": "<eos>",
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
        "start_turn": "<start_of_turn>",
        "end_turn": "<end_of_turn>",
    }
    return word_tokenizer(specials, "<bos>", extra_words=("user", "model"))


def build_gemma3(spec: TinySpec) -> tuple[Any, Any]:
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
    )

    tok = gemma3_tokenizer()
    text = _text_kwargs(spec, len(tok), tok)
    text.update(
        head_dim=spec.d_head or spec.d_model // spec.n_heads,
        sliding_window=16,
        layer_types=[
            "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(spec.n_layers)
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
        chat_template=_GEMMA3_TEMPLATE,
        image_seq_length=tokens_per_image,
    )
    return model, processor


def _clip_config(cls: Any, spec: TinySpec) -> Any:
    return cls(
        hidden_size=spec.vision_hidden,
        intermediate_size=2 * spec.vision_hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
    )


def _clip_processor(cls: Any, spec: TinySpec) -> Any:
    s = spec.image_size
    return cls(size={"shortest_edge": s}, crop_size={"height": s, "width": s})


BUILDERS = {"llava": build_llava, "llava_next": build_llava_next, "gemma3": build_gemma3}


def build_tiny_model(family: str, out_dir: str | Path, spec: TinySpec | None = None) -> Path:
    """Build a tiny random ``family`` model and save it (model + processor) to ``out_dir``."""
    if family not in BUILDERS:
        raise ValueError(f"Unknown family {family!r}; choose from {sorted(BUILDERS)}.")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model, processor = BUILDERS[family](spec or TinySpec())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
