"""Radix selection over pieces of data equals sorting it whole: ranks, cuts with ties, summaries."""

from __future__ import annotations

import numpy as np
import pytest

from sapray.core import filters
from sapray.core.order_stats import (
    DIGITS,
    Moments,
    add_counts,
    cut_at,
    digit_counts,
    distribution,
    quantile_ranks,
    select_keys,
    sortable,
    value_of,
)


def pieces_of(n: int, rng: np.random.Generator) -> list[slice]:
    cuts = sorted(set(rng.integers(0, n + 1, size=5).tolist()) | {0, n})
    return [slice(a, b) for a, b in zip(cuts, cuts[1:], strict=False)]


def counter(columns: dict[str, np.ndarray], pieces: list[slice], calls: list):
    """A CountFn that counts piece by piece, as workers do, and adds the pieces up."""
    def count(prefixes: dict[str, np.ndarray], level: int) -> dict[str, np.ndarray]:
        calls.append(level)
        return {name: add_counts((digit_counts(columns[name][p], prefixes[name], level) for p in pieces),
                                 len(prefixes[name])) for name in prefixes}
    return count


def samples(rng: np.random.Generator, n: int) -> np.ndarray:
    values = rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, size=n)
    values[rng.random(n) < 0.3] = 5.0  # a run of ties, as ds_shift's cap makes
    values[rng.random(n) < 0.05] = -0.0
    values[rng.random(n) < 0.05] = 0.0
    values[rng.random(n) < 0.02] = np.inf
    values[rng.random(n) < 0.02] = -np.inf
    return values


def test_sortable_keys_keep_the_order_of_floats():
    values = np.array([-np.inf, -1e300, -2.5, -1e-310, -0.0, 0.0, 1e-310, 3.0, 1e300, np.inf])
    keys = sortable(values)
    assert (np.diff(keys.astype(object)) >= 0).all()
    assert keys[4] == keys[5]  # -0.0 == 0.0
    assert [value_of(k) for k in keys] == [v + 0.0 for v in values]


@pytest.mark.parametrize("seed", range(20))
def test_selected_keys_are_the_sorted_keys(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    a, b = sortable(samples(rng, n)), sortable(samples(rng, n))
    ranks = {"a": sorted(set(rng.integers(1, n + 1, size=4).tolist()) | {1, n}), "b": [n // 2 + 1]}
    calls = []
    got = select_keys(ranks, counter({"a": a, "b": b}, pieces_of(n, rng), calls))
    assert calls == list(range(DIGITS))  # every rank of both columns in one set of passes
    for name, keys in (("a", a), ("b", b)):
        ordered = np.sort(keys)
        for k, sel in zip(ranks[name], got[name], strict=True):
            assert sel.key == ordered[k - 1]
            assert sel.below == int((keys < sel.key).sum())
            assert sel.equal == int((keys == sel.key).sum())


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("fraction", [0.0, 0.06, 0.5, 0.79, 1.0])
def test_the_cut_keeps_what_keep_lowest_keeps(seed, fraction):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    values = samples(rng, n)
    keys, orders = sortable(values), np.arange(n, dtype=np.uint64) * 3 + 7  # any increasing order key
    pieces = pieces_of(n, rng)
    k = filters.keep_count(fraction, n)
    selected = select_keys({"score": [k]}, counter({"score": keys}, pieces, []))["score"][0] if k else None

    def tied_order(key: int, j: int) -> int:
        tied = {"order": orders[keys == np.uint64(key)]}
        return select_keys({"order": [j]}, counter(tied, [slice(0, len(tied["order"]))], []))["order"][0].key

    cut = cut_at(k, selected, tied_order)
    assert cut.keeps(keys, orders).tolist() == filters.keep_lowest(list(values + 0.0), fraction)
    if k:
        assert cut.value == max(v + 0.0 for v, kept in zip(values, filters.keep_lowest(list(values), fraction),
                                                           strict=True) if kept)


def test_a_cut_through_a_run_of_ties_asks_for_the_order():
    values = np.array([1.0, 5.0, 5.0, 0.5, 5.0, 5.0, 2.0])
    keys, orders = sortable(values), np.arange(7, dtype=np.uint64)
    selected = select_keys({"s": [5]}, counter({"s": keys}, [slice(0, 7)], []))["s"][0]
    assert (value_of(selected.key), selected.below, selected.equal) == (5.0, 3, 4)
    asked = []
    cut = cut_at(5, selected, lambda key, j: asked.append(j) or [1, 2, 4, 5][j - 1])
    assert asked == [2] and cut.last_order == 2  # two of the four 5.0s: the earliest two
    assert cut.keeps(keys, orders).tolist() == [True, True, True, True, False, False, True]
    assert cut_at(7, select_keys({"s": [7]}, counter({"s": keys}, [slice(0, 7)], []))["s"][0],
                  lambda *_: pytest.fail("no tie to split")).last_order is None


@pytest.mark.parametrize("seed", range(10))
def test_distribution_from_pieces_matches_the_whole(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 500))
    values = samples(rng, n)
    finite = values[np.isfinite(values)]
    pieces = pieces_of(n, rng)
    moments = Moments()
    for p in pieces:
        part = values[p]
        moments = moments.merge(Moments.of(part[np.isfinite(part)]))
    if not len(finite):
        assert distribution(moments, n, {}) == {"count": 0} == filters.distribution(list(values))
        return
    ranks = quantile_ranks(len(finite))
    keys = sortable(finite)
    selected = select_keys({"v": ranks}, counter({"v": keys}, [slice(0, len(keys))], []))["v"]
    got = distribution(moments, n - len(finite), {r: value_of(s.key) for r, s in zip(ranks, selected, strict=True)})
    want = filters.distribution(list(values))
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == pytest.approx(want[name], rel=1e-12, abs=1e-12), name
