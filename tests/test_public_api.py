"""The package's public API: every exported name resolves, and importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import analysis


def test_every_exported_name_resolves() -> None:
    for name in analysis.__all__:
        assert getattr(analysis, name) is not None, name


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        analysis.no_such_name  # noqa: B018


def test_import_does_not_load_torch() -> None:
    code = "import sys, analysis; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_exports_are_the_defining_modules_objects() -> None:
    from analysis.config import VarConfig
    from analysis.loading import load_model

    assert analysis.load_model is load_model
    assert analysis.VarConfig is VarConfig
