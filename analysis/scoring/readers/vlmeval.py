"""VLMEvalKit's benchmark TSVs: MME, MMBench, MMVP, CV-Bench, POPE and more share one layout.

One TSV per benchmark with ``index``, ``image`` (base64, or a path relative to
the image root), ``question``, ``answer``, options ``A``..``D`` (empty where an
item has fewer), ``hint``, ``category``, ``l2-category``, ``split``. Base64
images are decoded once into ``decode_dir`` (:func:`~analysis.scoring.readers.base.store_image`)
and then pass the same checks as files.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

from analysis.datasets import DatasetError, resolve_image
from analysis.scoring.readers.base import (
    BENCHMARKS,
    BenchItem,
    bench_item,
    cell_text,
    decode_image,
    looks_like_path,
)
from analysis.scoring.readers.registry import ReadRequest, register_reader


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
                index = cell_text(row, "index")
                if not index or not cell_text(row, "question"):
                    raise DatasetError(f"{where}: empty index or question.")
                if index in seen:
                    raise DatasetError(f"{where}: duplicate index {index!r}.")
                seen.add(index)
                cell = cell_text(row, "image_path") or cell_text(row, "image")
                if looks_like_path(cell):
                    if image_root is None:
                        raise DatasetError(f"{where}: the image is a path; pass the image root.")
                    image = resolve_image(image_root, cell)
                    image_name = Path(cell).as_posix()
                else:
                    image = decode_image(cell_text(row, "image"), decode, where)
                    image_name = image.name
                out.append(bench_item(row, benchmark, image, image_name, number, where))
                if limit is not None and len(out) >= limit:
                    break
    except UnicodeDecodeError as err:
        raise DatasetError(f"{file}: not UTF-8 text ({err.reason} at byte {err.start}).") from None
    if not out:
        raise DatasetError(f"{file} holds no rows.")
    return out


@register_reader(
    "tsv",
    description="a VLMEvalKit benchmark TSV (base64 images, or paths under the image root)",
    suffixes=(".tsv",),
    benchmarks=BENCHMARKS,
    requires=("decode_dir",),
    accepts=("images", "limit"),
)
def _read(request: ReadRequest) -> list[BenchItem]:
    return read_vlmeval_tsv(
        request.source,
        benchmark=request.need_text("benchmark"),
        decode_dir=request.need_path("decode_dir"),
        image_root=request.images,
        limit=request.limit,
    )
