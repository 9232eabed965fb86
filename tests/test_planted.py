"""The planted-model builder itself: determinism, spec validation, ground-truth shapes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest

from analysis.testing.planted import (
    OBJECT,
    SINK,
    ZOO,
    PlantedSpec,
    build_planted,
    cell_map,
    load_spec,
    zoo_spec,
)


def _digest(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in (".safetensors", ".png")
    }


def test_build_is_deterministic_and_saves_its_spec(tmp_path):
    spec = zoo_spec("llava_eight_heads")
    first = build_planted(spec, tmp_path / "a")
    second = build_planted(spec, tmp_path / "b")
    assert _digest(first) == _digest(second)
    assert len(_digest(first)) == 1 + spec.n_images
    loaded, cells = load_spec(first)
    assert loaded == spec
    assert json.loads((first / "spec.json").read_text())["sink_layers"] == [2, 3]
    assert [c.tolist() for c in cells] == [cell_map(spec, i).tolist() for i in range(2)]


def test_zoo_covers_the_issue_parameters():
    assert len(ZOO) >= 12
    assert len({s.name for s in ZOO}) == len(ZOO)
    assert {s.family for s in ZOO} == {
        "llava",
        "llava_next",
        "gemma3",
        "llava_onevision",
        "idefics3",
        "qwen2_5_vl",
        "qwen3_vl",
    }
    assert {len(s.sink_dims) for s in ZOO} == {0, 1, 2, 3}
    assert {s.source for s in ZOO} == {"mlp", "projector"}
    assert {s.first_sink_layer for s in ZOO} == {0, 2, 3}
    assert {s.sinks_on for s in ZOO if s.has_sinks} == {"bos", "visual", "both"}
    assert any(s.delimiter_sink for s in ZOO)
    assert any(s.bias_dim is not None and s.has_sinks for s in ZOO)
    assert any(s.bias_dim is not None and not s.has_sinks for s in ZOO)
    fractions = [s.n_visual_sinks / s.grid**2 for s in ZOO if s.visual_sinks]
    assert min(fractions) == pytest.approx(0.01)
    assert max(fractions) >= 0.8
    assert all(1024 <= s.d_model <= 2048 for s in ZOO)


def test_cell_maps_hold_the_planted_fraction():
    for spec in ZOO:
        board = cell_map(spec, 0)
        r0, r1, c0, c1 = spec.object_cells
        assert (board[r0:r1, c0:c1] == OBJECT).all()
        assert int((board == SINK).sum()) == spec.n_visual_sinks
        assert np.array_equal(board, cell_map(spec, 0))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"d_model": 512}, "d_model must be >= 1024"),
        ({"sink_dims": (0, 100)}, "dim 0 must be in"),
        ({"sink_dims": (1023,)}, "dim 1023 must be in"),
        ({"sink_dims": (9,)}, "dim 9 must be in"),
        ({"sink_dims": (100, 200, 300, 400)}, "at most 3 sink dims"),
        ({"bias_dim": 337}, "sink and bias dims must differ"),
        ({"first_sink_layer": 1}, "first_sink_layer must be 2 or 3"),
        ({"source": "projector"}, "first_sink_layer must be 0"),
        ({"visual_sink_fraction": 0.9}, "visual_sink_fraction must be in"),
        ({"image_centric_heads": ((1, 0),)}, "at or after the first sink layer"),
        ({"family": "qwen2_vl"}, "family must be one of"),
    ],
)
def test_bad_specs_fail_with_one_line(change, message):
    with pytest.raises(ValueError, match=message) as info:
        replace(PlantedSpec("bad"), **change)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("PlantedSpec 'bad': ")


def test_qwen3_deepstack_runs_and_adds_nothing():
    """The planted Qwen3-VL keeps DeepStack in the forward pass, with features exactly 0,
    while the merged tokens carry the colour flags of their cells."""
    import torch

    from analysis.testing.planted import OBJ, SINKF, render
    from analysis.testing.planted_qwen import build_qwen3_vl

    spec = zoo_spec("qwen3_vl_base")
    model, processor = build_qwen3_vl(spec)
    board = cell_map(spec, 0)
    pixels = processor.image_processor(images=[render(spec, board)], return_tensors="pt")
    with torch.no_grad():
        out = model.model.get_image_features(pixels["pixel_values"], pixels["image_grid_thw"])
    assert model.config.vision_config.deepstack_visual_indexes == [0]
    assert len(out.deepstack_features) == 1
    assert out.deepstack_features[0][0].shape == (spec.grid**2, spec.d_model)
    assert not out.deepstack_features[0][0].any()
    # Merged tokens in raster order: one per cell, the flags 0/1 of the cell class.
    tokens = out.pooler_output[0]
    assert torch.allclose(tokens[:, SINKF], torch.as_tensor(board == SINK).flatten().float())
    assert torch.allclose(tokens[:, OBJ], torch.as_tensor(board == OBJECT).flatten().float())


def test_qwen3_refuses_a_bos_sink():
    from analysis.testing.planted_qwen import build_qwen3_vl

    with pytest.raises(ValueError, match="Qwen has no BOS"):
        build_qwen3_vl(replace(zoo_spec("qwen3_vl_base"), sinks_on="both"))
