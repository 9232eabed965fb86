"""The toolkit's one bootstrap, its intervals, the exact McNemar test and POPE's metrics.

Every confidence interval of the toolkit (evaluation summaries, benchmark
metrics, head scores, plots) comes from here, with the defaults of
:mod:`analysis.config` (``N_BOOT`` resamples, ``CI_LEVEL``, ``SEED``):

* :func:`bootstrap_indices` draws the resamples. The same ``(n, n_boot, seed)``
  gives the same draws, so statistics of different conditions computed on the
  same items resample the same items: their difference is a paired one.
* :func:`percentile_interval` / :func:`interval` turn resampled values into a
  percentile CI; :func:`paired_difference` does it for the difference of two
  statistics on shared draws.
* :func:`bootstrap_ci` (vectorised statistics over a trailing item axis),
  :func:`mean_ci` (a mean, NaNs dropped) and :func:`mean_interval` (per-entry
  means over a leading sample axis) are the three shapes callers need, all on
  the same draws.

Pure functions of numpy arrays; nothing here holds state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import einops
import numpy as np
from jaxtyping import Bool, Float, Int

from analysis.checks import check_settings
from analysis.config import CI_LEVEL, N_BOOT, SEED
from analysis.errors import UserInputError

# --------------------------------------------------------------------------- bootstrap


def bootstrap_indices(
    n: int, n_boot: int = N_BOOT, seed: int = SEED
) -> Int[np.ndarray, "boot item"]:
    """Resampling indices, one row per resample; the same (n, n_boot, seed) gives the same
    draws, so paired statistics of different conditions resample the same items."""
    if n < 1 or n_boot < 1:
        raise UserInputError(f"bootstrap needs n >= 1 and n_boot >= 1 (got {n}, {n_boot}).")
    check_settings(seed=seed)
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def percentile_interval(
    samples: Float[np.ndarray, "boot ..."], level: float = CI_LEVEL
) -> tuple[float, float]:
    """The central ``level`` percentile interval of scalar resampled values."""
    lo, hi = _quantiles(np.asarray(samples, dtype=np.float64), level)
    return float(lo), float(hi)


def _quantiles(
    samples: Float[np.ndarray, "boot ..."], level: float
) -> tuple[np.ndarray, np.ndarray]:
    # The level is checked by the shared rule: (0, 1) open, finite.
    check_settings(level=level)
    lo, hi = np.quantile(samples, [(1 - level) / 2, 1 - (1 - level) / 2], axis=0)
    return lo, hi


def interval(
    point: float, samples: Float[np.ndarray, " boot"], level: float = CI_LEVEL
) -> dict[str, float]:
    """``{"value", "lo", "hi"}``: the point estimate and the percentile CI of its resamples.

    Non-finite resamples are dropped: a resample can miss a whole category of
    units (MME, CV-Bench), and that draw has no value.
    """
    values = np.asarray(samples, dtype=np.float64)
    lo, hi = percentile_interval(values[np.isfinite(values)], level)
    return {"value": float(point), "lo": lo, "hi": hi}


def paired_difference(
    point: float,
    point_base: float,
    samples: Float[np.ndarray, " boot"],
    samples_base: Float[np.ndarray, " boot"],
    level: float = CI_LEVEL,
) -> dict[str, float]:
    """The difference ``point - point_base`` with the CI of the resampled differences.

    Both sample arrays must come from the same draws (:func:`bootstrap_indices`
    with the same n, n_boot and seed): resample ``k`` of each is the same items.
    """
    a, b = np.asarray(samples, dtype=np.float64), np.asarray(samples_base, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in shape: {a.shape} vs {b.shape}.")
    return interval(point - point_base, a - b, level)


def bootstrap_ci(
    stat: Callable[..., dict[str, np.ndarray]],
    arrays: Sequence[np.ndarray],
    *,
    n_boot: int = N_BOOT,
    seed: int = SEED,
    level: float = CI_LEVEL,
) -> dict[str, dict[str, float]]:
    """Point estimate and percentile CI of each statistic ``stat(*arrays)`` returns.

    ``stat`` reduces the last (item) axis and broadcasts over leading axes, so
    all resamples are computed at once: ``stat(*[a[idx] for a in arrays])``.
    """
    index = bootstrap_indices(arrays[0].shape[-1], n_boot, seed)
    point = stat(*arrays)
    resampled = stat(*[a[index] for a in arrays])
    out = {}
    for name, value in point.items():
        lo, hi = percentile_interval(resampled[name], level)
        out[name] = {"value": float(value), "lo": lo, "hi": hi}
    return out


def mean_stat(values: Float[np.ndarray, "*boot item"]) -> dict[str, np.ndarray]:
    """The mean over the item axis, as a :func:`bootstrap_ci` statistic."""
    return {"mean": values.mean(-1)}


def mean_ci(
    values: Float[np.ndarray, " item"],
    *,
    n_boot: int = N_BOOT,
    seed: int = SEED,
    level: float = CI_LEVEL,
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap CI of the mean, NaNs dropped (all NaN: NaN; one value:
    the value three times)."""
    finite = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(finite.mean())
    if finite.size == 1:
        return mean, mean, mean
    ci = bootstrap_ci(mean_stat, [finite], n_boot=n_boot, seed=seed, level=level)["mean"]
    return mean, ci["lo"], ci["hi"]


def mean_interval(
    values: Float[np.ndarray, "sample ..."],
    *,
    n_boot: int = N_BOOT,
    seed: int = SEED,
    level: float = CI_LEVEL,
) -> tuple[Float[np.ndarray, " ..."], Float[np.ndarray, " ..."]]:
    """Percentile CI of the mean over the leading sample axis, for every trailing entry at
    once (e.g. one CI per [layer, head]); the samples are resampled together."""
    data = np.asarray(values, dtype=np.float64)
    n = data.shape[0]
    index = bootstrap_indices(n, n_boot, seed)
    # How often each sample is drawn in each resample: the resampled means are then one
    # matrix product, [boot, sample] @ [sample, rest], instead of a [boot, sample, rest]
    # gather (gigabytes for 32 x 32 heads over a few hundred samples).
    counts = np.zeros((n_boot, n))
    np.add.at(counts, (np.arange(n_boot)[:, None], index), 1.0)
    flat = einops.rearrange(data, "sample ... -> sample (...)")
    resampled = (counts @ flat / n).reshape(n_boot, *data.shape[1:])
    lo, hi = _quantiles(resampled, level)
    return np.asarray(lo), np.asarray(hi)


# --------------------------------------------------------------------------- tests


def mcnemar_exact(
    base_correct: Bool[np.ndarray, " item"], other_correct: Bool[np.ndarray, " item"]
) -> dict[str, float]:
    """Exact (binomial) McNemar test on paired correctness.

    b = right at baseline and wrong under the condition, c = the reverse;
    p = two-sided binomial test of b out of b + c at 1/2 (1.0 when b + c = 0).
    """
    from scipy.stats import binom

    b = int((base_correct & ~other_correct).sum())
    c = int((~base_correct & other_correct).sum())
    n = b + c
    p = 1.0 if n == 0 else min(1.0, 2.0 * float(binom.cdf(min(b, c), n, 0.5)))
    return {"b": b, "c": c, "p": p}


# --------------------------------------------------------------------------- confusion metrics


def confusion(
    pred: Bool[np.ndarray, "*boot item"], label: Bool[np.ndarray, "*boot item"]
) -> dict[str, Int[np.ndarray, "*boot"]]:
    """True/false positives/negatives along the item axis (positive = first answer, "yes")."""
    return {
        "tp": (pred & label).sum(-1),
        "fp": (pred & ~label).sum(-1),
        "tn": (~pred & ~label).sum(-1),
        "fn": (~pred & label).sum(-1),
    }


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # sklearn's zero_division=0: no predicted (or true) positives -> 0, not NaN.
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def pope_metrics(
    pred: Bool[np.ndarray, "*boot item"], label: Bool[np.ndarray, "*boot item"]
) -> dict[str, Float[np.ndarray, "*boot"]]:
    """POPE accuracy, precision, recall, F1 and yes-ratio, over the last axis."""
    c = confusion(pred, label)
    n = pred.shape[-1]
    precision = _ratio(c["tp"], c["tp"] + c["fp"])
    recall = _ratio(c["tp"], c["tp"] + c["fn"])
    return {
        "accuracy": _ratio(c["tp"] + c["tn"], np.full_like(c["tp"], n)),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "yes_ratio": _ratio(c["tp"] + c["fp"], np.full_like(c["tp"], n)),
    }
