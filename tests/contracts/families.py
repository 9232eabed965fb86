"""The contract every LMM family passes, inherited by one test class per family.

A family's test class (``tests/test_family_contracts.py``) sets ``family`` and,
where the defaults do not fit, ``spec`` (a :class:`~analysis.tiny.TinySpec`),
``image_sizes`` and ``bad_values``; every test below then runs on its tiny
random model, against ground truth that does not come from the code under
test: HF's own logits, the processor's own image-token counts, an uncached
loop of full forwards, each sample run alone.

The tests marked ``invariant`` (HF parity, edits take effect, cached ==
uncached, padded batch == alone) also run under a second transformers release
(``make test-alt``) and the newest releases (``make canary``).

The generation helpers here (:func:`one`, :func:`two`, :func:`cached`,
:func:`assert_same`) are shared with the intervention invariants.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from conftest import make_image
from transformers import AutoConfig, AutoModelForImageTextToText

from analysis import hooks
from analysis.families import Family, UnsupportedConfigError, get
from analysis.generation import Generation, generate, reference_greedy
from analysis.loading import LoadedModel, load_model
from analysis.tiny import TinySpec, build_tiny_model
from analysis.tokens import ModelInputs, build_batch, build_inputs, format_prompt

STEPS = 6  # EOS disabled: every run decodes exactly this many tokens
ATOL = 1e-4  # per-step logits, cached vs uncached, fp32
PARITY_ATOL = 1e-5  # bridge vs HF logits, fp32

# --------------------------------------------------------------------------- shared helpers


def one(model: LoadedModel) -> ModelInputs:
    return build_inputs(model, make_image(seed=1), "is there a red object in the image ?")


def two(model: LoadedModel) -> ModelInputs:
    """Two samples of different lengths (left padding), different image sizes."""
    return build_batch(
        model,
        [
            (make_image(seed=1), "is there a red object in the image ?"),
            (make_image(36, 30, seed=2), "describe"),
        ],
    )


def cached(model: LoadedModel, inputs: ModelInputs, fwd_hooks: Any = ()) -> Generation:
    return generate(
        model,
        inputs,
        max_new_tokens=STEPS,
        fwd_hooks=fwd_hooks,
        stop_at_eos=False,
        keep_logits=True,
    )


def assert_same(cached: Generation, reference: Generation) -> None:
    assert cached.tokens == reference.tokens
    assert len(cached.step_logits) == len(reference.step_logits) == STEPS
    for step, (a, b) in enumerate(zip(cached.step_logits, reference.step_logits, strict=True)):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0, msg=f"step {step}")


def logits(model: LoadedModel, inputs: ModelInputs, fwd_hooks: Any = ()) -> torch.Tensor:
    with torch.no_grad():
        return model.bridge.run_with_hooks(
            inputs.input_ids,
            return_type="logits",
            fwd_hooks=list(fwd_hooks),
            **inputs.forward_kwargs(),
        )


def processor_image_tokens(model: LoadedModel, size: tuple[int, int]) -> int:
    """Image tokens the processor itself puts in the prompt for one image of ``size`` (h, w)."""
    image = make_image(*size)
    prompt = format_prompt(model, "describe", 1)
    encoded = model.processor(
        images=model.family.processor_images([[image]]), text=[prompt], return_tensors="pt"
    )
    return int((encoded["input_ids"] == model.image_token_id).sum())


# --------------------------------------------------------------------------- the contract


class FamilyContract:
    """Mixin: subclass as ``class TestX(FamilyContract)`` and set ``family``.

    Attributes:
        family: registry name of the family under test.
        spec: sizes of its tiny model; None uses the shared session model
            (``tests/conftest.py``, default :class:`TinySpec`).
        image_sizes: (height, width) of the images the geometry is checked on.
        bad_values: top-level config values the family must refuse, as
            ``(key, value, message regex)``.
    """

    family: ClassVar[str]
    spec: ClassVar[TinySpec | None] = None
    image_sizes: ClassVar[tuple[tuple[int, int], ...]] = ((28, 28), (28, 56), (56, 28), (40, 90))
    bad_values: ClassVar[tuple[tuple[str, Any, str], ...]] = ()

    # ----------------------------------------------------------------- fixtures

    @pytest.fixture(scope="class")
    def model_dir(
        self, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
    ) -> str:
        if self.spec is None:
            return request.getfixturevalue("tiny_dirs")[self.family]
        out = tmp_path_factory.mktemp(f"contract_{self.family}")
        return str(build_tiny_model(self.family, out, self.spec))

    @pytest.fixture(scope="class")
    def model(self, request: pytest.FixtureRequest, model_dir: str) -> LoadedModel:
        if self.spec is None:
            return request.getfixturevalue("tiny_models")[self.family]
        return load_model(model_dir, device="cpu")

    @property
    def handler(self) -> Family:
        return get(self.family)

    # ----------------------------------------------------------------- (a) HF parity

    @pytest.mark.invariant
    def test_logits_match_hf_eager(self, model: LoadedModel, model_dir: str) -> None:
        """No hooks: bridge logits equal a separately loaded HF eager model's, within 1e-5."""
        assert model.family is self.handler
        reference = AutoModelForImageTextToText.from_pretrained(
            model_dir, attn_implementation="eager", dtype=torch.float32
        ).eval()
        inputs = build_batch(
            model,
            [
                (make_image(30, 50, 1), "is there a red object ?"),
                (make_image(40, 28, 2), "describe"),
            ],
        )
        with torch.no_grad():
            expected = reference(**inputs.tensors).logits
        actual = logits(model, inputs)
        assert actual.shape == expected.shape
        mask = inputs.tensors["attention_mask"].bool()
        torch.testing.assert_close(actual[mask], expected[mask], atol=PARITY_ATOL, rtol=0)

    # ----------------------------------------------------------------- (b) edits take effect

    @pytest.mark.invariant
    @pytest.mark.parametrize("where", ["pattern", "resid"])
    def test_hook_edits_change_logits(self, model: LoadedModel, where: str) -> None:
        """VAR edits hook_pattern; knock-outs and steering edit the residual: both must bite."""
        if where == "pattern" and not self.handler.attention_edits.pattern:
            pytest.skip(f"{self.family}: {self.handler.attention_edits.reason}")
        inputs = build_inputs(model, make_image(), "is there a red object ?")
        base = logits(model, inputs)
        layer = model.n_layers - 2
        if where == "pattern":
            name = hooks.attn_pattern(layer)

            def edit(pattern: torch.Tensor, hook: Any) -> torch.Tensor:
                edited = torch.zeros_like(pattern)
                edited[..., 0] = 1.0  # all attention onto the first position
                return edited
        else:
            name = hooks.resid_pre(layer)

            def edit(resid: torch.Tensor, hook: Any) -> torch.Tensor:
                return resid * 3.0 + 1.0

        changed = logits(model, inputs, [(name, edit)])
        last = inputs.layouts[0].n_pos - 1
        assert (changed[0, last] - base[0, last]).abs().max() > 1e-3

    # ----------------------------------------------------------------- (c) geometry

    def test_geometry_counts_equal_the_processors(self, model: LoadedModel) -> None:
        """Per image size: the family's visual tokens == the processor's image tokens."""
        for size in self.image_sizes:
            grids, tokens = self.handler.image_tokens(model, 0, size)
            expected = processor_image_tokens(model, size)
            assert len(tokens) == expected, f"image {size}: {len(tokens)} != {expected}"
            # Every spatial token sits inside its grid, each cell once per tile.
            by_tile = {g.tile: g for g in grids}
            cells = [(t, r, c) for t, r, c, sep in tokens if not sep]
            assert len(cells) == len(set(cells))
            for tile, row, col in cells:
                assert 0 <= row < by_tile[tile].rows
                assert 0 <= col < by_tile[tile].cols
            # And the built inputs agree (visual_geometry checks against input_ids).
            inputs = build_inputs(model, make_image(*size), "describe")
            assert inputs.layouts[0].geometry.n_visual == expected
        return

    # ----------------------------------------------------------------- (d) KV cache

    @pytest.mark.invariant
    def test_cached_generation_equals_uncached_loop(self, model: LoadedModel) -> None:
        inputs = one(model)
        assert_same(cached(model, inputs), reference_greedy(model, inputs, max_new_tokens=STEPS))

    # ----------------------------------------------------------------- (e) config keys

    def test_unknown_config_key_is_refused_before_anything_loads(
        self, model_dir: str, tmp_path: Path
    ) -> None:
        config = json.loads((Path(model_dir) / "config.json").read_text())
        config["vsink_unheard_of_key"] = 3
        # Only the config: a check that ran after the processor or weights would fail otherwise.
        (tmp_path / "config.json").write_text(json.dumps(config))
        with pytest.raises(UnsupportedConfigError, match="vsink_unheard_of_key") as refused:
            load_model(tmp_path, device="cpu")
        assert "\n" not in str(refused.value)
        # With the whole checkpoint and allow_unknown_config the same config loads.
        full = tmp_path / "full"
        shutil.copytree(model_dir, full)
        (full / "config.json").write_text(json.dumps(config))
        loaded = load_model(full, device="cpu", allow_unknown_config=True)
        assert loaded.family is self.handler

    def test_the_tiny_config_uses_only_known_keys(self, model_dir: str) -> None:
        self.handler.check_config(AutoConfig.from_pretrained(model_dir))

    def test_values_it_cannot_lay_out_are_refused(self, model_dir: str) -> None:
        for key, value, message in self.bad_values:
            config = AutoConfig.from_pretrained(model_dir)
            # Past transformers' own field validators (5.24 refuses some of these itself; older
            # releases, and configs built in code, do not).
            object.__setattr__(config, key, value)
            with pytest.raises(UnsupportedConfigError, match=message):
                self.handler.check_config(config)

    # ----------------------------------------------------------------- (f) padding

    @pytest.mark.invariant
    def test_padded_batch_equals_uncached_loop_and_each_sample_alone(
        self, model: LoadedModel
    ) -> None:
        inputs = two(model)
        assert not bool(inputs.tensors["attention_mask"].bool().all()), "the batch must be padded"
        batch = cached(model, inputs)
        assert_same(batch, reference_greedy(model, inputs, max_new_tokens=STEPS))
        for index in range(inputs.batch_size):
            alone = cached(model, inputs.select(index))
            assert alone.tokens[0] == batch.tokens[index]
            for a, b in zip(alone.step_logits, batch.step_logits, strict=True):
                torch.testing.assert_close(a[0], b[index], atol=ATOL, rtol=0)
