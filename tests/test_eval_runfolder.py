"""analysis.eval: typed records, the run folder and sharding.

Records of a real run on the demo model round-trip through :class:`ItemRecord`
byte for byte; schema breaks are refused with the key named; a run without a
shard never touches torch's process group, even under a torchrun environment.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from analysis.datasets import Item, read_pope
from analysis.eval.errors import EvalError
from analysis.eval.records import FORMAT_VERSION, ItemRecord, record_key
from analysis.eval.runfolder import (
    _config_diff,
    expected_items,
    load_item_records,
    load_records,
    merge_run,
    part_path,
    read_manifest,
)
from analysis.eval.sharding import Shard, resolve_shard, shard_from_env
from analysis.evaluation import evaluate
from analysis.loading import DEMO_MODEL_DIR
from analysis.scoring import runs as bench_runs
from analysis.scoring.readers import BenchItem

DEMO = DEMO_MODEL_DIR.parent
ITEMS = read_pope(DEMO / "questions.jsonl", DEMO / "images")


@pytest.fixture(scope="module")
def run(demo_model, tmp_path_factory, monkeypatch_module):
    """3 items x 4 conditions, under a torchrun-like environment but without a shard:
    init_process_group would raise if anything called it."""

    def refuse(*args, **kwargs):
        raise AssertionError("evaluate() initialised a process group")

    monkeypatch_module.setenv("WORLD_SIZE", "2")
    monkeypatch_module.setenv("RANK", "0")
    monkeypatch_module.setattr(torch.distributed, "init_process_group", refuse)
    out = tmp_path_factory.mktemp("eval") / "run"
    return evaluate(
        demo_model,
        ITEMS,
        out=out,
        conditions="baseline,var,ablate-sinks,ablate-random",
        limit=3,
        batch_size=2,
        max_new_tokens=2,
        n_calibration=2,
        n_boot=50,
        show_progress=False,
    )


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


# ------------------------------------------------------------------------------- sharding


def test_evaluate_without_a_shard_is_one_process_and_never_joins_a_group(run):
    assert not torch.distributed.is_initialized()
    sessions = run.config["sessions"]
    assert [s["world_size"] for s in sessions] == [1]
    # A single process wrote every record into part-0.
    assert sorted(p.name for p in run.run_dir.glob("part-*.jsonl")) == ["part-0.jsonl"]
    assert run.summary()["n_records"] == 12


def test_a_multi_process_shard_needs_its_group():
    assert resolve_shard(None) == Shard()
    assert resolve_shard(Shard(0, 1)) == Shard(0, 1)
    with pytest.raises(EvalError, match="no process group"):
        resolve_shard(Shard(1, 2, 1))
    with pytest.raises(EvalError, match="Bad shard"):
        Shard(2, 2)


def test_shard_from_env(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert shard_from_env() == Shard(3, 4, 3)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert shard_from_env() == Shard(3, 4, 1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(EvalError, match="RANK=4, WORLD_SIZE=4"):
        shard_from_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(EvalError, match="integers"):
        shard_from_env()


# ------------------------------------------------------------------------------- records


def test_run_records_round_trip_byte_for_byte(run):
    lines = part_path(run.run_dir, 0).read_text().splitlines()
    assert len(lines) == 12
    for line in lines:
        data = json.loads(line)
        record = ItemRecord.from_dict(data)
        assert json.dumps(record.to_dict()) == line  # same keys, same order, same values
        assert record.key == record_key(data) == (data["id"], data["condition"])
    typed = {r.key: r for r in load_item_records(run.run_dir)}
    base = typed[(ITEMS[0].id, "baseline")]
    assert base.logprob is not None
    assert base.generate is not None
    assert base.bench is None
    assert base.sinks is not None
    assert base.heads is not None
    assert base.logprob.pred == max(base.logprob.logprobs, key=base.logprob.logprobs.get)
    assert typed[(ITEMS[0].id, "var")].var is not None
    assert typed[(ITEMS[0].id, "ablate-sinks")].blocked == base.sinks
    assert [r.to_dict() for r in run.item_records()] == run.records


def _bench_record(bench: BenchItem, logprobs, text, condition="baseline"):
    """A benchmark record the way the runner builds it (item fields, then the benchmark's)."""
    item = bench.item
    return {
        "id": item.id,
        "index": 0,
        "condition": condition,
        "image": item.image_name,
        "text": item.text,
        "label": item.label,
        **bench_runs.record_fields(bench, logprobs, text),
    }


@pytest.mark.parametrize(
    ("bench", "logprobs", "text"),
    [
        # closed (yes / no): both scorings, with their benchmark scores
        (
            BenchItem(
                Item("m1", Path("a.png"), "a.png", "Is it red?", "yes"),
                "mme",
                "a.png",
                answer="yes",
                category="color",
            ),
            {"yes": -0.2, "no": -1.9},
            "No, it is blue.",
        ),
        # open (VQA): generation only
        (
            BenchItem(
                Item("v1", Path("b.png"), "b.png", "What is it?", None),
                "vqa",
                "v1",
                answer="cat",
                human_answers=("cat",) * 10,
            ),
            None,
            "a cat",
        ),
    ],
)
def test_benchmark_records_round_trip(bench, logprobs, text):
    data = _bench_record(bench, logprobs, text)
    record = ItemRecord.from_dict(data)
    assert record.bench is not None
    assert record.bench.benchmark == bench.benchmark
    assert json.dumps(record.to_dict()) == json.dumps(data)
    assert (record.logprob is None) == (logprobs is None)
    assert record.generate is not None
    assert record.generate.score == data["score_generate"]


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.pop("condition"), r"lacks \['condition'\]"),
        (lambda d: d.update(extra=1), r"unknown field\(s\) \['extra'\]"),
        (lambda d: d.pop("pred_logprob"), "come together"),
        (lambda d: d.update(score_logprob=1.0), "unknown field"),  # a benchmark field, no benchmark
    ],
)
def test_schema_breaks_are_refused_with_the_key_named(run, edit, match):
    data = dict(run.records[0])
    edit(data)
    with pytest.raises(EvalError, match=match):
        ItemRecord.from_dict(data)


def test_a_broken_record_in_a_part_is_refused_with_its_place(run, tmp_path):
    copy = tmp_path / "run"
    copy.mkdir()
    (copy / "manifest.json").write_text((run.run_dir / "manifest.json").read_text())
    data = dict(run.records[1])
    del data["label"]
    (copy / "part-0.jsonl").write_text(json.dumps(run.records[0]) + "\n" + json.dumps(data) + "\n")
    with pytest.raises(EvalError, match=r"part-0\.jsonl record 2: .*lacks \['label'\]"):
        load_records(copy)


# ------------------------------------------------------------------------------- run folder


def test_merge_is_idempotent_and_from_parts_alone(run, tmp_path):
    before = {name: (run.run_dir / name).read_bytes() for name in ("records.jsonl", "summary.json")}
    (run.run_dir / "records.jsonl").unlink()
    again = merge_run(run.run_dir)
    assert again.records == run.records
    for name, data in before.items():
        assert (run.run_dir / name).read_bytes() == data
    # No temp file of the atomic writes is left behind.
    assert sorted(p.name for p in run.run_dir.iterdir() if p.name.startswith(".")) == []


def test_old_formats_read_and_newer_ones_are_refused(run, tmp_path):
    manifest = json.loads((run.run_dir / "manifest.json").read_text())
    assert manifest["config"]["format"] == 1  # a POPE run keeps format 1
    folder = tmp_path / "old"
    folder.mkdir()
    del manifest["config"]["format"]  # a manifest from before formats were written
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert read_manifest(folder)["config"] == manifest["config"]
    manifest["config"]["format"] = FORMAT_VERSION + 1
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EvalError, match="newer than this vsink reads"):
        read_manifest(folder)
    with pytest.raises(EvalError, match="not an evaluation run"):
        read_manifest(tmp_path)


def test_expected_items_and_config_diff():
    manifest = {"config": {"n_dataset_items": 10}, "sessions": [{"limit": 3}, {"limit": 6}]}
    assert expected_items(manifest, 2) == 6
    manifest["sessions"].append({"limit": None})
    assert expected_items(manifest, 2) == 10
    assert expected_items({"config": {}}, 4) == 4
    old = {"a": 1, "c": [{"p": 0.6}, {"p": 1}]}
    new = {"a": 1, "b": 2, "c": [{"p": 0.3}, {"p": 1}]}
    assert _config_diff(old, new) == ["b: null -> 2", "c[0].p: 0.6 -> 0.3"]
