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

from sapray.core import metrics

# sample.rank_by -> its per-strategy key in the summary, and what the summary says it ranks by
RANK_KEYS = {"sap": "mean_sap", "ppl": "mean_ppl", "rsr": "rsr", "sa_rsr": "sa_rsr"}
STATISTIC = {"sap": "mean SAP per strategy (lower = more familiar, ranked first)",
             "ppl": "mean PPL per strategy (lower = more familiar, ranked first)",
             "rsr": "RSR per strategy: mean clipped rank over mean surprisal, the question alone as context "
                    "(lower = more familiar, ranked first)",
             "sa_rsr": "SA-RSR per strategy: mean clipped rank over mean surprisal in SAP's context "
                       "(lower = more familiar, ranked first)"}


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


def _rsr_stats(scores: Sequence[dict], strategies: list[str], bootstrap: int, seed: int) -> dict[str, dict]:
    """Per strategy, each rank-surprisal ratio its scores carry (``rsr``, ``sa_rsr``): the ratio of the
    per-response means (``metrics.rsr_of_means``) and its 95% interval from the same paired resamples of
    questions as SAP's (the ratio recomputed in each resample); none where no score carries it."""
    out: dict[str, dict] = {name: {} for name in strategies}
    for metric, kind in metrics.RSR_KIND.items():
        if not any(metric in s for s in scores):
            continue  # not asked for: the summary keeps its keys
        _, ranks = _matrix(scores, strategies, f"rank_{kind}")
        _, nlls = _matrix(scores, strategies, f"nll_{kind}")
        boot = (bootstrap_means(ranks, bootstrap, seed) / np.maximum(bootstrap_means(nlls, bootstrap, seed),
                                                                     metrics.RSR_GUARD)
                if bootstrap and len(ranks) else None)  # the same seed: the same resampled questions for both
        for j, name in enumerate(strategies):
            scored = ~np.isnan(ranks[:, j])
            value = metrics.rsr_of_means(ranks[scored, j], nlls[scored, j]) if scored.any() else math.nan
            lo = hi = math.nan
            if boot is not None and scored.sum() > 1:
                lo, hi = np.nanpercentile(boot[:, j], [2.5, 97.5])
            out[name] |= {metric: _r(value), f"ci95_{metric}": [_r(lo), _r(hi)]}
    return out


def _finite_mean(column: np.ndarray) -> float | None:
    """Mean of the finite values; None when there are none (a metric that was not scored)."""
    finite = column[np.isfinite(column)]
    return _r(finite.mean()) if len(finite) else None


def evidence(paired_questions: int, min_questions: int) -> dict:
    """Whether the paired sample can support a ranking at all (fewer questions: say so, claim nothing)."""
    if paired_questions >= max(2, min_questions):
        return {"sufficient": True, "paired_questions": paired_questions,
                "reason": f"{paired_questions} paired questions"}
    return {"sufficient": False, "paired_questions": paired_questions,
            "reason": f"only {paired_questions} paired question(s), fewer than {max(2, min_questions)}: too few "
                      "to rank strategies; the order shown is no more than a hint."}


def _resampled_statistic(scores: Sequence[dict], strategies: list[str], columns: list[int], rank_by: str,
                         rows: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """The ranking statistic of the strategies at ``columns`` in resamples of the question ``rows``: a mean,
    or for a rank-surprisal ratio the ratio of the resampled means (the same resampled questions for both)."""
    def values(key: str) -> np.ndarray:
        return _matrix(scores, strategies, key)[1][np.ix_(rows, columns)]

    if rank_by not in metrics.RSR_KIND:
        return bootstrap_means(values(rank_by), resamples, seed)
    kind = metrics.RSR_KIND[rank_by]
    ranks, nlls = values(f"rank_{kind}"), values(f"nll_{kind}")
    return bootstrap_means(ranks, resamples, seed) / np.maximum(bootstrap_means(nlls, resamples, seed),
                                                                metrics.RSR_GUARD)


def summarize(scores: Sequence[dict], strategies: list[str], bootstrap: int = 1000, seed: int = 0,
              contenders: list[str] | None = None, min_questions: int = 10, rank_by: str = "sap") -> dict:
    """Per-strategy statistics, the win-rate matrix and the ranking, as a JSON-ready dict.

    ``contenders`` (default: every strategy with scores) are the strategies still in the running;
    the winner is the contender of lowest ``rank_by`` statistic (mean SAP by default; ``RANK_KEYS``), and
    P(best) is computed among the contenders on the questions they were all scored on. Win rates compare
    the responses' own values of ``rank_by`` (a response's RSR for the ratios).
    """
    _, sap = _matrix(scores, strategies, "sap")
    # questions scored per strategy: of the metric ranked by (SAP need not be scored when it does not rank)
    counts = (~np.isnan(sap if rank_by == "sap" else _matrix(scores, strategies, rank_by)[1])).sum(axis=0)
    per_strategy = {}
    boot = bootstrap_means(sap, bootstrap, seed) if bootstrap and len(sap) else None
    ratios = _rsr_stats(scores, strategies, bootstrap, seed)
    for j, name in enumerate(strategies):
        column = sap[:, j][~np.isnan(sap[:, j])]
        lo = hi = float("nan")
        if boot is not None and len(column) > 1:
            lo, hi = np.nanpercentile(boot[:, j], [2.5, 97.5])
        per_strategy[name] = {
            "n": int(counts[j]),
            "mean_sap": _r(column.mean()) if len(column) else None,
            "median_sap": _r(np.median(column)) if len(column) else None,
            "geomean_sap": _r(np.exp(np.mean(np.log(column)))) if len(column) else None,
            "ci95_mean_sap": [_r(lo), _r(hi)],
            **{f"mean_{key}": _finite_mean(_matrix(scores, strategies, key)[1][:, j])
               for key in ("ppl", "ifd", "length")},
            **_reward_stats(scores, name),
            **ratios[name],
        }
    key = RANK_KEYS[rank_by]
    mean_of = {n: per_strategy[n].get(key) for n in strategies if per_strategy[n].get(key) is not None}
    contenders = [n for n in (contenders if contenders is not None else strategies) if n in mean_of]
    ranked = sorted(contenders, key=lambda n: (mean_of[n], n)) + sorted(
        (n for n in mean_of if n not in contenders), key=lambda n: (mean_of[n], n))
    ranked_values = sap if rank_by == "sap" else _matrix(scores, strategies, rank_by)[1]
    win = win_rates(ranked_values)
    index = {n: j for j, n in enumerate(strategies)}
    together = ranked_values[:, [index[n] for n in contenders]]
    paired = int((~np.isnan(together).any(axis=1)).sum()) if contenders else 0
    result = {
        "ranking": ranked,
        "per_strategy": per_strategy,
        "win_rate": {strategies[a]: {strategies[b]: _r(win[a, b]) for b in range(len(strategies)) if b != a}
                     for a in range(len(strategies))},
        "winner": None,
        "evidence": evidence(paired, min_questions),
    }
    if ranked:
        first = ranked[0]
        # a SAP winner's record keeps its keys; another metric's names it
        winner = {"strategy": first, key: mean_of[first], **({"rank_by": rank_by} if rank_by != "sap" else {})}
        if len(ranked) > 1:
            second = ranked[1]
            both = ~np.isnan(ranked_values[:, index[first]]) & ~np.isnan(ranked_values[:, index[second]])
            margin = (_r(np.mean(ranked_values[both, index[second]] - ranked_values[both, index[first]]))
                      if rank_by not in metrics.RSR_KIND else _r(mean_of[second] - mean_of[first]))
            winner.update({
                "runner_up": second,
                f"margin_{key}": margin if both.any() else None,
                "win_rate_vs_runner_up": _r(win[index[first], index[second]]),
            })
        if not result["evidence"]["sufficient"]:
            winner["provisional"] = True
        elif bootstrap and len(contenders) > 1:
            complete = ~np.isnan(together).any(axis=1)
            means = _resampled_statistic(scores, strategies, [index[n] for n in contenders], rank_by, complete,
                                         bootstrap, seed)
            best = np.argmin(means, axis=1)
            winner["bootstrap_p_best"] = _r(float(np.mean(best == contenders.index(first))))
            winner["p_best"] = {n: _r(float(np.mean(best == k))) for k, n in enumerate(contenders)}
        result["winner"] = winner
    return result


def cost_table(scores: list[dict], strategies: list[str], questions: int, generation: dict[str, dict]) -> dict:
    """Per strategy: what scoring (and generating) its sample cost, and what dropping it early saved
    against the fixed design at the same number of questions (its mean cost per question times the
    questions it was not asked)."""
    table = {}
    for name in strategies:
        rows = [sc for sc in scores if sc["strategy"] == name]
        n = len(rows)
        tokens = sum(sc["scored_tokens"] for sc in rows)
        entry = {"questions": n, "scoring_tokens": tokens,
                 "scoring_tokens_saved": round(tokens / n * (questions - n)) if n else 0}
        gen = generation.get(name)
        if gen:
            asked = gen["questions"]
            per_question = {k: gen[k] / asked if asked else 0.0 for k in ("prompt_tokens", "completion_tokens")}
            entry["generation"] = gen
            entry["generation_saved"] = {
                "tokens": round(sum(per_question.values()) * (questions - asked)),
                "money": (round(gen["money"] / asked * (questions - asked), 6)
                          if gen.get("money") is not None and asked else None),
            }
        table[name] = entry
    return table
