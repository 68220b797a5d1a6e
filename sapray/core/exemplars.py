"""Exemplars: the target model's own correct answers (METHOD.md §1 steps 1-2).

Mining: the target answers a pool of questions zero-shot and greedily; the answer checker keeps
the correct ones. Shortfall policy: when fewer than ``n`` correct answers are found, ``unchecked``
fills up to ``n`` with the model's other answers (flagged ``checked=False`` in the scores and the
report) and ``error`` stops the run. Choice: question ``k`` of the sample gets the next ``n``
exemplars after position ``k`` in the pool, wrapping around (the authors' rule), skipping any
exemplar that answers that same question.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from sapray.core.answers import AnswerChecker, make_checker


@dataclass(frozen=True)
class Exemplar:
    exemplar_id: str
    text: str
    source_question_id: str | None
    checked: bool  # True: passed the answer checker; False: used without a check (no gold, or shortfall)

    def to_dict(self) -> dict:
        return asdict(self)


class ExemplarShortfall(RuntimeError):
    pass


@dataclass
class MiningReport:
    pool_questions: int
    correct: int
    wrong: int
    unparsable: int
    filled_unchecked: int
    checker: str
    truncated: int = 0  # answers cut off at max_tokens (counted in unparsable)

    def to_dict(self) -> dict:
        return asdict(self)


def judge(checker: AnswerChecker, question: dict, answer: str, cut_off: bool) -> bool | None:
    """The checker's verdict on one pool answer; None when it cannot judge (no gold, nothing parsable,
    or cut off at max_tokens, where the last number is not the answer)."""
    if question.get("gold") is None or cut_off:
        return None
    return checker.check(answer, question["gold"])


def mine(
    pool: Sequence[dict],
    answers: Sequence[str],
    n: int,
    checker_name: str,
    regex: str | None = None,
    shortfall: str = "unchecked",
    truncated: Sequence[bool] | None = None,
) -> tuple[list[Exemplar], MiningReport]:
    """Turn the model's answers to ``pool`` questions into exemplars by the checker and shortfall policy.

    An answer cut off at max_tokens never counts as correct (its last number is not its answer); it is
    counted as unparsable and used to fill a shortfall only after the complete answers.
    """
    truncated = list(truncated) if truncated is not None else [False] * len(answers)
    if checker_name == "none":
        exemplars = [Exemplar(f"mined-{q['question_id']}", a, q["question_id"], False)
                     for q, a in zip(pool, answers, strict=True) if a.strip()]
        return exemplars, MiningReport(len(pool), 0, 0, 0, len(exemplars), "none", sum(truncated))
    checker = make_checker(checker_name, regex)
    correct, others, cut_off, wrong, unparsable = [], [], [], 0, 0
    for question, answer, cut in zip(pool, answers, truncated, strict=True):
        verdict = judge(checker, question, answer, cut)
        if verdict:
            correct.append(Exemplar(f"mined-{question['question_id']}", answer, question["question_id"], True))
            continue
        wrong += verdict is False
        unparsable += verdict is None
        if answer.strip():
            (cut_off if cut else others).append(
                Exemplar(f"mined-{question['question_id']}", answer, question["question_id"], False))
    others += cut_off
    missing = max(0, n - len(correct))
    if missing and shortfall == "error":
        raise ExemplarShortfall(
            f"only {len(correct)} of {len(pool)} pool answers passed the {checker_name} checker; {n} needed "
            "(raise exemplars.pool_size, supply exemplars.file, or set exemplars.shortfall: unchecked)"
        )
    fill = others[:missing]
    if len(correct) + len(fill) < n:
        raise ExemplarShortfall(f"the model gave only {len(correct) + len(fill)} usable answers; {n} needed")
    return correct + fill, MiningReport(len(pool), len(correct), wrong, unparsable, len(fill), checker_name,
                                        sum(truncated))


def choose(pool: Sequence[Exemplar], position: int, question_id: str, n: int) -> list[Exemplar]:
    """The next ``n`` exemplars after ``position`` (wrapping), never one that answers ``question_id``."""
    usable = [e for e in pool if e.source_question_id != question_id]
    if len(usable) < n:
        raise ExemplarShortfall(f"question {question_id}: only {len(usable)} exemplars answer other questions")
    start = (position + 1) % len(pool)
    rotated = [pool[(start + k) % len(pool)] for k in range(len(pool))]
    return [e for e in rotated if e.source_question_id != question_id][:n]


def zero_shot_prompts(tokenizer, questions: Sequence[str]) -> list[list[int]]:
    """Chat-template prompts asking the target to answer each question, as token ids."""
    return [
        list(tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                     add_generation_prompt=True),
                       add_special_tokens=False)["input_ids"])
        for q in questions
    ]
