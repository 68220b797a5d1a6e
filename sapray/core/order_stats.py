"""Exact order statistics of data that no one process holds: radix selection over histograms.

A float64 maps to a uint64 key with the same order (``sortable``). The k-th smallest key is found
digit by digit, most significant first: each pass counts, for every wanted rank, the keys that share
the digits found so far by their next 16-bit digit (``digit_counts``, run wherever the data is, its
nonzero bins only, summed by the caller), and the rank's digit is the bin where the running count
reaches it. Four passes give
the exact key, whatever the distribution: no sampling, no error bound to state. Several ranks of
several columns share the passes.

Ties are kept deterministic by ranking on (value, order), where ``order`` is a row's place in the input
(``keep_lowest``'s stable sort keeps the earlier row first): ``cut_at`` takes the key at the cut and,
when the cut splits a run of equal keys, the order of the last tied row kept. ``distribution`` gives
``filters.distribution``'s summary from order statistics and mergeable moments (Chan, Golub &
LeVeque, 1979).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

DIGIT_BITS = 16
DIGITS = 64 // DIGIT_BITS
BINS = 1 << DIGIT_BITS

# ({name: prefixes}, level) -> {name: counts[len(prefixes), BINS]}: for each named set of keys and
# each prefix (the top ``level`` digits found so far), the keys that start with it, binned by their
# next digit. Callers run ``digit_counts`` where the data is and add the pieces up (``add_counts``).
CountFn = Callable[[dict[str, np.ndarray], int], dict[str, np.ndarray]]


def sortable(values: np.ndarray) -> np.ndarray:
    """uint64 keys in the order of the float64 values (-0.0 and 0.0 equal; NaN above +inf)."""
    values = np.asarray(values, dtype=np.float64) + 0.0  # -0.0 + 0.0 is 0.0
    bits = values.view(np.uint64)
    negative = (bits >> np.uint64(63)).astype(bool)
    keys = np.where(negative, ~bits, bits | np.uint64(1 << 63))
    return np.where(np.isnan(values), np.uint64(2**64 - 1), keys)


def value_of(key: int) -> float:
    """The float64 whose ``sortable`` key this is."""
    key = np.uint64(key)
    bits = key & np.uint64(2**63 - 1) if key >> np.uint64(63) else ~key
    return float(np.array([bits], dtype=np.uint64).view(np.float64)[0])


def digit_counts(keys: np.ndarray, prefixes: np.ndarray, level: int) -> np.ndarray:
    """One piece of data's counts for ``CountFn``, sparse: rows (prefix index, digit, count) of the
    nonzero bins, so a piece sends at most three numbers per key whatever the number of bins."""
    keys = np.asarray(keys, dtype=np.uint64)
    digits = ((keys >> np.uint64(64 - DIGIT_BITS * (level + 1))) & np.uint64(BINS - 1)).astype(np.int64)
    high = keys >> np.uint64(64 - DIGIT_BITS * level) if level else np.zeros_like(keys)
    parts = [np.zeros((3, 0), dtype=np.int64)]
    for t, prefix in enumerate(prefixes):
        found, counts = np.unique(digits[high == prefix], return_counts=True)
        parts.append(np.stack([np.full(len(found), t), found, counts]).astype(np.int64))
    return np.concatenate(parts, axis=1)


def add_counts(pieces: Iterable[np.ndarray], n_prefixes: int) -> np.ndarray:
    """The dense counts[n_prefixes, BINS] of ``digit_counts`` pieces added up."""
    out = np.zeros((n_prefixes, BINS), dtype=np.int64)
    for piece in pieces:
        np.add.at(out, (piece[0], piece[1]), piece[2])
    return out


@dataclass(frozen=True)
class Selected:
    """The key at a rank, with how many keys are below it and how many equal it."""

    key: int
    below: int
    equal: int


def select_keys(ranks: dict[str, Sequence[int]], count: CountFn) -> dict[str, list[Selected]]:
    """For each named key set, the keys at the given 1-based ranks (in ``DIGITS`` calls of ``count``)."""
    prefixes = {name: [0] * len(rs) for name, rs in ranks.items()}
    below = {name: [0] * len(rs) for name, rs in ranks.items()}
    equal = {name: [0] * len(rs) for name, rs in ranks.items()}
    for level in range(DIGITS):
        distinct = {name: sorted(set(p)) for name, p in prefixes.items()}
        counts = count({name: np.array(d, dtype=np.uint64) for name, d in distinct.items()}, level)
        for name, rs in ranks.items():
            for t, k in enumerate(rs):
                bins = counts[name][distinct[name].index(prefixes[name][t])]
                running = np.cumsum(bins)
                digit = int(np.searchsorted(running, k - below[name][t]))  # the first bin reaching the rank
                if digit >= BINS:
                    raise ValueError(f"rank {k} of {name} is beyond its {below[name][t] + int(running[-1])} keys")
                below[name][t] += int(running[digit - 1]) if digit else 0
                equal[name][t] = int(bins[digit])
                prefixes[name][t] = (prefixes[name][t] << DIGIT_BITS) | digit
    return {name: [Selected(*v) for v in zip(prefixes[name], below[name], equal[name], strict=True)]
            for name in ranks}


@dataclass(frozen=True)
class Cut:
    """The first ``k`` rows by (key, order): rows with a key below ``key`` and, of those equal to it, those
    with order <= ``last_order`` (None: all of them). ``key`` None: nothing is kept."""

    k: int
    key: int | None
    last_order: int | None

    @property
    def value(self) -> float | None:
        return None if self.key is None else value_of(self.key)

    def keeps(self, keys: np.ndarray, orders: np.ndarray) -> np.ndarray:
        if self.key is None:
            return np.zeros(len(keys), dtype=bool)
        cut = np.uint64(self.key)
        tied = keys == cut
        if self.last_order is not None:
            tied &= orders <= self.last_order
        return (keys < cut) | tied


def cut_at(k: int, selected: Selected | None, tied_order: Callable[[int, int], int]) -> Cut:
    """The cut keeping the first ``k`` rows, from the key at rank k; ``tied_order(key, j)`` is the j-th
    smallest order among the rows with that key, asked only when the cut splits a run of ties."""
    if k == 0 or selected is None:
        return Cut(0, None, None)
    needed = k - selected.below
    if needed == selected.equal:
        return Cut(k, selected.key, None)
    return Cut(k, selected.key, tied_order(selected.key, needed))


@dataclass
class Moments:
    """Count, mean and sum of squared deviations, mergeable across pieces of data."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        values = np.asarray(values, dtype=np.float64)
        if not len(values):
            return cls()
        mean = math.fsum(values) / len(values)
        return cls(len(values), mean, math.fsum((values - mean) ** 2))

    def merge(self, other: Moments) -> Moments:
        n = self.n + other.n
        if not n:
            return Moments()
        delta = other.mean - self.mean
        return Moments(n, self.mean + delta * other.n / n, self.m2 + other.m2 + delta * delta * self.n * other.n / n)


QUANTILES = {"p10": 0.1, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p90": 0.9}


def quantile_ranks(n: int) -> list[int]:
    """The 1-based ranks ``distribution`` needs among n finite values (min, max, the quantiles' neighbours)."""
    ranks = {1, n}
    for p in QUANTILES.values():
        pos = p * (n - 1)
        ranks |= {math.floor(pos) + 1, math.ceil(pos) + 1}
    return sorted(ranks)


def distribution(moments: Moments, non_finite: int, at_rank: dict[int, float]) -> dict[str, float | int | None]:
    """``filters.distribution``'s summary from the moments of the finite values and their values at
    ``quantile_ranks``."""
    n = moments.n
    if not n:
        return {"count": 0}

    def q(p: float) -> float:
        pos = p * (n - 1)
        lo, hi = at_rank[math.floor(pos) + 1], at_rank[math.ceil(pos) + 1]
        return lo + (hi - lo) * (pos - math.floor(pos))

    return {"count": n, "non_finite": non_finite, "mean": moments.mean, "std": math.sqrt(moments.m2 / n),
            "min": at_rank[1], **{name: q(p) for name, p in QUANTILES.items()}, "max": at_rank[n]}
