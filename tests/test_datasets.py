"""Dataset readers: POPE JSONL, image folders, records; paths stay inside the image root."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import make_image

from analysis.datasets import (
    DatasetError,
    fingerprint,
    image_folder,
    items_from_records,
    read_pope,
    resolve_image,
)
from analysis.loading import DEMO_MODEL_DIR

DEMO = DEMO_MODEL_DIR.parent


@pytest.fixture
def root(tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    make_image(seed=1).save(images / "a.png")
    make_image(seed=2).save(images / "sub" / "b.jpg")
    (images / "notes.txt").write_text("not an image")
    return images


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_bundled_pope_questions():
    items = read_pope(DEMO / "questions.jsonl", DEMO / "images")
    assert len(items) == 32
    assert [i.id for i in items[:3]] == ["0", "1", "2"]
    assert items[0].image == (DEMO / "images" / "demo_00.png").resolve()
    assert items[0].image_name == "demo_00.png"
    assert items[0].text == "Is there a red object in the image?"
    assert [i.label for i in items].count("yes") == 16
    assert {i.label for i in items} == {"yes", "no"}
    assert len(read_pope(DEMO / "questions.jsonl", DEMO / "images", limit=5)) == 5


def test_aliases_and_label_normalisation(tmp_path, root):
    questions = _write(
        tmp_path / "q.jsonl",
        [
            {"id": 7, "image": "a.png", "question": "Is it red?", "answer": " Yes "},
            "",
            {"question_id": "x", "image": "sub/b.jpg", "prompt": "Describe."},
        ],
    )
    with pytest.warns(UserWarning, match="1 of 2 items have no label"):
        items = read_pope(questions, root)
    assert [(i.id, i.text, i.label) for i in items] == [
        ("7", "Is it red?", "yes"),
        ("x", "Describe.", None),
    ]
    assert items[1].image_name == "sub/b.jpg"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"image": "a.png", "text": "q"}], r"row 1: missing 'question_id' or 'id'"),
        ([{"question_id": 1, "text": "q"}], r"row 1: missing 'image'"),
        ([{"question_id": 1, "image": "a.png", "text": " "}], r"missing 'text'"),
        (
            [{"question_id": 1, "image": "a.png", "text": "q"}] * 2,
            r"row 2: duplicate id '1'",
        ),
        ([{"question_id": 1, "image": "zz.png", "text": "q"}], r"'zz.png' not found under"),
        (["[1, 2]"], r"row 1: expected a JSON object"),
        ([], r"holds no items"),
    ],
)
def test_bad_rows_are_clear_errors(tmp_path, root, rows, message):
    with pytest.raises(DatasetError, match=message):
        read_pope(_write(tmp_path / "q.jsonl", rows), root)


def test_invalid_json_names_the_line(tmp_path, root):
    questions = _write(
        tmp_path / "q.jsonl", [{"question_id": 1, "image": "a.png", "text": "q"}, "{oops"]
    )
    with pytest.raises(DatasetError, match=r"q\.jsonl:2: not valid JSON"):
        read_pope(questions, root)
    with pytest.raises(DatasetError, match="Question file not found"):
        read_pope(tmp_path / "missing.jsonl", root)


def test_paths_escaping_the_root_are_refused(tmp_path, root):
    outside = tmp_path / "secret.png"
    make_image(seed=3).save(outside)
    for name in ("../secret.png", str(outside), "sub/../../secret.png"):
        with pytest.raises(DatasetError, match="outside the image root"):
            resolve_image(root, name)
    (root / "link.png").symlink_to(outside)
    with pytest.raises(DatasetError, match="outside the image root"):
        resolve_image(root, "link.png")
    # Inside the root, "sub/../a.png" is fine, and so is a link to a file in the root.
    assert resolve_image(root, "sub/../a.png") == (root / "a.png").resolve()
    (root / "inner.png").symlink_to(root / "a.png")
    assert resolve_image(root, "inner.png") == (root / "a.png").resolve()
    questions = _write(tmp_path / "q.jsonl", [{"id": 1, "image": "../secret.png", "text": "q"}])
    with pytest.raises(DatasetError, match=r"'\.\./secret\.png' resolves to .* outside"):
        read_pope(questions, root)
    with pytest.raises(DatasetError, match="is not a folder"):
        resolve_image(tmp_path / "nope", "a.png")


def test_image_folder(root):
    items = image_folder(root, "Describe the image.")
    assert [i.id for i in items] == ["a.png", "sub/b.jpg"]  # recursive, sorted, images only
    assert all(i.text == "Describe the image." and i.label is None for i in items)
    assert image_folder(root, "Is it red?", label="Yes", limit=1)[0].label == "yes"
    with pytest.raises(DatasetError, match="non-empty prompt"):
        image_folder(root, " ")
    (root.parent / "empty").mkdir()
    (root.parent / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="No images"):
        image_folder(root.parent / "empty", "p")


def test_records_api_and_fingerprint(tmp_path, root):
    rows = [
        {"id": "q1", "image": "a.png", "text": "Is it red?", "label": "yes"},
        {"id": "q2", "image": "sub/b.jpg", "text": "Is it blue?", "label": "no"},
    ]
    items = items_from_records(rows, root)
    assert [i.describe() for i in items] == [
        {"id": "q1", "image": "a.png", "text": "Is it red?", "label": "yes"},
        {"id": "q2", "image": "sub/b.jpg", "text": "Is it blue?", "label": "no"},
    ]
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    assert fingerprint(items_from_records(rows, moved)) == fingerprint(items)
    edited = [dict(rows[0]), dict(rows[1], label="yes")]
    assert fingerprint(items_from_records(edited, root)) != fingerprint(items)
    with pytest.raises(DatasetError, match="limit must be >= 1"):
        items_from_records(rows, root, limit=0)


def test_partly_unlabelled_file_warns(tmp_path):
    rows = [
        {"question_id": 1, "image": "demo_00.png", "text": "q", "label": "yes"},
        {"question_id": 2, "image": "demo_00.png", "text": "q", "lable": "no"},
    ]
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.warns(UserWarning, match=r"1 of 2 items have no label \(ids \['2'\]"):
        items = read_pope(path, DEMO / "images")
    assert [item.label for item in items] == ["yes", None]
