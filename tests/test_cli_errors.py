"""The CLI's error policy: one line for what the user can fix, a traceback for bugs and --debug."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from analysis import cli
from analysis.checks import ConfigError
from analysis.cli.root import EXIT_USER_ERROR, ONE_LINE_ERRORS
from analysis.errors import VsinkError

REPO = Path(__file__).resolve().parents[1]


def _no_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the settings were checked")


@pytest.fixture
def refused(monkeypatch):
    monkeypatch.setattr(cli, "load", _no_load)
    return CliRunner()


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_the_one_line_errors_are_written_once():
    assert VsinkError in ONE_LINE_ERRORS
    # bad input raises UserInputError; a bare ValueError at the edge is a bug
    assert ValueError not in ONE_LINE_ERRORS


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["heads", "--top", "0"], "top must be"),  # ConfigError, a VsinkError
        (["sinks", "--dims", "1,x"], "--dims must be comma-separated"),  # a UserInputError
    ],
)
def test_a_user_error_is_one_line_without_a_traceback(refused, args, message):
    result = refused.invoke(cli.app, args)
    assert result.exit_code == EXIT_USER_ERROR, result.output
    assert "Traceback" not in result.output
    assert len(_error_lines(result.output)) == 1, result.output
    assert message in _error_lines(result.output)[0]


@pytest.mark.parametrize(
    ("args", "kind"),
    [(["heads", "--top", "0"], "ConfigError"), (["sinks", "--dims", "1,x"], "UserInputError")],
)
def test_debug_prints_the_traceback_then_the_same_line(refused, args, kind):
    result = refused.invoke(cli.app, ["--debug", *args])
    assert result.exit_code == EXIT_USER_ERROR, result.output
    assert "Traceback (most recent call last)" in result.output
    # the frame that raised is shown, and the exception's class
    assert f"{kind}:" in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("error:"), result.output
    assert result.output.index("Traceback") < result.output.index("\nerror:")


def test_debug_from_the_environment(refused):
    result = refused.invoke(cli.app, ["heads", "--top", "0"], env={"VSINK_DEBUG": "1"})
    assert result.exit_code == EXIT_USER_ERROR
    assert "Traceback (most recent call last)" in result.output


def test_a_bug_keeps_its_exception(monkeypatch):
    """An error outside the one-line list is not turned into a message."""

    def broken(*args, **kwargs):
        raise RuntimeError("an internal bug")

    monkeypatch.setattr(cli, "load", broken)
    result = CliRunner().invoke(cli.app, ["info"])
    assert result.exit_code == 1
    assert isinstance(result.exception, RuntimeError)
    assert not _error_lines(result.output)


def test_an_os_error_is_one_line_and_a_traceback_under_debug(monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", "/data/run/records.jsonl")

    monkeypatch.setattr(cli, "load", full)
    plain = CliRunner().invoke(cli.app, ["info"])
    assert plain.exit_code == EXIT_USER_ERROR
    assert _error_lines(plain.output) == [
        "error: cannot write /data/run/records.jsonl: the disk is full; free space and rerun "
        "(finished work is kept)."
    ]
    assert "Traceback" not in plain.output
    debug = CliRunner().invoke(cli.app, ["--debug", "info"])
    assert debug.exit_code == EXIT_USER_ERROR
    assert "Traceback (most recent call last)" in debug.output
    assert "OSError: [Errno 28]" in debug.output


def test_vsink_error_subclasses_are_one_line(monkeypatch):
    class CustomError(VsinkError):
        pass

    def refuse(*args, **kwargs):
        raise CustomError("what to do about it")

    monkeypatch.setattr(cli, "load", refuse)
    result = CliRunner().invoke(cli.app, ["info"])
    assert result.exit_code == EXIT_USER_ERROR
    assert _error_lines(result.output) == ["error: what to do about it"]
    assert issubclass(ConfigError, VsinkError)


@pytest.mark.slow
def test_module_entry_point_debug_traceback_on_stderr():
    """``python -m analysis.cli`` (what torchrun runs) applies the same policy."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("VSINK_DEBUG", None)
    command = [sys.executable, "-m", "analysis.cli", "heads", "--top", "0"]
    plain = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert plain.returncode == EXIT_USER_ERROR, plain.stderr
    assert "Traceback" not in plain.stderr
    assert "error: top must be" in plain.stderr
    command.insert(3, "--debug")
    debug = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert debug.returncode == EXIT_USER_ERROR, debug.stderr
    assert "Traceback (most recent call last)" in debug.stderr
    assert "analysis/checks.py" in debug.stderr
    assert "error: top must be" in debug.stderr


def test_an_internal_value_error_keeps_its_traceback(monkeypatch):
    """A bare ValueError is a bug now that bad input raises UserInputError."""

    def broken(*args, **kwargs):
        raise ValueError("an internal shape mismatch")

    monkeypatch.setattr(cli, "load", broken)
    result = CliRunner().invoke(cli.app, ["info"])
    assert result.exit_code == 1
    assert isinstance(result.exception, ValueError)
    assert not _error_lines(result.output)
