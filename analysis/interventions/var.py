"""``var``: visual attention redistribution (:class:`analysis.var.VarIntervention`).

Grammar: ``var[:p=..,rho=..,s=..,tau=..,layers=2-4,convention=official,preset=official,
rho_preset=general]``. Defaults: the run's rho and tau with the ``paper``
preset (``var:preset=official`` starts from the official one, whose values
are fixed), layers 2 .. L-2. ``rho_preset`` sets rho to the paper's value of a
task family (:data:`analysis.config.RHO_PRESETS`).

:class:`VarFamily` is the shared part of every VAR kind: the option parsing,
the canonical label (options equal to their default dropped, the rest in a
fixed order, so ``var:p=0.6`` is ``var``), the manifest layout and the
per-item ``var`` record with its summary. Kinds that change where the budget
goes or which rows move (:mod:`analysis.interventions.var_ablations`,
:mod:`analysis.interventions.var_text`) subclass it and claim their options.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from analysis.ablations import DEFAULT_ROWS, DEFAULT_TARGET, ROW_RULES, Variant, var_intervention
from analysis.ablations import TARGETS as VAR_TARGETS
from analysis.config import RHO_PRESETS, VAR_PRESETS, VarConfig
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

# Option names of the grammar -> VarConfig fields (numbers).
VAR_KEYS = {"p": "p", "rho": "rho", "s": "min_image_attention", "tau": "tau"}
VAR_OPTIONS = (*VAR_KEYS, "layers", "convention", "preset", "rows", "to", "target", "rho_preset")


def target_option(options: Mapping[str, str]) -> str:
    """Where the budget goes (``to=``, or its synonym ``target=``)."""
    return options.get("to", options.get("target", DEFAULT_TARGET)).lower()


def rows_option(options: Mapping[str, str]) -> str:
    return options.get("rows", DEFAULT_ROWS).lower()


def parse_var_options(
    options: dict[str, str], token: str, context: ParseContext
) -> tuple[str, VarConfig, Variant]:
    """The label, settings and variant of a VAR token."""
    refuse_unknown(token, options, VAR_OPTIONS)
    options = dict(options)
    if "to" in options and "target" in options:
        raise ConditionError(f"Condition {token!r}: give to or target, not both.")
    preset = options.get("preset", context.preset)
    if preset not in VAR_PRESETS:
        raise ConditionError(f"Condition {token!r}: preset is {' or '.join(VAR_PRESETS)}.")
    # The paper preset takes the run's rho and tau; the official one is fixed.
    defaults = (
        VarConfig(rho=context.rho, tau=context.tau)
        if preset == "paper"
        else VarConfig.preset(preset)
    )
    if "rho_preset" in options:
        if "rho" in options:
            raise ConditionError(f"Condition {token!r}: give rho or rho_preset, not both.")
        if options["rho_preset"] not in RHO_PRESETS:
            raise ConditionError(
                f"Condition {token!r}: rho_preset is one of {', '.join(RHO_PRESETS)}."
            )
        options["rho"] = str(RHO_PRESETS[options.pop("rho_preset")])
    rows, target = rows_option(options), target_option(options)
    if rows not in ROW_RULES or target not in VAR_TARGETS:
        raise ConditionError(
            f"Condition {token!r}: rows is one of {', '.join(ROW_RULES)}, "
            f"to is one of {', '.join(VAR_TARGETS)}."
        )
    values: dict[str, Any] = {}
    try:
        for key, attr in VAR_KEYS.items():
            if key in options:
                values[attr] = float(options[key])
    except ValueError:
        raise ConditionError(f"Condition {token!r}: option values must be numbers.") from None
    if "layers" in options:
        values["layers"] = parse_layers(options["layers"])
    if "convention" in options:
        values["convention"] = options["convention"]
        if values["convention"] not in ("paper", "official"):
            raise ConditionError(f"Condition {token!r}: convention is paper or official.")
    config = VarConfig(**{**defaults.to_dict(), **values})
    shown = [
        f"{key}={fmt_option(getattr(config, attr))}"
        for key, attr in [*VAR_KEYS.items(), ("layers", "layers"), ("convention", "convention")]
        if getattr(config, attr) != getattr(defaults, attr)
    ]
    shown = ([f"preset={preset}"] if preset != "paper" else []) + shown
    shown += [f"rows={rows}"] if rows != DEFAULT_ROWS else []
    shown += [f"to={target}"] if target != DEFAULT_TARGET else []
    name = "var" + (":" + ",".join(shown) if shown else "")
    return name, config, Variant(rows=rows, to=target)


def _var_rows(v: Mapping[str, Any]) -> int:
    return int(v["prefill_rows_changed"] + v["decode_rows_changed"])


class VarFamily(ConditionSpec):
    """What every VAR kind shares (subclasses are frozen dataclasses with ``name``,
    ``var`` and, for ablations, ``variant``)."""

    family: ClassVar[str] = "var"
    heads: ClassVar[tuple[str, ...]] = ("var",)
    var: VarConfig
    # The VAR ablation (rows / target other than VAR's); None for VAR itself.
    variant: Variant | None

    @classmethod
    def parse(
        cls, head: str, options: dict[str, str], token: str, context: ParseContext
    ) -> list[Any]:
        name, config, variant = parse_var_options(options, token, context)
        return [cls._make(name, config, variant, token)]

    @classmethod
    def _make(cls, name: str, config: VarConfig, variant: Variant, token: str) -> VarFamily:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.family, "var": self.var.to_dict()}
        if self.variant is not None and not self.variant.is_var:
            out["variant"] = self.variant.to_dict()
        return to_jsonable(out)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        config = VarConfig.from_dict(data["var"])
        variant = Variant(**data["variant"]) if "variant" in data else Variant()
        return cls._make(str(data["name"]), config, variant, str(data["name"]))

    @property
    def needs_dims(self) -> bool:
        return True

    @property
    def registry_dims(self) -> bool:
        return self.var.registry_dims

    @property
    def layers_used(self) -> tuple[int, ...] | None:
        return self.var.layers

    def build(self, model: LoadedModel, inputs: ModelInputs, context: BuildContext) -> Intervention:
        return var_intervention(
            model,
            inputs,
            dims=context.dims,
            config=self.var,
            variant=self.variant,
            seed=context.seed,
            sample_keys=None if context.sample_keys is None else list(context.sample_keys),
        )

    def record_fields(self, intervention: Intervention) -> list[dict[str, Any]]:
        return [{"var": v} for v in intervention.per_sample()]

    @classmethod
    def summary_entries(cls, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        var_rows = [r["var"] for r in records if "var" in r]
        if not var_rows:
            return {}
        return {
            "var": {
                "rows_changed_mean": float(np.mean([_var_rows(v) for v in var_rows])),
                "mass_moved_mean": float(
                    np.mean([v["prefill_mass_moved"] + v["decode_mass_moved"] for v in var_rows])
                ),
                "noop_items": sum(_var_rows(v) == 0 for v in var_rows),
            }
        }

    @classmethod
    def summary_text(cls, name: str, entry: Mapping[str, Any]) -> list[str]:
        var = entry.get("var")
        if var is None:
            return []
        return [
            f"{name}: {var['rows_changed_mean']:.1f} rows changed and "
            f"{var['mass_moved_mean']:.3f} attention mass moved per item; "
            f"no-op on {var['noop_items']} items"
        ]


@register
@dataclass(frozen=True)
class VarSpec(VarFamily):
    """VAR as the paper defines it: image-centric rows, budget to the non-sink visual tokens."""

    name: str
    var: VarConfig
    variant = None  # VAR itself, not an ablation (a class attribute, not a field)
    kind: ClassVar[str] = "var"
    grammar: ClassVar[str] = (
        "var[:p=..,rho=..,s=..,tau=..,layers=2-4,convention=..,preset=..,rho_preset=..]"
    )

    @classmethod
    def claims_dict(cls, data: Mapping[str, Any]) -> bool:
        return "variant" not in data

    @classmethod
    def _make(cls, name: str, config: VarConfig, variant: Variant, token: str) -> VarSpec:
        # Reached only when no ablation kind claimed the options: say what is allowed.
        if not variant.is_var:
            raise ConditionError(
                f"Condition {token!r}: rows is one of {', '.join(ROW_RULES)}, "
                f"to is one of {', '.join(VAR_TARGETS)}."
            )
        return cls(name, config)
