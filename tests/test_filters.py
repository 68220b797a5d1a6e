"""Hand-computed fixtures for the per-sample filter formulas (METHOD.md §4, §5)."""

from __future__ import annotations

import math

import pytest

from sapray.core import filters


@pytest.mark.parametrize("valid_mean, loss, weight", [
    (1.0, 2.0, 0.5),     # 1/2
    (3.0, 1.0, 2.0),     # 3 clipped to 2
    (1.5, 1.0, 1.5),     # inside the clip
    (1.0, 0.0, 0.0),     # L = 0 gives w = 0 by definition
    (0.0, 1.0, 0.0),     # Lbar_V = 0 gives 0 (clip at 0)
])
def test_ds_weight_clip(valid_mean, loss, weight):
    assert filters.ds_weight(valid_mean, loss) == weight


@pytest.mark.parametrize("weight, shift", [
    (2.0, 2.0),          # w > 1: d = w
    (1.5, 1.5),
    (1.0, 1.0),          # w = 1 is not > 1: d = min(1/1, 5) = 1
    (0.5, 2.0),          # 1/0.5
    (0.25, 4.0),
    (0.1, 5.0),          # 1/0.1 = 10, capped at 5
    (0.0, 5.0),          # 1/0 capped at 5
])
def test_ds_shift_and_cap(weight, shift):
    assert filters.ds_shift(weight) == pytest.approx(shift)


def test_keep_count_rounds_half_up():
    assert filters.keep_count(0.79, 100) == 79
    assert filters.keep_count(0.5, 3) == 2      # 1.5 rounds up
    assert filters.keep_count(0.25, 2) == 1     # 0.5 rounds up
    assert filters.keep_count(0.2, 2) == 0      # 0.4 rounds down
    assert filters.keep_count(0.06, 1000) == 60
    with pytest.raises(ValueError):
        filters.keep_count(1.5, 10)


def test_keep_lowest_breaks_ties_by_input_order():
    # shifts 2, 1, 2, 2, 5: keep 3 -> the 1, then the first two 2s (rows 0 and 2), not row 3
    assert filters.keep_lowest([2.0, 1.0, 2.0, 2.0, 5.0], 0.6) == [True, True, True, False, False]


def test_keep_highest_breaks_ties_by_input_order():
    assert filters.keep_highest([0.3, 0.5, 0.5, 0.1], 0.5) == [False, True, True, False]
    assert filters.keep_highest([0.5, 0.5, 0.5], 0.34) == [True, False, False]  # 1.02 -> 1


def test_dsweight_pipeline_by_hand():
    # Lbar_V = 1.2; losses 0.6, 1.2, 2.4, 0.0 -> w = 2 (clipped from 2), 1, 0.5, 0 -> d = 2, 1, 2, 5
    weights = [filters.ds_weight(1.2, loss) for loss in (0.6, 1.2, 2.4, 0.0)]
    assert weights == [2.0, 1.0, 0.5, 0.0]
    shifts = [filters.ds_shift(w) for w in weights]
    assert shifts == [2.0, 1.0, 2.0, 5.0]
    # keep 0.79 of 4 = 3.16 -> 3: rows 1 (d=1), 0 and 2 (d=2, tie by order); row 3 dropped
    assert filters.keep_lowest(shifts, 0.79) == [True, True, True, False]


def test_lobass_score():
    assert filters.lobass_score(2.0, 1.5) == 0.25       # (2 - 1.5) / 2
    assert filters.lobass_score(1.0, 1.2) == pytest.approx(-0.2)
    assert filters.lobass_score(0.0, 1.0) == 0.0


def test_majority_vote():
    assert filters.majority(["18", "18", "20", None]) == "18"
    assert filters.majority(["20", "18", "18", "20"]) == "20"  # tie: the one seen first
    assert filters.majority([None, None]) is None


def test_distribution_quantiles():
    d = filters.distribution([1.0, 2.0, 3.0, 4.0, math.inf])
    assert d["count"] == 4 and d["non_finite"] == 1
    assert d["mean"] == 2.5 and d["p50"] == 2.5 and d["min"] == 1.0 and d["max"] == 4.0
    assert d["p25"] == pytest.approx(1.75)
    assert d["std"] == pytest.approx(math.sqrt(1.25))
