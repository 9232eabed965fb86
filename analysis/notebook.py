"""The notebooks' settings, read from the ``VSINK_*`` environment variables once.

Every notebook's first code cell calls :func:`setup` and uses what it returns,
so a checkpoint, its device and its dtype are chosen the same way everywhere::

    VSINK_MODEL=llava-hf/llava-1.5-7b-hf VSINK_DEVICE=cuda VSINK_DTYPE=bfloat16 \\
        jupyter nbconvert --to notebook --execute notebooks/03_ablations.ipynb

========================  ===============================================  ======================
variable                  meaning                                          default
========================  ===============================================  ======================
``VSINK_MODEL``           HF hub id or local model folder                  the synthetic demo model
``VSINK_IMAGES``          image folder (or one image file)                 the demo images
``VSINK_QUESTIONS``       a POPE-style JSONL question file                 the demo questions
``VSINK_DEVICE``          ``cpu``, ``cuda``, ``cuda:N``, ``mps``           CUDA when available
``VSINK_DTYPE``           ``float32``, ``bfloat16``, ``float16`` (aliases)  float32
``VSINK_LIMIT``           items a notebook runs over (a positive integer)  ``config.NOTEBOOK_LIMIT``
``VSINK_RUN_DIR``         folder for a notebook's run records              a fresh temporary folder
========================  ===============================================  ======================

A bad value is refused before any model loads, in one line naming the
variable; so is a misspelt variable close to one of these names (``VSINK_DTPYE``),
which would otherwise be ignored without a word.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from analysis.config import NOTEBOOK_LIMIT
from analysis.errors import UserInputError
from analysis.loading import DEMO_MODEL_DIR, resolve_device, resolve_dtype

#: Every variable :func:`setup` reads (the table in the module doc).
VARIABLES = (
    "VSINK_MODEL",
    "VSINK_IMAGES",
    "VSINK_QUESTIONS",
    "VSINK_DEVICE",
    "VSINK_DTYPE",
    "VSINK_LIMIT",
    "VSINK_RUN_DIR",
)
DEMO_IMAGES = DEMO_MODEL_DIR.parent / "images"
DEMO_QUESTIONS = DEMO_MODEL_DIR.parent / "questions.jsonl"


class NotebookSettingError(UserInputError):
    """A ``VSINK_*`` variable holds a value the notebooks cannot use."""


@dataclass(frozen=True)
class NotebookSettings:
    """What a notebook runs on; built by :func:`setup`, never changed afterwards."""

    model: str
    images: Path
    questions: Path
    device: torch.device
    dtype: torch.dtype
    limit: int
    run_dir: Path | None

    @property
    def is_demo(self) -> bool:
        """True when the model is the bundled synthetic demo model (its planted truth applies)."""
        path = Path(self.model).expanduser()
        return path.is_dir() and path.resolve() == DEMO_MODEL_DIR.resolve()

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "images": str(self.images),
            "questions": str(self.questions),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "limit": self.limit,
            "run_dir": None if self.run_dir is None else str(self.run_dir),
        }


def _get(env: Mapping[str, str], name: str) -> str | None:
    """The variable's value, None when unset or blank (an empty ``VSINK_X=`` means unset)."""
    value = env.get(name)
    return value.strip() if value is not None and value.strip() else None


def _check_names(env: Mapping[str, str]) -> None:
    """Refuse a misspelt setting; mention other ``VSINK_*`` names it does not read."""
    unknown = sorted(k for k in env if k.startswith("VSINK_") and k not in VARIABLES)
    for name in unknown:
        close = difflib.get_close_matches(name, VARIABLES, n=1, cutoff=0.8)
        if close:
            raise NotebookSettingError(
                f"{name} is not a notebook setting; did you mean {close[0]}? "
                f"Settings: {', '.join(VARIABLES)}."
            )
    if unknown:
        warnings.warn(
            f"The notebooks do not read {', '.join(unknown)} (settings: {', '.join(VARIABLES)}).",
            stacklevel=3,
        )


def _path(env: Mapping[str, str], name: str, default: Path, *, folder: bool | None) -> Path:
    raw = _get(env, name)
    path = default if raw is None else Path(raw).expanduser()
    if folder is True and not path.is_dir():
        raise NotebookSettingError(f"{name}={raw!r}: {path} is not a folder.")
    if folder is False and not path.is_file():
        raise NotebookSettingError(f"{name}={raw!r}: {path} is not a file.")
    if folder is None and not path.exists():
        raise NotebookSettingError(f"{name}={raw!r}: {path} does not exist.")
    return path


def _limit(env: Mapping[str, str]) -> int:
    raw = _get(env, "VSINK_LIMIT")
    if raw is None:
        return NOTEBOOK_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        raise NotebookSettingError(f"VSINK_LIMIT={raw!r} is not an integer.") from None
    if limit < 1:
        raise NotebookSettingError(f"VSINK_LIMIT={raw!r} must be at least 1.")
    return limit


def setup(environ: Mapping[str, str] | None = None) -> NotebookSettings:
    """Read and check every ``VSINK_*`` setting (``environ`` defaults to ``os.environ``).

    Raises:
        NotebookSettingError: a value is unusable (message names the variable).
    """
    env = dict(os.environ if environ is None else environ)
    _check_names(env)
    raw_device, raw_dtype = _get(env, "VSINK_DEVICE"), _get(env, "VSINK_DTYPE")
    # resolve_* are the loader's own checks, so the notebooks accept what load_model does.
    try:
        device = resolve_device(raw_device)
    except ValueError as err:
        raise NotebookSettingError(f"VSINK_DEVICE={raw_device!r}: {err}") from None
    try:
        dtype = resolve_dtype(raw_dtype)
    except ValueError as err:
        raise NotebookSettingError(f"VSINK_DTYPE={raw_dtype!r}: {err}") from None
    run_dir = _get(env, "VSINK_RUN_DIR")
    if run_dir is not None and Path(run_dir).expanduser().is_file():
        raise NotebookSettingError(f"VSINK_RUN_DIR={run_dir!r} is a file, not a folder.")
    return NotebookSettings(
        model=_get(env, "VSINK_MODEL") or str(DEMO_MODEL_DIR),
        images=_path(env, "VSINK_IMAGES", DEMO_IMAGES, folder=None),
        questions=_path(env, "VSINK_QUESTIONS", DEMO_QUESTIONS, folder=False),
        device=device,
        dtype=dtype,
        limit=_limit(env),
        run_dir=None if run_dir is None else Path(run_dir).expanduser(),
    )
