"""LMM families: one module per family, one registry (see :mod:`analysis.families.base`).

Importing this package registers every family module listed below.
"""

from analysis.families.base import (
    COMMON_CONFIG_KEYS,
    AttentionEdits,
    Family,
    UnsupportedConfigError,
    VisualToken,
)
from analysis.families.registry import (
    UnknownFamilyError,
    families,
    for_architecture,
    get,
    register,
    supported_architectures,
)

__all__ = [
    "COMMON_CONFIG_KEYS",
    "AttentionEdits",
    "Family",
    "UnknownFamilyError",
    "UnsupportedConfigError",
    "VisualToken",
    "families",
    "for_architecture",
    "get",
    "register",
    "supported_architectures",
]
from analysis.families import idefics3 as _idefics3  # noqa: F401  (registers the family)
