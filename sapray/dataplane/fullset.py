"""Full-scale generation in the cluster: the last step of ``sapray run``, and ``sapray generate``.

    questions     the questions file, read and validated by workers (or the rows a caller holds), and
    join          each id once, questions an earlier run finished skipped (``sapray.dataplane.questions``)
    teacher       a file teacher's responses, or a pool of engine actors or API clients
    outcome       per question: training rows with provenance, rejects, cost (``generate.Outcomes``)
    shards        each batch written by the worker that made it, as one atomic Parquet file: a run
                  killed, even by ``kill -9``, loses the batches in flight only, and a restart skips
                  every question a shard holds, so the set holds each question exactly once
    training set  the shards merged in input order by workers: ``train/`` (chat ``messages`` JSON
                  lines), ``parquet/`` and ``rejects/`` part files; ``metadata.json`` from sums

The driver holds counts and sums, never rows.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sapray.config import Columns, ConfigError, GenerateConfig, RayConfig, SelectConfig, StrategyConfig
from sapray.console import console
from sapray.dataplane import stages
from sapray.dataplane.questions import OUTPUT_FIELDS, question_rejects, questions_dataset, to_do
from sapray.dataplane.raydata import actor_pool, init_ray
from sapray.dataplane.read import Reject, nothing_usable
from sapray.dataplane.resident import EnginePool
from sapray.dataplane.select_inputs import candidate_file_questions
from sapray.dataplane.teachers import (
    Outcomes,
    api_teacher_kwargs,
    gold_problem,
    model_teacher_kwargs,
    prompt_ids,
)
from sapray.engines.models import ResolvedModel, locate
from sapray.storage import child, filesystem, read_json, write_text

log = logging.getLogger(__name__)

SPREAD_BATCHES = 4  # batches per block handed to the engines: small enough that every actor gets blocks
# One shard entry per question: its training rows and rejects (JSON) and what they cost.
ENTRY_SCHEMA = pa.schema([
    ("order", pa.int64()), ("question_id", pa.string()), ("rows_json", pa.string()), ("rejects_json", pa.string()),
    ("rows", pa.int64()), ("rejected", pa.int64()), ("truncated", pa.int64()), ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()), ("money", pa.float64()), ("run", pa.string())])
TRAIN_SCHEMA = pa.schema([
    ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    ("question_id", pa.string()), ("strategy", pa.string()), ("response", pa.string()),
    ("sample_index", pa.int64()), ("finish_reason", pa.string()), ("teacher", pa.string()),
    ("sampling", pa.string()), ("prompt_hash", pa.string())])


def _gold_rejects(strategy: StrategyConfig):
    def fn(batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        for row in rows:
            problem = None if row["reject"] else gold_problem(strategy, row)
            if problem:
                row["reject"], row["reject_stage"] = problem, "generate"
        return pa.Table.from_pylist(rows, schema=batch.schema)
    return fn


# -- the teacher and the outcome --------------------------------------------------------------------

class RenderPrompts:
    """CPU stage: a model teacher's prompt for each question, chat-templated and tokenized, with the strategy's
    sampling (strategies that share a teacher model share its engines, each row asking with its own)."""

    def __init__(self, strategy: StrategyConfig, revision: str | None) -> None:
        from transformers import AutoTokenizer

        from sapray.engines.models import resolve_model

        self.strategy = strategy
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(strategy.teacher.model, revision))
        self.sampling = json.dumps(strategy.sampling().__dict__, sort_keys=True)

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = [prompt_ids(self.tokenizer, self.strategy, q) for q in batch.to_pylist()]
        return batch.append_column("row_id", batch.column("question_id")).append_column(
            "prompt_ids", pa.array(ids, pa.list_(pa.int32()))).append_column(
            "sampling_json", pa.array([self.sampling] * batch.num_rows, pa.string()))


def _api_messages(strategy: StrategyConfig):
    def fn(batch: pa.Table) -> pa.Table:
        messages = [json.dumps(strategy.messages(q)) for q in batch.to_pylist()]
        return batch.append_column("row_id", batch.column("question_id")).append_column(
            "messages_json", pa.array(messages, pa.string()))
    return fn


def _taught(strategy: StrategyConfig, ds, ray_cfg: RayConfig, model: ResolvedModel | None,
            pool: EnginePool | None = None):
    """Each question with its teacher's output (texts, finish_reasons, tokens, error): from ``pool``, the
    job's resident engines of this teacher, or else a pool of this pipeline's own (a model teacher's engines
    load the ``model`` the driver resolved). The CPU stages ahead of the pool take no CPU from Ray
    (``stages.cpu_pool``)."""
    teacher = strategy.teacher
    if teacher.kind == "file":
        return ds
    if teacher.kind == "openai":
        asked = ds.map_batches(_api_messages(strategy), batch_format="pyarrow", num_cpus=0)
        return asked.map_batches(**(pool.stage() if pool else actor_pool(*api_teacher_kwargs(strategy), ray_cfg)))
    rendered = ds.map_batches(RenderPrompts, batch_format="pyarrow", batch_size=ray_cfg.batch_size,
                              fn_constructor_kwargs={"strategy": strategy, "revision": model.commit},
                              **stages.cpu_pool())
    return rendered.map_batches(**(pool.stage() if pool else actor_pool(*model_teacher_kwargs(strategy, model),
                                                                         ray_cfg)))


def _entries(outcomes: Outcomes, run: str):
    """Shard entries: per question its training rows, rejects and cost."""
    def fn(batch: pa.Table) -> pa.Table:
        entries = []
        for row in batch.to_pylist():
            rows, rejects, cost = outcomes(row, {name: row[name] for name, _ in OUTPUT_FIELDS})
            entries.append({
                "order": row["order"], "question_id": row["question_id"],
                "rows_json": json.dumps(rows, ensure_ascii=False, sort_keys=True),
                "rejects_json": json.dumps([r.to_dict() for r in rejects], ensure_ascii=False, sort_keys=True),
                "rows": len(rows), "rejected": len(rejects),
                "truncated": sum(r["finish_reason"] == "length" for r in rows),
                "prompt_tokens": cost.prompt_tokens, "completion_tokens": cost.completion_tokens,
                "money": cost.money, "run": run})
        return pa.Table.from_pylist(entries, schema=ENTRY_SCHEMA)
    return fn


def _write_shard(folder: str, run: str):
    """Each batch of entries as one Parquet file, written to a temporary name and then moved, so a shard
    is there whole or not at all; named by its first question, so a retried task writes the same file.
    Its URI and question count go back to the driver."""
    def fn(batch: pa.Table) -> dict:
        uri = child(folder, f"part-{run}-{min(batch.column('order').to_pylist()):012d}.parquet")
        fs, path = filesystem(uri)
        with fs.open_output_stream(path + ".tmp") as f:
            pq.write_table(batch, f)
        fs.move(path + ".tmp", path)
        return {"shard": [uri], "questions": [batch.num_rows]}
    return fn


def _questions_written(written, shards: list[str]) -> Iterator[None]:
    """One item per question as its shard is written (for the progress), each shard's URI added to ``shards``."""
    for part in written.iter_rows():
        shards.append(part["shard"])
        yield from [None] * part["questions"]


# -- shards of earlier runs, and the output's owner -------------------------------------------------

def shard_files(output: str) -> list[str]:
    """The complete shards in ``output`` (its shards folder created if need be); a shard a killed run did not
    finish is deleted (its questions run again)."""
    folder = child(output, "shards")
    fs, path = filesystem(folder)
    fs.create_dir(path, recursive=True)
    found = []
    for info in sorted(fs.get_file_info(pafs.FileSelector(path)), key=lambda i: i.base_name):
        if info.base_name.endswith(".tmp"):
            fs.delete_file(info.path)
        elif info.base_name.startswith("part-") and info.base_name.endswith(".parquet"):
            found.append(child(folder, info.base_name))
        elif info.base_name.startswith("part-") and info.base_name.endswith(".jsonl"):
            raise ConfigError(f"{output} holds shards of an older sapray (JSON lines): finish it with that "
                              "version, or choose another generate.output")
    return found


def _provenance(strategy: StrategyConfig) -> dict:
    return {"strategy": strategy.name, "teacher": strategy.teacher.describe(), "prompt_hash": strategy.prompt_hash,
            "sampling": strategy.sampling().__dict__}


def open_shards(output: str, strategy: StrategyConfig) -> list[str]:
    """The shards an earlier run of ``strategy`` wrote in ``output`` (``shard_files``), with the strategy
    recorded in the shards' manifest: resuming an output with another strategy or prompt is an error."""
    mine = _provenance(strategy)
    earlier = shard_files(output)
    uri = child(output, "shards/manifest.json")
    theirs = read_json(uri) if earlier else None
    if theirs is None:
        write_text(uri, json.dumps(mine, indent=2, sort_keys=True) + "\n")
        return earlier
    changed = sorted(k for k in mine if theirs.get(k) != mine[k])
    if changed:
        raise ConfigError(f"{output} already holds a training set from strategy {theirs.get('strategy')!r} "
                          f"and it differs in {changed}: resuming would mix them; choose another "
                          f"generate.output or delete {output}")
    return earlier


def _read_shards(paths: list[str], columns: list[str] | None = None):
    import ray

    if not paths:
        return ray.data.from_arrow(ENTRY_SCHEMA.empty_table())
    fs, _ = filesystem(paths[0])
    return ray.data.read_parquet([filesystem(p)[1] for p in paths], filesystem=fs, columns=columns)


# -- the training set -------------------------------------------------------------------------------

def entry_totals(batch: pa.Table, run: str) -> dict:
    """Sums over shard entries (all, and this run's), for metadata.json."""
    mine = pc.equal(batch.column("run"), run)
    totals = {}
    for scope, table in (("all", batch), ("run", batch.filter(mine))):
        for name in ("rows", "rejected", "truncated", "prompt_tokens", "completion_tokens"):
            totals[f"{scope}.{name}"] = [int(pc.sum(table.column(name)).as_py() or 0)]  # None: no rows
        money = table.column("money")
        totals[f"{scope}.money"] = [pc.sum(money).as_py() if money.null_count < len(money) else None]
        totals[f"{scope}.questions"] = [table.num_rows]
    return totals


def _sum(parts: list[dict], key: str) -> int:
    return sum(p[key] for p in parts)


def _money(parts: list[dict], key: str) -> float | None:
    """Money summed where teachers have prices; None when none has."""
    values = [p[key] for p in parts if p[key] is not None]
    return sum(values) if values else None


def _train_rows(batch: pa.Table) -> pa.Table:
    rows = [r for text in batch.column("rows_json").to_pylist() for r in json.loads(text)]
    return pa.Table.from_pylist(rows, schema=TRAIN_SCHEMA)


def _entry_rejects(batch: pa.Table) -> pa.Table:
    rejects = [r for text in batch.column("rejects_json").to_pylist() for r in json.loads(text)]
    return pa.Table.from_pylist(rejects, schema=stages.REJECT_SCHEMA)


def _twice(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.greater(batch.column("count()"), 1))


def _duplicated(entries) -> str | None:
    """A question id that two shard entries hold, if any (never, unless a shard was copied in by hand)."""
    twice = entries.groupby("question_id").count().map_batches(_twice, batch_format="pyarrow").take(1)
    return twice[0]["question_id"] if twice else None


def write_training_set(output: str, strategy: StrategyConfig, entries, rejected_questions, run: str,
                       wall_s: float, questions: int, by_stage: dict[str, int]) -> dict:
    """Merge the shards into ``train/`` (chat messages), ``parquet/`` and ``rejects/`` part files in
    input order, and metadata.json from the sums. ``rejected_questions``: question rows that were not
    asked (unreadable, duplicate id, or no gold for a strategy that needs it)."""
    duplicate = _duplicated(entries)
    if duplicate is not None:
        raise AssertionError(f"question {duplicate!r} appears in two shards of {output}")
    ordered = entries.sort("order").materialize()
    train = ordered.map_batches(_train_rows, batch_format="pyarrow").materialize()
    input_rejects = rejected_questions.map_batches(question_rejects(strategy.name), batch_format="pyarrow")
    stages.write_folders(output, {
        "train": (train, "jsonl"), "parquet": (train, "parquet"),
        "rejects": (input_rejects.union(ordered.map_batches(_entry_rejects, batch_format="pyarrow")), "jsonl")})
    parts = ordered.map_batches(partial(entry_totals, run=run), batch_format="pyarrow", batch_size=None).take_all()
    metadata = {
        **_provenance(strategy),
        "questions": questions, "questions_done": _sum(parts, "all.questions"),
        "question_rows_rejected": by_stage.get("questions", 0), "rows": _sum(parts, "all.rows"),
        "rejected": sum(by_stage.values()) + _sum(parts, "all.rejected"),
        "rows_truncated": _sum(parts, "all.truncated"),
        "cost_this_run": {"prompt_tokens": _sum(parts, "run.prompt_tokens"),
                          "completion_tokens": _sum(parts, "run.completion_tokens"), "wall_s": wall_s,
                          "requests": _sum(parts, "run.questions"), "money": _money(parts, "run.money")},
        "cost_total": {"prompt_tokens": _sum(parts, "all.prompt_tokens"),
                       "completion_tokens": _sum(parts, "all.completion_tokens"),
                       "money": _money(parts, "all.money")},
    }
    write_text(child(output, "metadata.json"), json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    return metadata


# -- the job ----------------------------------------------------------------------------------------

def run_full_generation(strategy: StrategyConfig, questions: str | Sequence[dict] | tuple, ray_cfg: RayConfig,
                        gen: GenerateConfig, input_rejects: Sequence[Reject] = (),
                        columns: Columns | None = None, pool: EnginePool | None = None) -> dict:
    """Generate for every question not yet done, shards written by the workers; then merge the
    training set. ``questions``: a questions file (read in the cluster), a (dataset, rows) of questions,
    or the rows a caller holds with ``input_rejects``, the rows it could not read (they go to the
    rejects, so rows reconcile: rows read = questions + rejects of the questions stage). ``pool``: the
    teacher's resident engines (``sapray run``'s winner), else the pipeline starts its own."""
    init_ray(ray_cfg)
    started = time.monotonic()
    run = uuid.uuid4().hex[:8]
    read, rows_in = questions_dataset(questions, columns or Columns(), ray_cfg, input_rejects)
    usable, rejected = stages.split_rejected(read.map_batches(_gold_rejects(strategy), batch_format="pyarrow"))
    n_usable = usable.count()
    if not n_usable:
        raise nothing_usable("questions", [questions if isinstance(questions, str) else "the questions"],
                             [Reject(r["source"], r["reject"], r["reject_stage"]) for r in rejected.take(1)])
    earlier = open_shards(gen.output, strategy)
    folder = child(gen.output, "shards")  # where this run's shards go, beside them
    # a model teacher's model, resolved once before any question is asked: its engines load this commit
    model = locate(strategy.teacher.model, strategy.teacher.revision) if strategy.teacher.on_engine else None
    shards = list(earlier)  # this run's shards join them as they are written
    done = _read_shards(earlier, ["question_id"]) if earlier else None
    todo, duplicates = stages.split_rejected(to_do(strategy, usable, done, ray_cfg, rows_in))
    n_duplicates, n_todo = duplicates.count(), todo.count()
    console.say(f"full-scale generation with {strategy.name}: {n_usable - n_duplicates} questions, "
                f"{n_usable - n_duplicates - n_todo} already done, {n_todo} to go")
    if n_todo:
        # the join above hands back one block per id bucket (a single one up to 250k questions), and an engine actor
        # takes a block whole: cut it again so that every actor gets work
        todo = todo.repartition(target_num_rows_per_block=ray_cfg.batch_size * SPREAD_BATCHES)
        entries = _taught(strategy, todo, ray_cfg, model, pool).map_batches(
            _entries(Outcomes.of(strategy, gen), run), batch_format="pyarrow", batch_size=ray_cfg.batch_size,
            num_cpus=0, concurrency=stages.cpu_workers())
        written = entries.map_batches(_write_shard(folder, run), batch_format="pyarrow",
                                      batch_size=gen.shard_size, num_cpus=0, concurrency=1)
        for _ in console.progress(_questions_written(written, shards), n_todo, f"{strategy.name}: generating"):
            pass
    rejected_questions = rejected.union(duplicates)
    by_stage = {r["reject_stage"]: r["count()"] for r in rejected_questions.groupby("reject_stage").count().take_all()}
    return write_training_set(gen.output, strategy, _read_shards(sorted(set(shards))), rejected_questions, run,
                              time.monotonic() - started, n_usable - n_duplicates + by_stage.get("generate", 0),
                              by_stage)


def generate_with(cfg: SelectConfig, strategy: StrategyConfig, pool: EnginePool | None = None) -> dict:
    """The full training set of ``cfg`` with ``strategy`` (``pool``: its teacher's resident engines, if any): the
    questions file's questions, or, without one, the questions the candidate files hold (found in the cluster as
    select finds them)."""
    init_ray(cfg.ray)
    if cfg.data.questions:  # read by the workers
        questions, columns = cfg.data.questions, cfg.data.columns
    else:
        questions, columns = candidate_file_questions(cfg.data, cfg.ray), None
    return run_full_generation(strategy, questions, cfg.ray, cfg.generate, columns=columns, pool=pool)
