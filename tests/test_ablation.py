"""Knock-out hooks against hand-made references."""

from __future__ import annotations

import pytest
import torch
from conftest import make_image

from analysis import hooks
from analysis.ablation import KnockOut, ablate, block_scores, random_keys, zero_pattern
from analysis.attention import eager_attention
from analysis.capture import forward
from analysis.generation import generate
from analysis.tokens import build_batch, build_inputs


def _inputs(model):
    return build_inputs(model, make_image(seed=3), "is there a red object in the image ?")


def test_pre_softmax_knockout_equals_hf_with_a_4d_mask(tiny_models, tiny_dirs):
    """LLaVA: blocking keys pre-softmax equals HF eager run with a hand-built 4D additive mask."""
    from transformers import AutoModelForImageTextToText

    model = tiny_models["llava"]
    inputs = _inputs(model)
    layout = inputs.layouts[0]
    targets = [int(layout.geometry.positions[i]) for i in (0, 5, 9)]
    knock = KnockOut(model, inputs, target="positions", positions=targets)
    ours = forward(model, inputs, knock.fwd_hooks())

    n = layout.n_pos
    allowed = torch.tril(torch.ones(n, n, dtype=torch.bool))
    for q in range(n):
        if layout.text[q]:
            for k in targets:
                allowed[q, k] = False
    mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[None, None]
    reference = AutoModelForImageTextToText.from_pretrained(
        tiny_dirs["llava"], attn_implementation="eager"
    ).eval()
    tensors = dict(inputs.tensors)
    tensors["attention_mask"] = mask
    with torch.no_grad():
        expected = reference(**tensors).logits
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    assert (ours - forward(model, inputs)).abs().max() > 1e-4


def test_post_softmax_zeroing_matches_naive_loop(tiny):
    inputs = _inputs(tiny)
    layout = inputs.layouts[0]
    targets = [int(layout.geometry.positions[i]) for i in (0, 1)]
    knock = KnockOut(
        tiny, inputs, target="positions", positions=targets, mode="post", layers=[1, 2]
    )

    def naive(pattern, hook):
        pattern = pattern.clone()
        for q in range(pattern.shape[2]):
            if layout.text[q]:
                for k in targets:
                    pattern[0, :, q, k] = 0.0
        return pattern

    with eager_attention(tiny):  # bit for bit: one attention path for both
        expected = forward(tiny, inputs, [(hooks.attn_pattern(layer), naive) for layer in (1, 2)])
        ours = forward(tiny, inputs, knock.fwd_hooks())
    torch.testing.assert_close(ours, expected, atol=0, rtol=0)
    # The row-sparse route (only the blocked rows explicit) within fp32 tolerance.
    torch.testing.assert_close(
        forward(tiny, inputs, knock.fwd_hooks()), expected, atol=1e-5, rtol=0
    )


def test_block_helpers_by_hand():
    scores = torch.zeros(1, 1, 3, 3)
    queries = torch.tensor([[False, True, True]])
    keys = torch.tensor([[True, False, False]])
    blocked = block_scores(scores, queries, keys)
    probs = blocked.softmax(-1)
    assert probs[0, 0, 0].tolist() == pytest.approx([1 / 3] * 3)
    assert probs[0, 0, 1].tolist() == pytest.approx([0.0, 0.5, 0.5])
    zeroed = zero_pattern(torch.full((1, 1, 3, 3), 1 / 3), queries, keys)
    assert zeroed[0, 0, 2].tolist() == pytest.approx([0.0, 1 / 3, 1 / 3])


def test_random_targets_match_sink_counts_and_are_seeded(tiny):
    inputs = _inputs(tiny)
    kwargs = {"dims": [3, 9], "tau": 1.5, "layers": [1, 2]}
    sinks = KnockOut(tiny, inputs, target="sinks", **kwargs)
    forward(tiny, inputs, sinks.fwd_hooks())
    rand_a = KnockOut(tiny, inputs, target="random", seed=1, **kwargs)
    forward(tiny, inputs, rand_a.fwd_hooks())
    rand_b = KnockOut(tiny, inputs, target="random", seed=1, **kwargs)
    forward(tiny, inputs, rand_b.fwd_hooks())
    for layer in (1, 2):
        pool = inputs.visual & ~sinks.keys[layer]
        assert rand_a.keys[layer].sum() == min(sinks.keys[layer].sum(), pool.sum())
        assert not (rand_a.keys[layer] & ~pool).any()
        assert torch.equal(rand_a.keys[layer], rand_b.keys[layer])
        assert not (rand_a.keys[layer] & sinks.keys[layer]).any()


def test_knockout_in_generation_runs(tiny):
    inputs = _inputs(tiny)
    knock = KnockOut(tiny, inputs, target="visual")
    out = generate(tiny, inputs, max_new_tokens=4, fwd_hooks=knock.fwd_hooks())
    assert len(out.tokens) == 1


def test_ablate_reports_conditions(tiny_models):
    model = tiny_models["llava"]
    inputs = _inputs(model)
    result = ablate(
        model,
        inputs,
        targets=["visual", "random"],
        answers=["yes", "no"],
        dims=[3, 9],
        tau=1.5,
        draws=2,
    )
    assert result.conditions == ["baseline", "visual", "random[0]", "random[1]"]
    assert result.answer_logprob.shape == (4, 1, 2)
    assert result.kl[0].eq(0).all()
    assert (result.kl[1] > 0).all()
    summary = result.summary()
    assert summary["baseline"]["delta_logprob_mean"] == 0.0
    with pytest.raises(ValueError, match="Unknown target"):
        KnockOut(model, inputs, target="everything")


def test_random_keys_do_not_depend_on_padding():
    sinks = torch.tensor([[0, 1, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    pool = torch.tensor([[1, 0, 0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    drawn = random_keys(sinks, pool, [123])
    assert int(drawn.sum()) == 2
    assert not (drawn & ~pool).any()
    padded = random_keys(
        torch.nn.functional.pad(sinks, (3, 0)), torch.nn.functional.pad(pool, (3, 0)), [123]
    )
    assert torch.equal(padded[:, 3:], drawn)


def test_random_draw_follows_the_sample_key_not_the_batch(tiny_models):
    """With sample keys, an item's random tokens do not depend on its batch mates or row."""
    model = tiny_models["llava"]
    first = (make_image(seed=5), "describe")
    second = (make_image(36, 30, seed=6), "is there a red object in the image ?")
    together = build_batch(model, [first, second])
    alone = build_batch(model, [second])
    drawn = []
    for inputs, keys in ((together, ["a", "b"]), (alone, ["b"])):
        knock = KnockOut(
            model, inputs, target="random", dims=[3, 9], tau=1.5, seed=7, sample_keys=keys
        )
        forward(model, inputs, knock.fwd_hooks())
        drawn.append(knock.keys)
    n_alone = alone.input_ids.shape[1]
    counts = 0
    for layer, keys in drawn[1].items():
        assert torch.equal(drawn[0][layer][1, -n_alone:], keys[0])
        counts += int(keys.sum())
    assert counts > 0
    with pytest.raises(ValueError, match="sample keys"):
        KnockOut(model, alone, target="random", dims=[3], sample_keys=["a", "b"])


def test_out_of_range_layers_are_refused(tiny_models):
    model = tiny_models["llava"]
    inputs = _inputs(model)
    for layers in ([model.n_layers], [-1]):
        with pytest.raises(ValueError, match="out of range"):
            KnockOut(model, inputs, target="visual", layers=layers)
