"""Sink tokens: phi against a naive reference, planted sinks, padding, validation."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_image
from test_dims import PLANTED_DIMS, planted_massive_activation

from analysis.sinks import find_sinks, label_scores, phi, tau_sweep, validate_sinks
from analysis.testing.planted import TAU, sink_truth, visual_copies
from analysis.tokens import build_batch


def naive_phi(x, dims, eps=1e-6):
    values = [float(v) for v in x]
    rms = math.sqrt(sum(v * v for v in values) / len(values) + eps)
    return max(abs(values[d]) / rms for d in dims)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_phi_matches_naive(dtype):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 32) * 0.1
    x[0, 0, 7] = 40.0
    x[1, 2, 11] = -25.0
    x = x.to(dtype)
    out = phi(x, [7, 11])
    assert out.dtype == torch.float32
    for b in range(3):
        for p in range(5):
            assert out[b, p].item() == pytest.approx(naive_phi(x[b, p].float(), [7, 11]), rel=1e-5)
    # The bound phi <= sqrt(d_model / k) for mass shared by k dims, reached when all mass is in one dim.
    one_hot = torch.zeros(64)
    one_hot[3] = 5.0
    assert phi(one_hot, [3]).item() == pytest.approx(8.0, rel=1e-5)


def _inputs(model):
    return build_batch(
        model,
        [
            (make_image(seed=1), "is there a red object in the image ?"),
            (make_image(36, 30, seed=2), "describe"),
        ],
    )


def _text_anchor(layout) -> int:
    """The planted text sink: BOS, or the first token of a family without one (Qwen2-based)."""
    return layout.bos_position if layout.bos_position is not None else layout.first_position


def test_planted_sinks_found_exactly(tiny):
    inputs = _inputs(tiny)
    planted = {}
    anchors = [_text_anchor(layout) for layout in inputs.layouts]
    for index, layout in enumerate(inputs.layouts):
        positions = layout.geometry.positions
        planted[index] = {
            anchors[index],
            int(positions[1]),
            int(positions[len(positions) // 2]),
        }

    def where(batch):
        for index, positions in planted.items():
            for position in positions:
                yield index, position

    with planted_massive_activation(tiny, where, layer=1, values=(800.0, -400.0)):
        result = find_sinks(tiny, inputs, dims=PLANTED_DIMS, tau=5.0)
    sinks = result.is_sink()
    for index, positions in planted.items():
        assert not sinks[index, 0].any()  # layer 0's input precedes the plant
        for layer in range(1, tiny.n_layers):
            found = set(torch.nonzero(sinks[index, layer]).flatten().tolist())
            assert found == positions, (index, layer)
        assert result.text_sinks()[index, 2, anchors[index]]
        assert int(result.visual_sinks()[index, 2].sum()) == 2
    counts = result.counts()
    assert counts["visual"][:, 1:].eq(2).all()
    assert counts["text"][:, 1:].eq(1).all()
    assert result.sink_layers() == list(range(1, tiny.n_layers))
    stability = result.stability()
    assert torch.isnan(stability[:, 0]).all()
    assert stability[:, 2:].eq(1.0).all()
    geometry = inputs.layouts[0].geometry
    on_grid = torch.isin(geometry.positions, torch.tensor(sorted(planted[0]))) & ~geometry.separator
    drawn = sum(
        int(torch.nan_to_num(result.sink_map(0, layer=2, tile=g.tile)).sum())
        for g in geometry.grids
    )
    assert drawn == int(on_grid.sum()) >= 1
    summary = result.summary()
    if inputs.layouts[0].bos_position is not None:
        assert summary["per_layer"][2]["bos_is_sink"] is True
    assert summary["samples"][0]["visual_sinks_consensus"] == 2
    # Validation against the planted truth: F1 = 1 at this tau.
    truth = [
        torch.isin(layout.geometry.positions, torch.tensor(sorted(planted[i] - {anchors[i]})))
        for i, layout in enumerate(inputs.layouts)
    ]
    scores = validate_sinks(result, truth)
    assert all(s["f1"] == 1.0 for sample in scores for s in sample)
    sweep = tau_sweep(result, truth, [1.0, 5.0, 1e6])
    assert sweep[1]["f1"] == 1.0
    assert sweep[2]["recall"] == 0.0


def test_random_models_have_finite_phi_and_no_sinks(tiny):
    result = find_sinks(tiny, _inputs(tiny), dims=[0, 1])
    assert result.phi.shape == (2, tiny.n_layers, _inputs(tiny).input_ids.shape[1])
    assert torch.isfinite(result.phi).all()
    assert not result.is_sink().any()  # tau = 20 is out of reach at d_model 64 (bound 8)


def test_padded_batch_equals_single_samples(tiny):
    inputs = _inputs(tiny)
    batched = find_sinks(tiny, inputs, dims=[3, 9], tau=2.0)
    for index in range(2):
        single = find_sinks(tiny, inputs.select(index), dims=[3, 9], tau=2.0)
        start = inputs.layouts[index].first_position
        torch.testing.assert_close(
            batched.phi[index, :, start:], single.phi[0], atol=1e-5, rtol=1e-5
        )
        assert batched.phi[index, :, :start].eq(0).all()


def test_label_scores_by_hand():
    predicted = torch.tensor([True, True, False, False, True])
    truth = torch.tensor([True, False, True, False, True])
    scores = label_scores(predicted, truth)
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3)
    empty = torch.zeros(3, dtype=torch.bool)
    assert label_scores(empty, empty)["f1"] == 1.0
    with pytest.raises(ValueError, match="Shape mismatch"):
        label_scores(empty, torch.zeros(4, dtype=torch.bool))


def test_bad_arguments(tiny_models):
    model = tiny_models["llava"]
    inputs = _inputs(model)
    with pytest.raises(ValueError, match="tau must be positive"):
        find_sinks(model, inputs, dims=[1], tau=0)
    with pytest.raises(ValueError, match="Sink dims"):
        find_sinks(model, inputs, dims=[999])


# ----------------------------------------------------------------------------- planted zoo


def test_zoo_sink_tokens_match_the_planted_ones(planted):
    """Per layer input: F1 = 1 against the planted sink tokens (BOS, delimiter, dark
    cells), and no sink at all before the first sink layer."""
    spec = planted.spec
    if not spec.has_sinks:
        # Nothing to recover: sink_dims refuses (test_dims). With an arbitrary dim no
        # token is a sink; with the bias decoy every token would be one, which is why
        # discovery must never report it.
        assert not find_sinks(planted.model, planted.inputs, dims=[300]).is_sink().any()
        decoy = find_sinks(planted.model, planted.inputs, dims=[spec.bias_dim]).is_sink()
        assert decoy.sum() == planted.inputs.stack("attention_mask").sum() * spec.n_layers
        return
    result = find_sinks(planted.model, planted.inputs, dims=planted.dims, tau=TAU)
    truth = sink_truth(spec, planted.cells, planted.inputs)
    predicted = result.is_sink()
    for layer in range(spec.n_layers):
        scores = label_scores(predicted[:, layer].flatten(), truth[:, layer].flatten())
        assert scores["f1"] == 1.0, (layer, scores)
        if layer < spec.first_sink_layer:
            assert scores["predicted"] == 0
        else:
            assert scores["true"] > 0
    # Visual sinks alone: the planted fraction of the board, from the first sink layer on.
    counts = result.counts()["visual"]
    expected = visual_copies(spec) * spec.n_visual_sinks if spec.visual_sinks else 0
    assert counts[:, spec.first_sink_layer :].unique().tolist() == [expected]
    # phi is far from tau on both sides: the classification is not a coin flip.
    sink_phi = result.phi[truth]
    other_phi = result.phi[~truth & result.valid[:, None, :]]
    assert float(sink_phi.min()) > 1.3 * TAU
    assert float(other_phi.max()) < 0.2 * TAU
