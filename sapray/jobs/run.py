"""``sapray run``: generate the sample -> select -> full-scale generation with the winner, the teachers and the
scorer resident throughout.

``sapray generate --strategy NAME`` is the last step alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sapray.config import SelectConfig
from sapray.console import console
from sapray.core.race import choice_set, race_label
from sapray.dataplane.fullset import generate_with
from sapray.dataplane.outputs import write_outputs
from sapray.dataplane.raydata import init_ray
from sapray.dataplane.read import InputError
from sapray.dataplane.resident import Engines
from sapray.dataplane.rounds import teacher_rounds
from sapray.dataplane.sample import Target, scorer_spec
from sapray.dataplane.selection import open_journal, select_strategy
from sapray.dataplane.teachers import api_teacher_kwargs, model_teacher_kwargs, teacher_key
from sapray.engines.models import locate
from sapray.present.html_report import write_report
from sapray.present.lines import round_lines
from sapray.storage import child, filesystem, read_text, write_text


def _write_jsonl(uri: str, rows: list[dict]) -> None:
    write_text(uri, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


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
    planned = {"scorer": scorer_spec(cfg, Target.of(cfg))}
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
        key = teacher_key(cfg.strategy(winner))
        for other in list(engines.pools):
            if other != key:
                engines.release(other)
        engines.widen(key)
        console.say(f"full training set with {winner} (if stopped, `sapray generate --strategy {winner}` with the "
                    "same config resumes this step alone)")
        metadata = generate_with(cfg, winner, engines.pools.get(key))
        if not done:
            record_engine_starts(cfg.output, engines.engine_starts())
    write_report(cfg.output)  # again, now with the sample and full-set costs
    return summary, sample_costs, metadata


def _select_and_record(cfg: SelectConfig, engines: Engines, on_round: Callable[[str], None] | None,
                       restart: bool) -> tuple[dict, dict]:
    """The race with the teachers generating its sample; its outputs, the sample candidates and their costs."""
    target = Target.of(cfg)
    journal = open_journal(cfg, target.commit, restart)
    teachers = teacher_rounds(cfg, engines, journal) if cfg.strategies else None
    result = select_strategy(cfg, target, engines, journal, teachers,
                             round_lines(on_round, cfg.sample.confidence, cfg.sample.epsilon,
                                         race_label(cfg.sample.rank_by)))
    write_outputs(cfg.output, result, cfg.model_dump())
    write_report(cfg.output)
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
