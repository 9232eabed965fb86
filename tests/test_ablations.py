"""The paper's VAR ablations (analysis.ablations) against plain-loop references."""

from __future__ import annotations

import pytest
import torch

from analysis.ablations import (
    TARGETS,
    Variant,
    all_rows,
    apply_variant,
    image_centric_rows,
    random_rows_like,
    redistribute_to,
    var_intervention,
    variant_rows,
)
from analysis.capture import forward
from analysis.generation import generate
from analysis.tokens import build_batch
from analysis.var import VarConfig, VarIntervention
from analysis.var_math import redistribute_attention_with_stats


def _case(seed: int = 0, batch: int = 2, head: int = 3, query: int = 4, key: int = 9):
    g = torch.Generator().manual_seed(seed)
    pattern = torch.softmax(3 * torch.randn(batch, head, query, key, generator=g), -1)
    visual = torch.zeros(batch, key, dtype=torch.bool)
    visual[:, 1:6] = True
    sinks = torch.zeros(batch, key, dtype=torch.bool)
    sinks[:, 0] = True  # BOS (a text sink)
    sinks[:, 2] = True  # a visual sink
    valid = torch.ones(batch, key, dtype=torch.bool)
    valid[1, 0] = False  # sample 1 is left-padded by one key: not valid, not a sink
    sinks[1, 0] = False
    queries = torch.zeros(batch, query, dtype=torch.bool)
    queries[:, 1:] = True
    return pattern, visual, sinks, valid, queries


def naive_redistribute(pattern, sinks, target, rows, p):
    """alpha' straight from the module doc, one row at a time, in float64."""
    out = pattern.double().clone()
    batch, head, query, key = pattern.shape
    for b in range(batch):
        for h in range(head):
            for i in range(query):
                row = [float(v) for v in pattern[b, h, i].double()]
                t_mass = sum(row[j] for j in range(key) if target[b, j])
                if not rows[b, h, i] or t_mass <= 0:
                    continue
                omega = p * sum(row[j] for j in range(key) if sinks[b, j])
                for j in range(key):
                    value = row[j]
                    if sinks[b, j]:
                        value -= p * row[j]
                    if target[b, j]:
                        value += omega * row[j] / t_mass
                    out[b, h, i, j] = value
    return out


@pytest.mark.parametrize("to", sorted(TARGETS))
def test_redistribute_to_matches_naive_reference_and_keeps_row_sums(to):
    pattern, visual, sinks, valid, _queries = _case()
    rows = torch.rand(pattern.shape[:3], generator=torch.Generator().manual_seed(1)) > 0.4
    target = TARGETS[to](visual, sinks, valid)
    new, changed, moved = redistribute_to(pattern, sinks=sinks, target=target, rows=rows, p=0.6)
    expected = naive_redistribute(pattern, sinks, target, rows, 0.6)
    torch.testing.assert_close(new.double(), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(new.sum(-1), pattern.sum(-1), atol=1e-6, rtol=0)
    assert torch.equal(new[~changed], pattern[~changed])  # untouched rows bit for bit
    sink_mass = (pattern * sinks[:, None, None, :]).sum(-1)
    torch.testing.assert_close(moved, torch.where(changed, 0.6 * sink_mass, 0.0))


def test_text_target_moves_mass_to_text_only():
    pattern, visual, sinks, valid, _queries = _case()
    rows = torch.ones(pattern.shape[:3], dtype=torch.bool)
    target = TARGETS["text"](visual, sinks, valid)
    new, changed, _ = redistribute_to(pattern, sinks=sinks, target=target, rows=rows, p=0.5)
    assert changed.all()
    nonsink_visual = visual & ~sinks
    # Visual non-sink keys untouched, text keys gain, sinks halved.
    assert torch.equal(new[..., nonsink_visual[0]][0], pattern[..., nonsink_visual[0]][0])
    assert (new[0][..., target[0]] > pattern[0][..., target[0]]).all()
    torch.testing.assert_close(new[0][..., sinks[0]], 0.5 * pattern[0][..., sinks[0]])
    # Sample 1's padded key 0 is no target and no sink: unchanged.
    assert torch.equal(new[1, ..., 0], pattern[1, ..., 0])


def test_image_rows_to_nonsink_is_var_exactly():
    pattern, visual, sinks, valid, queries = _case(seed=3)
    for rho in (0.0, 0.5, 0.8):
        ours, ours_rows, ours_moved = apply_variant(
            Variant(),
            pattern,
            visual=visual,
            sinks=sinks,
            valid=valid,
            queries=queries,
            p=0.6,
            rho=rho,
            min_image_attention=0.2,
        )
        var, var_rows, var_moved = redistribute_attention_with_stats(
            pattern, visual=visual, sinks=sinks, queries=queries, p=0.6, rho=rho
        )
        torch.testing.assert_close(ours, var, atol=1e-6, rtol=1e-6)
        assert torch.equal(ours_rows, var_rows)
        torch.testing.assert_close(ours_moved, var_moved)


def test_all_rows_and_image_centric_rows_by_hand():
    pattern, visual, sinks, _valid, queries = _case()
    rows = all_rows(pattern, visual=visual, sinks=sinks, queries=queries)
    assert rows.shape == pattern.shape[:3]
    assert torch.equal(rows, queries[:, None, :].expand_as(rows))
    # Sample without a visual sink: nothing.
    no_sink = sinks.clone()
    no_sink[:, 2] = False
    assert not all_rows(pattern, visual=visual, sinks=no_sink, queries=queries).any()
    chosen = image_centric_rows(
        pattern, visual=visual, sinks=sinks, queries=queries, rho=0.5, min_image_attention=0.2
    )
    for b, h, i in torch.cartesian_prod(*(torch.arange(n) for n in pattern.shape[:3])).tolist():
        row = pattern[b, h, i]
        s = float(row[visual[b]].sum())
        r = float(row[visual[b] & ~sinks[b]].sum()) / s if s > 0 else 0.0
        assert bool(chosen[b, h, i]) == (bool(queries[b, i]) and s >= 0.2 and r >= 0.5)


def test_random_rows_keep_the_count_and_follow_the_scores():
    g = torch.Generator().manual_seed(5)
    selected = torch.rand(2, 6, 5, generator=g) > 0.5
    scores = torch.rand(2, 6, 5, generator=g)
    chosen = random_rows_like(selected, scores)
    assert torch.equal(chosen.sum(1), selected.sum(1))
    for b in range(2):
        for i in range(5):
            k = int(selected[b, :, i].sum())
            lowest = sorted(range(6), key=lambda h: float(scores[b, h, i]))[:k]
            assert sorted(torch.nonzero(chosen[b, :, i]).flatten().tolist()) == sorted(lowest)


def test_variant_validation():
    with pytest.raises(ValueError, match="rows must be one of"):
        Variant(rows="some")
    with pytest.raises(ValueError, match="target must be one of"):
        Variant(to="image")
    with pytest.raises(ValueError, match="p must be in"):
        redistribute_to(torch.ones(1, 1, 1, 2), sinks=torch.ones(1, 2, dtype=torch.bool),
                        target=torch.ones(1, 2, dtype=torch.bool),
                        rows=torch.ones(1, 1, 1, dtype=torch.bool), p=1.5)  # fmt: skip


# ------------------------------------------------------------------- hooks on the demo model


def _demo_inputs(demo_model):
    from analysis.loading import DEMO_MODEL_DIR

    images = DEMO_MODEL_DIR.parent / "images"
    prompts = [
        (images / "demo_00.png", "Is there a red object in the image?"),
        (images / "demo_01.png", "Do you see a green object in this image?"),
    ]
    return build_batch(demo_model, prompts)


def _changed(intervention):
    return [int(v["prefill_rows_changed"]) for v in intervention.per_sample()]


def test_variant_hooks_on_the_demo_model(demo_model):
    inputs = _demo_inputs(demo_model)
    config = VarConfig()
    dims = [337, 771]
    var = var_intervention(demo_model, inputs, dims=dims, config=config)
    assert type(var) is VarIntervention  # VAR itself goes through VAR's hooks
    var_logits = forward(demo_model, inputs, var.fwd_hooks())
    same = var_intervention(
        demo_model, inputs, dims=dims, config=config, variant=Variant(rows="image", to="visual")
    )
    forward(demo_model, inputs, same.fwd_hooks())
    everywhere = var_intervention(
        demo_model, inputs, dims=dims, config=config, variant=Variant(rows="all")
    )
    all_logits = forward(demo_model, inputs, everywhere.fwd_hooks())
    randomly = [
        var_intervention(
            demo_model,
            inputs,
            dims=dims,
            config=config,
            variant=Variant(rows="random"),
            seed=seed,
            sample_keys=["q0", "q1"],
        )
        for seed in (0, 0, 1)
    ]
    for intervention in randomly:
        forward(demo_model, inputs, intervention.fwd_hooks())
    n_heads = demo_model.n_heads
    n_queries = inputs.queries.sum(1).tolist()
    n_layers = len(var.layers)
    # All heads: every query row of every VAR layer (the demo has visual sinks from layer 2).
    assert _changed(everywhere) == [n * n_heads * n_layers for n in n_queries]
    assert all(0 < v < a for v, a in zip(_changed(var), _changed(everywhere), strict=True))
    # Same rows as VAR when only the target changes; random heads: the same count.
    assert _changed(same) == _changed(var)
    assert _changed(randomly[0]) == _changed(var)
    # Seeded per item: the same seed draws the same heads, another seed others.
    first, again, other = (r.record().prefill_mass for r in randomly)
    assert first == again
    assert first != other
    assert not torch.allclose(var_logits, all_logits)


def test_condition_grammar_for_ablations_and_rho_presets():
    from analysis.evaluation import parse_conditions

    parsed = parse_conditions(
        "baseline,var-all-heads,var-to-text:p=0.3,var:rows=random,var:rho_preset=general,"
        "var-to-visual,var:rho_preset=vision-centric,to=text"
    )
    names = [c.name for c in parsed]
    assert names == [
        "baseline",
        "var:rows=all",
        "var:p=0.3,to=text",
        "var:rows=random",
        "var:rho=0.8",
        "var:to=visual",
        "var:rho=0.9,to=text",
    ]
    assert parsed[1].variant == Variant(rows="all")
    assert parsed[4].variant is None
    assert parsed[2].var.p == 0.3
    assert parsed[6].var.rho == 0.9
    assert parsed[1].describe()["variant"] == {"rows": "all", "to": "nonsink"}
    assert "variant" not in parsed[4].describe()  # VAR's identity is unchanged
    for bad, message in (
        ("var:rho_preset=x", "rho_preset is one of"),
        ("var:rho=0.5,rho_preset=general", "not both"),
        ("var:rows=some", "rows is one of"),
        ("var-all-heads,var:rows=all", "listed twice"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_conditions(bad)


def test_random_heads_do_not_depend_on_the_batch(demo_model):
    """An item's random heads are the same alone and in a (left-padded) batch."""
    from analysis.loading import DEMO_MODEL_DIR

    images = DEMO_MODEL_DIR.parent / "images"
    prompts = [
        (images / "demo_00.png", "Is there a red object in the image?"),
        (images / "demo_01.png", "Do you see a green object in the picture of this image?"),
    ]
    variant = Variant(rows="random")

    def masses(pairs, keys):
        inputs = build_batch(demo_model, pairs)
        hooks = var_intervention(
            demo_model, inputs, dims=[337, 771], config=VarConfig(), variant=variant,
            sample_keys=keys,
        )  # fmt: skip
        generate(demo_model, inputs, max_new_tokens=2, fwd_hooks=hooks.fwd_hooks())
        return [(v["prefill_mass_moved"], v["decode_mass_moved"]) for v in hooks.per_sample()]

    together = masses(prompts, ["q0", "q1"])
    alone = [masses([p], [k])[0] for p, k in zip(prompts, ["q0", "q1"], strict=True)]
    for (prefill_a, decode_a), (prefill_b, decode_b) in zip(together, alone, strict=True):
        assert prefill_a == pytest.approx(prefill_b, rel=1e-4)
        assert decode_a == pytest.approx(decode_b, rel=1e-4)
    assert together[0] != masses(prompts, ["other", "q1"])[0]  # the key seeds the draw


def test_ablations_under_the_official_preset_use_its_selection(demo_model):
    from analysis.evaluation import parse_conditions

    names = [c.name for c in parse_conditions("var:preset=official,var-to-text:preset=official")]
    assert names == ["var:preset=official", "var:preset=official,to=text"]
    inputs = _demo_inputs(demo_model)
    config = VarConfig.preset("official")
    official = var_intervention(demo_model, inputs, dims=[337, 771], config=config)
    forward(demo_model, inputs, official.fwd_hooks())
    for variant in (Variant(to="text"), Variant(rows="random")):
        other = var_intervention(
            demo_model, inputs, dims=[337, 771], config=config, variant=variant,
            sample_keys=["q0", "q1"],
        )  # fmt: skip
        forward(demo_model, inputs, other.fwd_hooks())
        # The official selection's rows (or as many random ones), not the paper rule's.
        assert _changed(other) == _changed(official)


def test_given_image_rows_replace_the_paper_rule():
    pattern, visual, sinks, valid, queries = _case(seed=4)
    given = torch.zeros(pattern.shape[:3], dtype=torch.bool)
    given[0, 1, 2] = given[1, 0, 3] = True
    _, changed, _ = apply_variant(
        Variant(to="visual"), pattern, visual=visual, sinks=sinks, valid=valid,
        queries=queries, p=0.6, rho=0.5, min_image_attention=0.2, image_rows=given,
    )  # fmt: skip
    assert torch.equal(changed, given)
    rows = variant_rows(
        Variant(rows="random"), pattern, visual=visual, sinks=sinks, queries=queries,
        rho=0.5, min_image_attention=0.2, scores=torch.rand(given.shape), image_rows=given,
    )  # fmt: skip
    assert torch.equal(rows.sum(1), given.sum(1))
