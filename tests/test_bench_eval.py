"""vsink eval --benchmark on the demo model: hand-made files from the demo images, scored by hand.

The demo model answers "Is there a <colour> object" questions right (yes/no, by
log-prob and by generation) and "What color is the object?" with options
``A. red`` .. ``D. yellow`` by the letter of the object's colour (its letter
circuit, see analysis/demo/build.py), by log-prob and by generation.
"""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from analysis import cli
from analysis.loading import DEMO_MODEL_DIR
from analysis.scoring.runs import benchmark_summary

IMAGES = DEMO_MODEL_DIR.parent / "images"
CONDITIONS = "baseline,var,var:preset=official,var:rho_preset=general,var-all-heads,var-to-text"


def b64(name: str) -> str:
    return base64.b64encode((IMAGES / name).read_bytes()).decode()


def write_tsv(path: Path, rows: list[dict[str, str]]) -> Path:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return path


def mme_rows() -> list[dict[str, str]]:
    """Four images, a yes and a no question each; question 5's label is deliberately wrong."""
    spec = [
        ("demo_00.png", "red", "green", "color"),
        ("demo_02.png", "yellow", "red", "color"),
        ("demo_04.png", "blue", "cyan", "existence"),
        ("demo_06.png", "green", "magenta", "existence"),
    ]
    rows = []
    for k, (image, present, absent, category) in enumerate(spec):
        for offset, (colour, answer) in enumerate(((present, "Yes"), (absent, "No"))):
            rows.append(
                {
                    "index": str(2 * k + offset),
                    "image": b64(image),
                    "question": f"Is there a {colour} object in the image? Please answer yes or no.",
                    "answer": answer,
                    "category": category,
                }
            )
    rows[5]["answer"] = "Yes"  # the model says no: existence loses one question and one image
    return rows


COLOURS = ["red", "green", "blue", "yellow"]
# Single-object demo images and their object's colour.
OBJECTS = [("demo_00.png", "red"), ("demo_02.png", "yellow"), ("demo_04.png", "blue"),
           ("demo_06.png", "green")]  # fmt: skip


def choice_rows() -> list[dict[str, str]]:
    """MMBench-style: four colour questions, each with its options in 4 circular rotations.

    Question 3's rotation 2 has a deliberately wrong answer letter.
    """
    rows = []
    for k, (image, colour) in enumerate(OBJECTS):
        for rotation in range(4):
            options = COLOURS[rotation:] + COLOURS[:rotation]
            rows.append(
                {
                    "index": str(k + rotation * 1_000_000),
                    "image": b64(image),
                    "question": "What color is the object?",
                    "answer": "ABCD"[options.index(colour)],
                    **dict(zip("ABCD", options, strict=True)),
                    "category": "attribute",
                }
            )
    wrong = rows[3 * 4 + 2]
    wrong["answer"] = "ABCD"[("ABCD".index(wrong["answer"]) + 1) % 4]
    return rows


@pytest.fixture
def runner(demo_model, monkeypatch):
    monkeypatch.setattr(cli, "load", lambda *args, **kwargs: demo_model)
    return CliRunner()


def _eval(runner, out, *args):
    result = runner.invoke(
        cli.app,
        ["eval", "--out", str(out), "--dims", "337,771", "--no-progress", "--n-boot", "200", *args],
    )
    assert result.exit_code == 0, result.output
    return result.output, json.loads((out / "summary.json").read_text())


def _value(entry, name, key, scoring="logprob"):
    return entry[scoring]["conditions"][name]["metrics"][key]["value"]


def test_mme_tsv_with_presets_and_ablations_in_one_run(runner, tmp_path):
    tsv = write_tsv(tmp_path / "mme.tsv", mme_rows())
    out = tmp_path / "mme"
    args = ["--benchmark", "mme", "--tsv", str(tsv), "--conditions", CONDITIONS]
    output, summary = _eval(runner, out, *args, "--max-new-tokens", "3", "--batch-size", "3")
    bench = summary["benchmark"]
    assert bench["name"] == "mme"
    assert bench["reference"] == "baseline"
    names = list(bench["logprob"]["conditions"])
    assert names == [
        "baseline",
        "var",
        "var:preset=official",
        "var:rho=0.8",
        "var:rows=all",
        "var:to=text",
    ]
    for scoring in ("logprob", "generate"):
        entry = bench[scoring]
        assert entry["n_items"] == 8
        assert entry["n_units"] == 4
        for name in names:
            # color: 4/4 right, both images all right -> 100 + 100; existence: 3/4 -> 75 + 50.
            assert _value(bench, name, "color/score", scoring) == pytest.approx(200.0)
            assert _value(bench, name, "existence/accuracy", scoring) == pytest.approx(75.0)
            assert _value(bench, name, "existence/accuracy_plus", scoring) == pytest.approx(50.0)
            assert _value(bench, name, "perception", scoring) == pytest.approx(325.0)
            ci = entry["conditions"][name]["metrics"]["perception"]
            assert ci["lo"] <= 325.0 <= ci["hi"]
            assert ci["lo"] < ci["hi"]  # resampling images moves the total
            if name != "baseline":
                delta = entry["conditions"][name]["vs_reference"]["perception"]
                assert delta == {"value": 0.0, "lo": 0.0, "hi": 0.0}
                assert entry["conditions"][name]["mcnemar"] == {"b": 0, "c": 0, "p": 1.0}
    # The base64 images went into the run folder, once per image.
    assert len(list((out / "images").iterdir())) == 4
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["format"] == 2
    assert manifest["config"]["benchmark"] == "mme"
    assert manifest["config"]["answers"] == ["yes", "no"]
    # VAR and the ablations moved attention (not no-ops) and differ from each other.
    moved = {n: summary["conditions"][n]["var"]["mass_moved_mean"] for n in names[1:]}
    assert all(v > 0 for v in moved.values())
    assert moved["var:rows=all"] > moved["var"]
    assert "mme scored by option log-prob" in output
    assert "perception" in output
    assert "Δ perception vs baseline" in output
    # vsink summary prints the same tables from the records; a rerun resumes (nothing to do).
    printed = runner.invoke(cli.app, ["summary", str(out)])
    assert printed.exit_code == 0, printed.output
    assert "325.00 [" in printed.output
    assert "+0.00 [+0.00, +0.00]" in printed.output
    before = (out / "records.jsonl").read_text()
    _eval(runner, out, *args, "--max-new-tokens", "3", "--batch-size", "3")
    assert (out / "records.jsonl").read_text() == before


def test_multiple_choice_by_letter_and_by_generation(runner, tmp_path):
    tsv = write_tsv(tmp_path / "mmb.tsv", choice_rows())
    out = tmp_path / "mmb"
    conditions = "baseline,var,var:preset=official,var-all-heads,var-to-visual"
    args = ["--benchmark", "mmbench", "--tsv", str(tsv), "--conditions", conditions]
    output, summary = _eval(runner, out, *args, "--max-new-tokens", "3", "--batch-size", "4")
    bench = summary["benchmark"]
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 16 * 5
    for record in records:
        assert record["candidates"] == ["A", "B", "C", "D"]
        assert set(record["logprobs"]) == {"A", "B", "C", "D"}
        # The letter of the object's colour, by log-prob and as the whole generation.
        lines = record["text"].splitlines()[1:5]
        options = dict(line.split(". ") for line in lines)
        colour = OBJECTS[int(record["id"]) % 1_000_000][1]
        right = next(letter for letter, text in options.items() if text == colour)
        assert record["pred_logprob"] == right
        assert record["generated"] == right
        assert record["pred_generate"] == right
    for scoring in ("logprob", "generate"):
        for name in ("baseline", "var", "var:preset=official", "var:rows=all", "var:to=visual"):
            # 15 of 16 right (one wrong key); 3 of 4 circles complete.
            assert _value(bench, name, "accuracy", scoring) == pytest.approx(93.75)
            assert _value(bench, name, "circular_accuracy", scoring) == pytest.approx(75.0)
        versus = bench[scoring]["conditions"]["var"]["vs_reference"]["circular_accuracy"]
        assert versus == {"value": 0.0, "lo": 0.0, "hi": 0.0}
    assert bench["logprob"]["n_units"] == 4
    assert "circular_accuracy" in output
    assert "Δ circular_accuracy vs baseline" in output
    assert "precision" not in output  # no POPE yes/no metrics for a choice benchmark


def test_letters_are_compared_within_the_item():
    """An item is scored on its own letters even when the batch's union has more."""
    from analysis.datasets import Item
    from analysis.scoring.readers import BenchItem
    from analysis.scoring.runs import record_fields

    item = BenchItem(
        item=Item("q", IMAGES / "demo_00.png", "demo_00.png", "text", "B"),
        benchmark="choice",
        unit="q",
        answer="B",
        options={"A": "green", "B": "red"},
    )
    union = {"A": -5.0, "B": -4.0, "C": -0.1, "D": -3.0}
    fields = record_fields(item, union, "C")
    assert fields["logprobs"] == {"A": -5.0, "B": -4.0}
    assert fields["pred_logprob"] == "B"
    assert fields["score_logprob"] == 1.0
    # "C" is no option of this item: the generation picks nothing and scores 0.
    assert fields["pred_generate"] is None
    assert fields["score_generate"] == 0.0


def test_vqa_questions_with_human_answers(runner, tmp_path):
    questions = tmp_path / "q.jsonl"
    answers = tmp_path / "a.jsonl"
    rows = [
        {"question_id": 10, "image": "demo_00.png", "text": "Is there a red object in the image?"},
        {"question_id": 11, "image": "demo_00.png", "text": "Is there a blue object in the image?"},
    ]
    humans = [
        {"question_id": 10, "answers": ["yes"] * 10},
        {"question_id": 11, "answers": ["no"] * 2 + ["none"] * 8},
    ]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    answers.write_text("".join(json.dumps(r) + "\n" for r in humans))
    out = tmp_path / "vqa"
    args = ["--benchmark", "vqa", "--questions", str(questions), "--images", str(IMAGES)]
    args += ["--answer-file", str(answers), "--conditions", "baseline,var", "--max-new-tokens", "3"]
    _output, summary = _eval(runner, out, *args)
    bench = summary["benchmark"]
    assert "logprob" not in bench  # open answers: generation only
    # q10: 10 of 10 say "yes" -> 1. q11 answered "no": 2 leave-one-out subsets keep one "no"
    # (1/3), 8 keep two (2/3): (2/3 + 16/3) / 10 = 0.6. Mean 0.8 -> 80 %.
    for name in ("baseline", "var"):
        assert _value(bench, name, "accuracy", "generate") == pytest.approx(80.0)
    assert "mcnemar" not in bench["generate"]["conditions"]["var"]  # fractional scores


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--benchmark", "mme"], "exactly one of --tsv, --hf, --questions or --data"),
        (["--benchmark", "nope", "--tsv", "x.tsv"], "--benchmark must be one of"),
        (["--tsv", "x.tsv"], "need --benchmark"),
    ],
)
def test_bad_benchmark_options_are_one_line_errors(runner, tmp_path, args, message):
    result = runner.invoke(cli.app, ["eval", "--out", str(tmp_path / "r"), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_hf_parquet_folder_reader(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from analysis.scoring.readers import read_hf_folder

    folder = tmp_path / "hf" / "data"
    folder.mkdir(parents=True)
    table = pa.table(
        {
            "question_id": ["q0", "q1"],
            "question": ["What colour is the object?", "What colour is the object?"],
            "choices": [["red", "green"], ["blue", "yellow", "red"]],
            "answer": ["(A)", "C"],
            "source": ["COCO", "Omni3D"],
            "image": [
                {"bytes": (IMAGES / "demo_00.png").read_bytes(), "path": None},
                {"bytes": (IMAGES / "demo_00.png").read_bytes(), "path": None},
            ],
        }
    )
    pq.write_table(table, folder / "test-00000.parquet")
    items = read_hf_folder(tmp_path / "hf", benchmark="cv_bench", decode_dir=tmp_path / "img")
    assert [b.item.id for b in items] == ["q0", "q1"]
    assert [b.item.label for b in items] == ["A", "C"]
    assert items[1].options == {"A": "blue", "B": "yellow", "C": "red"}
    assert [b.category for b in items] == ["COCO", "Omni3D"]
    assert len(list((tmp_path / "img").iterdir())) == 1  # one image, stored once
    assert items[0].item.image.read_bytes() == (IMAGES / "demo_00.png").read_bytes()


def _record(name, index, unit, score):
    return {
        "id": str(index),
        "index": index,
        "condition": name,
        "benchmark": "mmbench",
        "unit": unit,
        "category": "",
        "score_logprob": score,
    }


def test_benchmark_summary_by_hand():
    base = [1.0, 1.0, 1.0, 0.0]
    other = [1.0, 1.0, 1.0, 1.0]
    by_condition = {
        name: {str(i): _record(name, i, f"u{i // 2}", s) for i, s in enumerate(scores)}
        for name, scores in (("baseline", base), ("var", other))
    }
    out = benchmark_summary(by_condition, ["baseline", "var"], n_boot=500, seed=0, level=0.95)
    entry = out["logprob"]
    assert entry["n_units"] == 2
    assert _value(out, "baseline", "circular_accuracy") == pytest.approx(50.0)
    assert _value(out, "var", "circular_accuracy") == pytest.approx(100.0)
    assert _value(out, "baseline", "accuracy") == pytest.approx(75.0)
    versus = entry["conditions"]["var"]["vs_reference"]
    assert versus["circular_accuracy"]["value"] == pytest.approx(50.0)
    assert versus["accuracy"]["value"] == pytest.approx(25.0)
    # Two units: the resampled difference is 0 (u0 twice), 50 or 100 (u1 twice).
    assert versus["circular_accuracy"]["lo"] == pytest.approx(0.0)
    assert versus["circular_accuracy"]["hi"] == pytest.approx(100.0)
    assert entry["conditions"]["var"]["mcnemar"] == {"b": 0, "c": 1, "p": 1.0}
    assert "generate" not in out


def test_judge_exports_of_generations(runner, tmp_path):
    out = tmp_path / "gen"
    demo = DEMO_MODEL_DIR.parent
    args = ["--questions", str(demo / "questions.jsonl"), "--images", str(IMAGES)]
    _eval(
        runner, out, *args, "--limit", "2", "--conditions", "baseline,var", "--max-new-tokens", "3"
    )
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    generated = {r["id"]: r["generated"] for r in records if r["condition"] == "var"}
    assert generated == {"0": "yes", "1": "no"}  # demo: red in demo_00, no cyan

    def export(*extra):
        result = runner.invoke(cli.app, ["export", str(out), *extra])
        assert result.exit_code == 0, result.output
        return result

    export("--format", "mm-vet", "--condition", "var", "--out", str(tmp_path / "mmvet.json"))
    assert json.loads((tmp_path / "mmvet.json").read_text()) == {"0": "yes", "1": "no"}
    export("--format", "llava-wild", "--out", str(tmp_path / "wild.jsonl"), "--model-id", "demo")
    lines = [json.loads(x) for x in (tmp_path / "wild.jsonl").read_text().splitlines()]
    assert [(x["question_id"], x["text"], x["model_id"]) for x in lines] == [
        (0, "yes", "demo"),
        (1, "no", "demo"),
    ]
    assert lines[0]["prompt"] == "Is there a red object in the image?"
    template = [{"question": "q0", "model_answer": ""}, {"question": "q1", "model_answer": ""}]
    (tmp_path / "template.json").write_text(json.dumps(template))
    export("--format", "mmhal", "--template", str(tmp_path / "template.json"),
           "--out", str(tmp_path / "mmhal.json"))  # fmt: skip
    filled = json.loads((tmp_path / "mmhal.json").read_text())
    assert filled == [
        {"question": "q0", "model_answer": "yes"},
        {"question": "q1", "model_answer": "no"},
    ]
    for extra, message in (
        (["--format", "mmhal"], "needs MMHal-Bench's response_template"),
        (["--format", "gpt"], "--format must be one of"),
        (["--format", "mm-vet", "--condition", "nope"], "no records of condition 'nope'"),
    ):
        result = runner.invoke(cli.app, ["export", str(out), *extra, "--out", str(tmp_path / "x")])
        assert result.exit_code == 2
        assert message in result.output


def test_a_newer_run_format_is_refused(runner, tmp_path):
    run = tmp_path / "future"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"config": {"format": 99}, "conditions": []}))
    result = runner.invoke(cli.app, ["summary", str(run)])
    assert result.exit_code == 2
    assert "run format 99 is newer than this vsink reads (<= 2)" in result.output


def test_pope_tsv_keeps_the_pope_metrics(runner, tmp_path):
    rows = [
        {"index": "0", "image": b64("demo_00.png"), "question": "Is there a red object in the image?",
         "answer": "yes", "category": "adversarial"},
        {"index": "1", "image": b64("demo_00.png"), "question": "Is there a blue object in the image?",
         "answer": "no", "category": "adversarial"},
        {"index": "2", "image": b64("demo_04.png"), "question": "Is there a blue object in the image?",
         "answer": "no", "category": "adversarial"},  # wrong key: the model says yes
    ]  # fmt: skip
    tsv = write_tsv(tmp_path / "pope.tsv", rows)
    out = tmp_path / "pope"
    args = ["--benchmark", "pope", "--tsv", str(tsv), "--conditions", "baseline,var"]
    _, summary = _eval(runner, out, *args, "--max-new-tokens", "0")
    assert _value(summary["benchmark"], "baseline", "accuracy") == pytest.approx(200 / 3)
    pope = summary["conditions"]["baseline"]["logprob"]
    assert pope["accuracy"]["value"] == pytest.approx(2 / 3)
    assert pope["counts"] == {"tp": 1, "fp": 1, "tn": 1, "fn": 0}


def test_chair_summary_by_hand():
    from analysis.scoring.runs import chair_summary

    objects = {"img1.jpg": {"dog"}, "img2.jpg": {"cat", "person"}}
    captions = {
        "baseline": ["A dog and a cat.", "A man with a cat."],
        "var": ["A dog.", "A man with a cat."],
    }
    records = [
        {"id": str(i), "index": i, "condition": name, "image": f"img{i + 1}.jpg", "generated": c}
        for name, texts in captions.items()
        for i, c in enumerate(texts)
    ]
    out = chair_summary(records, objects, ["baseline", "var"], n_boot=200, seed=0, level=0.95)
    base = out["conditions"]["baseline"]["metrics"]
    # Baseline: 4 mentions, 1 hallucinated (cat in image 1); 1 of 2 captions; 3 of 3 objects.
    assert base["chair_i"]["value"] == pytest.approx(25.0)
    assert base["chair_s"]["value"] == pytest.approx(50.0)
    assert base["recall"]["value"] == pytest.approx(100.0)
    versus = out["conditions"]["var"]["vs_reference"]
    assert versus["chair_i"]["value"] == pytest.approx(-25.0)
    assert versus["chair_s"]["value"] == pytest.approx(-50.0)
    assert versus["recall"]["value"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="no COCO annotations"):
        chair_summary(records, {"img1.jpg": {"dog"}}, ["baseline"], n_boot=10, seed=0, level=0.95)


def test_vsink_chair_on_a_demo_run(runner, tmp_path):
    out = tmp_path / "captions"
    args = ["--images", str(IMAGES), "--prompt", "Is there a red object in the image?"]
    _eval(
        runner, out, *args, "--limit", "2", "--conditions", "baseline,var", "--max-new-tokens", "3"
    )
    instances = {
        "categories": [{"id": 1, "name": "dog"}],
        "images": [{"id": 1, "file_name": "demo_00.png"}, {"id": 2, "file_name": "demo_01.png"}],
        "annotations": [{"image_id": 1, "category_id": 1}],
    }
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    result = runner.invoke(
        cli.app,
        ["chair", str(out), "--instances", str(tmp_path / "instances.json"),
         "--json", str(tmp_path / "chair.json")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "chair.json").read_text())
    # The demo's "yes" / "no" mention no object: nothing hallucinated, the dog not recalled.
    metrics = data["conditions"]["baseline"]["metrics"]
    assert metrics["chair_i"]["value"] == 0.0
    assert metrics["chair_s"]["value"] == 0.0
    assert metrics["recall"]["value"] == 0.0
    assert data["n_captions"] == 2
    assert "CHAIR over 2 captions" in result.output


def test_data_reads_any_registered_format_by_suffix_or_format(runner, tmp_path):
    """--data picks the reader by suffix (+ --benchmark) or by --format; same items, same scores."""
    rows = mme_rows()
    by_suffix = write_tsv(tmp_path / "mme.tsv", rows)
    # A suffix no reader claims: only --format can name its reader.
    by_name = write_tsv(tmp_path / "mme.txt", rows)
    args = ["--benchmark", "mme", "--conditions", "baseline", "--max-new-tokens", "0"]
    scores = {}
    for name, extra in (
        ("tsv", ["--tsv", str(by_suffix)]),
        ("suffix", ["--data", str(by_suffix)]),
        ("format", ["--data", str(by_name), "--format", "tsv"]),
    ):
        _, summary = _eval(runner, tmp_path / name, *args, *extra)
        bench = summary["benchmark"]
        assert bench["logprob"]["n_items"] == 8
        # As in the --tsv test: color 200, existence 3/4 right with one of two images all right.
        assert _value(bench, "baseline", "perception") == pytest.approx(325.0)
        scores[name] = bench["logprob"]["conditions"]["baseline"]["metrics"]
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        assert manifest["dataset"]["format"] == "tsv"
        assert manifest["dataset"]["benchmark"] == "mme"
    assert scores["suffix"] == scores["tsv"] == scores["format"]
    assert json.loads((tmp_path / "format" / "manifest.json").read_text())["dataset"][
        "source"
    ] == str(by_name)

    # Plain items: a .jsonl without --benchmark is read as POPE questions (by suffix).
    questions = DEMO_MODEL_DIR.parent / "questions.jsonl"
    plain = ["--data", str(questions), "--images", str(IMAGES), "--limit", "4"]
    _, summary = _eval(runner, tmp_path / "pope", *plain, "--conditions", "baseline",
                       "--max-new-tokens", "0", "--no-stats")  # fmt: skip
    baseline = summary["conditions"]["baseline"]
    assert baseline["n"] == 4
    assert baseline["logprob"]["accuracy"]["value"] == 1.0  # the demo answers its questions
    manifest = json.loads((tmp_path / "pope" / "manifest.json").read_text())
    assert manifest["dataset"]["format"] == "pope"
    assert manifest["dataset"]["source"] == str(questions)


def test_data_and_format_errors_are_one_line(runner, tmp_path):
    from analysis.scoring.readers import readers

    tsv = write_tsv(tmp_path / "mme.tsv", mme_rows()[:2])
    cases = [
        (["--benchmark", "mme", "--data", str(tsv), "--format", "nope"],
         "Unknown dataset format 'nope'; registered: "),
        (["--data", str(tsv), "--format", "nope"], "Unknown dataset format 'nope'; registered: "),
        (["--benchmark", "mme", "--tsv", str(tsv), "--format", "tsv"],
         "--format names the reader of --data; pass --data."),
        (["--format", "tsv"], "--format names the reader of --data; pass --data."),
        (["--benchmark", "mme", "--tsv", str(tsv), "--data", str(tsv)],
         "exactly one of --tsv, --hf, --questions or --data"),
        (["--data", str(tsv), "--questions", str(tsv)], "either --data or --questions"),
        (["--data", str(tsv)], "No dataset reader reads .tsv for plain items"),
        (["--benchmark", "mme", "--data", str(tmp_path / "mme.csv")], "not found"),
    ]  # fmt: skip
    for args, message in cases:
        result = runner.invoke(cli.app, ["eval", "--out", str(tmp_path / "r"), *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert not (tmp_path / "r" / "records.jsonl").exists()
    # The unknown-format line lists every registered reader.
    result = runner.invoke(cli.app, ["eval", "--out", str(tmp_path / "r"), *cases[0][0]])
    for name in readers():
        assert f"{name} (" in result.output
    assert {"tsv", "hf", "llava", "pope", "folder"} <= set(readers())
    # sweep reads its items the same way.
    result = runner.invoke(cli.app, ["sweep", "--out", str(tmp_path / "s"), *cases[0][0]])
    assert result.exit_code == 2, result.output
    assert "Unknown dataset format 'nope'; registered: " in result.output
