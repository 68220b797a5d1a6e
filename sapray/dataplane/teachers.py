"""Teachers and what their outputs become: the pure and driver-side pieces of generation.

A strategy is a teacher (a vLLM or hf model, an OpenAI-compatible endpoint, or a file of
precomputed responses), a prompt template with ``{question}`` and ``{gold}`` placeholders, sampling
parameters and samples per question. ``generate`` serves the selection sample (a few questions, one
actor pool per model teacher, a bounded-concurrency stage per API teacher); ``Outcomes`` turns a
teacher's output into training rows with provenance (strategy, teacher, sampling, prompt hash) and
rejects, for the sample and for the full-scale set (``sapray.dataplane.fullset``, which runs in the cluster).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sapray.config import Columns, ConfigError, GenerateConfig, RayConfig, StrategyConfig, TeacherConfig
from sapray.core.answers import make_checker
from sapray.dataplane.actors import GenerateActor, engine_spec
from sapray.dataplane.placement import place
from sapray.dataplane.raydata import Progress, batch_rows, cut, map_blocks, unobserved
from sapray.dataplane.read import (
    InputError,
    Reject,
    candidate_record,
    iter_records,
    joined_question,
    text_index,
)
from sapray.engines.models import ResolvedModel, locate

log = logging.getLogger(__name__)


@dataclass
class Cost:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0
    requests: int = 0
    money: float | None = None

    def add(self, other: Cost) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.wall_s += other.wall_s
        self.requests += other.requests
        if other.money is not None:
            self.money = (self.money or 0.0) + other.money


def _uses_gold(strategy: StrategyConfig) -> bool:
    return "{gold}" in strategy.prompt or "{gold}" in (strategy.system or "")


def teacher_money(teacher: TeacherConfig, prompt_tokens: int, completion_tokens: int) -> float | None:
    """What the teacher's tokens cost where it has prices (None where it has none)."""
    if teacher.price_per_million_prompt is None and teacher.price_per_million_completion is None:
        return None
    return (prompt_tokens * (teacher.price_per_million_prompt or 0.0)
            + completion_tokens * (teacher.price_per_million_completion or 0.0)) / 1e6


def file_answer(index: int, source: str, row: dict | str) -> dict:
    """A file teacher's row: {order, source, question_id (None: join by text), question, response,
    strategy, reject ("" when usable)}; an unusable row keeps its question_id, if it has one, so the
    question it answers can say why it has no response."""
    record = row if isinstance(row, str) else candidate_record(row, Columns(), str(row.get("strategy")))
    if isinstance(record, str):
        qid = row.get("question_id") if isinstance(row, dict) else None
        return {"order": index, "source": source, "question_id": None if qid is None else str(qid),
                "question": "", "response": "", "strategy": "", "reject": record}
    return {"order": index, "source": source, **record, "reject": ""}


def joined_by_text(answers: list[dict], questions: list[dict]) -> list[dict]:
    """``answers`` without a question_id, given the id of the one question with their exact text
    (``joined_by``: "text") or a reject saying why there is none."""
    by_text = text_index({q["question_id"]: q for q in questions})
    return [_joined_by_text(a, by_text) for a in answers]


def _joined_by_text(answer: dict, by_text: dict[str, list[str]]) -> dict:
    if answer["reject"] or answer["question_id"] is not None:
        return answer
    joined, problem = joined_question(answer, {}, by_text)
    return {**answer, "question_id": joined, "joined_by": "text"} if joined else {**answer, "reject": problem}


def file_outputs(questions: list[dict], answers: list[dict], path: str) -> list[dict]:
    """The teacher output for each question from a file's ``answers`` (joined by id, in file order);
    an id no question has is no fault: the file may answer other rounds too."""
    texts: dict[str, list[str]] = {}
    unusable: dict[str, str] = {}  # question id -> why its row in the file cannot be used
    for a in sorted(answers, key=lambda a: a["order"]):
        if a["reject"]:
            unusable.setdefault(a["question_id"], f"{a['source']}: {a['reject']}")
        else:
            texts.setdefault(a["question_id"], []).append(a["response"])
    outputs = []
    for q in questions:
        found = texts.get(q["question_id"], [])
        why = f"; its row {unusable[q['question_id']]}" if q["question_id"] in unusable else ""
        outputs.append({"row_id": q["question_id"], "texts": found, "finish_reasons": [None] * len(found),
                        "prompt_tokens": 0, "completion_tokens": 0,
                        "error": "" if found else f"no response in {path}{why}"})
    return outputs


def no_responses(teacher: TeacherConfig, present: Iterable[str]) -> InputError:
    """A misspelt strategy (or a file of bad rows) would otherwise reject every question one by one."""
    if teacher.strategy is None:
        return InputError(f"{teacher.path} has no usable responses (every row was rejected)")
    return InputError(f"{teacher.path} has no responses for strategy {teacher.strategy!r} "
                      f"(it has {sorted(present)})")


def warn_unjoined(path: str, count: int, first: str) -> None:
    if count:
        log.warning("%d row(s) of %s cannot be used (the first: %s); a question that loses its response "
                    "to one is rejected", count, path, first)


def _file_answers(teacher: TeacherConfig, questions: list[dict]) -> list[dict]:
    """A file teacher's responses per question, from rows in column or chat form, joined by question_id
    or, without one, by exact question text. The file is streamed and only the rows that answer
    these questions are kept: a sample round holds its own questions' rows, not the file."""
    ids = {q["question_id"] for q in questions}
    by_text = text_index({q["question_id"]: q for q in questions})
    kept: list[dict] = []
    present: set[str] = set()
    usable, unjoined, first_unjoined = False, 0, ""
    for i, (source, row) in enumerate(iter_records(teacher.path)):
        answer = file_answer(i, source, row)
        if not answer["reject"]:
            present.add(answer["strategy"])
            if teacher.strategy not in (None, answer["strategy"]):
                continue
            usable = True
            answer = _joined_by_text(answer, by_text)
        if answer["reject"] and answer["question_id"] is None:
            unjoined += 1
            first_unjoined = first_unjoined or f"{answer['source']}: {answer['reject']}"
        elif answer["question_id"] in ids:
            kept.append(answer)
    if not usable:
        raise no_responses(teacher, present)
    warn_unjoined(teacher.path, unjoined, first_unjoined)
    return file_outputs(questions, kept, teacher.path)


def api_teacher_kwargs(strategy: StrategyConfig) -> tuple[type, dict[str, Any]]:
    """The actor class and arguments of an API teacher; its key is read from the driver's environment
    here and travels wrapped, so no log or repr shows it."""
    from sapray.dataplane.api_teacher import ApiTeacherActor, Secret

    teacher, key = strategy.teacher, None
    if teacher.api_key_env:
        if not os.environ.get(teacher.api_key_env):
            raise ConfigError(f"strategy {strategy.name}: the API key variable {teacher.api_key_env} is not set "
                              "in this (the driver's) environment")
        key = Secret(os.environ[teacher.api_key_env])
    return ApiTeacherActor, {
        "base_url": teacher.base_url, "model": teacher.model, "api_key": key,
        "sampling": strategy.sampling().__dict__, "max_concurrency": teacher.max_concurrency,
        "timeout_s": teacher.timeout_s, "max_retries": teacher.max_retries,
        "requests_per_second": teacher.requests_per_second}


# The resident engine pool of a teacher key, or None: a pool for this pass alone
# (``sapray.dataplane.resident.Engines.pool``).
Pools = Callable[[str], Any]


def no_pools(key: str) -> None:
    return None


# The entries of finished batches: ``log(rows)`` the outputs of that batch of rows, or None; ``log(rows,
# outputs)`` records them (``sapray.dataplane.journal.batch_log``, by the rows' ids), so a batch journaled
# before a stop is never asked again.
BatchLog = Callable[..., Any]


def unlogged(rows: list[dict], outputs: list[dict] | None = None) -> None:
    return None


# "actor": the node/actor id of the engine actor that answered (an API teacher's rows have none)
OUTPUT_KEYS = ("row_id", "strategy", "texts", "finish_reasons", "prompt_tokens", "completion_tokens", "error", "actor")


def plain(value: Any) -> Any:
    """Plain Python values (lists, str, int) for what Ray hands back as numpy arrays and scalars."""
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value.tolist() if hasattr(value, "tolist") else value


def answers_in_batches(pool: Any, rows: list[dict], actor_cls: type, actor_kwargs: dict[str, Any],
                       ray_cfg: RayConfig, log: BatchLog = unlogged) -> Iterator[dict]:
    """A model's (or endpoint's) outputs for ``rows`` in order, as plain values, batch by batch: a batch in
    ``log`` from there, the others from the engines (``pool``, the job's resident ones, or a pool of this
    pass; ``actor_cls`` with ``actor_kwargs``), each logged as it arrives."""
    actors = len(pool.engines) if pool is not None else place(actor_kwargs, ray_cfg).actors
    batches = cut(rows, batch_rows(len(rows), ray_cfg.batch_size, actors))
    done = [log(batch) for batch in batches]
    missing = [b for b, d in zip(batches, done, strict=True) if d is None]
    asked = iter(pool.map_blocks(missing) if pool is not None else map_blocks(missing, actor_cls, actor_kwargs,
                                                                                ray_cfg))
    for k, batch in enumerate(batches):
        if done[k] is None:
            outputs = [{**{key: plain(out[key]) for key in OUTPUT_KEYS if key in out}, "strategy": row.get("strategy")}
                       for row, out in zip(batch, (next(asked) for _ in batch), strict=True)]
            log(batch, outputs)
            done[k] = outputs
        yield from done[k]


def _stream(strategies: list[StrategyConfig], questions: dict[str, list[dict]], ray_cfg: RayConfig,
            progress: Progress, pools: Pools, log: Callable[[str], BatchLog]) -> Iterator[dict]:
    """Teacher outputs per (strategy, question) of strategies with one ``engine_key``: strategy, row_id,
    texts, finish_reasons, prompt_tokens, completion_tokens, error (``log(key)``: the teacher's batch log)."""
    first = strategies[0]
    teacher = first.teacher
    if teacher.kind == "file":
        yield from ({**out, "strategy": first.name} for out in _file_answers(teacher, questions[first.name]))
        return
    if teacher.kind == "openai":
        rows = [{"row_id": q["question_id"], "strategy": first.name, "messages_json": json.dumps(first.messages(q))}
                for q in questions[first.name]]
        actor_cls, kwargs = api_teacher_kwargs(first)
        key = first.engine_key
        asked = answers_in_batches(pools(key), rows, actor_cls, kwargs, ray_cfg, log(key))
        yield from progress(asked, len(rows), f"{first.name}: asking {teacher.model}")
        return
    from transformers import AutoTokenizer

    resolved = locate(teacher.model, teacher.revision)
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    rows = [{"row_id": q["question_id"], "strategy": s.name, "prompt_ids": prompt_ids(tokenizer, s, q),
             "sampling_json": json.dumps(s.sampling().__dict__, sort_keys=True)}
            for s in strategies for q in questions[s.name]]
    names = ", ".join(s.name for s in strategies)
    actor_cls, kwargs = model_teacher_kwargs(first, resolved)
    key = first.engine_key
    yield from progress(answers_in_batches(pools(key), rows, actor_cls, kwargs, ray_cfg, log(key)), len(rows),
                        f"{names}: generating")


def prompt_ids(tokenizer: Any, strategy: StrategyConfig, question: dict) -> list[int]:
    """A model teacher's prompt: the strategy's messages, chat-templated, as token ids."""
    text = tokenizer.apply_chat_template(strategy.messages(question), tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def model_teacher_kwargs(strategy: StrategyConfig, resolved: ResolvedModel) -> tuple[type, dict[str, Any]]:
    """The actor class and arguments of a model teacher (engine actors load the commit the driver ``resolved``)."""
    return GenerateActor, {"spec": engine_spec(strategy.teacher, resolved), "sampling": strategy.sampling().__dict__}


def gold_problem(strategy: StrategyConfig, question: dict) -> str | None:
    """Why ``strategy`` cannot ask this question, or None."""
    if _uses_gold(strategy) and not question.get("gold"):
        return f"strategy {strategy.name} uses {{gold}} and the question has none"
    return None


@dataclass(frozen=True)
class Outcomes:
    """What turns a teacher's output for a question into training rows and rejects."""

    strategy: StrategyConfig
    checker: Any  # answers.Checker or None
    drop_truncated: bool

    @classmethod
    def of(cls, strategy: StrategyConfig, gen: GenerateConfig | None) -> Outcomes:
        checker = make_checker(gen.checker, gen.regex) if gen and gen.filter_correct else None
        return cls(strategy, checker, bool(gen and gen.drop_truncated))

    def __call__(self, q: dict, out: dict) -> tuple[list[dict], list[Reject], Cost]:
        """(training rows with provenance, rejects, cost) of a question; ``out`` holds the teacher's
        texts, finish_reasons, prompt_tokens, completion_tokens and error ("" when none)."""
        strategy = self.strategy
        cost = Cost(int(out["prompt_tokens"]), int(out["completion_tokens"]), requests=1)
        cost.money = teacher_money(strategy.teacher, cost.prompt_tokens, cost.completion_tokens)
        if out["error"]:
            return [], [Reject(q.get("source", ""), out["error"], "generate", q["question_id"], strategy.name)], cost
        sampling = json.dumps(strategy.sampling().__dict__, sort_keys=True)
        rows, rejects = [], []
        for k, (text, finish) in enumerate(zip(out["texts"], out["finish_reasons"], strict=True)):
            reason = None
            if not text.strip():
                reason = "empty response"
            elif finish == "length" and self.drop_truncated:
                reason = f"truncated at max_tokens ({strategy.max_tokens})"
            elif self.checker and q.get("gold") is not None and not self.checker.check(text, q["gold"]):
                reason = f"answer does not pass the {self.checker.name} checker"
            if reason:
                rejects.append(Reject(q.get("source", ""), f"sample {k}: {reason}", "generate", q["question_id"],
                                      strategy.name))
                continue
            rows.append({
                "messages": [*strategy.messages(q), {"role": "assistant", "content": text}],
                "question_id": q["question_id"], "strategy": strategy.name, "response": text, "sample_index": k,
                "finish_reason": finish,
                "teacher": strategy.teacher.describe(), "sampling": sampling, "prompt_hash": strategy.prompt_hash,
            })
        return rows, rejects, cost


def generate(strategies: list[StrategyConfig], questions: list[dict], ray_cfg: RayConfig,
             gen: GenerateConfig | None = None, progress: Progress = unobserved, pools: Pools = no_pools,
             log: Callable[[str], BatchLog] = lambda key: unlogged,
             ) -> Iterator[tuple[str, list[dict], list[Reject], Cost]]:
    """Per strategy and question: (strategy name, training rows, rejects, cost), strategy by strategy in
    the order given. Rows carry provenance; failures become rejects. Strategies with one model teacher
    (``StrategyConfig.engine_key``) are asked in one pass, so that teacher's engines load once, not once per strategy.
    ``progress(items, total, what)`` shows each teacher's work as it streams (the job's console); ``pools``
    gives the job's resident engines of a teacher, where it has them; ``log(engine_key)`` its batch log
    (a job's journal)."""
    by_id = {q["question_id"]: q for q in questions}
    results: dict[str, list[tuple[list[dict], list[Reject], Cost]]] = {s.name: [] for s in strategies}
    groups: dict[str, list[StrategyConfig]] = {}
    for strategy in strategies:
        groups.setdefault(strategy.engine_key, []).append(strategy)
    for group in groups.values():
        usable: dict[str, list[dict]] = {}
        for strategy in group:
            usable[strategy.name] = []
            for q in questions:
                problem = gold_problem(strategy, q)
                if problem:
                    reject = Reject(q.get("source", ""), problem, "generate", q["question_id"], strategy.name)
                    results[strategy.name].append(([], [reject], Cost()))
                else:
                    usable[strategy.name].append(q)
        outcomes = {strategy.name: Outcomes.of(strategy, gen) for strategy in group}
        started = time.monotonic()
        for out in _stream(group, usable, ray_cfg, progress, pools, log):
            rows, rejects, cost = outcomes[out["strategy"]](by_id[out["row_id"]], out)
            cost.wall_s, started = time.monotonic() - started, time.monotonic()
            results[out["strategy"]].append((rows, rejects, cost))
    for strategy in strategies:
        for rows, rejects, cost in results[strategy.name]:
            yield strategy.name, rows, rejects, cost
