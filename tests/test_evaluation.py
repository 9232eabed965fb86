"""Evaluation runner: metrics against naive references, and runs on the demo model.

The demo model answers every bundled question correctly, plants known sinks
and image-centric heads (ground_truth.json), so run outputs are checked
against real numbers.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy.stats import binomtest

from analysis.datasets import Item, read_pope
from analysis.evaluation import (
    EvalError,
    bootstrap_ci,
    bootstrap_indices,
    confusion,
    evaluate,
    load_item_records,
    mcnemar_exact,
    merge_run,
    parse_conditions,
    parse_yes_no,
    pope_metrics,
    predict_from_text,
    read_part,
    repair_part,
    summarize,
)
from analysis.loading import DEMO_MODEL_DIR
from analysis.var import VarConfig

DEMO = DEMO_MODEL_DIR.parent
TRUTH = json.loads((DEMO / "ground_truth.json").read_text())
ITEMS = read_pope(DEMO / "questions.jsonl", DEMO / "images")
CONDITIONS = "baseline,var,ablate-sinks,ablate-random"
RUN_ARGS = {
    "conditions": CONDITIONS,
    "limit": 6,
    "max_new_tokens": 2,
    "n_calibration": 2,
    "n_boot": 200,
    "show_progress": False,
}

# ============================================================================ pure metrics


def _naive_metrics(pred, label):
    tp = sum(1 for p, y in zip(pred, label, strict=True) if p and y)
    fp = sum(1 for p, y in zip(pred, label, strict=True) if p and not y)
    tn = sum(1 for p, y in zip(pred, label, strict=True) if not p and not y)
    fn = sum(1 for p, y in zip(pred, label, strict=True) if not p and y)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / len(pred),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / len(pred),
    }


def _naive_quantile(values, q):
    """Linear interpolation between order statistics (numpy's default method)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def test_pope_metrics_by_hand():
    pred = np.array([1, 1, 0, 0, 1, 0, 1, 0], dtype=bool)
    label = np.array([1, 0, 0, 1, 1, 0, 0, 0], dtype=bool)
    # tp: items 0, 4; fp: 1, 6; tn: 2, 5, 7; fn: 3.
    assert {k: int(v) for k, v in confusion(pred, label).items()} == {
        "tp": 2,
        "fp": 2,
        "tn": 3,
        "fn": 1,
    }
    metrics = {k: float(v) for k, v in pope_metrics(pred, label).items()}
    assert metrics == pytest.approx(
        {
            "accuracy": 5 / 8,
            "precision": 2 / 4,
            "recall": 2 / 3,
            "f1": 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3),
            "yes_ratio": 4 / 8,
        }
    )
    never_yes = pope_metrics(np.zeros(4, dtype=bool), np.array([1, 0, 0, 0], dtype=bool))
    assert float(never_yes["precision"]) == 0.0  # no predicted positive: 0, not NaN
    assert float(never_yes["f1"]) == 0.0
    assert float(never_yes["accuracy"]) == 0.75


def test_vectorised_bootstrap_equals_naive_loop():
    rng = np.random.default_rng(7)
    pred, label = rng.random(37) < 0.6, rng.random(37) < 0.5
    index = bootstrap_indices(37, 60, seed=3)
    vectorised = pope_metrics(pred[index], label[index])
    naive = [_naive_metrics(pred[row].tolist(), label[row].tolist()) for row in index]
    for name in vectorised:
        assert vectorised[name].tolist() == pytest.approx([n[name] for n in naive])
    ci = bootstrap_ci(pope_metrics, [pred, label], n_boot=60, seed=3, level=0.9)
    point = _naive_metrics(pred.tolist(), label.tolist())
    for name, entry in ci.items():
        column = [n[name] for n in naive]
        assert entry["value"] == pytest.approx(point[name])
        assert entry["lo"] == pytest.approx(_naive_quantile(column, 0.05))
        assert entry["hi"] == pytest.approx(_naive_quantile(column, 0.95))


def test_bootstrap_is_deterministic_and_contains_the_estimate():
    rng = np.random.default_rng(0)
    for trial in range(5):
        pred, label = rng.random(50) < 0.5, rng.random(50) < 0.5
        first = bootstrap_ci(pope_metrics, [pred, label], n_boot=300, seed=trial)
        assert first == bootstrap_ci(pope_metrics, [pred, label], n_boot=300, seed=trial)
        for entry in first.values():
            assert entry["lo"] <= entry["value"] <= entry["hi"]
            assert entry["hi"] - entry["lo"] > 0
    assert not np.array_equal(bootstrap_indices(50, 300, 4), bootstrap_indices(50, 300, 5))
    other = bootstrap_ci(pope_metrics, [pred, label], n_boot=300, seed=99)
    assert other != first  # another seed, other resamples


def test_mcnemar_exact_against_binomtest():
    for b, c, same in [(0, 0, 5), (3, 0, 2), (2, 9, 10), (7, 7, 0), (1, 12, 4), (20, 31, 9)]:
        base = np.array([True] * b + [False] * c + [True] * same)
        other = np.array([False] * b + [True] * c + [True] * same)
        result = mcnemar_exact(base, other)
        assert (result["b"], result["c"]) == (b, c)
        expected = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue
        assert result["p"] == pytest.approx(expected, rel=1e-12)


def test_pope_answer_parsing():
    assert parse_yes_no("Yes, there is a red object.") == "yes"
    assert parse_yes_no("No, there is no red object.") == "no"
    assert parse_yes_no("There is not a cat in the image") == "no"
    assert parse_yes_no("Yes. No.") == "yes"  # only the first sentence counts
    assert parse_yes_no("no") == "no"
    assert parse_yes_no("Nope") == "yes"  # the official rule, kept verbatim
    assert predict_from_text("no", ["yes", "no"]) == "no"
    assert predict_from_text("b) blue", ["A", "B"]) == "B"
    assert predict_from_text("C", ["A", "B"]) is None


def test_condition_grammar():
    names = [c.name for c in parse_conditions(CONDITIONS)]
    assert names == ["baseline", "var", "ablate-sinks", "ablate-random"]
    conds = parse_conditions("var:p=0.6,var:p=0.3,rho=0.8;ablate-random:draws=3")
    assert [c.name for c in conds] == [
        "var",
        "var:p=0.3,rho=0.8",
        "ablate-random[0]",
        "ablate-random[1]",
        "ablate-random[2]",
    ]
    assert conds[1].var == VarConfig(p=0.3, rho=0.8)
    assert [c.draw for c in conds[2:]] == [0, 1, 2]
    (post,) = parse_conditions(["ablate-sinks:mode=post,layers=2-4"])
    assert (post.name, post.mode, post.layers) == (
        "ablate-sinks:mode=post,layers=2+3+4",
        "post",
        (2, 3, 4),
    )
    assert parse_conditions("var", rho=0.8, tau=10)[0].var == VarConfig(rho=0.8, tau=10)
    for bad, message in [
        ("bogus", "Unknown condition"),
        ("var:q=1", "unknown option"),
        ("baseline,baseline", "listed twice"),
        ("ablate-positions", "knock-out target"),
        ("var:p=2", "must be in"),
        ("ablate-random:draws=0", "draws must be >= 1"),
        ("p=0.3", "no condition before it"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_conditions(bad)


def test_parts_tolerate_a_truncated_last_line(tmp_path):
    part = tmp_path / "part-0.jsonl"
    part.write_text('{"id": "1", "condition": "baseline"}\n{"id": "2", "condi')
    records, end = read_part(part)
    assert records == [{"id": "1", "condition": "baseline"}]
    assert end == len('{"id": "1", "condition": "baseline"}\n')
    assert repair_part(part) == len('{"id": "2", "condi')
    assert part.read_text().endswith("}\n")
    assert repair_part(part) == 0
    part.write_text('{"id": "1"}\nnot json\n{"id": "2"}\n')
    with pytest.raises(EvalError, match=r"part-0\.jsonl:2 is not a JSON record"):
        read_part(part)


# ============================================================================ demo model runs


@pytest.fixture(scope="module")
def demo(demo_model):
    return demo_model


@pytest.fixture(scope="module")
def run8(demo, tmp_path_factory):
    """6 items x 4 conditions in batches of 4 and 2 (padded), dims discovered on 2 images."""
    out = tmp_path_factory.mktemp("eval") / "run"
    return evaluate(demo, ITEMS, out=out, batch_size=4, **RUN_ARGS)


def _by_key(records):
    return {(r["id"], r["condition"]): r for r in records}


def test_run_reports_ground_truth_numbers(run8):
    summary = run8.summary()
    manifest = run8.config
    assert manifest["dims"]["dims"] == sorted(TRUTH["sink_dims"])
    assert manifest["dims"]["source"] == "discovered"
    assert len(manifest["dims"]["calibration"]) == 2
    assert summary["n_items"] == 6
    assert summary["n_records"] == 24
    assert summary["complete"]
    labels = [item.label for item in ITEMS[:6]]
    for name in ("baseline", "var", "ablate-sinks", "ablate-random"):
        for scoring in ("logprob", "generate"):
            entry = summary["conditions"][name][scoring]
            # The demo model answers every question right, with or without sinks.
            for metric in ("accuracy", "precision", "recall", "f1"):
                assert entry[metric] == {"value": 1.0, "lo": 1.0, "hi": 1.0}
            assert entry["yes_ratio"]["value"] == labels.count("yes") / 6
            if name != "baseline":
                assert entry["vs_baseline"]["mcnemar"] == {"b": 0, "c": 0, "p": 1.0}
                assert entry["vs_baseline"]["delta_accuracy"]["value"] == 0.0
    # Per-image sink counts equal the planted patches from layer 2 on.
    for image, counts in summary["sinks"]["per_image"].items():
        planted = len(TRUTH["images"][image]["sink_patches"])
        assert counts == [0, 0] + [planted] * (TRUTH["num_layers"] - 2), image
    heads = {tuple(h) for h in summary["heads"]["image_centric"]}
    assert {tuple(h) for h in TRUTH["image_centric_heads"]} <= heads
    var = summary["conditions"]["var"]["var"]
    assert var["noop_items"] == 0
    assert var["rows_changed_mean"] > 0
    assert var["mass_moved_mean"] > 0
    assert abs(summary["conditions"]["ablate-sinks"]["delta_margin_label"]["value"]) < 0.5


def test_records_trace_every_number(run8):
    records = run8.records
    assert len({(r["id"], r["condition"]) for r in records}) == len(records) == 24
    by_key = _by_key(records)
    for record in records:
        lp = record["logprobs"]
        assert record["pred_logprob"] == max(lp, key=lp.get)
        assert record["correct_logprob"] == (record["pred_logprob"] == record["label"])
        assert record["pred_generate"] == parse_yes_no(record["generated"])
        if record["condition"].startswith("ablate"):
            sinks = by_key[(record["id"], "baseline")]["sinks"]
            assert record["blocked"] == sinks  # random blocks as many tokens as there are sinks
    # The summary is a function of the records alone.
    from_file = [json.loads(line) for line in (run8.run_dir / "records.jsonl").open()]
    assert from_file == records
    assert summarize(from_file, run8.config, n_boot=200) == run8.summary()
    # Typed records give the same summary as their JSON objects.
    typed = load_item_records(run8.run_dir)
    assert [r.to_dict() for r in typed] == records
    assert summarize(typed, run8.config, n_boot=200) == run8.summary()
    assert json.loads((run8.run_dir / "summary.json").read_text()) == run8.summary()
    manifest = json.loads((run8.run_dir / "manifest.json").read_text())
    assert manifest["config"]["seed"] == 0
    assert "transformers" in manifest["provenance"]["versions"]
    assert "git_commit" in manifest["provenance"]
    assert manifest["model"]["name_or_path"] == str(DEMO_MODEL_DIR)


def _assert_records_close(left, right):
    assert left.keys() == right.keys()
    for key in left:
        a, b = left[key], right[key]
        for field in ("pred_logprob", "generated", "sinks", "blocked"):
            assert a.get(field) == b.get(field), (key, field)
        for answer, value in a["logprobs"].items():
            assert value == pytest.approx(b["logprobs"][answer], abs=1e-5), key
        if "heads" in a:
            for stat, grid in a["heads"].items():
                assert np.allclose(grid, b["heads"][stat], atol=2e-4), (key, stat)
        if "var" in a:
            assert a["var"]["prefill_rows_changed"] == b["var"]["prefill_rows_changed"]
            assert a["var"]["prefill_mass_moved"] == pytest.approx(
                b["var"]["prefill_mass_moved"], rel=1e-4
            )


def test_summary_equals_a_naive_recount_of_the_records(run8):
    """Each condition's point estimates against a by-hand count over the JSON records."""
    summary = run8.summary()
    rows = {}
    for r in run8.records:
        rows.setdefault(r["condition"], {})[r["id"]] = r
    base = rows["baseline"]
    for name, entry in summary["conditions"].items():
        mine = rows[name]
        for scoring in ("logprob", "generate"):
            pred = [r[f"pred_{scoring}"] for r in mine.values()]
            label = [r["label"] for r in mine.values()]
            hits = sum(p == t for p, t in zip(pred, label, strict=True))
            scored = entry[scoring]
            assert scored["n"] == len(mine) == 6
            assert scored["accuracy"]["value"] == pytest.approx(hits / len(mine))
            assert scored["yes_ratio"]["value"] == pytest.approx(pred.count("yes") / len(pred))
            assert scored["counts"]["tp"] == sum(
                p == t == "yes" for p, t in zip(pred, label, strict=True)
            )
            if name == "baseline":
                assert "vs_baseline" not in scored
                continue
            versus = scored["vs_baseline"]
            assert versus["n_pairs"] == 6
            assert versus["changed"] == sum(
                r[f"pred_{scoring}"] != base[i][f"pred_{scoring}"] for i, r in mine.items()
            )
            delta = sum(
                int(r[f"correct_{scoring}"]) - int(base[i][f"correct_{scoring}"])
                for i, r in mine.items()
            )
            assert versus["delta_accuracy"]["value"] == pytest.approx(delta / 6)
        if name == "baseline":
            assert "delta_logprob_label" not in entry
            continue
        shifts = [
            r["logprobs"][r["label"]] - base[i]["logprobs"][r["label"]] for i, r in mine.items()
        ]
        margins = [
            (
                r["logprobs"][r["label"]]
                - max(v for k, v in r["logprobs"].items() if k != r["label"])
            )
            - (
                base[i]["logprobs"][r["label"]]
                - max(v for k, v in base[i]["logprobs"].items() if k != r["label"])
            )
            for i, r in mine.items()
        ]
        assert entry["delta_logprob_label"]["value"] == pytest.approx(sum(shifts) / 6)
        assert entry["delta_margin_label"]["value"] == pytest.approx(sum(margins) / 6)
        assert entry["delta_logprob_label"]["n"] == 6


def test_batch_size_does_not_change_results(demo, run8, tmp_path):
    single = evaluate(
        demo,
        ITEMS,
        out=tmp_path / "single",
        conditions="baseline,var,ablate-random",
        limit=2,  # items 0 and 1 were left-padded in run8's first batch
        max_new_tokens=2,
        batch_size=1,
        dims=TRUTH["sink_dims"],
        n_boot=200,
        show_progress=False,
    )
    padded = {k: v for k, v in _by_key(run8.records).items() if k in _by_key(single.records)}
    assert len(padded) == 6
    _assert_records_close(_by_key(single.records), padded)


def _assert_summaries_close(left, right, path="summary"):
    if isinstance(left, dict):
        assert left.keys() == right.keys(), path
        for key in left:
            _assert_summaries_close(left[key], right[key], f"{path}.{key}")
    elif isinstance(left, list):
        assert len(left) == len(right), path
        for i, (a, b) in enumerate(zip(left, right, strict=True)):
            _assert_summaries_close(a, b, f"{path}[{i}]")
    elif isinstance(left, float):
        assert left == pytest.approx(right, rel=1e-5, abs=1e-6), path
    else:
        assert left == right, path


def test_resume_after_a_kill(demo, run8, tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(run8.run_dir, run)
    for derived in ("records.jsonl", "summary.json"):
        (run / derived).unlink()
    lines = (run / "part-0.jsonl").read_text().splitlines(keepends=True)
    # Lines: batch (0-3) x 4 conditions, then items 4, 5 for each condition. Killed
    # while writing line 22 (item 5, ablate-sinks): 21 records done, a half-written one.
    assert json.loads(lines[21])["condition"] == "ablate-sinks"
    (run / "part-0.jsonl").write_text("".join(lines[:21]) + lines[21][:37])
    resumed = evaluate(demo, ITEMS, out=run, batch_size=4, **RUN_ARGS)
    keys = [(r["id"], r["condition"]) for r in read_part(run / "part-0.jsonl")[0]]
    assert len(keys) == len(set(keys)) == 24  # nothing lost, nothing twice
    assert len(resumed.records) == 24
    _assert_summaries_close(resumed.summary(), run8.summary())
    assert len(resumed.config["sessions"]) == 2
    # A rerun with everything done computes nothing and changes nothing.
    again = evaluate(demo, ITEMS, out=run, batch_size=2, **RUN_ARGS)
    assert again.summary() == resumed.summary()
    assert merge_run(run).summary() == resumed.summary()


def test_a_different_configuration_is_refused(demo, run8, tmp_path):
    with pytest.raises(EvalError, match=r"different configuration.*conditions"):
        evaluate(demo, ITEMS, out=run8.run_dir, **{**RUN_ARGS, "conditions": "baseline"})
    with pytest.raises(EvalError, match=r"different configuration.*max_new_tokens"):
        evaluate(demo, ITEMS, out=run8.run_dir, **{**RUN_ARGS, "max_new_tokens": 3})
    # The message names the differing leaf, not a truncated dump of the whole list.
    changed = CONDITIONS.replace("var", "var:p=0.3", 1)
    with pytest.raises(EvalError, match=r"conditions\[\d\]\.var\.p: 0\.6 -> 0\.3"):
        evaluate(demo, ITEMS, out=run8.run_dir, **{**RUN_ARGS, "conditions": changed})
    edited = list(ITEMS)
    edited[0] = Item(ITEMS[0].id, ITEMS[0].image, ITEMS[0].image_name, "Edited?", "yes")
    with pytest.raises(EvalError, match="dataset_fingerprint"):
        evaluate(demo, edited, out=run8.run_dir, **RUN_ARGS)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(EvalError, match="not empty and has no manifest"):
        evaluate(demo, ITEMS, out=tmp_path / "busy", **RUN_ARGS)
    with pytest.raises(ValueError, match="not among the answers"):
        evaluate(demo, ITEMS, out=tmp_path / "x", answers=["maybe", "no"], **RUN_ARGS)


@pytest.mark.parametrize(
    ("conditions", "dims", "match"),
    [
        ("baseline,ablate-sinks:layers=9", None, "out of range"),
        ("baseline,var:layers=2-9", None, "out of range"),
        ("baseline", [337, 5000], "d_model"),
    ],
)
def test_bad_layers_and_dims_are_refused_before_any_work(demo, tmp_path, conditions, dims, match):
    out = tmp_path / "run"
    with pytest.raises(EvalError, match=match):
        evaluate(demo, ITEMS[:1], out=out, conditions=conditions, dims=dims, show_progress=False)
    assert not out.exists()
