"""Loading through the bridge: metadata, clear errors, configs refused up front, quiet loads.

HF parity and that edits take effect are family contracts (``tests/contracts/families.py``).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path

import pytest
import torch
from conftest import make_image
from transformers.utils import logging as hf_logging

from analysis import hooks
from analysis.attention import eager_attention
from analysis.families import UnsupportedConfigError, families
from analysis.loading import (
    DEMO_MODEL_DIR,
    FAMILIES,
    ModelLoadError,
    UnsupportedModelError,
    family_for_architecture,
    load_model,
    quiet_transformers,
    resolve_dtype,
    supported_architectures,
)
from analysis.tokens import build_inputs


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


def test_families_view_is_the_registry():
    assert dict(FAMILIES) == families()
    assert FAMILIES["llava"].layout == "grid"
    assert family_for_architecture("Gemma3ForConditionalGeneration") is FAMILIES["gemma3"]
    assert set(supported_architectures()) == {
        arch for family in families().values() for arch in family.architectures
    }


def _config_only(source: str | Path, out: Path, **changes) -> Path:
    """A folder with ``source``'s config.json (edited) and nothing else: no processor, no weights."""
    config = json.loads((Path(source) / "config.json").read_text())
    config.update(changes)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize(
    ("family", "changes", "message"),
    [
        ("gemma3", {"mm_tokens_per_image": 5}, "mm_tokens_per_image=5 is not a square"),
        ("llava_next", {"vision_feature_select_strategy": "full"}, "cannot be laid out"),
        ("llava_next", {"image_grid_pinpoints": [[28, 50]]}, "positive multiples of the tile"),
        # transformers 5.24 refuses this one itself: still one line, still before any load.
        ("llava", {"vision_feature_select_strategy": "cls"}, "vision_feature_select_strategy"),
    ],
)
def test_bad_config_values_are_refused_before_anything_loads(
    tiny_dirs, tmp_path, family, changes, message
):
    folder = _config_only(tiny_dirs[family], tmp_path / family, **changes)
    with pytest.raises(UnsupportedConfigError, match=message) as refused:
        load_model(folder, device="cpu")
    assert "\n" not in str(refused.value)


def test_unknown_key_refusal_names_the_key_and_the_way_out(tiny_dirs, tmp_path):
    folder = _config_only(tiny_dirs["llava"], tmp_path / "m", frobnicate=1, zz_top=2)
    with pytest.raises(UnsupportedConfigError, match=r"\(frobnicate, zz_top\).*allow_unknown"):
        load_model(folder, device="cpu")


def test_legacy_hub_keys_are_known(tiny_dirs, tmp_path):
    """Keys real llava-hf / gemma checkpoints carry pass the key check (then the processor is missing)."""
    legacy = {
        "llava": {"ignore_index": -100, "vocab_size": 32064, "pad_token_id": 32001},
        "llava_next": {"ignore_index": -100, "use_image_newline_parameter": True},
        "gemma3": {"boi_token_index": 255999, "initializer_range": 0.02},
    }
    for family, changes in legacy.items():
        folder = _config_only(tiny_dirs[family], tmp_path / family, **changes)
        with pytest.raises(ModelLoadError, match="Cannot load the processor"):
            load_model(folder, device="cpu")


def test_demo_and_tiny_configs_pass_the_check(tiny_dirs):
    from transformers import AutoConfig

    for path in [DEMO_MODEL_DIR, *tiny_dirs.values()]:
        config = AutoConfig.from_pretrained(path)
        family_for_architecture(config.architectures[0]).check_config(config)


def test_load_keeps_transformers_logging_as_it_was(tiny_dirs, tmp_path):
    """load_model leaves the process's verbosity and progress-bar switch alone and logs nothing."""
    folder = tmp_path / "m"
    shutil.copytree(tiny_dirs["llava"], folder)
    library = logging.getLogger("transformers")
    keep = _Keep()
    library.addHandler(keep)
    previous = hf_logging.get_verbosity()
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_info()
    hf_logging.enable_progress_bar()
    try:
        load_model(folder, device="cpu")
        assert hf_logging.get_verbosity() == logging.INFO
        assert hf_logging.is_progress_bar_enabled()
        # No warning got through while the processor and weights loaded.
        assert not [r for r in keep.records if logging.WARNING <= r.levelno < logging.ERROR]
    finally:
        library.removeHandler(keep)
        hf_logging.set_verbosity(previous)
        (hf_logging.enable_progress_bar if bar else hf_logging.disable_progress_bar)()


class _Keep(logging.Handler):
    """Keeps the records that pass its filters."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_quiet_block_filters_only_its_own_thread():
    logger = hf_logging.get_logger("transformers.vsink_test")
    library = logging.getLogger("transformers")
    keep = _Keep()
    library.addHandler(keep)
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_info()
    try:
        with quiet_transformers():
            assert hf_logging.get_verbosity() == logging.INFO
            logger.warning("mine, hidden")
            other = threading.Thread(target=logger.warning, args=("theirs, shown",))
            other.start()
            other.join()
            logger.error("an error, shown")
        logger.warning("after, shown")
    finally:
        library.removeHandler(keep)
        hf_logging.set_verbosity(previous)
    assert [r.getMessage() for r in keep.records] == [
        "theirs, shown",
        "an error, shown",
        "after, shown",
    ]
    assert not keep.filters  # the block took its filter away again
