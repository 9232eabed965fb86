"""One validation layer for the numbers every analysis takes (CLI and Python API alike).

Each setting has one rule in :data:`RULES` (finite, in range, of the right
type). :func:`check_settings` applies them by name and raises
:class:`ConfigError` (a ``ValueError``) with one line saying which setting,
what it got and what is allowed. The CLI calls it before any model is loaded
or any output created; the config objects (:class:`analysis.var.VarConfig`)
and :func:`analysis.evaluation.evaluate` call the same rules, so a bad number
never runs silently (``tau=nan`` would otherwise find no sinks anywhere).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from analysis.errors import UserInputError


class ConfigError(UserInputError):
    """A setting is unusable; the message names it, the value and what is allowed."""


@dataclass(frozen=True)
class Rule:
    """A numeric setting: integer or real, bounds (open or closed), None allowed or not."""

    integer: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False

    def describe(self) -> str:
        """``in [0, 1] (a finite number)``, ``positive (a finite number)``, ``>= 1 (an integer)``."""
        kind = "an integer" if self.integer else "a finite number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            bounds = f"in {left}{self.low:g}, {self.high:g}{right}"
        elif self.low == 0 and self.low_open:
            bounds = "positive"
        elif self.low is not None:
            bounds = f"{'>' if self.low_open else '>='} {self.low:g}"
        else:
            bounds = kind
            kind = ""
        extra = ", or None" if self.optional else ""
        return f"{bounds} ({kind}{extra})" if kind else f"{bounds}{extra}"

    def check(self, name: str, value: Any) -> Any:
        """``value`` as an int or float; :class:`ConfigError` when it breaks the rule."""
        if value is None and self.optional:
            return None
        wrong = ConfigError(f"{name} must be {self.describe()}, got {value!r}.")
        # bool is an int to Python, but True as a threshold is always a mistake.
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(
                f"{name} must be {self.describe()}, got {value!r} ({type(value).__name__})."
            )
        number = float(value)
        if not math.isfinite(number):
            raise wrong
        if self.integer:
            if not number.is_integer():
                raise wrong
            number = int(number)
        if self.low is not None and (number < self.low or (self.low_open and number == self.low)):
            raise wrong
        if self.high is not None and (
            number > self.high or (self.high_open and number == self.high)
        ):
            raise wrong
        return number


FRACTION = Rule(low=0.0, high=1.0)
POSITIVE = Rule(low=0.0, low_open=True)
COUNT = Rule(integer=True, low=1)

# One rule per setting name, shared by the CLI options and the Python API.
RULES: dict[str, Rule] = {
    "tau": POSITIVE,
    "p": FRACTION,
    "rho": FRACTION,
    "min_image_attention": FRACTION,
    "level": Rule(low=0.0, high=1.0, low_open=True, high_open=True),
    "limit": Rule(integer=True, low=1, optional=True),
    "batch_size": COUNT,
    "max_new_tokens": Rule(integer=True, low=0),
    "max_length": Rule(integer=True, low=1, optional=True),
    "n_boot": COUNT,
    "n_calibration": COUNT,
    "draws": COUNT,
    "top": COUNT,
    "seed": Rule(integer=True, low=0),
    "min_ratio": POSITIVE,
    "min_abs": Rule(low=0.0),
    "scale": POSITIVE,
    "focus": Rule(integer=True, low=0),
    "layer": Rule(integer=True, low=0, optional=True),
}


def check_settings(**values: Any) -> dict[str, Any]:
    """Check each named setting against its rule in :data:`RULES`; the checked values.

    ``check_settings(tau=20, p=0.6)`` passes; ``check_settings(tau=float("nan"))``
    raises ``ConfigError("tau must be a finite number > 0, got nan.")``.
    """
    return {name: RULES[name].check(name, value) for name, value in values.items()}


def check_known(settings: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`check_settings` on the entries of ``settings`` that have a rule."""
    return check_settings(**{k: v for k, v in settings.items() if k in RULES})


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> str:
    options = tuple(allowed)
    if value not in options:
        raise ConfigError(f"{name} must be one of {', '.join(options)}, got {value!r}.")
    return value


def check_layers(
    name: str, layers: Iterable[Any] | None, n_layers: int | None = None
) -> tuple[int, ...] | None:
    """Layer indices: non-negative integers, below ``n_layers`` when it is known."""
    if layers is None:
        return None
    if isinstance(layers, str | bytes) or not isinstance(layers, Iterable):
        raise ConfigError(f"{name} must be a sequence of layer indices, got {layers!r}.")
    rule = Rule(integer=True, low=0, high=None if n_layers is None else n_layers - 1)
    values = tuple(rule.check(f"{name} entry", layer) for layer in layers)
    if not values:
        raise ConfigError(f"{name} must list at least one layer (or be None for the default).")
    return values


def layers_out_of_range(what: str, layers: Iterable[int], n_layers: int) -> str | None:
    """The one wording of a layer-range refusal, or None when every layer exists."""
    bad = sorted({int(x) for x in layers if not 0 <= int(x) < n_layers})
    if not bad:
        return None
    return (
        f"{what}: layers {bad} out of range (the model has {n_layers} layers, 0..{n_layers - 1})."
    )


def check_model_layers(what: str, layers: Iterable[int], n_layers: int) -> list[int]:
    """Sorted distinct layers of a model with ``n_layers`` layers; refuses any it lacks."""
    chosen = sorted({int(x) for x in layers})
    message = layers_out_of_range(what, chosen, n_layers)
    if message is not None:
        raise ConfigError(message)
    return chosen
