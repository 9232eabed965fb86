"""Sink-dimension discovery and the registry."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from conftest import make_image

from analysis import hooks
from analysis.dims import (
    DimThresholds,
    NoSinkDimsError,
    NoSinkDimsWarning,
    discover_dims,
    layer_dim_stats,
    load_registry,
    massive_mask,
    registry_entry,
    sink_dims,
)
from analysis.testing.planted import DELIMITER, sink_truth
from analysis.tokens import build_batch

PLANTED_DIMS = (5, 41)


@contextlib.contextmanager
def planted_massive_activation(model, positions_fn, layer=1, values=(600.0, -300.0)):
    """Add massive values to PLANTED_DIMS of chosen tokens at the input of ``layer``.

    The residual stream carries them to every later layer, as an early MLP does in
    LLaMA-style models.
    """

    def plant(resid, hook):
        resid = resid.clone()
        for batch_index, position in positions_fn(resid.shape[0]):
            for dim, value in zip(PLANTED_DIMS, values, strict=True):
                resid[batch_index, position, dim] += value
        return resid

    model.bridge.add_hook(hooks.resid_pre(layer), plant)
    try:
        yield
    finally:
        model.bridge.reset_hooks()


def _calibration(model):
    return build_batch(
        model,
        [(make_image(seed=1), "is there a red object ?"), (make_image(36, 30, seed=2), "describe")],
    )


def test_layer_dim_stats_matches_naive():
    torch.manual_seed(0)
    resid = torch.randn(2, 7, 6)
    resid[0, 1, 3] = 90.0
    valid = torch.ones(2, 7, dtype=torch.bool)
    valid[1, :2] = False
    groups = torch.zeros(3, 2, 7, dtype=torch.bool)
    groups[0, :, 0] = True
    groups[1, :, 1:4] = True
    groups[2, :, 4:] = True
    groups &= valid
    peaks, median, counts = layer_dim_stats(resid, groups, valid, min_ratio=10.0)
    values = [
        abs(resid[b, p, d].item())
        for b in range(2)
        for p in range(7)
        for d in range(6)
        if valid[b, p]
    ]
    naive_median = sorted(values)[(len(values) - 1) // 2]  # torch's lower median
    assert median.item() == pytest.approx(naive_median)
    for g in range(3):
        for d in range(6):
            naive = max(
                [abs(resid[b, p, d].item()) for b in range(2) for p in range(7) if groups[g, b, p]]
                or [0.0]
            )
            assert peaks[g, d].item() == pytest.approx(naive)
    # The bias test counts only ordinary text tokens (group 2), never visual ones.
    resid[0, 5, 3] = 90.0
    peaks, median, counts = layer_dim_stats(resid, groups, valid, min_ratio=10.0)
    for d in range(6):
        naive = sum(
            1
            for b in range(2)
            for p in range(7)
            if groups[2, b, p] and abs(resid[b, p, d]) >= 10 * median.item()
        )
        assert counts[d].item() == naive
    assert counts[3] >= 1


def test_massive_mask_thresholds():
    peak = torch.tensor([[500.0, 50.0, 500.0]])
    median = torch.tensor([1.0])
    fraction = torch.tensor([[0.01, 0.01, 0.9]])
    mask = massive_mask(peak, median, fraction, DimThresholds(min_ratio=100, max_text_fraction=0.5))
    assert mask.tolist() == [[True, False, False]]
    mask = massive_mask(peak, median, fraction, DimThresholds(min_ratio=100, min_abs=1000))
    assert not mask.any()


def test_random_tiny_models_have_no_sink_dims(tiny):
    with pytest.warns(NoSinkDimsWarning, match="closest: dim \\d+ .* rejected because its peak"):
        result = discover_dims(tiny, _calibration(tiny), show_progress=False)
    assert result.dims == []
    assert result.peak.shape == (len(result.layers), 3, tiny.d_model)
    assert torch.isfinite(result.peak).all()
    assert torch.isfinite(result.median).all()
    assert (result.median > 0).all()
    assert result.layers == list(range(1, tiny.n_layers))
    with pytest.raises(NoSinkDimsError, match=r"closest: dim .* Refusing"):
        sink_dims(tiny, _calibration(tiny))


def test_planted_dims_are_discovered(tiny):
    inputs = _calibration(tiny)

    def bos_and_two_visual(batch):
        for index, layout in enumerate(inputs.layouts):
            if layout.bos_position is not None:  # Qwen2-based families have no BOS
                yield index, layout.bos_position
            yield index, int(layout.geometry.positions[0])
            yield index, int(layout.geometry.positions[-1])

    with planted_massive_activation(tiny, bos_and_two_visual):
        result = discover_dims(tiny, inputs, show_progress=False)
    assert result.dims == sorted(PLANTED_DIMS)
    rows = {row["dim"]: row for row in result.per_dim()}
    assert rows[5]["score"] == 1.0
    has_bos = inputs.layouts[0].bos_position is not None
    assert rows[5]["ratio_bos"] > 100 if has_bos else rows[5]["ratio_bos"] == 0.0
    assert rows[5]["ratio_visual"] > 100
    assert rows[5]["ratio_text"] < 100  # only BOS among text tokens carries it
    payload = result.to_json()
    assert payload["dims"] == [5, 41]
    assert payload["config"]["thresholds"]["min_ratio"] == 100.0
    assert "torch" in payload["config"]["versions"]


def test_a_bias_dim_on_every_token_is_rejected(tiny):
    inputs = _calibration(tiny)

    def every_token(batch):
        for index in range(batch):
            for position in range(inputs.input_ids.shape[1]):
                yield index, position

    with (
        planted_massive_activation(tiny, every_token),
        pytest.warns(NoSinkDimsWarning, match="bias dim, not a sink dim"),
    ):
        result = discover_dims(tiny, inputs, show_progress=False)
    assert result.dims == []
    assert result.closest()["dim"] in PLANTED_DIMS
    assert result.closest()["reason"] == "not_bias"


def test_registry_entries():
    entries = {e["key"]: e for e in load_registry()}
    assert entries["llama-2-7b"]["dims"] == [1415, 2533]
    assert entries["llama-2-13b"]["dims"] == [2100, 4743]
    assert entries["qwen2-7b"]["dims"] == [458, 2570]
    assert registry_entry("llava-hf/llava-1.5-7b-hf")["key"] == "llama-2-7b"
    assert registry_entry("llava-hf/llava-v1.6-vicuna-13b-hf")["key"] == "llama-2-13b"
    assert registry_entry("some/unknown-model") is None
    for entry in entries.values():
        assert all(0 <= d < entry["d_model"] for d in entry["dims"])


def test_sink_dims_resolution(tiny_models, monkeypatch):
    model = tiny_models["llava"]
    assert sink_dims(model, dims=[7, 3, 7]) == [3, 7]
    with pytest.raises(ValueError, match="in \\[0, 64\\)"):
        sink_dims(model, dims=[64])
    with pytest.raises(ValueError, match="not in the sink-dim registry"):
        sink_dims(model)
    # A registry model whose discovery disagrees warns and keeps the registry's dims.
    fake = {"key": "fake", "dims": [1, 2], "model_ids": [model.name_or_path], "d_model": 64}
    monkeypatch.setattr("analysis.dims.load_registry", lambda: [fake])
    assert sink_dims(model) == [1, 2]
    with pytest.warns(UserWarning, match="differ from the registry"):
        assert sink_dims(model, _calibration(model)) == [1, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sink_dims(model, dims=[9]) == [9]


def test_sink_heavy_calibration_is_discovered(tiny):
    """Sinks on BOS and 80% of the visual tokens (a plain background): the dims are found.

    The old rule (large on at most 25% of all tokens) rejected them: here the dims
    are large on well over a quarter of all tokens but on no ordinary text token.
    """
    inputs = _calibration(tiny)

    def bos_and_most_visual(batch):
        for index, layout in enumerate(inputs.layouts):
            if layout.bos_position is not None:  # Qwen2-based families have no BOS
                yield index, layout.bos_position
            positions = layout.geometry.positions.tolist()
            yield from ((index, p) for p in positions[: int(0.8 * len(positions))])

    with planted_massive_activation(tiny, bos_and_most_visual):
        result = discover_dims(tiny, inputs, show_progress=False)
    valid = inputs.stack("attention_mask")
    n_planted = sum(1 for _ in bos_and_most_visual(2))
    assert n_planted / int(valid.sum()) > 0.25
    assert result.dims == sorted(PLANTED_DIMS)
    assert float(result.text_fraction[:, list(PLANTED_DIMS)].max()) == 0.0


# ----------------------------------------------------------------------------- planted zoo


def test_zoo_discovers_exactly_the_planted_dims(planted):
    """Every zoo member: discovery returns the planted dims, never the bias decoy.

    On the no-sink member it returns none, warns naming the closest candidate
    (its bias decoy, rejected as a bias) and ``sink_dims`` refuses.
    """
    spec = planted.spec
    if spec.visual_sink_fraction >= 0.5:
        # A sink-heavy member: its dims are large on over a quarter of all tokens,
        # which the old rule (max_token_fraction 0.25) took for a bias.
        truth = sink_truth(spec, planted.cells, planted.inputs)[:, spec.first_sink_layer]
        assert int(truth.sum()) > 0.25 * int(planted.inputs.stack("attention_mask").sum())
    if spec.has_sinks:
        with warnings.catch_warnings():
            warnings.simplefilter("error", NoSinkDimsWarning)
            result = discover_dims(planted.model, planted.inputs, show_progress=False)
        assert result.dims == planted.dims
        assert sink_dims(planted.model, planted.inputs) == planted.dims
        rows = {row["dim"]: row for row in result.per_dim()}
        # Massive exactly in the scanned layers whose input carries the planted sinks.
        expected = [layer for layer in result.layers if layer in spec.sink_layers]
        assert all(rows[d]["layers_massive"] == expected for d in planted.dims)
        # The planted dims are large on no ordinary text token but the delimiter sink,
        # whatever the fraction of visual tokens that are sinks.
        text = planted.inputs.text & ~planted.inputs.bos
        delimiters = sum(
            token == DELIMITER
            for b, layout in enumerate(planted.inputs.layouts)
            for p, token in enumerate(layout.tokens)
            if text[b, p]
        )
        fraction = delimiters / int(text.sum()) if spec.delimiter_sink else 0.0
        for slot, layer in enumerate(result.layers):
            expected_fraction = fraction if layer in spec.sink_layers else 0.0
            assert result.text_fraction[slot, planted.dims].tolist() == pytest.approx(
                [expected_fraction] * len(planted.dims)
            )
    else:
        with pytest.warns(NoSinkDimsWarning, match=f"closest: dim {spec.bias_dim} "):
            result = discover_dims(planted.model, planted.inputs, show_progress=False)
        assert result.dims == []
        assert result.closest()["reason"] == "not_bias"
        with pytest.raises(NoSinkDimsError, match="Refusing to run without sink dims"):
            sink_dims(planted.model, planted.inputs)
    if spec.bias_dim is not None:
        assert spec.bias_dim not in result.dims
        assert float(result.text_fraction[:, spec.bias_dim].min()) == 1.0
        assert float(result.ratio()[:, spec.bias_dim].min()) >= result.thresholds.min_ratio


@pytest.mark.parametrize("field", ["max_text_fraction", "min_layer_fraction"])
def test_threshold_fractions_are_validated(field):
    with pytest.raises(ValueError, match=field):
        DimThresholds(**{field: 1.5})
    DimThresholds(**{field: 0.25})
