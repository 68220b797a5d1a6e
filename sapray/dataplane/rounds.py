"""The race's rounds: generate (``sapray run``), score, collect, look.

Rounds: the sampled questions are taken ``round_size`` at a time. With ``sample.stop: confident`` each
round is its own Ray Data pass over the strategies still in the race, so an eliminated strategy's requests
never reach the scoring actors (nor, in ``sapray run``, its teacher); with ``fixed`` every planned round is
scored in one pass. A round in the journal is replayed from it; each new one is journaled before the next
look.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sapray.config import SelectConfig, StrategyConfig
from sapray.console import console
from sapray.core.metrics import RSR_KIND, candidate_metrics
from sapray.core.race import Race
from sapray.core.sample import Budget, rounds
from sapray.dataplane.actors import ScoreActor
from sapray.dataplane.journal import Journal, batch_log, digest
from sapray.dataplane.raydata import cut, map_blocks
from sapray.dataplane.read import Reject
from sapray.dataplane.resident import EnginePool, Engines
from sapray.dataplane.sample import Requests
from sapray.dataplane.teachers import Cost, generate, teacher_money


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


def scored_request(row: dict) -> dict:
    """What a round keeps of a scoring actor's row (and journals): the continuation's log-prob sum (exactly
    rounded, ``math.fsum``, so its NLL is the one the token log-probs give), its clipped-rank sum, the token
    counts, the error."""
    return {"request_id": row["request_id"], "logprob_sum": math.fsum(row["token_logprobs"]),
            "rank_sum": int(row["rank_sum"]),
            **{k: int(row[k]) for k in ("n_context_tokens", "n_continuation_tokens", "truncated_tokens")},
            "error": row["error"], "actor": row["actor"]}


def race_values(score: dict, metric: str) -> tuple[float, float | None]:
    """What the race takes of a candidate's metrics: the value it ranks by, and for a rank-surprisal ratio (a
    ratio of means) the response's mean clipped rank with its mean surprisal as the denominator."""
    if metric in RSR_KIND:
        return score[f"rank_{RSR_KIND[metric]}"], score[f"nll_{RSR_KIND[metric]}"]
    return score[metric], None


def round_entry(number: int) -> str:
    return f"round-{number:04d}"


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
            on_look: Callable[[dict], None] | None) -> None:
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
                self._look(n, ids, live, {row["request_id"]: row for row in scored}, on_look)
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
              on_look: Callable[[dict], None] | None) -> None:
        new = collect_round(round_ids, live, self.requests, scored, self.rejects)
        self.scores.extend(new)
        for score in new:
            self.race.add(score["question_id"], score["strategy"], *race_values(score, self.race.metric))
        record = self.race.look(number, self.budget.tokens, self.budget.money if self.teachers else None,
                                decide=self.confident)
        if self.teachers and record["eliminated"]:
            self.teachers.drop(record["eliminated"])
        if on_look:
            on_look(record)

    def end(self) -> None:
        """A race the caps or the questions ended claims no confidence."""
        if self.race.ended:
            return
        if self.budget.stopped_by == "all_questions":
            self.race.stop("exhausted", f"every eligible question was scored ({self.budget.questions}) before a "
                           f"confident decision; the contenders are ranked by {self.race.label}")
        else:
            self.race.stop("budget", f"the {self.budget.stopped_by} cap was reached before a confident decision; "
                           f"the contenders are ranked by {self.race.label}")


@contextlib.contextmanager
def scoring_engines(cfg: SelectConfig, engines: Engines,
                    first_requests: int) -> Iterator[Callable[[list[list[dict]]], Iterator[dict]]]:
    """What scores a round's blocks of request rows: the resident scorer, started for no more actors than the
    first round (``first_requests`` scoring requests) has blocks, and released when the race ends; where
    engines are not resident, a pool per round."""
    n_blocks = -(-first_requests // cfg.ray.batch_size)
    if starting := engines.to_start("scorer", n_blocks):
        console.say(f"scoring: starting {starting} {cfg.engine} engine actor(s) for {cfg.model}; they stay for "
                    "every round")
    pool = engines.pool("scorer", n_blocks=n_blocks)
    try:
        yield pool.map_blocks if pool else partial(map_blocks, actor_cls=ScoreActor,
                                                   actor_kwargs=engines.planned["scorer"][1], cfg=cfg.ray)
    finally:
        engines.release("scorer")


def collect_round(round_ids: list[str], live: list[str], requests: Requests, scored: dict[str, dict],
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
                "question_id": qid, "strategy": name, **candidate_metrics(by_kind, cfg.metrics),
                "reward": c.get("reward"),
                "exemplar_ids": [e.exemplar_id for e in chosen],
                "exemplars_checked": all(e.checked for e in chosen),
                "model": cfg.model, "engine": cfg.engine, "layout": cfg.layout, "source": c.get("source", ""),
            })
    return out


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
                            f"{', '.join(n for n in names if by_name[n].engine_key == key)}; they stay for "
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
        for key in {by_name[n].engine_key for n in eliminated if n in by_name}:
            if all(s.name in out for s in by_name.values() if s.engine_key == key):
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
