"""The reducer on hand-made scores: means, win rates, ranking, CAR."""

from __future__ import annotations

import pytest

from sapray.core.reduce import summarize


def rows(values: dict[str, list[float]], rewards: dict[str, list[float]] | None = None) -> list[dict]:
    out = []
    for strategy, saps in values.items():
        for i, sap in enumerate(saps):
            out.append({"question_id": f"q{i}", "strategy": strategy, "sap": sap, "ppl": 2 * sap, "ifd": 0.5,
                        "length": 10 + i, "nll_ppl": 1.0,
                        "reward": rewards[strategy][i] if rewards else None})
    return out


def test_means_ranking_and_win_rates_by_hand():
    # a: 1, 4, 2 (mean 7/3); b: 2, 3, 2.5 (mean 7.5/3)
    summary = summarize(rows({"a": [1.0, 4.0, 2.0], "b": [2.0, 3.0, 2.5]}), ["a", "b"], bootstrap=0)
    assert summary["per_strategy"]["a"]["mean_sap"] == pytest.approx(7 / 3, abs=1e-6)
    assert summary["per_strategy"]["b"]["mean_sap"] == pytest.approx(7.5 / 3, abs=1e-6)
    assert summary["ranking"] == ["a", "b"]
    # a is lower on q0 and q2, higher on q1: 2/3 of the paired questions
    assert summary["win_rate"]["a"]["b"] == pytest.approx(2 / 3, abs=1e-6)
    assert summary["win_rate"]["b"]["a"] == pytest.approx(1 / 3, abs=1e-6)
    assert summary["per_strategy"]["a"]["median_sap"] == 2.0
    assert summary["per_strategy"]["a"]["geomean_sap"] == pytest.approx(8 ** (1 / 3), abs=1e-6)
    assert summary["winner"]["margin_mean_sap"] == pytest.approx(0.5 / 3, abs=1e-6)


def test_ties_count_half_and_ci_brackets_the_mean():
    summary = summarize(rows({"a": [1.0, 2.0, 3.0, 4.0], "b": [1.0, 2.0, 3.0, 5.0]}), ["a", "b"], bootstrap=500)
    assert summary["win_rate"]["a"]["b"] == pytest.approx((0.5 * 3 + 1) / 4)
    lo, hi = summary["per_strategy"]["a"]["ci95_mean_sap"]
    assert lo <= 2.5 <= hi and lo >= 1.0 and hi <= 4.0


def test_car_only_with_rewards():
    plain = summarize(rows({"a": [1.0, 2.0]}), ["a"], bootstrap=0)
    assert "car" not in plain["per_strategy"]["a"]
    rewarded = summarize(rows({"a": [1.0, 2.0]}, {"a": [0.5, 1.0]}), ["a"], bootstrap=0)
    # mean reward 0.75, mean NLL(y|x) 1.0: CAR = 0.75 / (1 + 3) = 0.1875
    assert rewarded["per_strategy"]["a"]["car"] == pytest.approx(0.1875)
