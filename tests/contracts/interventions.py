"""The contract every condition kind (intervention) keeps, as a mixin of test classes.

A test class inherits :class:`InterventionContract` and sets a few attributes:
``label`` (a condition of the grammar), ``identity_label`` (the same kind with
nothing selected, e.g. ``p=0``), ``edits`` (whether the kind changes the model's
output at all) and optionally ``context`` (BuildContext fields, e.g. a tau
under which no token is a sink). The demo model (planted sink dims and
image-centric heads) provides real sinks; ``model`` and ``dims`` can be
overridden with another planted model.

Checked on every kind: the spec round-trips through ``to_dict`` / ``from_dict``
(and JSON) and through its label; with nothing selected the logits are the
plain forward's; when something is selected they change; a batch of 1 equals
the same sample inside a left-padded batch of 4 (logits and per-sample rows);
``per_sample()`` and the record fields have one row per sample; greedy
generation with a KV cache under the hooks equals the uncached loop of full
forwards under the same hooks (token for token, logits within 1e-4).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pytest
import torch

from analysis.capture import forward
from analysis.generation import generate, reference_greedy
from analysis.interventions import registry
from analysis.interventions.base import BuildContext, ConditionSpec, Intervention
from analysis.loading import DEMO_MODEL_DIR, LoadedModel
from analysis.tokens import ModelInputs, build_batch

IMAGES = DEMO_MODEL_DIR.parent / "images"
# Four prompts of different lengths: a batch of them is left-padded.
PROMPTS = [
    ("demo_00.png", "Is there a red object in the image?"),
    ("demo_01.png", "Do you see a green object in the picture of this image?"),
    ("demo_02.png", "Is there a blue object?"),
    ("demo_03.png", "Is there a yellow object in this picture, anywhere at all?"),
]
STEPS = 4
GENERATION_ATOL = 1e-4  # per-step logits of the cached path vs the uncached loop (fp32)
# Routed attention paths (row-sparse, additive masks) differ in summation order only:
# fp32 noise relative to the largest logit (about 15 on the demo).
ROUTED_TOL = 1e-5
BATCH_ATOL = 1e-4  # a sample alone vs inside a left-padded batch


def _close(a: Any, b: Any, tol: float) -> bool:
    """Nested rows (dicts, lists, numbers) equal within ``tol`` relative to their size."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool | str) or a is None:
        return a == b
    return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(a)))


class InterventionContract:
    """Mixin: set ``label``, ``identity_label`` and ``edits`` (see the module doc)."""

    label: ClassVar[str]
    identity_label: ClassVar[str | None] = None  # default: ``label`` under ``identity_context``
    identity_context: ClassVar[dict[str, Any]] = {}
    context: ClassVar[dict[str, Any]] = {}
    edits: ClassVar[bool] = True
    # Rows of per_sample() compared alone vs in a batch, within this relative tolerance.
    rows_tol: ClassVar[float] = 1e-3

    # ------------------------------------------------------------------ fixtures

    @pytest.fixture
    def model(self, demo_model: LoadedModel) -> LoadedModel:
        return demo_model

    @pytest.fixture
    def dims(self, demo_truth: dict[str, Any]) -> list[int]:
        return list(demo_truth["sink_dims"])

    @pytest.fixture
    def batch(self, model: LoadedModel) -> ModelInputs:
        inputs = build_batch(model, [(IMAGES / image, text) for image, text in PROMPTS])
        assert not bool(inputs.tensors["attention_mask"].bool().all()), "must be left-padded"
        return inputs

    # ------------------------------------------------------------------ helpers

    @property
    def spec(self) -> ConditionSpec:
        (spec,) = registry.parse(self.label)
        return spec

    def build(
        self,
        model: LoadedModel,
        inputs: ModelInputs,
        dims: list[int],
        spec: ConditionSpec | None = None,
        **context: Any,
    ) -> Intervention:
        keys = [f"item{i}" for i in range(inputs.batch_size)]
        settings = BuildContext(dims=dims, sample_keys=keys, **{**self.context, **context})
        return (spec or self.spec).build(model, inputs, settings)

    # ------------------------------------------------------------------ the contract

    def test_spec_round_trips(self) -> None:
        spec = self.spec
        assert type(spec).kind in registry.kinds()
        data = spec.to_dict()
        assert type(spec).from_dict(data) == spec
        assert registry.from_dict(json.loads(json.dumps(data))) == spec
        assert registry.parse(spec.label) == [spec]
        assert spec.describe() == data

    def test_identity_when_nothing_is_selected(self, model, batch, dims) -> None:
        spec = registry.parse(self.identity_label)[0] if self.identity_label else self.spec
        intervention = self.build(model, batch, dims, spec, **self.identity_context)
        logits, plain = forward(model, batch, intervention.fwd_hooks()), forward(model, batch)
        scale = float(plain.abs().amax())
        torch.testing.assert_close(logits, plain, atol=ROUTED_TOL * scale, rtol=0)

    def test_the_edit_changes_the_logits(self, model, batch, dims) -> None:
        intervention = self.build(model, batch, dims)
        logits = forward(model, batch, intervention.fwd_hooks())[:, -1]
        change = (logits - forward(model, batch)[:, -1]).abs().amax().item()
        if self.edits:
            assert change > 1e-3, f"{self.label} changed the logits by only {change:g}"
        else:
            scale = float(logits.abs().amax())
            assert change <= ROUTED_TOL * scale, f"{self.label} should not edit, moved {change:g}"

    def test_per_sample_has_one_row_per_sample(self, model, batch, dims) -> None:
        intervention = self.build(model, batch, dims)
        assert isinstance(intervention, Intervention)  # fwd_hooks, per_sample, summary
        forward(model, batch, intervention.fwd_hooks())
        rows = intervention.per_sample()
        assert len(rows) == batch.batch_size
        assert len(self.spec.record_fields(intervention)) == batch.batch_size
        json.dumps([rows, self.spec.record_fields(intervention), intervention.summary()])

    def test_a_sample_alone_equals_it_in_a_padded_batch(self, model, batch, dims) -> None:
        together = self.build(model, batch, dims)
        logits = forward(model, batch, together.fwd_hooks())[:, -1]
        rows = together.per_sample()
        for index in range(batch.batch_size):
            alone_inputs = batch.select(index)
            # The sample keeps its key (seeded draws follow the item, not the batch).
            settings = BuildContext(dims=dims, sample_keys=[f"item{index}"], **self.context)
            alone = self.spec.build(model, alone_inputs, settings)
            single = forward(model, alone_inputs, alone.fwd_hooks())[:, -1]
            torch.testing.assert_close(single[0], logits[index], atol=BATCH_ATOL, rtol=0)
            assert _close(alone.per_sample()[0], rows[index], self.rows_tol), (
                f"sample {index}: {alone.per_sample()[0]} alone vs {rows[index]} in the batch"
            )

    def test_cached_generation_equals_the_uncached_loop(self, model, batch, dims) -> None:
        # Two samples of different lengths: the cached path decodes a left-padded batch.
        inputs = build_batch(model, [(IMAGES / image, text) for image, text in PROMPTS[:2]])
        hooks = self.build(model, inputs, dims).fwd_hooks()
        cached = generate(
            model,
            inputs,
            max_new_tokens=STEPS,
            fwd_hooks=hooks,
            stop_at_eos=False,
            keep_logits=True,
        )
        reference = reference_greedy(
            model,
            inputs,
            max_new_tokens=STEPS,
            make_hooks=lambda extended: self.build(model, extended, dims).fwd_hooks(),
        )
        assert cached.tokens == reference.tokens
        for step, (a, b) in enumerate(zip(cached.step_logits, reference.step_logits, strict=True)):
            torch.testing.assert_close(a, b, atol=GENERATION_ATOL, rtol=0, msg=f"step {step}")
