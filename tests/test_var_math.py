"""Tests for analysis.var_math against a plain-loop reference of PAPER_NOTES sections 5-6."""

from __future__ import annotations

import math

import pytest
import torch

from analysis.var_math import (
    image_attention_stats,
    redistribute_attention,
    redistribute_attention_with_stats,
    redistribution_rows,
)

# ---------------------------------------------------------------------------
# Naive reference: Python loops over batch, head, query, key in float64,
# written straight from the formulas, independent of the vectorised code.
# ---------------------------------------------------------------------------


def naive_stats(pattern, visual, sinks):
    pat = pattern.double().tolist()
    vis = visual.tolist()
    snk = sinks.tolist()
    batch, head, query, key = pattern.shape
    s_out = [[[0.0] * query for _ in range(head)] for _ in range(batch)]
    r_out = [[[0.0] * query for _ in range(head)] for _ in range(batch)]
    for b in range(batch):
        for h in range(head):
            for i in range(query):
                s = 0.0
                non_sink = 0.0
                for j in range(key):
                    if vis[b][j]:
                        s += pat[b][h][i][j]
                        if not snk[b][j]:
                            non_sink += pat[b][h][i][j]
                s_out[b][h][i] = s
                r_out[b][h][i] = non_sink / s if s > 0 else 0.0
    return torch.tensor(s_out, dtype=torch.float64), torch.tensor(r_out, dtype=torch.float64)


def naive_var(pattern, visual, sinks, queries, p, rho, min_image_attention=0.2):
    """Paper convention: p is moved, rows need s >= min and r >= rho."""
    pat = pattern.double().tolist()
    vis = visual.tolist()
    snk = sinks.tolist()
    qry = queries.tolist()
    batch, head, query, key = pattern.shape
    out = [[[list(pat[b][h][i]) for i in range(query)] for h in range(head)] for b in range(batch)]
    changed = [[[False] * query for _ in range(head)] for _ in range(batch)]
    moved = [[[0.0] * query for _ in range(head)] for _ in range(batch)]
    for b in range(batch):
        has_visual_sink = False
        for j in range(key):
            if vis[b][j] and snk[b][j]:
                has_visual_sink = True
        for h in range(head):
            for i in range(query):
                row = pat[b][h][i]
                s = 0.0
                non_sink_visual = 0.0
                sink_mass = 0.0
                for j in range(key):
                    if vis[b][j]:
                        s += row[j]
                    if vis[b][j] and not snk[b][j]:
                        non_sink_visual += row[j]
                    if snk[b][j]:
                        sink_mass += row[j]
                r = non_sink_visual / s if s > 0 else 0.0
                selected = (
                    qry[b][i]
                    and has_visual_sink
                    and s >= min_image_attention
                    and r >= rho
                    and non_sink_visual > 0
                )
                if not selected:
                    continue
                omega = p * sink_mass
                changed[b][h][i] = True
                moved[b][h][i] = omega
                for j in range(key):
                    if snk[b][j]:
                        out[b][h][i][j] = (1 - p) * row[j]
                    elif vis[b][j]:
                        out[b][h][i][j] = row[j] + omega * row[j] / non_sink_visual
    return (
        torch.tensor(out, dtype=torch.float64),
        torch.tensor(changed, dtype=torch.bool),
        torch.tensor(moved, dtype=torch.float64),
    )


# ---------------------------------------------------------------------------
# Random inputs
# ---------------------------------------------------------------------------


def make_inputs(
    seed,
    *,
    batch=3,
    head=4,
    seq=14,
    causal=False,
    padded=False,
    dtype=torch.float32,
):
    """Random softmax patterns with BOS text sink at key 0 and an image span.

    Keys 2..8 are visual in every sample; 1-2 of them are visual sinks. With
    ``padded`` the samples have lengths seq, seq-2, seq-3 (right padding): pad
    keys get zero attention and are neither visual nor sink, pad queries are not
    allowed queries. Queries are the text positions after the image (plus some
    random other ones when not causal).
    """
    gen = torch.Generator().manual_seed(seed)
    image = slice(2, 9)
    visual = torch.zeros(batch, seq, dtype=torch.bool)
    visual[:, image] = True
    sinks = torch.zeros(batch, seq, dtype=torch.bool)
    sinks[:, 0] = True
    for b in range(batch):
        n_visual_sinks = 1 + b % 2
        chosen = 2 + torch.randperm(7, generator=gen)[:n_visual_sinks]
        sinks[b, chosen] = True

    logits = 1.5 * torch.randn(batch, head, seq, seq, generator=gen)
    # Sinks draw a lot of attention in some heads, little in others.
    sink_boost = 3.0 * torch.rand(batch, head, 1, 1, generator=gen)
    logits = logits + sink_boost * sinks[:, None, None, :].float()

    lengths = torch.full((batch,), seq)
    if padded:
        lengths = torch.tensor([seq, seq - 2, seq - 3][:batch])
    key_valid = torch.arange(seq)[None, :] < lengths[:, None]
    visual &= key_valid
    sinks &= key_valid
    allowed = key_valid[:, None, None, :].expand(batch, head, seq, seq)
    if causal:
        allowed = allowed & torch.ones(seq, seq, dtype=torch.bool).tril()
    pattern = logits.masked_fill(~allowed, -math.inf).softmax(dim=-1)

    queries = torch.zeros(batch, seq, dtype=torch.bool)
    queries[:, 9:] = True
    if not causal:
        queries |= torch.rand(batch, seq, generator=gen) < 0.3
    queries &= key_valid
    return pattern.to(dtype), visual, sinks, queries


def assert_close64(actual, expected, atol=1e-6, rtol=0.0):
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol)


# ---------------------------------------------------------------------------
# image_attention_stats
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
def test_image_attention_stats_matches_naive(causal):
    pattern, visual, sinks, _ = make_inputs(0, causal=causal, padded=True)
    visual[1] = False  # a sample without image: s = 0, r = 0 everywhere
    s, r = image_attention_stats(pattern, visual=visual, sinks=sinks)
    s_ref, r_ref = naive_stats(pattern, visual, sinks)
    assert s.dtype == torch.float32
    assert r.dtype == torch.float32
    assert s.shape == r.shape == pattern.shape[:3]
    assert_close64(s, s_ref)
    assert_close64(r, r_ref)
    assert torch.equal(s[1], torch.zeros_like(s[1]))
    assert torch.equal(r[1], torch.zeros_like(r[1]))
    assert torch.isfinite(r).all()
    if causal:
        # Queries before the image have s == 0 exactly; make sure they exist.
        assert (s[0, :, :2] == 0).all()
    assert (s[0] > 0.05).any()
    assert ((r[0] > 0.05) & (r[0] < 0.95)).any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_image_attention_stats_low_precision_is_float32(dtype):
    pattern, visual, sinks, _ = make_inputs(1, dtype=dtype)
    s, r = image_attention_stats(pattern, visual=visual, sinks=sinks)
    s_ref, r_ref = naive_stats(pattern, visual, sinks)
    assert s.dtype == r.dtype == torch.float32
    assert_close64(s, s_ref, atol=1e-6)
    assert_close64(r, r_ref, atol=1e-5)


# ---------------------------------------------------------------------------
# Hand-computed example
# ---------------------------------------------------------------------------


def _hand_example():
    # keys: BOS text sink, text, visual sink, visual, visual
    row = [0.4, 0.1, 0.2, 0.2, 0.1]
    other = [0.1, 0.6, 0.1, 0.1, 0.1]  # s = 0.3, r = 2/3, but not an allowed query
    pattern = torch.tensor([[[row, other]]], dtype=torch.float32)
    visual = torch.tensor([[False, False, True, True, True]])
    sinks = torch.tensor([[True, False, True, False, False]])
    queries = torch.tensor([[True, False]])
    return pattern, visual, sinks, queries


def test_hand_computed_example():
    pattern, visual, sinks, queries = _hand_example()
    # s = 0.5, r = 0.3 / 0.5 = 0.6 >= 0.5; sink mass 0.6, Omega = 0.6 * 0.6 = 0.36.
    # sinks: 0.4 * 0.4 = 0.16, 0.2 * 0.4 = 0.08
    # non-sink visual: 0.2 + 0.36 * 0.2 / 0.3 = 0.44, 0.1 + 0.36 * 0.1 / 0.3 = 0.22
    expected_row = torch.tensor([0.16, 0.1, 0.08, 0.44, 0.22])
    out, changed, moved = redistribute_attention_with_stats(
        pattern, visual=visual, sinks=sinks, queries=queries, p=0.6, rho=0.5
    )
    torch.testing.assert_close(out[0, 0, 0], expected_row, atol=1e-6, rtol=0)
    assert torch.equal(out[0, 0, 1], pattern[0, 0, 1])
    assert changed.tolist() == [[[True, False]]]
    torch.testing.assert_close(moved, torch.tensor([[[0.36, 0.0]]]), atol=1e-6, rtol=0)
    assert abs(out[0, 0, 0].sum().item() - 1.0) < 1e-6

    s, r = image_attention_stats(pattern, visual=visual, sinks=sinks)
    torch.testing.assert_close(s, torch.tensor([[[0.5, 0.3]]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(r, torch.tensor([[[0.6, 2 / 3]]]), atol=1e-6, rtol=0)

    # Same thing in the official storage: keep 0.4, sink fraction 0.4 <= 0.5.
    official = redistribute_attention(
        pattern, visual=visual, sinks=sinks, queries=queries, p=0.4, rho=0.5, convention="official"
    )
    torch.testing.assert_close(official[0, 0, 0], expected_row, atol=1e-6, rtol=0)

    # r = 0.6 < rho = 0.8: nothing changes.
    strict = redistribute_attention(pattern, visual=visual, sinks=sinks, queries=queries, rho=0.8)
    assert torch.equal(strict, pattern)
    # s = 0.5 < 0.6: nothing changes.
    high_s = redistribute_attention(
        pattern, visual=visual, sinks=sinks, queries=queries, min_image_attention=0.6
    )
    assert torch.equal(high_s, pattern)


# ---------------------------------------------------------------------------
# Vectorised vs naive on random inputs
# ---------------------------------------------------------------------------

CASES = [
    # seed, causal, padded, p, rho, min_image_attention
    (0, False, False, 0.6, 0.5, 0.2),
    (1, True, False, 0.6, 0.5, 0.2),
    (2, False, True, 0.6, 0.8, 0.2),
    (3, True, True, 0.3, 0.5, 0.2),
    (4, False, False, 0.9, 0.2, 0.1),
    (5, True, True, 0.6, 0.0, 0.0),
    (6, False, True, 1.0, 0.5, 0.2),
]


@pytest.mark.parametrize(("seed", "causal", "padded", "p", "rho", "min_ia"), CASES)
def test_matches_naive(seed, causal, padded, p, rho, min_ia):
    pattern, visual, sinks, queries = make_inputs(seed, causal=causal, padded=padded)
    original = pattern.clone()
    out, changed, moved = redistribute_attention_with_stats(
        pattern,
        visual=visual,
        sinks=sinks,
        queries=queries,
        p=p,
        rho=rho,
        min_image_attention=min_ia,
    )
    ref, ref_changed, ref_moved = naive_var(pattern, visual, sinks, queries, p, rho, min_ia)

    assert torch.equal(pattern, original), "input was modified in place"
    assert out.dtype == pattern.dtype
    assert out.shape == pattern.shape
    assert torch.equal(changed, ref_changed)
    # Non-vacuous: some rows change and some do not.
    assert changed.any()
    assert (~changed).any()
    assert_close64(out, ref)
    assert_close64(moved, ref_moved)
    assert torch.isfinite(out).all()
    # Row sums preserved.
    assert_close64(out.sum(-1), pattern.sum(-1))
    # Unselected rows bit-identical.
    assert torch.equal(out[~changed], pattern[~changed])
    # The thin wrappers agree.
    rows = redistribution_rows(
        pattern, visual=visual, sinks=sinks, queries=queries, rho=rho, min_image_attention=min_ia
    )
    assert torch.equal(rows, changed)
    plain = redistribute_attention(
        pattern,
        visual=visual,
        sinks=sinks,
        queries=queries,
        p=p,
        rho=rho,
        min_image_attention=min_ia,
    )
    assert torch.equal(plain, out)


def test_padded_batch_keeps_pads_and_pad_queries():
    pattern, visual, sinks, queries = make_inputs(7, padded=True, causal=True)
    out, changed, _ = redistribute_attention_with_stats(
        pattern, visual=visual, sinks=sinks, queries=queries
    )
    # Sample 2 has length seq - 3 = 11: pad keys 11.. had zero attention and keep it.
    assert (pattern[2, :, :, 11:] == 0).all()
    assert (out[2, :, :, 11:] == 0).all()
    # Pad queries are never allowed, so their rows are untouched.
    assert not changed[2, :, 11:].any()
    assert torch.equal(out[2, :, 11:], pattern[2, :, 11:])
    ref, ref_changed, _ = naive_var(pattern, visual, sinks, queries, 0.6, 0.5)
    assert torch.equal(changed, ref_changed)
    assert changed[1].any()
    assert changed[2].any()
    assert_close64(out, ref)


def test_samples_without_sinks_or_without_visual_sink_are_untouched():
    pattern, visual, sinks, queries = make_inputs(8, batch=3)
    sinks[0] = False  # no sink at all
    sinks[1] = False
    sinks[1, 0] = True  # only the BOS text sink
    out, changed, moved = redistribute_attention_with_stats(
        pattern, visual=visual, sinks=sinks, queries=queries, rho=0.5
    )
    assert not changed[:2].any()
    assert torch.equal(out[:2], pattern[:2])
    assert torch.equal(moved[:2], torch.zeros_like(moved[:2]))
    assert changed[2].any()

    # The no-visual-sink rule is what blocks sample 1: with a visual sink that
    # holds (almost) no attention its rows do get selected.
    sinks_with_visual = sinks.clone()
    sinks_with_visual[1, 8] = True
    _, changed_with_visual, _ = redistribute_attention_with_stats(
        pattern, visual=visual, sinks=sinks_with_visual, queries=queries, rho=0.5
    )
    assert changed_with_visual[1].any()
    ref, ref_changed, _ = naive_var(pattern, visual, sinks, queries, 0.6, 0.5)
    assert torch.equal(changed, ref_changed)
    assert_close64(out, ref)


def test_rows_below_thresholds_are_untouched():
    # keys: BOS sink, text, visual sink, visual, visual
    rows = [
        [0.85, 0.05, 0.02, 0.04, 0.04],  # s = 0.10 < 0.2, r = 0.8
        [0.30, 0.10, 0.40, 0.10, 0.10],  # s = 0.60, r = 1/3 < 0.5
        [0.40, 0.10, 0.10, 0.20, 0.20],  # s = 0.50, r = 0.8: selected
    ]
    pattern = torch.tensor([[rows]], dtype=torch.float32)
    visual = torch.tensor([[False, False, True, True, True]])
    sinks = torch.tensor([[True, False, True, False, False]])
    queries = torch.ones(1, 3, dtype=torch.bool)
    out, changed, moved = redistribute_attention_with_stats(
        pattern, visual=visual, sinks=sinks, queries=queries, p=0.5, rho=0.5
    )
    assert changed.tolist() == [[[False, False, True]]]
    assert torch.equal(out[0, 0, :2], pattern[0, 0, :2])
    # Omega = 0.5 * 0.5 = 0.25 split 1:1 over the two non-sink visual keys.
    expected = torch.tensor([0.20, 0.10, 0.05, 0.325, 0.325])
    torch.testing.assert_close(out[0, 0, 2], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(moved[0, 0], torch.tensor([0.0, 0.0, 0.25]), atol=1e-6, rtol=0)


def test_rows_without_non_sink_visual_attention_are_untouched():
    # keys: BOS sink, text, visual sink, visual, visual
    rows = [
        [0.50, 0.00, 0.50, 0.00, 0.00],  # all visual mass is on the sink
        [0.00, 0.00, 0.00, 0.00, 0.00],  # an all-zero row (e.g. a masked pad row)
        [0.20, 0.20, 0.20, 0.20, 0.20],  # ordinary row, selected
    ]
    pattern = torch.tensor([[rows]], dtype=torch.float32)
    visual = torch.tensor([[False, False, True, True, True]])
    sinks = torch.tensor([[True, False, True, False, False]])
    queries = torch.ones(1, 3, dtype=torch.bool)
    # rho = 0 and no minimum: only the non-sink-visual-mass rule can block.
    out, changed, moved = redistribute_attention_with_stats(
        pattern,
        visual=visual,
        sinks=sinks,
        queries=queries,
        p=0.6,
        rho=0.0,
        min_image_attention=0.0,
    )
    assert torch.isfinite(out).all()
    assert changed.tolist() == [[[False, False, True]]]
    assert torch.equal(out[0, 0, :2], pattern[0, 0, :2])
    assert torch.equal(moved[0, 0, :2], torch.zeros(2))
    # A sample whose visual keys are all sinks: nothing to move to anywhere.
    all_sink = sinks | visual
    out2, changed2, _ = redistribute_attention_with_stats(
        pattern, visual=visual, sinks=all_sink, queries=queries, rho=0.0, min_image_attention=0.0
    )
    assert not changed2.any()
    assert torch.equal(out2, pattern)


def test_nan_row_does_not_leak():
    pattern, visual, sinks, queries = make_inputs(9)
    pattern[0, 1, 10] = float("nan")
    queries[0, 10] = True
    out, changed, _ = redistribute_attention_with_stats(
        pattern, visual=visual, sinks=sinks, queries=queries
    )
    assert not changed[0, 1, 10]
    assert torch.isnan(out[0, 1, 10]).all()
    finite_rows = torch.ones(pattern.shape[:3], dtype=torch.bool)
    finite_rows[0, 1, 10] = False
    assert torch.isfinite(out[finite_rows]).all()
    clean = pattern.clone()
    clean[0, 1, 10] = 0.0
    clean_out = redistribute_attention(clean, visual=visual, sinks=sinks, queries=queries)
    assert torch.equal(out[finite_rows], clean_out[finite_rows])


# ---------------------------------------------------------------------------
# p = 0, p = 1
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_p_zero_is_exact_identity(dtype):
    pattern, visual, sinks, queries = make_inputs(10, causal=True, padded=True, dtype=dtype)
    out, changed, moved = redistribute_attention_with_stats(
        pattern, visual=visual, sinks=sinks, queries=queries, p=0.0
    )
    assert changed.any()  # rows are selected, yet nothing moves
    assert torch.equal(out, pattern)
    assert torch.equal(moved, torch.zeros_like(moved))
    official = redistribute_attention(
        pattern, visual=visual, sinks=sinks, queries=queries, p=1.0, convention="official"
    )
    assert torch.equal(official, pattern)


def test_p_one_zeroes_sinks_in_selected_rows():
    pattern, visual, sinks, queries = make_inputs(11, padded=True)
    out, changed, moved = redistribute_attention_with_stats(
        pattern, visual=visual, sinks=sinks, queries=queries, p=1.0
    )
    assert changed.any()
    sink_entries = sinks[:, None, None, :] & changed[..., None]
    assert (out[sink_entries] == 0).all()
    assert (pattern[sink_entries] > 0).all()
    # All sink mass went to the non-sink visual keys.
    non_sink_visual = (visual & ~sinks)[:, None, None, :].float()
    sink_mass = (pattern * sinks[:, None, None, :].float()).sum(-1)
    gained = ((out - pattern) * non_sink_visual).sum(-1)
    assert_close64(gained[changed], sink_mass[changed])
    assert_close64(moved[changed], sink_mass[changed])


# ---------------------------------------------------------------------------
# Stats
# ---------------------------------------------------------------------------


def test_moved_mass_is_p_times_sink_mass_and_matches_the_change():
    p = 0.35
    pattern, visual, sinks, queries = make_inputs(12, causal=True)
    out, changed, moved = redistribute_attention_with_stats(
        pattern, visual=visual, sinks=sinks, queries=queries, p=p, rho=0.4
    )
    assert moved.dtype == torch.float32
    assert changed.any()
    assert (~changed).any()
    sink_keys = sinks[:, None, None, :].float()
    sink_mass = (pattern.double() * sink_keys).sum(-1)
    assert_close64(moved[changed], p * sink_mass[changed])
    assert torch.equal(moved[~changed], torch.zeros_like(moved[~changed]))
    lost = ((pattern.double() - out.double()) * sink_keys).sum(-1)
    non_sink_visual = (visual & ~sinks)[:, None, None, :].float()
    gained = ((out.double() - pattern.double()) * non_sink_visual).sum(-1)
    assert_close64(lost, moved)
    assert_close64(gained, moved)
    # Text keys that are not sinks never change.
    text_keys = ~(visual | sinks)[:, None, None, :].expand_as(pattern)
    assert torch.equal(out[text_keys], pattern[text_keys])


# ---------------------------------------------------------------------------
# Conventions
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [13, 14])
def test_official_convention_equals_paper_with_inverted_parameters(seed):
    pattern, visual, sinks, queries = make_inputs(seed, causal=seed % 2 == 0, padded=True)
    # Dyadic values, so 1 - (1 - x) == x and the two calls are bit-identical.
    p, rho = 0.625, 0.375
    paper = redistribute_attention_with_stats(
        pattern, visual=visual, sinks=sinks, queries=queries, p=p, rho=rho
    )
    official = redistribute_attention_with_stats(
        pattern,
        visual=visual,
        sinks=sinks,
        queries=queries,
        p=1 - p,
        rho=1 - rho,
        convention="official",
    )
    assert paper[1].any()
    for a, b in zip(paper, official, strict=True):
        assert torch.equal(a, b)
    # The shipped config (0.6 / 0.5) in official storage moves 0.4, paper-style.
    shipped = redistribute_attention(
        pattern, visual=visual, sinks=sinks, queries=queries, p=0.6, rho=0.5, convention="official"
    )
    ref, _, _ = naive_var(pattern, visual, sinks, queries, 0.4, 0.5)
    assert_close64(shipped, ref)


# ---------------------------------------------------------------------------
# Low precision
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "eps"), [(torch.float16, 2.0**-10), (torch.bfloat16, 2.0**-7)])
def test_low_precision_matches_naive(dtype, eps):
    pattern32, visual, sinks, queries = make_inputs(15, causal=True, padded=True)
    pattern = pattern32.to(dtype)
    out, changed, moved = redistribute_attention_with_stats(
        pattern, visual=visual, sinks=sinks, queries=queries
    )
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    assert changed.any()
    assert (~changed).any()
    # Against the reference on the same (rounded) input: only output rounding remains.
    ref, ref_changed, ref_moved = naive_var(pattern, visual, sinks, queries, 0.6, 0.5)
    assert torch.equal(changed, ref_changed)
    assert_close64(out, ref, rtol=eps, atol=1e-6)
    assert_close64(moved, ref_moved, atol=1e-6)
    assert torch.equal(out[~changed], pattern[~changed])
    # Against the float32 reference: input and output rounding, values <= 1.
    ref32, ref32_changed, _ = naive_var(pattern32, visual, sinks, queries, 0.6, 0.5)
    assert torch.equal(changed, ref32_changed)
    assert_close64(out, ref32, rtol=2 * eps, atol=1e-5)
    # Row sums still hold up to the dtype's resolution.
    assert_close64(out.double().sum(-1), pattern.double().sum(-1), atol=4 * eps, rtol=0)


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def _valid_kwargs():
    pattern, visual, sinks, queries = _hand_example()
    return {"visual": visual, "sinks": sinks, "queries": queries}, pattern


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"p": -0.1}, r"p must be in \[0, 1\]"),
        ({"p": 1.5}, r"p must be in \[0, 1\]"),
        ({"p": float("nan")}, r"p must be in \[0, 1\]"),
        ({"rho": 1.01}, r"rho must be in \[0, 1\]"),
        ({"rho": -1.0}, r"rho must be in \[0, 1\]"),
        ({"min_image_attention": 2.0}, r"min_image_attention must be in \[0, 1\]"),
        ({"convention": "mine"}, r"convention must be 'paper' or 'official'"),
        ({"visual": torch.ones(1, 5)}, r"visual must be a bool mask"),
        ({"sinks": torch.ones(1, 5, dtype=torch.long)}, r"sinks must be a bool mask"),
        ({"queries": torch.ones(1, 2, dtype=torch.uint8)}, r"queries must be a bool mask"),
        ({"visual": torch.ones(1, 4, dtype=torch.bool)}, r"visual must have shape"),
        ({"sinks": torch.ones(2, 5, dtype=torch.bool)}, r"sinks must have shape"),
        ({"queries": torch.ones(1, 5, dtype=torch.bool)}, r"queries must have shape"),
        ({"pattern": torch.ones(1, 2, 5)}, r"pattern must be a \[batch, head, query, key\]"),
        ({"pattern": torch.ones(1, 1, 2, 5, dtype=torch.long)}, r"floating-point"),
    ],
)
def test_validation_errors(change, match):
    kwargs, pattern = _valid_kwargs()
    kwargs.update(change)
    pattern = kwargs.pop("pattern", pattern)
    with pytest.raises(ValueError, match=match):
        redistribute_attention(pattern, **kwargs)


def test_validation_in_stats_and_rows():
    kwargs, pattern = _valid_kwargs()
    with pytest.raises(ValueError, match="visual must be a bool mask"):
        image_attention_stats(pattern, visual=kwargs["visual"].float(), sinks=kwargs["sinks"])
    with pytest.raises(ValueError, match="sinks must have shape"):
        image_attention_stats(pattern, visual=kwargs["visual"], sinks=kwargs["sinks"][:, :3])
    with pytest.raises(ValueError, match=r"rho must be in \[0, 1\]"):
        redistribution_rows(pattern, **kwargs, rho=1.5)
    with pytest.raises(ValueError, match="queries must have shape"):
        redistribution_rows(
            pattern, visual=kwargs["visual"], sinks=kwargs["sinks"], queries=kwargs["queries"].T
        )
