r"""What every benchmark reader shares: :class:`BenchItem`, the prompts, image storage, units.

A benchmark reader returns :class:`BenchItem`\ s: the evaluation :class:`Item`
plus what the benchmark's metric needs: its options, category, and the
**unit** it counts (MME: the image within its category; MMBench: the circular
group, ``index`` modulo 1e6; MMVP: the pair, consecutive indices; otherwise
the item itself). Images stored inside a file (base64, bytes) are written once
into ``decode_dir`` under a content hash, so a resumed run finds the same
files and an image shared by several rows is stored once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from analysis.datasets import DatasetError, Item

OPTION_LETTERS = ("A", "B", "C", "D", "E", "F", "G", "H")
# VLMEvalKit stores each rotation of an MMBench question at index + k * 1e6.
CIRCULAR_STRIDE = 1_000_000
# The instruction LLaVA's evaluation appends to multiple-choice prompts.
CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."
YES_NO_INSTRUCTION = "Answer the question using a single word or phrase."
BENCHMARKS = ("mme", "mmbench", "mmvp", "cv_bench", "pope", "choice", "vqa", "gqa")


@dataclass(frozen=True)
class BenchItem:
    """An evaluation item plus what its benchmark's metric reads."""

    item: Item
    benchmark: str
    unit: str
    answer: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    category: str = ""
    split: str = ""
    human_answers: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {
            **self.item.describe(),
            "benchmark": self.benchmark,
            "unit": self.unit,
            "options": dict(self.options),
            "category": self.category,
            "split": self.split,
        }


def choice_prompt(question: str, options: dict[str, str], hint: str = "") -> str:
    """LLaVA's multiple-choice prompt: hint, question, lettered options, instruction."""
    lines = [f"Hint: {hint}"] if hint else []
    lines.append(question)
    lines += [f"{letter}. {text}" for letter, text in options.items()]
    lines.append(CHOICE_INSTRUCTION)
    return "\n".join(lines)


def cell_text(row: dict[str, str | None], key: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    value = str(value).strip()
    return "" if value.lower() == "nan" else value


def decode_image(data: str, decode_dir: Path, where: str) -> Path:
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise DatasetError(
            f"{where}: the image cell is neither a path nor base64 ({err})."
        ) from None
    return store_image(raw, decode_dir, where)


def store_image(raw: bytes, decode_dir: Path, where: str) -> Path:
    """Encoded image bytes written once under their content hash (checked to decode)."""
    try:
        with Image.open(io.BytesIO(raw)) as probe:
            fmt = (probe.format or "png").lower()
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetError(f"{where}: the base64 image cannot be decoded ({err}).") from None
    digest = hashlib.sha256(raw).hexdigest()[:20]
    path = decode_dir / f"{digest}.{'jpg' if fmt == 'jpeg' else fmt}"
    if not path.is_file():
        decode_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(raw)
        os.replace(tmp, path)
    return path


def looks_like_path(cell: str) -> bool:
    return len(cell) < 1024 and Path(cell).suffix.lower() in {
        ".jpg",
        ".jpeg",
        ".png",
        ".webp",
        ".bmp",
        ".gif",
    }


def unit_key(benchmark: str, index: str, image_name: str, category: str, number: int) -> str:
    if benchmark == "mme":
        return f"{category}/{image_name}"
    if benchmark == "mmbench":
        try:
            return str(int(float(index)) % CIRCULAR_STRIDE)
        except ValueError:
            raise DatasetError(f"MMBench row {number}: index {index!r} is not a number.") from None
    if benchmark == "mmvp":
        try:
            return f"pair-{int(float(index)) // 2}" if index else f"pair-{(number - 1) // 2}"
        except ValueError:
            raise DatasetError(f"MMVP row {number}: index {index!r} is not a number.") from None
    return index


def bench_item(
    row: dict[str, Any], benchmark: str, image: Path, image_name: str, number: int, where: str
) -> BenchItem:
    """One row of VLMEvalKit's columns (see the module doc) with its image resolved."""
    index, question = cell_text(row, "index"), cell_text(row, "question")
    if not index or not question:
        raise DatasetError(f"{where}: empty index or question.")
    options = {k: cell_text(row, k) for k in OPTION_LETTERS if cell_text(row, k)}
    category = cell_text(row, "category")
    if benchmark == "cv_bench":
        category = cell_text(row, "source") or cell_text(row, "l2-category") or category
    answer = cell_text(row, "answer") or None
    if options:
        text = choice_prompt(question, options, cell_text(row, "hint"))
        label = None if answer is None else answer.strip().strip("()").upper()
        if label is not None and label not in options:
            raise DatasetError(f"{where}: answer {answer!r} is not an option letter.")
    else:
        text = question
        label = None if answer is None else answer.strip().lower()
    return BenchItem(
        item=Item(index, image, image_name, text, label),
        benchmark=benchmark,
        unit=unit_key(benchmark, index, image_name, category, number),
        answer=answer,
        options=options,
        category=category,
        split=cell_text(row, "split"),
    )


def units_of(items: Sequence[BenchItem]) -> list[str]:
    """The unit key of each item, in order (for :func:`analysis.scoring.group_units`)."""
    return [b.unit for b in items]
