"""The selection, top to bottom: read -> choose strategies -> sample -> exemplars -> rounds of
(generate -> contexts -> score -> race) -> reduce. ``sapray select`` and ``sapray run`` compose it with
their own engines and journal.

Row accounting: every candidate row read or generated ends up in exactly one of scored, rejected
(with a reason in rejects/) or not_sampled (its question was not sampled, or its strategy was
eliminated first), and the selection checks that the counts add up.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sapray.config import SelectConfig
from sapray.console import console
from sapray.core import exemplars as ex
from sapray.core.contexts import Layout
from sapray.core.race import Race, RaceRule
from sapray.core.reduce import RANK_KEYS, STATISTIC, cost_table, summarize
from sapray.core.sample import Budget
from sapray.core.scoring import SCORES_FORMAT
from sapray.dataplane.journal import Journal, job_fingerprint
from sapray.dataplane.mining import selection_exemplars
from sapray.dataplane.read import CANDIDATE_STAGES, Reject
from sapray.dataplane.resident import Engines
from sapray.dataplane.rounds import RaceRounds, TeacherRounds, round_entry, scoring_engines
from sapray.dataplane.sample import Requests, Sample, Target
from sapray.dataplane.select_inputs import read_selection_inputs
from sapray.storage import child


@dataclass
class SelectResult:
    summary: dict
    scores: list[dict]
    rejects: list[Reject]
    exemplars: list[ex.Exemplar]
    counts: dict
    timings: dict = field(default_factory=dict)
    placement: dict = field(default_factory=dict)  # "node/actor" -> requests it scored
    input_rejects: Any = None  # the read pass's rejects: a dataset, written by the workers
    engine_starts: dict = field(default_factory=dict)  # engine -> node/actor -> starts (resident engines)
    mining_placement: dict = field(default_factory=dict)  # "node/actor" -> exemplar answers it generated


def select_strategy(cfg: SelectConfig, target: Target, engines: Engines, journal: Journal,
                    teachers: TeacherRounds | None = None,
                    on_look: Callable[[dict], None] | None = None) -> SelectResult:
    """read -> strategies -> sample -> exemplars -> race rounds (generate, score, look) -> reduce.

    ``engines``: the resident engines of the calling job (at least a ``scorer``; ``sapray run``'s teachers
    too); ``teachers``: the strategies generated round by round (``sapray run``); ``on_look``: told of each
    look of the race (its record)."""
    started = time.monotonic()
    say_resumed(journal, teachers)
    t0 = time.monotonic()
    console.say("reading the questions and candidates in the cluster")
    inputs = read_selection_inputs(cfg.data, cfg.ray, teachers.names if teachers else [])
    strategies = _strategies(inputs)
    console.say(f"read {inputs.rows_in:,} candidate rows ({inputs.rejected:,} rejected) in "
                f"{time.monotonic() - t0:.1f} s: {len(strategies)} strategies, {len(inputs.complete):,} questions "
                "with all of them")
    sample = Sample.draw(cfg, inputs)
    t0 = time.monotonic()
    pool, exemplar_info = selection_exemplars(cfg, target, inputs, journal)
    mining_placement = exemplar_info.pop("placement", {})  # where mining ran: run.json, not selection.json
    mining_s = time.monotonic() - t0
    s = cfg.sample
    race = Race(strategies, RaceRule(s.confidence, s.epsilon, s.min_questions, s.tuned_for), metric=s.rank_by)
    loop = RaceRounds(cfg, Requests(cfg, target, pool, sample), race, Budget(s.max_questions, s.max_tokens,
                                                                            s.max_money), teachers, inputs.rows_in,
                      journal)
    t0 = time.monotonic()
    first_round = min(len(sample.reachable), s.round_size) if loop.confident else len(sample.reachable)
    with scoring_engines(cfg, engines, first_round * len(strategies) * len(loop.requests.kinds)) as score_rows:
        loop.run(score_rows, on_look)
    scoring_s = time.monotonic() - t0 - loop.generation_s
    loop.end()
    counts = _counts(loop, inputs, strategies)
    summary = _summary(cfg, loop, strategies, inputs, counts, exemplar_info, target.layout)
    timings = {"mining_s": round(mining_s, 2), "sample_generation_s": round(loop.generation_s, 2),
               "scoring_s": round(scoring_s, 2)}
    result = SelectResult(summary, loop.scores, loop.rejects, pool, counts, timings, loop.placement, inputs.rejects,
                          engine_starts=engines.engine_starts(), mining_placement=mining_placement)
    result.timings["total_s"] = round(time.monotonic() - started, 2)
    return result


def fingerprint(cfg: SelectConfig, commit: str | None) -> dict:
    """What determines a selection's journal: the config but its output, reporting and Ray placement keys
    (``ray.batch_size`` decides which requests share a batch, so it counts), the model's commit, the inputs'
    identities (size and time) and sapray's version."""
    config = cfg.model_dump()
    kept = {k: config[k] for k in ("model", "revision", "engine", "engine_args", "layout", "metrics", "overlong",
                                   "data", "exemplars", "strategies")}
    inputs = [cfg.data.questions, *cfg.data.candidate_sources().values(), cfg.exemplars.file, cfg.exemplars.pool,
              *(s.teacher.path for s in cfg.strategies if s.teacher.kind == "file")]
    return job_fingerprint({**kept, "sample": {k: v for k, v in config["sample"].items() if k != "pick"}},
                           {"model": commit}, inputs, batch_size=cfg.ray.batch_size, scores=SCORES_FORMAT)


def open_journal(cfg: SelectConfig, commit: str | None, restart: bool) -> Journal:
    """The selection's journal in ``<output>/journal`` (see sapray.dataplane.journal)."""
    return Journal(child(cfg.output, "journal"), fingerprint(cfg, commit), restart)


def say_resumed(journal: Journal, teachers: TeacherRounds | None) -> None:
    """What a rerun takes from the journal instead of computing (and paying for) it again."""
    rounds = sorted(int(name.removeprefix("round-")) for name in journal.entries if name.startswith("round-"))
    batches = sum(1 for name in journal.entries if name.startswith("gen-"))
    parts = ["exemplars" if "exemplars" in journal else "",
             f"round{'s' if len(rounds) > 1 else ''} {_spans(rounds)}" if rounds else "",
             f"{batches} teacher batch(es)" if batches else ""]
    if not any(parts):
        return
    requests = sum(len(journal.get(round_entry(n))["scored"]) for n in rounds)
    money = teachers.journaled_money if teachers else None
    paid = f", ${money:,.4f} of generation not paid again" if money else ""
    console.say(f"resuming: {', '.join(p for p in parts if p)} from the journal ({requests:,} requests scored{paid})")


def _spans(numbers: list[int]) -> str:
    """1, 2, 3, 5 -> '1-3, 5'."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in spans)


def _strategies(inputs: Any) -> list[str]:
    strategies = inputs.chosen.chosen
    if not strategies:
        raise ValueError("no valid candidates to score")
    for name in inputs.chosen.similar_names:
        console.say(f"warning: strategy names {name} differ only in case or surrounding spaces: one strategy, or "
                    "several?")
    return strategies


def _counts(loop: RaceRounds, inputs: Any, strategies: list[str]) -> dict:
    """Every candidate row read or generated, in exactly one of scored, rejected and not sampled."""
    race, sample = loop.race, loop.requests.sample
    scored_keys = {(sc["question_id"], sc["strategy"]) for sc in loop.scores}
    rejected_keys = {(r.question_id, r.strategy) for r in loop.rejects if r.stage == "score"}
    not_sampled = [(q, n) for q in sample.reachable for n in sample.by_question.get(q, {})
                   if (q, n) not in scored_keys and (q, n) not in rejected_keys]
    counts = {
        "candidate_rows_in": loop.rows_in,
        "scored": len(loop.scores),
        "rejected": inputs.rejected + sum(1 for r in loop.rejects if r.stage in CANDIDATE_STAGES),
        # rows of complete questions the sample could not reach stayed in the cluster
        "not_sampled": len(not_sampled) + inputs.usable - sample.rows_fetched,
        "not_sampled_eliminated": sum(1 for q, n in not_sampled if q in race.row and n in race.eliminated),
        "question_rows_rejected": inputs.question_rows_rejected,
        "questions_sampled": loop.budget.questions,
        "strategies": len(strategies),
        "requests_scored": loop.requests_scored,
    }
    if counts["scored"] + counts["rejected"] + counts["not_sampled"] != loop.rows_in:
        raise AssertionError(f"row counts do not reconcile: {counts}")
    return counts


def _summary(cfg: SelectConfig, loop: RaceRounds, strategies: list[str], inputs: Any, counts: dict,
             exemplar_info: dict, layout: Layout) -> dict:
    race, s = loop.race, cfg.sample
    contenders = race.contenders()
    summary = summarize(loop.scores, strategies, cfg.bootstrap, s.seed, contenders=contenders,
                        min_questions=s.min_questions, rank_by=s.rank_by)
    summary["ranking"] = contenders + sorted(race.eliminated, key=lambda n: (-race.eliminated[n], summary[
        "per_strategy"][n][RANK_KEYS[s.rank_by]] or math.inf, n))
    summary["race"] = race.to_dict(s.stop)
    summary["race"]["cost"] = cost_table(loop.scores, strategies, loop.budget.questions,
                                         loop.teachers.cost if loop.teachers else {})
    summary.update({
        "model": cfg.model, "engine": cfg.engine, "layout": cfg.layout, "boundary": layout.boundary,
        "metrics": list(cfg.metrics), "strategies": strategies, "strategy_set": inputs.chosen.to_dict(),
        "budget": loop.budget.to_dict(), "counts": counts, "candidates_joined": inputs.joined,
        "exemplars": exemplar_info, "statistic": STATISTIC[s.rank_by],
    })
    return summary
