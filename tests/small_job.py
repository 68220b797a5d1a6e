"""A tiny select job for the cluster, object-store and report tests: 2 questions x 6 strategies x 3
contexts, hf engine, a supplied exemplar file (no mining): 36 scoring requests in two rounds, scored by
the tiny random-weight model (these tests check where things run and what is written, not SAP)."""

from __future__ import annotations

import json
from pathlib import Path

from sapray.engines.models import TINY_RANDOM

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "tests" / "data" / "gsm8k_first20"
POOL = REPO / "sapray" / "data" / "gsm8k" / "pool.jsonl"


def exemplar_rows() -> list[dict]:
    """Four fixed exemplars (answers to train-set questions, not to any test question)."""
    with POOL.open(encoding="utf-8") as f:
        pool = [json.loads(line) for line in f if line.strip()][:4]
    return [{"exemplar_id": f"ex-{i}", "question_id": q["question_id"],
             "text": f"We compute step by step and get {q['gold']}.\nA: {q['gold']}"} for i, q in enumerate(pool)]


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def small_config(questions: str, candidates: str, exemplars: str, output: str) -> dict:
    return {
        "model": TINY_RANDOM,
        "engine": "hf",
        "data": {"questions": questions, "candidates": candidates},
        "sample": {"max_questions": 2, "round_size": 1, "seed": 7},
        "exemplars": {"file": exemplars, "n": 3},
        # one question's 18 requests per block: its SAP and PPL contexts are computed once (hf shares them)
        "ray": {"actors": 1, "batch_size": 18, "num_cpus_per_actor": 1, "num_gpus_per_actor": 0},
        "bootstrap": 200,
        "output": output,
    }
