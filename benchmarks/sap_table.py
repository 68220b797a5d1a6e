"""Per-question SAP of all 1,319 GSM8K test questions x 6 real strategies, for the race replay.

Runs sapray's own selection once, with the fixed design over every question, SAP only, the hf
engine and the demo's exemplar mining, and keeps the small per-question table that
``benchmarks/bench_race.py`` replays without a model:

    PYTHONPATH=. .venv/bin/python benchmarks/sap_table.py --data ../shared/data/gsm8k \
        --out benchmarks/data/gsm8k_sap_smollm2.parquet

About 1.8M tokens to score: on the 2-core development machine this runs for about an hour.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from importlib import resources
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sapray.config import load_config
from sapray.gsm8k import load_six_strategies
from sapray.report import write_outputs
from sapray.select import run_select


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/gsm8k", help="openai/grade-school-math files")
    parser.add_argument("--out", default="benchmarks/data/gsm8k_sap_smollm2.parquet")
    parser.add_argument("--questions", type=int, default=None, help="only the first N questions (a trial)")
    parser.add_argument("--actors", type=int, default=2)
    args = parser.parse_args()

    questions, candidates = load_six_strategies(Path(args.data))
    if args.questions:
        keep = {q["question_id"] for q in questions[: args.questions]}
        questions = [q for q in questions if q["question_id"] in keep]
        candidates = [c for c in candidates if c["question_id"] in keep]
    work = Path(tempfile.mkdtemp(prefix="sap_table_"))
    for name, rows in (("questions", questions), ("candidates", candidates)):
        (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pool = resources.files("sapray") / "data" / "gsm8k" / "pool.jsonl"
    cfg = load_config({
        "model": "smollm2", "engine": "hf", "metrics": ["sap"],
        "data": {"questions": str(work / "questions.jsonl"), "candidates": str(work / "candidates.jsonl")},
        "sample": {"stop": "fixed", "max_questions": len(questions), "round_size": 100, "seed": 0},
        # the demo's mining: the same pool, size and token limit
        "exemplars": {"pool": str(pool), "pool_size": 32, "max_tokens": 192, "n": 3},
        "ray": {"actors": args.actors, "batch_size": 18},
        "bootstrap": 0,
        "output": str(work / "select"),
    })
    started = time.monotonic()
    result = run_select(cfg, on_round=print)
    write_outputs(cfg.output, result, cfg.model_dump())
    columns = ("question_id", "strategy", "sap", "length", "context_tokens_sap", "scored_tokens", "exemplar_ids")
    table = pa.Table.from_pylist([{k: s[k] for k in columns} for s in result.scores])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.out)
    print(f"{len(result.scores)} scores, {sum(s['scored_tokens'] for s in result.scores)} tokens in "
          f"{time.monotonic() - started:.0f} s -> {args.out} (full outputs in {cfg.output})")
    print(f"exemplars: {result.summary['exemplars']}")


if __name__ == "__main__":
    main()
