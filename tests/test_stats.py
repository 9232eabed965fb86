"""analysis.stats: the one bootstrap against naive loops, CI coverage, McNemar and the
confusion metrics against hand counts, and every caller on the same draws."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from analysis import config
from analysis.checks import ConfigError
from analysis.scoring.metrics import Unit, accuracy, paired_bootstrap
from analysis.stats import (
    bootstrap_ci,
    bootstrap_indices,
    confusion,
    interval,
    mcnemar_exact,
    mean_ci,
    mean_interval,
    mean_stat,
    paired_difference,
    percentile_interval,
    pope_metrics,
)


def _naive_quantile(values, q):
    """Linear interpolation between order statistics (numpy's default method)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _naive_draws(n, n_boot, seed):
    """One resample at a time from a fresh generator with the same seed."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, size=n) for _ in range(n_boot)]


# ------------------------------------------------------------------------------- draws


def test_draws_equal_a_one_at_a_time_loop_and_depend_only_on_the_seed():
    index = bootstrap_indices(23, 40, seed=5)
    assert index.shape == (40, 23)
    assert np.array_equal(index, np.stack(_naive_draws(23, 40, 5)))
    assert np.array_equal(index, bootstrap_indices(23, 40, seed=5))
    assert not np.array_equal(index, bootstrap_indices(23, 40, seed=6))
    assert index.min() >= 0
    assert index.max() < 23


def test_defaults_come_from_config():
    index = bootstrap_indices(7)
    assert index.shape == (config.N_BOOT, 7)
    assert np.array_equal(index, bootstrap_indices(7, config.N_BOOT, config.SEED))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: bootstrap_indices(0, 10, 0), "n >= 1"),
        (lambda: bootstrap_indices(5, 0, 0), "n_boot >= 1"),
        (lambda: bootstrap_indices(5, 10, -1), "seed"),
        (lambda: percentile_interval(np.arange(5.0), 1.0), "level"),
        (lambda: percentile_interval(np.arange(5.0), float("nan")), "level"),
    ],
)
def test_bad_settings_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_level_is_a_config_error():
    with pytest.raises(ConfigError, match="level must be"):
        mean_ci(np.arange(5.0), level=0.0)


# ------------------------------------------------------------------------------- intervals


def test_bootstrap_ci_equals_a_naive_loop():
    values = np.random.default_rng(0).normal(size=31)
    out = bootstrap_ci(mean_stat, [values], n_boot=150, seed=9, level=0.9)["mean"]
    means = [float(np.mean([values[i] for i in row])) for row in _naive_draws(31, 150, 9)]
    assert out["value"] == pytest.approx(float(np.mean(values)))
    assert out["lo"] == pytest.approx(_naive_quantile(means, 0.05))
    assert out["hi"] == pytest.approx(_naive_quantile(means, 0.95))


def test_mean_ci_equals_a_naive_loop_and_drops_nans():
    values = np.array([0.5, np.nan, 2.0, -1.0, 3.5, np.nan, 0.0, 1.25])
    finite = values[np.isfinite(values)]
    mean, lo, hi = mean_ci(values, n_boot=120, seed=3, level=0.8)
    means = [float(np.mean([finite[i] for i in row])) for row in _naive_draws(6, 120, 3)]
    assert mean == pytest.approx(float(finite.mean()))
    assert lo == pytest.approx(_naive_quantile(means, 0.1))
    assert hi == pytest.approx(_naive_quantile(means, 0.9))
    assert mean_ci(np.array([np.nan, 4.0])) == (4.0, 4.0, 4.0)
    assert all(math.isnan(x) for x in mean_ci(np.array([np.nan])))


def test_mean_interval_equals_a_per_entry_naive_loop():
    """The counts-matrix resampling equals gathering each resample, entry by entry."""
    values = np.random.default_rng(2).random((9, 3, 4))
    lo, hi = mean_interval(values, n_boot=80, seed=4, level=0.9)
    assert lo.shape == hi.shape == (3, 4)
    draws = _naive_draws(9, 80, 4)
    for layer in range(3):
        for head in range(4):
            means = [float(np.mean([values[i, layer, head] for i in row])) for row in draws]
            assert lo[layer, head] == pytest.approx(_naive_quantile(means, 0.05))
            assert hi[layer, head] == pytest.approx(_naive_quantile(means, 0.95))


def test_interval_and_paired_difference():
    samples = np.array([1.0, 2.0, np.nan, 3.0, np.inf, 4.0])
    out = interval(2.5, samples, level=0.5)
    assert out == {
        "value": 2.5,
        "lo": pytest.approx(_naive_quantile([1, 2, 3, 4], 0.25)),
        "hi": pytest.approx(_naive_quantile([1, 2, 3, 4], 0.75)),
    }
    a, b = np.array([3.0, 5.0, 4.0, 6.0]), np.array([1.0, 4.0, 4.0, 2.0])
    diff = paired_difference(4.5, 2.75, a, b, level=0.5)
    assert diff["value"] == pytest.approx(1.75)
    assert diff["lo"] == pytest.approx(_naive_quantile([2, 1, 0, 4], 0.25))
    with pytest.raises(ValueError, match="shape"):
        paired_difference(0.0, 0.0, a, b[:3])


def test_ci_coverage_is_near_its_level():
    """90% CIs of a Bernoulli(0.3) mean from 200 items cover 0.3 in about 90% of datasets."""
    rng = np.random.default_rng(11)
    trials, covered = 300, 0
    for trial in range(trials):
        values = (rng.random(200) < 0.3).astype(np.float64)
        ci = bootstrap_ci(mean_stat, [values], n_boot=400, seed=trial, level=0.9)["mean"]
        covered += ci["lo"] <= 0.3 <= ci["hi"]
    # Binomial sd of the coverage over 300 trials is ~0.017; the percentile CI runs a
    # little narrow at n = 200. A broken CI (too narrow, off centre) lands far outside.
    assert 0.83 <= covered / trials <= 0.96


# ------------------------------------------------------------------------------- callers


def test_paired_bootstrap_difference_is_the_bootstrap_of_the_differences():
    """Benchmark metrics and POPE summaries resample the same items for the same n and seed."""
    rng = np.random.default_rng(5)
    base = rng.integers(0, 2, 60).astype(np.float64)
    other = np.where(rng.random(60) < 0.2, 1.0, base)
    out = paired_bootstrap(
        accuracy,
        [Unit((v,)) for v in base],
        {"var": [Unit((v,)) for v in other]},
        n_boot=200,
        seed=3,
    )
    diff = bootstrap_ci(mean_stat, [other - base], n_boot=200, seed=3)["mean"]
    got = out["var - baseline"]["accuracy"]
    for key in ("value", "lo", "hi"):
        assert got[key] == pytest.approx(100 * diff[key])


def test_head_score_aggregate_uses_the_shared_bootstrap():
    """HeadScores.aggregate's CIs are mean_interval's over the samples, same seed."""
    from analysis.heads import HeadScores

    per = {
        k: torch.rand(6, 2, 3, generator=torch.Generator().manual_seed(i))
        for i, k in enumerate(("s", "r", "selected"))
    }

    class Fixed(HeadScores):
        def __init__(self) -> None:
            pass

        def per_sample(self):
            return per

    agg = Fixed().aggregate(n_boot=90, seed=2, level=0.8)
    for key, values in per.items():
        lo, hi = mean_interval(values.double().numpy(), n_boot=90, seed=2, level=0.8)
        torch.testing.assert_close(agg[f"{key}_lo"], torch.from_numpy(lo).float())
        torch.testing.assert_close(agg[f"{key}_hi"], torch.from_numpy(hi).float())
        torch.testing.assert_close(agg[f"{key}_mean"], values.mean(0))


# ------------------------------------------------------------------------------- McNemar


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        # two-sided exact binomial at 1/2: p = 2 * sum_{k <= min(b, c)} C(n, k) / 2^n
        (1, 5, 2 * (1 + 6) / 64),
        (2, 8, 2 * (1 + 10 + 45) / 1024),
        (0, 4, 2 * 1 / 16),
        (3, 3, 1.0),  # 2 * 42/64 > 1: capped
        (0, 0, 1.0),  # no discordant pair
    ],
)
def test_mcnemar_against_the_hand_computed_binomial(b, c, p):
    # b items right at baseline only, c right under the condition only, plus 7 concordant.
    base = np.array([True] * b + [False] * c + [True] * 4 + [False] * 3)
    other = np.array([False] * b + [True] * c + [True] * 4 + [False] * 3)
    out = mcnemar_exact(base, other)
    assert out["b"] == b
    assert out["c"] == c
    assert out["p"] == pytest.approx(p)


# ------------------------------------------------------------------------------- confusion


def test_confusion_and_pope_metrics_against_hand_counts():
    pred = np.array([1, 1, 1, 0, 0, 1, 0, 0, 0, 1], dtype=bool)
    label = np.array([1, 1, 0, 0, 1, 1, 0, 0, 0, 0], dtype=bool)
    # by hand: tp = items 0, 1, 5; fp = 2, 9; fn = 4; tn = 3, 6, 7, 8
    assert {k: int(v) for k, v in confusion(pred, label).items()} == {
        "tp": 3,
        "fp": 2,
        "tn": 4,
        "fn": 1,
    }
    metrics = {k: float(v) for k, v in pope_metrics(pred, label).items()}
    assert metrics == pytest.approx(
        {
            "accuracy": 7 / 10,
            "precision": 3 / 5,
            "recall": 3 / 4,
            "f1": 2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4),
            "yes_ratio": 5 / 10,
        }
    )
    # Leading axes broadcast: row k of a stack is the metric of pair k.
    stacked = pope_metrics(np.stack([pred, ~pred]), np.stack([label, label]))
    assert float(stacked["accuracy"][0]) == pytest.approx(0.7)
    assert float(stacked["accuracy"][1]) == pytest.approx(0.3)
    # No predicted positives: precision 0, not NaN (sklearn's zero_division=0).
    none = pope_metrics(np.zeros(3, dtype=bool), np.array([1, 0, 0], dtype=bool))
    assert float(none["precision"]) == 0.0
    assert float(none["f1"]) == 0.0
