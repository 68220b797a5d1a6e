"""Data-plane benchmark: driver peak RSS and rows/s of the whole-dataset jobs as their input grows.

The model is ``smollm2-tiny-random`` (``sapray.engines.models``: a random-weight Llama of two layers of width
64 with the embedded SmolLM2 tokenizer and vocabulary, built once), handed to the jobs as its
directory, so that a baseline checkout runs it too, and what is measured is the
data plane (reading, validating, tokenizing, moving rows and scores, deciding, writing) rather than
the model. Inputs are synthetic question/response rows written here as JSON lines.

Each run is its own process, so its peak RSS (``ru_maxrss``) is that job's driver alone; Ray's
workers and actors are other processes. "now" runs this checkout; "before" runs the same job from a
git worktree of ``--baseline`` (the commit before the job moved into the cluster) with the same
Python environment, in the same invocation, so the two columns are measured side by side.

Jobs measured:
- ``filter``: ``sapray filter`` with ``method: ifd`` (two scoring requests per sample), at each size
  and with 1 and 2 engine actors.
- ``generate``: ``sapray generate`` with a file teacher (one precomputed response per question, in a
  file of its own, joined by question_id): questions read, joined, outcomes made, shards written and
  merged into the training set. No engine actor, so one row per size.
- ``select``: ``sapray select`` over a long candidate table (6 strategies per question) and its
  questions file: the read pass (read, validate, join, coverage, complete questions, rejects written)
  over every row, then 10 sampled questions scored with SAP only (supplied exemplars, one engine
  actor: the scoring is the same at every size, so what grows is the read pass).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_dataplane.py --sizes 10000,100000 --actors 1,2 \\
        --generate-sizes 100000,1000000 --select-sizes 100000,1000000 --json runs/bench_dataplane.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from sapray.engines.models import TINY_RANDOM, resolve_model

REPO = Path(__file__).resolve().parent.parent

# Run in a child process with the tree to measure first on sys.path: the same calls work on both trees.
CHILD = """
import json, resource, sys, time
job, config = sys.argv[1], json.loads(sys.argv[2])
started = time.perf_counter()
if job == "filter":
    from sapray.config import load_filter_config
from sapray.jobs.filter import run_filter
    from sapray.jobs.filter import write_filter
    cfg = load_filter_config(config)
    result = run_filter(cfg)
    write_filter(cfg.output, result)
    counts = result.summary["counts"]
elif job == "select":
    from sapray.config import load_config
    from sapray.jobs.select import write_selection
    from sapray.jobs.select import run_select
    cfg = load_config(config)
    result = run_select(cfg)
    write_selection(cfg.output, result, cfg.model_dump())
    counts = result.counts
else:
    from sapray.config import load_config
    from sapray.jobs.generate import run_generate
    metadata = run_generate(load_config(config), "teacher")
    counts = {"rows": metadata["rows"], "rejected": metadata["rejected"]}
seconds = time.perf_counter() - started
print("RESULT " + json.dumps({"seconds": seconds, "counts": counts,
                              "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

WORDS = ("apple", "train", "seven", "dollars", "minutes", "each", "total", "how", "many", "more", "than", "half",
         "twice", "bakes", "sells", "buys", "pages", "miles", "hours", "left", "after", "gives", "friend", "cost")


def samples_file(workdir: Path, n: int) -> str:
    """n question/response rows (about 12 and 8 words), the same for a given n."""
    path = workdir / f"samples-{n}.jsonl"
    if not path.exists():
        rng = random.Random(n)
        with open(path, "w") as f:
            for i in range(n):
                question = " ".join(rng.choices(WORDS, k=12)) + "?"
                response = " ".join(rng.choices(WORDS, k=8)) + "."
                f.write(json.dumps({"sample_id": f"s{i}", "question": question, "response": response}) + "\n")
    return str(path)


def question_files(workdir: Path, name: str, n: int, strategies: tuple[str, ...]) -> tuple[str, str]:
    """n questions and a long table of each strategy's response to each, the same for a given n."""
    questions, responses = workdir / f"{name}-questions-{n}.jsonl", workdir / f"{name}-responses-{n}.jsonl"
    if not responses.exists():
        rng = random.Random(n)
        with open(questions, "w") as q, open(responses, "w") as r:
            for i in range(n):
                q.write(json.dumps({"question_id": f"q{i}", "question": " ".join(rng.choices(WORDS, k=12)) + "?"})
                        + "\n")
                for strategy in strategies:
                    r.write(json.dumps({"question_id": f"q{i}", "strategy": strategy,
                                        "response": " ".join(rng.choices(WORDS, k=8)) + "."}) + "\n")
    return str(questions), str(responses)


def generate_files(workdir: Path, n: int) -> tuple[str, str]:
    """n questions and a file teacher's response to each."""
    return question_files(workdir, "generate", n, ("teacher",))


STRATEGIES = ("human", "socratic", "gpt4o", "claude", "rewrite", "steps")


def select_files(workdir: Path, rows: int) -> tuple[str, str, str]:
    """A questions file, a long candidate table of ``rows`` rows (every question answered by each of the
    six strategies) and four exemplars."""
    questions, candidates = question_files(workdir, "select", rows // len(STRATEGIES), STRATEGIES)
    exemplars = workdir / "select-exemplars.jsonl"
    exemplars.write_text("".join(json.dumps({"exemplar_id": f"ex-{i}", "text": f"So it is {i}.\nA: {i}"}) + "\n"
                                 for i in range(4)))
    return questions, candidates, str(exemplars)


def select_config(model: str, files: tuple[str, str, str], actors: int, output: Path, batch_size: int) -> dict:
    questions, candidates, exemplars = files
    return {"model": model, "engine": "hf", "metrics": ["sap"],
            "data": {"questions": questions, "candidates": candidates},
            "sample": {"max_questions": 10, "round_size": 10, "stop": "fixed"},
            "exemplars": {"file": exemplars, "n": 3}, "bootstrap": 200,
            "ray": {"actors": actors, "batch_size": batch_size}, "output": str(output)}


def baseline_tree(workdir: Path, commit: str) -> Path:
    tree = workdir / f"baseline-{commit}"
    if not tree.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), commit], check=True,
                       capture_output=True)
    return tree


def run_job(tree: Path, job: str, config: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "RAY_DEDUP_LOGS": "0"}
    done = subprocess.run([sys.executable, "-c", CHILD, job, json.dumps(config)], cwd=tree, env=env,
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"{job} failed in {tree} ({config}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def filter_config(model: str, input_path: str, actors: int, output: Path, batch_size: int) -> dict:
    return {"method": "ifd", "input": input_path, "model": model, "output": str(output),
            "ray": {"actors": actors, "batch_size": batch_size}}


def generate_config(questions: str, responses: str, output: Path, shard_size: int) -> dict:
    return {"data": {"questions": questions, "candidates_by_strategy": {"teacher": responses}},
            "output": str(output / "select"),
            "generate": {"output": str(output / "train"), "shard_size": shard_size}}


def _report(results: list[dict], job: str, size: int, actors: int, name: str, out: dict) -> None:
    row = {"job": job, "rows": size, "actors": actors, "tree": name, **out, "rows_per_s": size / out["seconds"]}
    results.append(row)
    print(f"{job:<9}{size:>9}{actors:>7}{name:>8}{out['seconds']:>9.1f}{row['rows_per_s']:>9.0f}"
          f"{out['driver_peak_rss_mb']:>20.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="input rows, comma-separated")
    parser.add_argument("--actors", default="1,2", help="engine actors, comma-separated")
    parser.add_argument("--baseline", default="12df868", help="commit to measure beside this checkout ('' for none)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--generate-sizes", default="100000,1000000", help="questions, comma-separated ('' for none)")
    parser.add_argument("--select-sizes", default="100000,1000000",
                        help="candidate rows, comma-separated ('' for none)")
    parser.add_argument("--select-actors", default="1", help="scoring actors of the select runs, comma-separated")
    parser.add_argument("--shard-size", type=int, default=1000, help="generate.shard_size of the generate runs")
    parser.add_argument("--workdir", default=None, help="where models, inputs and outputs go (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sapray-dataplane-"))
    workdir.mkdir(parents=True, exist_ok=True)
    trees = {"now": REPO}
    if args.baseline:
        trees["before"] = baseline_tree(workdir, args.baseline)
    results: list[dict] = []
    print(f"{'job':<9}{'rows':>9}{'actors':>7}{'tree':>8}{'seconds':>9}{'rows/s':>9}{'driver peak RSS MB':>20}")
    for size in [int(s) for s in args.sizes.split(",") if s]:
        model, path = resolve_model(TINY_RANDOM), samples_file(workdir, size)
        for actors in [int(a) for a in args.actors.split(",")]:
            for name, tree in trees.items():
                config = filter_config(model, path, actors, workdir / f"filter-{name}-{size}-{actors}", args.batch_size)
                _report(results, "filter", size, actors, name, run_job(tree, "filter", config))
    for size in [int(s) for s in args.generate_sizes.split(",") if s]:
        questions, responses = generate_files(workdir, size)
        for name, tree in trees.items():
            config = generate_config(questions, responses, workdir / f"generate-{name}-{size}", args.shard_size)
            _report(results, "generate", size, 0, name, run_job(tree, "generate", config))
    for size in [int(s) for s in args.select_sizes.split(",") if s]:
        model, files = resolve_model(TINY_RANDOM), select_files(workdir, size)
        for actors in [int(a) for a in args.select_actors.split(",")]:
            for name, tree in trees.items():
                output = workdir / f"select-{name}-{size}-{actors}"
                config = select_config(model, files, actors, output, args.batch_size)
                _report(results, "select", size, actors, name, run_job(tree, "select", config))
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}"
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "baseline": args.baseline,
                                               "results": results}, indent=2) + "\n")
    print(f"machine: {machine}")


if __name__ == "__main__":
    main()
