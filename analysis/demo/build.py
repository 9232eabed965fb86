"""Build the SYNTHETIC demo LMM with a planted visual attention sink.

THIS IS NOT A TRAINED MODEL. Every weight is written by hand (plus a little
fixed-seed noise) so that the model *exhibits*, by construction, the
phenomenon of Kang et al., "See What You Are Told: Visual Attention Sink in
Large Multimodal Models" (ICLR 2025): massive activations in two fixed sink
dimensions on BOS and on a few background visual tokens, "sink heads" that
attend to those tokens, and "image-centric heads" whose attention to object
patches carries the answer. It exists so the toolkit's analyses, figures and
tests have a small, fast, fully understood ground truth. Its answers mean
nothing outside the toy task below.

Run ``python -m analysis.demo.build [--out DIR] [--verify]``. It writes, bit
for bit the same on every run:

- ``DIR/model/``: a real Hugging Face checkpoint (``LlavaForConditionalGeneration``,
  LLaVA-1.5 layout: CLIP vision tower, 2-layer GELU projector, Llama text model;
  float16 safetensors, ``LlavaProcessor`` with a word-level tokenizer and a
  LLaVA-1.5 chat template). Load it with ``AutoModelForImageTextToText`` and
  ``AutoProcessor``; a float32 load is an exact upcast of the stored weights.
- ``DIR/images/demo_XX.png``: 336x336 synthetic images, a light-gray background,
  a few darker gray "specks" (whole 14x14 patches: the planted sinks) and one or
  two coloured rectangles (whole patches: the objects).
- ``DIR/questions.jsonl``: POPE-style yes/no questions ("Is there a red object
  in the image?"), balanced.
- ``DIR/ground_truth.json``: sink dims, tau, first sink layer, the heads of each
  circuit and, per image, the objects, the planted sink patches and a 24x24
  patch map (0 background, 1 object, 2 planted sink).

The circuit (residual width 1024, 6 layers, 4 heads of width 32; sink dims
337 and 771; named feature dims are the constants below, every other dim is
noise; ``python -m analysis.demo.verify`` measures all of it):

- Embeddings. Every token carries a constant ``ONE`` feature and dense noise
  (std 0.02). BOS has a ``BOS`` feature; colour words a ``CW`` indicator and a
  one-hot ``WCOL`` colour code; "yes"/"no" an ``ANS`` feature. Visual tokens:
  the CLIP patch embedding averages each channel over the patch, the vision
  LayerNorm is held in its linear regime (eps 1e4) and the projector is
  linear in its working range (GELU(x + 10) = x + 10), so a visual token
  carries ``ONE``, ``VIS`` and the patch's mean normalised R, G, B.
- Layer 0 MLP: colour detectors, ``COL_k`` fires when u_k . rgb > 2 for the
  prototype u_k in {+1, -1}^3 of palette colour k.
- Layer 1 MLP: the massive activation. One neuron fires on gray (no colour
  detector) visual tokens darker than a threshold and writes about
  (2900, 1450) into the two sink dims; another fires on BOS and writes about
  (3050, 1020). From layer 2 on phi = max |x_d / RMS(x)| is 28.6 on those
  visual tokens and 30.4 on BOS (> tau = 20), and below 1.2 everywhere else.
- Layers 2-5: sink heads (query reads ``ONE``, key reads the sink dims, with
  an extra term that only BOS, with its 3 : 1 ratio, has) give most attention
  to BOS and the visual sinks; their values read the normalised visual
  features, which are tiny on sinks, so sinks add almost nothing to the
  residual stream.
  Layer 2 head 0 ("ask" head): tokens after the colour word copy its colour
  into ``ASKED_k``. Image-centric heads (2, 1) (keys read "is object") and
  (3, 2) (keys read "is object of the asked colour") copy the colour of the
  attended object patches into ``SEEN_k``.
- Layer 4 MLP: ``YES`` = relu(SEEN_k - theta) gated by ``ASKED_k``; the
  unembedding reads ``YES`` for "yes", ``ONE`` for "no" and ``ANS`` for "</s>"
  (so generation stops after the answer).

- Multiple choice by option letter ("What color is the object?" with options
  ``A. red`` .. ``D. yellow``; the letters ``A``..``D`` are case-sensitive
  whole-word tokens, so the article "a" stays a word). Layer 0 head 0 ("bind"
  head): a colour word's query meets the letters' ``LETTER_KEY`` (k + 1 for
  letter k), so it attends to the latest letter before it and copies its code
  ``LET_k`` into ``OPTL_k``. Layer 0 MLP: one neuron per (letter, colour) fires
  on a colour word carrying both codes (``PAIR``). Layer 1 head 0 ("options"
  head): later tokens attend to the tokens carrying a bound letter (never to
  visual tokens) and copy their ``PAIR`` codes into ``AGG``. Layer 5 MLP: per
  (letter k, colour c) two neurons give ``SEEN_c * clamp(AGG_kc - theta, 0,
  delta)`` to ``LOGIT_LET_k``, which letter k's unembedding reads; like the yes
  neurons they are off on an answer token (``ANS``), so generation stops after
  the letter. In prompts without options these parts write almost nothing
  (the yes/no log-probs move by under 0.4 nats).

Attention and MLP inputs are RMS-normalised, which divides every feature of a
token by the same number; every threshold is therefore written relative to the
``ONE`` feature so decisions are exact. Rotary embeddings use rope_theta 1e30
and only head dims of rotary pairs >= 6, which are position independent.

Why one file over the usual ~500 lines: it is the specification of one
hand-written circuit. The feature-dim constants, the image and question
generators, the processor and every weight of :func:`make_state_dict` refer to
each other by those constants, and the files it writes are compared byte for
byte (``tests/test_demo_model.py``); kept together, a reader checks one
constant against this docstring, the weights that use it and the ground truth
without jumping between modules.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_OUT = Path(__file__).resolve().parent

# ----------------------------------------------------------------------------
# Architecture
# ----------------------------------------------------------------------------
D_MODEL = 1024
N_LAYERS = 6
N_HEADS = 4
HEAD_DIM = 32
D_MLP = 48
IMAGE_SIZE = 336
PATCH = 14
GRID = IMAGE_SIZE // PATCH  # 24
N_VISUAL = GRID * GRID  # 576
VISION_WIDTH = 16
ROPE_THETA = 1e30
TAU = 20
FIRST_SINK_LAYER = 2

# ----------------------------------------------------------------------------
# Residual stream layout (named feature dims; everything else is noise)
# ----------------------------------------------------------------------------
SINK_DIMS = (337, 771)  # massive-activation dims, magnitudes 2 : 1
ONE, VIS, BOS = 8, 9, 10
R, G, B = 11, 12, 13
PALETTE_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan")
N_COL = len(PALETTE_NAMES)
COL = tuple(range(16, 16 + N_COL))  # colour detectors (layer 0 MLP)
WCOL = tuple(range(24, 24 + N_COL))  # colour-word code (embeddings)
CW = 30  # "this is a colour word" (embeddings)
ASKED = tuple(range(32, 32 + N_COL))  # asked colour (ask head)
SEEN = tuple(range(40, 40 + N_COL))  # seen colour (image-centric heads)
YES = 48
ANS = 49  # on the "yes"/"no" embeddings: the answer has been given
SCRATCH = (52, 53, 54, 55)  # written by the sink heads, read by nothing
# Multiple choice by option letter (tokens "A".."D", case-sensitive, whole words):
LETTERS = ("A", "B", "C", "D")
N_LET = len(LETTERS)
LETTER_KEY = 56  # on letter k's embedding: k + 1 (later letters are stronger keys)
LET = tuple(range(57, 57 + N_LET))  # one-hot letter code (embeddings)
OPTL = tuple(range(61, 61 + N_LET))  # a colour word's option letter (bind head)
PAIR = tuple(range(65, 65 + N_LET * N_COL))  # (letter, colour) of an option (layer 0 MLP)
AGG = tuple(range(89, 89 + N_LET * N_COL))  # the prompt's options, at later tokens
LOGIT_LET = tuple(range(113, 113 + N_LET))  # letter answer (layer 5 MLP)
LETTER_PAD = 117  # evens out the letters' norms, so every bound letter is as strong
BIND_HEAD = (0, 0)  # colour word -> the latest letter before it
OPTIONS_HEAD = (1, 0)  # later tokens <- every colour word (its (letter, colour) pair)

# head dims used by queries/keys: rotary pairs 6..15 (dims 6-15 and 22-31) only
QK_DIMS = tuple(range(6, 16)) + tuple(range(22, 32))

# which head does what (layer, head)
ASK_HEAD = (2, 0)
IMAGE_CENTRIC_HEADS = ((2, 1), (3, 2))
SINK_HEADS = tuple(
    (layer, head)
    for layer in range(FIRST_SINK_LAYER, N_LAYERS)
    for head in range(N_HEADS)
    if (layer, head) != ASK_HEAD and (layer, head) not in IMAGE_CENTRIC_HEADS
)

# ----------------------------------------------------------------------------
# Palette and images
# ----------------------------------------------------------------------------
HI, LO = 235, 20
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (HI, LO, LO),
    "green": (LO, HI, LO),
    "blue": (LO, LO, HI),
    "yellow": (HI, HI, LO),
    "magenta": (HI, LO, HI),
    "cyan": (LO, HI, HI),
}
PROTOTYPES = {name: tuple(1 if c == HI else -1 for c in rgb) for name, rgb in PALETTE.items()}


@dataclass(frozen=True)
class ImageSpec:
    """One synthetic image. rows/cols are half-open patch ranges [start, stop)."""

    background: int  # gray level 0-255 of the plain background
    speck: int  # gray level of the planted dark specks (the sinks)
    n_specks: int
    objects: tuple[tuple[str, tuple[int, int], tuple[int, int]], ...]


IMAGE_SPECS: tuple[ImageSpec, ...] = (
    ImageSpec(200, 104, 12, (("red", (4, 10), (3, 11)),)),
    ImageSpec(212, 112, 9, (("green", (14, 20), (12, 18)), ("blue", (3, 6), (16, 21)))),
    ImageSpec(192, 96, 16, (("yellow", (9, 15), (9, 15)),)),
    ImageSpec(220, 120, 10, (("magenta", (2, 8), (2, 6)), ("cyan", (15, 22), (10, 20)))),
    ImageSpec(206, 100, 14, (("blue", (10, 13), (4, 8)),)),
    ImageSpec(196, 108, 11, (("cyan", (5, 9), (14, 22)), ("red", (16, 21), (2, 7)))),
    ImageSpec(216, 116, 8, (("green", (6, 18), (6, 14)),)),
    ImageSpec(188, 92, 18, (("yellow", (18, 21), (17, 20)), ("magenta", (4, 12), (10, 16)))),
    ImageSpec(224, 124, 13, (("red", (11, 14), (18, 22)), ("green", (2, 5), (2, 5)))),
    ImageSpec(202, 110, 15, (("blue", (12, 20), (8, 18)), ("yellow", (2, 4), (19, 23)))),
)

QUESTION_TEMPLATES = (
    "Is there a {c} object in the image?",
    "Is there a {c} shape in the picture?",
    "Do you see a {c} object in this image?",
)

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")
WORDS = (
    "user assistant : ? . , is there a an the in this of object shape image picture "
    "do you see what color colour are any yes no gray background describe and "
    + " ".join(PALETTE_NAMES)
).split()

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ 'USER: ' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<image>\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ ' ' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ 'ASSISTANT: ' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}{{ item['text'] }}{%- endfor -%}"
    "{%- endif -%}"
    "</s>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}ASSISTANT:{%- endif -%}"
)


# ----------------------------------------------------------------------------
# Hand-set magnitudes (tuned with ``--verify``)
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Knobs:
    noise_std: float = 0.02
    seed: int = 20250306
    # layer 0 colour detectors: gate = kc * (u_k . rgb - 2 * ONE), out scale
    colour_gain: float = 4.0
    colour_out: float = 1.0 / 480.0
    # layer 1 sink neuron
    sink_gain: float = 2.0
    sink_vis: float = 1.6
    sink_bos_gate: float = 2.0
    sink_colour: float = 3.0
    sink_out: tuple[float, float] = (3.2, 1.6)  # visual sinks, ratio 2 : 1
    bos_out: tuple[float, float] = (3.6, 1.2)  # BOS, ratio 3 : 1
    # sink heads: score(sink) = q_one * k_sink * x_ONE * x_S1 / sqrt(32)
    sink_q: float = 0.25
    sink_k: float = 0.25
    sink_bos: float = 0.23
    sink_head_jitter: float = 0.15
    sink_layer_gain: tuple[float, ...] = (1.0, 1.0, 0.75, 0.8, 0.9, 1.0)
    sink_v: float = 0.005
    # ask head
    ask_q: float = 0.5
    ask_k_cw: float = 1.6
    ask_k_sink: float = 0.15
    ask_k_bos: float = 0.15
    ask_o: float = 1.0 / 32.0
    # image-centric heads
    ic_q: float = 0.5
    ic_k_obj: float = 0.33
    ic_k_sink: float = 0.12
    ic_k_bos: float = 0.16
    ic_q_asked: float = 0.3
    ic_k_asked: float = 0.6
    ic_o: float = 1.0 / 28.0
    # layer 4 yes neurons: YES = wy * relu(ky * (SEEN_k - theta * ONE)) * ASKED_k
    yes_gain: float = 16.0
    yes_theta: float = 0.075
    yes_out: float = 0.0006
    yes_ans: float = 50.0
    # multiple choice: bind head, (letter, colour) neurons, options head, letter neurons
    letter_key: float = 0.25
    bind_q: float = 1.0
    bind_k: float = 1.0
    bind_o: float = 0.052
    pair_gain: float = 1.0
    pair_out: float = 3.0 / 115.0
    options_q: float = 0.5
    options_k: float = 0.4
    options_not_visual: float = 1.0
    options_o: float = 0.12
    letter_gain: float = 20.0
    letter_theta: float = 0.07
    letter_delta: float = 0.04
    letter_out: float = 0.02
    logit_letter: float = 1.0
    # unembedding
    logit_yes: float = 0.75
    logit_no: float = 0.5
    logit_eos: float = 1.0


KNOBS = Knobs()


# ----------------------------------------------------------------------------
# Images, questions, ground truth
# ----------------------------------------------------------------------------
def _speck_cells(index: int, spec: ImageSpec) -> list[tuple[int, int]]:
    """Planted sink cells: fixed-seed draw of background cells away from objects."""
    blocked = np.zeros((GRID, GRID), dtype=bool)
    for _, (r0, r1), (c0, c1) in spec.objects:
        blocked[max(r0 - 1, 0) : r1 + 1, max(c0 - 1, 0) : c1 + 1] = True
    free = [(r, c) for r in range(GRID) for c in range(GRID) if not blocked[r, c]]
    rng = np.random.default_rng(1000 + index)
    chosen = rng.choice(len(free), size=spec.n_specks, replace=False)
    return sorted(free[i] for i in chosen)


def patch_grid(index: int, spec: ImageSpec) -> np.ndarray:
    grid = np.zeros((GRID, GRID), dtype=np.int64)
    for _, (r0, r1), (c0, c1) in spec.objects:
        grid[r0:r1, c0:c1] = 1
    for r, c in _speck_cells(index, spec):
        grid[r, c] = 2
    return grid


def render_image(index: int, spec: ImageSpec) -> np.ndarray:
    img = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), spec.background, dtype=np.uint8)
    for r, c in _speck_cells(index, spec):
        img[r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH] = spec.speck
    for name, (r0, r1), (c0, c1) in spec.objects:
        img[r0 * PATCH : r1 * PATCH, c0 * PATCH : c1 * PATCH] = PALETTE[name]
    return img


def image_name(index: int) -> str:
    return f"demo_{index:02d}.png"


def make_questions() -> list[dict[str, Any]]:
    rng = np.random.default_rng(7)
    items: list[dict[str, Any]] = []
    qid = 0
    for index, spec in enumerate(IMAGE_SPECS):
        present = [name for name, _, _ in spec.objects]
        absent = [name for name in PALETTE_NAMES if name not in present]
        negatives = [absent[i] for i in rng.choice(len(absent), size=len(present), replace=False)]
        pairs = [(c, "yes") for c in present] + [(c, "no") for c in negatives]
        for colour, label in pairs:
            template = QUESTION_TEMPLATES[qid % len(QUESTION_TEMPLATES)]
            items.append(
                {
                    "question_id": qid,
                    "image": image_name(index),
                    "text": template.format(c=colour),
                    "label": label,
                }
            )
            qid += 1
    return items


def make_ground_truth() -> dict[str, Any]:
    images = {}
    for index, spec in enumerate(IMAGE_SPECS):
        images[image_name(index)] = {
            "background_shade": spec.background,
            "speck_shade": spec.speck,
            "objects": [
                {"color": name, "rows": list(rows), "cols": list(cols)}
                for name, rows, cols in spec.objects
            ],
            "sink_patches": [list(cell) for cell in _speck_cells(index, spec)],
            "patch_grid": patch_grid(index, spec).tolist(),
        }
    return {
        "synthetic": True,
        "description": (
            "SYNTHETIC demo LMM built by analysis/demo/build.py: hand-constructed weights, "
            "not trained, not a real model. LLaVA-1.5 layout (CLIP vision tower, GELU "
            "projector, Llama text model, d_model 1024, 6 layers, 4 heads). Massive "
            "activations are planted in sink_dims on BOS and on the dark-gray 'speck' "
            "patches (sink_patches) from layer first_sink_layer on; sink_heads attend "
            "to them; image_centric_heads attend to object patches and carry the "
            "answer to 'Is there a <colour> object' questions. Patch order is "
            "row-major (visual token t <-> row t // 24, col t % 24); object rows/cols "
            "are half-open patch ranges [start, stop); patch_grid: 0 background, "
            "1 object, 2 planted sink."
        ),
        "sink_dims": list(SINK_DIMS),
        "tau": TAU,
        "first_sink_layer": FIRST_SINK_LAYER,
        "num_layers": N_LAYERS,
        "num_heads": N_HEADS,
        "image_centric_heads": [list(h) for h in IMAGE_CENTRIC_HEADS],
        "sink_heads": [list(h) for h in SINK_HEADS],
        "ask_head": list(ASK_HEAD),
        "grid": [GRID, GRID],
        "num_visual_tokens": N_VISUAL,
        "palette": {name: list(rgb) for name, rgb in PALETTE.items()},
        "answer_tokens": {"yes": "yes", "no": "no"},
        "images": images,
    }


# ----------------------------------------------------------------------------
# Tokenizer and processor
# ----------------------------------------------------------------------------
def make_processor():
    import tokenizers as tk
    from transformers import LlavaProcessor, PreTrainedTokenizerFast
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    vocab = {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, *WORDS))}
    tokenizer = tk.Tokenizer(tk.models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.normalizer = tk.normalizers.Lowercase()
    tokenizer.pre_tokenizer = tk.pre_tokenizers.Whitespace()
    tokenizer.post_processor = tk.processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tokenizer.decoder = tk.decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    # Option letters are matched before lower-casing, as whole words, so "A." is the
    # letter and "a red object" keeps the article.
    tokenizer.add_tokens([tk.AddedToken(x, single_word=True, normalized=False) for x in LETTERS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        model_max_length=2048,
        padding_side="left",
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,
        image_token="<image>",
    )


# ----------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------
def make_config(vocab_size: int, token_ids: dict[str, int]):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=D_MODEL,
        intermediate_size=D_MLP,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=N_HEADS,
        head_dim=HEAD_DIM,
        hidden_act="silu",
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        bos_token_id=token_ids["<s>"],
        eos_token_id=token_ids["</s>"],
        pad_token_id=token_ids["<pad>"],
        tie_word_embeddings=False,
    )
    vision = CLIPVisionConfig(
        hidden_size=VISION_WIDTH,
        intermediate_size=VISION_WIDTH,
        projection_dim=VISION_WIDTH,
        num_hidden_layers=1,
        num_attention_heads=1,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        layer_norm_eps=1e4,
        hidden_act="quick_gelu",
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=token_ids["<image>"],
        image_seq_length=N_VISUAL,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )
    config.dtype = "float16"
    return config


def _sink_key(k: np.ndarray, dim: int, scale: float, bos_extra: float) -> None:
    """Key reads the (normalised) sink dims into head dim ``dim``.

    Visual sinks carry the sink dims in ratio 2 : 1, BOS in ratio 3 : 1, so the
    term ``s1 - 2 s2`` is zero on visual sinks and positive on BOS: BOS is the
    strongest sink, as in real LLaVA-1.5."""
    k[dim, SINK_DIMS[0]] = scale + bos_extra
    k[dim, SINK_DIMS[1]] = scale / 2 - 2 * bos_extra


def _pairs() -> list[tuple[int, int]]:
    """(letter, colour) index pairs, in the order of the PAIR / AGG dims."""
    return [(letter, c) for letter in range(N_LET) for c in range(N_COL)]


def make_state_dict(
    token_ids: dict[str, int], vocab_size: int, knobs: Knobs = KNOBS
) -> dict[str, np.ndarray]:
    """All weights as float32 numpy arrays (rounded to float16 when saved)."""
    rng = np.random.default_rng(knobs.seed)
    f32 = np.float32
    sd: dict[str, np.ndarray] = {}

    # ---- vision tower: patch mean of r, g, b (and their negatives), linear LN
    w = VISION_WIDTH
    conv = np.zeros((w, 3, PATCH, PATCH), f32)
    for c in range(3):
        conv[c, c] = 1.0 / (PATCH * PATCH)
        conv[3 + c, c] = -1.0 / (PATCH * PATCH)
    v = "model.vision_tower."
    sd[v + "embeddings.class_embedding"] = np.zeros(w, f32)
    sd[v + "embeddings.patch_embedding.weight"] = conv
    sd[v + "embeddings.position_embedding.weight"] = np.zeros((N_VISUAL + 1, w), f32)
    for ln in ("pre_layrnorm", "post_layernorm"):
        sd[v + ln + ".weight"] = np.full(w, 100.0, f32)  # sqrt(eps): LN(x) ~ x
        sd[v + ln + ".bias"] = np.zeros(w, f32)
    enc = v + "encoder.layers.0."
    for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
        sd[enc + f"self_attn.{name}.weight"] = np.zeros((w, w), f32)
        sd[enc + f"self_attn.{name}.bias"] = np.zeros(w, f32)
    for ln in ("layer_norm1", "layer_norm2"):
        sd[enc + ln + ".weight"] = np.ones(w, f32)
        sd[enc + ln + ".bias"] = np.zeros(w, f32)
    for name in ("fc1", "fc2"):
        sd[enc + f"mlp.{name}.weight"] = np.zeros((w, w), f32)
        sd[enc + f"mlp.{name}.bias"] = np.zeros(w, f32)

    # ---- projector: rgb -> R, G, B dims; ONE, VIS and noise from the bias
    l1w = np.zeros((D_MODEL, w), f32)
    l1b = np.zeros(D_MODEL, f32)
    l2w = np.zeros((D_MODEL, D_MODEL), f32)
    l2b = (rng.standard_normal(D_MODEL) * knobs.noise_std).astype(f32)
    for c, dim in enumerate((R, G, B)):
        l1w[dim, c] = 1.0
        l1b[dim] = 10.0
        l2w[dim, dim] = 1.0
        l2b[dim] = -10.0
    l2b[ONE] = 1.0
    l2b[VIS] = 1.0
    sd["model.multi_modal_projector.linear_1.weight"] = l1w
    sd["model.multi_modal_projector.linear_1.bias"] = l1b
    sd["model.multi_modal_projector.linear_2.weight"] = l2w
    sd["model.multi_modal_projector.linear_2.bias"] = l2b

    # ---- token embeddings
    emb = (rng.standard_normal((vocab_size, D_MODEL)) * knobs.noise_std).astype(f32)
    emb[:, ONE] = 1.0
    emb[token_ids["<s>"], BOS] = 1.0
    for index, name in enumerate(PALETTE_NAMES):
        emb[token_ids[name], CW] = 1.0
        emb[token_ids[name], WCOL[index]] = 1.0
    for word in ("yes", "no"):
        emb[token_ids[word], ANS] = 1.0
    for index, symbol in enumerate(LETTERS):
        emb[token_ids[symbol], LETTER_KEY] = knobs.letter_key * (index + 1)
        emb[token_ids[symbol], LETTER_PAD] = np.sqrt(
            (knobs.letter_key * N_LET) ** 2 - (knobs.letter_key * (index + 1)) ** 2
        )
        emb[token_ids[symbol], LET[index]] = 1.0
        emb[token_ids[symbol], ANS] = 1.0
    sd["model.language_model.embed_tokens.weight"] = emb

    # ---- decoder layers
    qkv = N_HEADS * HEAD_DIM
    for layer in range(N_LAYERS):
        p = f"model.language_model.layers.{layer}."
        q = np.zeros((N_HEADS, HEAD_DIM, D_MODEL), f32)
        k = np.zeros((N_HEADS, HEAD_DIM, D_MODEL), f32)
        vv = np.zeros((N_HEADS, HEAD_DIM, D_MODEL), f32)
        o = np.zeros((D_MODEL, N_HEADS, HEAD_DIM), f32)
        gate = np.zeros((D_MLP, D_MODEL), f32)
        up = np.zeros((D_MLP, D_MODEL), f32)
        down = np.zeros((D_MODEL, D_MLP), f32)

        for head in range(N_HEADS):
            lh = (layer, head)
            if lh == BIND_HEAD:  # colour word: attend to the latest letter, copy its code
                q[head, QK_DIMS[0], CW] = knobs.bind_q
                k[head, QK_DIMS[0], LETTER_KEY] = knobs.bind_k
                for j in range(N_LET):
                    vv[head, j, LET[j]] = 1.0
                    o[OPTL[j], head, j] = knobs.bind_o
            elif lh == OPTIONS_HEAD:  # every token: read the (letter, colour) pairs
                # Keys read the bound letter, which only option colour words carry: in a
                # prompt without options the head attends uniformly and writes ~nothing.
                q[head, QK_DIMS[0], ONE] = knobs.options_q
                for j in range(N_LET):
                    k[head, QK_DIMS[0], OPTL[j]] = knobs.options_k
                # Never the visual tokens: they share the projector's noise, which an
                # average over them would not cancel.
                k[head, QK_DIMS[0], VIS] = -knobs.options_not_visual
                for j, dim in enumerate(PAIR):
                    vv[head, j, dim] = 1.0
                    o[AGG[j], head, j] = knobs.options_o
            if layer < FIRST_SINK_LAYER:
                continue  # layers 0-1: the sink circuit's attention writes nothing
            if lh in SINK_HEADS:
                jitter = 1.0 + knobs.sink_head_jitter * np.cos(1.7 * (4 * layer + head))
                gain = knobs.sink_layer_gain[layer] * jitter
                q[head, QK_DIMS[0], ONE] = knobs.sink_q * gain
                _sink_key(k[head], QK_DIMS[0], knobs.sink_k, knobs.sink_bos)
                for j, dim in enumerate((VIS, R, G, B)):
                    vv[head, j, dim] = 1.0
                    o[SCRATCH[j], head, j] = knobs.sink_v
            elif lh == ASK_HEAD:
                q[head, QK_DIMS[0], ONE] = knobs.ask_q
                k[head, QK_DIMS[0], CW] = knobs.ask_k_cw
                _sink_key(k[head], QK_DIMS[0], knobs.ask_k_sink, knobs.ask_k_bos)
                for c in range(N_COL):
                    vv[head, c, WCOL[c]] = 1.0
                    o[ASKED[c], head, c] = knobs.ask_o
            elif lh in IMAGE_CENTRIC_HEADS:
                q[head, QK_DIMS[0], ONE] = knobs.ic_q
                for c in range(N_COL):
                    k[head, QK_DIMS[0], COL[c]] = knobs.ic_k_obj
                _sink_key(k[head], QK_DIMS[0], knobs.ic_k_sink, knobs.ic_k_bos)
                if lh == IMAGE_CENTRIC_HEADS[1]:  # colour-specific part
                    for c in range(N_COL):
                        q[head, QK_DIMS[1 + c], ASKED[c]] = knobs.ic_q_asked
                        k[head, QK_DIMS[1 + c], COL[c]] = knobs.ic_k_asked
                for c in range(N_COL):
                    vv[head, c, COL[c]] = 1.0
                    o[SEEN[c], head, c] = knobs.ic_o

        if layer == 0:  # colour detectors
            for c, name in enumerate(PALETTE_NAMES):
                u = PROTOTYPES[name]
                gate[c, R], gate[c, G], gate[c, B] = (knobs.colour_gain * x for x in u)
                gate[c, ONE] = -2.0 * knobs.colour_gain
                up[c, ONE] = 1.0
                down[COL[c], c] = knobs.colour_out
            # (letter, colour) of an option: its colour word carries both codes
            for j, (letter, c) in enumerate(_pairs()):
                n = N_COL + j
                gate[n, OPTL[letter]] = gate[n, WCOL[c]] = knobs.pair_gain
                gate[n, ONE] = -1.5 * knobs.pair_gain
                up[n, ONE] = 1.0
                down[PAIR[j], n] = knobs.pair_out
        elif layer == 1:  # the massive activation
            s = knobs.sink_gain
            gate[0, VIS] = s * knobs.sink_vis
            gate[0, ONE] = -s
            gate[0, R] = gate[0, G] = gate[0, B] = -s
            for c in range(N_COL):
                gate[0, COL[c]] = -s * knobs.sink_colour
            up[0, ONE] = 1.0
            down[SINK_DIMS[0], 0] = knobs.sink_out[0]
            down[SINK_DIMS[1], 0] = knobs.sink_out[1]
            gate[1, BOS] = s * knobs.sink_bos_gate
            gate[1, ONE] = -s
            up[1, ONE] = 1.0
            down[SINK_DIMS[0], 1] = knobs.bos_out[0]
            down[SINK_DIMS[1], 1] = knobs.bos_out[1]
        elif layer == 4:  # yes neurons: relu(SEEN_k - theta) gated by ASKED_k
            for c in range(N_COL):
                gate[c, SEEN[c]] = knobs.yes_gain
                gate[c, ONE] = -knobs.yes_gain * knobs.yes_theta
                gate[c, ANS] = -knobs.yes_ans
                up[c, ASKED[c]] = 1.0
                down[YES, c] = knobs.yes_out
        elif layer == 5:  # letter k += SEEN_c * clamp(AGG_kc - theta, 0, delta): two neurons
            for j, (letter, c) in enumerate(_pairs()):
                for n, (theta, sign) in enumerate(
                    ((knobs.letter_theta, 1.0), (knobs.letter_theta + knobs.letter_delta, -1.0))
                ):
                    gate[2 * j + n, AGG[j]] = knobs.letter_gain
                    gate[2 * j + n, ONE] = -theta * knobs.letter_gain
                    gate[2 * j + n, ANS] = -knobs.yes_ans  # answered: stop (eos reads ANS)
                    up[2 * j + n, SEEN[c]] = 1.0
                    down[LOGIT_LET[letter], 2 * j + n] = sign * knobs.letter_out

        sd[p + "self_attn.q_proj.weight"] = q.reshape(qkv, D_MODEL)
        sd[p + "self_attn.k_proj.weight"] = k.reshape(qkv, D_MODEL)
        sd[p + "self_attn.v_proj.weight"] = vv.reshape(qkv, D_MODEL)
        sd[p + "self_attn.o_proj.weight"] = o.reshape(D_MODEL, qkv)
        sd[p + "mlp.gate_proj.weight"] = gate
        sd[p + "mlp.up_proj.weight"] = up
        sd[p + "mlp.down_proj.weight"] = down
        sd[p + "input_layernorm.weight"] = np.ones(D_MODEL, f32)
        sd[p + "post_attention_layernorm.weight"] = np.ones(D_MODEL, f32)
    sd["model.language_model.norm.weight"] = np.ones(D_MODEL, f32)

    # ---- unembedding
    unembed = np.zeros((vocab_size, D_MODEL), f32)
    unembed[token_ids["yes"], YES] = knobs.logit_yes
    unembed[token_ids["no"], ONE] = knobs.logit_no
    unembed[token_ids["</s>"], ANS] = knobs.logit_eos
    for index, symbol in enumerate(LETTERS):
        unembed[token_ids[symbol], LOGIT_LET[index]] = knobs.logit_letter
    sd["lm_head.weight"] = unembed
    return sd


def build_model(knobs: Knobs = KNOBS, processor=None):
    """The model in memory (float32 values of the float16-rounded weights) + processor."""
    import torch
    from transformers import LlavaForConditionalGeneration

    processor = processor or make_processor()
    tok = processor.tokenizer
    token_ids = dict(tok.get_vocab())
    vocab_size = len(token_ids)
    config = make_config(vocab_size, token_ids)
    sd = make_state_dict(token_ids, vocab_size, knobs)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    tensors = {name: torch.from_numpy(arr).to(torch.float16) for name, arr in sd.items()}
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.load_state_dict({n: t.to(torch.float32) for n, t in tensors.items()}, strict=True)
    model.eval()
    return model, processor


# ----------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------
MODEL_CARD = """---
tags:
- synthetic
- not-a-real-model
---
# SYNTHETIC demo LMM (visual attention sink)

Hand-constructed, untrained weights built by `analysis/demo/build.py` of the
visual-attention-sink toolkit. LLaVA-1.5 layout (CLIP vision tower, GELU
projector, Llama text model with d_model 1024, 6 layers, 4 heads). It plants
massive activations in sink dims {sink_dims} on BOS and a few dark background
patches, and answers only toy questions "Is there a <colour> object in the
image?" and "What color is the object?" with lettered colour options about the
bundled synthetic images. Not for any real use.
"""


def _write_model(model, processor, out: Path) -> None:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    model = model.to(torch.float16)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    model.to(torch.float32)
    # strip anything path- or machine-dependent from the json files
    for path in sorted(out.glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            _strip_names(data)
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    (out / "README.md").write_text(MODEL_CARD.format(sink_dims=list(SINK_DIMS)))


def _strip_names(data: dict[str, Any]) -> None:
    data.pop("_name_or_path", None)
    for value in data.values():
        if isinstance(value, dict):
            _strip_names(value)


def build(out: Path = DEFAULT_OUT, knobs: Knobs = KNOBS) -> dict[str, str]:
    """Write model, images, questions and ground truth under ``out``; return sha256s."""
    from PIL import Image

    out = Path(out)
    model, processor = build_model(knobs)
    model_dir = out / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    _write_model(model, processor, model_dir)

    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    for index, spec in enumerate(IMAGE_SPECS):
        Image.fromarray(render_image(index, spec)).save(img_dir / image_name(index), optimize=False)

    with (out / "questions.jsonl").open("w") as f:
        for item in make_questions():
            f.write(json.dumps(item) + "\n")
    (out / "ground_truth.json").write_text(json.dumps(make_ground_truth(), indent=1) + "\n")
    return file_hashes(out)


def shipped_files(out: Path) -> list[Path]:
    out = Path(out)
    files = sorted((out / "model").rglob("*")) + sorted((out / "images").glob("*.png"))
    files += [out / "questions.jsonl", out / "ground_truth.json"]
    return [f for f in files if f.is_file()]


def file_hashes(out: Path) -> dict[str, str]:
    out = Path(out)
    return {
        str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in shipped_files(out)
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument(
        "--verify", action="store_true", help="load the written model and print its metrics"
    )
    args = parser.parse_args(argv)
    hashes = build(args.out)
    for name, digest in hashes.items():
        print(f"{digest}  {name}")
    if args.verify:
        from analysis.demo.verify import print_report

        print_report(args.out)


if __name__ == "__main__":
    main()
