"""What ``sapray run`` keeps beside a selection's outputs: the engines it plans to keep resident, the sample
the teachers generated and its cost, whether an earlier run with the same config already finished its
selection, the strategy it generates the full set with, and each engine's starts.

    sample_candidates/<strategy>.jsonl   every candidate the teachers generated for the sample
    sample_generation_cost.jsonl         the sample's tokens and money per strategy; written last, so a
                                         selection killed while writing its outputs is redone
    run.json                             (the selection's) plus ``engine_starts`` once the full set is done
"""

from __future__ import annotations

import json
from typing import Any

from sapray.config import SelectConfig, StrategyConfig
from sapray.core.race import choice_set
from sapray.dataplane.read import InputError
from sapray.dataplane.rounds import TeacherRounds
from sapray.dataplane.sample import Target, scorer_spec
from sapray.dataplane.teachers import api_teacher_kwargs, model_teacher_kwargs
from sapray.engines.models import locate
from sapray.storage import Unreadable, child, read_json, write_text


def planned_engines(cfg: SelectConfig) -> dict[str, tuple[type, dict[str, Any]]]:
    """The engines of a run by key: the scorer and each teacher model or endpoint (file teachers hold none)."""
    planned = {"scorer": scorer_spec(cfg, Target.of(cfg))}
    for strategy in cfg.strategies:
        if strategy.teacher.kind == "openai":
            planned.setdefault(strategy.engine_key, api_teacher_kwargs(strategy))
        elif strategy.teacher.on_engine:
            resolved = locate(strategy.teacher.model, strategy.teacher.revision)
            planned.setdefault(strategy.engine_key, model_teacher_kwargs(strategy, resolved))
    return planned


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def finished_selection(cfg: SelectConfig) -> tuple[dict, dict] | None:
    """The selection and sample costs that an earlier `sapray run` with this same config wrote, if any."""
    try:
        run = read_json(child(cfg.output, "run.json"))
        summary = read_json(child(cfg.output, "selection.json"))
        costs = read_json(child(cfg.output, "sample_generation_cost.jsonl"), lines=True)
    except Unreadable:  # select again
        return None
    if None in (run, summary, costs) or run.get("config") != json.loads(json.dumps(cfg.model_dump())):
        return None
    return summary, {c.pop("strategy"): c for c in costs}


def sample_record(teachers: TeacherRounds | None) -> tuple[dict[str, str], dict[str, dict]]:
    """The files of a run's sample, in the order to write them: its candidates per strategy, then its costs (last:
    ``finished_selection`` takes them for a finished selection); and its costs by strategy."""
    sample_costs = teachers.cost if teachers else {}
    files = {f"sample_candidates/{name}.jsonl": _jsonl([r for r in teachers.rows if r["strategy"] == name])
             for name in (teachers.names if teachers else [])}
    files["sample_generation_cost.jsonl"] = _jsonl([{"strategy": k, **v} for k, v in sample_costs.items()])
    return files, sample_costs


def pick_for_full_set(cfg: SelectConfig, summary: dict, sample_costs: dict[str, dict]) -> StrategyConfig:
    """The strategy to generate the full set with: the winner; with ``sample.pick: cheapest``, of the strategies
    the race's end allows (``choice_set``: those certified good enough, or every contender after a budget stop)
    the one whose sample cost least per question (money where priced, then generated tokens; data costs
    nothing)."""
    if not summary.get("winner"):  # nothing was scored: every sampled response was rejected, or none came
        raise InputError(f"no response of any strategy could be scored on the sample, so there is no winner to "
                         f"generate the full set with; why each was rejected: {child(cfg.output, 'rejects')}/ "
                         f"and {child(cfg.output, 'report.html')}")
    by_name = {name: cfg.strategy(name) for name in summary["strategies"]}
    pool = choice_set(summary.get("race") or {})
    if cfg.sample.pick == "lowest_sap" or len(pool) < 2:
        return by_name[summary["winner"]["strategy"]]

    def cost_per_question(name: str) -> tuple[float, float]:
        c = sample_costs.get(name)
        if not c or not c["questions"]:
            return 0.0, 0.0
        return (c["money"] or 0.0) / c["questions"], (c["prompt_tokens"] + c["completion_tokens"]) / c["questions"]

    return by_name[min(pool, key=lambda n: (cost_per_question(n), pool.index(n)))]


def record_engine_starts(output: str, starts: dict[str, dict[str, int]]) -> None:
    """Add each engine's starts per actor (counted by the actors, the full set's included) to run.json."""
    uri = child(output, "run.json")
    write_text(uri, json.dumps({**read_json(uri), "engine_starts": starts}, indent=2) + "\n")
