"""Qwen2.5-VL and Qwen3-VL: the family contract, and what it does not cover.

The contract (``tests/contracts/families.py``) checks HF parity, edits,
geometry counts, cached == uncached and padding; here besides: parity on
every attention route, that the routing is what makes edits take effect (and
pre-softmax scores), the grid's
rows, columns and order against the processor's own ``image_grid_thw``, the
vision start / end tokens, a knock-out in cached generation against the
uncached loop, DeepStack, and processor folders without torchvision.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import make_image
from contracts.families import FamilyContract

from analysis import hooks
from analysis.attention import eager_attention, install_native_routing, remove_native_routing
from analysis.capture import forward
from analysis.families import get
from analysis.families.qwen2_5_vl import ProcessorFolderError, merged_grid, mrope_section
from analysis.families.qwen3_vl import interleaved_mrope_section
from analysis.generation import generate, reference_greedy
from analysis.loading import LoadedModel, UnsupportedModelError, load_model
from analysis.tokens import ModelInputs, build_batch

FAMILIES = ["qwen2_5_vl", "qwen3_vl"]
ATOL = 1e-5
STEPS = 4
# (height, width): square, wide, tall, extreme, and one above the pixel budget.
SIZES = [(28, 28), (30, 50), (70, 30), (20, 100), (90, 15), (200, 160)]


@pytest.fixture(scope="module", params=FAMILIES)
def name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def qwen(tiny_models: dict[str, LoadedModel], name: str) -> LoadedModel:
    return tiny_models[name]


@pytest.fixture(scope="module")
def qwen_dir(tiny_dirs: dict[str, str], name: str) -> str:
    return tiny_dirs[name]


def _two(model: LoadedModel) -> ModelInputs:
    return build_batch(
        model,
        [
            (make_image(seed=1), "is there a red object in the image ?"),
            (make_image(70, 30, seed=2), "describe"),
        ],
    )


def _valid(logits: torch.Tensor, inputs: ModelInputs) -> torch.Tensor:
    return logits[inputs.stack("attention_mask").bool()]


# ----------------------------------------------------------------------------- the contract


class TestQwen25VL(FamilyContract):
    family = "qwen2_5_vl"
    image_sizes = tuple(SIZES)


class TestQwen3VL(FamilyContract):
    family = "qwen3_vl"
    image_sizes = tuple(SIZES)


# ----------------------------------------------------------------------------- numerics


def test_logits_equal_hf_eager_on_every_route(qwen, qwen_dir):
    from transformers import AutoModelForImageTextToText

    hf = AutoModelForImageTextToText.from_pretrained(qwen_dir, attn_implementation="eager").eval()
    inputs = _two(qwen)
    with torch.no_grad():
        expected = hf(**inputs.tensors).logits
    routed = forward(qwen, inputs)
    with eager_attention(qwen):
        eager = forward(qwen, inputs)
    torch.testing.assert_close(_valid(routed, inputs), _valid(expected, inputs), atol=ATOL, rtol=0)
    torch.testing.assert_close(_valid(eager, inputs), _valid(expected, inputs), atol=ATOL, rtol=0)


def test_text_attention_runs_the_hooked_function_and_the_vision_tower_its_own(qwen):
    config = qwen.config
    assert config.get_text_config()._attn_implementation == "vsink_eager"
    assert config.vision_config._attn_implementation != "vsink_eager"


def test_only_delegating_attention_bridges_are_routed(tiny_models):
    """TransformerLens' own attention bridges (LLaVA's) compute attention themselves: left alone."""
    from analysis.compat import _HANDLE

    for name, model in tiny_models.items():
        attn = model.bridge.blocks[0].attn
        native = model.family.name in FAMILIES
        assert (getattr(attn, "_vsink_native_routed", False) is True) == native, name
        # The cache hand-on pre-hook sits only where TransformerLens computes attention.
        assert (getattr(attn, _HANDLE, None) is None) == native, name
    assert install_native_routing(tiny_models["llava"].bridge) == 0


def test_pattern_and_residual_edits_change_the_logits(qwen):
    inputs = _two(qwen)
    baseline = forward(qwen, inputs)

    def uniform(pattern: torch.Tensor, hook) -> torch.Tensor:
        allowed = (pattern > 0).to(pattern.dtype)
        return allowed / allowed.sum(-1, keepdim=True)

    def shift(resid: torch.Tensor, hook) -> torch.Tensor:
        return resid + 1.0

    for layer in range(qwen.n_layers):
        edited = forward(qwen, inputs, [(hooks.attn_pattern(layer), uniform)])
        moved = (_valid(edited, inputs) - _valid(baseline, inputs)).abs().max()
        assert moved > 1e-3, f"a pattern edit at layer {layer} must change the logits"
    edited = forward(qwen, inputs, [(hooks.resid_pre(1), shift)])
    assert (_valid(edited, inputs) - _valid(baseline, inputs)).abs().max() > 1e-3


def test_score_hook_gets_pre_softmax_scores_and_its_edits_take_effect(qwen):
    inputs = _two(qwen)
    seen: dict[str, torch.Tensor] = {}

    def scores(tensor: torch.Tensor, hook) -> None:
        seen["scores"] = tensor.detach()

    def pattern(tensor: torch.Tensor, hook) -> None:
        seen["pattern"] = tensor.detach()

    forward(qwen, inputs, [(hooks.attn_scores(2), scores), (hooks.attn_pattern(2), pattern)])
    torch.testing.assert_close(seen["scores"].softmax(-1), seen["pattern"], atol=1e-6, rtol=0)
    assert (seen["scores"] < 0).any()
    assert (seen["scores"].sum(-1) != 1).any()

    first_visual = int(inputs.layouts[0].geometry.positions[0])

    def block_first_visual(tensor: torch.Tensor, hook) -> torch.Tensor:
        out = tensor.clone()
        out[..., first_visual] = torch.finfo(out.dtype).min
        return out

    baseline = forward(qwen, inputs)
    edited = forward(qwen, inputs, [(hooks.attn_scores(0), block_first_visual)])
    assert (_valid(edited, inputs) - _valid(baseline, inputs)).abs().max() > 1e-4


def test_without_the_routing_edits_are_discarded(qwen):
    """The failure the routing fixes: TransformerLens alone drops the edit (with a warning)."""
    inputs = _two(qwen)
    baseline = forward(qwen, inputs)

    def zero(pattern: torch.Tensor, hook) -> torch.Tensor:
        return torch.zeros_like(pattern)

    remove_native_routing(qwen.bridge)
    try:
        with pytest.warns(UserWarning, match="discarded"):
            edited = forward(qwen, inputs, [(hooks.attn_pattern(1), zero)])
        torch.testing.assert_close(edited, baseline, atol=ATOL, rtol=0)
    finally:
        assert install_native_routing(qwen.bridge) == qwen.n_layers
    edited = forward(qwen, inputs, [(hooks.attn_pattern(1), zero)])
    assert (_valid(edited, inputs) - _valid(baseline, inputs)).abs().max() > 1e-3


def test_cached_generation_under_a_knock_out_equals_the_uncached_loop(qwen):
    from analysis.ablation import KnockOut

    inputs = _two(qwen)
    positions = [int(inputs.layouts[0].geometry.positions[i]) for i in (0, 1, 2)]

    def make(extended: ModelInputs):
        knock = KnockOut(qwen, extended, target="positions", positions=positions, mode="pre")
        return knock.fwd_hooks()

    baseline = generate(qwen, inputs, max_new_tokens=STEPS, stop_at_eos=False, keep_logits=True)
    knocked = generate(
        qwen,
        inputs,
        max_new_tokens=STEPS,
        fwd_hooks=make(inputs),
        stop_at_eos=False,
        keep_logits=True,
    )
    reference = reference_greedy(qwen, inputs, max_new_tokens=STEPS, make_hooks=make)
    assert knocked.tokens == reference.tokens
    for x, y in zip(knocked.step_logits, reference.step_logits, strict=True):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=0)
    moved = max(
        (a - b).abs().max() for a, b in zip(knocked.step_logits, baseline.step_logits, strict=True)
    )
    assert moved > 1e-4, "the knock-out must change the generation's logits"


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_geometry_equals_the_processors_own_counts(qwen, size):
    height, width = size
    inputs = build_batch(qwen, [(make_image(height, width), "describe")])
    grid_thw = inputs.tensors["image_grid_thw"][0].tolist()
    merge = qwen.processor.image_processor.merge_size
    geometry = inputs.layouts[0].geometry
    n_pads = int((inputs.input_ids[0] == qwen.image_token_id).sum())
    assert geometry.n_visual == grid_thw[0] * grid_thw[1] * grid_thw[2] // merge**2 == n_pads
    spec = geometry.grid(0)
    assert (spec.rows, spec.cols) == (grid_thw[1] // merge, grid_thw[2] // merge)
    assert merged_grid(qwen.processor.image_processor, size) == (spec.rows, spec.cols)
    assert spec.extent == (0.0, 0.0, float(width), float(height))
    # Raster order: rows then columns.
    assert geometry.row.tolist() == [r for r in range(spec.rows) for _ in range(spec.cols)]
    assert geometry.col.tolist() == [c for _ in range(spec.rows) for c in range(spec.cols)]


def test_the_pixel_budget_changes_the_grid(qwen):
    sizes = {merged_grid(qwen.processor.image_processor, size) for size in SIZES}
    assert len(sizes) >= 4, "the aspect ratios must give different grids"
    budget = qwen.processor.image_processor.size["longest_edge"]
    factor = qwen.processor.image_processor.patch_size * qwen.processor.image_processor.merge_size
    rows, cols = merged_grid(qwen.processor.image_processor, (200, 160))
    assert rows * cols * factor * factor <= budget


def test_vision_start_and_end_wrap_each_image(qwen):
    inputs = build_batch(qwen, [([make_image(seed=1), make_image(70, 30, seed=2)], "describe")])
    ids = inputs.input_ids[0].tolist()
    config = qwen.config
    geometry = inputs.layouts[0].geometry
    for image in (0, 1):
        positions = geometry.positions[geometry.image == image]
        first, last = int(positions.min()), int(positions.max())
        assert last - first + 1 == positions.numel(), "an image's tokens are contiguous"
        assert ids[first - 1] == config.vision_start_token_id
        assert ids[last + 1] == config.vision_end_token_id
    counts = [int((geometry.image == i).sum()) for i in (0, 1)]
    grid = inputs.tensors["image_grid_thw"]
    assert counts == (grid.prod(-1) // 4).tolist()


def test_mrope_sections_split_the_rotary_half():
    assert mrope_section(128) == [16, 24, 24]  # Qwen2.5-VL-7B's published split
    assert interleaved_mrope_section(128) == [24, 20, 20]  # Qwen3-VL's
    for d_head in (16, 32, 64, 80):
        assert sum(mrope_section(d_head)) == d_head // 2
        assert sum(interleaved_mrope_section(d_head)) == d_head // 2


def test_deepstack_adds_vision_features_between_the_first_layers(tiny_models):
    """Qwen3-VL: resid_pre of layer l+1 differs from resid_post of layer l at visual
    positions only, for the DeepStack layers only; the analyses read resid_pre."""
    model = tiny_models["qwen3_vl"]
    inputs = _two(model)
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(tensor: torch.Tensor, hook) -> None:
            seen[name] = tensor.detach()

        return hook

    names = [hooks.resid_pre(layer) for layer in range(model.n_layers)]
    names += [f"blocks.{layer}.hook_resid_post" for layer in range(model.n_layers)]
    forward(model, inputs, [(n, keep(n)) for n in names])
    visual = inputs.visual
    n_deepstack = len(model.config.vision_config.deepstack_visual_indexes)
    for layer in range(model.n_layers - 1):
        step = seen[hooks.resid_pre(layer + 1)] - seen[f"blocks.{layer}.hook_resid_post"]
        assert step[~visual].abs().max() == 0
        if layer < n_deepstack:
            assert step[visual].abs().amax(-1).min() > 0, f"DeepStack adds after layer {layer}"
        else:
            assert step[visual].abs().max() == 0


# ----------------------------------------------------------------------------- processor


def test_processor_round_trips_through_a_folder_without_auto_processor(
    qwen, name, tmp_path, monkeypatch
):
    import transformers

    qwen.processor.save_pretrained(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("AutoProcessor would build a video processor (torchvision)")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", refuse)
    loaded = get(name).load_processor(str(tmp_path), local_files_only=True)
    assert type(loaded) is type(qwen.processor)
    assert not hasattr(loaded, "video_processor")
    assert loaded.image_token == "<|image_pad|>"
    prompt = loaded.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe"}]}],
        add_generation_prompt=True,
    )
    images = [make_image(seed=3)]
    a = qwen.processor(images=images, text=[prompt], padding=True, return_tensors="pt")
    b = loaded(images=images, text=[prompt], padding=True, return_tensors="pt")
    assert sorted(a) == sorted(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_an_older_preprocessor_config_is_read(qwen, name, tmp_path):
    qwen.processor.tokenizer.save_pretrained(tmp_path)
    image_processor = qwen.processor.image_processor
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "Qwen2VLImageProcessor",
                "min_pixels": image_processor.size["shortest_edge"],
                "max_pixels": image_processor.size["longest_edge"],
                "patch_size": image_processor.patch_size,
                "merge_size": image_processor.merge_size,
                "temporal_patch_size": 2,
            }
        )
    )
    loaded = get(name).load_processor(str(tmp_path), local_files_only=True)
    for size in SIZES:
        assert merged_grid(loaded.image_processor, size) == merged_grid(image_processor, size)


@pytest.mark.parametrize(
    ("remove", "match"),
    [(("processor_config.json",), "no image processor config"), (("tokenizer.json",), "tokenizer")],
)
def test_a_folder_missing_a_processor_part_is_one_clear_line(qwen_dir, tmp_path, remove, match):
    folder = tmp_path / "checkpoint"
    shutil.copytree(qwen_dir, folder)
    for name in remove:
        (folder / name).unlink()
    with pytest.raises(ProcessorFolderError, match=match) as err:
        load_model(folder, device="cpu")
    assert "\n" not in str(err.value)


def test_the_torchvision_check_is_lifted_only_during_boot(name):
    import importlib

    family = get(name)
    module, cls_name = family.adapter
    adapter = getattr(importlib.import_module(module), cls_name)
    assert adapter.required_libraries == ["torchvision"]
    with family.boot_context():
        assert adapter.required_libraries == []
    assert adapter.required_libraries == ["torchvision"]


# ----------------------------------------------------------------------------- config


def test_a_hub_style_config_passes_the_key_check(tmp_path):
    """Qwen2.5-VL-7B-Instruct's config.json layout: text keys at the top, mrope in rope_scaling."""
    from transformers import AutoConfig

    legacy = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        **{k: 151652 + i for i, k in enumerate(["vision_start_token_id", "vision_end_token_id"])},
        "vision_token_id": 151654,
        "image_token_id": 151655,
        "video_token_id": 151656,
        "hidden_size": 3584,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "num_hidden_layers": 28,
        "max_window_layers": 28,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "use_sliding_window": False,
        "sliding_window": 32768,
        "torch_dtype": "bfloat16",
        "vision_config": {"depth": 32, "hidden_size": 1280, "out_hidden_size": 3584},
    }
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    config = AutoConfig.from_pretrained(tmp_path)
    get("qwen2_5_vl").check_config(config)
    assert config.get_text_config().rope_parameters["mrope_section"] == mrope_section(128)


def test_vsink_info_shows_the_grid_and_no_bos(qwen, qwen_dir, tmp_path):
    from typer.testing import CliRunner

    from analysis.cli import app

    out = tmp_path / "info.json"
    image = tmp_path / "wide.png"
    make_image(30, 50).save(image)
    result = CliRunner().invoke(
        app, ["info", qwen_dir, "--image", str(image), "--device", "cpu", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    rows, cols = merged_grid(qwen.processor.image_processor, (30, 50))
    assert summary["family"] == qwen.family.name
    assert summary["layout"]["n_visual"] == rows * cols
    assert summary["layout"]["grids"][0]["rows"] == rows
    assert summary["bos_token_id"] is None
    assert summary["layout"]["bos_position"] is None


def test_qwen2_vl_is_refused_with_the_reason(tmp_path):
    from transformers import Qwen2VLConfig

    Qwen2VLConfig(architectures=["Qwen2VLForConditionalGeneration"]).save_pretrained(tmp_path)
    with pytest.raises(
        UnsupportedModelError, match=r"TransformerLens 4\.3 has no architecture"
    ) as err:
        load_model(tmp_path, device="cpu")
    assert "Qwen2.5-VL" in str(err.value)
    assert "\n" not in str(err.value)
