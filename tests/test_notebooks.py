"""Every notebook is a thin, paired jupytext script that executes on the demo model."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def test_all_six_notebooks_exist():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06"]


@pytest.mark.parametrize("script", NOTEBOOKS, ids=lambda p: p.stem)
def test_paired_ipynb_is_in_sync(script: Path):
    paired = script.with_suffix(".ipynb")
    assert paired.is_file(), f"run `make notebooks` to pair {script.name}"
    ours, theirs = jupytext.read(script), jupytext.read(paired)
    assert [(c.cell_type, c.source) for c in ours.cells] == [
        (c.cell_type, c.source) for c in theirs.cells
    ], f"{paired.name} is out of date: run `make notebooks`"


@pytest.mark.parametrize("script", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_thin(script: Path):
    """Notebooks import from analysis and define nothing of their own."""
    tree = ast.parse(script.read_text())
    defined = [
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda)
        and hasattr(node, "name")
    ]
    assert not defined, f"{script.name} defines {defined}; move them into analysis/"
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert any(n.module and n.module.startswith("analysis") for n in imports)


@pytest.mark.parametrize("script", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_on_demo_model(script: Path, monkeypatch: pytest.MonkeyPatch):
    # Every VSINK_* setting of the calling shell is dropped: the notebooks run on the demo model.
    for name in [k for k in os.environ if k.startswith("VSINK_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("VSINK_DEVICE", "cpu")
    notebook = nbformat.read(script.with_suffix(".ipynb"), as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT)}},
    )
    client.execute()
    outputs = [out for cell in notebook.cells for out in cell.get("outputs", [])]
    assert not [out for out in outputs if out.get("output_type") == "error"]
    figures = [out for out in outputs if "application/vnd.plotly.v1+json" in out.get("data", {})]
    if "06_" not in script.name:
        assert figures, f"{script.name} shows no figure"
