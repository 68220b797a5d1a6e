"""Answer checking (METHOD.md §6): extract a final answer and compare it with the gold one.

Checkers: ``gsm8k`` (numbers), ``choice`` (a multiple-choice letter), ``exact`` (normalised text)
and ``regex`` (a user pattern whose first group, or whole match, is the answer). Extraction that
finds nothing returns ``None`` so callers can count unparsable rows instead of dropping them.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass

NUMBER = r"-?\d[\d,]*(?:\.\d+)?"
_GSM8K_MARKERS = (
    re.compile(rf"####\s*\$?\s*({NUMBER})"),
    re.compile(rf"final answer\s*(?:is)?\s*[:=]?\s*\$?\s*({NUMBER})", re.IGNORECASE),
    re.compile(rf"(?:^|\n)\s*A:\s*\$?\s*({NUMBER})"),
    re.compile(rf"answer is\s*[:=]?\s*\$?\s*({NUMBER})", re.IGNORECASE),
)
_LETTER = re.compile(r"\b(?:answer is|answer:)\s*\(?([A-J])\)?", re.IGNORECASE)
_LONE_LETTER = re.compile(r"\(([A-J])\)|\b([A-J])\b")


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").replace("$", "").rstrip("."))
    except ValueError:
        return None


def extract_gsm8k(text: str) -> str | None:
    """The number after '####', 'Final Answer:', 'A:' or 'answer is', else the last number."""
    for pattern in _GSM8K_MARKERS:
        found = pattern.findall(text)
        if found:
            return found[-1].replace(",", "")
    numbers = re.findall(NUMBER, text)
    return numbers[-1].replace(",", "").rstrip(".") if numbers else None


def extract_choice(text: str) -> str | None:
    found = _LETTER.findall(text)
    if found:
        return found[-1].upper()
    lone = _LONE_LETTER.findall(text)
    return (lone[-1][0] or lone[-1][1]).upper() if lone else None


def normalise(text: str) -> str:
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


def same_number(a: str, b: str) -> bool:
    x, y = _number(a), _number(b)
    return x is not None and y is not None and abs(x - y) < 1e-6


@dataclass(frozen=True)
class AnswerChecker:
    """Extracts an answer from a response and says whether it matches the gold answer."""

    name: str
    extract: Callable[[str], str | None]
    equal: Callable[[str, str], bool]

    def check(self, response: str, gold: str) -> bool | None:
        """True or False, or None when the response has no parsable answer."""
        answer = self.extract(response)
        if answer is None:
            return None
        expected = self.extract(gold) if self.name != "exact" else gold
        return self.equal(answer, expected if expected is not None else gold)


def make_checker(name: str, pattern: str | None = None) -> AnswerChecker:
    if name == "gsm8k":
        return AnswerChecker("gsm8k", extract_gsm8k, same_number)
    if name == "choice":
        return AnswerChecker("choice", extract_choice, lambda a, b: a.upper() == b.strip().upper())
    if name == "exact":
        return AnswerChecker("exact", lambda t: t, lambda a, b: normalise(a) == normalise(b))
    if name == "regex":
        if not pattern:
            raise ValueError("the regex checker needs a pattern")
        compiled = re.compile(pattern)

        def extract(text: str) -> str | None:
            found = list(compiled.finditer(text))
            if not found:
                return None
            last = found[-1]
            return last.group(1) if compiled.groups else last.group(0)

        return AnswerChecker("regex", extract, lambda a, b: normalise(a) == normalise(b))
    raise ValueError(f"unknown answer checker {name!r}: gsm8k, choice, exact, regex")
