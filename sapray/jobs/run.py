"""``sapray run``: generate the sample -> select -> full-scale generation with the winner.

``sapray generate --strategy NAME`` is the last step alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sapray.config import ConfigError, SelectConfig, StrategyConfig, TeacherConfig
from sapray.core.race import choice_set
from sapray.dataplane.actors import ScoreActor
from sapray.dataplane.journal import Journal, batch_log, digest
from sapray.dataplane.raydata import init_ray
from sapray.dataplane.read import InputError, Reject, child, filesystem, read_text, write_text
from sapray.dataplane.resident import EnginePool, Engines
from sapray.dataplane.select_inputs import candidate_file_questions
from sapray.dataplane.teachers import (
    Cost,
    api_teacher_kwargs,
    generate,
    model_teacher_kwargs,
    teacher_key,
    teacher_money,
)
from sapray.engines.models import locate
from sapray.jobs.generate import run_full_generation
from sapray.jobs.outputs import write_outputs
from sapray.jobs.select import Target, TeacherRounds, open_journal, run_select, scorer_kwargs
from sapray.present.console import console
from sapray.present.html_report import write_report


def _write_jsonl(uri: str, rows: list[dict]) -> None:
    write_text(uri, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def teacher_rounds(cfg: SelectConfig, engines: Engines, journal: Journal) -> TeacherRounds:
    """The config's teacher strategies, generating the selection sample round by round.

    Only the strategies still in the race are asked, so an eliminated strategy's teacher gets no
    request after the round that dropped it, and a teacher whose strategies are all out releases its
    engines. Each batch of a teacher's answers is journaled as it arrives, and a rerun takes the journaled
    ones instead of asking (and paying) again. Select scores one response per (question, strategy): the
    first sample.
    """
    by_name = {s.name: s for s in cfg.strategies}
    costs = {name: Cost() for name in by_name}
    rejected = dict.fromkeys(by_name, 0)
    asked = dict.fromkeys(by_name, 0)

    def generate_round(questions: list[dict], names: list[str], round_number: int) -> tuple[list[dict], list[Reject]]:
        rows, rejects = [], []
        for name in names:
            console.say(f"generating the sample with strategy {name} ({by_name[name].teacher.describe()}, "
                        f"{len(questions)} questions)")
            asked[name] += len(questions)
        def log(key: str) -> Callable[..., Any]:
            return batch_log(journal, f"gen-r{round_number:04d}-{digest(key)}")

        def pools(key: str) -> EnginePool | None:
            if starting := engines.to_start(key):
                console.say(f"starting {starting} engine actor(s) for the teacher of "
                            f"{', '.join(n for n in names if teacher_key(by_name[n]) == key)}; they stay for "
                            "every round")
            return engines.pool(key)

        for name, new, bad, cost in generate([by_name[n] for n in names], questions, cfg.ray,
                                             progress=console.progress, pools=pools, log=log):
            costs[name].add(cost)
            rejected[name] += len(bad)
            rejects += bad
            rows += [{"question_id": r["question_id"], "strategy": name, "response": r["response"],
                      "source": f"teacher:{name}"} for r in new if r["sample_index"] == 0]
        teachers.rows += rows
        for name in names:
            teachers.cost[name] = {**costs[name].__dict__, "rejected": rejected[name], "questions": asked[name]}
        return rows, rejects

    def drop(eliminated: list[str]) -> None:
        out.update(eliminated)
        for key in {teacher_key(by_name[n]) for n in eliminated if n in by_name}:
            if all(s.name in out for s in by_name.values() if teacher_key(s) == key):
                engines.release(key)

    out: set[str] = set()
    teachers = TeacherRounds(sorted(by_name), generate_round, drop, journaled_money(journal, by_name))
    return teachers


def journaled_money(journal: Journal, strategies: dict[str, StrategyConfig]) -> float | None:
    """What the journal's teacher answers cost, where teachers have prices."""
    spent = [teacher_money(strategies[row["strategy"]].teacher, row["prompt_tokens"], row["completion_tokens"])
             for name in journal.entries if name.startswith("gen-")
             for row in journal.get(name) if row["strategy"] in strategies]
    known = [m for m in spent if m is not None]
    return sum(known) if known else None


def pick_for_full_set(cfg: SelectConfig, summary: dict, sample_costs: dict[str, dict]) -> str:
    """The winner; with ``sample.pick: cheapest``, of the strategies the race's end allows (``choice_set``:
    those certified good enough, or every contender after a budget stop) the one whose sample cost least
    per question (money where priced, then generated tokens; data costs nothing)."""
    if not summary.get("winner"):  # nothing was scored: every sampled response was rejected, or none came
        raise InputError(f"no response of any strategy could be scored on the sample, so there is no winner to "
                         f"generate the full set with; why each was rejected: {child(cfg.output, 'rejects')}/ "
                         f"and {child(cfg.output, 'report.html')}")
    pool = choice_set(summary.get("race") or {})
    if cfg.sample.pick == "lowest_sap" or len(pool) < 2:
        return summary["winner"]["strategy"]

    def cost_per_question(name: str) -> tuple[float, float]:
        c = sample_costs.get(name)
        if not c or not c["questions"]:
            return 0.0, 0.0
        return (c["money"] or 0.0) / c["questions"], (c["prompt_tokens"] + c["completion_tokens"]) / c["questions"]

    return min(pool, key=lambda n: (cost_per_question(n), pool.index(n)))


def strategy_for(cfg: SelectConfig, name: str) -> StrategyConfig:
    """The named strategy; a strategy that only exists as data becomes a file teacher over that data."""
    for s in cfg.strategies:
        if s.name == name:
            return s
    for strategy_name, path in cfg.data.candidate_sources().items():
        if strategy_name in (None, name):  # a long table is filtered by strategy; a strategy's own file is read whole
            return StrategyConfig(name=name, teacher=TeacherConfig(kind="file", path=path,
                                                                   strategy=name if strategy_name is None else None))
    known = [s.name for s in cfg.strategies] + [k for k in cfg.data.candidate_sources() if k]
    raise ConfigError(f"unknown strategy {name!r}: define it under strategies or give its candidates "
                      f"(known: {known})")


def run_generate(cfg: SelectConfig, name: str, pool: EnginePool | None = None) -> dict:
    """The full training set with strategy ``name`` (``pool``: its teacher's resident engines, if any)."""
    init_ray(cfg.ray)
    strategy = strategy_for(cfg, name)
    if cfg.data.questions:  # read by the workers
        return run_full_generation(strategy, cfg.data.questions, cfg.ray, cfg.generate, columns=cfg.data.columns,
                                   pool=pool)
    # the questions the candidate files hold, found in the cluster as select finds them
    return run_full_generation(strategy, candidate_file_questions(cfg.data, cfg.ray), cfg.ray, cfg.generate,
                               pool=pool)


def _read_json(uri: str, jsonl: bool = False) -> Any:
    text = read_text(uri)
    return [json.loads(line) for line in text.splitlines()] if jsonl else json.loads(text)


def finished_selection(cfg: SelectConfig) -> tuple[dict, dict] | None:
    """The selection and sample costs that an earlier `sapray run` with this same config wrote, if any."""
    try:
        run = _read_json(child(cfg.output, "run.json"))
        summary = _read_json(child(cfg.output, "selection.json"))
        costs = _read_json(child(cfg.output, "sample_generation_cost.jsonl"), jsonl=True)
    except (OSError, json.JSONDecodeError):  # not there (or unreadable): select again
        return None
    if run.get("config") != json.loads(json.dumps(cfg.model_dump())):
        return None
    return summary, {c.pop("strategy"): c for c in costs}


def planned_engines(cfg: SelectConfig) -> dict[str, tuple[type, dict[str, Any]]]:
    """The engines of a run by key: the scorer and each teacher model or endpoint (file teachers hold none)."""
    target = Target.of(cfg)
    planned = {"scorer": (ScoreActor, scorer_kwargs(cfg, target.commit, target.layout.boundary))}
    for strategy in cfg.strategies:
        kind = strategy.teacher.kind
        if kind == "openai":
            planned.setdefault(teacher_key(strategy), api_teacher_kwargs(strategy))
        elif kind in ("hf", "vllm"):
            commit = locate(strategy.teacher.model, strategy.teacher.revision).commit
            planned.setdefault(teacher_key(strategy), model_teacher_kwargs(strategy, commit))
    return planned


def run_all(cfg: SelectConfig, on_round: Callable[[str], None] | None = None,
            restart: bool = False) -> tuple[dict, dict, dict]:
    """(selection summary, sample generation costs, training set metadata).

    The teachers and the scorer stay resident for the whole race (they take turns, each reserving its
    share of the cluster); a teacher leaves when the race drops its strategies, the scorer when the race
    ends, and the winner's engines, widened to the resources freed, generate the full set. Run again
    with the same config after a stop, it continues: from the selection's journal (its exemplars, the
    teachers' batches and the scored rounds), or, once the selection finished (say, killed during the
    full-scale generation), from that selection and the full set's shards. ``restart`` starts the
    selection over.
    """
    init_ray(cfg.ray)
    done = None if restart else finished_selection(cfg)
    with Engines({} if done else planned_engines(cfg), cfg.ray, cfg.ray.resident_engines) as engines:
        if done:
            summary, sample_costs = done
            console.say(f"the selection for this config is already in {cfg.output}; resuming the full set")
        else:
            if engines.reason:
                console.say(f"engines start again every round: {engines.reason}")
            summary, sample_costs = _select_and_record(cfg, engines, on_round, restart)
        winner = pick_for_full_set(cfg, summary, sample_costs)
        key = teacher_key(strategy_for(cfg, winner))
        for other in list(engines.pools):
            if other != key:
                engines.release(other)
        engines.widen(key)
        console.say(f"full training set with {winner} (if stopped, `sapray generate --strategy {winner}` with the "
                    "same config resumes this step alone)")
        metadata = run_generate(cfg, winner, engines.pools.get(key))
        if not done:
            record_engine_starts(cfg.output, engines.engine_starts())
    write_report(cfg.output)  # again, now with the sample and full-set costs
    return summary, sample_costs, metadata


def _select_and_record(cfg: SelectConfig, engines: Engines, on_round: Callable[[str], None] | None,
                       restart: bool) -> tuple[dict, dict]:
    """The race with the teachers generating its sample; its outputs, the sample candidates and their costs."""
    journal = open_journal(cfg, locate(cfg.model, cfg.revision).commit, restart)
    teachers = teacher_rounds(cfg, engines, journal) if cfg.strategies else None
    result = run_select(cfg, on_round=on_round, teachers=teachers, engines=engines, journal=journal)
    write_outputs(cfg.output, result, cfg.model_dump())
    sample_costs = teachers.cost if teachers else {}
    if teachers:
        fs, root = filesystem(child(cfg.output, "sample_candidates"))
        fs.create_dir(root, recursive=True)
        for name in teachers.names:
            _write_jsonl(child(cfg.output, f"sample_candidates/{name}.jsonl"),
                         [r for r in teachers.rows if r["strategy"] == name])
    # written last: finished_selection needs it, so a selection killed while writing is redone
    _write_jsonl(child(cfg.output, "sample_generation_cost.jsonl"),
                 [{"strategy": k, **v} for k, v in sample_costs.items()])
    return result.summary, sample_costs


def record_engine_starts(output: str, starts: dict[str, dict[str, int]]) -> None:
    """Add each engine's starts per actor (counted by the actors, the full set's included) to run.json."""
    uri = child(output, "run.json")
    write_text(uri, json.dumps({**_read_json(uri), "engine_starts": starts}, indent=2) + "\n")
