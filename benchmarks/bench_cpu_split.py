"""How to split a CPU machine's cores between engine actors: one actor per core, or one actor on all.

Scores the same fixed SAP-only selection (the demo's data and exemplars, hf engine) with each split,
interleaved (A B A B ...) in one process on one local Ray, and prints the scoring times and their
ratio. ``sapray.dataplane.placement`` picks the default for machines without GPUs from this measurement:

    PYTHONPATH=. .venv/bin/python benchmarks/bench_cpu_split.py --questions 20 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

from sapray.cli import demo_config
from sapray.config import load_config
from sapray.dataplane.raydata import init_ray
from sapray.jobs.select import run_select


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    splits = {f"{cores} actors x 1 thread": (cores, 1), f"1 actor x {cores} threads": (1, cores)}
    times: dict[str, list[float]] = {name: [] for name in splits}
    with tempfile.TemporaryDirectory() as out:
        for repeat in range(args.repeats):
            for name, (actors, threads) in splits.items():
                raw = demo_config()
                raw.update(engine=args.engine, output=out)
                raw["sample"] = {"stop": "fixed", "max_questions": args.questions, "round_size": args.questions}
                raw["ray"] = {"actors": actors, "num_cpus_per_actor": threads, "batch_size": 18}
                raw["bootstrap"] = 0
                cfg = load_config(raw)
                init_ray(cfg.ray)
                result = run_select(cfg)
                times[name].append(result.timings["scoring_s"])
                print(f"repeat {repeat}: {name}: scoring {result.timings['scoring_s']:.1f} s "
                      f"({result.counts['scored']} candidates)", flush=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    first, second = medians
    print(f"\nmedian scoring time on {cores} cores, {args.questions} questions x 6 strategies, {args.engine}:")
    for name, m in medians.items():
        print(f"  {name}: {m:.1f} s")
    print(f"  ratio ({second}) / ({first}): {medians[second] / medians[first]:.2f}")


if __name__ == "__main__":
    main()
