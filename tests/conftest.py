"""Shared fixtures: tiny random models of every family, saved and loaded back.

Everything runs offline: a hub look-up that times out costs about a minute.
"""

from __future__ import annotations

import json
import os

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

from analysis.loading import DEMO_MODEL_DIR, LoadedModel, load_model
from analysis.tiny import BUILDERS, build_tiny_model

FAMILIES = sorted(BUILDERS)

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
