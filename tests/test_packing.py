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
