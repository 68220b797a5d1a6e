"""Read questions and candidate responses, validating every row.

Formats by suffix: ``.jsonl``/``.json`` (JSON lines), ``.parquet``, ``.csv``, or a directory written
by ``datasets.Dataset.save_to_disk`` (Arrow files). Paths may be local or object-store URIs
(``s3://``, ``gs://``) through pyarrow's filesystems. Every row carries ``source`` (file:row) so a
rejection names where it came from. A missing required column is an error; a bad row is a
``Reject`` with its reason, never an exception from deep inside a worker.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sapray.config import Columns


class InputError(ValueError):
    """An input that cannot be read at all (missing file or column); names the file."""


CANDIDATE_STAGES = ("candidates", "strategy", "sample", "score")


@dataclass(frozen=True)
class Reject:
    """A row left out, with why. ``stage``: questions (a questions-file row) or, for candidate rows,
    candidates (at read), strategy (its strategy was excluded), sample (not pairable) or score (the
    engine refused it)."""

    source: str
    reason: str
    stage: str
    question_id: str | None = None
    strategy: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), uri


def child(uri: str, name: str) -> str:
    """``uri/name``, keeping a URI's query (``s3://b/out?endpoint_override=...``) at the end."""
    base, sep, query = uri.partition("?")
    return f"{base.rstrip('/')}/{name}{sep}{query}"


def read_text(uri: str, fs: pafs.FileSystem | None = None) -> str:
    """A whole file as UTF-8 text; ``fs`` when ``uri`` is already a path on that filesystem."""
    if fs is None:
        fs, uri = filesystem(uri)
    with fs.open_input_stream(uri) as f:
        return f.read().decode("utf-8")


def _arrow_rows(table: pa.Table, uri: str) -> Iterator[tuple[str, dict | str]]:
    for i, row in enumerate(table.to_pylist(), start=1):
        yield f"{uri}:{i}", row


def iter_records(uri: str) -> Iterator[tuple[str, dict | str]]:
    """(source, row) pairs; a row that is not a JSON object comes back as an error string."""
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"{uri}: no such file")
    if info.type == pafs.FileType.Directory:
        arrow = sorted(f.path for f in fs.get_file_info(pafs.FileSelector(path)) if f.path.endswith(".arrow"))
        if not arrow:
            if fs.get_file_info(child(path, "dataset_dict.json")).type == pafs.FileType.File:
                raise InputError(f"{uri}: a DatasetDict; name one split's folder, e.g. {child(uri, 'train')}")
            raise InputError(f"{uri}: a directory without .arrow files (expected datasets.save_to_disk output)")
        for part in arrow:
            with fs.open_input_stream(part) as stream:
                yield from _arrow_rows(pa.ipc.open_stream(stream).read_all(), part)
        return
    if path.endswith(".parquet"):
        with fs.open_input_file(path) as f:
            yield from _arrow_rows(pq.read_table(f), uri)
    elif path.endswith(".csv"):
        with fs.open_input_stream(path) as f:
            table = pacsv.read_csv(f, convert_options=pacsv.ConvertOptions(strings_can_be_null=False,
                                                                            column_types=None))
        yield from _arrow_rows(table, uri)
    elif path.endswith((".jsonl", ".json")):
        text = read_text(path, fs)
        if path.endswith(".json") and text.lstrip().startswith("["):  # a JSON array, as datasets also reads
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError(f"{uri}: malformed JSON array: {exc.msg} at line {exc.lineno}") from None
            for i, row in enumerate(rows, start=1):
                yield f"{uri}:{i}", row if isinstance(row, dict) else "an array item that is not an object"
        else:
            for i, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield f"{uri}:{i}", f"malformed JSON: {exc.msg} at column {exc.colno}"
                    continue
                yield f"{uri}:{i}", row if isinstance(row, dict) else "a JSON line that is not an object"
    else:
        raise InputError(f"{uri}: unknown format (use .jsonl, .json, .parquet, .csv or a datasets directory)")


def _string_fields(row: dict, fields: dict[str, str]) -> tuple[dict[str, str], str | None]:
    """Map input columns to sapray's names; the reason a row is bad, if it is."""
    out = {}
    for ours, theirs in fields.items():
        value = row.get(theirs)
        if isinstance(value, int | float) and not isinstance(value, bool) and ours in ("question_id", "gold"):
            value = str(value)  # numeric ids and gold answers are common and harmless
        if not isinstance(value, str):
            return out, f"column {theirs!r} is {type(value).__name__}, not a string"
        out[ours] = value
    return out, None


def _require_columns(uri: str, first: dict, needed: list[str]) -> None:
    missing = [c for c in needed if c not in first]
    if missing:
        raise InputError(f"{uri}: missing required column(s) {missing}; present: {sorted(first)}")


def read_questions(uri: str, columns: Columns, need_gold: bool) -> tuple[dict[str, dict], list[Reject]]:
    fields = {"question_id": columns.question_id, "question": columns.question}
    if need_gold:
        fields["gold"] = columns.gold
    questions, rejects, checked = {}, [], False
    for source, row in iter_records(uri):
        if isinstance(row, str):
            rejects.append(Reject(source, row, "questions"))
            continue
        if not checked:
            _require_columns(uri, row, list(fields.values()))
            checked = True
        values, problem = _string_fields(row, fields)
        qid = values.get("question_id")
        if problem is None and qid in questions:
            problem = f"duplicate question_id {qid!r} (first at {questions[qid]['source']})"
        if problem:
            rejects.append(Reject(source, problem, "questions", question_id=qid))
            continue
        values.setdefault("gold", row.get(columns.gold) if isinstance(row.get(columns.gold), str) else None)
        questions[qid] = {**values, "source": source}
    if not questions:
        raise InputError(f"{uri}: no valid questions")
    return questions, rejects


def read_candidates(
    uris: dict[str | None, str], columns: Columns, questions: dict[str, dict]
) -> tuple[list[dict], list[Reject], int]:
    """Candidates from one long table (key None) or one file per strategy; returns (rows, rejects, rows_in)."""
    rows, rejects, seen, rows_in = [], [], {}, 0
    for strategy, uri in uris.items():
        fields = {"question_id": columns.question_id, "response": columns.response}
        if strategy is None:
            fields["strategy"] = columns.strategy
        checked = False
        for source, row in iter_records(uri):
            rows_in += 1
            if isinstance(row, str):
                rejects.append(Reject(source, row, "candidates", strategy=strategy))
                continue
            if not checked:
                _require_columns(uri, row, list(fields.values()))
                checked = True
            values, problem = _string_fields(row, fields)
            values.setdefault("strategy", strategy)
            qid, name = values.get("question_id"), values.get("strategy")
            if problem is None:
                if qid not in questions:
                    problem = f"unknown question_id {qid!r}"
                elif (qid, name) in seen:
                    problem = f"duplicate (question_id, strategy) ({qid!r}, {name!r}); first at {seen[(qid, name)]}"
                elif not values["response"].strip():
                    problem = "empty response"
            if problem:
                rejects.append(Reject(source, problem, "candidates", question_id=qid, strategy=name))
                continue
            seen[(qid, name)] = source
            reward = row.get(columns.reward)
            has_reward = isinstance(reward, int | float) and not isinstance(reward, bool)
            rows.append({**values, "source": source, "reward": float(reward) if has_reward else None})
    return rows, rejects, rows_in
