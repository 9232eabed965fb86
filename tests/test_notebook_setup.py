"""analysis.notebook.setup(): every VSINK_* setting read once, checked, and used by every notebook."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from analysis.config import NOTEBOOK_LIMIT
from analysis.errors import UserInputError
from analysis.loading import DEMO_MODEL_DIR
from analysis.notebook import (
    DEMO_IMAGES,
    DEMO_QUESTIONS,
    VARIABLES,
    NotebookSettingError,
    NotebookSettings,
    setup,
)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No VSINK_* variable of the calling shell leaks into a test."""
    import os

    for name in [k for k in os.environ if k.startswith("VSINK_")]:
        monkeypatch.delenv(name)
    return monkeypatch


# --------------------------------------------------------------------------- parsing


def test_defaults_are_the_demo_model_in_float32():
    settings = setup({})
    assert settings == NotebookSettings(
        model=str(DEMO_MODEL_DIR),
        images=DEMO_IMAGES,
        questions=DEMO_QUESTIONS,
        device=torch.device("cuda" if torch.cuda.is_available() else "cpu"),
        dtype=torch.float32,
        limit=NOTEBOOK_LIMIT,
        run_dir=None,
    )
    assert settings.is_demo
    assert DEMO_IMAGES.is_dir()
    assert DEMO_QUESTIONS.is_file()


def test_settings_are_frozen():
    settings = setup({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.dtype = torch.bfloat16  # type: ignore[misc]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bfloat16", torch.bfloat16),
        ("bf16", torch.bfloat16),
        ("float16", torch.float16),
        ("FP16", torch.float16),
        ("torch.float32", torch.float32),
        ("  float32 ", torch.float32),
    ],
)
def test_dtype_is_parsed(value: str, expected: torch.dtype):
    assert setup({"VSINK_DTYPE": value}).dtype == expected


def test_each_variable_is_parsed(tmp_path: Path):
    images = tmp_path / "imgs"
    images.mkdir()
    questions = tmp_path / "q.jsonl"
    questions.write_text("{}\n")
    model = tmp_path / "model"
    model.mkdir()
    env = {
        "VSINK_MODEL": str(model),
        "VSINK_IMAGES": str(images),
        "VSINK_QUESTIONS": str(questions),
        "VSINK_DEVICE": "cpu",
        "VSINK_DTYPE": "float16",
        "VSINK_LIMIT": "3",
        "VSINK_RUN_DIR": str(tmp_path / "run"),
    }
    assert set(env) == set(VARIABLES)
    settings = setup(env)
    assert settings.model == str(model)
    assert settings.images == images
    assert settings.questions == questions
    assert settings.device == torch.device("cpu")
    assert settings.dtype == torch.float16
    assert settings.limit == 3
    assert settings.run_dir == tmp_path / "run"
    assert not settings.is_demo
    assert settings.describe() == {
        "model": str(model),
        "images": str(images),
        "questions": str(questions),
        "device": "cpu",
        "dtype": "float16",
        "limit": 3,
        "run_dir": str(tmp_path / "run"),
    }
    # A hub id is passed through as written (nothing is looked up here).
    assert setup({"VSINK_MODEL": "llava-hf/llava-1.5-7b-hf"}).model == "llava-hf/llava-1.5-7b-hf"


def test_blank_values_mean_unset():
    assert setup(dict.fromkeys(VARIABLES, " ")) == setup({})


def test_setup_reads_the_process_environment(clean_env: pytest.MonkeyPatch):
    clean_env.setenv("VSINK_DTYPE", "bf16")
    clean_env.setenv("VSINK_LIMIT", "5")
    settings = setup()
    assert (settings.dtype, settings.limit) == (torch.bfloat16, 5)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("name", "value", "wording"),
    [
        ("VSINK_DTYPE", "float64", "Unknown dtype"),
        ("VSINK_DTYPE", "int8", "Unknown dtype"),
        ("VSINK_DEVICE", "gpu", "Unknown device"),
        ("VSINK_DEVICE", "tpu:0", "Unknown device"),
        ("VSINK_LIMIT", "ten", "not an integer"),
        ("VSINK_LIMIT", "0", "at least 1"),
        ("VSINK_IMAGES", "/no/such/folder", "does not exist"),
        ("VSINK_QUESTIONS", "/no/such/file.jsonl", "not a file"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(name: str, value: str, wording: str):
    with pytest.raises(NotebookSettingError) as caught:
        setup({name: value})
    message = str(caught.value)
    assert message.startswith(f"{name}={value!r}")
    assert wording in message
    assert "\n" not in message
    assert isinstance(caught.value, UserInputError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused():
    with pytest.raises(NotebookSettingError, match=r"^VSINK_DEVICE='cuda': .*not available"):
        setup({"VSINK_DEVICE": "cuda"})


def test_folder_and_file_kinds_are_checked(tmp_path: Path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotebookSettingError, match=r"^VSINK_QUESTIONS=.* is not a file"):
        setup({"VSINK_QUESTIONS": str(tmp_path)})
    with pytest.raises(NotebookSettingError, match=r"^VSINK_RUN_DIR=.* is a file"):
        setup({"VSINK_RUN_DIR": str(tmp_path / "f")})
    # A single image file is a valid VSINK_IMAGES (collect_images takes files and folders).
    image = next(DEMO_IMAGES.iterdir())
    assert setup({"VSINK_IMAGES": str(image)}).images == image


def test_misspelt_variable_is_refused_not_ignored():
    with pytest.raises(NotebookSettingError, match=r"^VSINK_DTPYE .*did you mean VSINK_DTYPE"):
        setup({"VSINK_DTPYE": "bfloat16"})


def test_unrelated_vsink_variable_is_named_in_a_warning():
    with pytest.warns(UserWarning, match="do not read VSINK_SOMETHING_ELSE"):
        settings = setup({"VSINK_SOMETHING_ELSE": "1"})
    assert settings == setup({})


# --------------------------------------------------------------------------- the notebooks use it


def _code(notebook: Path) -> list[str]:
    cells = json.loads(notebook.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def _is_attribute_of(node: ast.expr | None, owner: str, attribute: str) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == attribute
        and isinstance(node.value, ast.Name)
        and node.value.id == owner
    )


def test_all_notebooks_are_checked():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_reads_its_settings_through_setup(notebook: Path):
    """Static check of the stored JSON: setup() first, its device and dtype into load_model."""
    cells = _code(notebook)
    first = ast.parse(cells[0])
    setups = [
        node
        for node in first.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Name)
        and node.value.func.id == "setup"
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
    ]
    assert len(setups) == 1, f"{notebook.name}: the first code cell must call setup() once"
    target = setups[0].targets[0]
    assert isinstance(target, ast.Name)
    settings = target.id
    imports = [n for n in ast.walk(first) if isinstance(n, ast.ImportFrom)]
    assert any(n.module == "analysis.notebook" and n.names[0].name == "setup" for n in imports)

    tree = ast.parse("\n".join(cells))
    loads = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "load_model"
    ]
    assert loads, f"{notebook.name} loads no model"
    for call in loads:
        keywords = {k.arg: k.value for k in call.keywords}
        assert _is_attribute_of(keywords.get("dtype"), settings, "dtype"), notebook.name
        assert _is_attribute_of(keywords.get("device"), settings, "device"), notebook.name
        assert call.args, notebook.name
        assert _is_attribute_of(call.args[0], settings, "model"), notebook.name
    # No setting is read behind setup()'s back.
    source = "\n".join(cells)
    assert "os.environ" not in source, notebook.name
    assert "getenv" not in source, notebook.name
    assert "VSINK_" not in source, notebook.name


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_cell_loads_the_model_in_the_requested_dtype(
    notebook: Path, clean_env: pytest.MonkeyPatch
):
    """The first code cell run as stored, with VSINK_DTYPE=bfloat16: the weights are bf16."""
    clean_env.setenv("VSINK_DTYPE", "bfloat16")
    clean_env.setenv("VSINK_DEVICE", "cpu")
    clean_env.chdir(ROOT)
    namespace: dict[str, object] = {}
    exec(compile(_code(notebook)[0], str(notebook), "exec"), namespace)
    model = namespace["model"]
    weights = {p.dtype for p in model.hf_model.parameters()}  # type: ignore[attr-defined]
    assert weights == {torch.bfloat16}
    assert model.dtype == torch.bfloat16  # type: ignore[attr-defined]
    assert model.device == torch.device("cpu")  # type: ignore[attr-defined]
