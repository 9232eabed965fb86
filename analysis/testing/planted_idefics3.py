"""The planted Idefics3 member of the zoo (see :mod:`analysis.testing.planted` for the recipe).

THIS IS NOT A TRAINED MODEL: every weight is written by hand.

The board of ``grid x grid`` flat cells is drawn at 16 pixels per cell. The
processor keeps that size (``size["longest_edge"]`` is the image's own) and
cuts it into :data:`TILES` x :data:`TILES` tiles of ``8 * grid`` pixels, the
vision tower's frame; the global image is the board squeezed to one frame. The
pixel shuffle (scale 2) makes one token of 2 x 2 patches of 4 pixels, so a
tile token covers a quarter of a cell (row ``r`` of the stitched tiles grid is
board row ``r // 2``) and a global-image token covers exactly one cell: every
cell is five visual tokens, all carrying the cell's colour.

The vision tower reads one pixel per patch (its bottom-right one) instead of
the patch mean, and the connector reads the top-left patch of each 2 x 2
group: in the global image that pixel lies 7 original pixels inside its cell,
beyond the reach of the LANCZOS downscale (3 output pixels = 6 original ones),
so the global tokens see the cell's exact colour too. The rest is Gemma 3's
SigLIP recipe (LayerNorms held linear with eps 1e4, the vision MLP as the
colour detectors, a constant channel from the conv bias) and the LLaMA text
model of LLaVA, unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from analysis.testing.planted import (
    DARK_B,
    DARK_W,
    DETECTOR_GAIN,
    OBJ,
    OBJECT,
    PATCH,
    SHADES,
    SINK,
    SINKF,
    VISION_WIDTH,
    YELLOW_B,
    YELLOW_W,
    _dark,
    _llama_text,
    _llama_weights,
    _Plan,
    _put,
    _unit_rgb,
    _visual_base,
    image_size,
)

if TYPE_CHECKING:
    from analysis.testing.planted import PlantedSpec

#: Tiles per side of the board (the processor's split).
TILES = 2
#: The connector's pixel shuffle.
SCALE = 2
#: Text tokens the processor writes around one image: a ``<fake_token_around_image>``
#: and a ``<row_r_col_c>`` per tile, then ``<fake>``, ``<global-img>``, ``<fake>``.
MARKUP_TOKENS = 2 * TILES * TILES + 3


def frame_size(spec: PlantedSpec) -> int:
    """Pixels per side of one tile (the vision tower's image size)."""
    return image_size(spec) // TILES


def build_idefics3(spec: PlantedSpec) -> tuple[Any, Any]:
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    from analysis.families.idefics3 import CHAT_TEMPLATE, idefics3_tokenizer

    plan = _Plan(spec)
    tok = idefics3_tokenizer()
    frame = frame_size(spec)
    vision = {
        "hidden_size": VISION_WIDTH,
        "intermediate_size": VISION_WIDTH,
        "num_hidden_layers": 1,
        "num_attention_heads": 1,
        "image_size": frame,
        "patch_size": PATCH,
        "layer_norm_eps": 1e4,  # every vision norm stays linear
    }
    config = Idefics3Config(
        text_config=_llama_text(plan, tok),
        vision_config=vision,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=SCALE,
        tie_word_embeddings=False,
    )
    model = Idefics3ForConditionalGeneration(config)
    rng = np.random.default_rng(spec.seed)
    sd = dict(model.state_dict())
    _llama_weights(plan, sd, tok, rng, text_prefix="text_model")
    _vision_weights(plan, sd, rng)
    model.load_state_dict(sd, strict=True)
    side = frame // PATCH // SCALE
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(
            size={"longest_edge": image_size(spec)},
            max_image_size={"longest_edge": frame},
            image_mean=[0.5] * 3,
            image_std=[0.5] * 3,
        ),
        tokenizer=tok,
        image_seq_len=side * side,
        chat_template=CHAT_TEMPLATE,
    )
    return model.eval(), processor


def _vision_weights(plan: _Plan, sd: dict[str, torch.Tensor], rng: np.random.Generator) -> None:
    """Vision tower: one pixel's colour and the detectors; connector: flags (and the mass)."""
    spec = plan.spec
    # Channels (u, -u): the colour of the patch's bottom-right pixel; (1, -1) from the
    # conv bias: a constant. Every channel set sums to 0, so the LayerNorms (weight 100,
    # eps 1e4) are ~identity.
    conv = np.zeros((VISION_WIDTH, 3, PATCH, PATCH))
    for c in range(3):
        conv[c, c, PATCH - 1, PATCH - 1] = 1.0
        conv[3 + c, c, PATCH - 1, PATCH - 1] = -1.0
    conv_bias = np.zeros(VISION_WIDTH)
    conv_bias[10], conv_bias[11] = 1.0, -1.0
    _put(sd, "embeddings.patch_embedding.weight", conv)
    _put(sd, "embeddings.patch_embedding.bias", conv_bias)
    for norm in ("layer_norm1", "layer_norm2"):
        _put(sd, f"encoder.layers.0.{norm}.weight", np.full(VISION_WIDTH, 100.0))
    _put(sd, "post_layernorm.weight", np.full(VISION_WIDTH, 100.0))
    # The vision MLP adds (dark, -dark, yellow, -yellow) flags of about 1 on channels 6-9.
    fc1 = np.zeros((VISION_WIDTH, VISION_WIDTH))
    fc1_b = np.zeros(VISION_WIDTH)
    fc1[0, :3], fc1_b[0] = DETECTOR_GAIN * DARK_W, DETECTOR_GAIN * DARK_B
    fc1[1, :3], fc1_b[1] = DETECTOR_GAIN * YELLOW_W, DETECTOR_GAIN * YELLOW_B
    dark_u, yellow_u = _unit_rgb(SHADES[SINK]), _unit_rgb(SHADES[OBJECT])
    dark_on = DETECTOR_GAIN * _dark(dark_u)
    yellow_on = DETECTOR_GAIN * float(YELLOW_W @ yellow_u + YELLOW_B)
    fc2 = np.zeros((VISION_WIDTH, VISION_WIDTH))
    fc2[6, 0], fc2[7, 0] = 1.0 / dark_on, -1.0 / dark_on
    fc2[8, 1], fc2[9, 1] = 1.0 / yellow_on, -1.0 / yellow_on
    _put(sd, "encoder.layers.0.mlp.fc1.weight", fc1)
    _put(sd, "encoder.layers.0.mlp.fc1.bias", fc1_b)
    _put(sd, "encoder.layers.0.mlp.fc2.weight", fc2)
    # Connector: the pixel shuffle concatenates the 2 x 2 patches of a token; the first
    # VISION_WIDTH inputs are its top-left patch, the only one read.
    proj = np.zeros((spec.d_model, SCALE * SCALE * VISION_WIDTH))
    proj[:, 10] = _visual_base(plan, rng)
    proj[SINKF, 6] = 1.0
    proj[OBJ, 8] = 1.0
    if spec.source == "projector" and spec.visual_sinks:
        proj[list(spec.sink_dims), 6] = plan.massive
    _put(sd, "connector.modality_projection.proj.weight", proj)
