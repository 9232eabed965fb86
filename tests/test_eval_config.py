"""EvalConfig (defaults from analysis.config, validation, round trip, evaluate() with a
config or keywords) and the per-process cache of provenance's git commit."""

from __future__ import annotations

import dataclasses
import inspect
import json
import shutil
import subprocess
import typing

import pytest

from analysis import config, results
from analysis.checks import ConfigError
from analysis.config import EvalConfig
from analysis.datasets import read_pope
from analysis.errors import UserInputError
from analysis.eval.run import EvalSettings, eval_config
from analysis.evaluation import evaluate, evaluate_config, parse_conditions
from analysis.loading import DEMO_MODEL_DIR

DEMO = DEMO_MODEL_DIR.parent


def test_defaults_are_the_config_constants():
    c = EvalConfig()
    assert c.answers == config.ANSWERS
    assert c.max_new_tokens == config.EVAL_MAX_NEW_TOKENS
    assert c.batch_size == config.BATCH_SIZE
    assert (c.tau, c.rho, c.min_image_attention) == (
        config.TAU,
        config.RHO,
        config.MIN_IMAGE_ATTENTION,
    )
    assert (c.n_boot, c.level, c.seed) == (config.N_BOOT, config.CI_LEVEL, config.SEED)
    assert c.n_calibration == config.N_CALIBRATION
    assert c.var_preset == config.VAR_PRESET


def test_round_trip_through_json():
    c = EvalConfig(
        conditions=("baseline", "var:p=0.3", "ablate-random:draws=2"),
        answers=("yes", "no"),
        max_new_tokens=0,
        batch_size=4,
        limit=10,
        dims=(3, 7),
        tau=15.0,
        rho=0.8,
        seed=5,
        collect_stats=False,
        n_boot=300,
        level=0.9,
        var_preset="official",
    )
    again = EvalConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert again == c
    assert again.dims == (3, 7)
    assert again.conditions == c.conditions
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.tau = 1.0  # type: ignore[misc]


def test_lists_and_strings_are_normalised():
    c = EvalConfig(conditions="baseline", answers=[" yes", "no "], dims=[4])  # type: ignore[arg-type]
    assert c.conditions == ("baseline",)
    assert c.answers == ("yes", "no")
    assert c.dims == (4,)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"tau": float("nan")}, "tau must be"),
        ({"batch_size": 0}, "batch_size must be"),
        ({"level": 1.0}, "level must be"),
        ({"seed": -1}, "seed must be"),
        ({"limit": 0}, "limit must be"),
        ({"n_boot": 2.5}, "n_boot must be"),
        ({"max_new_tokens": True}, "max_new_tokens must be"),
        ({"dims": (1, -2)}, "dims entry must be"),
        ({"dims": "12"}, "dims must be a sequence"),
        ({"answers": ()}, "answers must be non-empty"),
        ({"answers": ("yes", "yes")}, "distinct"),
        ({"conditions": ("baseline", "")}, "conditions must be non-empty"),
        ({"conditions": ("bogus",)}, "Unknown condition 'bogus'"),
        ({"conditions": ("var:p=2",)}, "p must be"),
        ({"collect_stats": 1}, "collect_stats must be True or False"),
        ({"var_preset": "mine"}, "var_preset must be one of"),
    ],
)
def test_bad_settings_are_refused_on_construction(settings, match):
    with pytest.raises(ValueError, match=match):
        EvalConfig(**settings)


def test_unknown_keys_are_refused():
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['out'\]"):
        EvalConfig.from_dict({"out": "x"})


def test_evaluate_with_a_config_equals_evaluate_with_keywords(demo_model, tmp_path):
    items = read_pope(DEMO / "questions.jsonl", DEMO / "images")
    settings = EvalConfig(
        conditions=("baseline", "ablate-sinks"),
        limit=2,
        max_new_tokens=1,
        n_calibration=1,
        n_boot=20,
    )
    typed = evaluate(demo_model, items, settings, out=tmp_path / "a", show_progress=False)
    plain = evaluate(
        demo_model,
        items,
        out=tmp_path / "b",
        conditions="baseline,ablate-sinks",
        limit=2,
        max_new_tokens=1,
        n_calibration=1,
        n_boot=20,
        show_progress=False,
    )
    assert typed.records == plain.records
    assert len(typed.records) == 4
    assert typed.summary() == plain.summary()
    assert typed.config["config"] == plain.config["config"]
    assert typed.config["config"]["max_new_tokens"] == 1
    assert typed.config["summary_settings"] == {"n_boot": 20, "level": config.CI_LEVEL}
    # The earlier entry point is the same function.
    assert evaluate_config is evaluate
    # A keyword that agrees with the config is accepted; the run resumes (nothing to do).
    again = evaluate(demo_model, items, settings, out=tmp_path / "a", limit=2, show_progress=False)
    assert again.summary() == typed.summary()
    # Spec objects stand for their canonical names: the run folder resumes unchanged.
    specs = parse_conditions("baseline,ablate-sinks")
    shutil.copytree(tmp_path / "a", tmp_path / "c")
    by_spec = evaluate(
        demo_model,
        items,
        out=tmp_path / "c",
        conditions=specs,
        limit=2,
        max_new_tokens=1,
        n_calibration=1,
        n_boot=20,
        show_progress=False,
    )
    assert by_spec.records == typed.records
    assert len(by_spec.config["sessions"]) == 3  # a, its resume, and this one


def test_keywords_build_the_config_and_must_agree_with_a_given_one():
    assert eval_config() == EvalConfig()
    assert eval_config(tau=15, answers=["yes", "no"]) == EvalConfig(tau=15.0)
    given = EvalConfig(n_boot=50, seed=3)
    assert eval_config(given) is given
    assert eval_config(given, n_boot=50) == given
    with pytest.raises(UserInputError, match=r"n_boot, seed given both in config and as keywords"):
        eval_config(given, n_boot=60, seed=4)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['out_dir'\]"):
        eval_config(out_dir="x")
    with pytest.raises(ConfigError, match="n_boot must be"):
        eval_config(n_boot=0)
    # A spec object whose name means another setting under the run's rho is refused.
    (var,) = parse_conditions("var")  # rho 0.5: named "var"
    assert eval_config(conditions=[var]).conditions == ("var",)
    with pytest.raises(UserInputError, match=r"'var' means another setting"):
        eval_config(conditions=[var], rho=0.8)


def test_evaluate_has_no_literal_defaults_and_its_keywords_are_the_config():
    hints = typing.get_type_hints(EvalSettings)
    assert set(hints) == {f.name for f in dataclasses.fields(EvalConfig)}
    parameters = inspect.signature(evaluate).parameters
    # Settings come only from EvalConfig; the call's own arguments say where and how.
    defaults = {n: p.default for n, p in parameters.items() if p.default is not p.empty}
    assert defaults == {
        "config": None,
        "dataset": None,
        "show_progress": True,
        "force": False,
        "shard": None,
    }
    assert parameters["settings"].kind is inspect.Parameter.VAR_KEYWORD


def test_provenance_spawns_git_once_per_process(monkeypatch):
    real = subprocess.run
    calls = []

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    results._git_commit.cache_clear()
    monkeypatch.setattr(subprocess, "run", counting)
    try:
        commits = {results.provenance()["git_commit"] for _ in range(25)}
        commits.add(results.git_commit())
    finally:
        results._git_commit.cache_clear()
    assert len(calls) == 1
    assert len(commits) == 1
    # The cached value is the checkout's commit (or None outside a checkout).
    head = real(
        ["git", "rev-parse", "HEAD"],
        cwd=results.Path(results.__file__).resolve().parent,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    assert commits == {head or None}
