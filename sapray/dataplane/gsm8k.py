"""GSM8K's six real response strategies (METHOD.md §7) as sapray's long candidate table."""

from __future__ import annotations

import json
from pathlib import Path

GPT3_SYSTEMS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
STRATEGIES = ("human", "socratic", *GPT3_SYSTEMS)


def gold_number(answer: str) -> str:
    """The final answer of a GSM8K solution: the text after '####'."""
    return answer.split("####")[-1].strip()


def train_questions(source: Path) -> list[dict]:
    """GSM8K's training questions as question_id (``train-NNNN``, the file's row), question, gold."""
    with (source / "train.jsonl").open() as f:
        rows = [json.loads(line) for line in f]
    return [{"question_id": f"train-{i:04d}", "question": r["question"], "gold": gold_number(r["answer"])}
            for i, r in enumerate(rows)]


def load_six_strategies(source: Path) -> tuple[list[dict], list[dict]]:
    """Read openai/grade-school-math files into (questions, candidates) rows.

    questions: question_id, question, gold. candidates: question_id, strategy, response.
    """
    tests = [json.loads(line) for line in (source / "test.jsonl").open()]
    socratic = [json.loads(line) for line in (source / "test_socratic.jsonl").open()]
    models = [json.loads(line) for line in (source / "example_model_solutions.jsonl").open()]
    questions, candidates = [], []
    for i, (test, soc, model) in enumerate(zip(tests, socratic, models, strict=True)):
        if not (test["question"] == soc["question"] == model["question"]):
            raise ValueError(f"GSM8K files disagree on question {i}")
        qid = f"test-{i:04d}"
        questions.append({"question_id": qid, "question": test["question"], "gold": gold_number(test["answer"])})
        candidates.append({"question_id": qid, "strategy": "human", "response": model["ground_truth"]})
        candidates.append({"question_id": qid, "strategy": "socratic", "response": soc["answer"]})
        for system in GPT3_SYSTEMS:
            candidates.append({"question_id": qid, "strategy": system, "response": model[system]["solution"]})
    return questions, candidates
