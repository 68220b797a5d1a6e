"""The ``select`` job, top to bottom: read -> sample -> exemplars -> contexts -> score -> reduce -> report.

Row accounting: every candidate row read ends up in exactly one of scored, rejected (with a reason
in rejects.jsonl) or not_sampled, and the job checks that the counts add up.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sapray import exemplars as ex
from sapray import metrics
from sapray.actors import GenerateActor, ScoreActor
from sapray.config import SelectConfig
from sapray.contexts import CONTEXT_KINDS, Layout, build_requests
from sapray.engines import SamplingConfig, max_length_of
from sapray.models import resolve_model
from sapray.raydata import init_ray, map_with_actors
from sapray.read import CANDIDATE_STAGES, Reject, read_candidates, read_questions
from sapray.reduce import summarize
from sapray.sample import Budget, paired_question_ids, rounds, sample_order
from sapray.scoring import EncodedRequest, encode_all

log = logging.getLogger("sapray")


@dataclass
class SelectResult:
    summary: dict
    scores: list[dict]
    rejects: list[Reject]
    exemplars: list[ex.Exemplar]
    counts: dict
    timings: dict = field(default_factory=dict)
    placement: dict = field(default_factory=dict)  # "node/actor" -> requests it scored


def _mine_exemplars(cfg: SelectConfig, model_path: str, tokenizer, exclude: set[str]) -> tuple[list, dict]:
    if cfg.exemplars.file:
        pool = ex.load_exemplar_file(cfg.exemplars.file)
        return pool, {"source": cfg.exemplars.file, "supplied": len(pool)}
    questions, rejects = read_questions(cfg.exemplars.pool, cfg.data.columns,
                                        need_gold=cfg.exemplars.checker != "none")
    eligible = [q for q in questions if q not in exclude]
    chosen = sample_order(eligible, cfg.sample.seed)[: cfg.exemplars.pool_size]
    pool = [questions[q] for q in chosen]
    log.info("mining exemplars: the target answers %d pool questions (greedy, max %d tokens)",
             len(pool), cfg.exemplars.max_tokens)
    prompts = ex.zero_shot_prompts(tokenizer, [q["question"] for q in pool])
    rows = [{"row_id": q["question_id"], "prompt_ids": p} for q, p in zip(pool, prompts, strict=True)]
    sampling = SamplingConfig(temperature=0.0, max_tokens=cfg.exemplars.max_tokens)
    out = {r["row_id"]: r for r in map_with_actors(
        rows, GenerateActor,
        {"engine": cfg.engine, "model": cfg.model, "engine_args": cfg.engine_args,
         "sampling": sampling.__dict__},
        cfg.ray)}
    answers = [out[q["question_id"]]["texts"][0] for q in pool]
    truncated = [out[q["question_id"]]["finish_reasons"][0] == "length" for q in pool]
    mined, report = ex.mine(pool, answers, cfg.exemplars.n, cfg.exemplars.checker, cfg.exemplars.regex,
                            cfg.exemplars.shortfall, truncated)
    info = {"source": cfg.exemplars.pool, "pool_rejects": len(rejects), **report.to_dict(),
            "generated_tokens": int(sum(r["completion_tokens"] for r in out.values()))}
    return mined, info


def _candidate_metrics(candidate: dict, by_kind: dict[str, dict]) -> dict:
    logprobs = {k: r["token_logprobs"] for k, r in by_kind.items()}
    return {
        "sap": metrics.sap(logprobs["sap"]),
        "ppl": metrics.perplexity(logprobs["ppl"]),
        "ifd": metrics.ifd(logprobs["ppl"], logprobs["empty"]),
        **{f"nll_{k}": metrics.nll(v) for k, v in logprobs.items()},
        "length": by_kind["sap"]["n_continuation_tokens"],
        "context_tokens_sap": by_kind["sap"]["n_context_tokens"],
        "truncated_tokens": max(r["truncated_tokens"] for r in by_kind.values()),
    }


def run_select(cfg: SelectConfig, on_round: Callable[[int, dict], None] | None = None) -> SelectResult:
    from transformers import AutoTokenizer

    started = time.monotonic()
    model_path = resolve_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    layout = Layout(cfg.layout, model_name=cfg.model if cfg.model != "smollm2" else Path(model_path).name)

    # read
    questions, rejects = read_questions(cfg.data.questions, cfg.data.columns, need_gold=False)
    sources = cfg.data.candidate_sources()
    candidates, candidate_rejects, rows_in = read_candidates(sources, cfg.data.columns, questions)
    rejects = [*rejects, *candidate_rejects]
    strategies = sorted({c["strategy"] for c in candidates})
    if not strategies:
        raise ValueError("no valid candidates to score")

    # sample (paired: only questions with every strategy)
    complete, lacking = paired_question_ids(candidates, strategies)
    for c in candidates:
        if c["question_id"] in lacking:
            rejects.append(Reject(c["source"], f"question lacks strategies {lacking[c['question_id']]} "
                                  "(paired design scores complete questions only)", "sample",
                                  c["question_id"], c["strategy"]))
    by_question: dict[str, list[dict]] = {}
    for c in candidates:
        if c["question_id"] not in lacking:
            by_question.setdefault(c["question_id"], []).append(c)
    for rows in by_question.values():
        rows.sort(key=lambda r: r["strategy"])

    init_ray(cfg.ray)
    t0 = time.monotonic()
    pool, exemplar_info = _mine_exemplars(cfg, model_path, tokenizer, exclude=set(questions))
    mining_s = time.monotonic() - t0
    order = sample_order(complete, cfg.sample.seed)
    position = {q: i for i, q in enumerate(order)}

    # contexts: every kind for every candidate of a question, grouped by question
    def requests_of(qid: str) -> list:
        chosen = ex.choose(pool, position[qid], qid, cfg.exemplars.n)
        out = []
        for c in by_question[qid]:
            out += build_requests(layout, f"{qid}/{c['strategy']}", questions[qid]["question"], c["response"],
                                  [e.text for e in chosen], CONTEXT_KINDS, question_id=qid)
        return out

    limit = max_length_of(cfg.engine_args)
    encoded_cost: dict[str, int] = {}

    def tokens_of(qid: str) -> int:
        slots = encode_all(requests_of(qid), tokenizer, limit, layout.boundary, cfg.overlong)
        encoded_cost[qid] = sum(len(e.input_ids) for e in slots if isinstance(e, EncodedRequest))
        return encoded_cost[qid]

    budget = Budget(cfg.sample.max_questions, cfg.sample.max_tokens)
    plan = list(rounds(order, budget, cfg.sample.round_size, tokens_of))
    sampled = [q for r in plan for q in r]
    log.info("sample: %d questions x %d strategies in %d round(s), %d tokens to score (budget: %s)",
             len(sampled), len(strategies), len(plan), budget.tokens, budget.to_dict())

    request_rows, round_of = [], {}
    for i, round_ids in enumerate(plan):
        for qid in round_ids:
            round_of[qid] = i
            for r in requests_of(qid):
                request_rows.append({"request_id": r.request_id, "context_json": json.dumps(r.context),
                                     "continuation": r.continuation, "context_key": r.context_key or ""})

    # score on Ray Data, reducing after each round
    t0 = time.monotonic()
    actor_kwargs = {"engine": cfg.engine, "model": cfg.model, "engine_args": cfg.engine_args,
                    "boundary": layout.boundary, "overlong": cfg.overlong}
    scored: dict[str, dict] = {}
    scores: list[dict] = []
    expected = {i: sum(len(by_question[q]) * len(CONTEXT_KINDS) for q in ids) for i, ids in enumerate(plan)}
    done_in_round = dict.fromkeys(expected, 0)
    for row in map_with_actors(request_rows, ScoreActor, actor_kwargs, cfg.ray):
        scored[row["request_id"]] = row
        qid = row["request_id"].split("/")[0]
        done_in_round[round_of[qid]] += 1
        r = round_of[qid]
        if done_in_round[r] == expected[r]:
            new = _collect_round(plan[r], by_question, scored, questions, rejects, pool, position, cfg)
            scores.extend(new)
            estimate = summarize(scores, strategies, bootstrap=0)
            if on_round:
                on_round(r, estimate)
    scoring_s = time.monotonic() - t0

    summary = summarize(scores, strategies, cfg.bootstrap, cfg.sample.seed)
    not_sampled = sum(len(by_question[q]) for q in complete if q not in round_of)
    counts = {
        "candidate_rows_in": rows_in,
        "scored": len(scores),
        "rejected": sum(1 for r in rejects if r.stage in CANDIDATE_STAGES),
        "not_sampled": not_sampled,
        "question_rows_rejected": sum(1 for r in rejects if r.stage == "questions"),
        "questions_sampled": len(sampled),
        "strategies": len(strategies),
        "requests_scored": len(request_rows),
    }
    if counts["scored"] + counts["rejected"] + counts["not_sampled"] != rows_in:
        raise AssertionError(f"row counts do not reconcile: {counts}")
    summary.update({
        "model": cfg.model, "engine": cfg.engine, "layout": cfg.layout, "boundary": layout.boundary,
        "strategies": strategies, "budget": budget.to_dict(), "counts": counts, "exemplars": exemplar_info,
        "statistic": "mean SAP per strategy (lower = more familiar, ranked first)",
    })
    timings = {"mining_s": round(mining_s, 2), "scoring_s": round(scoring_s, 2),
               "total_s": round(time.monotonic() - started, 2)}
    placement: dict[str, int] = {}
    for row in scored.values():
        placement[row["actor"]] = placement.get(row["actor"], 0) + 1
    return SelectResult(summary, scores, rejects, pool, counts, timings, placement)


def _collect_round(
    round_ids: list[str], by_question: dict[str, list[dict]], scored: dict[str, dict], questions: dict,
    rejects: list[Reject], pool: list, position: dict[str, int], cfg: SelectConfig,
) -> list[dict]:
    """Per-candidate metrics for one finished round; a candidate with a refused request is rejected."""
    out = []
    for qid in round_ids:
        chosen = ex.choose(pool, position[qid], qid, cfg.exemplars.n)
        for c in by_question[qid]:
            by_kind = {k: scored[f"{qid}/{c['strategy']}/{k}"] for k in CONTEXT_KINDS}
            errors = [r["error"] for r in by_kind.values() if r["error"]]
            if errors:
                rejects.append(Reject(c["source"], "; ".join(errors), "score", qid, c["strategy"]))
                continue
            out.append({
                "question_id": qid, "strategy": c["strategy"], **_candidate_metrics(c, by_kind),
                "reward": c["reward"],
                "exemplar_ids": [e.exemplar_id for e in chosen],
                "exemplars_checked": all(e.checked for e in chosen),
                "model": cfg.model, "engine": cfg.engine, "layout": cfg.layout, "source": c["source"],
            })
    return out
