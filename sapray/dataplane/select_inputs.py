"""The select job's read pass, in the cluster: questions and every candidate row are read, validated
and joined by workers; the driver receives what it decides with, never the whole table.

    questions   ``data.questions`` read by workers (a later row with an id is a duplicate), or taken
                from the candidate files' own texts: an id's first text, and for a text no id has, an id
                made from it (``read.derived_question_id``)
    candidates  every row of every candidate file (``read.candidate_record``); a reject keeps its place
    join        rows without a question_id take the id of the one question with their exact text (hash
                buckets by text), then every row meets its question (hash buckets by id): unknown ids,
                ambiguous or unmatched texts and a second row for a (question, strategy) are rejects
    coverage    per strategy, the questions with a usable candidate -> ``sample.choose_strategies``
    decide      rows of excluded strategies and of questions that lack a chosen strategy become rejects
    sample      the ids of the complete questions come to the driver (for the seeded order), then the
                rows of the questions the sample can reach; every other row stays in the cluster, counted
    rejects     a dataset, written by the workers (``rejects/``)

The per-row and per-bucket rules are ``read``'s and ``sample``'s, the same as the driver-side readers'.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sapray.config import Columns, DataConfig, RayConfig
from sapray.core.sample import StrategySet, choose_strategies, lacking_strategies
from sapray.dataplane import stages
from sapray.dataplane.read import (
    CANDIDATE_STAGES,
    InputError,
    Reject,
    candidate_record,
    derived_question_id,
    duplicate_id,
    joined_question,
    nothing_usable,
    number_as_text,
    number_or_none,
    question_record,
)
from sapray.dataplane.shards import check_columns
from sapray.dataplane.teachers import joined_by_text

# One schema for questions (kind "question") and candidates (kind "candidate"), so both meet in a bucket.
ROW_SCHEMA = pa.schema([
    ("kind", pa.string()), ("order", pa.int64()), ("source", pa.string()), ("question_id", pa.string()),
    ("question", pa.string()), ("gold", pa.string()), ("response", pa.string()), ("strategy", pa.string()),
    ("reward", pa.float64()), ("joined_by", pa.string()), ("reject", pa.string()), ("reject_stage", pa.string()),
    ("have", pa.list_(pa.string())), ("complete", pa.bool_())])
FILE_BITS = 40  # a candidate's order: file number << FILE_BITS | its record number, so files follow each other


def _row(kind: str, order: int, source: str, **values: Any) -> dict:
    return {**dict.fromkeys(ROW_SCHEMA.names), "reject": "", "reject_stage": "", **values,
            "kind": kind, "order": order, "source": source}


def question_row(index: int, source: str, row: dict | str, columns: Columns) -> dict:
    values, problem = question_record(row, columns, need_gold=False)
    return _row("question", index, source, **values, reject=problem or "", reject_stage="questions" if problem else "")


def candidate_row(index: int, source: str, row: dict | str, columns: Columns, strategy: str | None,
                  file_number: int) -> dict:
    order = file_number << FILE_BITS | index
    record = row if isinstance(row, str) else candidate_record(row, columns, strategy)
    if isinstance(record, str):
        qid = number_as_text(row.get(columns.question_id)) if isinstance(row, dict) else None
        return _row("candidate", order, source, question_id=qid if isinstance(qid, str) else None,
                    strategy=strategy, reject=record, reject_stage="candidates")
    return _row("candidate", order, source, **record, reward=number_or_none(row.get(columns.reward)),
                joined_by="question_id" if record["question_id"] is not None else "text")


# -- reading ---------------------------------------------------------------------------------------

def _read_candidates(uris: dict[str | None, str], columns: Columns, shard_bytes: int):
    """(every candidate row as a dataset, rows read); a file missing the columns fails here, naming it."""
    parts, rows_in = [], 0
    for number, (strategy, uri) in enumerate(uris.items()):
        long_table = [columns.strategy] if strategy is None else []
        check_columns(uri, [[columns.response, *long_table], [columns.messages, *long_table]])
        ds, n = stages.read_dataset([uri], partial(candidate_row, columns=columns, strategy=strategy,
                                                   file_number=number), ROW_SCHEMA, shard_bytes)
        parts.append(ds)
        rows_in += n
    return stages.union_all(parts), rows_in


def _keyed(key: Callable[[pa.Table], list], buckets: int):
    def fn(batch: pa.Table) -> pa.Table:
        return batch.append_column("bucket", pa.array(stages.bucket_of(key(batch), buckets)))
    return fn


def _by_bucket(parts: list, key: Callable[[pa.Table], list], buckets: int, fn: Callable[[list[dict]], list[dict]]):
    """``fn`` over each hash bucket's rows (in input order), the rows of ``parts`` keyed by ``key``."""
    def group(table: pa.Table) -> pa.Table:
        rows = sorted(table.drop_columns(["bucket"]).to_pylist(), key=lambda r: (r["kind"] != "question", r["order"]))
        return pa.Table.from_pylist(fn(rows), schema=ROW_SCHEMA)
    keyed = stages.union_all([p.map_batches(_keyed(key, buckets), batch_format="pyarrow") for p in parts])
    return stages.coalesced(keyed, buckets).groupby("bucket").map_groups(group, batch_format="pyarrow").materialize()


def _first_questions(rows: list[dict]) -> list[dict]:
    """Questions of one id bucket: the first row of an id is the question, a later one a reject."""
    first: dict[str, str] = {}
    for q in rows:
        if q["question_id"] in first:
            q["reject"], q["reject_stage"] = duplicate_id(q["question_id"], first[q["question_id"]]), "questions"
        else:
            first[q["question_id"]] = q["source"]
    return rows


def _given_questions(rows: list[dict]) -> list[dict]:
    """From candidate rows of one id bucket, the question of each id (its first row with a question text)."""
    out: dict[str, dict] = {}
    for r in rows:
        if r["question"] and r["question_id"] not in out:
            out[r["question_id"]] = _row("question", r["order"], r["source"], question_id=r["question_id"],
                                         question=r["question"])
    return list(out.values())


def _derived_questions(rows: list[dict]) -> list[dict]:
    """From one text bucket of given questions and id-less candidates: a question for each text that no
    given id has, with ``read.derived_question_id`` (its first row's text and source)."""
    known = {q["question"].strip() for q in rows if q["kind"] == "question"}
    out: dict[str, dict] = {}
    for r in rows:
        text = r["question"].strip()
        if r["kind"] == "candidate" and text not in known and text not in out:
            out[text] = _row("question", r["order"], r["source"], question_id=derived_question_id(text),
                             question=r["question"])
    return list(out.values())


def _text_join(rows: list[dict]) -> list[dict]:
    """One text bucket: each id-less candidate takes the id of the one question with its text."""
    questions = [r for r in rows if r["kind"] == "question"]
    joined = joined_by_text([r for r in rows if r["kind"] == "candidate"], questions)
    return [{**r, "reject_stage": "candidates"} if r["reject"] else r for r in joined]


def _id_join(rows: list[dict]) -> list[dict]:
    """One id bucket of questions and candidates: unknown ids and second rows for a (question, strategy)
    are rejects; each question and each usable candidate gets ``have``, the strategies with a usable
    candidate for its question (so that deciding is row by row, whatever blocks the rows travel in)."""
    questions = {q["question_id"]: q for q in rows if q["kind"] == "question"}
    seen: dict[tuple[str, str], str] = {}
    have: dict[str, list[str]] = {qid: [] for qid in questions}
    for r in rows:
        if r["kind"] != "candidate" or r["reject"]:  # not joined by text: rejected already, with the reason
            continue
        key = (r["question_id"], r["strategy"])
        _, problem = joined_question(r, questions, {})
        if problem:
            r["reject"], r["reject_stage"] = problem, "candidates"
        elif key in seen:
            r["reject"], r["reject_stage"] = (f"duplicate (question_id, strategy) {key!r}; first at {seen[key]}",
                                              "candidates")
        else:
            seen[key] = r["source"]
            have[r["question_id"]].append(r["strategy"])
    for r in rows:
        if not r["reject"]:
            r["have"] = sorted(have[r["question_id"]])
    return rows


def _decide(chosen: StrategySet, data_strategies: list[str]):
    """Row by row: a question is complete when it has every chosen data strategy; a candidate of an
    excluded strategy, or of a question that is not complete, becomes a reject with the reason."""
    def fn(batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        for r in rows:
            if r["reject"]:
                continue
            lacking = lacking_strategies(set(r["have"] or []) - set(chosen.excluded), data_strategies)
            if r["kind"] == "question":
                r["complete"] = not lacking
                continue
            if r["strategy"] in chosen.excluded:
                r["reject"] = f"strategy {r['strategy']} excluded: {chosen.excluded[r['strategy']]}"
                r["reject_stage"] = "strategy"
            elif lacking:
                r["reject"] = (f"question lacks strategies {lacking} "
                               "(paired design scores complete questions only)")
                r["reject_stage"] = "sample"
        return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
    return fn


# -- summaries -------------------------------------------------------------------------------------

def _summary(batch: pa.Table) -> dict:
    """Per block: candidate rows by reject stage, per-strategy coverage, the questions with any
    candidate, and how rows were joined."""
    rows = batch.to_pylist()
    coverage: dict[str, int] = {}
    questions = 0
    out = {f"stage.{s}": 0 for s in ("", *CANDIDATE_STAGES, "questions")}
    out |= {"by_question_id": 0, "by_text": 0, "unmatched": 0, "ambiguous": 0}
    for r in rows:
        if r["kind"] == "question":
            questions += bool(r["have"])
            for name in r["have"] or []:
                coverage[name] = coverage.get(name, 0) + 1
            continue
        out[f"stage.{r['reject_stage'] if r['reject'] else ''}"] += 1
        if not r["reject"]:
            out["by_question_id" if r["joined_by"] == "question_id" else "by_text"] += 1
        for why in ("unmatched", "ambiguous"):
            out[why] += r["reject"].startswith(why + ":")
    return {**{k: [v] for k, v in out.items()}, "questions": [questions], "coverage": [coverage]}


def _totals(ds) -> dict:
    parts = ds.map_batches(_summary, batch_format="pyarrow", batch_size=None).take_all()
    keys = [k for k in _summary(ROW_SCHEMA.empty_table()) if k != "coverage"]
    totals: dict[str, Any] = {k: sum(p[k] for p in parts) for k in keys}
    coverage: dict[str, int] = {}
    for p in parts:
        for name, n in (p["coverage"] or {}).items():
            if n:
                coverage[name] = coverage.get(name, 0) + n
    return {**totals, "coverage": coverage}


def _as_rejects(batch: pa.Table) -> pa.Table:
    return pa.table({"source": batch.column("source"), "reason": batch.column("reject"),
                     "stage": batch.column("reject_stage"), "question_id": batch.column("question_id"),
                     "strategy": batch.column("strategy")}, schema=stages.REJECT_SCHEMA)


def _with_ids(ids: set[str]):
    def fn(batch: pa.Table) -> pa.Table:
        return batch.filter(pc.is_in(batch.column("question_id"), pa.array(sorted(ids), pa.string())))
    return fn


def _question_ids(batch: pa.Table) -> dict:
    """Per block, its questions' ids and whether each is complete: lists, so a million ids travel as a
    few rows."""
    questions = batch.filter(pc.equal(batch.column("kind"), "question"))
    return {"ids": [questions.column("question_id").to_pylist()],
            "complete": [questions.column("complete").to_pylist()]}


def _has_id(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_valid(batch.column("question_id")))


def _lacks_id(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_null(batch.column("question_id")))


def _first_rejects(ds) -> list:
    return [Reject(r["source"], r["reject"], r["reject_stage"]) for r in
            ds.map_batches(stages.rejected_rows, batch_format="pyarrow").take(1)]


# -- the pass --------------------------------------------------------------------------------------

@dataclass
class SelectionInputs:
    """What the driver holds after the read pass: counts, the strategy set and question ids."""

    chosen: StrategySet
    question_ids: list[str]  # every usable question (exemplars may be mined from them)
    complete: list[str]  # the questions the paired design can sample
    rows_in: int  # candidate rows read
    rejected: int  # candidate rows rejected in the cluster
    question_rows_rejected: int
    usable: int  # usable candidate rows (all of complete questions)
    joined: dict
    rejects: Any  # a dataset of stages.REJECT_SCHEMA rows, for the workers to write
    decided: Any  # every question and every usable candidate, materialized

    def fetch(self, ids: set[str]) -> tuple[dict[str, dict], list[dict]]:
        """(questions, usable candidate rows) of these question ids, brought to the driver."""
        rows = self.decided.map_batches(_with_ids(ids), batch_format="pyarrow").take_all()
        questions = {r["question_id"]: {k: r[k] for k in ("question_id", "question", "gold", "source")}
                     for r in rows if r["kind"] == "question"}
        return questions, [r for r in rows if r["kind"] == "candidate"]


def _questions_file(uri: str, columns: Columns, shard_bytes: int):
    """(usable questions, rejected question rows) of a questions file; a later row with an id is a duplicate."""
    check_columns(uri, [[columns.question_id, columns.question]])
    read, rows = stages.read_dataset([uri], partial(question_row, columns=columns), ROW_SCHEMA, shard_bytes)
    usable, bad = stages.split_rejected(read)
    questions, duplicates = stages.split_rejected(
        _by_bucket([usable], stages.by_id, stages.buckets_for(rows), _first_questions))
    rejected = bad.union(duplicates)
    if not questions.count():
        raise nothing_usable("questions", [uri], _first_rejects(rejected), rejected.count())
    return questions, rejected


def _questions_of_candidates(with_id, without_id, uris: dict[str | None, str], columns: Columns, buckets: int):
    """The questions of candidate files that carry their texts: each id's first text; a text no id has
    gets an id made from it."""
    # materialized: each is read more than once (the text join, the count, later passes), computed once
    questions = _by_bucket([with_id], stages.by_id, buckets, _given_questions).materialize()
    if without_id.count():
        questions = questions.union(
            _by_bucket([questions, without_id], stages.by_text, buckets, _derived_questions)).materialize()
    if not questions.count():
        raise InputError(f"{', '.join(uris.values())}: no question texts to take the questions from (give "
                         "data.questions, --questions, or candidate files in chat 'messages' form or with a "
                         f"{columns.question!r} column)")
    return questions


def _usable_candidates(data: DataConfig, shard_bytes: int):
    """(usable candidate rows with an id, those without, rejected rows, rows read)."""
    uris = data.candidate_sources()
    candidates, rows_in = _read_candidates(uris, data.columns, shard_bytes)
    good, bad = stages.split_rejected(candidates)
    if not good.count():
        raise nothing_usable("candidate rows", uris.values(), _first_rejects(bad), bad.count())
    return (good.map_batches(_has_id, batch_format="pyarrow").materialize(),
            good.map_batches(_lacks_id, batch_format="pyarrow").materialize(), bad, rows_in)


def candidate_file_questions(data: DataConfig, ray_cfg: RayConfig):
    """(the questions of candidate files that carry their texts, as a dataset; how many): what
    ``sapray generate`` answers when there is no ``data.questions``."""
    with_id, without_id, _, rows_in = _usable_candidates(data, max(1, int(ray_cfg.shard_mb * 2**20)))
    questions = _questions_of_candidates(with_id, without_id, data.candidate_sources(), data.columns,
                                         stages.buckets_for(rows_in))
    return questions, questions.count()


def _joined(data: DataConfig, shard_bytes: int):
    """(questions and candidate rows, joined, rejected ones included; question rejects; candidate rows read)."""
    uris, columns = data.candidate_sources(), data.columns
    questions, question_rejects = (_questions_file(data.questions, columns, shard_bytes) if data.questions
                                   else (None, None))
    if not uris:
        return questions, question_rejects, 0
    with_id, without_id, bad, rows_in = _usable_candidates(data, shard_bytes)
    buckets = stages.buckets_for(rows_in)
    if questions is None:
        questions = _questions_of_candidates(with_id, without_id, uris, columns, buckets)
    if without_id.count():
        with_id = with_id.union(_by_bucket([questions, without_id], stages.by_text, buckets, _text_join))
    rows = _by_bucket([questions, with_id], stages.by_id, stages.buckets_for(rows_in + questions.count()), _id_join)
    return rows.union(bad), question_rejects, rows_in


def read_selection_inputs(data: DataConfig, ray_cfg: RayConfig, generated: list[str]) -> SelectionInputs:
    """The read pass (module docstring). ``generated``: strategies whose sample teachers write round by
    round (``sapray run``); they cover every sampled question by construction."""
    uris = data.candidate_sources()
    joined_rows, question_rejects, rows_in = _joined(data, max(1, int(ray_cfg.shard_mb * 2**20)))
    joined_rows = joined_rows.materialize()
    totals = _totals(joined_rows)
    if uris and not totals["stage."]:
        raise nothing_usable("candidate rows", uris.values(), _first_rejects(joined_rows),
                             rows_in - totals["stage."])
    chosen = choose_strategies(totals["coverage"], totals["questions"], data.strategies, data.min_coverage,
                               generated)
    data_strategies = [s for s in chosen.chosen if s not in generated]
    decided = joined_rows.map_batches(_decide(chosen, data_strategies), batch_format="pyarrow").materialize()
    after = _totals(decided)
    usable, rejects = stages.split_rejected(decided)
    rejects = stages.in_order(rejects, ["order", "kind"])  # in input order, files one after the other (not by bucket)
    if question_rejects is not None:
        rejects = question_rejects.union(rejects)
    ids, complete = [], []
    for part in usable.map_batches(_question_ids, batch_format="pyarrow", batch_size=None).take_all():
        ids += part["ids"]
        complete += [q for q, ok in zip(part["ids"], part["complete"], strict=True) if ok]
    return SelectionInputs(
        chosen=chosen, question_ids=ids, complete=complete, rows_in=rows_in,
        rejected=sum(after[f"stage.{s}"] for s in CANDIDATE_STAGES),
        question_rows_rejected=question_rejects.count() if question_rejects is not None else 0,
        usable=after["stage."],
        joined={"questions": "file" if data.questions else "derived from the candidate files",
                **{k: totals[k] for k in ("by_question_id", "by_text", "unmatched", "ambiguous")}},
        rejects=rejects.map_batches(_as_rejects, batch_format="pyarrow"),
        decided=usable)
