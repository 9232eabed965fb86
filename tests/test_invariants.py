"""Invariants of the interventions that hold in any supported environment, on every family.

KV-cache greedy generation under VAR hooks and knock-out hooks equals an
uncached loop of full forwards under the same hooks (token for token, per-step
logits within 1e-4 in fp32); a cache that is not filled raises instead of
decoding without the prompt. Without hooks (cached == uncached, padded batch ==
each sample alone) they are family contracts (``tests/contracts/families.py``).
They do not use the demo model, and ``make test-alt`` / ``make canary`` run them
(marker ``invariant``) under other transformers releases.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import transformers
from contracts.families import STEPS
from contracts.families import assert_same as _assert_same
from contracts.families import cached as _cached
from contracts.families import one as _one
from contracts.families import two as _two
from packaging.version import Version

from analysis.ablation import KnockOut
from analysis.compat import CacheError, install_cache_compat, remove_cache_compat
from analysis.generation import generate, reference_greedy
from analysis.tokens import ModelInputs
from analysis.var import VarConfig, VarIntervention

pytestmark = pytest.mark.invariant

STRONG = VarConfig(p=1.0, rho=0.0, min_image_attention=0.0)


def _planted_sinks(inputs: ModelInputs) -> torch.Tensor:
    """BOS and the first visual token of each sample (random weights have no sinks)."""
    sinks = torch.zeros(inputs.input_ids.shape, dtype=torch.bool)
    for index, layout in enumerate(inputs.layouts):
        if layout.bos_position is not None:
            sinks[index, layout.bos_position] = True
        sinks[index, int(layout.geometry.positions[0])] = True
    return sinks


def _pad_to(mask: torch.Tensor, length: int) -> torch.Tensor:
    return torch.nn.functional.pad(mask, (0, length - mask.shape[1]))


def _var_hooks(model, sinks: torch.Tensor, config: VarConfig):
    def make(inputs: ModelInputs):
        planted = _pad_to(sinks, inputs.input_ids.shape[1])
        return VarIntervention(model, inputs, dims=None, sinks=planted, config=config).fwd_hooks()

    return make


def test_generation_with_var_equals_uncached_loop_with_var(tiny):
    inputs = _two(tiny)
    config = replace(STRONG, layers=tuple(range(tiny.n_layers)))
    make = _var_hooks(tiny, _planted_sinks(inputs), config)
    var = VarIntervention(tiny, inputs, dims=None, sinks=_planted_sinks(inputs), config=config)
    cached = _cached(tiny, inputs, var.fwd_hooks())
    assert sum(var.record().decode_changed) > 0, "VAR must act on the decoding rows"
    _assert_same(cached, reference_greedy(tiny, inputs, max_new_tokens=STEPS, make_hooks=make))
    baseline = _cached(tiny, inputs)
    moved = max(
        (a - b).abs().max().item()
        for a, b in zip(cached.step_logits, baseline.step_logits, strict=True)
    )
    assert moved > 1e-3, "the VAR hooks must change the logits for this test to mean anything"


@pytest.mark.parametrize(
    ("target", "mode"), [("visual", "pre"), ("visual", "post"), ("sinks", "pre")]
)
def test_generation_with_knockout_equals_uncached_loop_with_knockout(tiny, target, mode):
    inputs = _two(tiny)
    kwargs = {"target": target, "mode": mode}
    if target == "sinks":  # phi on a random model: a low tau finds some visual "sinks"
        kwargs.update(dims=[3, 9], tau=1.5)
    knock = KnockOut(tiny, inputs, **kwargs)
    cached = _cached(tiny, inputs, knock.fwd_hooks())
    if target == "sinks":
        assert any(sum(n) > 0 for n in knock.blocked_counts().values())
    reference = reference_greedy(
        tiny,
        inputs,
        max_new_tokens=STEPS,
        make_hooks=lambda ext: KnockOut(tiny, ext, **kwargs).fwd_hooks(),
    )
    _assert_same(cached, reference)
    baseline = _cached(tiny, inputs)
    moved = max(
        (a - b).abs().max().item()
        for a, b in zip(cached.step_logits, baseline.step_logits, strict=True)
    )
    assert moved > 1e-4, "the knock-out must change the logits for this test to mean anything"


def _drop_cache_kwargs(module, args, kwargs):
    """Simulate an upstream rename nobody handles: attention never sees the cache."""
    return args, {k: v for k, v in kwargs.items() if k not in ("cache", "past_key_values")}


def test_an_unfilled_cache_raises_instead_of_decoding_wrongly(tiny_models):
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    model = tiny_models["llava"]
    handles = [
        m.register_forward_pre_hook(_drop_cache_kwargs, with_kwargs=True, prepend=True)
        for m in model.bridge.modules()
        if isinstance(m, AttentionBridge)
    ]
    try:
        with pytest.raises(CacheError, match=r"cache holds 0 positions.*transformers"):
            generate(model, _one(model), max_new_tokens=3)
    finally:
        for handle in handles:
            handle.remove()
    generate(model, _one(model), max_new_tokens=3)  # healthy again


@pytest.mark.skipif(
    Version(transformers.__version__) < Version("5.24"),
    reason="transformers < 5.24 passes the cache as past_key_values: nothing to hand on",
)
def test_without_the_compat_layer_524_breaks_and_the_guard_says_so(tiny_models):
    model = tiny_models["llava"]
    assert remove_cache_compat(model.bridge) > 0
    try:
        with pytest.raises(CacheError, match="cache holds 0 positions"):
            generate(model, _one(model), max_new_tokens=3)
    finally:
        assert install_cache_compat(model.bridge) > 0
    generate(model, _one(model), max_new_tokens=3)
