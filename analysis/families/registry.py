"""The one registry of LMM families: register a :class:`Family` subclass, look it up by name or architecture."""

from __future__ import annotations

from typing import TypeVar

from analysis.errors import VsinkError
from analysis.families.base import Family

_FAMILIES: dict[str, Family] = {}

F = TypeVar("F", bound=type[Family])


class UnknownFamilyError(VsinkError, ValueError):
    """No registered family has this name or architecture."""


def register(cls: F) -> F:
    """Class decorator: register one instance of a family under ``cls.name``."""
    if cls.name in _FAMILIES:
        raise ValueError(f"Family {cls.name!r} is registered twice.")
    _FAMILIES[cls.name] = cls()
    return cls


def families() -> dict[str, Family]:
    """Every registered family by name (registration order)."""
    return dict(_FAMILIES)


def get(name: str) -> Family:
    if name not in _FAMILIES:
        raise UnknownFamilyError(f"Unknown family {name!r}; choose from {sorted(_FAMILIES)}.")
    return _FAMILIES[name]


def supported_architectures() -> list[str]:
    return [arch for family in _FAMILIES.values() for arch in family.architectures]


def for_architecture(architecture: str) -> Family:
    for family in _FAMILIES.values():
        if architecture in family.architectures:
            return family
    raise UnknownFamilyError(
        f"Architecture {architecture!r} is not supported. Supported architectures: "
        + ", ".join(supported_architectures())
        + "."
    )
