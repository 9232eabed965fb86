"""Benchmark files on disk (nothing is downloaded): VLMEvalKit TSVs and LLaVA question files.

* :func:`read_vlmeval_tsv`: VLMEvalKit keeps each benchmark as one TSV with
  ``index``, ``image`` (base64, or a path relative to the image root), ``question``,
  ``answer``, options ``A``..``D`` (empty where an item has fewer), ``hint``,
  ``category``, ``l2-category``, ``split``. MME, MMBench, MMVP, CV-Bench, POPE
  and more share it. Base64 images are decoded once into ``decode_dir`` under a
  content hash, so a resumed run finds the same files and an image shared by
  several rows is stored once; they then pass the same checks as files.
* :func:`read_llava_questions`: LLaVA's eval question files (JSONL with
  ``question_id``, ``image``, ``text``) with an optional answer file (JSONL with
  ``question_id`` and ``answers``, the human answers) for VQA-style scoring.

Each reader returns :class:`BenchItem`s: the evaluation :class:`Item` plus what
the benchmark's metric needs: its options, category, and the **unit** it counts
(MME: the image within its category; MMBench: the circular group, ``index``
modulo 1e6; MMVP: the pair, consecutive indices; otherwise the item itself).
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import io
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from analysis.datasets import DatasetError, Item, read_jsonl, resolve_image

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


def _cell(row: dict[str, str | None], key: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    value = str(value).strip()
    return "" if value.lower() == "nan" else value


def _decode_image(data: str, decode_dir: Path, where: str) -> Path:
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise DatasetError(
            f"{where}: the image cell is neither a path nor base64 ({err})."
        ) from None
    return _store_image(raw, decode_dir, where)


def _store_image(raw: bytes, decode_dir: Path, where: str) -> Path:
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


def _looks_like_path(cell: str) -> bool:
    return len(cell) < 1024 and Path(cell).suffix.lower() in {
        ".jpg",
        ".jpeg",
        ".png",
        ".webp",
        ".bmp",
        ".gif",
    }


def _unit(benchmark: str, index: str, image_name: str, category: str, number: int) -> str:
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


def read_vlmeval_tsv(
    path: str | os.PathLike[str],
    *,
    benchmark: str,
    decode_dir: str | os.PathLike[str],
    image_root: str | os.PathLike[str] | None = None,
    limit: int | None = None,
) -> list[BenchItem]:
    """Items of a VLMEvalKit benchmark TSV (see the module doc)."""
    if benchmark not in BENCHMARKS:
        raise DatasetError(f"Unknown benchmark {benchmark!r}; choose from {', '.join(BENCHMARKS)}.")
    if limit is not None and limit < 1:
        raise DatasetError(f"limit must be >= 1, got {limit}.")
    file = Path(path).expanduser()
    if not file.is_file():
        raise DatasetError(f"Benchmark file not found: {file}")
    # Base64 images make cells far longer than csv's default field limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    out: list[BenchItem] = []
    seen: set[str] = set()
    decode = Path(decode_dir).expanduser()
    try:
        with file.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            missing = {"index", "image", "question"} - set(reader.fieldnames or ())
            if missing:
                raise DatasetError(f"{file}: missing column(s) {sorted(missing)}.")
            for number, row in enumerate(reader, start=1):
                where = f"{file} row {number}"
                index = _cell(row, "index")
                if not index or not _cell(row, "question"):
                    raise DatasetError(f"{where}: empty index or question.")
                if index in seen:
                    raise DatasetError(f"{where}: duplicate index {index!r}.")
                seen.add(index)
                cell = _cell(row, "image_path") or _cell(row, "image")
                if _looks_like_path(cell):
                    if image_root is None:
                        raise DatasetError(f"{where}: the image is a path; pass the image root.")
                    image = resolve_image(image_root, cell)
                    image_name = Path(cell).as_posix()
                else:
                    image = _decode_image(_cell(row, "image"), decode, where)
                    image_name = image.name
                out.append(_bench_item(row, benchmark, image, image_name, number, where))
                if limit is not None and len(out) >= limit:
                    break
    except UnicodeDecodeError as err:
        raise DatasetError(f"{file}: not UTF-8 text ({err.reason} at byte {err.start}).") from None
    if not out:
        raise DatasetError(f"{file} holds no rows.")
    return out


def _bench_item(
    row: dict[str, Any], benchmark: str, image: Path, image_name: str, number: int, where: str
) -> BenchItem:
    """One row of VLMEvalKit's columns (see the module doc) with its image resolved."""
    index, question = _cell(row, "index"), _cell(row, "question")
    if not index or not question:
        raise DatasetError(f"{where}: empty index or question.")
    options = {k: _cell(row, k) for k in OPTION_LETTERS if _cell(row, k)}
    category = _cell(row, "category")
    if benchmark == "cv_bench":
        category = _cell(row, "source") or _cell(row, "l2-category") or category
    answer = _cell(row, "answer") or None
    if options:
        text = choice_prompt(question, options, _cell(row, "hint"))
        label = None if answer is None else answer.strip().strip("()").upper()
        if label is not None and label not in options:
            raise DatasetError(f"{where}: answer {answer!r} is not an option letter.")
    else:
        text = question
        label = None if answer is None else answer.strip().lower()
    return BenchItem(
        item=Item(index, image, image_name, text, label),
        benchmark=benchmark,
        unit=_unit(benchmark, index, image_name, category, number),
        answer=answer,
        options=options,
        category=category,
        split=_cell(row, "split"),
    )


# lmms-eval / HF column spellings mapped onto VLMEvalKit's.
HF_INDEX_KEYS = ("index", "question_id", "idx", "id")


def _hf_row(row: dict[str, Any], number: int) -> dict[str, Any]:
    """An HF dataset row in VLMEvalKit's columns: index, options A.. from ``choices``."""
    out = {k: v for k, v in row.items() if not isinstance(v, dict | list | bytes)}
    index = next((row[k] for k in HF_INDEX_KEYS if row.get(k) is not None), number - 1)
    out["index"] = str(index)
    choices = row.get("choices") or row.get("options")
    if isinstance(choices, list) and not any(_cell(out, k) for k in OPTION_LETTERS):
        out.update({OPTION_LETTERS[k]: str(c) for k, c in enumerate(choices)})
    return out


def read_hf_folder(
    folder: str | os.PathLike[str],
    *,
    benchmark: str,
    decode_dir: str | os.PathLike[str],
    limit: int | None = None,
) -> list[BenchItem]:
    """A local HF dataset (``save_to_disk`` folder) or Parquet files (lmms-eval's layout).

    Columns as in VLMEvalKit (``question_id`` / ``idx`` accepted for ``index``, a
    ``choices`` list for the options ``A``..); the ``image`` column holds the image
    (HF ``Image`` feature or ``{"bytes": ...}``), written once by content hash
    into ``decode_dir``. Needs the ``datasets`` package.
    """
    if benchmark not in BENCHMARKS:
        raise DatasetError(f"Unknown benchmark {benchmark!r}; choose from {', '.join(BENCHMARKS)}.")
    try:
        import datasets
    except ImportError:
        raise DatasetError("Reading HF / Parquet folders needs the datasets package.") from None
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DatasetError(f"HF dataset folder not found: {root}")
    files = sorted(str(p) for p in root.rglob("*.parquet"))
    if (root / "state.json").is_file() or (root / "dataset_dict.json").is_file():
        loaded = datasets.load_from_disk(str(root))
        if isinstance(loaded, datasets.DatasetDict):
            loaded = loaded[next(iter(loaded))]
    elif files:
        loaded = datasets.Dataset.from_parquet(files)
    else:
        raise DatasetError(f"{root} holds no Parquet files and no saved HF dataset.")
    if "image" not in loaded.column_names:
        raise DatasetError(f"{root}: no image column (columns: {loaded.column_names}).")
    if isinstance(loaded.features["image"], datasets.Image):
        loaded = loaded.cast_column("image", datasets.Image(decode=False))
    decode = Path(decode_dir).expanduser()
    out: list[BenchItem] = []
    seen: set[str] = set()
    for number, row in enumerate(loaded, start=1):
        where = f"{root} row {number}"
        cell = row["image"]
        raw = cell.get("bytes") if isinstance(cell, dict) else cell
        if not isinstance(raw, bytes):
            raise DatasetError(f"{where}: the image holds no bytes.")
        image = _store_image(raw, decode, where)
        flat = _hf_row(row, number)
        if flat["index"] in seen:
            raise DatasetError(f"{where}: duplicate index {flat['index']!r}.")
        seen.add(flat["index"])
        out.append(_bench_item(flat, benchmark, image, image.name, number, where))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise DatasetError(f"{root} holds no rows.")
    return out


def read_llava_questions(
    questions: str | os.PathLike[str],
    image_root: str | os.PathLike[str],
    *,
    benchmark: str = "vqa",
    answers: str | os.PathLike[str] | None = None,
    limit: int | None = None,
) -> list[BenchItem]:
    """A LLaVA eval question file, with the human answers of ``answers`` when given."""
    if benchmark not in ("vqa", "gqa"):
        raise DatasetError(f"LLaVA question files are read for vqa or gqa, not {benchmark!r}.")
    humans: dict[str, tuple[str, ...]] = {}
    if answers is not None:
        for number, row in enumerate(read_jsonl(answers), start=1):
            qid, given = row.get("question_id"), row.get("answers", row.get("answer"))
            if qid is None or given is None:
                raise DatasetError(f"{answers} row {number}: needs question_id and answers.")
            values = [given] if isinstance(given, str) else list(given)
            humans[str(qid)] = tuple(str(v["answer"] if isinstance(v, dict) else v) for v in values)
    out = []
    seen: set[str] = set()
    for number, row in enumerate(read_jsonl(questions), start=1):
        qid, image, text = row.get("question_id"), row.get("image"), row.get("text")
        if qid is None or not image or not text:
            raise DatasetError(f"{questions} row {number}: needs question_id, image and text.")
        key = str(qid)
        if key in seen:
            raise DatasetError(f"{questions} row {number}: duplicate question_id {key!r}.")
        seen.add(key)
        given = humans.get(key, ())
        if answers is not None and not given:
            raise DatasetError(f"{answers}: no answers for question_id {key!r}.")
        item = Item(key, resolve_image(image_root, str(image)), Path(str(image)).as_posix(), text)
        out.append(
            BenchItem(
                item=item,
                benchmark=benchmark,
                unit=key,
                answer=given[0] if given else None,
                human_answers=given,
            )
        )
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise DatasetError(f"{questions} holds no questions.")
    return out


def units_of(items: Sequence[BenchItem]) -> list[str]:
    """The unit key of each item, in order (for :func:`analysis.scoring.group_units`)."""
    return [b.unit for b in items]
