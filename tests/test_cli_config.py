"""--allow-unknown-config: a config key the family does not list is refused in one line,
loaded when the flag is given, and every command that loads a model passes the flag on."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from analysis import cli
from analysis.errors import UserInputError
from analysis.tiny import build_tiny_model

UNKNOWN_KEY = "vsink_test_unlisted_key"


@pytest.fixture(scope="module")
def odd_model(tmp_path_factory):
    """A tiny LLaVA whose config.json carries one top-level key no family lists."""
    folder = build_tiny_model("llava", tmp_path_factory.mktemp("odd") / "llava")
    config = json.loads((folder / "config.json").read_text())
    config[UNKNOWN_KEY] = 7
    (folder / "config.json").write_text(json.dumps(config))
    return folder, config


def test_unknown_config_key_is_refused_then_allowed(odd_model, tmp_path):
    folder, config = odd_model
    runner = CliRunner()
    refused = runner.invoke(cli.app, ["info", str(folder)])
    assert refused.exit_code == 2, refused.output
    lines = refused.output.strip().splitlines()
    assert len(lines) == 1, refused.output
    assert lines[0].startswith("error: llava:")
    assert UNKNOWN_KEY in lines[0]
    assert "--allow-unknown-config" in lines[0]

    out = tmp_path / "info.json"
    allowed = runner.invoke(
        cli.app, ["info", str(folder), "--allow-unknown-config", "--json", str(out)]
    )
    assert allowed.exit_code == 0, allowed.output
    payload = json.loads(out.read_text())
    assert payload["family"] == "llava"
    assert payload["n_layers"] == config["text_config"]["num_hidden_layers"]


# The smallest arguments that get each command to its model load (the demo model).
LOADING_COMMANDS = {
    "info": [],
    "dims": [],
    "sinks": [],
    "generate": [],
    "heads": [],
    "contribution": [],
    "ablate": [],
    "ablate --questions": ["ablate", "--questions", "{demo}/questions.jsonl",
                           "--images", "{demo}/images", "--out", "{tmp}/ablate"],
    "figures": ["figures", "--out", "{tmp}/figs"],
    "report": ["report", "--out", "{tmp}/report.html"],
    "eval": ["eval", "--out", "{tmp}/eval"],
    "sweep": ["sweep", "--out", "{tmp}/sweep"],
}  # fmt: skip


class _StoppedAtLoadError(UserInputError):
    """Raised by the recording loader: the command got as far as loading."""


@pytest.mark.parametrize("command", sorted(LOADING_COMMANDS))
@pytest.mark.parametrize("flag", [False, True])
def test_every_loading_command_passes_the_flag(command, flag, tmp_path, monkeypatch):
    from analysis.loading import DEMO_MODEL_DIR

    seen: list[bool] = []

    def record(*args, allow_unknown_config=False, **kwargs):
        seen.append(allow_unknown_config)
        raise _StoppedAtLoadError("stopped at load")

    monkeypatch.setattr(cli, "load", record)
    args = LOADING_COMMANDS[command] or [command]
    args = [a.format(demo=DEMO_MODEL_DIR.parent, tmp=tmp_path) for a in args]
    result = CliRunner().invoke(cli.app, [*args, *(["--allow-unknown-config"] if flag else [])])
    assert result.exit_code == 2, result.output
    assert "stopped at load" in result.output
    assert seen == [flag]
