"""``sapray run``: generate the sample -> select -> full-scale generation with the winner.

``sapray generate --strategy NAME`` is the last step alone.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sapray.config import ConfigError, SelectConfig, StrategyConfig, TeacherConfig
from sapray.generate import Cost, generate, run_full_generation
from sapray.raydata import init_ray
from sapray.read import child, filesystem, read_candidates, read_questions, read_text
from sapray.report import write_outputs
from sapray.sample import paired_question_ids, sample_order
from sapray.select import run_select

log = logging.getLogger("sapray")


def _write_jsonl(uri: str, rows: list[dict]) -> None:
    fs, path = filesystem(uri)
    with fs.open_output_stream(path) as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())


def generate_sample(cfg: SelectConfig) -> tuple[dict[str, str], dict[str, dict]]:
    """Responses from every teacher strategy for the questions select will sample; files by strategy."""
    questions, _ = read_questions(cfg.data.questions, cfg.data.columns, need_gold=False)
    existing = cfg.data.candidate_sources()
    if existing:  # paired design: only questions that the given candidate files cover completely
        rows, _, _ = read_candidates(existing, cfg.data.columns, questions)
        names = sorted({r["strategy"] for r in rows})
        eligible, _ = paired_question_ids(rows, names)
    else:
        eligible = sorted(questions)
    n = cfg.sample.max_questions or len(eligible)
    chosen = [questions[q] for q in sample_order(eligible, cfg.sample.seed)[:n]]
    fs, root = filesystem(child(cfg.output, "sample_candidates"))
    fs.create_dir(root, recursive=True)
    files, costs = {}, {}
    for strategy in cfg.strategies:
        log.info("generating the sample with strategy %s (%s, %d questions)", strategy.name,
                 strategy.teacher.describe(), len(chosen))
        cost, rows, rejects = Cost(), [], 0
        for new, bad, c in generate(strategy, chosen, cfg.ray):
            cost.add(c)
            rejects += len(bad)
            # select scores one response per (question, strategy): the first sample
            rows += [{"question_id": r["question_id"], "strategy": r["strategy"], "response": r["response"]}
                     for r in new if r["sample_index"] == 0]
        files[strategy.name] = child(cfg.output, f"sample_candidates/{strategy.name}.jsonl")
        _write_jsonl(files[strategy.name], rows)
        costs[strategy.name] = {**cost.__dict__, "rejected": rejects}
    return files, costs


def strategy_for(cfg: SelectConfig, name: str) -> StrategyConfig:
    """The named strategy; a strategy that only exists as data becomes a file teacher over that data."""
    for s in cfg.strategies:
        if s.name == name:
            return s
    for strategy_name, path in cfg.data.candidate_sources().items():
        if strategy_name in (None, name):
            return StrategyConfig(name=name, teacher=TeacherConfig(kind="file", path=path, strategy=name))
    known = [s.name for s in cfg.strategies] + [k for k in cfg.data.candidate_sources() if k]
    raise ConfigError(f"unknown strategy {name!r}: define it under strategies or give its candidates "
                      f"(known: {known})")


def run_generate(cfg: SelectConfig, name: str) -> dict:
    init_ray(cfg.ray)
    questions, rejects = read_questions(cfg.data.questions, cfg.data.columns, need_gold=False)
    return run_full_generation(strategy_for(cfg, name), list(questions.values()), cfg.ray, cfg.generate, rejects)


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


def run_all(cfg: SelectConfig) -> tuple[dict, dict, dict]:
    """(selection summary, sample generation costs, training set metadata).

    A restart with the same config after the selection finished (say, killed during the full-scale
    generation) reuses that selection and resumes the full set, rather than redoing both.
    """
    init_ray(cfg.ray)
    done = finished_selection(cfg)
    if done:
        summary, sample_costs = done
        log.info("the selection for this config is already in %s; resuming the full set", cfg.output)
    else:
        files, sample_costs = generate_sample(cfg) if cfg.strategies else ({}, {})
        by_strategy = {**(cfg.data.candidates_by_strategy or {}), **files}
        select_cfg = cfg.model_copy(
            update={"data": cfg.data.model_copy(update={"candidates_by_strategy": by_strategy})})
        result = run_select(select_cfg)
        write_outputs(cfg.output, result, cfg.model_dump())
        # written last: finished_selection needs it, so a selection killed while writing is redone
        _write_jsonl(child(cfg.output, "sample_generation_cost.jsonl"),
                     [{"strategy": k, **v} for k, v in sample_costs.items()])
        summary = result.summary
    winner = summary["winner"]["strategy"]
    log.info("winner: %s; generating the full training set with it (if stopped, `sapray generate --strategy %s` "
             "with the same config resumes this step alone)", winner, winner)
    metadata = run_generate(cfg, winner)
    return summary, sample_costs, metadata
