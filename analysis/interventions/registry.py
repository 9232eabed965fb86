"""The condition grammar and the registry of condition kinds.

``baseline,var,var:p=0.3,rho=0.8;ablate-sinks,ablate-random:draws=3`` is a list
of tokens ``head[:key=value,...]``: a comma-separated piece with ``=`` and no
``:`` continues the previous token's options, so option lists need no
quoting. A trailing ``[k]`` (``ablate-random[1]``) is draw ``k`` of a seeded
condition, as its label writes it.

Each kind is a :class:`~analysis.interventions.base.ConditionSpec` subclass
registered with :func:`register`. A token's head picks the kinds that answer it
(``aliases`` map other heads onto a head plus options); among them, the one of
highest ``priority`` that :meth:`claims` the options parses it. So a new kind
that refines another (``var:to=text``) lives in its own file and only claims
its options. :func:`from_dict` reads a manifest entry back the same way.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import analysis.interventions as _package
from analysis.interventions.base import (
    _KINDS,
    ConditionError,
    ConditionSpec,
    ParseContext,
    register,
)

__all__ = [
    "BUILTIN",
    "from_dict",
    "grammar",
    "kind_of",
    "kinds",
    "parse",
    "register",
    "spec_class",
    "split_specs",
    "summary_lines",
]
# Every other module of the package is one condition kind: importing it registers it,
# so a new kind is one new file (file-name order is registration order).
_NOT_KINDS = frozenset({"base", "registry"})
BUILTIN: tuple[ModuleType, ...] = tuple(
    importlib.import_module(f"{_package.__name__}.{info.name}")
    for info in pkgutil.iter_modules(_package.__path__)
    if info.name not in _NOT_KINDS
)


def kinds() -> dict[str, type[ConditionSpec]]:
    """Every registered kind by its key."""
    return dict(_KINDS)


def _by_priority(classes: Sequence[type[ConditionSpec]]) -> list[type[ConditionSpec]]:
    return sorted(classes, key=lambda c: -c.priority)


def grammar() -> str:
    """The accepted tokens, for error messages and help text."""
    parts = [c.grammar for c in _KINDS.values() if c.grammar]
    aliases = [a for c in _KINDS.values() for a in c.aliases]
    return "; ".join(parts + ([", ".join(aliases)] if aliases else []))


def split_specs(spec: str | Sequence[str]) -> list[str]:
    """``"baseline,var:p=0.6,rho=0.8;ablate-sinks"`` -> one string per condition."""
    pieces = [spec] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for piece in pieces:
        for token in (t.strip() for t in piece.replace(";", ",").split(",")):
            if not token:
                continue
            if "=" in token and ":" not in token:
                if not out:
                    raise ConditionError(f"Condition option {token!r} has no condition before it.")
                out[-1] += "," + token
            else:
                out.append(token)
    return out


_DRAW = re.compile(r"^(?P<body>.*)\[(?P<draw>\d+)\]$")


def parse_token(token: str, context: ParseContext) -> list[ConditionSpec]:
    """The specs of one token (a seeded kind may expand into several draws)."""
    body, options = token, {}
    match = _DRAW.match(token)
    if match:
        body, options = match["body"], {"draw": match["draw"]}
    head, _, opts = body.partition(":")
    head = head.strip().lower()
    for cls in _KINDS.values():
        if head in cls.aliases:
            options = {**cls.aliases[head], **options}
            head = cls.heads[0]
            break
    for pair in filter(None, (o.strip() for o in opts.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not value.strip():
            raise ConditionError(f"Condition {token!r}: option {pair!r} must be key=value.")
        options[key.strip().lower()] = value.strip()
    candidates = _by_priority([c for c in _KINDS.values() if c.answers(head)])
    for cls in candidates:
        if cls.claims(options):
            return list(cls.parse(head, options, token, context))
    raise ConditionError(f"Unknown condition {token!r}; use {grammar()}.")


def parse(spec: str | Sequence[str], context: ParseContext | None = None) -> list[ConditionSpec]:
    """Specs from a condition list; names must be unique and at least one given."""
    context = context or ParseContext()
    specs = [s for token in split_specs(spec) for s in parse_token(token, context)]
    if not specs:
        raise ConditionError("No conditions given; e.g. --conditions baseline,var,ablate-sinks.")
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConditionError(f"Conditions listed twice: {', '.join(duplicates)}.")
    return specs


def spec_class(data: Mapping[str, Any]) -> type[ConditionSpec] | None:
    """The kind of a ``to_dict`` layout (a manifest entry), or None when none matches."""
    family = data.get("kind")
    for cls in _by_priority([c for c in _KINDS.values() if c.family == family]):
        if cls.claims_dict(data):
            return cls
    return None


def from_dict(data: Mapping[str, Any]) -> ConditionSpec:
    """The spec a ``to_dict`` layout describes."""
    cls = spec_class(data)
    if cls is None:
        raise ConditionError(
            f"Unknown condition layout {dict(data)!r}; kinds: {', '.join(sorted(_KINDS))}."
        )
    return cls.from_dict(data)


def kind_of(name: str) -> type[ConditionSpec] | None:
    """The kind of a condition label (None when it does not parse)."""
    try:
        specs = parse_token(name, ParseContext())
    except ValueError:
        return None
    return type(specs[0]) if specs else None


def summary_lines(summary: Mapping[str, Any]) -> list[str]:
    """Each condition kind's plain-text lines about a run summary (in condition order)."""
    lines: list[str] = []
    for name, entry in summary.get("conditions", {}).items():
        kind = kind_of(name)
        if kind is not None:
            lines += kind.summary_text(name, entry)
    return lines
