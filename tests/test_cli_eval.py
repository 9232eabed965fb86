"""vsink eval / summary / merge / ablate --questions on the demo model, and a 2-process run.

The in-process commands reuse one loaded demo model (``cli.load`` is patched)
to keep the suite fast; the torchrun test loads it in each process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from analysis import cli
from analysis.loading import DEMO_MODEL_DIR

DEMO = DEMO_MODEL_DIR.parent
REPO = DEMO.parent.parent
# The configuration the 1-process and the 2-process runs share.
SHARDED_ARGS = [
    "--limit",
    "4",
    "--batch-size",
    "2",
    "--conditions",
    "baseline,ablate-random",
    "--max-new-tokens",
    "1",
    "--dims",
    "337,771",
    "--no-progress",
]


@pytest.fixture(scope="module")
def demo(demo_model):
    return demo_model


@pytest.fixture
def runner(demo, monkeypatch):
    monkeypatch.setattr(cli, "load", lambda *args, **kwargs: demo)
    return CliRunner()


def _invoke(runner, args):
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    return result.output


def test_eval_all_bundled_questions(runner, tmp_path):
    out = tmp_path / "all"
    args = ["eval", "--out", str(out), "--conditions", "baseline", "--max-new-tokens", "0"]
    output = _invoke(runner, [*args, "--batch-size", "8", "--no-stats", "--no-progress"])
    assert "scored by answer log-prob" in output
    summary = json.loads((out / "summary.json").read_text())
    baseline = summary["conditions"]["baseline"]
    assert baseline["n"] == 32
    assert baseline["logprob"]["accuracy"] == {"value": 1.0, "lo": 1.0, "hi": 1.0}
    assert baseline["logprob"]["counts"] == {"tp": 16, "fp": 0, "tn": 16, "fn": 0}
    assert "generate" not in baseline  # --max-new-tokens 0: log-probs only
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"]["format"] == "pope"
    assert manifest["dims"] is None  # neither stats nor interventions need sink dims

    output = _invoke(runner, ["summary", str(out), "--json", str(tmp_path / "s.json")])
    assert "baseline" in output
    assert "1.000 [1.000, 1.000]" in output
    assert json.loads((tmp_path / "s.json").read_text()) == summary
    output = _invoke(runner, ["merge", str(out)])
    assert "merged 32 records from 1 part(s)" in output


def test_two_processes_equal_one(runner, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _invoke(runner, ["eval", "--out", str(one), *SHARDED_ARGS])
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "analysis.cli",
        "eval",
        "--out",
        str(two),
        *SHARDED_ARGS,
    ]
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in two.glob("part-*.jsonl")) == ["part-0.jsonl", "part-1.jsonl"]
    assert all((two / p).stat().st_size > 0 for p in ("part-0.jsonl", "part-1.jsonl"))
    # Batches are formed before sharding, so the records are bit-identical.
    assert (two / "records.jsonl").read_text() == (one / "records.jsonl").read_text()
    assert (two / "summary.json").read_text() == (one / "summary.json").read_text()
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["sessions"][-1]["world_size"] == 2
    # `vsink merge` offline gives the same summary again.
    _invoke(runner, ["merge", str(two)])
    assert (two / "summary.json").read_text() == (one / "summary.json").read_text()


def test_ablate_over_a_dataset(runner, tmp_path):
    out = tmp_path / "ablate"
    args = [
        "ablate",
        "--questions",
        str(DEMO / "questions.jsonl"),
        "--images",
        str(DEMO / "images"),
    ]
    args += ["--target", "sinks", "--target", "random", "--draws", "2", "--limit", "2"]
    output = _invoke(runner, [*args, "--batch-size", "2", "--out", str(out), "--dims", "337,771"])
    for name in ("baseline", "ablate-sinks", "ablate-random[0]", "ablate-random[1]"):
        assert name in output
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["conditions"]) == [
        "baseline",
        "ablate-sinks",
        "ablate-random[0]",
        "ablate-random[1]",
    ]
    for name, entry in summary["conditions"].items():
        assert entry["logprob"]["accuracy"]["value"] == 1.0
        if name != "baseline":
            assert entry["delta_logprob_label"]["n"] == 2
            assert entry["blocked_per_layer_mean"][2] == 12  # demo_00 has 12 planted sinks
    records = [json.loads(line) for line in (out / "records.jsonl").open()]
    draws = [r["blocked"] for r in records if r["condition"].startswith("ablate-random")]
    assert len(draws) == 4


def test_user_errors_are_one_line(runner, tmp_path):
    outside = tmp_path / "q.jsonl"
    outside.write_text(json.dumps({"question_id": 1, "image": "../x.png", "text": "q"}) + "\n")
    cases = [
        (
            [
                "eval",
                "--out",
                str(tmp_path / "r"),
                "--questions",
                str(outside),
                "--images",
                str(DEMO / "images"),
            ],
            "outside the image root",
        ),
        (["eval", "x/y/z", "--out", str(tmp_path / "r")], "--questions and --images are required"),
        (
            ["eval", "--out", str(tmp_path / "r"), "--conditions", "baseline,var:q=1"],
            "unknown option",
        ),
        (["summary", str(tmp_path)], "not an evaluation run"),
        (
            [
                "ablate",
                "--questions",
                str(outside),
                "--images",
                str(DEMO / "images"),
                "--target",
                "positions",
            ],
            "target=positions",
        ),
    ]
    for args, message in cases:
        result = runner.invoke(cli.app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output
        assert "Traceback" not in result.output
