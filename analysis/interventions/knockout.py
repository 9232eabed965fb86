"""``ablate-{sinks,random,nonsink,visual}``: attention knock-out (:class:`analysis.ablation.KnockOut`).

Grammar: ``ablate-<target>[:mode=pre|post,layers=2-4]``; ``ablate-random:draws=K``
expands into K seeded draws named ``ablate-random[k]`` (a label that parses
back to its draw). ``positions`` is per prompt and not a dataset condition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np

from analysis.ablation import TARGETS, KnockOut, Mode
from analysis.interventions.base import (
    BuildContext,
    ConditionError,
    ConditionSpec,
    Intervention,
    ParseContext,
    fmt_option,
    parse_layers,
    refuse_unknown,
    register,
)
from analysis.results import to_jsonable

if TYPE_CHECKING:
    from analysis.loading import LoadedModel
    from analysis.tokens import ModelInputs

# Knock-out targets that make sense over a dataset (``positions`` is per prompt).
ABLATE_TARGETS = tuple(t for t in TARGETS if t != "positions")
# Targets whose keys come from the phi classifier.
SINK_TARGETS = ("sinks", "random", "nonsink")


@register
@dataclass(frozen=True)
class KnockOutSpec(ConditionSpec):
    """Block attention from the text queries to the target keys, in ``layers`` (all)."""

    name: str
    target: str
    mode: Mode = "pre"
    layers: tuple[int, ...] | None = None
    draw: int = 0
    kind: ClassVar[str] = "ablate"
    family: ClassVar[str] = "ablate"
    heads: ClassVar[tuple[str, ...]] = tuple(f"ablate-{t}" for t in ABLATE_TARGETS)
    grammar: ClassVar[str] = (
        f"ablate-{{{','.join(ABLATE_TARGETS)}}}[:mode=pre|post,layers=..,draws=..]"
    )

    def __post_init__(self) -> None:
        if self.target not in ABLATE_TARGETS:
            raise ConditionError(
                f"Condition {self.name!r}: knock-out target must be one of "
                f"{', '.join('ablate-' + t for t in ABLATE_TARGETS)}."
            )
        if self.mode not in ("pre", "post"):
            raise ConditionError(f"Condition {self.name!r}: mode is pre or post.")

    @classmethod
    def answers(cls, head: str) -> bool:
        # Every ablate-* head, so an unknown target gets the knock-out's own message.
        return head.startswith("ablate-")

    @classmethod
    def parse(
        cls, head: str, options: dict[str, str], token: str, context: ParseContext
    ) -> list[KnockOutSpec]:
        target = head.removeprefix("ablate-")
        if target not in ABLATE_TARGETS:
            raise ConditionError(
                f"Condition {token!r}: knock-out target must be one of "
                f"{', '.join('ablate-' + t for t in ABLATE_TARGETS)}."
            )
        seeded = target == "random"
        refuse_unknown(token, options, ["mode", "layers", *(["draws", "draw"] if seeded else [])])
        mode = options.get("mode", "pre")
        if mode not in ("pre", "post"):
            raise ConditionError(f"Condition {token!r}: mode is pre or post.")
        layers = parse_layers(options["layers"]) if "layers" in options else None
        if "draws" in options and "draw" in options:
            raise ConditionError(f"Condition {token!r}: give draws or a [draw] suffix, not both.")
        try:
            draws = int(options.get("draws", "1"))
        except ValueError:
            raise ConditionError(f"Condition {token!r}: draws must be an integer.") from None
        if draws < 1:
            raise ConditionError(f"Condition {token!r}: draws must be >= 1.")
        shown = [f"mode={mode}"] if mode != "pre" else []
        shown += [f"layers={fmt_option(layers)}"] if layers is not None else []
        base = head + (":" + ",".join(shown) if shown else "")
        mode_ = cast(Mode, mode)
        if "draw" in options:  # one draw of a seeded condition, as its label names it
            draw = int(options["draw"])
            return [cls(f"{base}[{draw}]", target, mode_, layers, draw)]
        return [
            cls(base if draws == 1 else f"{base}[{draw}]", target, mode_, layers, draw)
            for draw in range(draws)
        ]

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(
            {
                "name": self.name,
                "kind": self.family,
                "target": self.target,
                "mode": self.mode,
                "layers": self.layers,
                "draw": self.draw,
            }
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KnockOutSpec:
        layers = data.get("layers")
        return cls(
            str(data["name"]),
            str(data["target"]),
            cast(Mode, data.get("mode", "pre")),
            None if layers is None else tuple(int(x) for x in layers),
            int(data.get("draw", 0)),
        )

    @property
    def needs_dims(self) -> bool:
        return self.target in SINK_TARGETS

    @property
    def layers_used(self) -> tuple[int, ...] | None:
        return self.layers

    def build(self, model: LoadedModel, inputs: ModelInputs, context: BuildContext) -> Intervention:
        return KnockOut(
            model,
            inputs,
            target=cast(Any, self.target),
            dims=context.dims if self.needs_dims else None,
            tau=context.tau,
            mode=self.mode,
            layers=self.layers,
            seed=context.seed,
            draw=self.draw,
            sample_keys=None if context.sample_keys is None else list(context.sample_keys),
        )

    @classmethod
    def summary_entries(cls, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        blocked = [r["blocked"] for r in records if "blocked" in r]
        return {"blocked_per_layer_mean": np.mean(blocked, axis=0).tolist()} if blocked else {}
