"""Shared fixtures: tiny random models of every family, saved and loaded back.

Everything runs offline: a hub look-up that times out costs about a minute.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The test models are small: one intra-op thread per process avoids oversubscribing
# 2-core CI runners (and is inherited by notebook kernels and torchrun workers).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from analysis.families import families
from analysis.loading import DEMO_MODEL_DIR, LoadedModel, load_model
from analysis.testing.planted import PROMPT, ZOO, PlantedSpec, build_planted, load_spec
from analysis.testing.planted import image_paths as planted_images
from analysis.tiny import build_tiny_model
from analysis.tokens import ModelInputs, build_batch

# Every registered family: a new family module gets its tiny model here without an edit.
FAMILIES = sorted(families())

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {family: str(build_tiny_model(family, root / family)) for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny_models(tiny_dirs: dict[str, str]) -> dict[str, LoadedModel]:
    return {family: load_model(path, device="cpu") for family, path in tiny_dirs.items()}


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def tiny(tiny_models: dict[str, LoadedModel], family: str) -> LoadedModel:
    return tiny_models[family]


def make_image(height: int = 30, width: int = 50, seed: int = 0) -> Image.Image:
    """A random RGB image (real pixels through the real processor)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


@pytest.fixture
def image() -> Image.Image:
    return make_image()


@pytest.fixture(scope="session")
def demo_model() -> LoadedModel:
    """The bundled synthetic demo model (planted sink dims and heads)."""
    return load_model(DEMO_MODEL_DIR, device="cpu")


@pytest.fixture(scope="session")
def demo_truth() -> dict:
    return json.loads((DEMO_MODEL_DIR.parent / "ground_truth.json").read_text())


# ----------------------------------------------------------------------------- planted zoo


@dataclass
class ZooMember:
    """One planted model of the zoo, loaded, with its images batched under the zoo prompt."""

    spec: PlantedSpec
    cells: list[np.ndarray]
    path: Path
    model: LoadedModel
    inputs: ModelInputs

    @property
    def dims(self) -> list[int]:
        return sorted(self.spec.sink_dims)


@pytest.fixture(scope="session")
def zoo_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every zoo member built once per test session."""
    root = tmp_path_factory.mktemp("zoo")
    return {spec.name: build_planted(spec, root / spec.name) for spec in ZOO}


@pytest.fixture(scope="session")
def _zoo_loaded() -> dict[str, ZooMember]:
    return {}


@pytest.fixture(params=[spec.name for spec in ZOO])
def planted(
    request: pytest.FixtureRequest, zoo_dirs: dict[str, Path], _zoo_loaded: dict[str, ZooMember]
) -> ZooMember:
    """Each zoo member in turn (loaded on first use, then kept for the session)."""
    name = request.param
    if name not in _zoo_loaded:
        path = zoo_dirs[name]
        spec, cells = load_spec(path)
        model = load_model(path / "model", device="cpu")
        images = [Image.open(p).convert("RGB") for p in planted_images(path)]
        inputs = build_batch(model, [(image, PROMPT) for image in images])
        _zoo_loaded[name] = ZooMember(spec, cells, path, model, inputs)
    return _zoo_loaded[name]
