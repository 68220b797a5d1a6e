"""Shared-context packing: the layout of one forward pass that scores every continuation of a context.

A *segment* is a context followed by some of its continuations, in one row of a batch. Each continuation
sees the context and, causally, itself; never another continuation (a 4D attention mask, built from
``segment`` and ``branch`` below), and its position ids restart after the context, so every token is
computed exactly as in a plain forward of context + that continuation. Several segments share a row when
they fit (first-fit decreasing into rows as wide as the longest segment): each segment attends only to
itself.

Scoring needs the logits of few positions: the context's last position predicts every continuation's
first token, and continuation token k predicts token k + 1. ``PackedLayout.predictors`` lists those
positions once each; ``targets`` says which (predictor, token id) pair gives each log-probability.

Pure: token ids in, integer arrays out (the engine turns them into tensors). Everything is laid out in a
canonical order (segments sorted by length, then by their tokens), so the same requests in any order give
the same forward passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

ArrayT = TypeVar("ArrayT")  # a numpy array or a torch tensor
PAD_SEGMENT = -1  # segment id of padding positions: they attend only to padding (never to real tokens)


@dataclass(frozen=True)
class Segment:
    context: tuple[int, ...]
    members: tuple[int, ...]  # indices of the requests whose continuations follow, in row order

    def length(self, continuations: Sequence[Sequence[int]]) -> int:
        return len(self.context) + sum(len(continuations[i]) for i in self.members)


def segments(contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
             max_tokens: int) -> list[Segment]:
    """The requests grouped by identical context, each group cut into segments of at most ``max_tokens``
    tokens (a segment always holds at least one continuation, whatever its length), longest first."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, context in enumerate(contexts):
        groups.setdefault(tuple(context), []).append(i)
    out = []
    for context, members in groups.items():
        members = sorted(members, key=lambda i: (-len(continuations[i]), tuple(continuations[i]), i))
        chunk: list[int] = []
        size = len(context)
        for i in members:
            n = len(continuations[i])
            if chunk and size + n > max_tokens:
                out.append(Segment(context, tuple(chunk)))
                chunk, size = [], len(context)
            chunk.append(i)
            size += n
        out.append(Segment(context, tuple(chunk)))
    return sorted(out, key=lambda s: (-s.length(continuations), s.context,
                                      tuple(tuple(continuations[i]) for i in s.members)))


def rows_of(lengths: Sequence[int], width: int) -> list[list[int]]:
    """First-fit decreasing: the indices of ``lengths`` (already longest first) in rows of ``width``."""
    rows: list[list[int]] = []
    room: list[int] = []
    for k, n in enumerate(lengths):
        for r, left in enumerate(room):
            if n <= left:
                rows[r].append(k)
                room[r] -= n
                break
        else:
            rows.append([k])
            room.append(width - n)
    return rows


@dataclass
class PackedLayout:
    """One batch of packed rows.

    ``input_ids``, ``positions``, ``segment`` (which segment of the row a position belongs to,
    PAD_SEGMENT for padding) and ``branch`` (0: the segment's context; j + 1: its j-th continuation):
    [rows, width] arrays. ``predictors``: [n, 2] (row, column) of every position whose logits are
    needed. ``targets[i]``: for request i, one (predictor index, token id) pair per continuation token.
    """

    input_ids: np.ndarray
    positions: np.ndarray
    segment: np.ndarray
    branch: np.ndarray
    predictors: np.ndarray
    targets: dict[int, list[tuple[int, int]]]


def layout(rows: list[list[Segment]], continuations: Sequence[Sequence[int]], width: int,
           pad_id: int) -> PackedLayout:
    """Lay out ``rows`` (each a list of segments that fit in ``width``) as arrays; see PackedLayout."""
    shape = (len(rows), width)
    input_ids = np.full(shape, pad_id, dtype=np.int64)
    positions = np.zeros(shape, dtype=np.int64)
    segment = np.full(shape, PAD_SEGMENT, dtype=np.int64)
    branch = np.zeros(shape, dtype=np.int64)
    predictors: list[tuple[int, int]] = []
    targets: dict[int, list[tuple[int, int]]] = {}
    for r, row in enumerate(rows):
        col = 0
        for s, seg in enumerate(row):
            n_ctx = len(seg.context)
            input_ids[r, col:col + n_ctx] = seg.context
            positions[r, col:col + n_ctx] = np.arange(n_ctx)
            segment[r, col:col + n_ctx] = s
            last_context = len(predictors)
            predictors.append((r, col + n_ctx - 1))
            col += n_ctx
            for j, i in enumerate(seg.members):
                cont = continuations[i]
                n = len(cont)
                input_ids[r, col:col + n] = cont
                positions[r, col:col + n] = np.arange(n_ctx, n_ctx + n)
                segment[r, col:col + n] = s
                branch[r, col:col + n] = j + 1
                # token 0 from the context's last position; token k from continuation token k - 1
                pairs = [(last_context, cont[0])]
                for k in range(1, n):
                    pairs.append((len(predictors), cont[k]))
                    predictors.append((r, col + k - 1))
                targets[i] = pairs
                col += n
        if col > width:
            raise ValueError(f"row {r} holds {col} tokens, wider than {width}")
    return PackedLayout(input_ids, positions, segment, branch,
                        np.array(predictors, dtype=np.int64).reshape(-1, 2), targets)


def allowed(segment: ArrayT, branch: ArrayT, columns: ArrayT) -> ArrayT:
    """[rows, width, width] booleans: query position q may attend to key position k. Same segment, k at or
    before q, and k in the context or in q's own continuation. Padding attends to earlier padding only,
    so no row of the mask is empty.

    Operators only, so the same function builds the mask from numpy arrays or from tensors already on a
    GPU (where a host-built mask of rows x width x width would cost more than the forward's launch);
    ``columns`` is ``arange(width)`` of the same library.
    """
    causal = columns[None, :] <= columns[:, None]
    same_segment = segment[:, :, None] == segment[:, None, :]
    same_branch = (branch[:, None, :] == 0) | (branch[:, :, None] == branch[:, None, :])
    return causal[None] & same_segment & same_branch


BLOCK = 128  # FlexAttention's default tile: the block mask says which BLOCK x BLOCK tiles attention computes


def block_structure(segment: np.ndarray, branch: np.ndarray,
                    block: int = BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The tiles of one row's ``allowed`` mask, without building it: (partial count, partial indices, full
    count, full indices) per query tile, as ``BlockMask.from_kv_blocks`` takes them ([tiles], [tiles, tiles]
    each, the listed key tiles first, in order). A full tile is computed without the mask, an empty one
    skipped, a partial one masked elementwise.

    ``segment`` and ``branch`` are one row of a layout, its width a multiple of ``block``. The mask is
    counted by runs (maximal spans of one segment and branch): a run sees itself causally and, fully, the
    context run of its segment before it; a tile is full when all block x block of its pairs are allowed.
    """
    width = len(segment)
    if width % block:
        raise ValueError(f"width {width} is not a multiple of the block size {block}")
    tiles = width // block
    change = np.flatnonzero((segment[1:] != segment[:-1]) | (branch[1:] != branch[:-1])) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [width]))
    allowed_pairs = np.zeros((tiles, tiles), dtype=np.int64)
    edges = np.arange(tiles + 1) * block

    def per_tile(start: int, end: int) -> tuple[int, np.ndarray]:
        """The first tile a span touches and how many of its positions fall in each tile from there."""
        first, last = start // block, (end - 1) // block
        spans = np.minimum(edges[first + 1:last + 2], end) - np.maximum(edges[first:last + 1], start)
        return first, spans

    context: dict[int, tuple[int, np.ndarray]] = {}  # segment -> its context run, per tile
    for start, end in zip(starts, ends, strict=True):
        first, spans = per_tile(int(start), int(end))
        n = len(spans)
        # itself, causally: every pair across tiles, n(n+1)/2 on a tile's diagonal
        own = np.tril(np.outer(spans, spans), -1) + np.diag(spans * (spans + 1) // 2)
        allowed_pairs[first:first + n, first:first + n] += own
        seg = int(segment[start])
        if branch[start] == 0:
            context[seg] = (first, spans)
        elif seg in context:  # a continuation sees all of its segment's context, which came before it
            c_first, c_spans = context[seg]
            allowed_pairs[first:first + n, c_first:c_first + len(c_spans)] += np.outer(spans, c_spans)
    full = allowed_pairs == block * block
    partial = (allowed_pairs > 0) & ~full

    def listed(flags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (flags.sum(axis=1).astype(np.int32),
                np.argsort(~flags, axis=1, kind="stable").astype(np.int32))

    return (*listed(partial), *listed(full))


def mask_mod(segment: ArrayT, branch: ArrayT) -> Callable[[Any, Any, Any, Any], Any]:
    """``allowed`` as FlexAttention's elementwise mask function over one row (batch and head ignored): the
    same rule, indexed by (batch, head, query, key)."""
    def allow(b: Any, h: Any, q: Any, k: Any) -> Any:
        return (segment[q] == segment[k]) & (k <= q) & ((branch[k] == 0) | (branch[k] == branch[q]))
    return allow
