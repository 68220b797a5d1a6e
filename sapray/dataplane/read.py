"""Read questions and candidate responses, validating every row.

Formats by suffix: ``.jsonl``/``.json`` (JSON lines, or a JSON array in a ``.json`` file, as
``datasets`` reads them), ``.parquet``, ``.csv``, or a directory written by
``datasets.Dataset.save_to_disk`` (Arrow files). Paths may be local or object-store URIs
(``s3://``, ``gs://``) through pyarrow's filesystems. Every row carries ``source`` (file:row) so a
rejection names where it came from.

A fault in a row stays in that row: it becomes a ``Reject`` with its reason and the other rows are
read on. Row faults: malformed JSON (a truncated last line included), bytes that are not UTF-8, NUL
characters, an unpaired surrogate, a CSV record with the wrong number of fields, a value that is not
text (a number, a list, an object, null) where text is expected, and absurd sizes: a JSONL line over
``MAX_ROW_BYTES`` is skipped without being held in memory, a CSV field over it is rejected (Python's
csv reads a physical line whole), and so is a text value over ``MAX_TEXT_CHARS``.
Decoded tolerantly, as ``datasets`` and pandas do: a UTF-8 byte order mark (at the start of the
file, or of a line of concatenated JSONL files), CRLF line ends, and numeric ids (``7``, ``7.0`` ->
``"7"``). Only what makes a whole file unusable is an ``InputError`` naming the file: it is missing or
unreadable, a required column is absent, or no row of it is usable.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sapray.config import Columns
from sapray.core.errors import InputError
from sapray.core.exemplars import Exemplar
from sapray.storage import child, filesystem

# A text value (question, response, gold) longer than this is rejected: ~250k tokens, beyond any
# context sapray scores in, and tokenizing it would only cost the driver memory and minutes before
# the engine's length limit rejected it anyway.
MAX_TEXT_CHARS = 1_000_000
# A JSONL line or CSV field longer than this is counted and rejected without being held in memory.
MAX_ROW_BYTES = 16 * 2**20
_CHUNK = 2**20
_BOM = b"\xef\xbb\xbf"
_SURROGATE = re.compile("[\ud800-\udfff]")
MISSING = object()  # text_problem's value for a column the row does not have


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


# -- text values ---------------------------------------------------------------------------------

def text_problem(value: object, what: str) -> str | None:
    """Why ``value`` is not usable text, or None: a str, at most MAX_TEXT_CHARS long, valid UTF-8 (no
    undecodable byte, no unpaired surrogate) and without NUL characters. ``what`` names it in the
    reason: "column 'response'"."""
    if value is MISSING:
        return f"no {what}"
    if not isinstance(value, str):
        return f"{what} is {'null' if value is None else type(value).__name__}, not a string"
    if len(value) > MAX_TEXT_CHARS:
        return f"{what} is {len(value):,} characters, over the limit of {MAX_TEXT_CHARS:,}"
    if "\x00" in value:
        return f"{what} holds a NUL character (binary data?)"
    bad = _SURROGATE.search(value)
    if bad:
        code = ord(bad.group())
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as surrogateescape decoding keeps it
            return f"{what} is not valid UTF-8 (byte 0x{code - 0xDC00:02x} at character {bad.start() + 1})"
        return f"{what} holds an unpaired surrogate U+{code:04X} (not valid Unicode)"
    return None


def number_as_text(value: object) -> object:
    """Numeric ids and gold answers are common and harmless: 7 and 7.0 read as '7'."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return value
    return str(int(value)) if float(value).is_integer() else repr(value)


def number_or_none(value: object) -> float | None:
    """A numeric value, also from text (CSV cells are text); None when there is none."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value) if isinstance(value, int | float | str) else math.nan
    except ValueError:
        return None
    return number if math.isfinite(number) else None


# -- readers: (source, row dict or the reason the row is unusable) --------------------------------

def split_lines(read: Callable[[int], bytes], base: int = 0) -> Iterator[tuple[int, bytes | int, bool]]:
    """(offset of the line's first byte, counted from ``base``; the line's bytes -- or its size when over
    MAX_ROW_BYTES --; whether a newline ended it).

    Reads in chunks, so an over-long line costs time but never memory."""
    offset, parts, size, consumed = base, [], 0, base
    while chunk := read(_CHUNK):
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            size += end - start
            yield offset, (b"".join([*parts, chunk[start:end]]) if size <= MAX_ROW_BYTES else size), True
            offset, parts, size, start = consumed + end + 1, [], 0, end + 1
        size += len(chunk) - start
        if size <= MAX_ROW_BYTES:
            parts.append(chunk[start:])
        else:
            parts = []
        consumed += len(chunk)
    if size:
        yield offset, (b"".join(parts) if size <= MAX_ROW_BYTES else size), False


def line_text(line: bytes) -> str:
    """A JSONL line as text: a BOM may start any line (concatenated files); CRLF line ends are common."""
    return line.removeprefix(_BOM).removesuffix(b"\r").decode("utf-8", "surrogateescape")


def is_record(line: bytes | int) -> bool:
    """Whether a line of JSONL is a record (a blank line is not; an over-long one is, to be rejected)."""
    return isinstance(line, int) or bool(line_text(line).strip())


def _malformed(text: str, exc: json.JSONDecodeError, ended: bool) -> str:
    bad = _SURROGATE.search(text)
    if bad:
        return f"not valid UTF-8 (byte 0x{ord(bad.group()) - 0xDC00:02x} at character {bad.start() + 1})"
    if "\x00" in text:
        return "malformed JSON: holds NUL bytes (binary data, or a file padded after a crash?)"
    where = f"malformed JSON: {exc.msg} (column {exc.colno})"
    return where if ended else f"{where} (the last line, with no line end: truncated?)"


def json_lines(lines: Iterable[tuple[int, bytes | int, bool]], uri: str, first_line: int = 1
               ) -> Iterator[tuple[str, dict | str]]:
    """Records of ``split_lines`` output; ``first_line`` is the number of the first line given."""
    for number, (_, line, ended) in enumerate(lines, first_line):
        source = f"{uri}:{number}"
        if isinstance(line, int):
            yield source, f"line is {line:,} bytes, over the limit of {MAX_ROW_BYTES:,}"
            continue
        if not is_record(line):
            continue
        text = line_text(line)
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            yield source, _malformed(text, exc, ended)
            continue
        except RecursionError:
            yield source, "malformed JSON: nested too deeply"
            continue
        yield source, row if isinstance(row, dict) else "a JSON line that is not an object"


def _json_array(text: str, uri: str) -> Iterator[tuple[str, dict | str]]:
    """Items one by one, so a truncated or broken array still yields the items before the break."""
    decoder, space = json.JSONDecoder(), re.compile(r"\s*")
    pos = space.match(text, text.index("[") + 1).end()
    if text.startswith("]", pos):
        return
    for item_no in range(1, len(text) + 1):
        source = f"{uri}:{item_no}"
        try:
            item, end = decoder.raw_decode(text, pos)
        except (json.JSONDecodeError, RecursionError) as exc:
            why = f"{exc.msg} (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) \
                else "nested too deeply"
            yield source, f"malformed JSON array item: {why}; the rest of the file cannot be read"
            return
        yield source, item if isinstance(item, dict) else "an array item that is not an object"
        pos = space.match(text, end).end()
        if text.startswith(",", pos):
            pos = space.match(text, pos + 1).end()
            continue
        if not text.startswith("]", pos):
            yield f"{uri}:{item_no + 1}", (f"malformed JSON array: no ',' or ']' after item {item_no}; "
                                           "the rest of the file cannot be read")
        elif text[pos + 1:].strip():
            yield f"{uri}:{item_no + 1}", f"text after the end of the JSON array (from character {pos + 2})"
        return


def _csv_records(stream, uri: str) -> Iterator[tuple[str, dict | str]]:
    csv.field_size_limit(max(csv.field_size_limit(), MAX_ROW_BYTES))
    # surrogateescape keeps undecodable bytes to the field they are in; utf-8-sig drops a BOM.
    reader = csv.reader(io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline=""))
    header, record_no = None, 0
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # the reader goes on with the next record
            if header is None:
                raise InputError(f"{uri}: unreadable CSV header: {exc}") from None
            record_no += 1
            yield f"{uri}:{record_no}", f"unreadable CSV record: {exc}"
            continue
        if not record:  # a blank line
            continue
        if header is None:
            header = record
            continue
        record_no += 1
        if len(record) != len(header):
            yield f"{uri}:{record_no}", f"{len(record)} fields where the header has {len(header)}"
        else:
            yield f"{uri}:{record_no}", dict(zip(header, record, strict=True))


def _decoded_row(batch: pa.RecordBatch, k: int) -> dict | str:
    """Row k of a batch whose text is not all valid UTF-8: bad bytes are kept as surrogateescape
    characters (rejected only if the row's used columns hold them)."""
    row = {}
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        try:
            row[name] = column[k].as_py()
        except UnicodeDecodeError as exc:
            if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
                return f"column {name!r} holds text that is not valid UTF-8 ({exc.reason})"
            row[name] = column[k].cast(pa.large_binary()).as_py().decode("utf-8", "surrogateescape")
    return row


def _arrow_rows(batches: Iterable[pa.RecordBatch], name: str, first_row: int = 1) -> Iterator[tuple[str, dict | str]]:
    row_no = first_row
    for batch in batches:
        try:
            rows = batch.to_pylist()
        except UnicodeDecodeError:
            rows = [_decoded_row(batch, k) for k in range(batch.num_rows)]
        for row in rows:
            yield f"{name}:{row_no}", row
            row_no += 1


def dataset_parts(fs: pafs.FileSystem, path: str, uri: str) -> list[pafs.FileInfo]:
    """The Arrow files of a ``datasets.save_to_disk`` folder, in order; InputError when there are none."""
    parts = sorted((f for f in fs.get_file_info(pafs.FileSelector(path)) if f.path.endswith(".arrow")),
                   key=lambda f: f.path)
    if not parts:
        if fs.get_file_info(child(path, "dataset_dict.json")).type == pafs.FileType.File:
            raise InputError(f"{uri}: a DatasetDict; name one split's folder, e.g. {child(uri, 'train')}")
        raise InputError(f"{uri}: a directory without .arrow files (expected datasets.save_to_disk output)")
    return parts


def _dataset_dir(fs: pafs.FileSystem, path: str, uri: str) -> Iterator[tuple[str, dict | str]]:
    for part in dataset_parts(fs, path, uri):
        with fs.open_input_stream(part.path) as stream:
            yield from _arrow_rows(pa.ipc.open_stream(stream), child(uri, part.base_name))


def _records(fs: pafs.FileSystem, path: str, uri: str, is_dir: bool) -> Iterator[tuple[str, dict | str]]:
    if is_dir:
        yield from _dataset_dir(fs, path, uri)
    elif path.endswith(".parquet"):
        with fs.open_input_file(path) as f:
            yield from _arrow_rows(pq.ParquetFile(f).iter_batches(batch_size=1024), uri)
    elif path.endswith(".csv"):
        # buffered: csv reads in small pieces, each a request of its own on an object store
        with fs.open_input_stream(path, buffer_size=_CHUNK) as f:
            yield from _csv_records(f, uri)
    elif path.endswith((".jsonl", ".json")):
        with fs.open_input_stream(path) as f:
            first = f.read(_CHUNK)
            if path.endswith(".json") and first.removeprefix(_BOM).lstrip().startswith(b"["):
                # a JSON array, as datasets also reads it: parsed whole
                yield from _json_array((first + f.read()).decode("utf-8", "surrogateescape"), uri)
            else:
                pending = [first]
                yield from json_lines(split_lines(lambda n: pending.pop() if pending else f.read(n)), uri)
    else:
        raise InputError(f"{uri}: unknown format (use .jsonl, .json, .parquet, .csv or a datasets directory)")


def iter_records(uri: str) -> Iterator[tuple[str, dict | str]]:
    """(source, row) pairs; a row that cannot be used as a record comes back as the reason, a string.

    A file that cannot be read at all raises InputError naming it, whatever pyarrow or the OS said."""
    try:
        fs, path = filesystem(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise InputError(f"{uri}: no such file")
        yield from _records(fs, path, uri, info.type == pafs.FileType.Directory)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{uri}: cannot be read: {exc}") from None


def _string_fields(row: dict, fields: dict[str, str]) -> tuple[dict[str, str], str | None]:
    """Map input columns to sapray's names; the reason a row is bad, if it is."""
    out = {}
    for ours, theirs in fields.items():
        value = row.get(theirs, MISSING)
        if ours in ("question_id", "gold"):
            value = number_as_text(value)
        problem = text_problem(value, f"column {theirs!r}")
        if problem:
            return out, problem
        out[ours] = value
    return out, None


# A required column absent from this many rows in a row (or from a whole smaller file) is a wrong
# column name, not a bad row: fail then, rather than reject every row of a big file one by one.
COLUMN_EVIDENCE_ROWS = 1000


def checked_records(uri: str, needed: list[str], *alternatives: list[str]) -> Iterator[tuple[str, dict | str]]:
    """``iter_records``, failing with InputError when no required column set (``needed`` or one of the
    ``alternatives``) is wholly among the columns of the file's rows."""
    present: set[str] = set()
    objects = 0
    for source, row in iter_records(uri):
        if isinstance(row, dict):
            objects += 1
            present.update(row)
            if objects == COLUMN_EVIDENCE_ROWS:
                _require_columns(uri, present, [needed, *alternatives])
        yield source, row
    if objects:
        _require_columns(uri, present, [needed, *alternatives])


def _require_columns(uri: str, present: set[str], choices: list[list[str]]) -> None:
    if any(all(c in present for c in needed) for needed in choices):
        return
    missing = [c for c in choices[0] if c not in present]
    also = "".join(f", or else {needed}" for needed in choices[1:])
    raise InputError(f"{uri}: missing required column(s) {missing}{also}; present: {sorted(present)}")


def nothing_usable(what: str, uris: Iterable[str], rejects: list[Reject], count: int | None = None) -> InputError:
    """The error for inputs none of whose rows can be used, with the first reason as a hint; ``count``:
    how many were rejected, when ``rejects`` holds the first only."""
    first = f"; the first: {rejects[0].source}: {rejects[0].reason}" if rejects else ""
    n = len(rejects) if count is None else count
    return InputError(f"{', '.join(uris)}: no usable {what} ({n} row(s) rejected{first})")


def question_record(row: dict | str, columns: Columns, need_gold: bool) -> tuple[dict, str | None]:
    """A question row's {question_id, question, gold} and why it is unusable (None: it is usable).
    Duplicate ids are the caller's to find: that needs every row."""
    if isinstance(row, str):
        return {}, row
    fields = {"question_id": columns.question_id, "question": columns.question}
    if need_gold:
        fields["gold"] = columns.gold
    values, problem = _string_fields(row, fields)
    if problem is None and not values["question"].strip():
        problem = "empty question"
    if problem is None and "gold" not in values:  # optional here: kept when it is usable text
        gold = number_as_text(row.get(columns.gold))
        values["gold"] = gold if text_problem(gold, "gold") is None else None
    return values, problem


def duplicate_id(qid: str, first_source: str) -> str:
    """Why a question row whose id an earlier row has is rejected."""
    return f"duplicate question_id {qid!r} (first at {first_source})"


def read_questions(uri: str, columns: Columns, need_gold: bool) -> tuple[dict[str, dict], list[Reject]]:
    required = [columns.question_id, columns.question] + ([columns.gold] if need_gold else [])
    questions, rejects = {}, []
    for source, row in checked_records(uri, required):
        values, problem = question_record(row, columns, need_gold)
        qid = values.get("question_id")
        if problem is None and qid in questions:
            problem = duplicate_id(qid, questions[qid]["source"])
        if problem:
            rejects.append(Reject(source, problem, "questions", question_id=qid))
            continue
        questions[qid] = {**values, "source": source}
    if not questions:
        raise nothing_usable("questions", [uri], rejects)
    return questions, rejects


def chat_pair(messages: object, column: str = "messages") -> tuple[str, str] | str:
    """(question, response) of a chat ``messages`` list as TRL and LLaMA-Factory write SFT data: the first
    user turn and the last assistant turn after it; else why the row cannot be used."""
    if not isinstance(messages, list):
        return f"column {column!r} is {'null' if messages is None else type(messages).__name__}, not a list of turns"
    turns = []
    for i, turn in enumerate(messages):
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str):
            return f"{column}[{i}] is not a turn with a role"
        content = turn.get("content", MISSING)
        if isinstance(content, list):  # OpenAI-style content parts: the text parts, joined
            texts = [part.get("text") for part in content if isinstance(part, dict) and part.get("type") == "text"]
            content = "".join(texts) if texts and all(isinstance(t, str) for t in texts) else content
        turns.append((turn["role"], content))
    user = next((i for i, (role, _) in enumerate(turns) if role == "user"), None)
    if user is None:
        return f"no user turn in {column!r}"
    assistant = max((i for i, (role, _) in enumerate(turns) if role == "assistant" and i > user), default=None)
    if assistant is None:
        return f"no assistant turn after the first user turn in {column!r}"
    question, response = turns[user][1], turns[assistant][1]
    problem = (text_problem(question, f"the first user turn of {column!r}")
               or text_problem(response, f"the last assistant turn of {column!r}"))
    return problem or (question, response)


def row_pair(row: dict, columns: Columns, question_required: bool) -> tuple[str | None, str] | str:
    """(question, response) of a row in chat form (``messages``, see ``chat_pair``) or column form; else
    why it cannot be used. In column form, a question that is not usable text is None unless required."""
    if columns.messages in row:
        return chat_pair(row[columns.messages], columns.messages)
    question, response = row.get(columns.question, MISSING), row.get(columns.response, MISSING)
    problem = text_problem(question, f"column {columns.question!r}")
    if problem and question_required:
        return problem
    return text_problem(response, f"column {columns.response!r}") or (None if problem else question, response)


def candidate_record(row: dict, columns: Columns, strategy: str | None) -> dict | str:
    """One candidate row, in column form (question_id or question, response[, strategy]) or chat form
    (``messages``[, question_id][, strategy]): {question_id (None: join by text), question, response,
    strategy}; else why it cannot be used."""
    pair = row_pair(row, columns, question_required=False)  # the question is optional: only to join by
    if isinstance(pair, str):
        return pair
    question, response = pair
    qid = number_as_text(row.get(columns.question_id))
    if qid is not None and (problem := text_problem(qid, f"column {columns.question_id!r}")):
        return problem
    if qid is None and not (question or "").strip():
        return f"no column {columns.question_id!r} and no question text to join by"
    if strategy is None:
        strategy = row.get(columns.strategy, MISSING)
        if problem := text_problem(strategy, f"column {columns.strategy!r}"):
            return problem
    if not response.strip():
        return "empty response"
    return {"question_id": qid, "question": question, "response": response, "strategy": strategy}


def text_index(questions: dict[str, dict]) -> dict[str, list[str]]:
    """Question text (outer spaces aside) -> the ids of the questions with that text."""
    index: dict[str, list[str]] = {}
    for qid, q in questions.items():
        index.setdefault(q["question"].strip(), []).append(qid)
    return index


def derived_question_id(text: str) -> str:
    """A stable id for a question known only by its text."""
    return "q-" + hashlib.sha256(text.strip().encode()).hexdigest()[:12]


def joined_question(record: dict, questions: dict[str, dict], by_text: dict[str, list[str]]
                    ) -> tuple[str | None, str | None]:
    """(question_id, why it does not join) of a candidate record: its own id, else the one question
    with its exact text (outer spaces aside)."""
    qid = record["question_id"]
    if qid is not None:
        return qid, None if qid in questions else f"unknown question_id {qid!r}"
    matches = by_text.get(record["question"].strip(), [])
    if len(matches) == 1:
        return matches[0], None
    if matches:
        return None, f"ambiguous: the question text matches {len(matches)} questions {matches[:5]}"
    return None, "unmatched: no question has this exact text"


def load_exemplar_file(uri: str) -> list[Exemplar]:
    """User-supplied exemplars: rows with ``text`` and optional ``exemplar_id``, ``question_id``."""
    exemplars = []
    for source, row in iter_records(uri):
        # A few rows the user chose by hand: a bad one is an error to fix, not a row to skip.
        problem = row if isinstance(row, str) else text_problem(row.get("text", MISSING), "column 'text'")
        if problem or not row["text"].strip():
            raise InputError(f"{source}: an exemplar row needs a non-empty string 'text' ({problem or 'it is empty'})")
        exemplars.append(Exemplar(str(row.get("exemplar_id", source)), row["text"], row.get("question_id"),
                                  bool(row.get("checked", True))))
    return exemplars
