"""Cost-bounded, paired sampling of questions, in rounds.

Paired design: only questions that have a candidate from every strategy are eligible, and every
strategy is scored on the same questions. A seeded permutation of the eligible question ids fixes
the order; rounds take the next ``round_size`` questions while the question and token budgets
allow, so a caller can update its estimates between rounds and decide whether to go on.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


def paired_question_ids(candidates: list[dict], strategies: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Question ids that have every strategy, and for the others the strategies they lack."""
    have: dict[str, set[str]] = {}
    for row in candidates:
        have.setdefault(row["question_id"], set()).add(row["strategy"])
    complete = sorted(q for q, s in have.items() if len(s) == len(strategies))
    lacking = {q: sorted(set(strategies) - s) for q, s in have.items() if len(s) < len(strategies)}
    return complete, lacking


def sample_order(question_ids: list[str], seed: int) -> list[str]:
    order = sorted(question_ids)
    random.Random(seed).shuffle(order)
    return order


@dataclass
class Budget:
    """What a run may spend (None = no cap) and what it has spent."""

    max_questions: int | None
    max_tokens: int | None
    questions: int = 0
    tokens: int = 0
    stopped_by: str | None = None
    skipped_questions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "max_questions": self.max_questions,
            "max_tokens": self.max_tokens,
            "questions_scored": self.questions,
            "tokens_scored": self.tokens,
            "stopped_by": self.stopped_by,
        }


def rounds(
    order: list[str],
    budget: Budget,
    round_size: int,
    tokens_of: Callable[[str], int],
) -> Iterator[list[str]]:
    """Yield rounds of question ids; each question's tokens (all strategies, all contexts) count at once."""
    position = 0
    while position < len(order):
        batch = []
        while position < len(order) and len(batch) < round_size:
            if budget.max_questions is not None and budget.questions >= budget.max_questions:
                budget.stopped_by = "max_questions"
                break
            qid = order[position]
            cost = tokens_of(qid)
            if budget.max_tokens is not None and budget.tokens + cost > budget.max_tokens:
                budget.stopped_by = "max_tokens"
                break
            budget.questions += 1
            budget.tokens += cost
            batch.append(qid)
            position += 1
        if batch:
            yield batch
        if budget.stopped_by:
            return
    budget.stopped_by = budget.stopped_by or "all_questions"
