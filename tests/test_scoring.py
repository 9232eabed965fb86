"""Benchmark scorers on hand-made cases, against scores computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.scoring import (
    Unit,
    cv_bench_scores,
    exact_match,
    group_units,
    mmbench_circular,
    mme_scores,
    mmvp_scores,
    normalize_vqa,
    paired_bootstrap,
    parse_choice,
    parse_yes_no_prefix,
    vqa_accuracy,
)
from analysis.scoring.metrics import accuracy


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Two dogs.", "2 dogs"),
        ("The cat", "cat"),
        ("an apple", "apple"),
        ("black-and-white", "black and white"),  # a mark inside a word separates
        ("yes, it is", "yes it is"),  # a mark next to a space vanishes
        ("1,000", "1000"),  # thousands separator
        ("2.5", "2.5"),  # decimal point kept
        ("Dont know", "don't know"),
        ("None", "0"),
        ("  red\n", "red"),
    ],
)
def test_vqa_normalisation(raw, normalised):
    assert normalize_vqa(raw) == normalised


def test_vqa_accuracy_by_hand():
    # 3 of 10 humans said "2": leaving out one of them leaves 2 matches (2/3), leaving
    # out one of the 7 others leaves 3 (capped at 1): (3 * 2/3 + 7 * 1) / 10 = 0.9.
    humans = ["2"] * 3 + ["3"] * 7
    assert vqa_accuracy("two", humans) == pytest.approx(0.9)
    # 2 of 10: (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    assert vqa_accuracy("2", ["2"] * 2 + ["3"] * 8) == pytest.approx(0.6)
    assert vqa_accuracy("4", humans) == 0.0
    assert vqa_accuracy("Yes.", ["yes"] * 10) == 1.0
    # 1 of 10: (1 * 0 + 9 * 1/3) / 10 = 0.3
    assert vqa_accuracy("cat", ["cat"] + ["dog"] * 9) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="at least one"):
        vqa_accuracy("x", [])


def test_vqa_accuracy_against_naive_count():
    """The leave-one-out mean equals a direct count over all 10-choose-9 subsets."""
    from itertools import combinations

    rng = np.random.default_rng(0)
    vocab = ["red", "blue", "green"]
    for _ in range(20):
        humans = [vocab[i] for i in rng.integers(0, 3, size=10)]
        pred = vocab[int(rng.integers(0, 3))]
        naive = np.mean([min(1, sum(h == pred for h in c) / 3) for c in combinations(humans, 9)])
        assert vqa_accuracy(pred, humans) == pytest.approx(naive)


def test_gqa_exact_match():
    assert exact_match("The table.", "table") == 1.0
    assert exact_match("tables", "table") == 0.0


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("Yes", "yes"), ("no.", "no"), ("Yes, there is.", "yes"), ("No, it is not", "no")],
)
def test_mme_yes_no(text, parsed):
    assert parse_yes_no_prefix(text) == parsed


def test_mme_yes_no_other():
    assert parse_yes_no_prefix("I cannot tell") is None
    assert parse_yes_no_prefix("There is no dog") is None  # only the first 4 characters count


OPTIONS = {"A": "red", "B": "blue", "C": "green", "D": "yellow"}


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("B", "B"),
        ("(C) green", "C"),
        ("D. yellow", "D"),
        ("The answer is B.", "B"),
        ("It is blue", "B"),
        ("green", "C"),
        ("A", "A"),
    ],
)
def test_choice_letters(text, letter):
    assert parse_choice(text, OPTIONS) == letter


def test_choice_ambiguous_or_missing():
    assert parse_choice("either B or C", OPTIONS) is None
    assert parse_choice("purple", OPTIONS) is None
    assert parse_choice("red or blue", OPTIONS) is None


def test_mme_scores_by_hand():
    # existence: 2 images; image 1 both right, image 2 one right -> acc 75, acc+ 50.
    # count: 1 image, both wrong -> 0 + 0. OCR: 1 image both right -> 100 + 100.
    # code_reasoning: 1 image, one right -> 50 + 0.
    keys = ["e1", "e1", "e2", "e2", "c1", "c1", "o1", "o1", "r1", "r1"]
    groups = ["existence"] * 4 + ["count"] * 2 + ["OCR"] * 2 + ["code_reasoning"] * 2
    scores = [1, 1, 1, 0, 0, 0, 1, 1, 0, 1]
    units = group_units(keys, scores, groups)
    assert len(units) == 5
    out = mme_scores(units)
    assert out["existence/accuracy"] == pytest.approx(75.0)
    assert out["existence/accuracy_plus"] == pytest.approx(50.0)
    assert out["existence/score"] == pytest.approx(125.0)
    assert out["count/score"] == 0.0
    assert out["perception"] == pytest.approx(125.0 + 0.0 + 200.0)
    assert out["cognition"] == pytest.approx(50.0)


def test_group_units_refuse_mixed_groups():
    with pytest.raises(ValueError, match="different groups"):
        group_units(["a", "a"], [1, 1], ["count", "OCR"])


def test_mmbench_circular_by_hand():
    # group 1: 4 rotations all right; group 2: 3 of 4; group 3: all wrong.
    keys = ["1"] * 4 + ["2"] * 4 + ["3"] * 4
    scores = [1, 1, 1, 1, 1, 1, 0, 1, 0, 0, 0, 0]
    out = mmbench_circular(group_units(keys, scores))
    assert out["circular_accuracy"] == pytest.approx(100 / 3)
    assert out["accuracy"] == pytest.approx(700 / 12)


def test_mmvp_pairs_by_hand():
    keys = ["p1", "p1", "p2", "p2", "p3", "p3"]
    scores = [1, 1, 1, 0, 0, 1]
    out = mmvp_scores(group_units(keys, scores))
    assert out["accuracy"] == pytest.approx(400 / 6)
    assert out["pair_accuracy"] == pytest.approx(100 / 3)


def test_cv_bench_overall_by_hand():
    units = (
        [Unit((1.0,), "ADE20K")] * 3
        + [Unit((0.0,), "ADE20K")]  # ADE 75
        + [Unit((1.0,), "COCO"), Unit((0.0,), "COCO")]  # COCO 50
        + [Unit((1.0,), "Omni3D")] * 9
        + [Unit((0.0,), "Omni3D")]  # Omni3D 90
    )
    out = cv_bench_scores(units)
    assert out["overall"] == pytest.approx(((75 + 50) / 2 + 90) / 2)


def test_paired_bootstrap_point_values_and_difference():
    rng = np.random.default_rng(1)
    base = [Unit((float(v),)) for v in rng.integers(0, 2, 200)]
    better = [Unit((1.0,)) if i % 4 == 0 else u for i, u in enumerate(base)]
    out = paired_bootstrap(accuracy, base, {"var": better}, n_boot=300, seed=0)
    b, v = out["baseline"]["accuracy"], out["var"]["accuracy"]
    assert b["value"] == pytest.approx(accuracy(base)["accuracy"])
    assert v["value"] == pytest.approx(accuracy(better)["accuracy"])
    diff = out["var - baseline"]["accuracy"]
    assert diff["value"] == pytest.approx(v["value"] - b["value"])
    # Paired: every resample moves both together, so the difference is never negative.
    assert diff["lo"] >= 0.0
    assert b["lo"] <= b["value"] <= b["hi"]


def test_paired_bootstrap_matches_naive_loop():
    """Against an independent loop over the same draws (numpy's generator, same seed)."""
    units = [Unit((float(i % 3 == 0),)) for i in range(50)]
    out = paired_bootstrap(accuracy, units, {}, n_boot=200, seed=7)
    draws = np.random.default_rng(7).integers(0, 50, size=(200, 50))
    values = np.array([np.mean([units[i].correct[0] for i in row]) * 100 for row in draws])
    lo, hi = np.quantile(values, [0.025, 0.975])
    assert out["baseline"]["accuracy"]["lo"] == pytest.approx(lo)
    assert out["baseline"]["accuracy"]["hi"] == pytest.approx(hi)


def test_paired_bootstrap_refuses_misaligned_units():
    with pytest.raises(ValueError, match="units"):
        paired_bootstrap(accuracy, [Unit((1.0,))], {"x": []}, n_boot=10, seed=0)


def test_chair_mentions_two_word_phrases_and_plurals():
    from analysis.scoring.chair import caption_objects

    caption = "Two men eat hot dogs next to a dining table with wine glasses and dogs."
    assert caption_objects(caption) == ["person", "hot dog", "dining table", "wine glass", "dog"]
    assert caption_objects("A teddy bear sits on the sofa.") == ["teddy bear", "couch"]
    assert caption_objects("Buses and benches.") == ["bus", "bench"]
    assert caption_objects("A sunny day.") == []


def test_chair_scores_by_hand(tmp_path):
    import json

    from analysis.scoring.chair import chair_caption, chair_scores, coco_objects

    annotations = {
        "categories": [
            {"id": 1, "name": "person"},
            {"id": 18, "name": "dog"},
            {"id": 3, "name": "car"},
        ],
        "images": [{"id": 10, "file_name": "a.jpg"}, {"id": 11, "file_name": "b.jpg"}],
        "annotations": [
            {"image_id": 10, "category_id": 1},
            {"image_id": 10, "category_id": 18},
            {"image_id": 11, "category_id": 3},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(annotations))
    truth = coco_objects(path)
    assert truth == {"a.jpg": {"person", "dog"}, "b.jpg": {"car"}}
    # a.jpg: person, dog right, frisbee hallucinated. b.jpg: car right.
    captions = [
        chair_caption("A woman throws a frisbee to her dog.", truth["a.jpg"]),
        chair_caption("A red car parked.", truth["b.jpg"]),
    ]
    assert captions[0].hallucinated == ("frisbee",)
    out = chair_scores(captions)
    assert out["chair_i"] == pytest.approx(100 * 1 / 4)  # 1 of 4 mentions
    assert out["chair_s"] == pytest.approx(50.0)  # 1 of 2 captions
    assert out["recall"] == pytest.approx(100.0)  # 3 of 3 annotated objects


def test_chair_refuses_a_broken_annotation_file(tmp_path):
    from analysis.datasets import DatasetError
    from analysis.scoring.chair import coco_objects

    bad = tmp_path / "bad.json"
    bad.write_text('{"images": []}')
    with pytest.raises(DatasetError, match="missing COCO field"):
        coco_objects(bad)
    with pytest.raises(DatasetError, match="not found"):
        coco_objects(tmp_path / "none.json")
