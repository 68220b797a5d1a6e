"""The ``select`` job, top to bottom: read -> choose strategies -> exemplars -> rounds of
(generate -> contexts -> score -> race) -> reduce.

Rounds: the sampled questions are taken ``round_size`` at a time. With ``sample.stop: confident``
each round is its own Ray Data pass over the strategies still in the race, so an eliminated
strategy's requests never reach the scoring actors (nor, in ``sapray run``, its teacher); with
``fixed`` every planned round is scored in one pass.

Row accounting: every candidate row read or generated ends up in exactly one of scored, rejected
(with a reason in rejects/) or not_sampled (its question was not sampled, or its strategy was
eliminated first), and the job checks that the counts add up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from sapray.config import SelectConfig
from sapray.core import exemplars as ex
from sapray.core import metrics
from sapray.core.contexts import Layout, build_requests
from sapray.core.race import Race, RaceRule
from sapray.core.reduce import summarize
from sapray.core.sample import Budget, rounds, sample_order
from sapray.core.scoring import EncodedRequest, encode_all
from sapray.dataplane.actors import GenerateActor, ScoreActor
from sapray.dataplane.raydata import ActorSession, init_ray, map_with_actors
from sapray.dataplane.read import CANDIDATE_STAGES, Reject, load_exemplar_file, read_questions
from sapray.dataplane.select_inputs import read_selection_inputs
from sapray.engines import SamplingConfig, max_length_of
from sapray.engines.models import locate
from sapray.present.console import console

log = logging.getLogger("sapray")

# The contexts each metric needs (METHOD.md §1-2): SAP its own, PPL the plain question, IFD both
# the plain question and the empty context.
KINDS_OF_METRIC = {"sap": ("sap",), "ppl": ("ppl",), "ifd": ("ppl", "empty")}


def context_kinds(names: list[str]) -> tuple[str, ...]:
    needed = {k for m in names for k in KINDS_OF_METRIC[m]}
    return tuple(k for k in ("sap", "ppl", "empty") if k in needed)


@dataclass
class TeacherRounds:
    """Strategies whose sample is generated round by round (``sapray run``).

    ``generate(questions, strategies)`` returns candidate rows (question_id, strategy, response)
    and generation rejects, and ``cost[strategy]`` holds what generation has spent so far.
    """

    names: list[str]
    generate: Callable[[list[dict], list[str]], tuple[list[dict], list[Reject]]]
    cost: dict[str, dict] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)  # every candidate generated, for the record

    def money(self) -> float:
        return sum(c.get("money") or 0.0 for c in self.cost.values())


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


def _mine_exemplars(cfg: SelectConfig, commit: str | None, tokenizer, compared: list[str],
                    fetch: Callable[[set[str]], dict[str, dict]]) -> tuple[list, dict]:
    """The exemplar pool: supplied, mined from a pool kept apart from the ``compared`` questions, or,
    with neither, mined from the compared questions themselves (``ex.choose`` skips a question's own;
    ``fetch`` brings their rows from the cluster)."""
    if cfg.exemplars.file:
        pool = load_exemplar_file(cfg.exemplars.file)
        return pool, {"source": cfg.exemplars.file, "supplied": len(pool)}
    if cfg.exemplars.pool:
        questions, rejects = read_questions(cfg.exemplars.pool, cfg.data.columns,
                                            need_gold=cfg.exemplars.checker != "none")
        kept_apart = set(compared)
        chosen = sample_order([q for q in questions if q not in kept_apart], cfg.sample.seed)[: cfg.exemplars.pool_size]
    else:
        rejects = []
        chosen = sample_order(compared, cfg.sample.seed)[: cfg.exemplars.pool_size]
        questions = fetch(set(chosen))
    pool = [questions[q] for q in chosen]
    log.info("mining exemplars: the target answers %d pool questions (greedy, max %d tokens)",
             len(pool), cfg.exemplars.max_tokens)
    prompts = ex.zero_shot_prompts(tokenizer, [q["question"] for q in pool])
    rows = [{"row_id": q["question_id"], "prompt_ids": p} for q, p in zip(pool, prompts, strict=True)]
    sampling = SamplingConfig(temperature=0.0, max_tokens=cfg.exemplars.max_tokens)
    out = {r["row_id"]: r for r in console.progress(map_with_actors(
        rows, GenerateActor,
        {"engine": cfg.engine, "model": cfg.model, "revision": commit, "engine_args": cfg.engine_args,
         "sampling": sampling.__dict__},
        cfg.ray), len(rows), "mining exemplars")}
    answers = [out[q["question_id"]]["texts"][0] for q in pool]
    truncated = [out[q["question_id"]]["finish_reasons"][0] == "length" for q in pool]
    # from the compared questions, one more: a question whose own answer is among them still gets n others
    need = cfg.exemplars.n + (0 if cfg.exemplars.pool else 1)
    mined, report = ex.mine(pool, answers, need, cfg.exemplars.checker, cfg.exemplars.regex,
                            cfg.exemplars.shortfall, truncated)
    info = {"source": cfg.exemplars.pool or "the compared questions", "pool_rejects": len(rejects), **report.to_dict(),
            "generated_tokens": int(sum(r["completion_tokens"] for r in out.values()))}
    return mined, info


def _candidate_metrics(by_kind: dict[str, dict]) -> dict:
    """The metrics of one candidate from its scored contexts; a metric whose context was not scored is NaN."""
    logprobs = {k: r["token_logprobs"] for k, r in by_kind.items()}
    nan = math.nan
    return {
        "sap": metrics.sap(logprobs["sap"]),
        "ppl": metrics.perplexity(logprobs["ppl"]) if "ppl" in logprobs else nan,
        "ifd": metrics.ifd(logprobs["ppl"], logprobs["empty"]) if "empty" in logprobs else nan,
        **{f"nll_{k}": metrics.nll(v) for k, v in logprobs.items()},
        "length": by_kind["sap"]["n_continuation_tokens"],
        "context_tokens_sap": by_kind["sap"]["n_context_tokens"],
        "scored_tokens": sum(r["n_context_tokens"] + r["n_continuation_tokens"] for r in by_kind.values()),
        "truncated_tokens": max(r["truncated_tokens"] for r in by_kind.values()),
    }


def _say_round(record: dict, confidence: float, epsilon: float) -> str:
    """One console line per round: who leads, who was dropped and why."""
    leader = record["leader"]
    if leader is None:
        return f"round {record['round']}: no candidate could be scored yet"
    line = (f"round {record['round']}: {record['questions']} questions, {len(record['mean_sap'])} strategies; "
            f"leading {leader} (mean SAP {record['mean_sap'][leader]:.3f})")
    for name in record["eliminated"]:
        worse = record["intervals"][name]["lo"]
        line += (f"; dropped {name} (worse than {leader} by >= {worse:.3f} SAP, more than {epsilon:.0%}; "
                 f"{confidence:.0%} confidence)")
    if record.get("good_enough"):
        line += f"; {leader} is good enough (within {epsilon:.0%} of the best, {confidence:.0%} confidence)"
    return line


# An actor session runs over this many numbered blocks at most (planned up front; more falls back to a
# pool per round): every sampled question's requests, cut into blocks, plus one part-block per round.
MAX_SESSION_TICKETS = 20_000


def session_tickets(questions: int, requests_per_question: int, batch_size: int) -> int:
    """Blocks that rounds over ``questions`` can need at most (at worst a round per question, when a cap
    cuts rounds short)."""
    return -(-questions * requests_per_question // batch_size) + questions


def run_select(cfg: SelectConfig, on_round: Callable[[str], None] | None = None,
               teachers: TeacherRounds | None = None) -> SelectResult:
    from transformers import AutoTokenizer

    started = time.monotonic()
    resolved = locate(cfg.model, cfg.revision)  # the driver fails first; actors load this same commit
    model_path = resolved.path
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    layout = Layout(cfg.layout, model_name=cfg.model if cfg.model != "smollm2" else Path(model_path).name)
    generated = teachers.names if teachers else []

    # read in the cluster, and choose the strategies to pair
    init_ray(cfg.ray)
    inputs = read_selection_inputs(cfg.data, cfg.ray, generated)
    chosen = inputs.chosen
    strategies = chosen.chosen
    if not strategies:
        raise ValueError("no valid candidates to score")
    for name in chosen.similar_names:
        log.warning("strategy names %s differ only in case or surrounding spaces: one strategy, or several?", name)

    # sample (paired: only questions with every data strategy; generated ones cover what is sampled): the
    # rows of the questions the sample can reach come to the driver
    order = sample_order(inputs.complete, cfg.sample.seed)
    reachable = order[: cfg.sample.max_questions] if cfg.sample.max_questions else order
    questions, rows = inputs.fetch(set(reachable))
    by_question: dict[str, dict[str, dict]] = {}
    for c in rows:
        by_question.setdefault(c["question_id"], {})[c["strategy"]] = c
    rows_fetched, rows_in = len(rows), inputs.rows_in
    rejects: list[Reject] = []  # the driver's: scoring and sample generation

    t0 = time.monotonic()
    pool, exemplar_info = _mine_exemplars(cfg, resolved.commit, tokenizer, inputs.question_ids,
                                          lambda ids: inputs.fetch(ids)[0])
    mining_s = time.monotonic() - t0
    position = {q: i for i, q in enumerate(order)}
    kinds = context_kinds(cfg.metrics)
    limit = max_length_of(cfg.engine_args)

    def requests_of(qid: str, names: list[str]) -> list:
        chosen_exemplars = [e.text for e in ex.choose(pool, position[qid], qid, cfg.exemplars.n)]
        out = []
        for name in names:
            if name in by_question.get(qid, {}):
                out += build_requests(layout, f"{qid}/{name}", questions[qid]["question"],
                                      by_question[qid][name]["response"], chosen_exemplars, kinds, question_id=qid)
        return out

    def tokens_of(qid: str, names: list[str]) -> int:
        slots = encode_all(requests_of(qid, names), tokenizer, limit, layout.boundary, cfg.overlong)
        return sum(len(e.input_ids) for e in slots if isinstance(e, EncodedRequest))

    confident = cfg.sample.stop == "confident"
    s = cfg.sample
    race = Race(strategies, RaceRule(s.confidence, s.epsilon, s.min_questions, s.tuned_for))
    budget = Budget(s.max_questions, s.max_tokens, s.max_money)
    plan = rounds(order, budget, s.round_size, lambda qid: tokens_of(qid, race.remaining))
    passes: Iterator[list[list[str]]] = ([r] for r in plan) if confident else iter([list(plan)])
    actor_kwargs = {"engine": cfg.engine, "model": cfg.model, "revision": resolved.commit,
                    "engine_args": cfg.engine_args, "boundary": layout.boundary, "overlong": cfg.overlong}
    scores: list[dict] = []
    placement: dict[str, int] = {}
    requests_scored = 0
    round_number = 0
    t0 = time.monotonic()
    generation_s = 0.0
    with contextlib.ExitStack() as session:
        score_rows = partial(map_with_actors, actor_cls=ScoreActor, actor_kwargs=actor_kwargs, cfg=cfg.ray)
        # Without teachers the scoring actors stay for every round (their engines load once); teachers'
        # actors need the same CPUs and GPUs between rounds, so with them each round has its own pool.
        per_question = len(strategies) * len(kinds)
        tickets = session_tickets(len(reachable), per_question, cfg.ray.batch_size)
        if not teachers and tickets <= MAX_SESSION_TICKETS:
            first = min(len(reachable), s.round_size) if confident else len(reachable)
            n_blocks = -(-first * per_question // cfg.ray.batch_size)  # no idle actor
            score_rows = session.enter_context(
                ActorSession(ScoreActor, actor_kwargs, cfg.ray, tickets, n_blocks=n_blocks)).map
        for pass_rounds in passes:
            live = list(race.remaining)
            if teachers:
                g0 = time.monotonic()
                asked = [questions[q] for r in pass_rounds for q in r]
                new_rows, generation_rejects = teachers.generate(asked, [n for n in live if n in generated])
                generation_s += time.monotonic() - g0
                rejects += generation_rejects
                for row in new_rows:
                    by_question.setdefault(row["question_id"], {})[row["strategy"]] = row
                rows_in += len(new_rows)
                budget.tokens += sum(tokens_of(q, [n for n in live if n in generated]) for r in pass_rounds for q in r)
                spent = teachers.money()
                budget.money_per_question = (spent - budget.money) / max(1, len(asked))
                budget.money = spent
            request_rows, round_of = [], {}
            for i, round_ids in enumerate(pass_rounds):
                for qid in round_ids:
                    round_of[qid] = i
                    for r in requests_of(qid, live):
                        request_rows.append({"request_id": r.request_id, "context_json": json.dumps(r.context),
                                             "continuation": r.continuation, "context_key": r.context_key or ""})
            expected = [sum(len(requests_of(q, live)) for q in ids) for ids in pass_rounds]
            done = [0] * len(pass_rounds)
            scored: dict[str, dict] = {}
            what = f"round {round_number + 1}: scoring" if confident else "scoring"
            for row in console.progress(score_rows(request_rows), len(request_rows), what):
                scored[row["request_id"]] = row
                placement[row["actor"]] = placement.get(row["actor"], 0) + 1
                i = round_of[row["request_id"].split("/")[0]]
                done[i] += 1
                if done[i] < expected[i]:
                    continue
                round_number += 1
                new = _collect_round(pass_rounds[i], live, by_question, scored, kinds, rejects, pool, position, cfg)
                scores.extend(new)
                for score in new:
                    race.add(score["question_id"], score["strategy"], score["sap"])
                record = race.look(round_number, budget.tokens, budget.money if teachers else None, decide=confident)
                if on_round:
                    on_round(_say_round(record, s.confidence, s.epsilon))
            requests_scored += len(request_rows)
            if race.ended:
                break
    scoring_s = time.monotonic() - t0 - generation_s
    if not race.ended:
        if budget.stopped_by == "all_questions":
            race.stop("exhausted", f"every eligible question was scored ({budget.questions}) before a confident "
                      "decision; the contenders are ranked by mean SAP")
        else:
            race.stop("budget", f"the {budget.stopped_by} cap was reached before a confident decision; the "
                      "contenders are ranked by mean SAP")

    contenders = race.contenders()
    summary = summarize(scores, strategies, cfg.bootstrap, s.seed, contenders=contenders,
                        min_questions=s.min_questions)
    summary["ranking"] = contenders + sorted(race.eliminated, key=lambda n: (-race.eliminated[n], summary[
        "per_strategy"][n]["mean_sap"] or math.inf, n))
    summary["race"] = race.to_dict(s.stop)
    summary["race"]["cost"] = _cost_table(scores, strategies, budget.questions, teachers)

    scored_keys = {(sc["question_id"], sc["strategy"]) for sc in scores}
    rejected_keys = {(r.question_id, r.strategy) for r in rejects if r.stage == "score"}
    sampled = set(race.row)
    not_sampled = [(q, n) for q in reachable for n in by_question.get(q, {})
                   if (q, n) not in scored_keys and (q, n) not in rejected_keys]
    counts = {
        "candidate_rows_in": rows_in,
        "scored": len(scores),
        "rejected": inputs.rejected + sum(1 for r in rejects if r.stage in CANDIDATE_STAGES),
        # rows of complete questions the sample could not reach stayed in the cluster
        "not_sampled": len(not_sampled) + inputs.usable - rows_fetched,
        "not_sampled_eliminated": sum(1 for q, n in not_sampled if q in sampled and n in race.eliminated),
        "question_rows_rejected": inputs.question_rows_rejected,
        "questions_sampled": budget.questions,
        "strategies": len(strategies),
        "requests_scored": requests_scored,
    }
    if counts["scored"] + counts["rejected"] + counts["not_sampled"] != rows_in:
        raise AssertionError(f"row counts do not reconcile: {counts}")
    summary.update({
        "model": cfg.model, "engine": cfg.engine, "layout": cfg.layout, "boundary": layout.boundary,
        "metrics": list(cfg.metrics), "strategies": strategies, "strategy_set": chosen.to_dict(),
        "budget": budget.to_dict(), "counts": counts, "candidates_joined": inputs.joined, "exemplars": exemplar_info,
        "statistic": "mean SAP per strategy (lower = more familiar, ranked first)",
    })
    timings = {"mining_s": round(mining_s, 2), "sample_generation_s": round(generation_s, 2),
               "scoring_s": round(scoring_s, 2), "total_s": round(time.monotonic() - started, 2)}
    return SelectResult(summary, scores, rejects, pool, counts, timings, placement, inputs.rejects)


def _cost_table(scores: list[dict], strategies: list[str], questions: int, teachers: TeacherRounds | None) -> dict:
    """Per strategy: what scoring (and generating) its sample cost, and what dropping it early saved
    against the fixed design at the same number of questions (its mean cost per question times the
    questions it was not asked)."""
    table = {}
    for name in strategies:
        rows = [sc for sc in scores if sc["strategy"] == name]
        n = len(rows)
        tokens = sum(sc["scored_tokens"] for sc in rows)
        entry = {"questions": n, "scoring_tokens": tokens,
                 "scoring_tokens_saved": round(tokens / n * (questions - n)) if n else 0}
        gen = (teachers.cost.get(name) if teachers else None)
        if gen:
            asked = gen["questions"]
            per_question = {k: gen[k] / asked if asked else 0.0 for k in ("prompt_tokens", "completion_tokens")}
            entry["generation"] = gen
            entry["generation_saved"] = {
                "tokens": round(sum(per_question.values()) * (questions - asked)),
                "money": (round(gen["money"] / asked * (questions - asked), 6)
                          if gen.get("money") is not None and asked else None),
            }
        table[name] = entry
    return table


def _collect_round(
    round_ids: list[str], live: list[str], by_question: dict[str, dict[str, dict]], scored: dict[str, dict],
    kinds: tuple[str, ...], rejects: list[Reject], pool: list, position: dict[str, int], cfg: SelectConfig,
) -> list[dict]:
    """Per-candidate metrics for one finished round; a candidate with a refused request is rejected."""
    out = []
    for qid in round_ids:
        chosen = ex.choose(pool, position[qid], qid, cfg.exemplars.n)
        for name in live:
            c = by_question.get(qid, {}).get(name)
            if c is None:
                continue
            by_kind = {k: scored[f"{qid}/{name}/{k}"] for k in kinds}
            errors = [r["error"] for r in by_kind.values() if r["error"]]
            if errors:
                rejects.append(Reject(c.get("source", ""), "; ".join(errors), "score", qid, name))
                continue
            out.append({
                "question_id": qid, "strategy": name, **_candidate_metrics(by_kind),
                "reward": c.get("reward"),
                "exemplar_ids": [e.exemplar_id for e in chosen],
                "exemplars_checked": all(e.checked for e in chosen),
                "model": cfg.model, "engine": cfg.engine, "layout": cfg.layout, "source": c.get("source", ""),
            })
    return out
