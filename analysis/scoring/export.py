"""Generations of a run in the input format of an LLM-judge benchmark's evaluator (no judging).

MM-Vet, MMHal-Bench and LLaVA-Bench (in the wild) are scored by a GPT judge;
this toolkit only writes what their official scripts read, one file per
condition:

* ``mm-vet``: a JSON object ``{question_id: answer}`` (MM-Vet's evaluator).
* ``llava-wild``: JSONL answer lines ``{"question_id", "prompt", "text",
  "answer_id", "model_id", "metadata"}`` (LLaVA's ``eval_gpt_review_bench.py``).
* ``mmhal``: MMHal-Bench's ``response_template.json`` (a JSON list) with each
  entry's ``model_answer`` filled in; the item ids of the run are the entries'
  positions in the template (0, 1, ...), so pass the template itself.

Run the generations with ``vsink eval --questions FILE --images DIR
--max-new-tokens 512 --conditions ...`` (a question file without labels).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from analysis.errors import UserInputError


def _generations(records: Sequence[Mapping[str, Any]], condition: str) -> list[Mapping[str, Any]]:
    rows = [r for r in records if r["condition"] == condition]
    if not rows:
        raise UserInputError(f"The run has no records of condition {condition!r}.")
    missing = [str(r["id"]) for r in rows if "generated" not in r]
    if missing:
        raise UserInputError(
            f"Condition {condition!r} has no generations (items {missing[:3]}...): "
            "run with --max-new-tokens > 0."
        )
    return rows


def mm_vet(rows: Sequence[Mapping[str, Any]], **_: Any) -> str:
    return json.dumps({str(r["id"]): r["generated"] for r in rows}, indent=2) + "\n"


def llava_wild(rows: Sequence[Mapping[str, Any]], *, model_id: str, **_: Any) -> str:
    lines = []
    for r in rows:
        qid: Any = r["id"]
        qid = int(qid) if str(qid).isdigit() else qid
        lines.append(
            {
                "question_id": qid,
                "prompt": r["text"],
                "text": r["generated"],
                "answer_id": f"{model_id}-{r['condition']}-{r['id']}",
                "model_id": model_id,
                "metadata": {"condition": r["condition"]},
            }
        )
    return "".join(json.dumps(line) + "\n" for line in lines)


def mmhal(
    rows: Sequence[Mapping[str, Any]], *, template: Sequence[Mapping[str, Any]] | None, **_: Any
) -> str:
    if template is None:
        raise UserInputError(
            "mmhal export needs MMHal-Bench's response_template.json (--template)."
        )
    out = [dict(entry) for entry in template]
    for r in rows:
        index = int(r["id"])
        if not 0 <= index < len(out):
            raise UserInputError(f"Item {r['id']} is not an entry of the template ({len(out)}).")
        out[index]["model_answer"] = r["generated"]
    empty = [i for i, entry in enumerate(out) if not entry.get("model_answer")]
    if empty:
        raise UserInputError(f"Template entries {empty[:5]} have no generation in the run.")
    return json.dumps(out, indent=2) + "\n"


JUDGE_FORMATS: dict[str, Callable[..., str]] = {
    "mm-vet": mm_vet,
    "llava-wild": llava_wild,
    "mmhal": mmhal,
}


def export_judge(
    records: Sequence[Mapping[str, Any]],
    fmt: str,
    *,
    condition: str,
    model_id: str = "vsink",
    template: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """The text of the judge's input file for one condition of a run."""
    if fmt not in JUDGE_FORMATS:
        raise UserInputError(f"--format must be one of {', '.join(JUDGE_FORMATS)}, got {fmt!r}.")
    rows = _generations(records, condition)
    return JUDGE_FORMATS[fmt](rows, model_id=model_id, template=template)
