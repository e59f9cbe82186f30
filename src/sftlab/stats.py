"""Intervals for comparing systems: Wilson intervals for rates, paired bootstrap differences.

Every system answers the same prompts, so two systems are best compared prompt by prompt:
`paired_difference` resamples the prompts once and recomputes both systems' statistic on
the same resample, so the interval is for the *difference* (system a minus system b) and
is far tighter than two separate intervals whose overlap is judged by eye. A rate (stop
rate, pass rate) of k successes in n gets a Wilson score interval (Wilson 1927), which
stays inside [0, 1] and does not collapse to [0%, 0%] when k = 0, as a percentile
bootstrap does. Percentile bootstrap: Efron and Tibshirani 1993.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def bootstrap_ci(
    values,
    *,
    stat: Callable = np.mean,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval for `stat` of `values`, the same for the same seed.

    Resamples the items with replacement `n_resamples` times, computes `stat`
    on each resample, and returns the (1 - confidence) / 2 and
    (1 + confidence) / 2 percentiles. Works for 0/1 flags and for floats.
    `values` may also be a 2-D array: rows are resampled together, and `stat`
    gets the resampled rows (e.g. per-item sufficient statistics for a corpus metric).
    [1.0, 1.0, 1.0] -> (1.0, 1.0);  20 coin flips with 10 heads -> about (0.3, 0.7)
    """
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not np.all(np.isfinite(arr)):
        raise ValueError("bootstrap_ci got a NaN or infinite value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.shape[0], size=(n_resamples, arr.shape[0]))
    if stat is np.mean and arr.ndim == 1:
        stats = arr[idx].mean(axis=1)  # same numbers as the loop, much faster
    else:
        stats = np.array([stat(arr[i]) for i in idx], dtype=float)
    alpha = (1 - confidence) / 2
    low, high = np.percentile(stats, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)


def pooled_ratio(rows) -> float:
    """Sum of the first column over sum of the second: a ratio pooled over items, for bootstrapping.

    [[3, 4], [1, 4]] -> 0.5 (e.g. instructions followed / instructions, or NLL sum / tokens)
    """
    rows = np.asarray(rows, dtype=float)
    return float(rows[:, 0].sum() / rows[:, 1].sum())


def wilson_interval(successes: int, n: int, *, z: float = Z95) -> list[float]:
    """Wilson score interval for a proportion: (0 of 4) -> [0.0, 0.49]; (4 of 4) -> [0.51, 1.0].

    Unlike the percentile bootstrap, it is not degenerate at 0% or 100%: with n = 4 and no
    success, a true rate of up to about half cannot be ruled out, and the interval says so.
    """
    if n <= 0:
        raise ValueError("wilson_interval needs at least one trial")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n={n}, got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def rate(flags: Sequence[bool | float]) -> dict:
    """A rate with its Wilson interval: [True, False, True, True] -> {"value": 0.75, "ci": [...], "n": 4}."""
    n = len(flags)
    k = int(sum(bool(f) for f in flags))
    return {"value": k / n, "ci": wilson_interval(k, n), "n": n}


def paired_difference(
    a: Sequence,
    b: Sequence,
    *,
    stat: Callable = np.mean,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """stat(a) - stat(b) with a paired percentile-bootstrap interval: item i of a and of b
    answer the same prompt, and every resample draws the same items for both.

    `a` and `b` are per-prompt values (0/1 flags, scores) or rows of sufficient statistics
    (e.g. [nll_sum, n_tokens] with `stat=pooled_ratio`). Returns {"difference", "ci", "n"}
    and, for 1-D values, `n_a_higher` / `n_b_higher`: on how many prompts each system's own
    value is the higher one, numbers a reader can check by hand.
    [1, 1, 0, 1] vs [0, 1, 0, 0] -> difference 0.5, n_a_higher 2, n_b_higher 0.
    """
    arr_a, arr_b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if arr_a.shape != arr_b.shape:
        raise ValueError(f"paired values must align: {arr_a.shape} vs {arr_b.shape}")
    if arr_a.ndim == 0 or arr_a.shape[0] == 0:
        raise ValueError("paired_difference needs at least one pair")
    if not (np.all(np.isfinite(arr_a)) and np.all(np.isfinite(arr_b))):
        raise ValueError("paired_difference got a NaN or infinite value")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr_a.shape[0], size=(n_resamples, arr_a.shape[0]))
    if stat is np.mean and arr_a.ndim == 1:
        diffs = arr_a[idx].mean(axis=1) - arr_b[idx].mean(axis=1)
    else:
        diffs = np.array([stat(arr_a[i]) - stat(arr_b[i]) for i in idx], dtype=float)
    alpha = (1 - confidence) / 2
    low, high = np.percentile(diffs, [100 * alpha, 100 * (1 - alpha)])
    out = {"difference": float(stat(arr_a) - stat(arr_b)), "ci": [float(low), float(high)],
           "n": int(arr_a.shape[0])}
    if arr_a.ndim == 1:
        out["n_a_higher"] = int((arr_a > arr_b).sum())
        out["n_b_higher"] = int((arr_a < arr_b).sum())
    return out


def verdict(entry: dict | None, better: str) -> str:
    """How a paired difference reads: "better", "worse" or "unclear" (the interval holds 0)
    for system a, given which direction is better ("higher" or "lower"); "" when neither is."""
    if not entry or not better:
        return ""
    low, high = entry["ci"]
    if low <= 0 <= high:
        return "unclear"
    higher = low > 0
    return "better" if higher == (better == "higher") else "worse"
