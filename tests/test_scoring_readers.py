"""Dataset readers and their registry on small hand-made files built from the demo images."""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path

import pytest

from analysis.datasets import DatasetError, items_from_records
from analysis.scoring.readers import (
    BENCHMARKS,
    CHOICE_INSTRUCTION,
    BenchItem,
    ReadRequest,
    UnknownFormatError,
    choice_prompt,
    get_reader,
    read_dataset,
    read_llava_questions,
    read_vlmeval_tsv,
    reader_for,
    readers,
    register_reader,
)
from analysis.scoring.tasks import TASKS, task

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


# --------------------------------------------------------------------------- the reader registry
# Every registered reader reads a small file written here and returns exactly its rows.
# A new reader without an entry in FIXTURES fails test_every_reader_has_a_fixture.

Expected = list[tuple[str, str, str | None, bytes]]  # (id, text, label, image bytes)


def _pope_fixture(tmp_path: Path) -> tuple[Path, dict, Expected]:
    rows = [
        {"question_id": 7, "image": "demo_00.png", "text": "Is there a cat?", "label": "Yes"},
        {"question_id": "b", "image": "demo_01.png", "text": "Is it red?", "label": "no"},
    ]
    path = tmp_path / "pope.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    expected = [
        ("7", "Is there a cat?", "yes", (DEMO_IMAGES / "demo_00.png").read_bytes()),
        ("b", "Is it red?", "no", (DEMO_IMAGES / "demo_01.png").read_bytes()),
    ]
    return path, {"images": DEMO_IMAGES}, expected


def _folder_fixture(tmp_path: Path) -> tuple[Path, dict, Expected]:
    folder = tmp_path / "pictures"
    (folder / "sub").mkdir(parents=True)
    (folder / "z.png").write_bytes((DEMO_IMAGES / "demo_02.png").read_bytes())
    (folder / "sub" / "a.png").write_bytes((DEMO_IMAGES / "demo_03.png").read_bytes())
    (folder / "readme.txt").write_text("not an image")
    expected = [
        ("sub/a.png", "Describe it.", None, (DEMO_IMAGES / "demo_03.png").read_bytes()),
        ("z.png", "Describe it.", None, (DEMO_IMAGES / "demo_02.png").read_bytes()),
    ]
    return folder, {"prompt": "Describe it."}, expected


def _tsv_fixture(tmp_path: Path) -> tuple[Path, dict, Expected]:
    rows = [
        {"index": "10", "image": b64("demo_00.png"), "question": "Is it red?", "answer": "Yes"},
        {"index": "11", "image": "demo_01.png", "question": "Is it blue?", "answer": "No"},
    ]
    expected = [
        ("10", "Is it red?", "yes", (DEMO_IMAGES / "demo_00.png").read_bytes()),
        ("11", "Is it blue?", "no", (DEMO_IMAGES / "demo_01.png").read_bytes()),
    ]
    kwargs = {"benchmark": "pope", "images": DEMO_IMAGES, "decode_dir": tmp_path / "decoded"}
    return write_tsv(tmp_path / "bench.tsv", rows), kwargs, expected


def _hf_fixture(tmp_path: Path) -> tuple[Path, dict, Expected]:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    image = (DEMO_IMAGES / "demo_02.png").read_bytes()
    table = pa.table(
        {
            "idx": [3, 4],
            "question": ["Which colour?", "Which shape?"],
            "choices": [["red", "green"], ["square", "circle", "star"]],
            "answer": ["B", "(c)"],
            "image": [{"bytes": image, "path": None}] * 2,
        }
    )
    path = tmp_path / "test-00000.parquet"
    pq.write_table(table, path)
    expected = [
        ("3", choice_prompt("Which colour?", {"A": "red", "B": "green"}), "B", image),
        (
            "4",
            choice_prompt("Which shape?", {"A": "square", "B": "circle", "C": "star"}),
            "C",
            image,
        ),
    ]
    return path, {"benchmark": "choice", "decode_dir": tmp_path / "decoded"}, expected


def _llava_fixture(tmp_path: Path) -> tuple[Path, dict, Expected]:
    questions, answers = tmp_path / "q.jsonl", tmp_path / "a.jsonl"
    questions.write_text(
        json.dumps({"question_id": 5, "image": "demo_01.png", "text": "How many?"}) + "\n"
    )
    answers.write_text(json.dumps({"question_id": 5, "answers": ["2", "two", "2"]}) + "\n")
    expected = [("5", "How many?", None, (DEMO_IMAGES / "demo_01.png").read_bytes())]
    return questions, {"benchmark": "vqa", "images": DEMO_IMAGES, "answers": answers}, expected


FIXTURES = {
    "pope": _pope_fixture,
    "folder": _folder_fixture,
    "tsv": _tsv_fixture,
    "hf": _hf_fixture,
    "llava": _llava_fixture,
}


def _rows(items) -> Expected:
    plain = [getattr(i, "item", i) for i in items]
    return [(i.id, i.text, i.label, i.image.read_bytes()) for i in plain]


def test_every_reader_has_a_fixture():
    assert set(FIXTURES) == set(readers())


def test_benchmark_names_are_the_task_names():
    assert sorted(TASKS) == sorted(BENCHMARKS)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_registered_reader_round_trips_its_fixture(tmp_path, name):
    source, kwargs, expected = FIXTURES[name](tmp_path)
    # Found by the file alone (suffix or folder, and whether a benchmark is asked for) ...
    assert reader_for(source, kwargs.get("benchmark")).name == name
    by_file = read_dataset(source, **kwargs)
    assert by_file.reader.name == name
    assert _rows(by_file.items) == expected
    # ... and by name, with the same items; limit stops early.
    by_name = read_dataset(source, format=name, **kwargs)
    assert _rows(by_name.items) == expected
    assert _rows(read_dataset(source, format=name, limit=1, **kwargs).items) == expected[:1]
    described = by_file.describe()
    assert described["format"] == name
    assert described["source"] == str(source)
    assert "decode_dir" not in described  # where images were written is not the dataset
    assert all(isinstance(v, str | None) for v in described.values())


def test_scored_readers_return_bench_items(tmp_path):
    source, kwargs, _ = _llava_fixture(tmp_path)
    (item,) = read_dataset(source, **kwargs).items
    assert isinstance(item, BenchItem)
    assert item.human_answers == ("2", "two", "2")
    # VQA accuracy: mean over the leave-one-out pairs of min(matches / 3, 1); "two" reads as
    # "2", so every pair holds 2 matches -> 2/3.
    assert task("vqa").evaluate([item], ["2"])["accuracy"] == pytest.approx(200 / 3)


def test_lookup_by_suffix(tmp_path):
    for name in ("a.tsv", "B.TSV", "c.jsonl", "d.parquet", "e.csv", "noext"):
        (tmp_path / name).write_text("")
    folder = tmp_path / "dir"
    folder.mkdir()
    assert reader_for(tmp_path / "a.tsv", "mme").name == "tsv"
    assert reader_for(tmp_path / "B.TSV", "mmbench").name == "tsv"  # suffixes are case-blind
    assert reader_for(tmp_path / "c.jsonl").name == "pope"
    assert reader_for(tmp_path / "c.jsonl", "vqa").name == "llava"
    assert reader_for(tmp_path / "c.jsonl", "gqa").name == "llava"
    assert reader_for(tmp_path / "d.parquet", "cv_bench").name == "hf"
    assert reader_for(folder).name == "folder"
    assert reader_for(folder, "mmvp").name == "hf"
    assert get_reader("tsv").suffixes == (".tsv",)


def _one_line(caught: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(caught.value)
    assert "\n" not in message
    assert isinstance(caught.value, DatasetError)
    return message


def test_unknown_format_is_refused_listing_the_registered_ones(tmp_path):
    with pytest.raises(UnknownFormatError) as caught:
        get_reader("xml")
    message = _one_line(caught)
    assert message.startswith("Unknown dataset format 'xml'; registered: ")
    for reader in readers().values():
        assert reader.label() in message
    assert "tsv (.tsv)" in message
    assert "hf (folder, .parquet)" in message
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(UnknownFormatError) as caught:
        read_dataset(tmp_path / "e.csv", benchmark="mme", decode_dir=tmp_path)
    message = _one_line(caught)
    assert message.startswith("No dataset reader reads .csv (e.csv); registered: ")
    assert "pope (.jsonl)" in message


@pytest.mark.parametrize(
    ("name", "benchmark", "wording"),
    [
        ("a.tsv", None, "No dataset reader reads .tsv for plain items; readers of .tsv: tsv"),
        ("c.jsonl", "mme", "No dataset reader reads .jsonl for benchmark 'mme'"),
    ],
)
def test_a_suffix_without_a_reader_for_the_benchmark_is_refused(tmp_path, name, benchmark, wording):
    (tmp_path / name).write_text("")
    with pytest.raises(UnknownFormatError) as caught:
        reader_for(tmp_path / name, benchmark)
    assert _one_line(caught).startswith(wording)


def test_requests_are_checked_against_the_reader_before_reading(tmp_path):
    source, kwargs, _ = _tsv_fixture(tmp_path)
    cases = [
        ({"format": "pope"}, "The pope reader needs an image root (images)."),
        ({"format": "folder"}, "The folder reader needs a prompt (prompt)."),
        ({"format": "tsv", "benchmark": "mme"}, "The tsv reader needs a folder for decoded"),
        ({"format": "tsv"}, "The tsv reader needs a benchmark, one of mme, "),
        ({"format": "pope", "benchmark": "pope", "images": DEMO_IMAGES}, "reads plain items"),
        ({**kwargs, "prompt": "p"}, "The tsv reader does not use prompt"),
        ({**kwargs, "answers": source}, "The tsv reader does not use answers"),
        ({**kwargs, "limit": 0}, "limit must be >= 1, got 0."),
        ({**kwargs, "benchmark": "vqa", "format": "llava", "prompt": "p"}, "does not use prompt"),
    ]
    for options, wording in cases:
        with pytest.raises(DatasetError) as caught:
            read_dataset(source, **options)
        assert wording in _one_line(caught), options
    assert not (tmp_path / "decoded").exists()  # nothing was read, no image decoded
    with pytest.raises(DatasetError, match="Dataset source not found"):
        read_dataset(tmp_path / "missing.tsv", **kwargs)


def test_registration_is_checked():
    with pytest.raises(ValueError, match="registered twice"):
        register_reader("pope", description="again", suffixes=(".jsonl",))(lambda r: [])
    with pytest.raises(ValueError, match="suffixes are lower-case"):
        register_reader("x", description="x", suffixes=("tsv",))
    with pytest.raises(ValueError, match="not a request field"):
        register_reader("x", description="x", suffixes=(".x",), requires=("image_root",))
    assert "x" not in readers()


def test_a_new_reader_is_one_registration(tmp_path, monkeypatch):
    """A reader registered anywhere is found by its suffix and read: no other list to edit."""
    from analysis.scoring.readers import registry

    monkeypatch.setattr(registry, "_READERS", dict(registry._READERS))

    @register_reader(
        "csv",
        description="id,image,question,label",
        suffixes=(".csv",),
        requires=("images",),
    )
    def _read_csv(request: ReadRequest) -> list:
        with request.source.open(newline="") as handle:
            records = list(csv.DictReader(handle))
        return items_from_records(records, request.need_path("images"), source="csv")

    path = tmp_path / "items.csv"
    path.write_text("id,image,question,label\nq1,demo_00.png,Is it red?,Yes\n")
    dataset = read_dataset(path, images=DEMO_IMAGES)
    assert dataset.reader.name == "csv"
    assert _rows(dataset.items) == [
        ("q1", "Is it red?", "yes", (DEMO_IMAGES / "demo_00.png").read_bytes())
    ]
    with pytest.raises(UnknownFormatError, match=r"registered: .*csv \(\.csv\)"):
        get_reader("nope")
