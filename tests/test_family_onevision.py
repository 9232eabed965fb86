"""LLaVA-OneVision: config checks, the image-only processor, anyres-max geometry, the contract.

Ground truth: HF's own processor token counts and HF's eager logits on the same
tiny checkpoint, the uncached decoding loop, and the planted zoo member.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import make_image
from contracts.families import PARITY_ATOL, STEPS, FamilyContract, assert_same, logits
from contracts.families import cached as cached_run
from PIL import Image
from transformers import AutoModelForImageTextToText, LlavaOnevisionConfig
from transformers.models.llava_onevision.modeling_llava_onevision import (
    get_anyres_image_grid_shape,
    unpad_image,
)
from typer.testing import CliRunner

from analysis.ablation import KnockOut
from analysis.dims import discover_dims
from analysis.errors import VsinkError
from analysis.families import COMMON_CONFIG_KEYS, UnsupportedConfigError, for_architecture, get
from analysis.families.llava_onevision import ImageOnlyOnevisionProcessor, ProcessorFolderError
from analysis.generation import reference_greedy
from analysis.heads import score_heads
from analysis.loading import LoadedModel, load_model
from analysis.sinks import find_sinks, label_scores
from analysis.testing.planted import (
    PROMPT,
    TAU,
    build_planted,
    image_paths,
    load_spec,
    sink_truth,
    zoo_spec,
)
from analysis.tiny import TinySpec, build_tiny_model
from analysis.tokens import ModelInputs, build_batch
from analysis.var import VarConfig, VarIntervention

FAMILY = "llava_onevision"
# (height, width): square, 2:1, 1:2, 3:1, 1:3, off-grid, and two large enough for the
# 3x3 pinpoint, whose 12x12 grid exceeds the tiny model's anyres_max_4 and is downscaled.
SIZES = [(28, 28), (30, 60), (60, 30), (28, 84), (90, 30), (33, 77), (100, 100), (200, 190)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(FAMILY, tmp_path_factory.mktemp("onevision") / "tiny")


@pytest.fixture(scope="module")
def model(folder: Path) -> LoadedModel:
    return load_model(folder, device="cpu")


def _prompt(model: LoadedModel, n_images: int = 1, text: str = "what color is the object ?"):
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
    messages = [{"role": "user", "content": content}]
    return model.processor.apply_chat_template(messages, add_generation_prompt=True)


def _two(model: LoadedModel) -> ModelInputs:
    """A padded batch: one single-image sample and one two-image sample."""
    return build_batch(
        model,
        [
            (make_image(30, 60, seed=1), "is there a red object in the image ?"),
            ([make_image(60, 20, seed=2), make_image(40, 40, seed=3)], "describe"),
        ],
    )


def _first_visual_sinks(inputs: ModelInputs, length: int | None = None) -> torch.Tensor:
    """The first visual token of each sample as a sink (random weights have none; no BOS)."""
    sinks = torch.zeros(inputs.input_ids.shape, dtype=torch.bool)
    for index, layout in enumerate(inputs.layouts):
        sinks[index, int(layout.geometry.positions[0])] = True
    if length is not None:
        sinks = torch.nn.functional.pad(sinks, (0, length - sinks.shape[1]))
    return sinks


# ----------------------------------------------------------------------------- the contract


class TestLlavaOnevision(FamilyContract):
    """HF parity, edits, geometry == processor counts, KV cache, config keys, padding."""

    family = FAMILY
    spec = TinySpec()
    image_sizes = tuple(SIZES)
    bad_values = (
        ("vision_feature_select_strategy", "default", "only 'full' is laid out"),
        ("vision_aspect_ratio", "pad", "not of the form 'anyres_max_N'"),
        (
            "image_grid_pinpoints",
            [[28, 28], [28, 50]],
            r"\[\[28, 50\]\] are not .* multiples of the tile size 28",
        ),
        ("image_grid_pinpoints", [[28, 28], [56]], r"\[\[56\]\] are not \(height, width\)"),
        ("image_grid_pinpoints", [], "no image_grid_pinpoints"),
    )


# ----------------------------------------------------------------------------- config


def test_registered_by_architecture():
    family = for_architecture("LlavaOnevisionForConditionalGeneration")
    assert family is get(FAMILY)
    assert family.base_llm == "qwen2"


def test_a_non_siglip_tower_is_refused(model):
    config = LlavaOnevisionConfig.from_dict(
        {**model.config.to_dict(), "vision_config": {"model_type": "clip_vision_model"}}
    )
    with pytest.raises(UnsupportedConfigError, match="assumes SigLIP") as info:
        get(FAMILY).check_config(config)
    assert "\n" not in str(info.value)


def test_config_keys_are_the_hf_config_classes():
    """The keys it understands are exactly LlavaOnevisionConfig's (beyond the common ones)."""
    assert get(FAMILY).config_keys == set(LlavaOnevisionConfig().to_dict()) - COMMON_CONFIG_KEYS


# ----------------------------------------------------------------------------- processor


def test_processor_is_image_only_and_saves_as_hf(model, folder):
    processor = model.processor
    assert isinstance(processor, ImageOnlyOnevisionProcessor)
    assert type(processor.image_processor).__name__ == "LlavaOnevisionImageProcessorPil"
    assert not hasattr(processor, "video_processor")
    assert processor.get_attributes() == ["image_processor", "tokenizer"]
    saved = json.loads((folder / "processor_config.json").read_text())
    assert saved["processor_class"] == "LlavaOnevisionProcessor"
    assert saved["num_image_tokens"] == 16


def test_a_checkpoint_with_a_video_processor_loads_without_it(folder, tmp_path):
    """HF's own folders name a video processor (it needs torchvision): it is never built."""
    copy = Path(shutil.copytree(folder, tmp_path / "copy"))
    video = {"video_processor_type": "LlavaOnevisionVideoProcessor", "size": {"height": 28}}
    settings = json.loads((copy / "processor_config.json").read_text())
    (copy / "processor_config.json").write_text(json.dumps({**settings, "video_processor": video}))
    (copy / "video_preprocessor_config.json").write_text(json.dumps(video))
    loaded = load_model(copy, device="cpu")
    assert isinstance(loaded.processor, ImageOnlyOnevisionProcessor)
    assert not hasattr(loaded.processor, "video_processor")
    inputs = build_batch(loaded, [(make_image(30, 60), "describe")])
    assert inputs.layouts[0].geometry.n_visual == 16 + 6 * 13


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        (("tokenizer.json", "tokenizer_config.json"), "has no tokenizer"),
        (("processor_config.json",), "has no processor_config.json"),
        ("num_image_tokens", "does not give num_image_tokens"),
        ("image_processor", "has no image processor settings"),
    ],
)
def test_a_missing_processor_piece_is_one_clear_line(folder, tmp_path, remove, message):
    copy = Path(shutil.copytree(folder, tmp_path / "copy"))
    if isinstance(remove, tuple):
        for name in remove:
            (copy / name).unlink()
    else:
        settings = json.loads((copy / "processor_config.json").read_text())
        del settings[remove]
        (copy / "processor_config.json").write_text(json.dumps(settings))
    with pytest.raises(ProcessorFolderError, match=message) as info:
        load_model(copy, device="cpu")
    assert isinstance(info.value, VsinkError)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_geometry_equals_the_processors_counts(model, size):
    """Tokens per image: the family's geometry == HF's processor == what the model accepts."""
    height, width = size
    image = make_image(height, width, seed=height + width)
    encoded = model.processor(images=[[image]], text=[_prompt(model)], return_tensors="pt")
    n_processor = int((encoded["input_ids"] == model.image_token_id).sum())
    grids, tokens = get(FAMILY).image_tokens(model, 0, size)
    assert len(tokens) == n_processor
    counted = model.processor._get_num_multimodal_tokens(image_sizes=[size])
    assert counted["num_image_tokens"] == [n_processor]
    base, hires = grids
    side = model.config.vision_config.image_size // model.config.vision_config.patch_size
    assert (base.rows, base.cols) == (side, side)
    assert n_processor == side * side + hires.rows * (hires.cols + 1)
    # Unpadded grid before the anyres-max limit: downscaled exactly when it is too large.
    tiles = get_anyres_image_grid_shape(
        size, model.config.image_grid_pinpoints, model.config.vision_config.image_size
    )
    rows, cols = unpad_image(torch.zeros(1, tiles[0] * side, tiles[1] * side), size).shape[1:]
    limit = int(model.config.vision_aspect_ratio.removeprefix("anyres_max_")) * side * side
    if rows * cols > 1.1**2 * limit:
        assert hires.rows * hires.cols < rows * cols
    else:
        assert (hires.rows, hires.cols) == (rows, cols)
    # The model itself refuses features that do not match the placeholders.
    inputs = build_batch(model, [(image, "what color is the object ?")])
    assert inputs.layouts[0].geometry.n_visual == n_processor
    logits(model, inputs)


def test_downscaled_grid_matches_hf_interpolation(model):
    """100x100: the 3x3 tiles' 12x12 grid is 2.25x anyres_max_4, so HF shrinks it to 8x8."""
    grids, tokens = get(FAMILY).image_tokens(model, 0, (100, 100))
    assert (grids[1].rows, grids[1].cols) == (8, 8)
    assert sum(sep for *_, sep in tokens) == 8  # one image_newline per row


def test_multi_image_samples_get_one_padded_tile_and_one_newline(model):
    inputs = _two(model)
    geometry = inputs.layouts[1].geometry
    side = model.config.vision_config.image_size // model.config.vision_config.patch_size
    assert geometry.n_visual == 2 * (side * side + 1)
    for image in (0, 1):
        rows = geometry.image == image
        assert int(geometry.separator[rows].sum()) == 1
        assert bool(geometry.separator[rows][-1])  # the newline closes the image
        assert [g.name for g in geometry.grids if g.image == image] == ["base"]
    # pad_to_square: a 60x20 image sits in the middle of a 60x60 square.
    assert geometry.grid(0).extent == (-20.0, 0.0, 40.0, 60.0)
    assert inputs.tensors["batch_num_images"].tolist() == [1, 2]


# ----------------------------------------------------------------------------- multi-image batches
# The contract's batches hold one image per sample; these mix a tiled single image
# with a two-image sample (square-padded tiles, batch_num_images = [1, 2]).


def test_hf_parity_multi_image(model, folder):
    reference = AutoModelForImageTextToText.from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float32
    ).eval()
    inputs = _two(model)
    with torch.no_grad():
        expected = reference(**inputs.tensors).logits
    actual = logits(model, inputs)
    mask = inputs.tensors["attention_mask"].bool()
    torch.testing.assert_close(actual[mask], expected[mask], atol=PARITY_ATOL, rtol=0)


def test_multi_image_batch_with_padding_equals_single(model):
    inputs = _two(model)
    assert not bool(inputs.tensors["attention_mask"].bool().all()), "the batch must be padded"
    batch = logits(model, inputs)
    for index in range(inputs.batch_size):
        alone = inputs.select(index)
        n = alone.input_ids.shape[1]
        torch.testing.assert_close(
            logits(model, alone)[0], batch[index, -n:], atol=PARITY_ATOL, rtol=0
        )


def test_multi_image_cached_generation_equals_uncached_loop(model):
    inputs = _two(model)
    assert_same(cached_run(model, inputs), reference_greedy(model, inputs, max_new_tokens=STEPS))


def test_var_in_forward_and_generation(model):
    inputs = _two(model)
    config = VarConfig(p=1.0, rho=0.0, min_image_attention=0.0, layers=tuple(range(model.n_layers)))
    var = VarIntervention(
        model, inputs, dims=None, sinks=_first_visual_sinks(inputs), config=config
    )
    moved = logits(model, inputs, var.fwd_hooks()) - logits(model, inputs)
    assert moved[inputs.stack("attention_mask")].abs().max() > 1e-3

    var = VarIntervention(
        model, inputs, dims=None, sinks=_first_visual_sinks(inputs), config=config
    )
    run = cached_run(model, inputs, var.fwd_hooks())
    assert sum(var.record().decode_changed) > 0, "VAR must act on the decoding rows"

    def make(ext: ModelInputs):
        sinks = _first_visual_sinks(inputs, ext.input_ids.shape[1])
        return VarIntervention(model, ext, dims=None, sinks=sinks, config=config).fwd_hooks()

    assert_same(run, reference_greedy(model, inputs, max_new_tokens=STEPS, make_hooks=make))


@pytest.mark.parametrize("mode", ["pre", "post"])
def test_knockout_in_forward_and_generation(model, mode):
    inputs = _two(model)
    knock = KnockOut(model, inputs, target="visual", mode=mode)
    moved = logits(model, inputs, knock.fwd_hooks()) - logits(model, inputs)
    assert moved[inputs.stack("attention_mask")].abs().max() > 1e-3
    knock = KnockOut(model, inputs, target="visual", mode=mode)
    run = cached_run(model, inputs, knock.fwd_hooks())
    reference = reference_greedy(
        model,
        inputs,
        max_new_tokens=STEPS,
        make_hooks=lambda ext: KnockOut(model, ext, target="visual", mode=mode).fwd_hooks(),
    )
    assert_same(run, reference)


def test_vsink_info(folder):
    from analysis.cli import app

    result = CliRunner().invoke(app, ["info", str(folder)])
    assert result.exit_code == 0, result.output
    assert FAMILY in result.output
    assert "LlavaOnevisionForConditionalGeneration" in result.output


# ----------------------------------------------------------------------------- planted


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory):
    spec = zoo_spec("llava_onevision_base")
    path = build_planted(spec, tmp_path_factory.mktemp("planted_onevision") / spec.name)
    spec, cells = load_spec(path)
    model = load_model(path / "model", device="cpu")
    images = [Image.open(p).convert("RGB") for p in image_paths(path)]
    return spec, cells, model, build_batch(model, [(image, PROMPT) for image in images])


def test_planted_dims_sinks_and_heads_are_recovered(planted):
    spec, cells, model, inputs = planted
    assert model.family.name == FAMILY
    assert discover_dims(model, inputs, show_progress=False).dims == sorted(spec.sink_dims)
    result = find_sinks(model, inputs, dims=sorted(spec.sink_dims), tau=TAU)
    truth = sink_truth(spec, cells, inputs)
    predicted = result.is_sink()
    for layer in range(spec.n_layers):
        scores = label_scores(predicted[:, layer].flatten(), truth[:, layer].flatten())
        assert scores["f1"] == 1.0, (layer, scores)
    # Both grids carry the board: base + anyres tile, one newline per row (not a sink).
    visual = result.counts()["visual"][:, spec.first_sink_layer :]
    assert visual.unique().tolist() == [2 * spec.n_visual_sinks]
    heads = score_heads(model, inputs, dims=sorted(spec.sink_dims), show_progress=False)
    assert heads.image_centric_heads() == sorted(spec.image_centric_heads)


def test_planted_spec_is_validated():
    spec = zoo_spec("llava_onevision_base")
    assert spec.family == FAMILY
    with pytest.raises(ValueError, match="family must be one of"):
        replace(spec, family="llava_onevision_video")
