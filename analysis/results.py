"""Common behaviour of result dataclasses: JSON summaries and saving with provenance.

Every analysis returns a dataclass that holds tensors plus aligned labels and a
``config`` dict (model description, parameters, package versions). ``to_json``
gives a JSON-ready dict; ``save`` writes it next to the tensors, so every number
can be traced back to the configuration that produced it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

_PACKAGES = ("visual-attention-sink", "torch", "transformers", "transformer-lens")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str | None:
    """The toolkit's git commit when it runs from a checkout (None otherwise).

    Asked once per process: the checkout does not change under a running
    process, and every result records it (a ``git`` spawn each would add up).
    """
    return _git_commit()


@functools.cache
def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def provenance() -> dict[str, Any]:
    return {
        "versions": package_versions(),
        "git_commit": git_commit(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def to_jsonable(value: Any) -> Any:
    """Tensors become (nested) lists; dataclasses become dicts."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        return value.tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    if isinstance(value, Path):
        return str(value)
    return value


class ResultMixin:
    """``to_json`` / ``save`` for result dataclasses.

    Subclasses list their small, JSON-friendly fields in ``json_fields``; tensor
    fields listed in ``tensor_fields`` are saved in full to a ``.pt`` file.
    """

    json_fields: tuple[str, ...] = ()
    tensor_fields: tuple[str, ...] = ()
    kind: str = "result"

    def summary(self) -> dict[str, Any]:
        return {}

    def to_json(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"kind": self.kind}
        payload.update({name: to_jsonable(getattr(self, name)) for name in self.json_fields})
        payload["summary"] = to_jsonable(self.summary())
        payload["config"] = to_jsonable(getattr(self, "config", {}))
        return payload

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (JSON) and, when there are tensors, ``path`` with suffix ``.pt``."""
        path = Path(path)
        if path.suffix != ".json":
            path = path / f"{self.kind}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2))
        if self.tensor_fields:
            tensors = {name: getattr(self, name) for name in self.tensor_fields}
            torch.save(tensors, path.with_suffix(".pt"))
        return path
