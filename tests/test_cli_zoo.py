"""The CLI on planted zoo models: discovery on a sink-heavy model, refusal without dims."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from analysis.cli import app
from analysis.testing.planted import PROMPT, image_paths, load_spec


def _run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result, result.output


@pytest.fixture
def heavy(zoo_dirs):
    """The issue's model: the projector writes the mass, 80% of the board is sinks."""
    return zoo_dirs["llava_heavy_projector"]


@pytest.fixture
def no_sinks(zoo_dirs):
    return zoo_dirs["llava_no_sinks"]


def test_dims_finds_the_planted_dims_on_a_sink_heavy_model(heavy, tmp_path):
    spec, _ = load_spec(heavy)
    out = tmp_path / "dims.json"
    images = [a for p in image_paths(heavy) for a in ("--images", p)]
    result, output = _run("dims", heavy / "model", *images, "--prompt", PROMPT, "--json", out)
    assert result.exit_code == 0, output
    assert f"dims: {sorted(spec.sink_dims)}" in output
    assert json.loads(out.read_text())["dims"] == sorted(spec.sink_dims)


def test_dims_on_the_no_sink_model_says_none_and_why(no_sinks):
    spec, _ = load_spec(no_sinks)
    images = [a for p in image_paths(no_sinks) for a in ("--images", p)]
    result, output = _run("dims", no_sinks / "model", *images, "--prompt", PROMPT)
    assert result.exit_code == 0, output
    assert "dims: [] (none is massive" in output
    flat = " ".join(output.split())
    assert f"warning: No sink (massive-activation) dims found; closest: dim {spec.bias_dim}" in flat
    assert "bias dim, not a sink dim" in flat
    assert "--dims" in flat


@pytest.mark.parametrize(
    "command",
    [
        ["generate", "--var", "--image", "{image}"],
        ["sinks", "--image", "{image}"],
        ["heads", "--images", "{image}"],
    ],
    ids=["generate", "sinks", "heads"],
)
def test_commands_that_need_dims_refuse_without_them(no_sinks, command):
    image = image_paths(no_sinks)[0]
    args = [a.format(image=image) for a in command]
    result, output = _run(args[0], no_sinks / "model", *args[1:], "--prompt", PROMPT)
    assert result.exit_code == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output  # one line, no traceback, no baseline answer first
    assert lines[0].startswith("error: No sink (massive-activation) dims found")
    assert "Refusing to run without sink dims" in lines[0]
    # With dims given explicitly the same command runs.
    result, output = _run(args[0], no_sinks / "model", *args[1:], "--prompt", PROMPT, "--dims", 300)
    assert result.exit_code == 0, output


def test_eval_with_a_var_condition_refuses_without_dims(no_sinks, tmp_path):
    images = no_sinks / "images"
    base = ["eval", no_sinks / "model", "--images", images, "--prompt", PROMPT]
    base += ["--max-new-tokens", 0, "--no-progress", "--no-stats"]
    result, output = _run(*base, "--conditions", "baseline,var", "--out", tmp_path / "a")
    assert result.exit_code == 2, output
    assert "Refusing to run without sink dims" in output
    result, output = _run(*base, "--conditions", "baseline", "--out", tmp_path / "b")
    assert result.exit_code == 0, output


def test_generate_official_preset_needs_registry_or_explicit_dims(heavy, tmp_path):
    spec, _ = load_spec(heavy)
    image = image_paths(heavy)[0]
    args = ["generate", heavy / "model", "--image", image, "--prompt", PROMPT, "--var"]
    result, output = _run(*args, "--preset", "official")
    assert result.exit_code == 2, output
    assert "takes the sink dims from the registry" in output
    out = tmp_path / "g.json"
    dims = ",".join(str(d) for d in spec.sink_dims)
    result, output = _run(*args, "--preset", "official", "--dims", dims, "--json", out)
    assert result.exit_code == 0, output
    payload = json.loads(out.read_text())
    assert payload["config"]["var"]["selection"] == "official"
    assert payload["var_record"]["layers"] == list(range(2, spec.n_layers))
    assert sum(payload["var_record"]["prefill_changed"]) > 0
    result, output = _run(*args, "--preset", "authors")
    assert result.exit_code == 2, output
    assert "Unknown VAR preset 'authors'" in output


def test_dims_warns_when_a_registry_model_disagrees(heavy, monkeypatch):
    from analysis.loading import load_model

    name = load_model(heavy / "model", device="cpu").name_or_path
    fake = {"key": "fake", "dims": [40, 41], "model_ids": [name], "d_model": 2048}
    monkeypatch.setattr("analysis.dims.load_registry", lambda: [fake])
    images = [a for p in image_paths(heavy) for a in ("--images", p)]
    result, output = _run("dims", heavy / "model", *images, "--prompt", PROMPT)
    assert result.exit_code == 0, output
    flat = " ".join(output.split())
    assert "registry (fake): [40, 41] -> DISAGREES" in flat
    assert "warning: discovered [1415, 1900] differ from the registry's [40, 41]" in flat


def test_eval_preset_official_uses_registry_or_explicit_dims(heavy, tmp_path):
    spec, _ = load_spec(heavy)
    base = ["eval", heavy / "model", "--images", heavy / "images", "--prompt", PROMPT]
    base += ["--max-new-tokens", 0, "--no-progress", "--no-stats", "--conditions", "baseline,var"]
    result, output = _run(*base, "--preset", "official", "--out", tmp_path / "a")
    assert result.exit_code == 2, output
    assert "takes the sink dims from the registry" in output
    dims = ",".join(str(d) for d in spec.sink_dims)
    out = tmp_path / "b"
    result, output = _run(*base, "--preset", "official", "--dims", dims, "--out", out)
    assert result.exit_code == 0, output
    manifest = json.loads((out / "manifest.json").read_text())
    names = [c["name"] for c in manifest["config"]["conditions"]]
    assert names == ["baseline", "var:preset=official"]
