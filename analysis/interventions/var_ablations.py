"""The paper's VAR ablations: other rows (``var:rows=all|random``) or all visual tokens as
the target (``var:to=visual``), also named ``var-all-heads``, ``var-random-heads`` and
``var-to-visual``. The maths is :mod:`analysis.ablations`; options combine with VAR's
(``var-all-heads:p=0.3``). The budget to text tokens is its own kind
(:mod:`analysis.interventions.var_text`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from analysis.ablations import ABLATION_ALIASES, DEFAULT_ROWS, DEFAULT_TARGET, Variant
from analysis.config import VarConfig
from analysis.interventions.base import register
from analysis.interventions.var import VarFamily, rows_option, target_option


@register
@dataclass(frozen=True)
class VarAblationSpec(VarFamily):
    """VAR with the rows or the target of one of the paper's ablations."""

    name: str
    var: VarConfig
    variant: Variant
    kind: ClassVar[str] = "var-ablation"
    priority: ClassVar[int] = 10
    aliases: ClassVar[Mapping[str, Mapping[str, str]]] = ABLATION_ALIASES
    grammar: ClassVar[str] = "var:rows=all|random, var:to=visual (with var's options)"

    @classmethod
    def claims(cls, options: Mapping[str, str]) -> bool:
        # Any other rows or target (unknown values are refused by the parse).
        return rows_option(options) != DEFAULT_ROWS or target_option(options) != DEFAULT_TARGET

    @classmethod
    def claims_dict(cls, data: Mapping[str, Any]) -> bool:
        return "variant" in data

    @classmethod
    def _make(cls, name: str, config: VarConfig, variant: Variant, token: str) -> VarAblationSpec:
        return cls(name, config, variant)
