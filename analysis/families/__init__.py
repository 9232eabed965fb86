"""LMM families: one module per family, one registry (see :mod:`analysis.families.base`).

Importing this package imports every module in it, so each family module
registers itself: adding a family is adding one file here (and its contract
test class in ``tests/test_family_contracts.py``).
"""

import importlib
import pkgutil

from analysis.families.base import (
    COMMON_CONFIG_KEYS,
    AttentionEdits,
    Family,
    UnsupportedConfigError,
    VisualToken,
    grid_tokens,
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
    "grid_tokens",
    "register",
    "supported_architectures",
]

# Every module but the machinery is a family module (sorted: a stable registration order).
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_module.name}")
