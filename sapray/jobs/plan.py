"""``sapray plan``: what a select or run will do and cost, before any engine starts.

It reads the inputs as the job would (in the cluster), draws the same sample, builds the same scoring
requests and counts their tokens with the target's tokenizer, counts each model teacher's prompt tokens
with its own, and marks every figure:

- ``exact``: what the job will do whatever happens (the strategies; when every response and exemplar
  is read from a file, the tokens of the first round, and of every round of the fixed design);
- ``bound``: what it cannot exceed (the race may stop sooner; an answer may end before ``max_tokens``);
- ``estimate``: a guess, said to be one (an API teacher's prompt tokens counted with the target's
  tokenizer; times: work over the measured throughputs in ``THROUGHPUT`` plus the engine starts the stage
  pays, from ``STARTS``, both assuming the hardware they were measured on; the data plane's CPU-seconds and
  cores per engine actor: the scored tokens over the rehearsed data-plane rate, ``DATA_PLANE``).
"""

from __future__ import annotations

import functools
from dataclasses import asdict
from typing import Any

from sapray.config import SelectConfig, StrategyConfig
from sapray.core import exemplars as ex
from sapray.core.costs import Figure, Kind, data_plane_for, seconds_for
from sapray.core.metrics import context_kinds
from sapray.core.sample import Budget, rounds
from sapray.dataplane import stages
from sapray.dataplane.placement import place
from sapray.dataplane.questions import questions_dataset, unique_questions
from sapray.dataplane.raydata import init_ray
from sapray.dataplane.read import load_exemplar_file, read_questions
from sapray.dataplane.sample import Requests, Sample, Target, scorer_spec
from sapray.dataplane.select_inputs import read_selection_inputs
from sapray.dataplane.teachers import model_teacher_kwargs, prompt_ids, teacher_money
from sapray.engines.models import ResolvedModel, locate


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
        first_of.setdefault(teachers[name].engine_key, name)
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

    where = place(scorer_spec(cfg, target)[1], cfg.ray)  # mining's too
    if mined["generated_tokens"]["value"]:
        # mining's actors start together: one start
        mined["time"] = asdict(seconds_for(mined["generated_tokens"]["value"], cfg.engine, "generate", where, 1))
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
            "time": asdict(seconds_for(sum(per_round), cfg.engine, "score", where, starts(1))),
            "data_plane": asdict(data_plane_for(sum(per_round), cfg.engine, "score", where)),
        },
        "exemplars": mined,
        "sample_generation": {
            n: _generation(cfg, teachers[n], [sample.questions[q] for q in planned], target,
                           starts(1) if n == first_of[teachers[n].engine_key] else 0)
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


def _prompt_tokens(strategy: StrategyConfig, questions: list[dict], target: Target,
                   model: ResolvedModel | None) -> Figure:
    """A teacher's prompt tokens; ``model``: a model teacher's, resolved by the caller."""
    teacher = strategy.teacher
    if model is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model.path)
        return Figure(sum(len(prompt_ids(tokenizer, strategy, q)) for q in questions), "exact", "tokens")
    if teacher.kind == "file":
        return Figure(0, "exact", "tokens", "responses read from a file")
    return Figure(sum(len(prompt_ids(target.tokenizer, strategy, q)) for q in questions), "estimate", "tokens",
                  "counted with the target's tokenizer; the endpoint's may differ")


def _generation(cfg: SelectConfig, strategy: StrategyConfig, questions: list[dict], target: Target,
                starts: int) -> dict:
    """A teacher's tokens and money for ``questions``: prompts counted, answers at ``max_tokens``; its time with
    ``starts`` engine starts."""
    # a model teacher resolved once, for its tokenizer and its placement
    model = locate(strategy.teacher.model, strategy.teacher.revision) if strategy.teacher.on_engine else None
    prompt = _prompt_tokens(strategy, questions, target, model)
    answers = 0 if strategy.teacher.kind == "file" else (
        len(questions) * strategy.max_tokens * strategy.samples_per_question)
    generated = Figure(answers, "exact" if strategy.teacher.kind == "file" else "bound", "tokens",
                       f"{len(questions)} questions x {strategy.samples_per_question} x up to {strategy.max_tokens}")
    money = teacher_money(strategy.teacher, prompt.value or 0, answers)
    out = {"teacher": strategy.teacher.describe(), "questions": len(questions), "prompt_tokens": asdict(prompt),
           "generated_tokens": asdict(generated),
           "money": asdict(Figure(money, "bound", "$", "prompt tokens counted, answers at max_tokens"))
           if money is not None else None}
    if model is not None:
        where = place(model_teacher_kwargs(strategy, model)[1], cfg.ray)
        time = seconds_for(answers, strategy.teacher.kind, "generate", where, starts)
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


