"""Generate responses with a strategy: for the selection sample, and at full scale for the winner.

A strategy is a teacher (a vLLM or hf model, an OpenAI-compatible endpoint, or a file of
precomputed responses), a prompt template with ``{question}`` and ``{gold}`` placeholders, sampling
parameters and samples per question. Generation runs on Ray Data (one actor pool per model teacher,
a bounded-concurrency stage per API teacher) and is resumable: finished questions are written in
atomic shards (``shards/part-NNNNN.jsonl``), and a restarted run skips every question already in a
shard, so the final set holds each question exactly once. The training set is written as chat
``messages`` JSONL and Parquet with provenance columns (strategy, teacher, sampling, prompt hash).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sapray.actors import GenerateActor
from sapray.answers import make_checker
from sapray.config import Columns, ConfigError, GenerateConfig, RayConfig, StrategyConfig, TeacherConfig
from sapray.console import console
from sapray.models import locate
from sapray.raydata import map_with_actors
from sapray.read import (
    InputError,
    Reject,
    candidate_record,
    child,
    filesystem,
    iter_records,
    joined_question,
    read_text,
    text_index,
)

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


@dataclass
class Generated:
    rows: list[dict]
    rejects: list[Reject]
    cost: Cost = field(default_factory=Cost)


def _uses_gold(strategy: StrategyConfig) -> bool:
    return "{gold}" in strategy.prompt or "{gold}" in (strategy.system or "")


def _money(teacher: TeacherConfig, prompt_tokens: int, completion_tokens: int) -> float | None:
    if teacher.price_per_million_prompt is None and teacher.price_per_million_completion is None:
        return None
    return (prompt_tokens * (teacher.price_per_million_prompt or 0.0)
            + completion_tokens * (teacher.price_per_million_completion or 0.0)) / 1e6


def _file_answers(teacher: TeacherConfig, questions: list[dict]) -> Iterator[dict]:
    """A file teacher's responses per question, from rows in column or chat form, joined by question_id
    or, without one, by exact question text."""
    by_id = {q["question_id"]: q for q in questions}
    by_text = text_index(by_id)
    answers: dict[str, list[str]] = {}
    unusable: dict[str, str] = {}  # question id -> why its row in the file cannot be used
    unreadable: list[str] = []  # rows without a question to report them under
    present: set[str] = set()
    for source, row in iter_records(teacher.path):
        record = row if isinstance(row, str) else candidate_record(row, Columns(), str(row.get("strategy")))
        qid = row.get("question_id") if isinstance(row, dict) else None
        if isinstance(record, dict):
            present.add(record["strategy"])
            if teacher.strategy not in (None, record["strategy"]):
                continue
            # an id this call was not asked about is no fault: the file answers other rounds too
            joined, problem = joined_question(record, by_id, by_text)
            if joined is None:
                unreadable.append(f"{source}: {problem}")
                continue
            answers.setdefault(joined, []).append(record["response"])
        elif qid is not None:
            unusable.setdefault(str(qid), f"{source}: {record}")
        else:
            unreadable.append(f"{source}: {record}")
    if unreadable:
        log.warning("%d row(s) of %s cannot be used (the first: %s); a question that loses its response "
                    "to one is rejected", len(unreadable), teacher.path, unreadable[0])
    if not answers:  # a misspelt strategy would otherwise reject every question one by one
        raise InputError(f"{teacher.path} has no responses for strategy {teacher.strategy!r} "
                         f"(it has {sorted(present)})")
    for q in questions:
        texts = answers.get(q["question_id"], [])
        why = f"; its row {unusable[q['question_id']]}" if q["question_id"] in unusable else ""
        yield {"row_id": q["question_id"], "texts": texts, "finish_reasons": [None] * len(texts),
               "prompt_tokens": 0, "completion_tokens": 0,
               "error": "" if texts else f"no response in {teacher.path}{why}"}


def _stream(strategy: StrategyConfig, questions: list[dict], ray_cfg: RayConfig) -> Iterator[dict]:
    """Teacher outputs per question: row_id, texts, prompt_tokens, completion_tokens, error."""
    teacher, sampling = strategy.teacher, strategy.sampling()
    if teacher.kind == "file":
        yield from _file_answers(teacher, questions)
        return
    if teacher.kind == "openai":
        from sapray.teachers import ApiTeacherActor, Secret

        key = None
        if teacher.api_key_env:
            if not os.environ.get(teacher.api_key_env):
                raise ConfigError(f"strategy {strategy.name}: the API key variable {teacher.api_key_env} is not set "
                                  "in this (the driver's) environment")
            key = Secret(os.environ[teacher.api_key_env])
        rows = [{"row_id": q["question_id"], "messages_json": json.dumps(strategy.messages(q))} for q in questions]
        api_ray = ray_cfg.model_copy(update={"num_gpus_per_actor": 0})
        yield from map_with_actors(rows, ApiTeacherActor, {
            "base_url": teacher.base_url, "model": teacher.model, "api_key": key,
            "sampling": sampling.__dict__, "max_concurrency": teacher.max_concurrency,
            "timeout_s": teacher.timeout_s, "max_retries": teacher.max_retries,
            "requests_per_second": teacher.requests_per_second}, api_ray,
            what=f"{strategy.name}: asking {teacher.model}")
        return
    from transformers import AutoTokenizer

    resolved = locate(teacher.model, teacher.revision)
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    rows = []
    for q in questions:
        text = tokenizer.apply_chat_template(strategy.messages(q), tokenize=False, add_generation_prompt=True)
        rows.append({"row_id": q["question_id"],
                     "prompt_ids": tokenizer(text, add_special_tokens=False)["input_ids"]})
    yield from map_with_actors(rows, GenerateActor, {
        "engine": teacher.kind, "model": teacher.model, "revision": resolved.commit,
        "engine_args": teacher.engine_args, "sampling": sampling.__dict__}, ray_cfg,
        what=f"{strategy.name}: generating")


def generate(strategy: StrategyConfig, questions: list[dict], ray_cfg: RayConfig,
             gen: GenerateConfig | None = None) -> Iterator[tuple[list[dict], list[Reject], Cost]]:
    """Per question: (training rows, rejects, cost). Rows carry provenance; failures become rejects."""
    checker = make_checker(gen.checker, gen.regex) if gen and gen.filter_correct else None
    sampling = json.dumps(strategy.sampling().__dict__, sort_keys=True)
    by_id = {q["question_id"]: q for q in questions}
    usable = []
    for q in questions:
        if _uses_gold(strategy) and not q.get("gold"):
            yield [], [Reject(q.get("source", ""), f"strategy {strategy.name} uses {{gold}} and the question has none",
                              "generate", q["question_id"], strategy.name)], Cost()
        else:
            usable.append(q)
    started = time.monotonic()
    for out in _stream(strategy, usable, ray_cfg):
        q = by_id[out["row_id"]]
        cost = Cost(int(out["prompt_tokens"]), int(out["completion_tokens"]), requests=1)
        cost.money = _money(strategy.teacher, cost.prompt_tokens, cost.completion_tokens)
        cost.wall_s, started = time.monotonic() - started, time.monotonic()
        if out["error"]:
            yield [], [Reject(q.get("source", ""), out["error"], "generate", q["question_id"], strategy.name)], cost
            continue
        rows, rejects = [], []
        for k, (text, finish) in enumerate(zip(out["texts"], out["finish_reasons"], strict=True)):
            reason = None
            if not text.strip():
                reason = "empty response"
            elif finish == "length" and gen and gen.drop_truncated:
                reason = f"truncated at max_tokens ({strategy.max_tokens})"
            elif checker and q.get("gold") is not None and not checker.check(text, q["gold"]):
                reason = f"answer does not pass the {checker.name} checker"
            if reason:
                rejects.append(Reject(q.get("source", ""), f"sample {k}: {reason}", "generate", q["question_id"],
                                      strategy.name))
                continue
            rows.append({
                "messages": [*strategy.messages(q), {"role": "assistant", "content": text}],
                "question_id": q["question_id"], "strategy": strategy.name, "response": text, "sample_index": k,
                "finish_reason": finish,
                "teacher": strategy.teacher.describe(), "sampling": sampling, "prompt_hash": strategy.prompt_hash(),
            })
        yield rows, rejects, cost


# -- resumable full-scale output ---------------------------------------------------------------

def read_shards(output: str) -> tuple[list[dict], int]:
    """The entries of every complete shard, in shard order, and the next shard number."""
    fs, path = filesystem(child(output, "shards"))
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return [], 0
    entries, last = [], -1
    for info in sorted(fs.get_file_info(pafs.FileSelector(path)), key=lambda i: i.base_name):
        name = info.base_name
        if not (name.startswith("part-") and name.endswith(".jsonl")):
            if ".tmp" in name:
                fs.delete_file(info.path)  # a shard a killed run did not finish: its questions run again
            continue
        last = max(last, int(name[5:10]))
        entries += [json.loads(line) for line in read_text(info.path, fs).splitlines()]
    return entries, last + 1


def _write_atomic(uri: str, text: str) -> None:
    fs, path = filesystem(uri)
    tmp = path + ".tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(text.encode())
    fs.move(tmp, path)


def _shard_text(entries: list[dict]) -> str:
    return "".join(json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n" for e in entries)


def _provenance(strategy: StrategyConfig) -> dict:
    return {"strategy": strategy.name, "teacher": strategy.teacher.describe(), "prompt_hash": strategy.prompt_hash(),
            "sampling": strategy.sampling().__dict__}


def claim_output(output: str, strategy: StrategyConfig, resuming: bool) -> None:
    """Record which strategy writes this output; resuming it with another strategy or prompt is an error."""
    uri = child(output, "shards/manifest.json")
    fs, path = filesystem(uri)
    mine = _provenance(strategy)
    if not resuming or fs.get_file_info(path).type == pafs.FileType.NotFound:
        _write_atomic(uri, json.dumps(mine, indent=2, sort_keys=True) + "\n")
        return
    theirs = json.loads(read_text(path, fs))
    changed = sorted(k for k in mine if theirs.get(k) != mine[k])
    if changed:
        raise ConfigError(f"{output} already holds a training set from strategy {theirs.get('strategy')!r} "
                          f"and it differs in {changed}: resuming would mix them; choose another "
                          f"generate.output or delete {output}")


def run_full_generation(strategy: StrategyConfig, questions: list[dict], ray_cfg: RayConfig,
                        gen: GenerateConfig, input_rejects: Sequence[Reject] = ()) -> dict:
    """Generate for every question not yet done, shard by shard; then write the training set.

    ``input_rejects`` are question rows that could not be read; they go to the rejects file too, so the
    input rows reconcile: read rows = questions + input rejects.
    """
    fs, root = filesystem(child(gen.output, "shards"))
    fs.create_dir(root, recursive=True)
    entries, shard_no = read_shards(gen.output)
    done = {e["question_id"] for e in entries}
    claim_output(gen.output, strategy, resuming=bool(done))
    todo = [q for q in questions if q["question_id"] not in done]
    console.say(f"full-scale generation with {strategy.name}: {len(questions)} questions, {len(done)} already "
                f"done, {len(todo)} to go")
    cost, pending, finished = Cost(), [], len(done)
    for rows, rejects, c in generate(strategy, todo, ray_cfg, gen):
        cost.add(c)
        qid = (rows or [{}])[0].get("question_id") or (rejects or [Reject("", "", "")])[0].question_id
        # A shard entry per question holds its rows, rejects and cost, so resume sees it as done.
        pending.append({"question_id": qid, "rows": rows, "rejects": [r.to_dict() for r in rejects],
                        "cost": {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                                 "money": c.money}})
        if len(pending) >= gen.shard_size:
            _write_atomic(child(gen.output, f"shards/part-{shard_no:05d}.jsonl"), _shard_text(pending))
            finished += len(pending)
            log.info("generated %d/%d questions (%d tokens so far this run)", finished, len(questions),
                     cost.completion_tokens)
            shard_no, pending = shard_no + 1, []
    if pending:
        _write_atomic(child(gen.output, f"shards/part-{shard_no:05d}.jsonl"), _shard_text(pending))
    return write_training_set(gen.output, strategy, len(questions), cost, list(input_rejects))


def _total_cost(entries: list[dict]) -> dict:
    """Tokens and money over every shard, whichever run wrote it."""
    costs = [e.get("cost") or {} for e in entries]
    money = [c["money"] for c in costs if c.get("money") is not None]
    return {"prompt_tokens": sum(c.get("prompt_tokens", 0) for c in costs),
            "completion_tokens": sum(c.get("completion_tokens", 0) for c in costs),
            "money": sum(money) if money else None}


def write_training_set(output: str, strategy: StrategyConfig, n_questions: int, cost: Cost,
                       input_rejects: list[Reject]) -> dict:
    """Merge the shards into train.jsonl (messages), train.parquet, rejects.jsonl and metadata.json."""
    entries, _ = read_shards(output)
    rows = [r for e in entries for r in e["rows"]]
    rejects = [r.to_dict() for r in input_rejects] + [r for e in entries for r in e["rejects"]]
    ids = [e["question_id"] for e in entries]
    if len(ids) != len(set(ids)):
        raise AssertionError("a question appears in two shards")
    _write_atomic(child(output, "train.jsonl"), _shard_text(
        [{"messages": r["messages"], **{k: v for k, v in r.items() if k != "messages"}} for r in rows]))
    _write_atomic(child(output, "rejects.jsonl"), _shard_text(rejects))
    table = pa.Table.from_pylist(rows) if rows else pa.table({})
    pfs, ppath = filesystem(child(output, "train.parquet"))
    with pfs.open_output_stream(ppath) as f:
        pq.write_table(table, f)
    metadata = {
        **_provenance(strategy),
        "questions": n_questions, "questions_done": len(ids), "question_rows_rejected": len(input_rejects),
        "rows": len(rows), "rejected": len(rejects), "cost_this_run": cost.__dict__, "cost_total": _total_cost(entries),
        "rows_truncated": sum(r.get("finish_reason") == "length" for r in rows),
    }
    _write_atomic(child(output, "metadata.json"), json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    return metadata
