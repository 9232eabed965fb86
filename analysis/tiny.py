"""Tiny random-weight LMMs of every supported family, built from configs.

Each family builds its own (:meth:`analysis.families.base.Family.build_tiny`);
this module holds what they share (sizes, a word-level tokenizer, chat
templates, tiny config helpers) and :func:`build_tiny_model`, which saves one.

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

LLAVA_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% else %} ASSISTANT: {{ m['content'][0]['text'] }}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)

GEMMA3_TEMPLATE = (
    "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<start_of_image>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

# The names the planted zoo imports.
_LLAVA_TEMPLATE = LLAVA_TEMPLATE
_GEMMA3_TEMPLATE = GEMMA3_TEMPLATE


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


def text_kwargs(spec: TinySpec, vocab_size: int, tokenizer: Any) -> dict[str, Any]:
    """The text config of a tiny LLM (LLaMA / Gemma 3 keyword names)."""
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


def clip_config(cls: Any, spec: TinySpec) -> Any:
    """A tiny vision tower config of class ``cls`` (CLIP-like keyword names)."""
    return cls(
        hidden_size=spec.vision_hidden,
        intermediate_size=2 * spec.vision_hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
    )


def clip_processor(cls: Any, spec: TinySpec) -> Any:
    """A CLIP-style image processor: resize the shortest edge, centre-crop a square."""
    s = spec.image_size
    return cls(size={"shortest_edge": s}, crop_size={"height": s, "width": s})


def build_tiny_model(family: str, out_dir: str | Path, spec: TinySpec | None = None) -> Path:
    """Build a tiny random ``family`` model and save it (model + processor) to ``out_dir``.

    The family's own :meth:`~analysis.families.base.Family.build_tiny` builds it;
    an unknown name raises :class:`~analysis.families.UnknownFamilyError`.
    """
    from analysis.families import get
    from analysis.loading import quiet_transformers

    builder = get(family)
    with quiet_transformers():
        model, processor = builder.build_tiny(spec or TinySpec())
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        processor.save_pretrained(out)
    return out
