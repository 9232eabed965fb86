"""The paper and official VAR presets, side by side, with boundary rows for the official one.

Official facts (authors' code, MICV-yonsei/VisAttnSink 98e62d6; PAPER_NOTES section 9):
p kept (moves 1 - p); sink fraction sum(visual-sink) / (s + n_visual * 1e-6) <= rho;
s >= 0.2 and the fraction in the attention's dtype; sinks phi > tau; layers 2 .. L-1;
sink dims from the registry.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.dims import NoSinkDimsError, sink_dims
from analysis.evaluation import parse_conditions
from analysis.sinks import phi, sink_mask
from analysis.testing.planted import sink_truth
from analysis.var import PRESETS, VarConfig, VarIntervention, default_var_layers
from analysis.var_math import (
    OFFICIAL_VISUAL_EPS,
    key_masks,
    official_selection,
    official_sink_fraction,
    redistribution_rows,
)

OFFICIAL = VarConfig.preset("official")
PAPER = VarConfig.preset("paper")


def test_presets_side_by_side():
    assert VarConfig() == PAPER
    assert sorted(PRESETS) == ["official", "paper"]
    assert (OFFICIAL.p, OFFICIAL.rho, OFFICIAL.min_image_attention, OFFICIAL.tau) == (
        0.6,
        0.5,
        0.2,
        20.0,
    )
    assert OFFICIAL.convention == OFFICIAL.selection == "official"
    for flag in ("strict_tau", "last_layer", "registry_dims"):
        assert getattr(OFFICIAL, flag)
        assert not getattr(PAPER, flag)
    # The shipped config's p = 0.6 keeps 0.6 and moves 0.4; the paper's p = 0.6 moves 0.6.
    assert OFFICIAL.moved_fraction == pytest.approx(0.4)
    assert PAPER.moved_fraction == pytest.approx(0.6)
    assert OFFICIAL.preset_name == "official"
    assert PAPER.preset_name == "paper"
    assert VarConfig.preset("official", layers=(2, 3)).preset_name == "official"
    assert VarConfig.preset("official", p=0.3).preset_name is None
    with pytest.raises(ValueError, match="Unknown VAR preset 'authors'"):
        VarConfig.preset("authors")
    with pytest.raises(ValueError, match="selection must be one of paper, official"):
        VarConfig(selection="exact")


def test_default_layers_of_each_preset():
    assert default_var_layers(32) == list(range(2, 31))  # paper: 2 .. L-2
    assert default_var_layers(32, last_layer=True) == list(range(2, 32))  # code: 2 .. L-1


# ----------------------------------------------------------------------------- boundary rows


def _row(values, visual, sinks, dtype=torch.float32):
    """One sample, one head, one query: a hand-made attention row and its key masks."""
    pattern = torch.tensor(values, dtype=dtype)[None, None, None, :]
    visual = torch.tensor(visual)[None, :]
    sinks = torch.tensor(sinks)[None, :]
    return pattern, visual, sinks


def _official(pattern, visual, sinks, rho=0.5, s=0.2):
    return bool(
        official_selection(
            pattern,
            masks=key_masks(visual, sinks),
            has_visual_sink=(visual & sinks).any(-1),
            queries=torch.ones(1, 1, dtype=torch.bool),
            max_sink_fraction=rho,
            min_image_attention=s,
        )[0, 0, 0]
    )


def _paper(pattern, visual, sinks, rho=0.5, s=0.2):
    queries = torch.ones(1, 1, dtype=torch.bool)
    rows = redistribution_rows(
        pattern, visual=visual, sinks=sinks, queries=queries, rho=rho, min_image_attention=s
    )
    return bool(rows[0, 0, 0])


# keys: BOS (text sink), 4 visual keys of which the first is a sink, one text key
VISUAL = [False, True, True, True, True, False]
SINKS = [True, True, False, False, False, False]
N_VISUAL = sum(VISUAL)


def _boundary_row(fraction: float, image: float = 0.5) -> list[float]:
    """A float64 row whose official sink fraction (with the 1e-6 per visual key) is
    ``fraction``; the image attention is ``image``."""
    visual_sink = fraction * (image + N_VISUAL * OFFICIAL_VISUAL_EPS)
    rest = (image - visual_sink) / 3
    return [0.3, visual_sink, rest, rest, rest, 1.0 - 0.3 - image]


def test_sink_fraction_just_above_rho_is_rejected():
    pattern, visual, sinks = _row(_boundary_row(0.5 + 1e-7), VISUAL, SINKS)
    _, fraction = official_sink_fraction(pattern, key_masks(visual, sinks))
    assert 0.5 < float(fraction) < 0.5 + 2e-7  # 0.5 + 1e-7 in float32
    assert not _official(pattern, visual, sinks)
    # And the paper rule agrees here: r = 1 - fraction' < 0.5.
    assert not _paper(pattern, visual, sinks)


def test_the_per_key_epsilon_moves_the_boundary():
    """Without the 1e-6 per visual key the sink fraction is 0.5 + 1e-7 (rejected by the
    paper's r >= 0.5); the official denominator brings it under 0.5 (selected)."""
    image = 0.5
    visual_sink = (0.5 + 1e-7) * image
    rest = (image - visual_sink) / 3
    pattern, visual, sinks = _row(
        [0.3, visual_sink, rest, rest, rest, 0.2], VISUAL, SINKS, dtype=torch.float32
    )
    exact = float(pattern[0, 0, 0, 1]) / float(pattern[0, 0, 0, 1:5].sum())
    assert exact > 0.5
    _, fraction = official_sink_fraction(pattern, key_masks(visual, sinks))
    assert float(fraction) <= 0.5
    assert _official(pattern, visual, sinks)
    assert not _paper(pattern, visual, sinks)
    # The same row in the official convention of VarConfig: rho = 1 - 0.5 for the paper rule.
    assert not _paper(pattern, visual, sinks, rho=1 - OFFICIAL.rho)


def test_fp16_image_attention_of_019995_passes_the_official_test_only():
    """In fp16, 0.2 is 0.199951171875: the official test (in the attention's dtype)
    accepts s = 0.19995; the paper's float32 test and the official test on an fp32
    upcast of the same row reject it."""
    row = [0.4, 0.0, 0.2, 0.0, 0.0, 0.4]  # s = fp16(0.2), no visual sink mass
    pattern, visual, sinks = _row(row, VISUAL, SINKS, dtype=torch.float16)
    image, _ = official_sink_fraction(pattern, key_masks(visual, sinks))
    assert image.dtype == torch.float16
    assert float(image) == 0.199951171875  # fp16(0.2)
    assert float(image) < 0.2
    assert _official(pattern, visual, sinks)
    assert not _paper(pattern, visual, sinks)
    assert not _official(pattern.float(), visual, sinks)
    # bf16 keeps its own rounding too: 0.2 is 0.2001953125 there, and s rounds to it.
    assert _official(pattern.to(torch.bfloat16), visual, sinks)


def _resid_with_phi_exactly(tau: float, d_model: int = 800, dim: int = 17) -> torch.Tensor:
    """A float32 residual vector whose phi over ``[dim]`` is exactly ``tau`` (found by
    stepping one other coordinate ulp by ulp)."""
    x = torch.zeros(d_model)
    x[dim] = tau
    other = np.float32(np.sqrt(d_model - tau**2))
    for _ in range(20000):
        x[3] = float(other)
        value = float(phi(x, [dim]))
        if value == tau:
            return x
        other = np.nextafter(other, np.float32(np.inf if value > tau else 0), dtype=np.float32)
    raise AssertionError("no float32 vector with phi == tau found")


def test_phi_exactly_tau_is_a_sink_in_the_paper_only():
    x = _resid_with_phi_exactly(20.0)
    value = phi(x, [17])
    assert float(value) == 20.0
    assert bool(sink_mask(value, 20.0))
    assert not bool(sink_mask(value, 20.0, strict=True))


# ----------------------------------------------------------------------------- on a planted model


@pytest.fixture(scope="module")
def base(zoo_dirs):
    """The zoo's llava_base member: (spec, cells, model, inputs)."""
    from PIL import Image

    from analysis.loading import load_model
    from analysis.testing.planted import PROMPT, image_paths, load_spec
    from analysis.tokens import build_batch

    path = zoo_dirs["llava_base"]
    spec, cells = load_spec(path)
    model = load_model(path / "model", device="cpu")
    images = [Image.open(p).convert("RGB") for p in image_paths(path)]
    return spec, cells, model, build_batch(model, [(image, PROMPT) for image in images])


def _sink_mass_after(model, inputs, config, dims, layer, head):
    from analysis import hooks
    from analysis.capture import forward

    store = {}

    def keep(pattern, hook):
        store["pattern"] = pattern.detach().clone()

    var = VarIntervention(model, inputs, dims=dims, config=config)
    forward(model, inputs, [*var.fwd_hooks(), (hooks.attn_pattern(layer), keep)])
    return store["pattern"][:, head], var


def test_official_keeps_p_of_sink_attention_and_paper_moves_p(base):
    spec, cells, model, inputs = base
    dims = list(spec.sink_dims)
    (layer, head) = spec.image_centric_heads[0]
    before, _ = _sink_mass_after(model, inputs, VarConfig(p=0.0), dims, layer, head)
    sinks = sink_truth(spec, cells, inputs)[:, layer][:, None, :].float()
    rows = inputs.queries & ~sink_truth(spec, cells, inputs)[:, layer]
    mass_before = (before * sinks).sum(-1)[rows]
    for config, kept in ((OFFICIAL, 0.6), (PAPER, 0.4)):
        after, var = _sink_mass_after(model, inputs, config, dims, layer, head)
        assert torch.allclose((after * sinks).sum(-1)[rows], kept * mass_before, atol=1e-5)
    # Layers: the official preset includes the last layer, the paper preset does not.
    assert var.layers == list(range(2, spec.n_layers - 1))
    official = VarIntervention(model, inputs, dims=dims, config=OFFICIAL)
    assert official.layers == list(range(2, spec.n_layers))


def test_official_vars_sinks_are_phi_strictly_above_tau(base):
    """VAR's own sink classification at a layer input: a token with phi == tau is a
    sink under the paper preset and not under the official one."""
    spec, _, model, inputs = base
    x = _resid_with_phi_exactly(20.0, d_model=model.d_model, dim=spec.sink_dims[0])
    resid = torch.zeros(inputs.batch_size, inputs.input_ids.shape[1], model.d_model)
    resid[:, :] = x
    for config, expected in ((PAPER, True), (OFFICIAL, False)):
        var = VarIntervention(model, inputs, dims=[spec.sink_dims[0]], config=config)
        var._sink_hook(2)(resid, None)
        valid = inputs.stack("attention_mask")
        assert bool(var._sinks[2][valid].all()) is expected
        assert not var._sinks[2][~valid].any()


def test_official_preset_takes_dims_from_the_registry_only(base, monkeypatch):
    _, _, model, inputs = base
    with pytest.raises(NoSinkDimsError, match="takes the sink dims from the registry"):
        sink_dims(model, inputs, registry_only=True)
    assert sink_dims(model, inputs, dims=[5], registry_only=True) == [5]
    fake = {"key": "fake", "dims": [40, 41], "model_ids": [model.name_or_path], "d_model": 1024}
    monkeypatch.setattr("analysis.dims.load_registry", lambda: [fake])
    # The registry wins without discovery (which would find the planted dims).
    assert sink_dims(model, inputs, registry_only=True) == [40, 41]


def test_eval_condition_grammar_names_the_preset():
    paper, official, tuned = parse_conditions("var,var:preset=official,var:preset=official,p=0.3")
    assert paper.name == "var"
    assert paper.var == PAPER
    assert official.name == "var:preset=official"
    assert official.var == OFFICIAL
    assert tuned.name == "var:preset=official,p=0.3"
    assert tuned.var == VarConfig.preset("official", p=0.3)
    # Options equal to the preset's own values are dropped from the canonical name.
    (same,) = parse_conditions("var:preset=official,rho=0.5")
    assert same.name == "var:preset=official"
    with pytest.raises(ValueError, match="preset is paper or official"):
        parse_conditions("var:preset=authors")


def test_run_level_preset_applies_to_var_conditions_that_name_none():
    official, paper = parse_conditions("var,var:preset=paper", preset="official")
    assert official.name == "var:preset=official"
    assert official.var == OFFICIAL
    assert paper.name == "var"
    assert paper.var == PAPER
