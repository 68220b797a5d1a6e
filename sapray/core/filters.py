"""Per-sample filters as pure functions (METHOD.md §2, §4, §5).

Keep counts use one rounding rule everywhere: ``n_keep = floor(fraction * n + 0.5)`` (half up, so
0.79 of 100 keeps 79 and 0.5 of 3 keeps 2). Ties at the keep boundary go to the earlier row (a
stable sort on the input order), so the same input always keeps the same rows.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

DS_WEIGHT_MAX = 2.0
SHIFT_CAP = 5.0


def keep_count(fraction: float, n: int) -> int:
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"keep fraction must be in [0, 1], got {fraction}")
    return math.floor(fraction * n + 0.5)


def keep_lowest(scores: Sequence[float], fraction: float) -> list[bool]:
    """Mask of the ``keep_count`` rows with the lowest scores (ties: earlier row first)."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])  # sorted() is stable
    keep = set(order[: keep_count(fraction, len(scores))])
    return [i in keep for i in range(len(scores))]


def keep_highest(scores: Sequence[float], fraction: float) -> list[bool]:
    """Mask of the ``keep_count`` rows with the highest scores (ties: earlier row first)."""
    return keep_lowest([-s for s in scores], fraction)


def ds_weight(valid_mean_loss: float, loss: float) -> float:
    """IWSI's DS weight: clip(Lbar_V / L, 0, 2); 0 when L = 0 (METHOD.md §4.4)."""
    if loss == 0.0:
        return 0.0
    return min(max(valid_mean_loss / loss, 0.0), DS_WEIGHT_MAX)


def ds_shift(weight: float) -> float:
    """Distance from the valid distribution: w if w > 1, else min(1 / w, 5) (w = 0 gives 5)."""
    if weight > 1.0:
        return weight
    return SHIFT_CAP if weight == 0.0 else min(1.0 / weight, SHIFT_CAP)


def lobass_score(initial_loss: float, reference_loss: float) -> float:
    """LoBaSS learnability S = (L0 - L1) / L0 (METHOD.md §5); higher is more learnable."""
    if initial_loss == 0.0:
        return 0.0
    return (initial_loss - reference_loss) / initial_loss


def majority(answers: Sequence[str | None]) -> str | None:
    """The most common parsable answer (ties: the one seen first), or None if none parsed."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


def distribution(values: Sequence[float]) -> dict[str, float | int | None]:
    """count, mean, std and quantiles of finite values, for the filter summary."""
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return {"count": 0}

    def q(p: float) -> float:
        pos = p * (len(finite) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return finite[lo] + (finite[hi] - finite[lo]) * (pos - lo)

    mean = math.fsum(finite) / len(finite)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / len(finite))
    return {"count": len(finite), "non_finite": len(values) - len(finite), "mean": mean, "std": std,
            "min": finite[0], "p10": q(0.1), "p25": q(0.25), "p50": q(0.5), "p75": q(0.75), "p90": q(0.9),
            "max": finite[-1]}


def canonical_answer(answer: str | None) -> str | None:
    """Numbers compare by value ('18', '18.0', '1,8' aside), other answers by normalised text."""
    if answer is None:
        return None
    try:
        value = float(answer.replace(",", ""))
        return str(int(value)) if value.is_integer() else repr(value)
    except ValueError:
        return " ".join(answer.lower().split())


def voted_samples(question: dict, texts: list[str], finish_reasons: list[str], checker) -> list[dict]:
    """The rows of one question's sampled answers: each kept when its answer is the majority's."""
    answers = [canonical_answer(checker.extract(t)) for t in texts]
    vote = majority(answers)
    gold = question.get("gold")
    agreement = sum(a == vote for a in answers) / len(answers) if vote else 0.0
    correct = None if gold is None or vote is None else canonical_answer(checker.extract(gold) or gold) == vote
    rows = []
    for k, (text, answer, finish) in enumerate(zip(texts, answers, finish_reasons, strict=True)):
        kept = vote is not None and answer == vote
        reason = ("" if kept else "no parsable answer among the samples" if vote is None
                  else "no parsable answer" if answer is None
                  else f"answer {answer} disagrees with majority {vote}")
        rows.append({"sample_id": f"{question['question_id']}#{k}", "question_id": question["question_id"],
                     "question": question["question"], "response": text, "finish_reason": finish, "answer": answer,
                     "majority": vote, "agreement": agreement, "majority_correct": correct, "kept": kept,
                     "reason": reason, "source": question["source"]})
    return rows
