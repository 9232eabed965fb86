"""Every default of the toolkit, once.

The paper's constants (``../shared/PAPER_NOTES.md``) and the toolkit's own
defaults live here and nowhere else: functions, CLI options and config
dataclasses read them from this module instead of repeating the literal.
The config dataclasses (settings objects that validate themselves and
round-trip through ``to_dict`` / ``from_dict``) build on these values.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# --------------------------------------------------------------------------- the paper's method

#: phi threshold of a sink token (phi >= tau), section "sink tokens".
TAU = 20.0
#: share of the image attention a row must give to non-sink visual tokens (r >= rho).
RHO = 0.5
#: minimum image attention s of an image-centric row.
MIN_IMAGE_ATTENTION = 0.2
#: fraction of the visual sink attention VAR moves (the paper's convention).
P = 0.6
#: a dim is a sink dim when at most this fraction of the text tokens reaches tau on it.
MAX_TEXT_FRACTION = 0.5

# --------------------------------------------------------------------------- statistics

#: bootstrap resamples for confidence intervals (every CI in results, tables and plots).
N_BOOT = 1000
#: confidence level of every interval.
CI_LEVEL = 0.95
#: seed of every random draw (bootstrap, random controls) unless one is given.
SEED = 0

# --------------------------------------------------------------------------- running

#: tokens generated per answer.
MAX_NEW_TOKENS = 16
#: samples per forward pass.
BATCH_SIZE = 1
#: items a notebook runs over on a real dataset unless VSINK_LIMIT says otherwise.
NOTEBOOK_LIMIT = 16


# --------------------------------------------------------------------------- evaluation

#: candidate answers of an evaluation; the first is the positive class.
ANSWERS = ("yes", "no")
#: tokens generated per evaluated item (a yes/no answer and its first words).
EVAL_MAX_NEW_TOKENS = 8
#: distinct images the sink dims are discovered on when the registry has none.
N_CALIBRATION = 8
#: the VAR preset of ``var`` conditions that name none.
VAR_PRESET = "paper"
#: how long a rank waits at a barrier for the others (a fast rank waits for a slow one).
DISTRIBUTED_TIMEOUT_HOURS = 24.0


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The settings of an evaluation run (:func:`analysis.evaluation.evaluate`).

    What the run computes, not where it writes or how it reports (the run
    folder, the dataset description, the progress bar and ``force`` are
    arguments of the call). Checked on construction with the shared rules of
    :mod:`analysis.checks`, so a bad setting is refused before any work;
    ``from_dict(c.to_dict()) == c``.
    """

    conditions: tuple[str, ...] = ("baseline",)
    answers: tuple[str, ...] = ANSWERS
    max_new_tokens: int = EVAL_MAX_NEW_TOKENS
    batch_size: int = BATCH_SIZE
    limit: int | None = None
    dims: tuple[int, ...] | None = None
    tau: float = TAU
    rho: float = RHO
    min_image_attention: float = MIN_IMAGE_ATTENTION
    seed: int = SEED
    collect_stats: bool = True
    n_calibration: int = N_CALIBRATION
    n_boot: int = N_BOOT
    level: float = CI_LEVEL
    var_preset: str = VAR_PRESET

    def __post_init__(self) -> None:
        # Imported here: config.py is the leaf every module reads its defaults from.
        from analysis.checks import ConfigError, Rule, check_choice, check_settings
        from analysis.var import PRESETS

        checked = check_settings(
            batch_size=self.batch_size,
            max_new_tokens=self.max_new_tokens,
            limit=self.limit,
            tau=self.tau,
            rho=self.rho,
            min_image_attention=self.min_image_attention,
            seed=self.seed,
            n_calibration=self.n_calibration,
            n_boot=self.n_boot,
            level=self.level,
        )
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        conditions = (self.conditions,) if isinstance(self.conditions, str) else self.conditions
        answers = (self.answers,) if isinstance(self.answers, str) else self.answers
        for name, values in (("conditions", conditions), ("answers", answers)):
            if not values or not all(isinstance(v, str) and v.strip() for v in values):
                raise ConfigError(f"{name} must be non-empty strings, got {values!r}.")
        answers = tuple(a.strip() for a in answers)
        if len(set(answers)) != len(answers):
            raise ConfigError(f"answers must be distinct, got {answers!r}.")
        object.__setattr__(self, "conditions", tuple(conditions))
        object.__setattr__(self, "answers", answers)
        if self.dims is not None:
            if isinstance(self.dims, str | bytes):
                raise ConfigError(f"dims must be a sequence of integers, got {self.dims!r}.")
            dim = Rule(integer=True, low=0)
            object.__setattr__(self, "dims", tuple(dim.check("dims entry", d) for d in self.dims))
        if not isinstance(self.collect_stats, bool):
            raise ConfigError(f"collect_stats must be True or False, got {self.collect_stats!r}.")
        check_choice("var_preset", self.var_preset, PRESETS)
        from analysis.evaluation import parse_conditions

        # The grammar's own errors (unknown condition, bad option) before any work.
        parse_conditions(list(self.conditions), tau=self.tau, rho=self.rho, preset=self.var_preset)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: tuples become lists."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalConfig:
        """The config of :meth:`to_dict`'s output; unknown keys are refused."""
        from analysis.checks import ConfigError

        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"EvalConfig: unknown setting(s) {unknown}; known: {sorted(names)}.")
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
        }
        return cls(**values)

    def evaluate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`analysis.evaluation.evaluate` these settings are."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
