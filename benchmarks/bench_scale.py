"""The data plane's own rate: a rehearsed ``sapray filter`` (simulated engines) over real GSM8K responses.

Each sample is a real (question, response) pair of GSM8K's six strategies (all 1,319 test questions x 6 =
7,914 samples; repeated, each copy its own sample id, to reach ``--samples``), as chat ``messages`` JSON lines.
The filter (``ifd``: two scoring requests per sample) runs whole in the cluster with ``--devices`` simulated
engines at the named device's rates (``sapray filter --rehearse``): reading, validating, rendering the chat
template and tokenizing, moving blocks, the journal, deciding and writing are real; the forward passes are
not. It reports the tokens handed to the engines per CPU-second of the data plane (every process of the job
but the simulated actors), the cores that feed one device at its scoring rate, the driver's peak RSS,
the journal's files and bytes once merged, and the wall time; then the same command again on the same output,
which finds every row in the journal: the seconds its journal takes to load (``rerun_find_place_s``: read the
entries, find the rows journaled in every pass), the rerun's whole wall time and the tokens it hands the engines
(none). Each configuration runs in a process of its own.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_scale.py --samples 7914 --devices 1,8 \\
        --json benchmarks/results/bench_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def samples_file(data: Path, n: int, out: Path) -> Path:
    from sapray.dataplane.gsm8k import load_six_strategies

    questions, candidates = load_six_strategies(data)
    text = {q["question_id"]: q["question"] for q in questions}
    with out.open("w") as f:
        for k in range(n):
            c = candidates[k % len(candidates)]
            f.write(json.dumps({"messages": [{"role": "user", "content": text[c["question_id"]]},
                                             {"role": "assistant", "content": c["response"]}],
                                "sample_id": f"{c['question_id']}/{c['strategy']}/{k // len(candidates)}"}) + "\n")
    return out


def one_run(args: argparse.Namespace) -> dict:
    """In this process: the rehearsed filter, and what it measured."""
    import resource
    import time

    from sapray.config import load_filter_config
    from sapray.dataplane.journal import RowJournal
    from sapray.dataplane.rehearsal import Rehearsal
    from sapray.jobs.filter import everywhere, run_filter, write_filter

    cfg = load_filter_config({"method": "ifd", "input": args.input, "ifd": {"keep_fraction": 0.5},
                              "ray": {"batch_size": args.batch_size, "shard_mb": args.shard_mb,
                                      "journal_rows": args.journal_rows},
                              "output": args.output})
    rehearsal = Rehearsal(args.device, args.one_devices, args.time_scale)
    result = run_filter(cfg, restart=True, rehearsal=rehearsal)
    write_filter(result.output, result)
    journal = [p for p in (Path(result.output) / "journal").rglob("*") if p.is_file()]
    peak_rss = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    started = time.monotonic()  # what a rerun of ifd does before its stages start: its one pass's journal loaded
    found = everywhere([RowJournal(str(Path(result.output) / "journal"), "sums-score").load().column("order")
                        .to_numpy()])
    find_place_s = time.monotonic() - started
    started = time.monotonic()
    again = run_filter(cfg, rehearsal=rehearsal)
    write_filter(again.output, again)
    return {**result.summary["rehearsal"], "counts": result.summary["counts"], "driver_peak_rss_mb": peak_rss,
            "journal_rows": args.journal_rows, "journal_files": len(journal),
            "journal_bytes": sum(p.stat().st_size for p in journal), "rerun_rows_found": len(found),
            "rerun_find_place_s": round(find_place_s, 3), "rerun_wall_s": round(time.monotonic() - started, 1),
            "rerun_tokens": again.summary["rehearsal"]["tokens"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gsm8k"),
                        help="openai/grade-school-math files (test.jsonl, test_socratic.jsonl, "
                        "example_model_solutions.jsonl)")
    parser.add_argument("--samples", type=int, default=7914)
    parser.add_argument("--devices", default="1,8", help="simulated devices, comma-separated")
    parser.add_argument("--device", default="h200-llama3-8b")
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shard-mb", type=float, default=1.0)
    parser.add_argument("--journal-rows", type=int, default=1000)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a single run, in this process
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--one-devices", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args)))
        return
    if not (Path(args.data) / "test.jsonl").exists():
        parser.error(f"no GSM8K files in {args.data}: give --data")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_scale-"))
    work.mkdir(parents=True, exist_ok=True)
    samples = samples_file(Path(args.data), args.samples, work / "samples.jsonl")
    results = []
    for devices in [int(d) for d in args.devices.split(",")]:
        cmd = [sys.executable, __file__, "--one", "--input", str(samples), "--output", str(work / f"out-{devices}"),
               "--one-devices", str(devices), "--device", args.device, "--time-scale", str(args.time_scale),
               "--batch-size", str(args.batch_size), "--shard-mb", str(args.shard_mb),
               "--journal-rows", str(args.journal_rows)]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        if done.returncode:
            sys.exit(done.stderr[-3000:])
        row = {"samples": args.samples, "devices": devices, **json.loads(done.stdout.strip().splitlines()[-1])}
        results.append(row)
        print(f"{devices:>3} x {args.device}: {row['tokens']:,} tokens, data plane {row['data_plane_cpu_s']:.1f} CPU-s "
              f"= {row['tokens_per_data_plane_cpu_s']:,} tokens/CPU-s ({row['cores_per_device']} cores per device); "
              f"driver {row['driver_cpu_s']:.1f} CPU-s, peak RSS {row['driver_peak_rss_mb']:.0f} MB; journal "
              f"{row['journal_files']} files, {row['journal_bytes']:,} bytes; wall {row['wall_s']:.1f} s; projected "
              f"{row['projection']['wall_s']} s ({row['projection']['bound_by']}); rerun: {row['rerun_rows_found']:,} "
              f"rows found in {row['rerun_find_place_s']} s, {row['rerun_tokens']} tokens scored, wall "
              f"{row['rerun_wall_s']} s", flush=True)
    report = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
