"""Reducer: per-strategy statistics, paired win rates, ranking and the winner.

Input: per-example scores (question_id, strategy, sap, ppl, ifd, length). Lower SAP is more
familiar and ranks first; the paper's statistic is the arithmetic mean of per-example SAP. The
bootstrap resamples questions (the same resample for every strategy, as the design is paired).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from sapray import metrics


def _matrix(scores: Sequence[dict], strategies: list[str], key: str) -> tuple[list[str], np.ndarray]:
    questions = sorted({s["question_id"] for s in scores})
    row = {q: i for i, q in enumerate(questions)}
    col = {s: j for j, s in enumerate(strategies)}
    values = np.full((len(questions), len(strategies)), np.nan)
    for s in scores:
        values[row[s["question_id"]], col[s["strategy"]]] = s[key]
    return questions, values


def _r(x: float) -> float | None:
    """Round for the JSON report; NaN becomes null."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 6)


def win_rates(sap: np.ndarray) -> np.ndarray:
    """win[a, b]: share of questions scored for both where a's SAP is lower than b's (ties count half)."""
    k = sap.shape[1]
    win = np.full((k, k), np.nan)
    for a in range(k):
        for b in range(k):
            if a == b:
                continue
            both = ~np.isnan(sap[:, a]) & ~np.isnan(sap[:, b])
            if both.any():
                lower = (sap[both, a] < sap[both, b]).sum() + 0.5 * (sap[both, a] == sap[both, b]).sum()
                win[a, b] = lower / both.sum()
    return win


def bootstrap_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Column means of ``resamples`` resamples of the rows (NaN-aware): shape (resamples, columns)."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, values.shape[0], size=(resamples, values.shape[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample may miss every row of a strategy: NaN
        return np.nanmean(values[rows], axis=1)


def _reward_stats(scores: Sequence[dict], strategy: str) -> dict:
    """Mean reward and CAR (METHOD.md §2), only where every scored response has a reward."""
    rows = [s for s in scores if s["strategy"] == strategy]
    if not rows or any(s.get("reward") is None for s in rows):
        return {}
    mean_reward = float(np.mean([s["reward"] for s in rows]))
    mean_nll = float(np.mean([s["nll_ppl"] for s in rows]))
    return {"mean_reward": _r(mean_reward), "car": _r(metrics.car(mean_reward, mean_nll))}


def summarize(scores: Sequence[dict], strategies: list[str], bootstrap: int = 1000, seed: int = 0) -> dict:
    """Per-strategy statistics, the win-rate matrix and the ranking, as a JSON-ready dict."""
    _, sap = _matrix(scores, strategies, "sap")
    _, ppl = _matrix(scores, strategies, "ppl")
    _, ifd = _matrix(scores, strategies, "ifd")
    _, length = _matrix(scores, strategies, "length")
    counts = (~np.isnan(sap)).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_sap = np.nanmean(sap, axis=0)
        boot = bootstrap_means(sap, bootstrap, seed) if bootstrap and len(sap) else None
    per_strategy = {}
    for j, name in enumerate(strategies):
        column = sap[:, j][~np.isnan(sap[:, j])]
        lo = hi = float("nan")
        if boot is not None and len(column):
            lo, hi = np.nanpercentile(boot[:, j], [2.5, 97.5])
        per_strategy[name] = {
            "n": int(counts[j]),
            "mean_sap": _r(mean_sap[j]) if len(column) else None,
            "median_sap": _r(np.median(column)) if len(column) else None,
            "geomean_sap": _r(np.exp(np.mean(np.log(column)))) if len(column) else None,
            "ci95_mean_sap": [_r(lo), _r(hi)],
            "mean_ppl": _r(np.nanmean(ppl[:, j])) if len(column) else None,
            "mean_ifd": _r(np.nanmean(ifd[:, j])) if len(column) else None,
            "mean_length": _r(np.nanmean(length[:, j])) if len(column) else None,
            **_reward_stats(scores, name),
        }
    ranked = sorted((j for j in range(len(strategies)) if counts[j]), key=lambda j: (mean_sap[j], strategies[j]))
    win = win_rates(sap)
    result = {
        "ranking": [strategies[j] for j in ranked],
        "per_strategy": per_strategy,
        "win_rate": {strategies[a]: {strategies[b]: _r(win[a, b]) for b in range(len(strategies)) if b != a}
                     for a in range(len(strategies))},
        "winner": None,
    }
    if ranked:
        first = ranked[0]
        winner = {"strategy": strategies[first], "mean_sap": _r(mean_sap[first])}
        if len(ranked) > 1:
            second = ranked[1]
            winner.update({
                "runner_up": strategies[second],
                "margin_mean_sap": _r(mean_sap[second] - mean_sap[first]),
                "win_rate_vs_runner_up": _r(win[first, second]),
            })
        if boot is not None:
            best = np.nanargmin(np.where(np.isnan(boot), np.inf, boot), axis=1)
            winner["bootstrap_p_best"] = _r(float(np.mean(best == first)))
        result["winner"] = winner
    return result
