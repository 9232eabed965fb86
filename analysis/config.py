"""Every default of the toolkit, once.

The paper's constants (``../shared/PAPER_NOTES.md``) and the toolkit's own
defaults live here and nowhere else: functions, CLI options and config
dataclasses read them from this module instead of repeating the literal.
The config dataclasses (settings objects that validate themselves and
round-trip through ``to_dict`` / ``from_dict``) build on these values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, TypeVar, get_args

from analysis.checks import ConfigError, check_choice, check_layers, check_settings
from analysis.errors import UserInputError

_T = TypeVar("_T")

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
#: rho of the paper's task families (``rho_preset=`` / ``--preset``).
RHO_PRESETS: dict[str, float] = {"general": 0.8, "hallucination": 0.5, "vision-centric": 0.9}
#: a head is image-centric when selected for at least this fraction of its text queries.
MIN_SELECTED_FRACTION = 0.5
#: a dim is a sink dim of a layer range when it is found in at least this fraction of it.
MIN_LAYER_FRACTION = 0.5
#: bootstrap resamples of quick interval estimates (head rankings, CSV exports).
N_BOOT_QUICK = 200
#: random knock-out draws of :func:`analysis.ablation.ablate`.
DRAWS = 5
#: heads listed in a run summary's ``heads.top`` and by ``vsink heads``.
TOP_HEADS = 10
#: random knock-out draws of the one-page report (a smaller, quicker control).
REPORT_DRAWS = 3
#: a massive activation peaks at least this many times the layer's median |x|.
DIM_MIN_RATIO = 100.0
#: absolute floor on a massive activation's peak (0: off).
DIM_MIN_ABS = 0.0
#: PNG resolution, times the figure size.
PNG_SCALE = 2.0
#: the VAR settings ``vsink sweep`` tries unless ``--grid`` says otherwise.
SWEEP_GRID = "p=0.2:0.8:0.2,rho=0.5,0.8"

# --------------------------------------------------------------------------- settings objects
#
# Frozen dataclasses that check themselves on construction (one-line ConfigError)
# and round-trip through plain JSON-able dicts: ``X.from_dict(x.to_dict()) == x``.

#: the conventions of ``VarConfig.convention`` / ``VarConfig.selection``.
Convention = Literal["paper", "official"]
CONVENTIONS: tuple[str, ...] = get_args(Convention)
#: where sink dims come from: the registry or discovery (``auto``), the registry only,
#: discovery only, or the explicit ``dims``.
DimsSource = Literal["auto", "registry", "discover", "explicit"]
DIMS_SOURCES: tuple[str, ...] = get_args(DimsSource)


def _layers_tuple(value: Any) -> tuple[int, ...] | None:
    return None if value is None else tuple(value)


def _check_bools(owner: str, obj: Any, names: tuple[str, ...]) -> None:
    for name in names:
        if not isinstance(getattr(obj, name), bool):
            raise ConfigError(f"{owner} {name} must be true or false, got {getattr(obj, name)!r}.")


def _from_dict(cls: type[_T], data: Mapping[str, Any]) -> _T:
    """``cls(**data)`` refusing unknown keys (a typo must not fall back to a default)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{cls.__name__} needs a mapping, got {type(data).__name__}.")
    unknown = sorted(set(data) - {f.name for f in fields(cls)})  # type: ignore[arg-type]
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown setting(s) {unknown}.")
    values = dict(data)
    for key in ("layers", "dims"):
        if key in values:
            values[key] = _layers_tuple(values[key])
    return cls(**values)


@dataclass(frozen=True)
class SinkConfig:
    """How sink tokens are found: phi >= tau (phi > tau when ``strict``) on the sink dims.

    Attributes:
        tau: phi threshold of a sink token.
        strict: sinks are ``phi > tau`` (the authors' code) instead of ``phi >= tau``.
        dims_source: where the sink dims come from (:data:`DIMS_SOURCES`).
        dims: the explicit dims (only, and required, with ``dims_source="explicit"``).
    """

    tau: float = TAU
    strict: bool = False
    dims_source: DimsSource = "auto"
    dims: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        check_settings(tau=self.tau)
        _check_bools("SinkConfig", self, ("strict",))
        check_choice("SinkConfig dims_source", self.dims_source, DIMS_SOURCES)
        if (self.dims_source == "explicit") != (self.dims is not None):
            raise ConfigError("SinkConfig: give dims exactly when dims_source is 'explicit'.")
        if self.dims is not None:
            check_layers("SinkConfig dims", self.dims)  # non-negative integers, at least one

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dims"] = None if self.dims is None else list(self.dims)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SinkConfig:
        return _from_dict(cls, data)


@dataclass(frozen=True)
class HeadSelection:
    """Which (layer, head, query) rows are image-centric: s >= min_image_attention, r >= rho.

    Attributes:
        rho: minimum visual non-sink share r of the image attention.
        min_image_attention: minimum image attention s.
        layers: layers considered (None: every layer).
        min_fraction: a head is image-centric when selected for at least this
            fraction of its text queries (on average over samples).
    """

    rho: float = RHO
    min_image_attention: float = MIN_IMAGE_ATTENTION
    layers: tuple[int, ...] | None = None
    min_fraction: float = MIN_SELECTED_FRACTION

    def __post_init__(self) -> None:
        check_settings(rho=self.rho, min_image_attention=self.min_image_attention)
        check_layers("HeadSelection layers", self.layers)
        if not 0.0 <= self.min_fraction <= 1.0 or isinstance(self.min_fraction, bool):
            raise ConfigError(
                f"HeadSelection min_fraction must be in [0, 1], got {self.min_fraction!r}."
            )

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> HeadSelection:
        """rho of one of the paper's task families (:data:`RHO_PRESETS`)."""
        check_choice("rho preset", name, RHO_PRESETS)
        return cls(**{"rho": RHO_PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["layers"] = None if self.layers is None else list(self.layers)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeadSelection:
        return _from_dict(cls, data)


@dataclass(frozen=True)
class VarConfig:
    """Settings of VAR. Two named presets (:meth:`preset`); ``VarConfig()`` is ``paper``.

    ``paper`` (the default) follows the paper's text: ``p`` is the fraction of
    sink attention moved, a row is image-centric when ``s >= MIN_IMAGE_ATTENTION``
    and ``r >= rho`` (float32), sinks have ``phi >= tau``, VAR runs in layers
    2 .. L-2 and the sink dims come from the registry or discovery.

    ``official`` reproduces the authors' code (MICV-yonsei/VisAttnSink,
    98e62d6) all at once: ``p`` and ``rho`` as its config states them (p = 0.6
    *keeps* 0.6 of sink attention and moves 0.4; rho = 0.5 caps the visual
    sink fraction), the sink fraction with ``1e-6`` per visual key in its
    denominator compared with ``<=``, ``s`` and the fraction in the
    attention's own dtype, sinks with ``phi > tau``, layers 2 .. L-1 (its flag
    to skip the last layer never takes effect) and the registry's sink dims.

    Attributes:
        p, rho: see ``convention``.
        min_image_attention: minimum ``s`` of a selected row.
        tau: phi threshold of sink tokens.
        layers: VAR layers; None means 2 .. L-2, or 2 .. L-1 with ``last_layer``.
        convention: ``paper`` (p moved, r >= rho) or ``official`` (p kept,
            visual sink fraction <= rho).
        selection: ``paper`` (r >= rho in float32) or ``official``
            (:func:`analysis.var_math.official_selection`).
        strict_tau: sinks are ``phi > tau`` instead of ``phi >= tau``.
        last_layer: default layers include the last one.
        registry_dims: sink dims come only from the registry (no discovery).
    """

    p: float = P
    rho: float = RHO
    min_image_attention: float = MIN_IMAGE_ATTENTION
    tau: float = TAU
    layers: tuple[int, ...] | None = None
    convention: Convention = "paper"
    selection: Convention = "paper"
    strict_tau: bool = False
    last_layer: bool = False
    registry_dims: bool = False

    def __post_init__(self) -> None:
        check_settings(p=self.p, rho=self.rho, min_image_attention=self.min_image_attention)
        check_settings(tau=self.tau)
        check_choice("VAR convention", self.convention, CONVENTIONS)
        check_choice("VAR selection", self.selection, CONVENTIONS)
        check_layers("VAR layers", self.layers)
        _check_bools("VAR", self, ("strict_tau", "last_layer", "registry_dims"))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> VarConfig:
        """The ``paper`` or ``official`` preset, with any field overridden."""
        if name not in VAR_PRESETS:
            raise UserInputError(f"Unknown VAR preset {name!r}; choose from {sorted(VAR_PRESETS)}.")
        return cls(**{**VAR_PRESETS[name], **overrides})

    @property
    def preset_name(self) -> str | None:
        """The preset this config equals on every field but ``layers``, if any."""
        mine = {k: v for k, v in self.to_dict().items() if k != "layers"}
        for name in VAR_PRESETS:
            reference = {k: v for k, v in VarConfig.preset(name).to_dict().items() if k != "layers"}
            if mine == reference:
                return name
        return None

    @property
    def moved_fraction(self) -> float:
        """The fraction of sink attention moved in a selected row."""
        from analysis.var_math import to_paper_convention

        return to_paper_convention(self.p, self.rho, self.convention)[0]

    def sinks(self) -> SinkConfig:
        """The sink settings VAR uses."""
        return SinkConfig(
            tau=self.tau,
            strict=self.strict_tau,
            dims_source="registry" if self.registry_dims else "auto",
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VarConfig:
        return _from_dict(cls, data)


#: VAR's named presets: field overrides of ``VarConfig()``.
VAR_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "official": {
        "p": P,
        "rho": RHO,
        "min_image_attention": MIN_IMAGE_ATTENTION,
        "tau": TAU,
        "convention": "official",
        "selection": "official",
        "strict_tau": True,
        "last_layer": True,
        "registry_dims": True,
    },
}


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
        from analysis.eval.conditions import parse_conditions

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
