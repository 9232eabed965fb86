"""LLaVA's eval question files (JSONL with ``question_id``, ``image``, ``text``) for VQA scoring.

An optional answer file (JSONL with ``question_id`` and ``answers``, the human
answers) gives what VQA accuracy compares against.
"""

from __future__ import annotations

import os
from pathlib import Path

from analysis.datasets import DatasetError, Item, read_jsonl, resolve_image
from analysis.scoring.readers.base import BenchItem
from analysis.scoring.readers.registry import ReadRequest, register_reader

LLAVA_BENCHMARKS = ("vqa", "gqa")


def read_llava_questions(
    questions: str | os.PathLike[str],
    image_root: str | os.PathLike[str],
    *,
    benchmark: str = "vqa",
    answers: str | os.PathLike[str] | None = None,
    limit: int | None = None,
) -> list[BenchItem]:
    """A LLaVA eval question file, with the human answers of ``answers`` when given."""
    if benchmark not in LLAVA_BENCHMARKS:
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


@register_reader(
    "llava",
    description="a LLaVA eval question file (JSONL) with an optional answer file",
    suffixes=(".jsonl",),
    benchmarks=LLAVA_BENCHMARKS,
    requires=("images",),
    accepts=("answers", "limit"),
)
def _read(request: ReadRequest) -> list[BenchItem]:
    return read_llava_questions(
        request.source,
        request.need_path("images"),
        benchmark=request.need_text("benchmark"),
        answers=request.answers,
        limit=request.limit,
    )
