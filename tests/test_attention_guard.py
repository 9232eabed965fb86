"""The attention-edit guard: it passes where edits take effect and refuses, in one line, where not.

The refusal case is real, not mocked: Qwen2.5-VL with its attention routing
switched off is exactly TransformerLens' HF-native attention, whose
``hook_pattern`` fires after the fact and whose ``hook_attn_scores`` gets the
post-softmax weights.
"""

from __future__ import annotations

import pytest
import torch

from analysis import attention_guard
from analysis.attention import install_native_routing, remove_native_routing
from analysis.attention_guard import (
    EDITS_KEY,
    AttentionEditsError,
    attention_edits,
    probe_attention_edits,
    require_attention_edits,
    rows_equal,
)
from analysis.families import AttentionEdits
from analysis.loading import LoadedModel

QWEN = "qwen2_5_vl"


@pytest.fixture
def fresh(tiny: LoadedModel) -> LoadedModel:
    """``tiny`` with its cached probe result dropped (restored after the test)."""
    cached = tiny.extra.pop(EDITS_KEY, None)
    yield tiny
    tiny.extra.pop(EDITS_KEY, None)
    if cached is not None:
        tiny.extra[EDITS_KEY] = cached


def test_rows_equal_measures_the_spread_relative_to_row_zero():
    same = torch.ones(1, 4, 3) * torch.tensor([1.0, -2.0, 3.0])
    assert float(rows_equal(same, torch.float32)) == 0.0
    different = same.clone()
    different[0, 2, 1] = -1.0  # one entry off by 1 where the largest entry is 3
    assert float(rows_equal(different, torch.float32)) == pytest.approx(1 / 3)


def test_every_family_declares_what_the_probe_measures(fresh):
    """The declared capability (Family.attention_edits) is the measured one."""
    measured = probe_attention_edits(fresh)
    declared = fresh.family.attention_edits
    assert (measured.pattern, measured.scores) == (declared.pattern, declared.scores), (
        measured.reason
    )


def test_the_guard_passes_where_edits_take_effect(fresh):
    require_attention_edits(fresh, "VAR")
    require_attention_edits(fresh, "A pre-softmax knock-out", scores=True)
    assert fresh.extra[EDITS_KEY] == AttentionEdits(pattern=True, scores=True, reason="")


def test_the_probe_runs_once_per_model(fresh, monkeypatch):
    require_attention_edits(fresh, "VAR")

    def no_second_probe(model):
        raise AssertionError("probed twice")

    monkeypatch.setattr(attention_guard, "probe_attention_edits", no_second_probe)
    require_attention_edits(fresh, "VAR")
    require_attention_edits(fresh, "A knock-out", scores=True)


def test_qwen_without_its_routing_is_refused_in_one_line(tiny_models):
    model = tiny_models[QWEN]
    cached = model.extra.pop(EDITS_KEY, None)
    remove_native_routing(model.bridge)
    try:
        edits = attention_edits(model)
        assert not edits.pattern
        assert not edits.scores
        for what, scores in (("VAR", False), ("A pre-softmax knock-out", True)):
            with pytest.raises(AttentionEditsError) as err:
                require_attention_edits(model, what, scores=scores)
            message = str(err.value)
            assert "\n" not in message
            assert message.startswith(what)
            assert QWEN in message
            assert "hook_pattern does not reach the attention output" in message
    finally:
        assert install_native_routing(model.bridge) == model.n_layers
        model.extra.pop(EDITS_KEY, None)
    # Routed again, the same model passes (and the probe says why it did not before).
    require_attention_edits(model, "VAR", scores=True)
    if cached is not None:
        model.extra[EDITS_KEY] = cached


def test_var_and_knock_outs_refuse_on_qwen_without_its_routing(tiny_models):
    """The guard is wired into the interventions: their constructors refuse, in one line."""
    from conftest import make_image

    from analysis.ablation import KnockOut
    from analysis.tokens import build_batch
    from analysis.var import VarConfig, VarIntervention

    model = tiny_models[QWEN]
    inputs = build_batch(model, [(make_image(seed=1), "describe")])
    sinks = torch.zeros(inputs.input_ids.shape, dtype=torch.bool)
    sinks[0, int(inputs.layouts[0].geometry.positions[0])] = True
    positions = [int(p) for p in inputs.layouts[0].geometry.positions[:2]]

    def build_all() -> None:
        VarIntervention(model, inputs, dims=None, sinks=sinks, config=VarConfig(layers=(1, 2)))
        for mode in ("pre", "post"):
            KnockOut(model, inputs, target="positions", positions=positions, mode=mode)

    cached = model.extra.pop(EDITS_KEY, None)
    remove_native_routing(model.bridge)
    try:
        with pytest.raises(
            AttentionEditsError, match=f"^VAR needs attention-pattern edits.*{QWEN}"
        ):
            VarIntervention(model, inputs, dims=None, sinks=sinks, config=VarConfig(layers=(1,)))
        for mode in ("pre", "post"):
            with pytest.raises(AttentionEditsError, match=f"^A {mode}-softmax knock-out"):
                KnockOut(model, inputs, target="positions", positions=positions, mode=mode)
    finally:
        install_native_routing(model.bridge)
        model.extra.pop(EDITS_KEY, None)
    build_all()  # routed: all three build
    if cached is not None:
        model.extra[EDITS_KEY] = cached


def test_an_eval_run_refuses_before_its_baseline_runs(tiny_models, tmp_path, monkeypatch):
    """The conditions that edit attention are checked up front, not at their first batch."""
    from analysis import evaluation
    from analysis.datasets import read_pope
    from analysis.interventions import registry
    from analysis.loading import DEMO_MODEL_DIR

    kinds = {c.name: c.attention_edit for c in registry.parse("baseline,var,ablate-sinks")}
    assert kinds == {"baseline": None, "var": "pattern", "ablate-sinks": "scores"}
    assert registry.parse("ablate-sinks:mode=post")[0].attention_edit == "pattern"

    demo = DEMO_MODEL_DIR.parent
    items = read_pope(demo / "questions.jsonl", demo / "images")[:2]
    model = tiny_models[QWEN]

    def no_forward(*args, **kwargs):
        raise AssertionError("the run started before refusing")

    import analysis.eval.run as run

    monkeypatch.setattr(run, "progress", no_forward)
    cached = model.extra.pop(EDITS_KEY, None)
    remove_native_routing(model.bridge)
    try:
        with pytest.raises(AttentionEditsError, match=r"^Condition 'var' needs attention-pattern"):
            evaluation.evaluate(
                model,
                items,
                out=tmp_path / "run",
                conditions="baseline,var",
                dims=[0, 1],
                max_new_tokens=1,
                show_progress=False,
            )
    finally:
        install_native_routing(model.bridge)
        model.extra.pop(EDITS_KEY, None)
        if cached is not None:
            model.extra[EDITS_KEY] = cached


def test_post_softmax_scores_alone_refuse_only_score_edits(tiny_models, monkeypatch):
    """A model whose pattern edits work but whose score hook is post-softmax."""
    model = tiny_models["llava"]
    partial = AttentionEdits(pattern=True, scores=False, reason="scores arrive post-softmax")
    monkeypatch.setitem(model.extra, EDITS_KEY, partial)
    require_attention_edits(model, "VAR")
    with pytest.raises(AttentionEditsError, match=r"pre-softmax score edits.*post-softmax"):
        require_attention_edits(model, "A pre-softmax knock-out", scores=True)


def test_a_declared_incapability_refuses_without_probing(tiny_models, monkeypatch):
    model = tiny_models["llava"]
    family = type(model.family)
    declared = AttentionEdits(pattern=False, scores=False, reason="attention is fused")
    monkeypatch.setattr(family, "attention_edits", declared)

    def no_probe(model):
        raise AssertionError("a declared incapability needs no probe")

    monkeypatch.setattr(attention_guard, "probe_attention_edits", no_probe)
    with pytest.raises(AttentionEditsError, match="attention is fused"):
        require_attention_edits(model, "VAR")


def test_the_probe_sees_a_discarded_edit_on_one_layer_only(tiny_models, monkeypatch):
    """Route every Qwen layer but the last back to HF-native: the probe names that layer."""
    model = tiny_models[QWEN]
    hf_attn = model.bridge.blocks[model.n_layers - 1].attn.original_component
    # That one layer computes attention with HF's own eager function, as without routing.
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl

    original = hf_attn.config._attn_implementation
    monkeypatch.setattr(
        type(hf_attn),
        "forward",
        _native_forward_for(hf_attn, modeling_qwen2_5_vl.eager_attention_forward),
    )
    edits = probe_attention_edits(model)
    assert hf_attn.config._attn_implementation == original
    assert not edits.pattern
    assert f"blocks.{model.n_layers - 1}.attn.hook_pattern" in edits.reason


def _native_forward_for(target, eager):
    """A forward for the HF attention class that runs HF's own eager attention on ``target`` only."""
    cls = type(target)
    routed = cls.forward

    def forward(self, *args, **kwargs):
        if self is not target:
            return routed(self, *args, **kwargs)
        from transformers import modeling_utils

        previous = modeling_utils.ALL_ATTENTION_FUNCTIONS.get_interface
        try:
            modeling_utils.ALL_ATTENTION_FUNCTIONS.get_interface = lambda name, default: eager
            return routed(self, *args, **kwargs)
        finally:
            modeling_utils.ALL_ATTENTION_FUNCTIONS.get_interface = previous

    return forward
