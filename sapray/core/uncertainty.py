"""How sure a validation is (``sapray validate``): bootstrap intervals over (model, task) pairs, and the
calibration of a metric's gaps against accuracy gaps.

Resampling unit. The evidence is a set of (model, task) pairs; the strategies of one pair share its
fine-tuning recipe, its test set and its subsets, so neither strategies nor pairs of strategies are
independent draws. Every interval here resamples whole (model, task) pairs with replacement, keeping
everything inside a pair together (its subsets, every pair of strategies in it): a cluster, or block,
bootstrap (Davison & Hinkley 1997, *Bootstrap Methods and their Application*, section 3.8; Field &
Welsh 2007, "Bootstrapping clustered data", JRSS B 69(3)). One set of resamples serves every metric
and every statistic, so differences between metrics are paired. The intervals are percentile
intervals (Efron & Tibshirani 1993, *An Introduction to the Bootstrap*, chapter 13): the 2.5th and
97.5th percentiles of the statistic over the resamples. Resampling is seeded (numpy's
``default_rng(seed)``): the same inputs, seed and resample count give the same numbers.

Every statistic is a ratio of sums over pairs (a weighted mean), so a resample is a vector of counts,
how often each pair was drawn, and the statistic is ``counts @ numerator / counts @ denominator``.
A resample in which a statistic is undefined (say, every drawn pair has an undefined rho) is left out
of that statistic's interval; the number left out is reported.

Calibration table. For every two strategies within a (model, task[, subset]) the metric's relative
gap is ``|m_a - m_b| / |m_better|`` (``m_better`` the value of the one the metric prefers), and the
metric *agrees* with accuracy when its preferred strategy reached the higher accuracy (1), disagrees
when it reached the lower (0), and scores 1/2 on an accuracy tie; the accuracy gain is the preferred
strategy's accuracy minus the other's. Pairs the metric ties carry no preference and are only
counted. Pairs are bucketed by gap (``[0, e1), [e1, e2), ..., [e_last, inf)``); each bucket's
agreement and mean gain get cluster-bootstrap intervals. The *smallest actionable gap* is the lower
edge of the lowest non-empty bucket from which every non-empty bucket's agreement has the lower end
of its 95% interval above 1/2: from that gap on, the metric's preference predicts the better
fine-tuning result more often than a coin, at 95% (a 97.5% one-sided bound per bucket; no correction
across buckets). A bucket whose pairs all come from one (model, task) group has an interval of zero
width (every resample that draws the group gives the same share) and never counts as shown. Like any
bootstrap, these intervals need a fair number of groups; with a handful they are too narrow.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from itertools import combinations

import numpy as np

LEVEL = 0.95
DEFAULT_GAP_EDGES = (0.01, 0.02, 0.05, 0.10, 0.20, 0.50)
METHOD = ("percentile bootstrap (Efron & Tibshirani 1993) resampling whole (model, task) pairs with replacement "
          "(a cluster bootstrap: Davison & Hinkley 1997, section 3.8); one set of resamples for every metric, so "
          "differences are paired")


def resample_counts(groups: int, resamples: int, seed: int) -> np.ndarray:
    """How often each of ``groups`` clusters is drawn in each resample, shape (resamples, groups): drawing
    ``groups`` clusters with replacement is a multinomial draw of the counts."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(groups, np.full(groups, 1.0 / groups), size=resamples)


def ratio_resamples(numerator: np.ndarray, denominator: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``counts @ numerator / counts @ denominator`` per resample (and per column); NaN where nothing drawn
    has weight."""
    num, den = counts @ numerator, counts @ denominator
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> list[float | None]:
    """The percentile interval of the defined resamples; [None, None] when none is defined."""
    defined = samples[~np.isnan(samples)]
    if not len(defined):
        return [None, None]
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(defined, [tail, 100 - tail])
    return [_r(lo), _r(hi)]


def compare(reference: np.ndarray, other: np.ndarray, point: float | None) -> dict:
    """``reference - other`` over paired resamples: the point difference, its interval and P(difference > 0)."""
    diff = reference - other
    defined = diff[~np.isnan(diff)]
    return {"difference": _r(point), "ci95": percentile_interval(defined),
            "p_positive": _r(float(np.mean(defined > 0))) if len(defined) else None,
            "resamples_undefined": int(len(diff) - len(defined))}


def strategy_pairs(units: Iterable[tuple[int, Sequence[tuple[float, float]]]],
                   lower_is_better: bool) -> tuple[list[tuple[int, float, float, float]], int]:
    """Every two strategies of each unit (group, [(metric value, accuracy), ...]) as (group, relative gap,
    agreement, accuracy gain of the metric's preferred one); and how many pairs the metric ties."""
    out, ties = [], 0
    for group, members in units:
        for (va, aa), (vb, ab) in combinations(members, 2):
            if va == vb:
                ties += 1
                continue
            if (va < vb) == lower_is_better:
                (best, best_acc), (other, other_acc) = (va, aa), (vb, ab)
            else:
                (best, best_acc), (other, other_acc) = (vb, ab), (va, aa)
            gap = abs(best - other) / abs(best) if best else math.inf
            agreement = 1.0 if best_acc > other_acc else 0.5 if best_acc == other_acc else 0.0
            out.append((group, gap, agreement, best_acc - other_acc))
    return out, ties


def gap_table(units: Iterable[tuple[int, Sequence[tuple[float, float]]]], lower_is_better: bool, groups: int,
              edges: Sequence[float], counts: np.ndarray) -> dict:
    """The calibration table (module docstring): buckets of relative gap with agreement, accuracy gain,
    their cluster-bootstrap intervals (``counts`` from ``resample_counts`` over the ``groups``), and the
    smallest actionable gap."""
    pairs, ties = strategy_pairs(units, lower_is_better)
    bounds = [0.0, *edges, math.inf]
    n = np.zeros((groups, len(bounds) - 1))
    agree, gain = np.zeros_like(n), np.zeros_like(n)
    for group, gap, agreement, accuracy_gain in pairs:
        k = bisect.bisect_right(edges, gap)  # a gap on an edge belongs to the bucket above it
        n[group, k] += 1
        agree[group, k] += agreement
        gain[group, k] += accuracy_gain
    agree_samples, gain_samples = ratio_resamples(agree, n, counts), ratio_resamples(gain, n, counts)
    buckets = []
    for k in range(len(bounds) - 1):
        total = n[:, k].sum()
        buckets.append({
            "from": bounds[k], "to": None if math.isinf(bounds[k + 1]) else bounds[k + 1],
            "pairs": int(total), "groups": int((n[:, k] > 0).sum()),
            "agreement": _r(agree[:, k].sum() / total) if total else None,
            "agreement_ci95": percentile_interval(agree_samples[:, k]),
            "accuracy_gain": _r(gain[:, k].sum() / total) if total else None,
            "accuracy_gain_ci95": percentile_interval(gain_samples[:, k]),
        })
    smallest = None
    for bucket in reversed(buckets):
        if not bucket["pairs"]:
            continue
        lo = bucket["agreement_ci95"][0]
        if bucket["groups"] < 2 or lo is None or lo <= 0.5:  # one group: nothing varies between resamples
            break
        smallest = bucket["from"]
    return {"edges": list(edges), "pairs": len(pairs), "metric_ties": ties, "buckets": buckets,
            "smallest_actionable_gap": smallest}


def _r(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)
