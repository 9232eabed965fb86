"""VAR as a hook intervention: plumbing, identity, effect, generation with a KV cache."""

from __future__ import annotations

import pytest
import torch
from conftest import make_image

from analysis import hooks
from analysis.attention import eager_attention
from analysis.capture import bind, forward
from analysis.generation import generate
from analysis.testing.planted import object_truth, sink_truth
from analysis.tokens import build_batch
from analysis.var import (
    VarConfig,
    VarIntervention,
    default_var_layers,
    redistribute_attention,
    run_with_var,
)

LOOSE = VarConfig(p=0.6, rho=0.0, min_image_attention=0.0, layers=(1, 2))


def _inputs(model):
    return build_batch(
        model,
        [
            (make_image(seed=1), "is there a red object in the image ?"),
            (make_image(36, 30, seed=2), "describe"),
        ],
    )


def _planted_sinks(inputs):
    """BOS (where the family has one) and the first visual token of every sample: random
    models have no sinks of their own."""
    sinks = torch.zeros(inputs.input_ids.shape, dtype=torch.bool)
    for index, layout in enumerate(inputs.layouts):
        if layout.bos_position is not None:
            sinks[index, layout.bos_position] = True
        sinks[index, int(layout.geometry.positions[0])] = True
    return sinks


def test_default_layers():
    assert default_var_layers(32) == list(range(2, 31))
    assert default_var_layers(4) == [2]
    assert default_var_layers(2) == []


def test_config_validation():
    with pytest.raises(ValueError, match="p must be in"):
        VarConfig(p=1.5)
    with pytest.raises(ValueError, match="tau must be positive"):
        VarConfig(tau=0)


def test_p_zero_is_exact_identity(tiny):
    # Bit for bit on one attention path (the eager one: the fast route recomputes the
    # VAR rows explicitly, equal to SDPA's within fp tolerance, see test_attention_routing).
    inputs = _inputs(tiny)
    with eager_attention(tiny):
        base = forward(tiny, inputs)
        logits, record = run_with_var(
            tiny,
            inputs,
            dims=None,
            sinks=_planted_sinks(inputs),
            config=VarConfig(p=0.0, rho=0, min_image_attention=0, layers=(1, 2)),
        )
    assert torch.equal(base, logits)
    assert record.total_mass == 0.0


def test_hooks_match_hand_written_reference(tiny):
    """The intervention equals calling the pure function in a hook built from raw input ids."""
    inputs = _inputs(tiny)
    sinks = _planted_sinks(inputs)
    ids = inputs.input_ids
    visual = ids == tiny.image_token_id
    last_visual = torch.stack([torch.nonzero(row).max() for row in visual])
    positions = torch.arange(ids.shape[1])
    queries = (positions[None] > last_visual[:, None]) & inputs.tensors["attention_mask"].bool()

    def reference(pattern, hook):
        return redistribute_attention(
            pattern,
            visual=visual,
            sinks=sinks,
            queries=queries,
            p=0.6,
            rho=0.0,
            min_image_attention=0.0,
        )

    with eager_attention(tiny):  # bit for bit: one attention path for both
        expected = forward(
            tiny, inputs, [(hooks.attn_pattern(layer), reference) for layer in (1, 2)]
        )
        logits, record = run_with_var(tiny, inputs, dims=None, sinks=sinks, config=LOOSE)
        base = forward(tiny, inputs)
    assert torch.equal(logits, expected)
    assert (logits - base).abs().max() > 1e-4
    assert sum(record.prefill_changed) > 0
    assert record.prefill_rows == [int(queries.sum()) * tiny.n_heads] * 2
    assert record.decode_changed == [0, 0]
    assert record.visual_sinks == [2, 2]  # one visual sink per sample, both layers
    assert record.total_mass > 0


def test_no_visual_sink_means_no_change(tiny):
    inputs = _inputs(tiny)
    only_bos = torch.zeros(inputs.input_ids.shape, dtype=torch.bool)
    for index, layout in enumerate(inputs.layouts):
        # A text sink only: BOS, or the first token of a family without one (Qwen2).
        first = layout.bos_position if layout.bos_position is not None else layout.first_position
        only_bos[index, first] = True
    with eager_attention(tiny):
        base = forward(tiny, inputs)
        logits, record = run_with_var(tiny, inputs, dims=None, sinks=only_bos, config=LOOSE)
    assert torch.equal(base, logits)
    assert record.summary()["noop"] is True


def test_phi_sinks_on_random_model_are_a_recorded_noop(tiny):
    inputs = _inputs(tiny)
    with eager_attention(tiny):
        logits, record = run_with_var(tiny, inputs, dims=[0, 1], config=VarConfig(layers=(1, 2)))
        assert torch.equal(logits, forward(tiny, inputs))
    assert record.visual_sinks == [0, 0]


def test_generation_with_var_batch_equals_single(tiny):
    inputs = _inputs(tiny)
    sinks = _planted_sinks(inputs)
    intervention = VarIntervention(tiny, inputs, dims=None, sinks=sinks, config=LOOSE)
    batched = generate(tiny, inputs, max_new_tokens=5, fwd_hooks=intervention.fwd_hooks())
    record = intervention.record()
    assert sum(record.decode_rows) > 0
    assert sum(record.decode_changed) > 0
    for index in range(2):
        single = inputs.select(index)
        start = inputs.layouts[index].first_position
        one = VarIntervention(
            tiny, single, dims=None, sinks=sinks[index : index + 1, start:], config=LOOSE
        )
        alone = generate(tiny, single, max_new_tokens=5, fwd_hooks=one.fwd_hooks())
        assert alone.tokens[0] == batched.tokens[index]
    # The first generated token is the argmax of the VAR forward's last position.
    logits, _ = run_with_var(tiny, inputs, dims=None, sinks=sinks, config=LOOSE)
    first = logits[:, -1].argmax(-1).tolist()
    for index in range(2):
        if batched.tokens[index]:
            assert batched.tokens[index][0] == first[index]


def test_generation_with_var_differs_from_baseline_somewhere(tiny):
    inputs = _inputs(tiny)
    strong = VarConfig(p=1.0, rho=0.0, min_image_attention=0.0, layers=tuple(range(tiny.n_layers)))
    intervention = VarIntervention(
        tiny, inputs, dims=None, sinks=_planted_sinks(inputs), config=strong
    )
    with_var = forward(tiny, inputs, intervention.fwd_hooks())
    assert (with_var - forward(tiny, inputs)).abs().max() > 1e-3


def test_per_sample_counts_add_up_and_do_not_depend_on_the_batch(tiny):
    inputs = _inputs(tiny)
    sinks = _planted_sinks(inputs)
    var = VarIntervention(tiny, inputs, dims=None, config=LOOSE, sinks=sinks)
    generate(tiny, inputs, max_new_tokens=3, fwd_hooks=var.fwd_hooks())
    record, rows = var.record(), var.per_sample()
    assert sum(r["prefill_rows_changed"] for r in rows) == sum(record.prefill_changed) > 0
    assert sum(r["decode_rows_changed"] for r in rows) == sum(record.decode_changed) > 0
    assert sum(r["prefill_mass_moved"] for r in rows) == pytest.approx(
        sum(record.prefill_mass), rel=1e-5
    )
    for index in range(inputs.batch_size):
        alone = inputs.select(index)
        single = VarIntervention(tiny, alone, dims=None, config=LOOSE, sinks=_planted_sinks(alone))
        forward(tiny, alone, single.fwd_hooks())
        mine = single.per_sample()[0]
        assert mine["prefill_rows_changed"] == rows[index]["prefill_rows_changed"]
        assert mine["prefill_mass_moved"] == pytest.approx(
            rows[index]["prefill_mass_moved"], rel=1e-4
        )


# ----------------------------------------------------------------------------- planted zoo


def _patterns(model, inputs, layers, fwd_hooks=()):
    """Logits and the attention patterns of ``layers`` as the model used them."""
    store = {}

    def keep(pattern, hook, layer):
        store[layer] = pattern.detach().clone()

    recorders = [(hooks.attn_pattern(layer), bind(keep, layer)) for layer in layers]
    logits = forward(model, inputs, [*fwd_hooks, *recorders])
    return logits, store


def test_zoo_var_moves_sink_attention_to_the_planted_objects(planted):
    """In the planted image-centric heads VAR takes p of the sink attention and gives it
    to the object (most of it: the object holds most non-sink visual attention);
    other heads are untouched and p = 0 is the identity.

    Not recoverable by design: with sinks on BOS only no row is selected, so VAR
    is a no-op (and says so in its record); without sink dims VAR refuses.
    """
    spec, model, inputs = planted.spec, planted.model, planted.inputs
    if not spec.has_sinks:
        with pytest.raises(ValueError, match="at least one sink dim"):
            VarIntervention(model, inputs, dims=[])
        return
    layers = tuple(sorted({layer for layer, _ in spec.image_centric_heads}))
    config = VarConfig(p=0.6, layers=layers)
    base_logits, before = _patterns(model, inputs, layers)
    var = VarIntervention(model, inputs, dims=planted.dims, config=config)
    _, after = _patterns(model, inputs, layers, var.fwd_hooks())
    record = var.record()
    if not spec.visual_sinks:
        assert record.total_changed == 0
        assert record.summary()["noop"]
        assert all(torch.equal(before[layer], after[layer]) for layer in layers)
        return
    sinks = sink_truth(spec, planted.cells, inputs)
    objects = object_truth(spec, planted.cells, inputs)
    queries = inputs.queries
    moved_total = moved_all = 0.0
    for layer in layers:
        sink_keys = sinks[:, layer][:, None, None, :].float()
        obj_keys = objects[:, None, None, :].float()
        sink_before = (before[layer] * sink_keys).sum(-1)
        sink_after = (after[layer] * sink_keys).sum(-1)
        obj_before = (before[layer] * obj_keys).sum(-1)
        obj_after = (after[layer] * obj_keys).sum(-1)
        moved_all += float((sink_before - sink_after).sum())
        for head in range(spec.n_heads):
            rows = queries & (sink_after[:, head] < sink_before[:, head] - 1e-6)
            if (layer, head) in spec.image_centric_heads:
                # Every ordinary text query row of the head is redistributed.
                assert int(rows.sum()) >= int(queries.sum()) - inputs.batch_size
                lost = (sink_before - sink_after)[:, head][rows]
                assert torch.allclose(lost, 0.6 * sink_before[:, head][rows], atol=1e-5)
                # A query that is itself a sink (the delimiter) attends uniformly, so
                # its budget is spread over all non-sink visual keys; others favour
                # the object.
                ordinary = rows & ~sinks[:, layer]
                gained = (obj_after - obj_before)[:, head][ordinary]
                lost_ordinary = (sink_before - sink_after)[:, head][ordinary]
                assert bool((gained > 0.75 * lost_ordinary).all())
                moved_total += float(lost.sum())
            else:
                # Sink heads are not image-centric: at most the delimiter's row changes.
                assert int(rows.sum()) <= inputs.batch_size * int(spec.delimiter_sink)
    assert moved_total > 0.05 * len(spec.image_centric_heads)
    # The record accounts for exactly the mass that left the planted sinks.
    assert record.total_mass == pytest.approx(moved_all, rel=1e-4)
    # p = 0: bit-identical patterns and logits.
    identity = VarIntervention(
        model, inputs, dims=planted.dims, config=VarConfig(p=0.0, layers=layers)
    )
    same_logits, same = _patterns(model, inputs, layers, identity.fwd_hooks())
    assert torch.equal(same_logits, base_logits)
    assert all(torch.equal(same[layer], before[layer]) for layer in layers)
