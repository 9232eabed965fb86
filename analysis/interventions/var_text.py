"""``var:to=text`` (also ``var:target=text`` and ``var-to-text``): VAR with the budget
given to the text tokens.

The paper's ablation of VAR's target: in the rows VAR chooses, ``p`` of the
visual sink attention is taken off the sinks as VAR does, and given to the
text tokens that are not sinks (the prompt's and, while decoding, the
generated ones) in proportion to their attention, instead of to the non-sink
visual tokens. The row rules combine (``var:to=text,rows=random``), so do all
of VAR's options (``var-to-text:p=0.3``). The target is
:data:`analysis.ablations.TARGETS` ``["text"]``, applied by
:class:`analysis.ablations.VariantIntervention` through VAR's
``_redistribute`` extension point.

Labels keep the ablation's historical names (``var:to=text``), so runs that
used it read back the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from analysis.ablations import Variant
from analysis.config import VarConfig
from analysis.interventions.base import ConditionError, register
from analysis.interventions.var import VarFamily, target_option

TEXT = "text"
# The rows of VAR, the budget to text (a frozen value, shared as the default).
TO_TEXT = Variant(to=TEXT)


@register
@dataclass(frozen=True)
class VarTextSpec(VarFamily):
    """VAR whose moved sink attention goes to the non-sink text tokens."""

    name: str
    var: VarConfig
    variant: Variant = TO_TEXT
    kind: ClassVar[str] = "var-to-text"
    # Asked before the other VAR kinds: it owns every token whose target is text.
    priority: ClassVar[int] = 20
    aliases: ClassVar[Mapping[str, Mapping[str, str]]] = {"var-to-text": {"to": TEXT}}
    grammar: ClassVar[str] = "var:to=text (var:target=text, var-to-text; with var's options)"

    def __post_init__(self) -> None:
        if self.variant.to != TEXT:
            raise ConditionError(f"{self.name}: the var-to-text kind sends the budget to text.")

    @classmethod
    def claims(cls, options: Mapping[str, str]) -> bool:
        return target_option(options) == TEXT

    @classmethod
    def claims_dict(cls, data: Mapping[str, Any]) -> bool:
        return data.get("variant", {}).get("to") == TEXT

    @classmethod
    def _make(cls, name: str, config: VarConfig, variant: Variant, token: str) -> VarTextSpec:
        return cls(name, config, variant)
