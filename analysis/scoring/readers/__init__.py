"""Dataset readers, one registry (:mod:`~analysis.scoring.readers.registry`).

Every module of this package is imported here, and a reader module registers
its reader when imported, so **adding a dataset format is one new module**
(``analysis/scoring/readers/<format>.py``) plus its test; nothing else lists
the formats. Such a module defines a function ``(ReadRequest) -> items`` and
decorates it with :func:`register_reader`, e.g.::

    @register_reader(
        "mybench",
        description="MyBench's CSV",
        suffixes=(".csv",),
        benchmarks=("choice",),      # scoring rules it serves; () for plain items
        requires=("decode_dir",),    # request fields it needs ...
        accepts=("images", "limit"), # ... and those it can use
    )
    def read(request: ReadRequest) -> list[BenchItem]: ...

Callers read any format through :func:`read_dataset` (by ``format`` name, or
chosen by the source's suffix and the benchmark asked for).

Registered here: ``pope`` and ``folder`` (:mod:`analysis.datasets`' POPE JSONL
and image folders, plain items), ``tsv`` (VLMEvalKit TSVs), ``hf`` (HF dataset
folders and Parquet), ``llava`` (LLaVA VQA question files with human answers).
"""

from __future__ import annotations

import importlib
import pkgutil

from analysis.scoring.readers.base import (
    BENCHMARKS,
    CHOICE_INSTRUCTION,
    CIRCULAR_STRIDE,
    OPTION_LETTERS,
    YES_NO_INSTRUCTION,
    BenchItem,
    choice_prompt,
    units_of,
)
from analysis.scoring.readers.hf import HF_INDEX_KEYS, read_hf_folder
from analysis.scoring.readers.llava import read_llava_questions
from analysis.scoring.readers.registry import (
    FOLDER,
    Dataset,
    Reader,
    ReadRequest,
    UnknownFormatError,
    get_reader,
    read_dataset,
    reader_for,
    readers,
    register_reader,
)
from analysis.scoring.readers.vlmeval import read_vlmeval_tsv

# Every reader module registers itself on import: no list of formats to keep in step.
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "BENCHMARKS",
    "CHOICE_INSTRUCTION",
    "CIRCULAR_STRIDE",
    "FOLDER",
    "HF_INDEX_KEYS",
    "OPTION_LETTERS",
    "YES_NO_INSTRUCTION",
    "BenchItem",
    "Dataset",
    "ReadRequest",
    "Reader",
    "UnknownFormatError",
    "choice_prompt",
    "get_reader",
    "read_dataset",
    "read_hf_folder",
    "read_llava_questions",
    "read_vlmeval_tsv",
    "reader_for",
    "readers",
    "register_reader",
    "units_of",
]
