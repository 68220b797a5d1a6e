"""Cost-bounded, paired sampling of questions, in rounds.

Paired design: only questions that have a candidate from every strategy are eligible, and every
strategy is scored on the same questions. A seeded permutation of the eligible question ids fixes
the order; rounds take the next ``round_size`` questions while the question and token budgets
allow, so a caller can update its estimates between rounds and decide whether to go on.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sapray.core.errors import InputError


def lacking_strategies(have: set[str], strategies: list[str]) -> list[str]:
    """The strategies a question's candidates lack (empty: the question can be paired)."""
    return sorted(set(strategies) - have)


def sample_order(question_ids: list[str], seed: int) -> list[str]:
    order = sorted(question_ids)
    random.Random(seed).shuffle(order)
    return order


@dataclass
class Budget:
    """What a run may spend (None = no cap) and what it has spent."""

    max_questions: int | None
    max_tokens: int | None
    max_money: float | None = None
    questions: int = 0
    tokens: int = 0
    money: float = 0.0
    money_per_question: float = 0.0  # the last round's generation cost per question, to project the next
    stopped_by: str | None = None

    def to_dict(self) -> dict:
        return {
            "max_questions": self.max_questions,
            "max_tokens": self.max_tokens,
            "max_money": self.max_money,
            "questions_scored": self.questions,
            "tokens_scored": self.tokens,
            "money_spent": round(self.money, 6),
            "stopped_by": self.stopped_by,
        }


def rounds(
    order: list[str],
    budget: Budget,
    round_size: int,
    tokens_of: Callable[[str], int],
) -> Iterator[list[str]]:
    """Yield rounds of question ids; each question's tokens (all strategies, all contexts) count at once.

    Rounds are planned lazily, one at a time, so ``tokens_of`` may change between rounds (a race
    drops strategies). Money is known only after a round's responses are generated: the next round
    is cut where the last round's cost per question says it would pass ``max_money``.
    """
    position = 0
    while position < len(order):
        batch = []
        while position < len(order) and len(batch) < round_size:
            if budget.max_questions is not None and budget.questions >= budget.max_questions:
                budget.stopped_by = "max_questions"
                break
            if (budget.max_money is not None
                    and budget.money + budget.money_per_question * (len(batch) + 1) > budget.max_money):
                budget.stopped_by = "max_money"
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


@dataclass
class StrategySet:
    """The strategies a selection compares, and why the others are left out."""

    chosen: list[str]
    questions: int  # questions with any candidate
    coverage: dict[str, int]  # strategy -> questions with a usable candidate
    excluded: dict[str, str]  # strategy -> reason
    similar_names: list[list[str]]  # names that differ only in case or surrounding spaces

    def to_dict(self) -> dict:
        return {"chosen": self.chosen, "questions_with_candidates": self.questions, "coverage": self.coverage,
                "excluded": self.excluded, "similar_names": self.similar_names}


def choose_strategies(coverage: dict[str, int], questions: int, named: list[str] | None, min_coverage: float,
                      generated: list[str] = ()) -> StrategySet:
    """Pick the strategies to pair, so that one stray strategy cannot empty the paired design.

    ``coverage``: per strategy, the questions with a usable candidate; ``questions``: those with any.
    A strategy is kept when ``named`` lists it (or ``named`` is None) and it has a usable candidate
    for at least ``min_coverage`` of the questions that have any candidate; a named strategy below
    that share is excluded too, with its reason. ``generated`` strategies (teachers that write the
    sample round by round) cover every sampled question by construction.
    """
    coverage = dict(sorted(coverage.items()))
    excluded = {}
    for s, n in coverage.items():
        if named is not None and s not in named:
            excluded[s] = "not in data.strategies"
        elif n < min_coverage * questions:
            excluded[s] = (f"covers {n} of {questions} questions, below data.min_coverage={min_coverage:g} "
                           "(pairing it would exclude the other questions)")
    missing = [s for s in named or [] if s not in coverage and s not in generated]
    if missing:
        raise InputError(f"data.strategies names {missing}, which have no usable candidates "
                         f"(strategies found: {sorted(coverage)})")
    chosen = sorted({*(s for s in coverage if s not in excluded), *generated})
    folded: dict[str, list[str]] = {}
    for s in sorted({*coverage, *generated}):
        folded.setdefault(s.strip().casefold(), []).append(s)
    similar = [names for names in folded.values() if len(names) > 1]
    return StrategySet(chosen, questions, coverage, excluded, similar)
