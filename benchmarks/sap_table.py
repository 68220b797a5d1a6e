"""Per-question SAP of all 1,319 GSM8K test questions x 6 real strategies, for the race replay.

Runs sapray's own selection once, with the fixed design over every question, SAP only, the hf
engine and the demo's shipped, checked-correct exemplars, and keeps the small per-question table that
``benchmarks/bench_race.py`` replays without a model:

    PYTHONPATH=. .venv/bin/python benchmarks/sap_table.py --data ../shared/data/gsm8k \
        --out benchmarks/data/gsm8k_sap_smollm2.parquet

About 1.8M tokens to score, in resumable chunks (rerun the same command to go on); on the
2-core development machine about an hour when nothing else runs.
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sapray.config import load_config
from sapray.dataplane.gsm8k import load_six_strategies
from sapray.jobs.select import run_select, write_selection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/gsm8k", help="openai/grade-school-math files")
    parser.add_argument("--out", default="benchmarks/data/gsm8k_sap_smollm2.parquet")
    parser.add_argument("--parts", default="benchmarks/data/gsm8k_sap_smollm2_parts",
                        help="finished chunks (small; kept, so a rerun resumes)")
    parser.add_argument("--work", default="runs/sap_table", help="each chunk's full selection outputs")
    parser.add_argument("--chunk", type=int, default=100, help="questions per resumable chunk")
    parser.add_argument("--actors", type=int, default=2)
    args = parser.parse_args()

    questions, candidates = load_six_strategies(Path(args.data))
    work, parts_dir = Path(args.work), Path(args.parts)
    work.mkdir(parents=True, exist_ok=True)
    parts_dir.mkdir(parents=True, exist_ok=True)
    exemplars = resources.files("sapray") / "data" / "gsm8k" / "exemplars_smollm2.jsonl"
    started = time.monotonic()
    for start in range(0, len(questions), args.chunk):
        part = parts_dir / f"part-{start // args.chunk:03d}.parquet"
        if part.exists():
            continue
        chunk = questions[start:start + args.chunk]
        keep = {q["question_id"] for q in chunk}
        folder = work / f"chunk-{start // args.chunk:03d}"
        folder.mkdir(exist_ok=True)
        for name, rows in (("questions", chunk), ("candidates", [c for c in candidates if c["question_id"] in keep])):
            (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        cfg = load_config({
            "model": "smollm2", "engine": "hf", "metrics": ["sap"],
            "data": {"questions": str(folder / "questions.jsonl"), "candidates": str(folder / "candidates.jsonl")},
            "sample": {"stop": "fixed", "max_questions": len(chunk), "round_size": len(chunk), "seed": 0},
            "exemplars": {"file": str(exemplars), "n": 3},
            "ray": {"actors": args.actors, "batch_size": 18}, "bootstrap": 0,
            "output": str(folder / "select"),
        })
        result = run_select(cfg)
        write_selection(cfg.output, result, cfg.model_dump())
        columns = ("question_id", "strategy", "sap", "length", "context_tokens_sap", "scored_tokens", "exemplar_ids")
        pq.write_table(pa.Table.from_pylist([{k: s[k] for k in columns} for s in result.scores]), part)
        print(f"chunk {start // args.chunk}: {len(result.scores)} scores in {result.timings['total_s']:.0f} s "
              f"({time.monotonic() - started:.0f} s so far)", flush=True)
    parts = sorted(parts_dir.glob("part-*.parquet"))
    table = pa.concat_tables([pq.read_table(p) for p in parts])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.out)
    print(f"{table.num_rows} scores from {len(parts)} chunks -> {args.out}")


if __name__ == "__main__":
    main()
