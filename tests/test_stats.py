"""Wilson intervals and paired bootstrap differences."""

from __future__ import annotations

import numpy as np
import pytest

from sftlab.stats import bootstrap_ci, paired_difference, pooled_ratio, rate, verdict, wilson_interval


def test_wilson_interval_is_not_degenerate_at_zero_or_all():
    low, high = wilson_interval(0, 4)
    assert low == 0.0 and 0.45 < high < 0.52  # 0 of 4 does not rule out a rate near one half
    low, high = wilson_interval(4, 4)
    assert high == 1.0 and 0.48 < low < 0.55


def test_wilson_interval_matches_the_textbook_value():
    low, high = wilson_interval(10, 20)  # p = 0.5, n = 20: 0.299 to 0.701
    assert low == pytest.approx(0.2993, abs=1e-3) and high == pytest.approx(0.7007, abs=1e-3)


def test_wilson_interval_refuses_impossible_counts():
    with pytest.raises(ValueError):
        wilson_interval(5, 4)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_rate_counts_flags():
    r = rate([True, False, True, True])
    assert r["value"] == 0.75 and r["n"] == 4 and r["ci"][0] < 0.75 < r["ci"][1]


def test_paired_difference_counts_and_interval():
    d = paired_difference([1, 1, 0, 1], [0, 1, 0, 0], n_resamples=500)
    assert d["difference"] == pytest.approx(0.5)
    assert d["n_a_higher"] == 2 and d["n_b_higher"] == 0 and d["n"] == 4
    assert d["ci"][0] >= 0  # b is never higher on any prompt, so no resample favours b


def test_paired_interval_is_tighter_than_separate_intervals():
    rng = np.random.default_rng(0)
    base = rng.normal(size=40)
    a, b = base + 0.3, base  # same prompts, a constant gain: the paired difference is exact
    d = paired_difference(a, b)
    assert d["ci"][0] == pytest.approx(0.3) and d["ci"][1] == pytest.approx(0.3)


def test_paired_difference_of_pooled_ratios():
    a = [[2.0, 1], [4.0, 2]]  # 6 nats over 3 tokens = 2.0
    b = [[3.0, 1], [6.0, 2]]  # 9 over 3 = 3.0
    d = paired_difference(a, b, stat=pooled_ratio, n_resamples=200)
    assert d["difference"] == pytest.approx(-1.0) and "n_a_higher" not in d


def test_paired_difference_needs_aligned_values():
    with pytest.raises(ValueError, match="align"):
        paired_difference([1, 0], [1, 0, 1])


@pytest.mark.parametrize("ci, better, expected", [
    ([0.1, 0.3], "higher", "better"), ([0.1, 0.3], "lower", "worse"),
    ([-0.3, -0.1], "lower", "better"), ([-0.1, 0.2], "higher", "unclear"),
    ([0.0, 0.0], "higher", "unclear"), ([0.1, 0.3], "", ""),
])
def test_verdict_reads_the_interval(ci, better, expected):
    assert verdict({"difference": 0.2, "ci": ci}, better) == expected


def test_bootstrap_ci_contains_mean_and_is_deterministic():
    rng = np.random.default_rng(1)
    values = rng.normal(0.5, 0.2, size=50)
    low, high = bootstrap_ci(values)
    assert low < float(np.mean(values)) < high
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)


def test_bootstrap_ci_for_flags_and_constants():
    flags = [True] * 10 + [False] * 10
    low, high = bootstrap_ci(flags)
    assert 0.2 <= low < 0.5 < high <= 0.8
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)
    assert bootstrap_ci([0.25]) == (0.25, 0.25)


def test_bootstrap_ci_narrows_with_more_data():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 2, size=20)
    large = rng.integers(0, 2, size=2000)
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(bootstrap_ci(large)) < width(bootstrap_ci(small)) / 3


def test_bootstrap_ci_custom_stat_and_rows():
    values = [1.0, 2.0, 3.0, 100.0]
    low, high = bootstrap_ci(values, stat=np.median)
    assert 1.0 <= low <= high <= 100.0
    rows = [[1, 2], [0, 1], [3, 3]]  # ratio of column sums
    low, high = bootstrap_ci(rows, stat=lambda r: r[:, 0].sum() / r[:, 1].sum())
    assert 0.0 <= low <= 4 / 6 <= high <= 1.0


@pytest.mark.parametrize(
    "kwargs, values",
    [({}, []), ({}, [1.0, float("nan")]), ({"confidence": 1.0}, [1.0]), ({"n_resamples": 0}, [1.0])],
)
def test_bootstrap_ci_rejects_bad_input(kwargs, values):
    with pytest.raises(ValueError):
        bootstrap_ci(values, **kwargs)


def test_bootstrap_ci_empty_message():
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_ci([])


def test_pooled_ratio_weights_items_by_their_denominator():
    # 3/4 and 1/4 pool to 4/8, not to the mean of the ratios; 1/1 and 0/3 pool to 1/4, not 0.5.
    assert pooled_ratio([[3, 4], [1, 4]]) == 0.5
    assert pooled_ratio([[1, 1], [0, 3]]) == 0.25
