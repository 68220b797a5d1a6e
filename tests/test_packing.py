"""The packed layout of shared contexts (sapray.core.packing), by hand: rows, positions, the mask, and which
position predicts which token."""

from __future__ import annotations

import numpy as np

from sapray.core import packing

# two requests share context [1, 2, 3]; a third has its own context [7]
CONTEXTS = [[1, 2, 3], [7], [1, 2, 3]]
CONTINUATIONS = [[10, 11], [20, 21, 22], [30]]


def test_segments_group_by_context_longest_first_and_split_at_the_budget():
    segs = packing.segments(CONTEXTS, CONTINUATIONS, max_tokens=100)
    assert [(s.context, s.members) for s in segs] == [((1, 2, 3), (0, 2)), ((7,), (1,))]
    split = packing.segments(CONTEXTS, CONTINUATIONS, max_tokens=5)
    # [1,2,3] + [10,11] is 5 tokens; [30] starts a second segment that repeats the context
    assert sorted((s.context, s.members) for s in split) == [((1, 2, 3), (0,)), ((1, 2, 3), (2,)), ((7,), (1,))]


def test_segments_do_not_depend_on_request_order():
    order = [2, 0, 1]
    segs = packing.segments([CONTEXTS[i] for i in order], [CONTINUATIONS[i] for i in order], max_tokens=100)
    assert [(s.context, tuple(order[m] for m in s.members)) for s in segs] == [((1, 2, 3), (0, 2)), ((7,), (1,))]


def test_rows_first_fit_decreasing():
    assert packing.rows_of([6, 4, 3, 2, 1], width=6) == [[0], [1, 3], [2, 4]]


def test_layout_positions_branches_and_targets_by_hand():
    segs = packing.segments(CONTEXTS, CONTINUATIONS, max_tokens=100)
    packed = packing.layout([segs], CONTINUATIONS, width=11, pad_id=0)
    assert packed.input_ids.tolist() == [[1, 2, 3, 10, 11, 30, 7, 20, 21, 22, 0]]
    assert packed.positions.tolist() == [[0, 1, 2, 3, 4, 3, 0, 1, 2, 3, 0]]
    assert packed.segment.tolist() == [[0, 0, 0, 0, 0, 0, 1, 1, 1, 1, -1]]
    assert packed.branch.tolist() == [[0, 0, 0, 1, 1, 2, 0, 1, 1, 1, 0]]
    # predictors: context end (col 2), token 10 (col 3); context end of [7] (col 6), tokens 20, 21 (cols 7, 8)
    assert packed.predictors.tolist() == [[0, 2], [0, 3], [0, 6], [0, 7], [0, 8]]
    assert packed.targets == {0: [(0, 10), (1, 11)], 2: [(0, 30)], 1: [(2, 20), (3, 21), (4, 22)]}


def test_each_continuation_sees_its_context_and_itself_only():
    segs = packing.segments(CONTEXTS, CONTINUATIONS, max_tokens=100)
    packed = packing.layout([segs], CONTINUATIONS, width=11, pad_id=0)
    ok = packing.allowed(packed.segment, packed.branch, np.arange(packed.segment.shape[1]))[0]
    expected = np.zeros((11, 11), dtype=bool)
    for q, keys in {0: [0], 1: [0, 1], 2: [0, 1, 2], 3: [0, 1, 2, 3], 4: [0, 1, 2, 3, 4], 5: [0, 1, 2, 5],
                    6: [6], 7: [6, 7], 8: [6, 7, 8], 9: [6, 7, 8, 9], 10: [10]}.items():
        expected[q, keys] = True
    assert (ok == expected).all()


def tiles_of_the_dense_mask(segment: np.ndarray, branch: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(partial, full) tiles counted on the dense mask: the reference block_structure must agree with."""
    ok = packing.allowed(segment[None], branch[None], np.arange(len(segment)))[0]
    tiles = len(segment) // block
    counts = ok.reshape(tiles, block, tiles, block).sum(axis=(1, 3))
    return (counts > 0) & (counts < block * block), counts == block * block


def flags(count: np.ndarray, indices: np.ndarray) -> np.ndarray:
    out = np.zeros((len(count), len(count)), dtype=bool)
    for q, n in enumerate(count):
        out[q, indices[q, :n]] = True
        assert list(indices[q, :n]) == sorted(indices[q, :n])
    return out


def test_block_structure_matches_the_dense_mask_tile_by_tile():
    """Random segments of contexts and continuations (some longer than a tile, some shorter), padding at the end."""
    rng = np.random.default_rng(0)
    seen = np.zeros(2, dtype=int)  # trials with full tiles, with partial tiles: the check must see both kinds
    for trial in range(20):
        block = [4, 8, 16][trial % 3]
        n = int(rng.integers(2, 6))
        contexts = [list(rng.integers(1, 50, int(rng.integers(1, 40)))) for _ in range(n)]
        which = rng.integers(0, n, 12)
        continuations = [list(rng.integers(1, 50, int(rng.integers(1, 30)))) for _ in which]
        segs = packing.segments([contexts[w] for w in which], continuations, max_tokens=10_000)
        used = sum(s.length(continuations) for s in segs)
        width = -(-(used + int(rng.integers(0, 2 * block))) // block) * block
        packed = packing.layout([segs], continuations, width, pad_id=0)
        partial, full = tiles_of_the_dense_mask(packed.segment[0], packed.branch[0], block)
        p_count, p_idx, f_count, f_idx = packing.block_structure(packed.segment[0], packed.branch[0], block)
        assert (flags(p_count, p_idx) == partial).all() and (flags(f_count, f_idx) == full).all()
        seen += full.any(), partial.any()
    assert (seen > 5).all()


def test_mask_mod_is_the_allowed_rule():
    segs = packing.segments(CONTEXTS, CONTINUATIONS, max_tokens=100)
    packed = packing.layout([segs], CONTINUATIONS, width=11, pad_id=0)
    allow = packing.mask_mod(packed.segment[0], packed.branch[0])
    q, k = np.meshgrid(np.arange(11), np.arange(11), indexing="ij")
    expected = packing.allowed(packed.segment, packed.branch, np.arange(11))[0]
    assert (allow(0, 0, q, k) == expected).all()
