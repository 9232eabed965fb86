"""Benchmark readers on small hand-made files built from the demo images, scored by hand."""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path

import pytest

from analysis.datasets import DatasetError
from analysis.scoring.readers import (
    CHOICE_INSTRUCTION,
    read_llava_questions,
    read_vlmeval_tsv,
)
from analysis.scoring.tasks import task

DEMO_IMAGES = Path(__file__).resolve().parent.parent / "analysis" / "demo" / "images"
COLUMNS = ["index", "image", "question", "answer", "A", "B", "C", "D", "hint", "category", "split"]


def b64(name: str) -> str:
    return base64.b64encode((DEMO_IMAGES / name).read_bytes()).decode()


def write_tsv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, delimiter="\t")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in COLUMNS})
    return path


def mmbench_rows() -> list[dict[str, str]]:
    """Two questions, each with its 4 circular rotations (index + k * 1e6)."""
    rows = []
    colours = ["red", "green", "blue", "yellow"]
    for question, (image, right) in enumerate([("demo_00.png", "red"), ("demo_01.png", "blue")]):
        for k in range(4):
            rotated = colours[k:] + colours[:k]
            letter = "ABCD"[rotated.index(right)]
            rows.append(
                {
                    "index": str(question + k * 1_000_000),
                    "image": b64(image),
                    "question": "What colour is the object?",
                    "answer": letter,
                    **dict(zip("ABCD", rotated, strict=True)),
                    "category": "attribute",
                }
            )
    return rows


def test_mmbench_tsv_with_rotations_and_base64_images(tmp_path):
    path = write_tsv(tmp_path / "mmbench.tsv", mmbench_rows())
    items = read_vlmeval_tsv(path, benchmark="mmbench", decode_dir=tmp_path / "img")
    assert len(items) == 8
    assert [b.unit for b in items] == ["0"] * 4 + ["1"] * 4
    # Each distinct image is decoded once, byte for byte.
    files = sorted((tmp_path / "img").iterdir())
    assert len(files) == 2
    assert {f.read_bytes() for f in files} == {
        (DEMO_IMAGES / n).read_bytes() for n in ("demo_00.png", "demo_01.png")
    }
    first = items[0]
    assert first.options == {"A": "red", "B": "green", "C": "blue", "D": "yellow"}
    assert first.item.label == "A"
    assert first.item.text.endswith(CHOICE_INSTRUCTION)
    assert "B. green" in first.item.text
    # Question 0: every rotation right. Question 1: one rotation wrong.
    answers = [b.item.label for b in items]
    texts = [f"{a}." for a in answers]
    texts[5] = "A" if answers[5] != "A" else "B"
    out = task("mmbench").evaluate(items, texts)
    assert out["circular_accuracy"] == pytest.approx(50.0)
    assert out["accuracy"] == pytest.approx(700 / 8)
    # The option text alone counts as well.
    by_text = [b.options[b.item.label] for b in items]
    assert task("mmbench").evaluate(items, by_text)["circular_accuracy"] == 100.0


def test_mme_pairs_by_hand(tmp_path):
    rows = []
    for i, (image, category) in enumerate(
        [("demo_00.png", "color"), ("demo_01.png", "color"), ("demo_02.png", "code_reasoning")]
    ):
        rows.append(
            {
                "index": str(2 * i),
                "image": b64(image),
                "question": "Is it red?",
                "answer": "Yes",
                "category": category,
            }
        )
        rows.append(
            {
                "index": str(2 * i + 1),
                "image": b64(image),
                "question": "Is it cyan?",
                "answer": "No",
                "category": category,
            }
        )
    items = read_vlmeval_tsv(
        write_tsv(tmp_path / "mme.tsv", rows), benchmark="mme", decode_dir=tmp_path / "img"
    )
    assert len({b.unit for b in items}) == 3
    # color: image 0 both right, image 1 one right -> acc 75, acc+ 50 -> 125.
    # code_reasoning: both wrong -> 0. "Yes, it is" parses as yes (first 4 characters).
    texts = ["Yes, it is", "no", "yes", "yes", "no", "yes"]
    out = task("mme").evaluate(items, texts)
    assert out["color/score"] == pytest.approx(125.0)
    assert out["perception"] == pytest.approx(125.0)
    assert out["cognition"] == pytest.approx(0.0)


def test_mmvp_pairs_follow_consecutive_indices(tmp_path):
    rows = [
        {
            "index": str(i),
            "image": b64("demo_03.png"),
            "question": "Which?",
            "answer": "A" if i % 2 else "B",
            "A": "left",
            "B": "right",
        }
        for i in range(4)
    ]
    items = read_vlmeval_tsv(
        write_tsv(tmp_path / "mmvp.tsv", rows), benchmark="mmvp", decode_dir=tmp_path / "i"
    )
    assert [b.unit for b in items] == ["pair-0", "pair-0", "pair-1", "pair-1"]
    out = task("mmvp").evaluate(items, ["B", "A", "B", "B"])  # pair 0 right, pair 1 half
    assert out["pair_accuracy"] == pytest.approx(50.0)
    assert out["accuracy"] == pytest.approx(75.0)


def test_image_paths_stay_inside_the_root(tmp_path):
    rows = [{"index": "0", "image": "../secret.png", "question": "q?", "answer": "yes"}]
    path = write_tsv(tmp_path / "x.tsv", rows)
    with pytest.raises(DatasetError, match="outside the image root"):
        read_vlmeval_tsv(path, benchmark="pope", decode_dir=tmp_path / "i", image_root=DEMO_IMAGES)
    rows = [{"index": "0", "image": "demo_00.png", "question": "q?", "answer": "Yes"}]
    items = read_vlmeval_tsv(
        write_tsv(tmp_path / "y.tsv", rows),
        benchmark="pope",
        decode_dir=tmp_path / "i",
        image_root=DEMO_IMAGES,
    )
    assert items[0].item.image == (DEMO_IMAGES / "demo_00.png").resolve()
    assert items[0].item.label == "yes"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"index": "0", "image": "not base64 !!", "question": "q"}], "neither a path nor base64"),
        (
            [{"index": "0", "image": base64.b64encode(b"text").decode(), "question": "q"}],
            "cannot be decoded",
        ),
        ([{"index": "0", "image": "", "question": ""}], "empty index or question"),
        (
            [
                {
                    "index": "0",
                    "image": b64("demo_00.png"),
                    "question": "q",
                    "answer": "E",
                    "A": "a",
                    "B": "b",
                }
            ],
            "not an option",
        ),
    ],
)
def test_bad_rows_are_refused_with_their_row(tmp_path, rows, message):
    path = write_tsv(tmp_path / "bad.tsv", rows)
    with pytest.raises(DatasetError, match=message):
        read_vlmeval_tsv(path, benchmark="mmbench", decode_dir=tmp_path / "i")


def test_unknown_benchmark_and_duplicate_index(tmp_path):
    rows = [{"index": "0", "image": b64("demo_00.png"), "question": "q"}] * 2
    path = write_tsv(tmp_path / "d.tsv", rows)
    with pytest.raises(DatasetError, match="Unknown benchmark"):
        read_vlmeval_tsv(path, benchmark="nope", decode_dir=tmp_path / "i")
    with pytest.raises(DatasetError, match="duplicate index"):
        read_vlmeval_tsv(path, benchmark="pope", decode_dir=tmp_path / "i")


def test_vqa_question_and_answer_files_by_hand(tmp_path):
    questions = tmp_path / "q.jsonl"
    answers = tmp_path / "a.jsonl"
    questions.write_text(
        "\n".join(
            json.dumps({"question_id": i, "image": f"demo_0{i}.png", "text": "How many?"})
            for i in range(2)
        )
    )
    answers.write_text(
        "\n".join(
            [
                json.dumps({"question_id": 0, "answers": ["2"] * 3 + ["3"] * 7}),
                json.dumps({"question_id": 1, "answers": [{"answer": "red"}] * 10}),
            ]
        )
    )
    items = read_llava_questions(questions, DEMO_IMAGES, answers=answers)
    assert items[0].human_answers == ("2",) * 3 + ("3",) * 7
    out = task("vqa").evaluate(items, ["Two", "Red."])
    assert out["accuracy"] == pytest.approx(100 * (0.9 + 1.0) / 2)
    (tmp_path / "a2.jsonl").write_text(json.dumps({"question_id": 0, "answers": ["x"]}))
    with pytest.raises(DatasetError, match="no answers for question_id '1'"):
        read_llava_questions(questions, DEMO_IMAGES, answers=tmp_path / "a2.jsonl")
