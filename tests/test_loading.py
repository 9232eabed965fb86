"""Loading through the bridge: HF parity, hook efficacy, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_image
from transformers import AutoModelForImageTextToText

from analysis import hooks
from analysis.attention import eager_attention
from analysis.loading import (
    FAMILIES,
    ModelLoadError,
    UnsupportedModelError,
    load_model,
    resolve_dtype,
)
from analysis.tokens import build_batch, build_inputs


def _logits(model, inputs, fwd_hooks=()):
    with torch.no_grad():
        return model.bridge.run_with_hooks(
            inputs.input_ids,
            return_type="logits",
            fwd_hooks=list(fwd_hooks),
            **inputs.forward_kwargs(),
        )


def test_metadata_matches_config(tiny, tiny_dirs, family):
    config = json.loads((Path(tiny_dirs[family]) / "config.json").read_text())
    assert tiny.family.name == family
    assert tiny.n_layers == config["text_config"]["num_hidden_layers"] == 4
    assert tiny.n_heads == 4
    assert tiny.d_model == 64
    assert tiny.d_head == 16
    assert tiny.image_token_id == config.get("image_token_id", config.get("image_token_index"))
    assert tiny.is_local
    assert tiny.describe()["architecture"] == FAMILIES[family].architectures[0]


@pytest.mark.invariant
def test_logits_match_hf_eager(tiny, tiny_dirs, family):
    """No hooks: bridge logits equal a separately loaded HF eager model's, within 1e-5."""
    reference = AutoModelForImageTextToText.from_pretrained(
        tiny_dirs[family], attn_implementation="eager", dtype=torch.float32
    ).eval()
    inputs = build_batch(
        tiny,
        [(make_image(30, 50, 1), "is there a red object ?"), (make_image(40, 28, 2), "describe")],
    )
    with torch.no_grad():
        expected = reference(**inputs.tensors).logits
    actual = _logits(tiny, inputs)
    assert actual.shape == expected.shape
    mask = inputs.tensors["attention_mask"].bool()
    torch.testing.assert_close(actual[mask], expected[mask], atol=1e-5, rtol=0)


@pytest.mark.invariant
@pytest.mark.parametrize("where", ["pattern", "resid"])
def test_hook_edits_change_logits(tiny, image, where):
    """VAR edits hook_pattern; knock-outs and steering edit the residual: both must bite."""
    inputs = build_inputs(tiny, image, "is there a red object ?")
    base = _logits(tiny, inputs)
    layer = tiny.n_layers - 2
    if where == "pattern":
        name = hooks.attn_pattern(layer)

        def edit(pattern, hook):
            edited = torch.zeros_like(pattern)
            edited[..., 0] = 1.0  # all attention onto the first position
            return edited
    else:
        name = hooks.resid_pre(layer)

        def edit(resid, hook):
            return resid * 3.0 + 1.0

    changed = _logits(tiny, inputs, [(name, edit)])
    last = inputs.layouts[0].n_pos - 1
    assert (changed[0, last] - base[0, last]).abs().max() > 1e-3


def test_identity_hook_keeps_logits(tiny, image):
    inputs = build_inputs(tiny, image, "is there a red object ?")
    identity = [(hooks.attn_pattern(1), lambda p, hook: p.clone())]
    with eager_attention(tiny):  # bit for bit on one attention path
        assert torch.equal(_logits(tiny, inputs), _logits(tiny, inputs, identity))
    # Routed: the hook makes layer 1 eager, the others SDPA: equal within fp32 tolerance.
    torch.testing.assert_close(
        _logits(tiny, inputs), _logits(tiny, inputs, identity), atol=1e-5, rtol=0
    )


def test_dtype_option(tiny_dirs):
    model = load_model(tiny_dirs["llava"], device="cpu", dtype="bf16")
    assert model.dtype == torch.bfloat16
    assert next(model.hf_model.parameters()).dtype == torch.bfloat16
    inputs = build_inputs(model, make_image(), "is there a red object ?")
    logits = _logits(model, inputs)
    assert torch.isfinite(logits.float()).all()


def test_unsupported_architecture_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    )
    with pytest.raises(UnsupportedModelError, match="LlavaForConditionalGeneration"):
        load_model(tmp_path, device="cpu")


def test_missing_local_folder_is_clear():
    with pytest.raises(ModelLoadError, match="No such local model folder"):
        load_model("./no/such/folder", device="cpu")


def test_folder_without_config_is_clear(tmp_path):
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(tmp_path, device="cpu")


def test_unknown_dtype():
    with pytest.raises(ValueError, match="Unknown dtype"):
        resolve_dtype("float8")
    assert resolve_dtype(None) is torch.float32
