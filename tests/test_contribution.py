"""Residual contribution against naive per-pair references and the planted demo sinks."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_image

from analysis.capture import capture
from analysis.contribution import (
    GROUPS,
    ContributionResult,
    group_means,
    group_value_norms,
    residual_contribution,
    value_norms,
)
from analysis.sinks import phi
from analysis.tokens import build_batch

DIMS = [3, 9]
TAU = 1.5  # low enough that random tiny models have "sinks" in every group


def test_value_norms_match_explicit_projection_with_gqa():
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(2, 5, 2, 3, generator=gen)  # 2 value heads shared by 4 query heads
    w_o = torch.randn(4, 3, 7, generator=gen)
    got = value_norms(v, w_o)
    for b in range(2):
        for pos in range(5):
            for head in range(4):
                expected = torch.linalg.vector_norm(v[b, pos, head // 2] @ w_o[head])
                assert got[b, pos, head].item() == pytest.approx(expected.item(), rel=1e-5)


def test_uneven_gqa_is_refused():
    with pytest.raises(ValueError, match="share"):
        value_norms(torch.zeros(1, 2, 3, 4), torch.zeros(4, 4, 8))


def test_group_means_match_pair_loop():
    gen = torch.Generator().manual_seed(1)
    batch, heads, n = 2, 3, 6
    pattern = torch.rand(batch, heads, n, n, generator=gen).tril()
    norms = torch.rand(batch, n, heads, generator=gen)
    groups = torch.rand(batch, 3, n, generator=gen) > 0.5
    groups[1, 0] = False  # an empty group must give NaN, not 0
    queries = torch.tensor([[0, 0, 1, 0, 1, 1], [0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    contribution, attention = group_means(pattern, norms, groups, queries)
    value = group_value_norms(norms, groups)
    for b in range(batch):
        for h in range(heads):
            for g in range(3):
                pairs = [
                    (i, j)
                    for i in range(n)
                    for j in range(i + 1)
                    if queries[b, i] and groups[b, g, j]
                ]
                keys = [j for j in range(n) if groups[b, g, j]]
                if not pairs:
                    assert math.isnan(contribution[b, h, g].item())
                    assert math.isnan(attention[b, h, g].item())
                else:
                    c = sum(float(pattern[b, h, i, j] * norms[b, j, h]) for i, j in pairs)
                    a = sum(float(pattern[b, h, i, j]) for i, j in pairs)
                    assert contribution[b, h, g].item() == pytest.approx(c / len(pairs), rel=1e-5)
                    assert attention[b, h, g].item() == pytest.approx(a / len(pairs), rel=1e-5)
                if keys:
                    mean = sum(float(norms[b, j, h]) for j in keys) / len(keys)
                    assert value[b, h, g].item() == pytest.approx(mean, rel=1e-5)
                else:
                    assert math.isnan(value[b, h, g].item())


def _independent_value_norms(model, resid, layer):
    """v from the HF layer's own norm and v_proj, W_O from its o_proj: no bridge hooks."""
    block = model.hf_model.get_decoder().layers[layer]
    attn = block.self_attn
    with torch.no_grad():
        v = attn.v_proj(block.input_layernorm(resid.to(attn.v_proj.weight.dtype)))
        w_o = attn.o_proj.weight.detach().float().T.unflatten(0, (model.n_heads, model.d_head))
    v = v.float().unflatten(-1, (model.n_kv_heads, model.d_head))
    rep = model.n_heads // model.n_kv_heads
    return torch.stack(
        [
            torch.linalg.vector_norm(v[:, :, h // rep] @ w_o[h], dim=-1)
            for h in range(model.n_heads)
        ],
        dim=-1,
    )


def test_contribution_matches_naive_reference(tiny):
    inputs = build_batch(
        tiny,
        [
            (make_image(seed=1), "is there a red object in the image ?"),
            (make_image(36, 30, seed=2), "describe"),
        ],
    )
    result = residual_contribution(tiny, inputs, dims=DIMS, tau=TAU)
    cap = capture(tiny, inputs, resid=True, patterns=True)
    valid = inputs.stack("attention_mask")
    checked = 0
    for layer in range(tiny.n_layers):
        norms = _independent_value_norms(tiny, cap.resid[layer], layer)
        for b in range(2):
            layout = inputs.layouts[b]
            sinks = phi(cap.resid[layer, b], DIMS) >= TAU
            members = [
                layout.visual & sinks & valid[b],
                layout.visual & ~sinks & valid[b],
                ~layout.visual & valid[b],
            ]
            queries = torch.nonzero(layout.queries).flatten().tolist()
            for g, member in enumerate(members):
                assert result.counts[b, layer, g].item() == member.sum().item()
                keys = torch.nonzero(member).flatten().tolist()
                for head in range(tiny.n_heads):
                    row = cap.patterns[layer, b, head]
                    pairs = [(i, j) for i in queries for j in keys if j <= i]
                    got = result.contribution[b, layer, head, g].item()
                    if not pairs:
                        assert math.isnan(got)
                        continue
                    expected = sum(
                        float(torch.linalg.vector_norm(row[i, j] * norms[b, j, head]))
                        for i, j in pairs
                    ) / len(pairs)
                    assert got == pytest.approx(expected, rel=1e-4, abs=1e-7)
                    checked += 1
    assert checked > tiny.n_layers * tiny.n_heads


def test_bad_arguments_are_clear(tiny):
    inputs = build_batch(tiny, [(make_image(), "describe")])
    with pytest.raises(ValueError, match="sink dims"):
        residual_contribution(tiny, inputs, dims=[])
    with pytest.raises(ValueError, match="out of range"):
        residual_contribution(tiny, inputs, dims=DIMS, layers=[tiny.n_layers])


def test_demo_sinks_receive_attention_but_contribute_little(demo_model, demo_truth):
    """Paper fig. 3c on the planted sinks: high attention, tiny ||alpha x W_OV||."""
    inputs = build_batch(
        demo_model, [("analysis/demo/images/demo_00.png", "Is there a red object in the image?")]
    )
    result = residual_contribution(demo_model, inputs, dims=demo_truth["sink_dims"])
    planted = len(demo_truth["images"]["demo_00.png"]["sink_patches"])
    first = demo_truth["first_sink_layer"]
    sink, other = GROUPS.index("visual sink"), GROUPS.index("visual non-sink")
    assert result.counts[0, :first, sink].sum() == 0
    assert (result.counts[0, first:, sink] == planted).all()
    contribution = result.per_layer("contribution")[first:]
    attention = result.per_layer("attention")[first:]
    assert (attention[:, sink] > 10 * attention[:, other]).all()
    assert (contribution[:, sink] < 0.5 * contribution[:, other]).all()
    ratio = result.summary()["sink_to_nonsink_contribution"]
    assert ratio is not None
    assert ratio < 0.1
    payload = result.to_json()
    assert payload["groups"] == list(GROUPS)
    assert payload["config"]["dims"] == demo_truth["sink_dims"]


def test_summary_ratio_is_none_when_nonsink_contribution_is_zero_or_missing():
    zeros = torch.zeros(1, 2, 3, len(GROUPS))
    for other in (0.0, float("nan")):
        contribution = zeros.clone()
        contribution[..., 0] = 1.0
        contribution[..., 1] = other
        result = ContributionResult(
            groups=list(GROUPS),
            contribution=contribution,
            attention=zeros,
            value_norm=zeros,
            counts=zeros[:, :, 0],
            layers=[0, 1],
        )
        assert result.summary()["sink_to_nonsink_contribution"] is None
        assert result.to_json()["kind"] == "contribution"
