"""The one registry of dataset readers: register a reader, look it up by name or by file.

A reader is a function ``(ReadRequest) -> list of items`` registered with
:func:`register_reader`, which records what it reads: its name (the
``format`` a user gives), the file suffixes it claims (:data:`FOLDER` for a
folder), the benchmarks whose rules it serves (none: plain items scored as
yes/no answers), and which request fields it needs and which it can use.

:func:`read_dataset` is the one way in for every caller (CLI, notebooks,
scripts): it picks the reader (by ``format``, else by the source's suffix and
whether a benchmark is asked for), checks the request against what the reader
declares, and only then reads, so a wrong combination is a one-line error
before any file is parsed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from analysis.datasets import DatasetError, Item
from analysis.scoring.readers.base import BenchItem

#: The "suffix" of a source that is a folder.
FOLDER = "/"

Items: TypeAlias = Sequence[Item] | Sequence[BenchItem]


class UnknownFormatError(DatasetError):
    """No registered reader has this name, or reads this kind of file."""


@dataclass(frozen=True)
class ReadRequest:
    """A source and everything a reader may need besides it.

    Attributes:
        source: the dataset file or folder.
        benchmark: whose scoring rule applies (:data:`analysis.scoring.tasks.TASKS`),
            None for plain items.
        images: image root that relative image paths resolve inside.
        decode_dir: where images stored inside the file (base64, bytes) are written.
        answers: a separate answer file (LLaVA's VQA answers).
        prompt: the one prompt of an image folder.
        limit: read at most this many items.
    """

    source: Path
    benchmark: str | None = None
    images: Path | None = None
    decode_dir: Path | None = None
    answers: Path | None = None
    prompt: str | None = None
    limit: int | None = None

    def need_path(self, name: str) -> Path:
        """The path field ``name``; refused when missing (a reader called without Reader.check)."""
        value = getattr(self, name)
        if not isinstance(value, Path):
            raise DatasetError(f"This reader needs {_DESCRIBED[name]} ({name}).")
        return value

    def need_text(self, name: str) -> str:
        """The text field ``name`` (benchmark, prompt); refused when missing."""
        value = getattr(self, name)
        if not isinstance(value, str):
            raise DatasetError(f"This reader needs {_DESCRIBED[name]} ({name}).")
        return value


#: The request fields a reader may declare it requires or accepts.
OPTIONAL_FIELDS = tuple(f.name for f in dataclasses.fields(ReadRequest) if f.name != "source")
_DESCRIBED = {
    "benchmark": "a benchmark",
    "images": "an image root",
    "decode_dir": "a folder for decoded images",
    "answers": "an answer file",
    "prompt": "a prompt",
    "limit": "a limit",
}

ReadFunction: TypeAlias = Callable[[ReadRequest], Items]


@dataclass(frozen=True)
class Reader:
    """One registered dataset format (see the module doc)."""

    name: str
    description: str
    suffixes: tuple[str, ...]
    read: ReadFunction
    benchmarks: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    accepts: tuple[str, ...] = ()

    @property
    def scored(self) -> bool:
        """True when the reader serves benchmark rules (it returns ``BenchItem``\\ s)."""
        return bool(self.benchmarks)

    def handles(self, source: Path) -> bool:
        kind = FOLDER if source.is_dir() else source.suffix.lower()
        return kind in self.suffixes

    def label(self) -> str:
        """``name (suffixes)``, as listed in error messages and help texts."""
        kinds = ", ".join("folder" if s == FOLDER else s for s in self.suffixes)
        return f"{self.name} ({kinds})"

    def check(self, request: ReadRequest) -> None:
        """Refuse a request this reader cannot serve, in one line, before any reading."""
        if request.benchmark is None and self.scored:
            raise DatasetError(
                f"The {self.name} reader needs a benchmark, one of {', '.join(self.benchmarks)}."
            )
        if request.benchmark is not None and request.benchmark not in self.benchmarks:
            served = ", ".join(self.benchmarks) if self.scored else "none: it reads plain items"
            raise DatasetError(
                f"The {self.name} reader does not read benchmark {request.benchmark!r} "
                f"(benchmarks: {served})."
            )
        for name in self.requires:
            if getattr(request, name) is None:
                raise DatasetError(f"The {self.name} reader needs {_DESCRIBED[name]} ({name}).")
        # decode_dir is where a caller offers to write images, not something a user chose:
        # a reader that stores none ignores it.
        used = {"benchmark", "decode_dir", *self.requires, *self.accepts}
        extra = [f for f in OPTIONAL_FIELDS if f not in used and getattr(request, f) is not None]
        if extra:
            raise DatasetError(
                f"The {self.name} reader does not use {', '.join(extra)} "
                f"(it reads: {', '.join(sorted({*self.requires, *self.accepts})) or 'the source'})."
            )
        if request.limit is not None and request.limit < 1:
            raise DatasetError(f"limit must be >= 1, got {request.limit}.")


_READERS: dict[str, Reader] = {}


def register_reader(
    name: str,
    *,
    description: str,
    suffixes: Sequence[str],
    benchmarks: Sequence[str] = (),
    requires: Sequence[str] = (),
    accepts: Sequence[str] = (),
) -> Callable[[ReadFunction], ReadFunction]:
    """Decorator: register ``fn(request) -> items`` as the reader ``name`` (returned unchanged)."""
    bad_suffix = [s for s in suffixes if s != FOLDER and not (s.startswith(".") and s == s.lower())]
    if not suffixes or bad_suffix:
        raise ValueError(
            f"Reader {name!r}: suffixes are lower-case '.ext' or FOLDER, got {suffixes}."
        )
    unknown = sorted((set(requires) | set(accepts)) - set(OPTIONAL_FIELDS))
    if unknown or "benchmark" in requires or "benchmark" in accepts:
        raise ValueError(
            f"Reader {name!r}: {unknown or 'benchmark'} not a request field to declare."
        )

    def decorate(fn: ReadFunction) -> ReadFunction:
        if name in _READERS:
            raise ValueError(f"Dataset reader {name!r} is registered twice.")
        _READERS[name] = Reader(
            name=name,
            description=description,
            suffixes=tuple(suffixes),
            read=fn,
            benchmarks=tuple(benchmarks),
            requires=tuple(requires),
            accepts=tuple(accepts),
        )
        return fn

    return decorate


def readers() -> dict[str, Reader]:
    """Every registered reader by name (registration order)."""
    return dict(_READERS)


def _registered() -> str:
    return ", ".join(r.label() for r in _READERS.values())


def get_reader(name: str) -> Reader:
    """The reader registered as ``name``; an unknown name lists the registered ones."""
    if name not in _READERS:
        raise UnknownFormatError(f"Unknown dataset format {name!r}; registered: {_registered()}.")
    return _READERS[name]


def reader_for(source: str | os.PathLike[str], benchmark: str | None = None) -> Reader:
    """The reader of ``source`` by its suffix (or being a folder) and whether it is scored.

    A suffix two readers claim (``.jsonl``: POPE questions and LLaVA's VQA
    questions) is settled by the benchmark: plain readers serve no benchmark,
    scored readers only theirs.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise DatasetError(f"Dataset source not found: {path}")
    claim = [r for r in _READERS.values() if r.handles(path)]
    kind = "a folder" if path.is_dir() else f"{path.suffix or 'a file without suffix'}"
    if not claim:
        raise UnknownFormatError(
            f"No dataset reader reads {kind} ({path.name}); registered: {_registered()}."
        )
    fits = [
        r
        for r in claim
        if (benchmark is None and not r.scored)
        or (benchmark is not None and benchmark in r.benchmarks)
    ]
    if len(fits) == 1:
        return fits[0]
    asked = "plain items" if benchmark is None else f"benchmark {benchmark!r}"
    if not fits:
        raise UnknownFormatError(
            f"No dataset reader reads {kind} for {asked}; readers of {kind}: "
            + "; ".join(
                f"{r.name} ({'benchmarks ' + ', '.join(r.benchmarks) if r.scored else 'plain items'})"
                for r in claim
            )
            + "."
        )
    raise UnknownFormatError(
        f"{path.name}: readers {', '.join(r.name for r in fits)} all read {kind} for {asked}; "
        "name one as the format."
    )


@dataclass(frozen=True)
class Dataset:
    """What :func:`read_dataset` read: the reader, the request and the items."""

    reader: Reader
    request: ReadRequest
    items: Items

    def describe(self) -> dict[str, Any]:
        """The source as stored with a run (paths as given; None fields left out)."""
        fields = {
            f: str(v) if isinstance(v, Path) else v
            for f in ("source", *OPTIONAL_FIELDS)
            if (v := getattr(self.request, f)) is not None and f not in ("limit", "decode_dir")
        }
        return {"format": self.reader.name, **fields}


def read_dataset(
    source: str | os.PathLike[str],
    *,
    format: str | None = None,
    benchmark: str | None = None,
    images: str | os.PathLike[str] | None = None,
    decode_dir: str | os.PathLike[str] | None = None,
    answers: str | os.PathLike[str] | None = None,
    prompt: str | None = None,
    limit: int | None = None,
) -> Dataset:
    """Read ``source`` with the reader named ``format`` (default: chosen by :func:`reader_for`)."""

    def _path(value: str | os.PathLike[str] | None) -> Path | None:
        return None if value is None else Path(value).expanduser()

    path = Path(source).expanduser()
    reader = get_reader(format) if format is not None else reader_for(path, benchmark)
    request = ReadRequest(
        source=path,
        benchmark=benchmark,
        images=_path(images),
        decode_dir=_path(decode_dir),
        answers=_path(answers),
        prompt=prompt,
        limit=limit,
    )
    reader.check(request)
    if not path.exists():
        raise DatasetError(f"Dataset source not found: {path}")
    return Dataset(reader=reader, request=request, items=reader.read(request))
