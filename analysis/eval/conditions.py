"""The conditions of a run: the condition grammar parsed into registered specs.

A condition is a spec of a registered kind (:mod:`analysis.interventions.registry`):
it parses from the grammar, names itself, builds its hooks and supplies its record
fields and summary entries, so nothing here depends on which kinds exist.
"""

from __future__ import annotations

from collections.abc import Sequence

from analysis.config import RHO, TAU, VAR_PRESET
from analysis.errors import UserInputError
from analysis.interventions import registry
from analysis.interventions.base import ConditionSpec, ParseContext
from analysis.interventions.knockout import ABLATE_TARGETS as KNOCKOUT_TARGETS

Condition = ConditionSpec
ABLATE_TARGETS = KNOCKOUT_TARGETS


def parse_conditions(
    spec: str | Sequence[str],
    *,
    tau: float = TAU,
    rho: float = RHO,
    preset: str = VAR_PRESET,
) -> list[Condition]:
    """Conditions from specs like ``baseline,var,var:p=0.3,rho=0.8,ablate-sinks,ablate-random``.

    * ``baseline``: no intervention;
    * ``var[:p=..,rho=..,s=..,tau=..,layers=2-4,convention=official]``: VAR
      (defaults: p of the paper, the run's ``rho`` and ``tau``, layers 2 .. L-2);
      ``var:preset=official[,..]`` starts from the official preset instead
      (:meth:`analysis.config.VarConfig.preset`; the run's rho and tau do not apply);
      ``preset`` is the one a ``var`` without ``preset=`` starts from;
      ``rho_preset=general|hallucination|vision-centric`` sets rho to the paper's
      value for that task family (:data:`analysis.config.RHO_PRESETS`);
    * the paper's ablations (:mod:`analysis.ablations`): ``var:rows=all|random``
      (all heads; random heads, as many as VAR selects, seeded per item),
      ``var:to=visual`` (the budget to all visual tokens), also named
      ``var-all-heads``, ``var-random-heads``, ``var-to-visual``, and
      ``var:to=text`` (``var:target=text``, ``var-to-text``: the budget to the
      text tokens; :mod:`analysis.interventions.var_text`); options combine
      (``var-to-text:p=0.3``);
    * ``ablate-{sinks,random,nonsink,visual}[:mode=pre|post,layers=..]``:
      attention knock-out; ``ablate-random:draws=K`` expands into K seeded
      draws named ``ablate-random[k]``.

    Names are canonical: options equal to their default are dropped, the rest
    listed in a fixed order, so ``var:p=0.6`` is ``var``; a name parses back to
    an equal condition.
    """
    return registry.parse(spec, ParseContext(tau=tau, rho=rho, preset=preset))


def condition_specs(
    conditions: Sequence[str], *, tau: float, rho: float, preset: str
) -> list[Condition]:
    """Every condition of a run, parsed; refused when empty or when two share a name."""
    parsed = [
        c for spec in conditions for c in parse_conditions(spec, tau=tau, rho=rho, preset=preset)
    ]
    names = [c.name for c in parsed]
    if not parsed or len(set(names)) != len(names):
        raise UserInputError(f"Conditions must be non-empty with unique names, got {names}.")
    return parsed


def condition_labels(
    conditions: str | Sequence[str | Condition], *, tau: float, rho: float, preset: str
) -> tuple[str, ...]:
    """The condition strings of a run's settings, spec objects written as their names.

    A spec object stands for its canonical name, which must parse back to the same
    spec under the run's tau, rho and VAR preset (else the settings would record a
    different condition from the one that runs).
    """
    given = [conditions] if isinstance(conditions, str) else list(conditions)
    labels = []
    for spec in given:
        if isinstance(spec, Condition):
            if parse_conditions(spec.name, tau=tau, rho=rho, preset=preset) != [spec]:
                raise UserInputError(
                    f"Condition {spec.name!r} means another setting under this run's tau, rho "
                    "and VAR preset; pass it as a spec string."
                )
            labels.append(spec.name)
        else:
            labels.append(spec)
    return tuple(labels)


__all__ = [
    "ABLATE_TARGETS",
    "Condition",
    "condition_labels",
    "condition_specs",
    "parse_conditions",
]
