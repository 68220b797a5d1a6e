"""The data plane's own rate at scale: rehearsed sapray jobs (simulated engines) over real GSM8K text.

Each sample is a real (question, response) pair of GSM8K's six strategies (all 1,319 test questions x 6 =
7,914 samples; repeated, each copy its own sample id, to reach ``--samples``), as chat ``messages`` JSON lines.
The simulated engines (``--rehearse``) wait as the named device would; reading, validating, rendering the chat
template and tokenizing, moving blocks, the journal, deciding and writing are real. Cases (``--case``):

- ``filter``: ``ifd`` (two scoring requests a sample) once per ``--devices``; then the same command again on
  the same output, which finds every row in its journal: the seconds its journal takes to load
  (``rerun_find_place_s``), its wall time and the tokens it hands the engines (none). ``--time-scale`` below 1
  slows the engines, to see whether wall time follows them when they bound the run (``--shard-mb`` small
  enough that every actor gets blocks).
- ``kills``: a whole run, then the same filter killed (SIGKILL, its process group and every Ray process) once
  the journal holds k entries, for ``--kills`` k drawn by journal event (never by time), each run resuming the
  last, and a last run to the end: the share of tokens handed to the engines again, and whether kept/, scores/
  and rejects/ are byte for byte the whole run's.
- ``s3``: the filter (and its rerun) with input and output on the moto S3 server, its requests counted from
  the server's log by method.
- ``baseline``: the filter with a real engine (``--engine hf --model smollm2-tiny-random``) in this tree and in
  ``--tree`` (a checkout of another commit, e.g. the one before the row journal), then the simulated engine in
  both: samples per CPU-second of the whole job, journal files and bytes, like for like.
- ``generate``: ``sapray generate --rehearse`` over ``--samples`` questions (zero-shot, ``--max-tokens``), and
  the same command again (every shard already written).
- ``select``: ``sapray select --rehearse`` over a long candidate table of ``--samples`` questions x 6
  strategies (the read pass over every row, then the race over ``--max-questions``; ``--stop fixed``: all of
  them scored, so scoring dominates), and the same command again.

Reported: tokens handed to the engines per CPU-second of the data plane (every process of the job but the
simulated actors) and the engine actors' own host CPU, the driver's peak RSS, the journal's objects and bytes,
the wall times. Each job runs in a process of its own; the JSON (``--json``, appended to: one entry per
invocation) holds the machine, the date and the command.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_scale.py --samples 100000 --devices 8,32 \\
        --json benchmarks/results/bench_scale.json
    PYTHONPATH=. .venv/bin/python benchmarks/bench_scale.py --case kills --samples 20000 --kills 5
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXEMPLARS = ROOT / "sapray" / "data" / "gsm8k" / "exemplars_smollm2.jsonl"
BUCKET = "bench-scale"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true"}
CASES = ("filter", "kills", "s3", "baseline", "generate", "select")


def gsm8k(data: Path) -> tuple[list[dict], list[dict]]:
    from sapray.dataplane.gsm8k import load_six_strategies

    return load_six_strategies(data)


def samples_file(data: Path, n: int, out: Path) -> Path:
    questions, candidates = gsm8k(data)
    text = {q["question_id"]: q["question"] for q in questions}
    with out.open("w") as f:
        for k in range(n):
            c = candidates[k % len(candidates)]
            f.write(json.dumps({"messages": [{"role": "user", "content": text[c["question_id"]]},
                                             {"role": "assistant", "content": c["response"]}],
                                "sample_id": f"{c['question_id']}/{c['strategy']}/{k // len(candidates)}"}) + "\n")
    return out


def questions_and_candidates(data: Path, n: int, work: Path) -> tuple[Path, Path]:
    """``n`` questions (GSM8K's test set repeated, each copy its own id) and their six strategies' responses as
    one long table."""
    questions, candidates = gsm8k(data)
    by_question: dict[str, list[dict]] = {}
    for c in candidates:
        by_question.setdefault(c["question_id"], []).append(c)
    with (work / "questions.jsonl").open("w") as fq, (work / "candidates.jsonl").open("w") as fc:
        for k in range(n):
            q = questions[k % len(questions)]
            qid = f"{q['question_id']}/{k // len(questions)}"
            fq.write(json.dumps({**q, "question_id": qid}) + "\n")
            for c in by_question[q["question_id"]]:
                fc.write(json.dumps({**c, "question_id": qid}) + "\n")
    return work / "questions.jsonl", work / "candidates.jsonl"


def listed(uri: str) -> tuple[int, int]:
    """Objects and bytes under ``uri`` (a folder or a prefix)."""
    import pyarrow.fs as pafs

    from sapray.storage import filesystem

    fs, path = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    files = [i for i in infos if i.type == pafs.FileType.File]
    return len(files), sum(i.size for i in files)


def peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class RssTrace:
    """The driver's RSS every 0.2 s and the job's console lines on one clock (``--rss-trace``): which step of the
    job holds the memory that ``driver_peak_rss_mb`` reports."""

    def __init__(self, path: str) -> None:
        import threading

        import psutil

        from sapray.console import console

        self.path, self.started, self.samples, self.lines = path, time.monotonic(), [], []
        self.stop = threading.Event()
        me = psutil.Process()
        say = console.say

        def said(line: str) -> None:
            self.lines.append((round(time.monotonic() - self.started, 2), line))
            say(line)

        def sample() -> None:
            while not self.stop.wait(0.2):
                self.samples.append((round(time.monotonic() - self.started, 2), round(me.memory_info().rss / 2**20, 1)))

        console.say = said
        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()

    def mark(self, line: str) -> None:
        self.lines.append((round(time.monotonic() - self.started, 2), line))

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        Path(self.path).write_text(json.dumps({"rss_mb": self.samples, "lines": self.lines}) + "\n")


def one_filter(args: argparse.Namespace) -> dict:
    """In this process: one filter run (and with ``--rerun``, the same again), and what it measured."""
    from sapray.config import load_filter_config
    from sapray.jobs.filter import run_filter, write_filter
    from sapray.storage import child

    ray = {"batch_size": args.batch_size, "shard_mb": args.shard_mb}
    if args.journal_rows:  # the tree before the row journal has no such key
        ray["journal_rows"] = args.journal_rows
    raw = {"method": "ifd", "model": args.model, "input": args.input, "ifd": {"keep_fraction": 0.5}, "ray": ray,
           "output": args.output}
    rehearsal = None
    if args.engine == "sim":
        from sapray.dataplane.rehearsal import Rehearsal

        rehearsal = Rehearsal(args.device, args.one_devices, args.time_scale)
    else:
        raw["engine"] = args.engine
        ray["actors"] = args.one_devices
    cfg = load_filter_config(raw)
    from sapray.dataplane.rehearsal import TreeCpu

    trace = RssTrace(args.rss_trace) if args.rss_trace else None
    cpu, started = TreeCpu(), time.monotonic()
    result = run_filter(cfg, restart=args.restart, rehearsal=rehearsal)
    if trace:
        trace.mark("run_filter returned; writing summary.json and report.html")
    write_filter(result.output, result)
    if trace:
        trace.mark("written")
    journal = child(result.output, "journal")
    files, size = listed(journal)
    out = {"wall_s": round(time.monotonic() - started, 2), "job_cpu_s": round(sum(cpu.spent().values()), 2),
           **result.summary.get("rehearsal", {}), "counts": result.summary["counts"],
           "driver_peak_rss_mb": peak_rss_mb(), "journal_rows": args.journal_rows, "journal_files": files,
           "journal_bytes": size}
    if args.one_rerun:
        from sapray.dataplane.journal import RowJournal
        from sapray.jobs.filter import everywhere

        started = time.monotonic()  # what a rerun of ifd does before its stages start: its one pass's journal loaded
        found = everywhere([RowJournal(journal, "sums-score").load().column("order").to_numpy()])
        out.update(rerun_find_place_s=round(time.monotonic() - started, 3), rerun_rows_found=len(found))
        if not args.rerun_find_only:
            started = time.monotonic()
            again = run_filter(cfg, rehearsal=rehearsal)
            write_filter(again.output, again)
            out.update(rerun_wall_s=round(time.monotonic() - started, 1),
                       rerun_tokens=again.summary.get("rehearsal", {}).get("tokens"))
    if trace:
        trace.close()
    return out


def one_cli(args: argparse.Namespace) -> dict:
    """In this process: a ``sapray`` command (``--cli``, JSON list), then the rehearsal.json it wrote."""
    from sapray.cli import main
    from sapray.dataplane.rehearsal import TreeCpu

    cpu, started = TreeCpu(), time.monotonic()
    main(json.loads(args.cli), standalone_mode=False)
    measured = json.loads((Path(args.output) / "rehearsal" / "rehearsal.json").read_text())
    return {"wall_s": round(time.monotonic() - started, 2), "job_cpu_s": round(sum(cpu.spent().values()), 2),
            **measured, "driver_peak_rss_mb": peak_rss_mb()}


def one(args: argparse.Namespace, extra: list[str], tree: Path = ROOT, env: dict | None = None,
        log: Path | None = None) -> subprocess.Popen | dict:
    """Run one job in a process of its own (in ``tree``); with ``log``, started and returned unwaited."""
    cmd = [sys.executable, __file__, "--one", "--device", args.device, "--time-scale", str(args.time_scale),
           "--batch-size", str(args.batch_size), "--shard-mb", str(args.shard_mb), "--model", args.model, *extra]
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **(env or {}), "PYTHONPATH": str(tree)}
    if log:
        return subprocess.Popen(cmd, cwd=tree, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                start_new_session=True)
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tree, env=env)
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    # the job's line: the last JSON object printed (Ray may print after it)
    return json.loads(next(line for line in reversed(done.stdout.splitlines()) if line.startswith("{")))


def filter_flags(samples: Path, output: Path | str, devices: int, journal_rows: int | None, *more: str) -> list[str]:
    # 0: no ray.journal_rows key (the tree before the row journal has none)
    return ["--input", str(samples), "--output", str(output), "--one-devices", str(devices),
            "--journal-rows", str(journal_rows or 0), *more]


def traced(args: argparse.Namespace, work: Path, name: str) -> list[str]:
    return ["--rss-trace", str(work / f"rss-{name}.json")] if args.rss_trace else []


def kill_hard(proc: subprocess.Popen) -> None:
    """SIGKILL a job's process group and every process it started (Ray's run in sessions of their own)."""
    import psutil

    tree = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()


def case_filter(args: argparse.Namespace, work: Path, samples: Path) -> list[dict]:
    rows = []
    for devices in [int(d) for d in args.devices.split(",")]:
        row = {"samples": args.samples, "devices": devices, **one(args, filter_flags(
            samples, work / f"out-{devices}", devices, args.journal_rows, "--restart",
            *(["--one-rerun"] if args.rerun else []), *(["--rerun-find-only"] if args.rerun_find_only else []),
            *traced(args, work, f"filter-{devices}")))}
        rows.append(row)
        print(f"{devices:>3} x {args.device} (time scale {args.time_scale:g}): {row['tokens']:,} tokens, "
              f"{row['engine_actors']} actors, data plane {row['data_plane_cpu_s']:.1f} CPU-s = "
              f"{row['tokens_per_data_plane_cpu_s']:,} tokens/CPU-s, actors' hosts {row['engine_actors_cpu_s']:.1f} "
              f"CPU-s ({row['cores_per_device']} cores per device); driver peak RSS {row['driver_peak_rss_mb']:.0f} MB;"
              f" journal {row['journal_files']} files, {row['journal_bytes']:,} bytes; wall {row['wall_s']:.1f} s, "
              f"engines {row['projection']['bounds_s']['engines']} s; rerun: {row.get('rerun_rows_found')} rows "
              f"found in {row.get('rerun_find_place_s')} s, {row.get('rerun_tokens')} tokens, wall "
              f"{row.get('rerun_wall_s')} s", flush=True)
    return rows


def case_kills(args: argparse.Namespace, work: Path, samples: Path) -> list[dict]:
    devices = int(args.devices.split(",")[0])
    whole = one(args, filter_flags(samples, work / "whole", devices, args.journal_rows, "--restart"))
    out = work / "killed"
    journal = out / "rehearsal" / "journal"
    # the simulated engines' stats of the killed run, where its Meter put them (sapray.dataplane.rehearsal.Meter)
    stats = Path(tempfile.gettempdir()) / f"sapray-rehearsal-{hashlib.sha256(str(out).encode()).hexdigest()[:12]}"
    events = sorted(random.Random(args.seed).sample(range(1, args.samples // args.journal_rows - 1), args.kills))
    killed = []
    for k, at in enumerate(events):
        log = work / f"killed-{k}.log"
        proc = one(args, filter_flags(samples, out, devices, args.journal_rows), log=log)
        while len(list(journal.glob("sums-score-*.parquet"))) < at:  # the event, polled: never a time
            if proc.poll() is not None:
                sys.exit(f"the run ended before journal entry {at}:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        kill_hard(proc)
        # tokens its engines finished (a call in flight at the kill is not counted: a slight undercount)
        tokens = sum(e["scored"] + e["prompt"] + e["generated"]
                     for e in map(json.loads, (p.read_text() for p in stats.glob("*.json"))))
        killed.append({"at_entry": at, "tokens": tokens})
        print(f"killed at journal entry {at}: {tokens:,} tokens handed to the engines", flush=True)
    last = one(args, filter_flags(samples, out, devices, args.journal_rows))
    redone = sum(k["tokens"] for k in killed) + last["tokens"] - whole["tokens"]
    same = all((work / "whole" / "rehearsal" / p.relative_to(out / "rehearsal")).read_bytes() == p.read_bytes()
               for folder in ("kept", "scores", "rejects") for p in (out / "rehearsal" / folder).rglob("*")
               if p.is_file() and not p.name.startswith("."))
    row = {"samples": args.samples, "devices": devices, "kills": killed, "whole_tokens": whole["tokens"],
           "last_run_tokens": last["tokens"], "redone_tokens": redone,
           "redone_share": round(redone / whole["tokens"], 4), "outputs_identical": same,
           "journal_files": last["journal_files"], "journal_bytes": last["journal_bytes"]}
    print(f"{args.kills} kills at {events}: {redone:,} of {whole['tokens']:,} tokens again "
          f"({100 * row['redone_share']:.2f}%); outputs byte-identical: {same}", flush=True)
    return [row]


def moto(work: Path) -> tuple[subprocess.Popen, str, Path]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = work / "moto.log"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}", log


def requests(log: Path, start: int) -> dict[str, int]:
    """S3 requests in the moto server's log after byte ``start``, by HTTP method."""
    counts: dict[str, int] = {}
    for method in re.findall(r'"(GET|PUT|POST|HEAD|DELETE) ', log.read_text()[start:]):
        counts[method] = counts.get(method, 0) + 1
    return counts


def case_s3(args: argparse.Namespace, work: Path, samples: Path) -> list[dict]:
    import pyarrow.fs as pafs

    server, endpoint, log = moto(work)
    try:
        env = {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}
        os.environ.update(env)
        fs = pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                               endpoint_override=endpoint.removeprefix("http://"), scheme="http",
                               allow_bucket_creation=True)
        fs.create_dir(BUCKET)
        with fs.open_output_stream(f"{BUCKET}/in/samples.jsonl") as f:
            f.write(samples.read_bytes())
        start = log.stat().st_size
        devices = int(args.devices.split(",")[0])
        row = one(args, filter_flags(f"s3://{BUCKET}/in/samples.jsonl", f"s3://{BUCKET}/out", devices,
                                     args.journal_rows, "--restart", "--one-rerun"), env=env)
        row = {"samples": args.samples, "devices": devices, **row, "s3_requests": requests(log, start)}
    finally:
        server.terminate()
        server.wait()
    print(f"S3: {row['tokens']:,} tokens, {row['tokens_per_data_plane_cpu_s']:,} tokens/CPU-s; journal "
          f"{row['journal_files']} objects, {row['journal_bytes']:,} bytes; S3 requests (run and rerun) "
          f"{row['s3_requests']}; rerun found {row['rerun_rows_found']} rows in {row['rerun_find_place_s']} s",
          flush=True)
    return [row]


def case_baseline(args: argparse.Namespace, work: Path, samples: Path) -> list[dict]:
    rows = []
    for engine in ("hf", "sim"):
        for tree in (Path(args.tree), ROOT):
            journal_rows = args.journal_rows if tree == ROOT else None
            model = args.model if engine == "hf" else "smollm2"
            flags = filter_flags(samples, work / f"{tree.name}-{engine}", 1 if engine == "hf" else 8, journal_rows,
                                 "--restart", "--engine", engine, "--model", model)
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=tree).stdout.strip()
            row = {"samples": args.samples, "tree": commit, "engine": engine, "model": model, **one(args, flags, tree)}
            row["samples_per_job_cpu_s"] = round(args.samples / row["job_cpu_s"], 1)
            rows.append(row)
            print(f"{commit} {engine} {model}: wall {row['wall_s']} s, job {row['job_cpu_s']} CPU-s "
                  f"({row['samples_per_job_cpu_s']} samples per CPU-s), driver peak RSS {row['driver_peak_rss_mb']} "
                  f"MB, journal {row['journal_files']} files, {row['journal_bytes']:,} bytes", flush=True)
    return rows


def case_cli(args: argparse.Namespace, work: Path) -> list[dict]:
    import yaml

    questions, candidates = questions_and_candidates(Path(args.data), args.samples, work)
    config = {"model": args.model, "exemplars": {"file": str(EXEMPLARS)},
              "ray": {"batch_size": args.batch_size, "shard_mb": args.shard_mb}, "output": str(work / "run"),
              "generate": {"output": str(work / "train")}}
    if args.case == "generate":
        config["data"] = {"questions": str(questions)}
        config["strategies"] = [{"name": "zero_shot", "teacher": {"kind": "hf", "model": args.model},
                                 "prompt": "{question}", "max_tokens": args.max_tokens}]
        command = ["generate", "--strategy", "zero_shot"]
        journal = work / "train" / "rehearsal"
    else:
        config["data"] = {"questions": str(questions), "candidates": str(candidates)}
        config["sample"] = {"max_questions": args.max_questions, "stop": args.stop}
        command = ["select"]
        journal = work / "run" / "rehearsal" / "journal"
    (work / "job.yaml").write_text(yaml.safe_dump(config))
    what = "training set" if args.case == "generate" else "journal"
    rows = []
    for run in ("first", "again") if args.rerun else ("first",):
        cli = [*command, "--config", str(work / "job.yaml"), "--rehearse", args.device,
               "--devices", args.devices.split(",")[0], "--time-scale", str(args.time_scale)]
        row = one(args, ["--cli", json.dumps(cli), "--output", str(work / "run")])
        files, size = listed(str(journal))
        rows.append({"samples": args.samples, "run": run, **row, "journal_files": files, "journal_bytes": size})
        print(f"{args.case} ({run}): {row['tokens']:,} tokens, data plane {row['data_plane_cpu_s']} CPU-s = "
              f"{row['tokens_per_data_plane_cpu_s']} tokens/CPU-s, actors' hosts {row['engine_actors_cpu_s']} CPU-s;"
              f" driver peak RSS {row['driver_peak_rss_mb']} MB; {what} {files} files, "
              f"{size:,} bytes; wall {row['wall_s']} s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=CASES, default="filter")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gsm8k"),
                        help="openai/grade-school-math files (test.jsonl, test_socratic.jsonl, "
                        "example_model_solutions.jsonl)")
    parser.add_argument("--samples", type=int, default=7914, help="samples (generate, select: questions)")
    parser.add_argument("--devices", default="8", help="simulated devices, comma-separated (kills, s3, generate, "
                        "select: the first)")
    parser.add_argument("--device", default="h200-llama3-8b")
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shard-mb", type=float, default=1.0)
    parser.add_argument("--journal-rows", type=int, default=1000)
    parser.add_argument("--model", default="smollm2", help="the target (baseline's hf runs: e.g. smollm2-tiny-random)")
    parser.add_argument("--rerun", action=argparse.BooleanOptionalAction, default=True,
                        help="run the same command again on the same output")
    parser.add_argument("--rerun-find-only", action="store_true",
                        help="filter: the rerun only loads its journal and finds its place (a 1M-row rerun's whole "
                        "pass takes as long as the reading of the run)")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=40, help="kills: draws the journal events")
    parser.add_argument("--tree", help="baseline: another checkout's root (e.g. a git worktree of 8dcfd52)")
    parser.add_argument("--max-tokens", type=int, default=256, help="generate: the answers' limit")
    parser.add_argument("--max-questions", type=int, default=200, help="select: the race's sample")
    parser.add_argument("--stop", choices=("confident", "fixed"), default="confident",
                        help="select: sample.stop (fixed: every question of the sample scored, no loser dropped, so "
                        "scoring dominates and its rate is select's own)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--rss-trace", nargs="?", const="yes", default=None,
                        help="filter: the driver's RSS over time beside the job's console lines, rss-*.json in the "
                        "work folder")
    parser.add_argument("--json", default=None, help="also append the results here")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a single job, in this process
    for hidden in ("--input", "--output", "--cli", "--engine"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--one-devices", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--restart", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one-rerun", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        args.engine = args.engine or "sim"
        print(json.dumps(one_cli(args) if args.cli else one_filter(args)))
        return
    if not (Path(args.data) / "test.jsonl").exists():
        parser.error(f"no GSM8K files in {args.data}: give --data")
    if args.case == "baseline" and not args.tree:
        parser.error("--case baseline needs --tree")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_scale-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.case in ("generate", "select"):
        results = case_cli(args, work)
    else:
        samples = samples_file(Path(args.data), args.samples, work / "samples.jsonl")
        results = {"filter": case_filter, "kills": case_kills, "s3": case_s3,
                   "baseline": case_baseline}[args.case](args, work, samples)
    entry = {"case": args.case, "date": datetime.date.today().isoformat(),
             "command": " ".join(["benchmarks/bench_scale.py", *sys.argv[1:]]),
             "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
             "results": results}
    if args.json:
        path = Path(args.json)
        report = json.loads(path.read_text()) if path.exists() else {"runs": []}
        report["runs"].append(entry)
        path.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
