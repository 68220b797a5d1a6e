"""Questions in the cluster: read and validated by workers, each id once, joined with what goes with them.

    questions     a questions file read by workers (``questions_dataset``), or the rows a caller holds
    join          hash-partitioned by question id: duplicate ids rejected (``unique_questions``), questions
                  an earlier run finished skipped, a file teacher's responses attached (``to_do``)

Used by the full set (``sapray.dataplane.fullset``), the consistency filter and ``sapray plan``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc

from sapray.config import Columns, RayConfig, StrategyConfig
from sapray.dataplane import stages
from sapray.dataplane.read import Reject, duplicate_id, question_record
from sapray.dataplane.shards import check_columns
from sapray.dataplane.teachers import file_answer, file_outputs, joined_by_text, no_responses, warn_unjoined

QUESTION_SCHEMA = pa.schema([
    ("order", pa.int64()), ("source", pa.string()), ("question_id", pa.string()), ("question", pa.string()),
    ("gold", pa.string()), ("reject", pa.string()), ("reject_stage", pa.string())])


ANSWER_SCHEMA = pa.schema([
    ("order", pa.int64()), ("source", pa.string()), ("question_id", pa.string()), ("question", pa.string()),
    ("response", pa.string()), ("strategy", pa.string()), ("reject", pa.string()), ("joined_by", pa.string())])


# Rows of the hash join: questions, an earlier run's finished ids ("done") and a file's answers, keyed alike.
JOIN_SCHEMA = pa.schema([("bucket", pa.int64()), ("kind", pa.string()), *QUESTION_SCHEMA,
                         ("response", pa.string()), ("strategy", pa.string()), ("joined_by", pa.string())])


OUTPUT_FIELDS = [("texts", pa.list_(pa.string())), ("finish_reasons", pa.list_(pa.string())),
                 ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("error", pa.string())]


def question_row(index: int, source: str, row: dict | str, columns: Columns) -> dict:
    """A row of QUESTION_SCHEMA; a reject keeps its place with the reason."""
    values, problem = question_record(row, columns, need_gold=False)
    return {"order": index, "source": source, "question_id": values.get("question_id"),
            "question": values.get("question", ""), "gold": values.get("gold"), "reject": problem or "",
            "reject_stage": "questions" if problem else ""}


def questions_dataset(questions: str | Sequence[dict] | tuple, columns: Columns, ray_cfg: RayConfig,
                    input_rejects: Sequence[Reject] = ()):
    """(question rows, rows read): a file is read by workers; a dataset of questions (those of candidate
    files) is taken as it is; rows a caller holds (tests) become a dataset, and the rows it could not
    read come along as rejects."""
    import ray

    if isinstance(questions, str):
        check_columns(questions, [[columns.question_id, columns.question]])
        return stages.read_dataset([questions], partial(question_row, columns=columns), QUESTION_SCHEMA,
                                   max(1, int(ray_cfg.shard_mb * 2**20)))
    if isinstance(questions, tuple):  # (dataset, rows) of select_inputs.candidate_file_questions
        ds, rows = questions
        return ds.map_batches(lambda batch: batch.select(QUESTION_SCHEMA.names), batch_format="pyarrow"), rows
    rows = [{"order": i, "source": q.get("source", ""), "question_id": q["question_id"], "question": q["question"],
             "gold": q.get("gold"), "reject": "", "reject_stage": ""} for i, q in enumerate(questions)]
    rows += [{"order": len(rows) + i, "source": r.source, "question_id": r.question_id, "question": "",
              "gold": None, "reject": r.reason, "reject_stage": r.stage} for i, r in enumerate(input_rejects)]
    return ray.data.from_arrow(pa.Table.from_pylist(rows, schema=QUESTION_SCHEMA)), len(rows)


def question_rejects(strategy: str | None):
    """Question rows that were not asked, as rejects; those the strategy refused (stage "generate") name it."""
    def fn(batch: pa.Table) -> pa.Table:
        stage = batch.column("reject_stage")
        named = pc.if_else(pc.equal(stage, "generate"), pa.scalar(strategy, pa.string()),
                           pa.scalar(None, pa.string()))
        return pa.table({"source": batch.column("source"), "reason": batch.column("reject"), "stage": stage,
                         "question_id": batch.column("question_id"), "strategy": named}, schema=stages.REJECT_SCHEMA)
    return fn


def _as_join_rows(kind: str, key, buckets: int):
    def fn(batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        columns = {"bucket": pa.array(stages.bucket_of(key(batch), buckets)), "kind": pa.array([kind] * n, pa.string())}
        for name, type_ in list(zip(JOIN_SCHEMA.names, JOIN_SCHEMA.types, strict=True))[2:]:
            columns[name] = batch.column(name) if name in batch.column_names else pa.nulls(n, type_)
        return pa.table(columns, schema=JOIN_SCHEMA)
    return fn


def _of_kind(rows: list[dict], kind: str, schema: pa.Schema) -> list[dict]:
    return [{k: r[k] for k in schema.names} for r in rows if r["kind"] == kind]


def _text_join(group: pa.Table) -> pa.Table:
    """A bucket of question texts and answers without ids: the answers get their question's id (the
    text of an id's first row: a later row with that id is a duplicate, rejected by the id join)."""
    rows = group.to_pylist()
    first: dict[str, dict] = {}
    for q in sorted(_of_kind(rows, "question", QUESTION_SCHEMA), key=lambda q: q["order"]):
        first.setdefault(q["question_id"], q)
    answers = joined_by_text(_of_kind(rows, "answer", ANSWER_SCHEMA), list(first.values()))
    return pa.Table.from_pylist(answers, schema=ANSWER_SCHEMA)


def _id_join(path: str | None):
    """A bucket of questions, finished ids and (for a file teacher) answers, all hashed by question id:
    each question once (a later row with its id is a duplicate), unless an earlier run finished it; with
    a file teacher, the teacher's output for it."""
    schema = pa.schema([*QUESTION_SCHEMA, *(OUTPUT_FIELDS if path else [])])

    def fn(group: pa.Table) -> pa.Table:
        rows = group.to_pylist()
        done = {r["question_id"] for r in rows if r["kind"] == "done"}
        first: dict[str, str] = {}
        first_text: dict[str, str] = {}
        out = []
        for q in sorted(_of_kind(rows, "question", QUESTION_SCHEMA), key=lambda q: q["order"]):
            if q["question_id"] in first:
                q["reject"], q["reject_stage"] = duplicate_id(q["question_id"], first[q["question_id"]]), "questions"
            else:
                first[q["question_id"]], first_text[q["question_id"]] = q["source"], q["question"].strip()
                if q["question_id"] in done:
                    continue
            out.append(q)
        if path:
            usable = [q for q in out if not q["reject"]]
            answers = [_unless_duplicate_text(a, first_text) for a in _of_kind(rows, "answer", ANSWER_SCHEMA)]
            outputs = {o["row_id"]: o for o in file_outputs(usable, answers, path)}
            for q in out:
                o = outputs.get(q["question_id"]) if not q["reject"] else None
                q.update({name: (o[name] if o else None) for name, _ in OUTPUT_FIELDS})
        return pa.Table.from_pylist(out, schema=schema)
    return fn


def _unless_duplicate_text(answer: dict, first_text: dict[str, str]) -> dict:
    """An answer joined by text to a question's duplicate row (text buckets see rows before duplicates are
    found) joins no question: a duplicate row is rejected, text and all."""
    qid = answer["question_id"]
    if answer["joined_by"] == "text" and qid in first_text and answer["question"].strip() != first_text[qid]:
        return {**answer, "question_id": None, "reject": "unmatched: no question has this exact text"}
    return answer


def _unjoined(batch: pa.Table) -> dict:
    """Answer rows that name no question they can join (unusable without an id, or no text match)."""
    lost = batch.filter(pc.and_(pc.not_equal(batch.column("reject"), ""), pc.is_null(batch.column("question_id"))))
    first = lost.slice(0, 1).to_pylist()
    return {"count": [lost.num_rows], "first": [f"{first[0]['source']}: {first[0]['reject']}" if first else ""]}


def _file_teacher_answers(strategy: StrategyConfig, questions, ray_cfg: RayConfig, buckets: int):
    """The file's rows of this strategy (and its unusable rows), each with the id of its question."""
    teacher = strategy.teacher

    def summary(batch: pa.Table) -> dict:
        usable = batch.filter(pc.equal(batch.column("reject"), ""))
        strategies = usable.column("strategy")
        return {"strategies": [sorted(set(strategies.to_pylist()))],
                "mine": [usable.num_rows if teacher.strategy is None
                         else int(pc.sum(pc.equal(strategies, teacher.strategy)).as_py() or 0)],
                "by_text": [usable.filter(pc.equal(strategies, teacher.strategy)).column("question_id").null_count
                            if teacher.strategy is not None else usable.column("question_id").null_count]}

    def mine(batch: pa.Table) -> pa.Table:
        if teacher.strategy is None:
            return batch
        return batch.filter(pc.or_(pc.not_equal(batch.column("reject"), ""),
                                   pc.equal(batch.column("strategy"), teacher.strategy)))

    ds, _ = stages.read_dataset([teacher.path], file_answer, ANSWER_SCHEMA, max(1, int(ray_cfg.shard_mb * 2**20)))
    ds = ds.materialize()
    parts = ds.map_batches(summary, batch_format="pyarrow", batch_size=None).take_all()
    if not sum(p["mine"] for p in parts):
        raise no_responses(teacher, {s for p in parts for s in p["strategies"]})
    ds = ds.map_batches(mine, batch_format="pyarrow").materialize()
    if sum(p["by_text"] for p in parts):  # answers that carry no id take it from the one question with their text
        keyed = questions.map_batches(_as_join_rows("question", stages.by_text, buckets), batch_format="pyarrow").union(
            ds.map_batches(_as_join_rows("answer", stages.by_text, buckets), batch_format="pyarrow"))
        ds = stages.coalesced(keyed, buckets).groupby("bucket").map_groups(_text_join,
                                                                          batch_format="pyarrow").materialize()
    lost = ds.map_batches(_unjoined, batch_format="pyarrow", batch_size=None).take_all()
    warn_unjoined(teacher.path, sum(p["count"] for p in lost), next((p["first"] for p in lost if p["first"]), ""))
    return ds


def to_do(strategy: StrategyConfig, questions, done, ray_cfg: RayConfig, rows: int):
    """The questions still to do, in input order (and duplicate-id rejects), with a file teacher's
    output attached."""
    buckets = stages.buckets_for(rows)
    path = strategy.teacher.path if strategy.teacher.kind == "file" else None
    parts = [questions.map_batches(_as_join_rows("question", stages.by_id, buckets), batch_format="pyarrow")]
    if done is not None:
        parts.append(done.map_batches(_as_join_rows("done", stages.by_id, buckets), batch_format="pyarrow"))
    if path:
        answers = _file_teacher_answers(strategy, questions, ray_cfg, buckets)
        parts.append(answers.map_batches(_as_join_rows("answer", stages.by_id, buckets), batch_format="pyarrow"))
    return _joined_by_id(parts, path, buckets)


def unique_questions(questions, rows: int):
    """Each question id once, in input order; a later row with an id already seen becomes a duplicate
    reject (``reject_stage`` "questions"), as in every job."""
    buckets = stages.buckets_for(rows)
    keyed = questions.map_batches(_as_join_rows("question", stages.by_id, buckets), batch_format="pyarrow")
    return _joined_by_id([keyed], None, buckets)


def _joined_by_id(parts: list, path: str | None, buckets: int):
    return stages.coalesced(stages.union_all(parts), buckets).groupby("bucket").map_groups(
        _id_join(path), batch_format="pyarrow").sort("order")
