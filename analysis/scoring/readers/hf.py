"""Local HF datasets (``save_to_disk`` folders) and Parquet files, lmms-eval's layout."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from analysis.datasets import DatasetError
from analysis.scoring.readers.base import (
    BENCHMARKS,
    OPTION_LETTERS,
    BenchItem,
    bench_item,
    cell_text,
    store_image,
)
from analysis.scoring.readers.registry import FOLDER, ReadRequest, register_reader

# lmms-eval / HF column spellings mapped onto VLMEvalKit's.
HF_INDEX_KEYS = ("index", "question_id", "idx", "id")


def _hf_row(row: dict[str, Any], number: int) -> dict[str, Any]:
    """An HF dataset row in VLMEvalKit's columns: index, options A.. from ``choices``."""
    out = {k: v for k, v in row.items() if not isinstance(v, dict | list | bytes)}
    index = next((row[k] for k in HF_INDEX_KEYS if row.get(k) is not None), number - 1)
    out["index"] = str(index)
    choices = row.get("choices") or row.get("options")
    if isinstance(choices, list) and not any(cell_text(out, k) for k in OPTION_LETTERS):
        out.update({OPTION_LETTERS[k]: str(c) for k, c in enumerate(choices)})
    return out


def read_hf_folder(
    folder: str | os.PathLike[str],
    *,
    benchmark: str,
    decode_dir: str | os.PathLike[str],
    limit: int | None = None,
) -> list[BenchItem]:
    """A local HF dataset (``save_to_disk`` folder), Parquet files under a folder or one file.

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
    if root.is_file() and root.suffix.lower() == ".parquet":
        files = [str(root)]  # one Parquet file read on its own
    elif root.is_dir():
        files = sorted(str(p) for p in root.rglob("*.parquet"))
    else:
        raise DatasetError(f"HF dataset folder or Parquet file not found: {root}")
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
        image = store_image(raw, decode, where)
        flat = _hf_row(row, number)
        if flat["index"] in seen:
            raise DatasetError(f"{where}: duplicate index {flat['index']!r}.")
        seen.add(flat["index"])
        out.append(bench_item(flat, benchmark, image, image.name, number, where))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise DatasetError(f"{root} holds no rows.")
    return out


@register_reader(
    "hf",
    description="a local HF dataset folder or Parquet file(s) (lmms-eval's layout)",
    suffixes=(FOLDER, ".parquet"),
    benchmarks=BENCHMARKS,
    requires=("decode_dir",),
    accepts=("limit",),
)
def _read(request: ReadRequest) -> list[BenchItem]:
    return read_hf_folder(
        request.source,
        benchmark=request.need_text("benchmark"),
        decode_dir=request.need_path("decode_dir"),
        limit=request.limit,
    )
