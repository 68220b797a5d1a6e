"""Plain helpers several test modules share (fixtures are in conftest.py): writing JSON lines, and the
small select job of test_select.py (3 questions in rounds of 2; the 135M model unless a test names another, as
test_select does the tiny random-weight one) built and run in-process."""

from __future__ import annotations

import json
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data" / "gsm8k_first20"


def write_jsonl(path: Path, rows: list) -> str:
    """Rows (dicts, or strings written as they are) one a line; returns the path as a string."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def base_config(exemplar_file: str, output: str, **changes) -> dict:
    """test_select's job config; ``changes`` set dotted keys (``**{"ray.actors": 2}``)."""
    cfg = {
        "model": "smollm2",
        "engine": "hf",
        "data": {"questions": str(DATA_DIR / "questions.jsonl"), "candidates": str(DATA_DIR / "candidates.jsonl")},
        "sample": {"max_questions": 3, "round_size": 2, "seed": 7},
        "exemplars": {"file": exemplar_file, "n": 3},
        "ray": {"actors": 1, "batch_size": 18},
        "bootstrap": 200,
        "output": output,
    }
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return cfg


def run(raw: dict):
    """``sapray select`` in this process: the config validated, the job run, its outputs written."""
    from sapray.config import load_config
    from sapray.jobs.select import run_select, write_selection

    cfg = load_config(raw)
    result = run_select(cfg)
    write_selection(cfg.output, result, cfg.model_dump())
    return result
