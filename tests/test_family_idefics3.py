"""Idefics3 (SmolVLM v1 lineage): config keys, processor, tile geometry, bridge, interventions.

Geometry is checked against the processor's own output on many aspect ratios
and tile counts: the number of ``<image>`` tokens, and the order of the
``<row_r_col_c>`` markers and the ``<global-img>`` tag against the tile of every
visual token. The planted member of the zoo (2 x 2 tiles and a global image)
has its sink dims, sink tokens and image-centric heads recovered.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image
from contracts.families import STEPS, FamilyContract, assert_same, cached
from PIL import Image
from typer.testing import CliRunner

from analysis.ablation import KnockOut
from analysis.capture import forward
from analysis.cli import app
from analysis.dims import discover_dims, registry_entry
from analysis.families import COMMON_CONFIG_KEYS, UnsupportedConfigError, get
from analysis.families.idefics3 import CHAT_TEMPLATE, tile_counts, tokens_per_side
from analysis.generation import reference_greedy
from analysis.heads import score_heads
from analysis.loading import LoadedModel, ModelLoadError, load_model
from analysis.sinks import find_sinks, label_scores
from analysis.testing.planted import (
    PROMPT,
    TAU,
    build_planted,
    image_paths,
    load_spec,
    sink_truth,
    visual_copies,
    zoo_spec,
)
from analysis.tiny import build_tiny_model
from analysis.tokens import ModelInputs, build_batch, build_inputs
from analysis.var import VarConfig, VarIntervention, run_with_var

FAMILY = get("idefics3")
ATOL = 1e-5
STRONG = VarConfig(p=1.0, rho=0.0, min_image_attention=0.0)
# (height, width): square, 2:1, 1:2, 3:1, 1:3, odd sizes, tiny and large images.
SIZES = [(30, 30), (30, 60), (60, 30), (20, 60), (60, 20), (29, 57), (57, 29), (5, 200), (300, 100)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model("idefics3", tmp_path_factory.mktemp("idefics3") / "tiny")


@pytest.fixture(scope="module")
def model(folder: Path) -> LoadedModel:
    return load_model(folder, device="cpu")


def _two(model: LoadedModel) -> ModelInputs:
    """Two samples of different lengths and tile counts (left padding, padded frames)."""
    return build_batch(
        model,
        [
            (make_image(30, 60, seed=1), "is there a red object in the image ?"),
            (make_image(30, 30, seed=2), "describe"),
        ],
    )


def _with_processor(model: LoadedModel, *, tiles: int | None, split: bool = True) -> LoadedModel:
    """The model with another image processor: longest edge ``tiles`` frames, or no split."""
    from transformers import Idefics3ImageProcessorPil, Idefics3Processor

    frame = int(model.config.vision_config.image_size)
    size = {"longest_edge": (tiles or 1) * frame}
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(
            size=size, max_image_size={"longest_edge": frame}, do_image_splitting=split
        ),
        tokenizer=model.tokenizer,
        image_seq_len=tokens_per_side(model.config) ** 2,
        chat_template=CHAT_TEMPLATE,
    )
    return replace(model, processor=processor)


class TestIdefics3(FamilyContract):
    """The family contract; the tiny processor splits these sizes into 1-3 x 3 tiles."""

    family = "idefics3"
    image_sizes = ((28, 28), (28, 56), (56, 28), (20, 60), (60, 20), (40, 90))
    bad_values = (
        ("scale_factor", 3, "not a multiple of scale_factor 3"),
        ("scale_factor", 0, "not a positive integer"),
    )


# ----------------------------------------------------------------------------- config


def test_config_keys_are_the_hf_config_keys():
    from transformers import Idefics3Config

    keys = set(Idefics3Config().to_dict())
    assert keys - COMMON_CONFIG_KEYS == set(FAMILY.config_keys)


@pytest.mark.parametrize(
    ("vision", "scale", "side"),
    [
        ({"image_size": 364, "patch_size": 14}, 2, 13),  # Idefics3-8B: 169 tokens a frame
        ({"image_size": 384, "patch_size": 14}, 3, 9),  # SmolVLM: 27 patches, 81 tokens
        ({"image_size": 512, "patch_size": 16}, 4, 8),  # SmolVLM-256M/500M: 64 tokens
    ],
)
def test_published_geometries_are_accepted(vision, scale, side):
    from transformers import Idefics3Config

    config = Idefics3Config(vision_config=vision, scale_factor=scale)
    FAMILY.check_config(config)
    assert tokens_per_side(config) == side


def test_hfs_default_config_is_refused():
    """224 px / 32 px = 7 patches a side: the pixel shuffle by 2 cannot reshape them."""
    from transformers import Idefics3Config

    with pytest.raises(UnsupportedConfigError, match="7 patches per side"):
        FAMILY.check_config(Idefics3Config())


def test_check_config_refuses_unknown_keys_and_values_it_cannot_lay_out(model):
    config = model.config
    FAMILY.check_config(config)
    unknown = type(config).from_dict({**config.to_dict(), "tile_merge": "pool"})
    with pytest.raises(UnsupportedConfigError, match="tile_merge") as info:
        FAMILY.check_config(unknown)
    assert "\n" not in str(info.value)
    FAMILY.check_config(unknown, allow_unknown=True)
    for change, message in [
        ({"scale_factor": 3}, "not a multiple of scale_factor 3"),
        ({"vision_config": {**config.vision_config.to_dict(), "image_size": 21}}, "multiple"),
        ({"text_config": {"model_type": "mistral"}}, "only a LLaMA text model"),
    ]:
        bad = type(config).from_dict({**config.to_dict(), **change})
        with pytest.raises(UnsupportedConfigError, match=message):
            FAMILY.check_config(bad)


def test_load_model_refuses_an_unknown_key_before_loading(folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "tile_merge": "pool"}))
    (copy / "model.safetensors").write_bytes(b"not weights")  # never read
    with pytest.raises(UnsupportedConfigError, match="tile_merge"):
        load_model(copy, device="cpu")


# ----------------------------------------------------------------------------- processor


def test_processor_loads_without_torchvision(model):
    from transformers import Idefics3ImageProcessorPil, Idefics3Processor

    assert isinstance(model.processor, Idefics3Processor)
    assert isinstance(model.processor.image_processor, Idefics3ImageProcessorPil)
    assert model.family is FAMILY
    assert model.image_token_id == model.tokenizer.convert_tokens_to_ids("<image>")


def test_processor_from_pieces_equals_auto_processor(model, folder, monkeypatch):
    """Where AutoProcessor wants torchvision, the pieces build the same processor."""
    import transformers

    def needs_torchvision(*args, **kwargs):
        raise ImportError("this processor requires the torchvision library")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", needs_torchvision)
    built = FAMILY.load_processor(str(folder), local_files_only=True)
    prompt = "User:<image>what color ?<end_of_utterance>\nAssistant:"
    image = make_image(30, 60)
    ours = built(images=[[image]], text=[prompt], return_tensors="pt")
    auto = model.processor(images=[[image]], text=[prompt], return_tensors="pt")
    assert set(ours) == set(auto)
    for key in auto:
        assert torch.equal(ours[key], auto[key]), key
    assert built.chat_template == model.processor.chat_template


def test_a_folder_missing_a_piece_is_a_one_line_error(folder, tmp_path, monkeypatch):
    import transformers

    broken = tmp_path / "no_template"
    shutil.copytree(folder, broken)
    (broken / "chat_template.jinja").unlink()
    with pytest.raises(ModelLoadError, match="no chat template") as info:
        FAMILY.load_processor(str(broken), local_files_only=True)
    assert "\n" not in str(info.value)

    def needs_torchvision(*args, **kwargs):
        raise ImportError("requires torchvision")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", needs_torchvision)
    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(folder, no_tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_tokenizer / name).unlink()
    with pytest.raises(ModelLoadError, match="cannot load the tokenizer"):
        FAMILY.load_processor(str(no_tokenizer), local_files_only=True)


def test_a_processor_that_disagrees_with_the_config_is_refused(model):
    from transformers import Idefics3ImageProcessorPil

    processor = model.processor
    wrong_count = replace(model, processor=processor).processor
    seq = processor.image_seq_len
    try:
        wrong_count.image_seq_len = seq + 1
        with pytest.raises(UnsupportedConfigError, match="image_seq_len"):
            FAMILY.check_processor(wrong_count, model.config)
    finally:
        wrong_count.image_seq_len = seq
    other = _with_processor(model, tiles=2).processor
    other.image_processor = Idefics3ImageProcessorPil(max_image_size={"longest_edge": 14})
    with pytest.raises(UnsupportedConfigError, match="tile size"):
        FAMILY.check_processor(other, model.config)


# ----------------------------------------------------------------------------- geometry


def _marker_tiles(model: LoadedModel, ids: torch.Tensor) -> list[tuple[int, int] | None]:
    """Per visual token in sequence order: the (row, col) of the tile marker before it
    (1-based, as the processor writes it), or None after ``<global-img>``."""
    tokens = model.tokenizer.convert_ids_to_tokens(ids.tolist())
    out: list[tuple[int, int] | None] = []
    current: tuple[int, int] | None = None
    for token in tokens:
        if token.startswith("<row_"):
            _, r, _, c = token.strip("<>").split("_")
            current = (int(r), int(c))
        elif token == "<global-img>":
            current = None
        elif token == "<image>":
            out.append(current)
    return out


@pytest.mark.parametrize(("tiles", "split"), [(2, True), (3, True), (4, True), (3, False)])
def test_geometry_equals_the_processors_tokens(model, tiles, split):
    variant = _with_processor(model, tiles=tiles, split=split)
    side = tokens_per_side(model.config)
    seen = set()
    for height, width in SIZES:
        inputs = build_inputs(variant, make_image(height, width), "what color ?")
        layout = inputs.layouts[0]
        geometry = layout.geometry
        ids = layout.input_ids
        # Every <image> token is visual, nothing else is (markers and tags are text).
        assert torch.equal(layout.visual, ids == model.image_token_id)
        rows, cols = tile_counts(height, width, variant.processor.image_processor)
        seen.add((rows, cols))
        assert geometry.n_visual == (rows * cols + 1) * side * side
        markers = _marker_tiles(model, ids)
        for index, marker in enumerate(markers):
            tile, r, c = (
                int(geometry.tile[index]),
                int(geometry.row[index]),
                int(geometry.col[index]),
            )
            if marker is None:
                assert tile == 1
                assert 0 <= r < side
                assert 0 <= c < side
            else:
                assert tile == 0
                assert (r // side + 1, c // side + 1) == marker
        # Within a tile, tokens run row-major over its s x s block.
        tile_tokens = (geometry.tile == 0).nonzero().flatten()
        if len(tile_tokens):
            first = tile_tokens[: side * side]
            assert geometry.row[first].tolist() == [r for r in range(side) for _ in range(side)]
            assert geometry.col[first].tolist() == [c for _ in range(side) for c in range(side)]
        default = geometry.grid()
        assert default.name == ("tiles" if rows else "global")
        assert (default.rows, default.cols) == ((rows or 1) * side, (cols or 1) * side)
        assert default.extent == (0.0, 0.0, float(width), float(height))
        assert not torch.isnan(geometry.to_grid(torch.ones(geometry.n_visual))).any()
    if split:
        assert len(seen) >= 3, seen  # several tile counts per processor
    else:
        assert seen == {(0, 0)}


def test_tile_counts_follow_the_processors_rows_and_cols(model):
    image_processor = model.processor.image_processor
    rng = np.random.default_rng(0)
    sizes = SIZES + [tuple(int(v) for v in rng.integers(1, 400, 2)) for _ in range(40)]
    images = [make_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    out = image_processor(images=[[im] for im in images], return_row_col_info=True)
    expected = [(r[0], c[0]) for r, c in zip(out["rows"], out["cols"], strict=True)]
    assert [tile_counts(h, w, image_processor) for h, w in sizes] == expected


def test_two_images_in_one_prompt(model):
    prompt = "User:<image><image>what color ?<end_of_utterance>\nAssistant:"
    inputs = build_batch(model, [([make_image(30, 60), make_image(60, 30, seed=3)], prompt)])
    geometry = inputs.layouts[0].geometry
    side = tokens_per_side(model.config)
    per_image = [int((geometry.image == i).sum()) for i in (0, 1)]
    image_processor = model.processor.image_processor
    rows_cols = [tile_counts(30, 60, image_processor), tile_counts(60, 30, image_processor)]
    assert rows_cols == [(2, 3), (3, 2)]
    assert per_image == [(r * c + 1) * side * side for r, c in rows_cols]
    assert [g.name for g in geometry.grids] == ["tiles", "global", "tiles", "global"]


# ----------------------------------------------------------------------------- the bridge


def test_bridge_logits_equal_hf_and_edits_take_effect(model):
    inputs = _two(model)
    with torch.no_grad():
        hf = model.hf_model(**inputs.tensors).logits
    bridged = forward(model, inputs)
    torch.testing.assert_close(bridged, hf, atol=ATOL, rtol=0)

    def uniform(pattern, hook):
        return torch.ones_like(pattern) / pattern.shape[-1]

    def shifted(resid, hook):
        return resid + 1.0

    for name, hook in (
        ("blocks.1.attn.hook_pattern", uniform),
        ("blocks.1.hook_resid_post", shifted),
    ):
        edited = forward(model, inputs, [(name, hook)])
        assert float((edited - hf).abs().max()) > 1e-3, name


def test_batch_with_padding_equals_each_sample_alone(model):
    inputs = _two(model)
    # 2:1 image: 2 x 3 tiles + global; square: 3 x 3 + global, so three zero frames pad row 0.
    frames = inputs.tensors["pixel_values"].flatten(2)
    assert frames.shape[1] == 10
    assert (frames == 0).all(-1).sum(-1).tolist() == [3, 0]
    assert not bool(inputs.tensors["attention_mask"].bool().all())
    batch = forward(model, inputs)
    for index in range(inputs.batch_size):
        alone = inputs.select(index)
        start = inputs.layouts[index].first_position
        torch.testing.assert_close(
            forward(model, alone)[0], batch[index, start:], atol=ATOL, rtol=0
        )


# ----------------------------------------------------------------------------- interventions


def _planted_sinks(inputs: ModelInputs) -> torch.Tensor:
    """BOS and the first visual token of each sample (random weights have no sinks)."""
    sinks = torch.zeros(inputs.input_ids.shape, dtype=torch.bool)
    for index, layout in enumerate(inputs.layouts):
        if layout.bos_position is not None:
            sinks[index, layout.bos_position] = True
        sinks[index, int(layout.geometry.positions[0])] = True
    return sinks


def test_var_and_knockout_change_the_forward(model):
    inputs = _two(model)
    baseline = forward(model, inputs)
    config = replace(STRONG, layers=tuple(range(model.n_layers)))
    logits, record = run_with_var(
        model, inputs, dims=None, config=config, sinks=_planted_sinks(inputs)
    )
    assert sum(record.prefill_changed) > 0
    assert float((logits - baseline).abs().max()) > 1e-3
    knock = KnockOut(model, inputs, target="visual")
    knocked = forward(model, inputs, knock.fwd_hooks())
    assert float((knocked - baseline).abs().max()) > 1e-3


def test_generation_kv_cache_var_and_knockout_equal_the_uncached_loop(model):
    """KV-cache decoding equals the uncached loop plain, under VAR and under a knock-out."""
    inputs = _two(model)
    assert_same(cached(model, inputs), reference_greedy(model, inputs, max_new_tokens=STEPS))
    sinks = _planted_sinks(inputs)
    config = replace(STRONG, layers=tuple(range(model.n_layers)))
    var = VarIntervention(model, inputs, dims=None, sinks=sinks, config=config)
    with_var = cached(model, inputs, var.fwd_hooks())
    assert sum(var.record().decode_changed) > 0

    def var_hooks(extended: ModelInputs):
        # The prompt's sinks; generated tokens are never sinks here.
        grown = torch.nn.functional.pad(sinks, (0, extended.input_ids.shape[1] - sinks.shape[1]))
        return VarIntervention(model, extended, dims=None, sinks=grown, config=config).fwd_hooks()

    reference = reference_greedy(model, inputs, max_new_tokens=STEPS, make_hooks=var_hooks)
    assert_same(with_var, reference)
    knock = KnockOut(model, inputs, target="visual")
    knocked = cached(model, inputs, knock.fwd_hooks())
    reference = reference_greedy(
        model,
        inputs,
        max_new_tokens=STEPS,
        make_hooks=lambda ext: KnockOut(model, ext, target="visual").fwd_hooks(),
    )
    assert_same(knocked, reference)
    plain = cached(model, inputs)
    for changed in (with_var, knocked):
        moved = max(
            (a - b).abs().max().item()
            for a, b in zip(changed.step_logits, plain.step_logits, strict=True)
        )
        assert moved > 1e-3, (
            "the hooks must change the decoding for the comparison to mean anything"
        )


# ----------------------------------------------------------------------------- CLI


def test_vsink_info(folder, tmp_path):
    out = tmp_path / "info.json"
    result = CliRunner().invoke(app, ["info", str(folder), "--json", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    assert summary["family"] == "idefics3"
    assert summary["registry"] is None  # no published sink dims: discovery
    side = 2  # 28 px frames, 7 px patches, pixel shuffle 2
    # The default 336 x 336 image: longest edge 84 -> 3 x 3 tiles + the global image.
    assert summary["layout"]["n_visual"] == (9 + 1) * side * side
    assert [(g["name"], g["rows"], g["cols"]) for g in summary["layout"]["grids"]] == [
        ("tiles", 3 * side, 3 * side),
        ("global", side, side),
    ]
    assert "tiles: 6 x 6" in result.output


# ----------------------------------------------------------------------------- planted


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory):
    path = build_planted(zoo_spec("idefics3_base"), tmp_path_factory.mktemp("zoo") / "idefics3")
    spec, cells = load_spec(path)
    model = load_model(path / "model", device="cpu")
    images = [Image.open(p).convert("RGB") for p in image_paths(path)]
    inputs = build_batch(model, [(image, PROMPT) for image in images])
    return spec, cells, model, inputs


def test_planted_board_is_tiled_exactly(planted):
    spec, _cells, model, inputs = planted
    geometry = inputs.layouts[0].geometry
    assert [(g.name, g.rows, g.cols) for g in geometry.grids] == [
        ("tiles", 2 * spec.grid, 2 * spec.grid),
        ("global", spec.grid, spec.grid),
    ]
    assert geometry.n_visual == visual_copies(spec) * spec.grid**2
    assert registry_entry(model) is None


def test_planted_dims_sinks_and_heads_are_recovered(planted):
    spec, cells, model, inputs = planted
    result = discover_dims(model, inputs, show_progress=False)
    assert result.dims == sorted(spec.sink_dims)
    sinks = find_sinks(model, inputs, dims=list(spec.sink_dims), tau=TAU)
    truth = sink_truth(spec, cells, inputs)
    predicted = sinks.is_sink()
    for layer in range(spec.n_layers):
        scores = label_scores(predicted[:, layer].flatten(), truth[:, layer].flatten())
        assert scores["f1"] == 1.0, (layer, scores)
    counts = sinks.counts()["visual"]
    expected = visual_copies(spec) * spec.n_visual_sinks
    assert counts[:, spec.first_sink_layer :].unique().tolist() == [expected]
    assert float(sinks.phi[truth].min()) > 1.3 * TAU
    heads = score_heads(model, inputs, dims=list(spec.sink_dims), show_progress=False)
    assert heads.image_centric_heads() == sorted(spec.image_centric_heads)
