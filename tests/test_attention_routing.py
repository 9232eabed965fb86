"""The fast attention routes (analysis.attention) against the bridge's eager path.

Every test runs the same inputs twice, once as routed (SDPA, additive masks,
row-sparse patterns) and once inside :func:`eager_attention` (today's eager
path, every layer), on every family with a left-padded batch, and asserts the
logits agree within 1e-5 (fp32), in forward and in cached generation.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import make_image

from analysis import hooks
from analysis.ablation import KnockOut
from analysis.attention import N_QUERY_KEY, ROWS_KEY, eager_attention, route_of, row_sparse_hook
from analysis.capture import forward
from analysis.generation import generate, reference_greedy
from analysis.tokens import ModelInputs, build_batch
from analysis.var import VarConfig, VarIntervention

pytestmark = pytest.mark.invariant

ATOL = 1e-5
STEPS = 4
STRONG = VarConfig(p=1.0, rho=0.0, min_image_attention=0.0)


def _two(model) -> ModelInputs:
    return build_batch(
        model,
        [
            (make_image(seed=1), "is there a red object in the image ?"),
            (make_image(36, 30, seed=2), "describe"),
        ],
    )


def _planted(inputs: ModelInputs, length: int | None = None) -> torch.Tensor:
    """BOS and the first visual token of each sample as sinks (random weights have none)."""
    sinks = torch.zeros(inputs.input_ids.shape, dtype=torch.bool)
    for index, layout in enumerate(inputs.layouts):
        if layout.bos_position is not None:
            sinks[index, layout.bos_position] = True
        sinks[index, int(layout.geometry.positions[0])] = True
    if length is not None:
        sinks = torch.nn.functional.pad(sinks, (0, length - sinks.shape[1]))
    return sinks


def _var(model, inputs: ModelInputs) -> VarIntervention:
    config = replace(STRONG, layers=tuple(range(model.n_layers)))
    return VarIntervention(model, inputs, dims=None, sinks=_planted(inputs), config=config)


def _valid_logits(logits: torch.Tensor, inputs: ModelInputs) -> torch.Tensor:
    return logits[inputs.stack("attention_mask").bool()]


def _assert_same_record(a: VarIntervention, b: VarIntervention) -> None:
    """Same rows eligible and changed; mass moved equal within fp tolerance."""
    ra, rb = a.record(), b.record()
    for name in ("prefill_rows", "prefill_changed", "decode_rows", "decode_changed"):
        assert getattr(ra, name) == getattr(rb, name), name
    for name in ("prefill_mass", "decode_mass"):
        torch.testing.assert_close(getattr(ra, name), getattr(rb, name), atol=1e-5, rtol=1e-5)


def _assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_plain_forward_runs_sdpa_and_equals_eager(tiny):
    inputs = _two(tiny)
    assert {route_of(tiny, layer) for layer in range(tiny.n_layers)} == {"sdpa"}
    fast = forward(tiny, inputs)
    with eager_attention(tiny):
        assert route_of(tiny, 0) == "eager"
        eager = forward(tiny, inputs)
    _assert_close(_valid_logits(fast, inputs), _valid_logits(eager, inputs))


def test_logits_to_keep_equals_the_last_positions_of_the_full_forward(tiny):
    inputs = _two(tiny)
    full = forward(tiny, inputs)
    last = forward(tiny, inputs, logits_to_keep=1)
    assert last.shape == (inputs.batch_size, 1, full.shape[-1])
    _assert_close(last, full[:, -1:])


def test_row_sparse_var_forward_equals_eager_var(tiny):
    inputs = _two(tiny)
    fast_var, eager_var = _var(tiny, inputs), _var(tiny, inputs)
    with tiny.bridge.hooks(fwd_hooks=fast_var.fwd_hooks()):
        assert {route_of(tiny, layer) for layer in range(tiny.n_layers)} == {"rows"}
    fast = forward(tiny, inputs, fast_var.fwd_hooks())
    with eager_attention(tiny):
        eager = forward(tiny, inputs, eager_var.fwd_hooks())
        baseline = forward(tiny, inputs)
    _assert_close(_valid_logits(fast, inputs), _valid_logits(eager, inputs))
    _assert_same_record(fast_var, eager_var)
    assert fast_var.record().total_changed > 0
    moved = (_valid_logits(eager, inputs) - _valid_logits(baseline, inputs)).abs().max()
    assert moved > 1e-3, "VAR must change the logits for this test to mean anything"


@pytest.mark.parametrize("mode", ["pre", "post"])
def test_knock_out_on_fast_routes_equals_eager_knock_out(tiny, mode):
    inputs = _two(tiny)
    positions = [int(inputs.layouts[0].geometry.positions[i]) for i in (0, 1, 2)]

    def knock() -> KnockOut:
        return KnockOut(tiny, inputs, target="positions", positions=positions, mode=mode)

    fast_ko, eager_ko = knock(), knock()
    with tiny.bridge.hooks(fwd_hooks=fast_ko.fwd_hooks()):
        assert route_of(tiny, 0) == ("sdpa" if mode == "pre" else "rows")
    fast = forward(tiny, inputs, fast_ko.fwd_hooks())
    with eager_attention(tiny):
        eager = forward(tiny, inputs, eager_ko.fwd_hooks())
        baseline = forward(tiny, inputs)
    _assert_close(_valid_logits(fast, inputs), _valid_logits(eager, inputs))
    assert (_valid_logits(eager, inputs) - _valid_logits(baseline, inputs)).abs().max() > 1e-4


def _generate(model, inputs, hooks_=()):
    return generate(
        model,
        inputs,
        max_new_tokens=STEPS,
        fwd_hooks=hooks_,
        stop_at_eos=False,
        keep_logits=True,
    )


def _assert_same_generation(a, b) -> None:
    assert a.tokens == b.tokens
    for step, (x, y) in enumerate(zip(a.step_logits, b.step_logits, strict=True)):
        torch.testing.assert_close(x, y, atol=ATOL, rtol=0, msg=f"step {step}")


def test_cached_generation_with_var_on_fast_routes_equals_eager_and_uncached(tiny):
    inputs = _two(tiny)
    plain_fast = _generate(tiny, inputs)
    fast_var = _var(tiny, inputs)
    var_fast = _generate(tiny, inputs, fast_var.fwd_hooks())
    with eager_attention(tiny):
        plain_eager = _generate(tiny, inputs)
        eager_var = _var(tiny, inputs)
        var_eager = _generate(tiny, inputs, eager_var.fwd_hooks())
    _assert_same_generation(plain_fast, plain_eager)
    _assert_same_generation(var_fast, var_eager)
    assert sum(fast_var.record().decode_changed) > 0
    _assert_same_record(fast_var, eager_var)

    config = replace(STRONG, layers=tuple(range(tiny.n_layers)))

    def make(extended: ModelInputs):
        sinks = _planted(inputs, extended.input_ids.shape[1])
        return VarIntervention(tiny, extended, dims=None, sinks=sinks, config=config).fwd_hooks()

    reference = reference_greedy(tiny, inputs, max_new_tokens=STEPS, make_hooks=make)
    assert var_fast.tokens == reference.tokens
    for x, y in zip(var_fast.step_logits, reference.step_logits, strict=True):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=0)


def test_a_plain_pattern_hook_gets_the_full_pattern_and_makes_only_its_layer_eager(tiny):
    inputs = _two(tiny)
    n_pos = inputs.input_ids.shape[1]
    shapes: list[tuple[int, ...]] = []

    def spy(pattern: torch.Tensor, hook) -> None:
        assert ROWS_KEY not in hook.ctx
        shapes.append(tuple(pattern.shape))

    fast_var, eager_var = _var(tiny, inputs), _var(tiny, inputs)
    extra = [(hooks.attn_pattern(1), spy)]
    with tiny.bridge.hooks(fwd_hooks=fast_var.fwd_hooks() + extra):
        routes = [route_of(tiny, layer) for layer in range(tiny.n_layers)]
    assert routes[1] == "eager"
    assert set(routes[:1] + routes[2:]) == {"rows"}
    mixed = forward(tiny, inputs, fast_var.fwd_hooks() + extra)
    assert shapes == [(inputs.batch_size, tiny.n_heads, n_pos, n_pos)]
    with eager_attention(tiny):
        eager = forward(tiny, inputs, eager_var.fwd_hooks())
    _assert_close(_valid_logits(mixed, inputs), _valid_logits(eager, inputs))


def test_a_row_sparse_hook_receives_only_its_rows_with_their_index(tiny):
    inputs = _two(tiny)
    n_pos = inputs.input_ids.shape[1]
    wanted = torch.tensor([n_pos - 3, n_pos - 1])
    got: dict[str, object] = {}

    def edit(pattern: torch.Tensor, hook) -> torch.Tensor:
        got["shape"], got["rows"], got["n"] = (
            pattern.shape,
            hook.ctx[ROWS_KEY],
            hook.ctx[N_QUERY_KEY],
        )
        return pattern * 0.5

    def full_edit(pattern: torch.Tensor, hook) -> torch.Tensor:
        out = pattern.clone()
        out[:, :, wanted] = pattern[:, :, wanted] * 0.5
        return out

    sparse = [(hooks.attn_pattern(2), row_sparse_hook(edit, lambda q, k, device: wanted))]
    fast = forward(tiny, inputs, sparse)
    assert got["shape"] == (inputs.batch_size, tiny.n_heads, 2, n_pos)
    assert got["rows"].tolist() == wanted.tolist()
    assert got["n"] == n_pos
    with eager_attention(tiny):
        eager = forward(tiny, inputs, [(hooks.attn_pattern(2), full_edit)])
    _assert_close(_valid_logits(fast, inputs), _valid_logits(eager, inputs))


def test_pattern_statistics_on_row_sparse_routes_equal_eager(tiny):
    """Head scores, received attention, attention maps and the attention-mass truth read
    only text-query rows: row-sparse routes give the eager path's numbers."""
    from analysis.capture import attention_maps, attention_received
    from analysis.heads import score_heads
    from analysis.sinks import attention_mass_truth

    inputs = _two(tiny)
    dims = [0, 1]
    views = [(1, 0), (2, None)]

    def run() -> dict[str, torch.Tensor]:
        heads = score_heads(tiny, inputs, dims=dims, show_progress=False)
        received = attention_received(tiny, inputs, dims=dims)
        maps = attention_maps(tiny, inputs, views=views, queries=(0, -1), dims=dims)
        truth = attention_mass_truth(tiny, inputs)
        return {
            "s": heads.s * heads.queries[:, None, None, :],
            "r": heads.r * heads.queries[:, None, None, :],
            "received": received.received,
            "maps": maps.attention.nan_to_num(-1.0),
            "truth": torch.cat([t.float() for t in truth]),
        }

    fast = run()
    with eager_attention(tiny):
        eager = run()
    for name in fast:
        torch.testing.assert_close(fast[name], eager[name], atol=ATOL, rtol=0, msg=name)


def test_run_with_cache_gets_full_patterns_from_the_eager_path(tiny):
    inputs = _two(tiny)
    n_pos = inputs.input_ids.shape[1]
    with torch.no_grad():
        logits, cache = tiny.bridge.run_with_cache(
            inputs.input_ids, **inputs.forward_kwargs(tiny.device)
        )
    pattern = cache[hooks.attn_pattern(0)]
    assert pattern.shape == (inputs.batch_size, tiny.n_heads, n_pos, n_pos)
    with eager_attention(tiny):
        eager = forward(tiny, inputs)
    _assert_close(_valid_logits(logits, inputs), _valid_logits(eager, inputs))
