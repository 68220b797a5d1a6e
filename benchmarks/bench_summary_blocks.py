"""The filter's passes after scoring, on synthetic scored rows: the driver's memory and the seconds they take with
the reader's blocks (about 1,500 rows) against ``stages.SUMMARY_BLOCK_ROWS``, side by side in one run.

Each case runs in a process of its own (a local Ray of 2 CPUs), so its RSS is its own: the scored rows are made
in the cluster (ifd sums, questions of 250 and responses of 400 characters), then the steps of
``jobs.filter.run_scored_filter`` after scoring run one by one (score columns, the keep cut and distributions,
the decisions, the counts, the three writers), the driver's RSS read after each (and its peak every 50 ms).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_summary_blocks.py --samples 100000,1000000 --json out.json

A second mode shows the cause: ``--passes`` runs twelve passes (``map_batches(...).take_all()``) over one
materialized dataset at two block counts and prints the driver's RSS after each.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

READER_BLOCK_ROWS = 1_500  # what the filter's reader hands on (shards of 64 MB, read a piece at a time)


def _ray(cpus: int = 2):
    import ray

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    return ray


class Watch:
    """The process's RSS in MB now (after a collection) and its peak, sampled every 50 ms."""

    def __init__(self) -> None:
        import psutil

        self.me, self.peak, self.stop = psutil.Process(), 0.0, threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            self.peak = max(self.peak, self.rss(collect=False))

    def rss(self, collect: bool = True) -> float:
        if collect:
            gc.collect()
        return self.me.memory_info().rss / 2**20


def scored_rows(batch):
    import numpy as np
    import pyarrow as pa

    ids = batch["id"]
    n, rng = len(ids), np.random.default_rng(int(ids[0]))
    t0, t1 = rng.integers(50, 300, n), rng.integers(50, 300, n)
    return pa.table({
        "order": ids, "source": ["samples.jsonl"] * n, "sample_id": [f"test-{i:07d}/x/0" for i in ids],
        "question": ["q" * 250] * n, "response": ["r" * 400] * n, "gold": [""] * n, "reject": [""] * n,
        "reject_stage": [""] * n, "sum_0": -t0 * rng.lognormal(0, 0.5, n), "tokens_0": t0,
        "sum_1": -t1 * rng.lognormal(0.3, 0.5, n), "tokens_1": t1})


def one_case(samples: int, block_rows: int, output: str) -> dict:
    """The filter's steps after scoring, as run_scored_filter runs them, with the scored set in blocks of
    ``block_rows`` (the reader's blocks, or SUMMARY_BLOCK_ROWS)."""
    from sapray.config import FilterConfig
    from sapray.dataplane import filtering, stages

    ray = _ray()
    cfg = FilterConfig(method="ifd", input="samples.jsonl", output=output)
    method, rule = filtering.scored_method(cfg), filtering.keep_rule(cfg)
    columns = filtering.SCORE_COLUMNS[cfg.method]
    ds = ray.data.range(samples, override_num_blocks=max(1, samples // READER_BLOCK_ROWS)).map_batches(
        scored_rows, batch_size=None).materialize()
    watch = Watch()
    base = last = watch.rss()
    watch.peak, steps, started = base, {}, time.monotonic()

    def step(name: str) -> None:
        nonlocal last
        now = watch.rss()
        steps[name] = round(now - last, 1)
        last = now

    bundle = None if block_rows == READER_BLOCK_ROWS else block_rows
    scored = ds.map_batches(filtering.ScoreColumns(method.score, columns, rule), batch_format="pyarrow",
                            batch_size=bundle).materialize()
    step("score columns")
    cut, _, _ = filtering.keep_summaries(scored, columns, rule)
    step("keep cut, distributions")
    decided = scored.map_batches(filtering.Decide(cfg, cut), batch_format="pyarrow").materialize()
    step("decide")
    decided.map_batches(filtering.count_outcomes, batch_format="pyarrow", batch_size=None).take_all()
    step("count")
    stages.write_folders(output, {
        "kept": (decided.map_batches(filtering.kept_messages, batch_format="pyarrow"), "jsonl"),
        "scores": (decided.map_batches(filtering.scores_table(columns), batch_format="pyarrow"), "parquet"),
        "rejects": (decided.map_batches(filtering.rejects_table, batch_format="pyarrow"), "jsonl")})
    step("writes")
    watch.stop.set()
    return {"samples": samples, "block_rows": block_rows, "blocks": scored.num_blocks(),
            "seconds": round(time.monotonic() - started, 1), "driver_mb_after": round(last - base, 1),
            "driver_mb_peak": round(watch.peak - base, 1), "steps_mb": steps}


def passes(blocks: int, rows: int = 1_000_000, n: int = 12) -> dict:
    """RSS over the first of ``n`` take_all passes over one dataset of ``blocks`` blocks, after each."""
    import numpy as np

    ray = _ray()
    ds = ray.data.range(rows, override_num_blocks=blocks).materialize()
    watch = Watch()
    base, after = watch.rss(), []
    for _ in range(n):
        ds.map_batches(lambda b: {"n": [len(b["id"])], "c": [np.zeros(300, np.int64)]}, batch_size=None).take_all()
        after.append(round(watch.rss() - base, 1))
    watch.stop.set()
    return {"blocks": blocks, "rows": rows, "mb_after_each_pass": after}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", default="100000,1000000")
    parser.add_argument("--passes", action="store_true", help="the cause: twelve passes at 67 and 667 blocks")
    parser.add_argument("--json", default=None, help="append this run to a JSON report")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # one case, in its own process
    args = parser.parse_args(argv)
    if args.case:
        kind, a, b = args.case.split(":")
        if kind == "tail":
            with tempfile.TemporaryDirectory() as out:
                print(json.dumps(one_case(int(a), int(b), out)))
        else:
            print(json.dumps(passes(int(a))))
        return 0

    from sapray.dataplane.stages import SUMMARY_BLOCK_ROWS

    cases = ([f"passes:{b}:0" for b in (67, 667)] if args.passes else
             [f"tail:{n}:{rows}" for n in map(int, args.samples.split(",")) for rows in (READER_BLOCK_ROWS,
                                                                                       SUMMARY_BLOCK_ROWS)])
    results = []
    for case in cases:
        done = subprocess.run([sys.executable, __file__, "--case", case], capture_output=True, text=True)
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        row = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(row)
        if args.passes:
            print(f"{row['blocks']:>4} blocks: driver RSS after each pass (MB over the start): "
                  + " ".join(map(str, row["mb_after_each_pass"])))
        else:
            print(f"{row['samples']:>9,} samples in blocks of {row['block_rows']:>6,} ({row['blocks']:>4} blocks): "
                  f"{row['seconds']:6.1f} s, driver +{row['driver_mb_after']:.0f} MB after, "
                  f"+{row['driver_mb_peak']:.0f} MB peak; by step {row['steps_mb']}")
    if not args.passes:
        for n in map(int, args.samples.split(",")):
            reader, summary = (r for r in results if r["samples"] == n)
            print(f"{n:,} samples: blocks of {SUMMARY_BLOCK_ROWS:,} / of {READER_BLOCK_ROWS:,}: "
                  f"{summary['seconds'] / reader['seconds']:.2f}x the seconds, "
                  f"{summary['driver_mb_peak'] / max(reader['driver_mb_peak'], 0.1):.2f}x the driver's peak growth")
    if args.json:
        path = Path(args.json)
        report = json.loads(path.read_text()) if path.exists() else {"runs": []}
        machine = f"{platform.machine()}, {os.cpu_count()} cores"
        report["runs"].append({"date": date.today().isoformat(), "machine": machine,
                               "command": " ".join(["benchmarks/bench_summary_blocks.py", *(argv or sys.argv[1:])]),
                               "results": results})
        path.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
