"""Whole-job benchmarks, side by side in one invocation: resident engines, and the journal's cost.

``resident``: the scenario of issue #30 (one vLLM teacher serving two prompt strategies, the hf scorer,
a race of 3 rounds of 4 of the bundled questions with the shipped exemplars, ``metrics: [sap]``, then the
full set of those 12 questions), run with ``ray.resident_engines=false`` (a pool per round, as before)
and ``true``. Prints each run's wall time and its engine starts (``run.json``'s ``engine_starts``; the
per-round run counts the engine loads in its ``run.log``), and checks that both wrote the same
``scores.parquet`` and training set.

``journal``: ``sapray demo`` from this checkout (which journals) and from a git worktree of ``--baseline``
(the commit before the journal), alternating, ``--repeats`` times each; prints the walls and the bytes
of the journal per scored request.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_jobs.py resident --workdir runs/bench_jobs
    PYTHONPATH=. .venv/bin/python benchmarks/bench_jobs.py journal --workdir runs/bench_jobs --repeats 2
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "sapray" / "data" / "gsm8k"
# the commit before the journal landed (resident engines, no journal)
JOURNAL_BASELINE = "c80cea7"


def sapray(tree: Path, args: list[str], log: Path) -> float:
    """Run ``sapray ARGS`` from ``tree`` (its own process); its wall time in seconds."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run([sys.executable, "-m", "sapray", *args], cwd=tree, env=env, stdout=out,
                              stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"sapray {' '.join(args)} failed in {tree}; see {log}")
    return wall


def resident(workdir: Path) -> None:
    questions = [json.loads(line) for line in (DATA / "questions.jsonl").read_text().splitlines()][:12]
    (workdir / "q12.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    teacher = {"kind": "vllm", "model": "smollm2", "engine_args": {"max_model_len": 2048}}
    config = {
        "model": "smollm2", "engine": "hf", "metrics": ["sap"], "data": {"questions": str(workdir / "q12.jsonl")},
        "sample": {"seed": 0, "max_questions": 12, "round_size": 4},
        "exemplars": {"file": str(DATA / "exemplars_smollm2.jsonl")}, "ray": {"batch_size": 8},
        "strategies": [
            {"name": "smol_plain", "teacher": teacher, "prompt": "{question}", "max_tokens": 96},
            {"name": "smol_steps", "teacher": teacher, "max_tokens": 96,
             "prompt": "{question}\nLet's think step by step, then give the final number after 'A:'."}]}
    path = workdir / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    rows = []
    for mode in ("false", "true"):
        out = workdir / f"resident-{mode}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        wall = sapray(REPO, ["run", "--config", str(path), "--output", str(out), "--set",
                             f"generate.output={out}/train", "--set", f"ray.resident_engines={mode}"],
                      workdir / f"resident-{mode}.log")
        log = (out / "run.log").read_bytes().decode(errors="replace")  # its \r stay inside the lines
        counted = json.loads((out / "run.json").read_text()).get("engine_starts") or {}
        starts = ({key: sum(per_actor.values()) for key, per_actor in counted.items()} if counted else {
            "vllm (processes that loaded it, run.log)": loaders(log, "Loading safetensors checkpoint shards: 100%"),
            "hf (processes that loaded it, run.log)": loaders(log, "Loading weights: 100%")})
        rows.append((f"resident_engines={mode}", wall, starts))
    for name, wall, starts in rows:
        print(f"{name:24} {wall:8.1f} s   engine starts: {starts}")
    print(f"ratio: {rows[0][1] / rows[1][1]:.2f}x")
    a, b = workdir / "resident-false", workdir / "resident-true"
    # the training set's rows (its shards are named by run, and metadata.json holds wall times)
    same = filecmp.cmp(a / "scores.parquet", b / "scores.parquet", shallow=False) and all(
        filecmp.cmp(f, b / "train" / folder / f.name, shallow=False)
        for folder in ("train", "parquet", "rejects") for f in (a / "train" / folder).iterdir())
    print(f"same scores.parquet and training set: {same}")


def loaders(log: str, marker: str) -> int:
    """Processes whose output in ``log`` shows ``marker`` (a load's progress bar may end twice)."""
    return len({m.group(1) for line in log.split("\n") if marker in line for m in [re.search(r"pid=(\d+)", line)]
                if m})


def journal(workdir: Path, baseline: str, repeats: int) -> None:
    tree = workdir / f"baseline-{baseline}"
    if not tree.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), baseline], check=True,
                       capture_output=True)
    walls: dict[str, list[float]] = {"without a journal": [], "with the journal": []}
    for i in range(repeats):
        for name, source in (("without a journal", tree), ("with the journal", REPO)):
            out = workdir / f"demo-{'journal' if source == REPO else 'baseline'}-{i}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            walls[name].append(sapray(source, ["demo", "--output", str(out)], workdir / f"{out.name}.log"))
    for name, values in walls.items():
        print(f"{name:18} " + "  ".join(f"{v:6.1f} s" for v in values))
    out = workdir / "demo-journal-0"
    size = sum(f.stat().st_size for f in (out / "journal").rglob("*") if f.is_file())
    requests = json.loads((out / "selection.json").read_text())["counts"]["requests_scored"]
    print(f"journal: {size:,} bytes for {requests} scored requests ({size / requests:,.0f} bytes each, "
          "the fingerprint included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["resident", "journal"])
    parser.add_argument("--workdir", default="runs/bench_jobs")
    parser.add_argument("--baseline", default=JOURNAL_BASELINE, help="commit without the journal (journal only)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    resident(workdir) if args.which == "resident" else journal(workdir, args.baseline, args.repeats)


if __name__ == "__main__":
    main()
