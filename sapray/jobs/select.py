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
from sapray.core.scoring import EncodedRequest, ScoreRequest, encode_all
from sapray.dataplane.actors import GenerateActor, ScoreActor
from sapray.dataplane.journal import Journal, input_identity, sapray_version
from sapray.dataplane.raydata import cut, init_ray, map_blocks, map_with_actors
from sapray.dataplane.read import CANDIDATE_STAGES, Reject, child, load_exemplar_file, read_questions
from sapray.dataplane.resident import Engines
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

    ``generate(questions, strategies, round)`` returns candidate rows (question_id, strategy, response)
    and generation rejects (``round``: the number of the first round these questions are for), and
    ``cost[strategy]`` holds what generation has spent so far; ``drop(strategies)`` is told of each
    elimination (a teacher whose strategies are all out releases its engines).
    """

    names: list[str]
    generate: Callable[[list[dict], list[str], int], tuple[list[dict], list[Reject]]]
    drop: Callable[[list[str]], None] = lambda names: None  # the race eliminated these strategies
    journaled_money: float | None = None  # what the journal's generation cost, where teachers have prices
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
    engine_starts: dict = field(default_factory=dict)  # engine -> node/actor -> starts (resident engines)
    mining_placement: dict = field(default_factory=dict)  # "node/actor" -> exemplar answers it generated


def _mine_exemplars(cfg: SelectConfig, target: Target, compared: list[str],
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
    # from the compared questions, one more: a question whose own answer is among them still gets n others
    need = cfg.exemplars.n + (0 if cfg.exemplars.pool else 1)
    unchecked = cfg.exemplars.checker == "none" or not any(q.get("gold") for q in pool)
    if unchecked:  # nothing can be checked: ask only for the answers that will be used
        pool = pool[:need]
    console.say(f"mining exemplars: the target answers {len(pool)} questions (greedy, up to "
                f"{cfg.exemplars.max_tokens} tokens each)" + ("; with no gold answer to check them against, its "
                                                             "answers are used unchecked" if unchecked else ""))
    prompts = ex.zero_shot_prompts(target.tokenizer, [q["question"] for q in pool])
    rows = [{"row_id": q["question_id"], "prompt_ids": p} for q, p in zip(pool, prompts, strict=True)]
    sampling = SamplingConfig(temperature=0.0, max_tokens=cfg.exemplars.max_tokens)
    out = {r["row_id"]: r for r in console.progress(map_with_actors(
        rows, GenerateActor,
        {"engine": cfg.engine, "model": cfg.model, "revision": target.commit, "engine_args": cfg.engine_args,
         "sampling": sampling.__dict__},
        cfg.ray), len(rows), "mining exemplars")}
    placement = {}
    for row in out.values():
        placement[row["actor"]] = placement.get(row["actor"], 0) + 1
    answers = [out[q["question_id"]]["texts"][0] for q in pool]
    truncated = [out[q["question_id"]]["finish_reasons"][0] == "length" for q in pool]
    mined, report = ex.mine(pool, answers, need, cfg.exemplars.checker, cfg.exemplars.regex,
                            cfg.exemplars.shortfall, truncated)
    info = {"source": cfg.exemplars.pool or "the compared questions", "pool_rejects": len(rejects), **report.to_dict(),
            "generated_tokens": int(sum(r["completion_tokens"] for r in out.values())), "placement": placement}
    return mined, info


def scored_request(row: dict) -> dict:
    """What a round keeps of a scoring actor's row (and journals): the continuation's log-prob sum (exactly
    rounded, ``math.fsum``, so its NLL is the one the token log-probs give), the token counts, the error."""
    return {"request_id": row["request_id"], "logprob_sum": math.fsum(row["token_logprobs"]),
            **{k: int(row[k]) for k in ("n_context_tokens", "n_continuation_tokens", "truncated_tokens")},
            "error": row["error"], "actor": row["actor"]}


def round_entry(number: int) -> str:
    return f"round-{number:04d}"


def _exemplars(cfg: SelectConfig, target: Target, inputs: Any, journal: Journal) -> tuple[list, dict]:
    """The exemplars: supplied in a file, or mined (once: the journal keeps them)."""
    if cfg.exemplars.file is None and "exemplars" in journal:
        mined = journal.get("exemplars")
        return [ex.Exemplar(**e) for e in mined["exemplars"]], mined["info"]
    pool, info = _mine_exemplars(cfg, target, inputs.question_ids, lambda ids: inputs.fetch(ids)[0])
    if cfg.exemplars.file is None:
        journal.put("exemplars", {"exemplars": [e.to_dict() for e in pool], "info": info})
    return pool, info


def _candidate_metrics(by_kind: dict[str, dict]) -> dict:
    """The metrics of one candidate from its scored contexts; a metric whose context was not scored is NaN.
    SAP and PPL are exp(NLL) of the SAP and plain-question contexts; IFD the ratio of the question's NLL
    to the empty context's."""
    nll = {k: metrics.nll_of_sum(r["logprob_sum"], r["n_continuation_tokens"]) for k, r in by_kind.items()}
    nan = math.nan
    return {
        "sap": math.exp(nll["sap"]),
        "ppl": math.exp(nll["ppl"]) if "ppl" in nll else nan,
        "ifd": metrics.ifd_of_nll(nll["ppl"], nll["empty"]) if "empty" in nll else nan,
        **{f"nll_{k}": v for k, v in nll.items()},
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


@dataclass
class Target:
    """The model being selected for, resolved once by the driver (actors load this same commit)."""

    path: str
    commit: str | None
    tokenizer: Any
    layout: Layout

    @classmethod
    def of(cls, cfg: SelectConfig) -> Target:
        from transformers import AutoTokenizer

        resolved = locate(cfg.model, cfg.revision)  # the driver fails first
        layout = Layout(cfg.layout, model_name=cfg.model if cfg.model != "smollm2" else Path(resolved.path).name)
        return cls(resolved.path, resolved.commit, AutoTokenizer.from_pretrained(resolved.path), layout)


def scorer_kwargs(cfg: SelectConfig, commit: str | None, boundary: str) -> dict[str, Any]:
    """The scoring engine actors' arguments."""
    return {"engine": cfg.engine, "model": cfg.model, "revision": commit, "engine_args": cfg.engine_args,
            "boundary": boundary, "overlong": cfg.overlong}


@dataclass
class Sample:
    """The paired sample: questions in the seeded order, those the caps can reach, and their rows (brought
    to the driver; the rest stay in the cluster). Generated strategies cover every sampled question."""

    order: list[str]
    reachable: list[str]
    questions: dict[str, dict]
    by_question: dict[str, dict[str, dict]]  # question -> strategy -> candidate row
    rows_fetched: int

    @classmethod
    def draw(cls, cfg: SelectConfig, inputs: Any) -> Sample:
        order = sample_order(inputs.complete, cfg.sample.seed)
        reachable = order[: cfg.sample.max_questions] if cfg.sample.max_questions else order
        questions, rows = inputs.fetch(set(reachable))
        by_question: dict[str, dict[str, dict]] = {}
        for c in rows:
            by_question.setdefault(c["question_id"], {})[c["strategy"]] = c
        return cls(order, reachable, questions, by_question, len(rows))


@dataclass
class Requests:
    """Each question's scoring requests: its candidates' responses after the contexts the metrics need."""

    cfg: SelectConfig
    target: Target
    exemplars: list[ex.Exemplar]
    sample: Sample

    def __post_init__(self) -> None:
        self.kinds = context_kinds(self.cfg.metrics)
        self.position = {q: i for i, q in enumerate(self.sample.order)}
        self.limit = max_length_of(self.cfg.engine_args)

    def chosen_exemplars(self, qid: str) -> list[ex.Exemplar]:
        return ex.choose(self.exemplars, self.position[qid], qid, self.cfg.exemplars.n)

    def of(self, qid: str, names: list[str]) -> list[ScoreRequest]:
        texts = [e.text for e in self.chosen_exemplars(qid)]
        candidates = self.sample.by_question.get(qid, {})
        return [r for name in names if name in candidates
                for r in build_requests(self.target.layout, f"{qid}/{name}", self.sample.questions[qid]["question"],
                                        candidates[name]["response"], texts, self.kinds, question_id=qid)]

    def tokens(self, qid: str, names: list[str]) -> int:
        slots = encode_all(self.of(qid, names), self.target.tokenizer, self.limit, self.target.layout.boundary,
                           self.cfg.overlong)
        return sum(len(e.input_ids) for e in slots if isinstance(e, EncodedRequest))

    def rows(self, round_ids: list[str], names: list[str]) -> list[dict]:
        """The requests of a round as rows for the scoring actors."""
        return [{"request_id": r.request_id, "context_json": json.dumps(r.context), "continuation": r.continuation,
                 "context_key": r.context_key or ""} for qid in round_ids for r in self.of(qid, names)]


@dataclass
class RaceRounds:
    """The race's rounds: generate (``sapray run``), score, collect, look. Every candidate row ends scored,
    rejected or not sampled."""

    cfg: SelectConfig
    requests: Requests
    race: Race
    budget: Budget
    teachers: TeacherRounds | None
    rows_in: int
    journal: Journal
    scores: list[dict] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)  # the driver's: scoring and sample generation
    placement: dict[str, int] = field(default_factory=dict)  # "node/actor" -> requests it scored
    requests_scored: int = 0
    generation_s: float = 0.0

    def passes(self) -> Iterator[list[list[str]]]:
        """The rounds, planned one at a time (the race drops strategies between them); the fixed design
        scores every planned round in one pass."""
        planned = rounds(self.requests.sample.order, self.budget, self.cfg.sample.round_size,
                         lambda qid: self.requests.tokens(qid, self.race.remaining))
        return ([r] for r in planned) if self.confident else iter([list(planned)])

    @property
    def confident(self) -> bool:
        return self.cfg.sample.stop == "confident"

    def run(self, score_blocks: Callable[[list[list[dict]]], Iterator[dict]],
            on_round: Callable[[str], None] | None) -> None:
        """Every round: its sample generated (``sapray run``), its requests scored (each round's requests cut
        into blocks of their own, so a round scores alike whatever else runs), collected and looked at; a
        round in the journal is replayed from it, and each new one journaled before the next look."""
        number = 0
        for pass_rounds in self.passes():
            live = list(self.race.remaining)
            numbers = list(range(number + 1, number + 1 + len(pass_rounds)))
            if self.teachers:
                self._generate(pass_rounds, live, numbers[0])
            journaled = {n: self.journal.get(round_entry(n)) for n in numbers if round_entry(n) in self.journal}
            new = [(n, self.requests.rows(ids, live)) for n, ids in zip(numbers, pass_rounds, strict=True)
                   if n not in journaled]
            blocks = [block for _, rows in new for block in cut(rows, self.cfg.ray.batch_size)]
            what = f"round {numbers[0]}: scoring" if self.confident else "scoring"
            stream = console.progress(score_blocks(blocks), sum(len(rows) for _, rows in new), what)
            for n, ids in zip(numbers, pass_rounds, strict=True):
                if n in journaled:
                    scored = journaled[n]["scored"]
                else:
                    scored = [scored_request(next(stream)) for _ in dict(new)[n]]
                    self.journal.put(round_entry(n), {"questions": ids, "scored": scored})
                self.requests_scored += len(scored)
                for row in scored:
                    self.placement[row["actor"]] = self.placement.get(row["actor"], 0) + 1
                self._look(n, ids, live, {row["request_id"]: row for row in scored}, on_round)
            if next(stream, None) is not None:  # (also ends the progress line)
                raise AssertionError("the scorer returned more rows than it was given")
            number = numbers[-1]
            if self.race.ended:
                return

    def _generate(self, pass_rounds: list[list[str]], live: list[str], first_round: int) -> None:
        """The teachers answer this pass's questions (those of strategies still in the race)."""
        started = time.monotonic()
        generated = [n for n in live if n in self.teachers.names]
        asked = [self.requests.sample.questions[q] for r in pass_rounds for q in r]
        new_rows, generation_rejects = self.teachers.generate(asked, generated, first_round)
        self.generation_s += time.monotonic() - started
        self.rejects += generation_rejects
        for row in new_rows:
            self.requests.sample.by_question.setdefault(row["question_id"], {})[row["strategy"]] = row
        self.rows_in += len(new_rows)
        self.budget.tokens += sum(self.requests.tokens(q, generated) for r in pass_rounds for q in r)
        spent = self.teachers.money()
        self.budget.money_per_question = (spent - self.budget.money) / max(1, len(asked))
        self.budget.money = spent

    def _look(self, number: int, round_ids: list[str], live: list[str], scored: dict[str, dict],
              on_round: Callable[[str], None] | None) -> None:
        new = _collect_round(round_ids, live, self.requests, scored, self.rejects)
        self.scores.extend(new)
        for score in new:
            self.race.add(score["question_id"], score["strategy"], score["sap"])
        record = self.race.look(number, self.budget.tokens, self.budget.money if self.teachers else None,
                                decide=self.confident)
        if self.teachers and record["eliminated"]:
            self.teachers.drop(record["eliminated"])
        if on_round:
            on_round(_say_round(record, self.cfg.sample.confidence, self.cfg.sample.epsilon))

    def end(self) -> None:
        """A race the caps or the questions ended claims no confidence."""
        if self.race.ended:
            return
        if self.budget.stopped_by == "all_questions":
            self.race.stop("exhausted", f"every eligible question was scored ({self.budget.questions}) before a "
                           "confident decision; the contenders are ranked by mean SAP")
        else:
            self.race.stop("budget", f"the {self.budget.stopped_by} cap was reached before a confident decision; "
                           "the contenders are ranked by mean SAP")


@contextlib.contextmanager
def scoring_engines(cfg: SelectConfig, engines: Engines, first_round: int,
                    strategies: int) -> Iterator[Callable[[list[list[dict]]], Iterator[dict]]]:
    """What scores a round's blocks of request rows: the resident scorer, started for no more actors than the
    first round has blocks, and released when the race ends; where engines are not resident, a pool per
    round."""
    requests = first_round * strategies * len(context_kinds(cfg.metrics))
    n_blocks = -(-requests // cfg.ray.batch_size)
    if starting := engines.to_start("scorer", n_blocks):
        console.say(f"scoring: starting {starting} {cfg.engine} engine actor(s) for {cfg.model}; they stay for "
                    "every round")
    pool = engines.pool("scorer", n_blocks=n_blocks)
    try:
        yield pool.map_blocks if pool else partial(map_blocks, actor_cls=ScoreActor,
                                                   actor_kwargs=engines.planned["scorer"][1], cfg=cfg.ray)
    finally:
        engines.release("scorer")


def fingerprint(cfg: SelectConfig, commit: str | None) -> dict:
    """What determines a selection's journal: the config but its output, reporting and Ray placement keys
    (``ray.batch_size`` decides which requests share a batch, so it counts), the model's commit, the inputs'
    identities (size and time) and sapray's version."""
    config = cfg.model_dump()
    inputs = [cfg.data.questions, *cfg.data.candidate_sources().values(), cfg.exemplars.file, cfg.exemplars.pool,
              *(s.teacher.path for s in cfg.strategies if s.teacher.kind == "file")]
    return {"sapray": sapray_version(), "commit": commit, "batch_size": cfg.ray.batch_size,
            **{k: config[k] for k in ("model", "revision", "engine", "engine_args", "layout", "metrics", "overlong",
                                      "data", "exemplars", "strategies")},
            "sample": {k: v for k, v in config["sample"].items() if k != "pick"},
            "inputs": {uri: input_identity(uri) for uri in inputs if uri}}


def open_journal(cfg: SelectConfig, commit: str | None, restart: bool) -> Journal:
    """The selection's journal in ``<output>/journal`` (see sapray.dataplane.journal)."""
    return Journal(child(cfg.output, "journal"), fingerprint(cfg, commit), restart)


def run_select(cfg: SelectConfig, on_round: Callable[[str], None] | None = None,
               teachers: TeacherRounds | None = None, engines: Engines | None = None,
               journal: Journal | None = None, restart: bool = False) -> SelectResult:
    """read -> strategies -> sample -> exemplars -> race rounds (generate, score, look) -> reduce.

    ``engines``: the resident engines of the calling job (``sapray run``'s teachers and scorer); without
    them, select keeps its own scorer for the whole race. ``journal``: the calling job's; without it, select
    opens its own in the output folder (``restart`` empties it first)."""
    started = time.monotonic()
    target = Target.of(cfg)
    init_ray(cfg.ray)
    journal = journal or open_journal(cfg, target.commit, restart)
    with contextlib.ExitStack() as own:
        if engines is None:
            scorer = (ScoreActor, scorer_kwargs(cfg, target.commit, target.layout.boundary))
            engines = own.enter_context(Engines({"scorer": scorer}, cfg.ray, cfg.ray.resident_engines))
        result = _select(cfg, target, engines, on_round, teachers, journal)
        result.engine_starts = engines.engine_starts()
    result.timings["total_s"] = round(time.monotonic() - started, 2)
    return result


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


def _select(cfg: SelectConfig, target: Target, engines: Engines, on_round: Callable[[str], None] | None,
            teachers: TeacherRounds | None, journal: Journal) -> SelectResult:
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
    pool, exemplar_info = _exemplars(cfg, target, inputs, journal)
    mining_placement = exemplar_info.pop("placement", {})  # where mining ran: run.json, not selection.json
    mining_s = time.monotonic() - t0
    s = cfg.sample
    race = Race(strategies, RaceRule(s.confidence, s.epsilon, s.min_questions, s.tuned_for))
    loop = RaceRounds(cfg, Requests(cfg, target, pool, sample), race, Budget(s.max_questions, s.max_tokens,
                                                                            s.max_money), teachers, inputs.rows_in,
                      journal)
    t0 = time.monotonic()
    first_round = min(len(sample.reachable), s.round_size) if loop.confident else len(sample.reachable)
    with scoring_engines(cfg, engines, first_round, len(strategies)) as score_rows:
        loop.run(score_rows, on_round)
    scoring_s = time.monotonic() - t0 - loop.generation_s
    loop.end()
    counts = _counts(loop, inputs, strategies)
    summary = _summary(cfg, loop, strategies, inputs, counts, exemplar_info, target.layout)
    timings = {"mining_s": round(mining_s, 2), "sample_generation_s": round(loop.generation_s, 2),
               "scoring_s": round(scoring_s, 2)}
    return SelectResult(summary, loop.scores, loop.rejects, pool, counts, timings, loop.placement, inputs.rejects,
                        mining_placement=mining_placement)


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
                        min_questions=s.min_questions)
    summary["ranking"] = contenders + sorted(race.eliminated, key=lambda n: (-race.eliminated[n], summary[
        "per_strategy"][n]["mean_sap"] or math.inf, n))
    summary["race"] = race.to_dict(s.stop)
    summary["race"]["cost"] = _cost_table(loop.scores, strategies, loop.budget.questions, loop.teachers)
    summary.update({
        "model": cfg.model, "engine": cfg.engine, "layout": cfg.layout, "boundary": layout.boundary,
        "metrics": list(cfg.metrics), "strategies": strategies, "strategy_set": inputs.chosen.to_dict(),
        "budget": loop.budget.to_dict(), "counts": counts, "candidates_joined": inputs.joined,
        "exemplars": exemplar_info, "statistic": "mean SAP per strategy (lower = more familiar, ranked first)",
    })
    return summary


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


def _collect_round(round_ids: list[str], live: list[str], requests: Requests, scored: dict[str, dict],
                   rejects: list[Reject]) -> list[dict]:
    """Per-candidate metrics for one finished round; a candidate with a refused request is rejected."""
    cfg, out = requests.cfg, []
    for qid in round_ids:
        chosen = requests.chosen_exemplars(qid)
        for name in live:
            c = requests.sample.by_question.get(qid, {}).get(name)
            if c is None:
                continue
            by_kind = {k: scored[f"{qid}/{name}/{k}"] for k in requests.kinds}
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
