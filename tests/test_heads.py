"""Head scores against a naive computation from captured patterns and residuals."""

from __future__ import annotations

import pytest
import torch
from conftest import make_image

from analysis.capture import capture
from analysis.heads import RHO_PRESETS, resolve_rho, score_heads
from analysis.sinks import phi
from analysis.tokens import build_batch

DIMS = [3, 9]
TAU = 1.5  # low enough that random tiny models have some "sinks" to exercise the rule


def _inputs(model):
    return build_batch(
        model,
        [
            (make_image(seed=1), "is there a red object in the image ?"),
            (make_image(36, 30, seed=2), "describe"),
        ],
    )


def test_scores_match_naive_reference(tiny):
    inputs = _inputs(tiny)
    scores = score_heads(
        tiny, inputs, dims=DIMS, tau=TAU, rho=0.3, min_image_attention=0.05, show_progress=False
    )
    cap = capture(tiny, inputs, resid=True, patterns=True)
    valid = inputs.tensors["attention_mask"].bool()
    n_checked = 0
    for b in range(2):
        visual = inputs.layouts[b].visual
        query_positions = torch.nonzero(inputs.layouts[b].queries).flatten().tolist()
        for layer in range(tiny.n_layers):
            sinks = [
                bool(phi(cap.resid[layer, b, k], DIMS) >= TAU)
                and bool(valid[b, k])
                and bool(visual[k])
                for k in range(visual.numel())
            ]
            assert bool(scores.has_visual_sink[b, layer]) == any(sinks)
            for head in range(tiny.n_heads):
                for q in query_positions:
                    row = cap.patterns[layer, b, head, q]
                    s = sum(float(row[k]) for k in range(row.numel()) if visual[k])
                    non_sink = sum(
                        float(row[k]) for k in range(row.numel()) if visual[k] and not sinks[k]
                    )
                    r = non_sink / s if s > 0 else 0.0
                    assert scores.s[b, layer, head, q].item() == pytest.approx(s, abs=1e-5)
                    assert scores.r[b, layer, head, q].item() == pytest.approx(r, abs=1e-5)
                    expected = s >= 0.05 and r >= 0.3 and any(sinks)
                    assert bool(scores.selected[b, layer, head, q]) == expected
                    n_checked += 1
    assert n_checked > 0
    assert not scores.selected[~scores.queries[:, None, None, :].expand_as(scores.selected)].any()


def test_aggregation_and_export(tiny_models, tmp_path):
    model = tiny_models["llava"]
    batches = [build_batch(model, [(make_image(seed=i), "describe the picture")]) for i in range(3)]
    scores = score_heads(
        model, batches, dims=DIMS, tau=TAU, rho=0.0, min_image_attention=0.0, show_progress=False
    )
    assert scores.s.shape[:3] == (3, model.n_layers, model.n_heads)
    per_sample = scores.per_sample()
    agg = scores.aggregate(n_boot=200)
    torch.testing.assert_close(agg["s_mean"], per_sample["s"].mean(0))
    assert (agg["s_lo"] <= agg["s_mean"] + 1e-6).all()
    assert (agg["s_hi"] >= agg["s_mean"] - 1e-6).all()
    ranked = scores.ranked(top=5)
    assert len(ranked) == 5
    assert ranked[0]["selected_mean"] >= ranked[-1]["selected_mean"]
    path = scores.save(tmp_path / "heads.json")
    assert path.with_suffix(".pt").exists()
    scores.to_csv(str(tmp_path / "heads.csv"))
    assert (tmp_path / "heads.csv").read_text().startswith("layer,head")


def test_rho_presets():
    assert resolve_rho() == 0.5
    assert resolve_rho(preset="general") == RHO_PRESETS["general"] == 0.8
    assert resolve_rho(preset="vision-centric") == 0.9
    with pytest.raises(ValueError, match="Unknown preset"):
        resolve_rho(preset="poetry")
    with pytest.raises(ValueError, match="rho must be in"):
        resolve_rho(1.2)
