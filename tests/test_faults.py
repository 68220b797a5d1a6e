"""Bad input never costs good rows: a fault-injection corpus in every input format, read locally and
from S3, through every reader and job (select, generate with a file teacher, filter).

The corpus is built here from the clean test data: the good rows, and before, between and after
them the faults a real file carries -- undecodable bytes, NUL bytes, a byte order mark, CRLF line
ends, a truncated last line, values of the wrong type or nested where text is expected, and absurd
sizes. Each check compares with the clean rows: every good row is read (and scored) exactly as from
a clean file, every bad row is a reject naming its file:row with the reason, and the counts add up.
The jobs score with the tiny random-weight model (``smollm2-tiny-random``): what is compared is the
data plane, and it costs a fraction of the real model's time.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import BUCKET, PATIENCE_S, load_candidates, load_questions, read_parts
from small_job import REPO, exemplar_rows, jsonl

from sapray.config import Columns, load_config, load_filter_config
from sapray.dataplane.filtering import read_samples
from sapray.dataplane.read import MAX_ROW_BYTES, MAX_TEXT_CHARS, InputError, Reject, iter_records, read_questions
from sapray.dataplane.select_inputs import candidate_row
from sapray.dataplane.shards import check_columns
from sapray.engines.models import TINY_RANDOM
from sapray.jobs.filter import run_filter
from sapray.jobs.generate import run_generate
from sapray.jobs.select import run_select, write_selection

FORMATS = ("jsonl", "json", "csv", "parquet", "datasets")
MISSING = object()  # a fault: the column left out of the row
QUESTIONS = load_questions()[:3]
STRATEGIES = ("human", "socratic", "6b_finetuning", "6b_verification", "175b_finetuning")


class Raw(bytes):
    """A text value written as these bytes (not valid UTF-8)."""


def value_faults(fmt: str) -> list[tuple[object, str]]:
    """(bad value for the text column, a fragment of the reason it is rejected with) that ``fmt`` can hold."""
    faults = [(Raw(b"caf\xe9 au lait"), "not valid UTF-8 (byte 0xe9"),
              ("half\x00written", "holds a NUL character"), ("  \r\n ", "empty "),
              ("x" * (MAX_TEXT_CHARS + 1), f"is {MAX_TEXT_CHARS + 1:,} characters, over the limit")]
    if fmt != "csv":  # CSV has no null
        faults.append((None, "is null, not a string"))
    if fmt in ("jsonl", "json"):  # mixed types and nesting: only JSON rows differ in shape
        faults += [(42, "is int, not a string"), ({"text": "nested"}, "is dict, not a string"),
                   (["a", "list"], "is list, not a string"), ("\ud83d alone", "unpaired surrogate U+D83D"),
                   (MISSING, "no column")]
    return faults


def _with(row: dict, column: str, value: object) -> dict:
    return {k: v for k, v in row.items() if k != column} if value is MISSING else {**row, column: value}


def _json_line(row: dict) -> bytes:
    raw = {k: v for k, v in row.items() if isinstance(v, Raw)}
    text = json.dumps({k: f"@@{k}@@" if k in raw else v for k, v in row.items()}).encode()
    for k, v in raw.items():
        text = text.replace(f'"@@{k}@@"'.encode(), b'"' + v + b'"')
    return text


def _text_value(value: object) -> str | None:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, Raw) else value


def _table(rows: list[dict]) -> pa.Table:
    """String columns whose bytes are written as given, invalid UTF-8 included (Arrow does not check)."""
    columns = {}
    for name in rows[0]:
        values = [r[name] for r in rows]
        data = [v if isinstance(v, Raw) else None if v is None else v.encode() for v in values]
        columns[name] = pa.array(data, type=pa.binary()).view(pa.string())
    return pa.table(columns)


def write_faulty(fmt: str, good: list[dict], column: str, path: Path, oversize: bool = True
                 ) -> tuple[Path, dict[str, str]]:
    """``good`` in format ``fmt`` with every fault it can carry in ``column`` and in its framing (with
    ``oversize``, also a JSONL line or CSV field over MAX_ROW_BYTES: 16 MiB to write, so not everywhere).

    Returns the file (or folder) and {where: reason fragment} for every bad row, ``where`` being the
    source's suffix after the file's URI (":7", or "/data-00000-of-00002.arrow:3")."""
    # The first row is good (a BOM must not cost it); the bad rows, copies of the rest with a fault, come
    # before those: a bad row never takes its key from a good one.
    bad = [(_with(good[1 + k % (len(good) - 1)], column, value), reason)
           for k, (value, reason) in enumerate(value_faults(fmt))]
    items = [(good[0], None), *bad, *[(row, None) for row in good[1:]]]
    expected: dict[str, str] = {}
    path = path.with_suffix("" if fmt == "datasets" else f".{fmt}")
    cut = _json_line(good[-1])[:25]  # a row cut off by a crash: no line end after it
    if fmt == "jsonl":
        lines = [(_json_line(row), reason) for row, reason in items]
        lines[3:3] = [(b"", None), (b"\x00" * 64, "malformed JSON: holds NUL bytes"),
                      (b'["an", "array"]', "a JSON line that is not an object"),
                      (b'{"question_id": "x", "oops": }', "malformed JSON: Expecting value")]
        if oversize:
            huge = b'{"pad": "' + b"y" * MAX_ROW_BYTES + b'"}'
            lines.insert(4, (huge, f"bytes, over the limit of {MAX_ROW_BYTES:,}"))
        lines.append((cut, "(the last line, with no line end: truncated?)"))
        path.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(line for line, _ in lines))
        expected = {f":{n}": reason for n, (_, reason) in enumerate(lines, start=1) if reason}
    elif fmt == "json":
        entries = [(_json_line(row), reason) for row, reason in items] + [(b"7", "an array item that is not an object")]
        path.write_bytes(b"\xef\xbb\xbf[\r\n  " + b",\r\n  ".join(e for e, _ in entries) + b",\r\n  " + cut)
        entries.append((cut, "malformed JSON array item: Unterminated string"))
        expected = {f":{n}": reason for n, (_, reason) in enumerate(entries, start=1) if reason}
    elif fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)  # CRLF line ends, as csv writes them
        writer.writerow(list(good[0]))
        records = [*items, ({**good[0], "extra": "field"}, "fields where the header has")]
        if oversize:
            records.append(({**good[0], column: "z" * (MAX_ROW_BYTES + 1)}, "field larger than field limit"))
        for row, _ in records:
            writer.writerow([_text_value(v) for v in row.values()])
        text = out.getvalue() + out.getvalue().splitlines()[1][:5]  # the first row again, cut in its first field
        path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8", "surrogateescape"))
        records.append(({}, "fields where the header has"))
        expected = {f":{n}": reason for n, (_, reason) in enumerate(records, start=1) if reason}
    elif fmt == "parquet":
        pq.write_table(_table([row for row, _ in items]), path)
        expected = {f":{n}": reason for n, (_, reason) in enumerate(items, start=1) if reason}
    else:
        import datasets

        datasets.Dataset(_table([row for row, _ in items])).save_to_disk(str(path), num_shards=2)
        first = (len(items) + 1) // 2  # save_to_disk's contiguous shards: the first holds the odd row
        for n, (_, reason) in enumerate(items):
            shard, row_no = (0, n + 1) if n < first else (1, n - first + 1)
            if reason:
                expected[f"/data-0000{shard}-of-00002.arrow:{row_no}"] = reason
    return path, expected


def assert_rejects(rejects: list, uri: str, expected: dict[str, str]) -> None:
    """Exactly the bad rows are rejected, each naming its file:row with the expected reason."""
    got = {r.source: r.reason for r in rejects}
    assert sorted(got) == sorted(f"{uri}{where}" for where in expected), got
    for where, fragment in expected.items():
        assert fragment in got[f"{uri}{where}"], (where, got[f"{uri}{where}"])


def candidate_rows(strategy: str) -> list[dict]:
    ids = {q["question_id"] for q in QUESTIONS}
    return [{"question_id": c["question_id"], "response": c["response"]} for c in load_candidates()
            if c["strategy"] == strategy and c["question_id"] in ids]


def upload(local: Path, name: str) -> str:
    """Copy a file or a folder to the test bucket; its s3:// URI."""
    fs, _ = pafs.FileSystem.from_uri(f"s3://{BUCKET}")
    files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else [local]
    for f in files:
        key = f"{BUCKET}/faults/{name}" + (f"/{f.relative_to(local)}" if local.is_dir() else "")
        with fs.open_output_stream(key) as out:
            out.write(f.read_bytes())
    return f"s3://{BUCKET}/faults/{name}"


# -- every reader, every format, local and on S3 -------------------------------------------------

def read_candidate_file(uri: str) -> tuple[list[dict], list[Reject]]:
    """A long candidate table's rows as select's read pass makes them (its column check, then
    ``select_read.candidate_row`` per record), here in one process: the usable rows and the rejects."""
    check_columns(uri, [["response", "strategy"], ["messages", "strategy"]])
    rows = [candidate_row(i, source, row, Columns(), None, 0) for i, (source, row) in enumerate(iter_records(uri))]
    return ([r for r in rows if not r["reject"]],
            [Reject(r["source"], r["reject"], r["reject_stage"]) for r in rows if r["reject"]])


@pytest.mark.parametrize("where", ["local", "s3"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_reader_keeps_every_good_row_and_rejects_each_bad_one(fmt, where, tmp_path, request):
    files = {
        "questions": write_faulty(fmt, QUESTIONS, "question", tmp_path / "questions", oversize=False),
        "candidates": write_faulty(fmt, [{**r, "strategy": "human"} for r in candidate_rows("human")], "response",
                                   tmp_path / "candidates"),
        "samples": write_faulty(fmt, [{"question": q["question"], "response": r["response"]}
                                      for q, r in zip(QUESTIONS, candidate_rows("human"), strict=True)],
                                "response", tmp_path / "samples", oversize=False),
    }
    uris = {name: str(path) for name, (path, _) in files.items()}
    if where == "s3":
        request.getfixturevalue("s3_env")
        uris = {name: upload(path, f"{fmt}-{name}{path.suffix}") for name, (path, _) in files.items()}

    questions, rejects = read_questions(uris["questions"], Columns(), need_gold=True)
    assert list(questions) == [q["question_id"] for q in QUESTIONS]
    assert [{k: v for k, v in q.items() if k != "source"} for q in questions.values()] == QUESTIONS
    assert_rejects(rejects, uris["questions"], files["questions"][1])

    rows, rejects = read_candidate_file(uris["candidates"])
    assert [(r["question_id"], r["strategy"], r["response"]) for r in rows] == [
        (r["question_id"], "human", r["response"]) for r in candidate_rows("human")]
    assert_rejects(rejects, uris["candidates"], files["candidates"][1])

    samples, rejects = read_samples(uris["samples"], Columns())
    assert [s["response"] for s in samples] == [r["response"] for r in candidate_rows("human")]
    assert_rejects(rejects, uris["samples"], files["samples"][1])


def test_chat_messages_rows_with_faults_are_rejected_with_the_turn_at_fault(tmp_path):
    def chat(*turns: tuple[str, object]) -> dict:
        return {"messages": [{"role": role, "content": content} for role, content in turns]}

    rows = [chat(("user", "2+2?"), ("assistant", "4")), chat(("user", "2+2?")),
            chat(("user", [{"type": "text", "text": "2+2?"}]), ("assistant", "4")),
            chat(("system", "be brief"), ("user", "2+2?"), ("assistant", "4\x00"))]
    (tmp_path / "chat.jsonl").write_text(jsonl(rows))
    samples, rejects = read_samples(str(tmp_path / "chat.jsonl"), Columns())
    # OpenAI-style content parts are text too, as everywhere sapray reads chat rows (read.chat_pair)
    assert [(s["question"], s["response"]) for s in samples] == [("2+2?", "4"), ("2+2?", "4")]
    assert [r.reason for r in rejects] == [
        "no assistant turn after the first user turn in 'messages'",
        "the last assistant turn of 'messages' holds a NUL character (binary data?)"]


# -- whole files that cannot be used: one clear error naming the file ---------------------------

def test_a_file_that_cannot_be_read_at_all_is_one_error_naming_it(tmp_path):
    broken = tmp_path / "candidates.parquet"
    broken.write_bytes(b"PAR1" + b"\x00" * 100)  # a Parquet file cut short by a crash
    with pytest.raises(InputError, match=r"candidates\.parquet: cannot be read: .*Parquet"):
        read_candidate_file(str(broken))
    arrow = tmp_path / "ds"
    arrow.mkdir()
    (arrow / "data-00000-of-00001.arrow").write_bytes(b"not arrow at all")
    with pytest.raises(InputError, match=r"ds: cannot be read"):
        read_questions(str(arrow), Columns(), need_gold=False)
    binary = tmp_path / "questions.jsonl"
    binary.write_bytes(bytes(range(256)) * 64)  # a binary file with a text name: no row is usable
    with pytest.raises(InputError, match=r"questions\.jsonl: no usable questions \(\d+ row\(s\) rejected; the first: "
                                         r".*questions\.jsonl:1: "):
        read_questions(str(binary), Columns(), need_gold=False)


def test_a_required_column_missing_from_every_row_is_an_error_but_from_some_rows_a_reject(tmp_path):
    path = tmp_path / "c.jsonl"
    rows = [{"question_id": "test-0000", "strategy": "human", "text": "wrong column name"}] * 3
    path.write_text(jsonl(rows))
    with pytest.raises(InputError, match=r"c\.jsonl: missing required column\(s\) \['response'\]"):
        read_candidate_file(str(path))
    # The first row lacks it, the next has it: a bad row, not a wrong column name.
    path.write_text(jsonl([rows[0], {**rows[0], "response": "fine"}]))
    good, rejects = read_candidate_file(str(path))
    assert len(good) == 1 and [r.reason for r in rejects] == ["no column 'response'"]


# -- the jobs ---------------------------------------------------------------------------------------

def _scores(table_path: Path) -> dict[tuple[str, str], dict]:
    keep = ("sap", "ppl", "ifd", "nll_sap", "nll_ppl", "nll_empty", "length", "exemplar_ids")
    return {(r["question_id"], r["strategy"]): {k: r[k] for k in keep} for r in pq.read_table(table_path).to_pylist()}


def select_config(tmp_path: Path, questions: str, candidates: dict[str, str], output: Path) -> dict:
    exemplars = tmp_path / "exemplars.jsonl"
    exemplars.write_text(jsonl(exemplar_rows()))
    return {"model": TINY_RANDOM, "engine": "hf",
            "data": {"questions": questions, "candidates_by_strategy": candidates},
            "sample": {"max_questions": 2, "round_size": 2, "seed": 3}, "exemplars": {"file": str(exemplars), "n": 3},
            "ray": {"actors": 1, "batch_size": 15}, "bootstrap": 50, "output": str(output)}


@pytest.mark.slow
def test_select_through_the_cli_scores_good_rows_exactly_as_from_clean_files(ray_local, tmp_path):
    """One strategy per format, every file faulty, run by `python -m sapray select` as a user would."""
    clean = {s: str(tmp_path / f"clean-{s}.jsonl") for s in STRATEGIES}
    for s, path in clean.items():
        Path(path).write_text(jsonl(candidate_rows(s)))
    (tmp_path / "q.jsonl").write_text(jsonl(QUESTIONS))
    cfg = load_config(select_config(tmp_path, str(tmp_path / "q.jsonl"), clean, tmp_path / "clean"))
    write_selection(cfg.output, run_select(cfg), cfg.model_dump())

    faulty, expected = {}, {}
    for s, fmt in zip(STRATEGIES, FORMATS, strict=True):
        path, bad = write_faulty(fmt, candidate_rows(s), "response", tmp_path / f"faulty-{s}")
        faulty[s], expected[str(path)] = str(path), bad
    questions, bad_questions = write_faulty("jsonl", QUESTIONS, "question", tmp_path / "faulty-questions")
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(select_config(tmp_path, str(questions), faulty, tmp_path / "faulty")))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "sapray", "select", "--config", str(config),
                           "--set", "ray.address=local"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=PATIENCE_S)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Traceback" not in done.stderr

    assert _scores(tmp_path / "faulty" / "scores.parquet") == _scores(tmp_path / "clean" / "scores.parquet")
    clean_counts = json.loads((tmp_path / "clean" / "selection.json").read_text())["counts"]
    counts = json.loads((tmp_path / "faulty" / "selection.json").read_text())["counts"]
    n_bad = sum(len(bad) for bad in expected.values())
    assert counts["candidate_rows_in"] == clean_counts["candidate_rows_in"] + n_bad
    assert counts["rejected"] == clean_counts["rejected"] + n_bad
    assert counts["scored"] == clean_counts["scored"] == 2 * len(STRATEGIES)
    assert counts["not_sampled"] == clean_counts["not_sampled"] == len(STRATEGIES)
    assert counts["question_rows_rejected"] == len(bad_questions)
    rejects = read_parts(tmp_path / "faulty" / "rejects")
    for path, bad in {**expected, str(questions): bad_questions}.items():
        got = {r["source"]: r["reason"] for r in rejects if r["source"].startswith(path)}
        assert sorted(got) == sorted(f"{path}{w}" for w in bad)
        assert all(fragment in got[f"{path}{w}"] for w, fragment in bad.items())
    assert f"rows: {counts['candidate_rows_in']} in = " in done.stdout
    # the console stays quiet: sapray's lines only, on one screen; Ray's and the workers' go to run.log
    console = done.stdout + done.stderr
    assert len(console.splitlines()) <= 40, console
    assert not re.search(r"logging_progress|core_worker|\(\w+ pid=\d+\)|WARNING|INFO", console), console
    log = (tmp_path / "faulty" / "run.log").read_text()
    assert "round 1: 2 questions" in log and f"log: {tmp_path / 'faulty' / 'run.log'}" in done.stderr


@pytest.mark.parametrize("name, content, message", [
    ("candidates.jsonl", bytes(range(256)) * 16, r"candidates\.jsonl: no usable candidate rows \(\d+ row"),
    ("candidates.parquet", b"PAR1\x00\x00", r"candidates\.parquet: cannot be read"),
])
@pytest.mark.slow
def test_the_cli_says_what_is_wrong_without_a_traceback_when_nothing_is_usable(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    (tmp_path / "q.jsonl").write_text(jsonl(QUESTIONS))
    raw = select_config(tmp_path, str(tmp_path / "q.jsonl"), {}, tmp_path / "out")
    raw["data"] = {"questions": str(tmp_path / "q.jsonl"), "candidates": str(tmp_path / name)}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, "-m", "sapray", "select", "--config", str(tmp_path / "job.yaml")],
                          cwd=REPO, capture_output=True, text=True, timeout=PATIENCE_S)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    error = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and re.search(message, error[0]), done.stderr[-3000:]


TEACHER_ROWS = [{**r, "strategy": s} for s in ("human", "socratic") for r in candidate_rows(s)]


def file_teacher_set(tmp_path: Path, questions: Path, candidates: Path, name: str) -> tuple[dict, list[dict]]:
    """``sapray generate`` with the file teacher ``socratic``: (metadata, training rows without the teacher's
    file name)."""
    raw = select_config(tmp_path, str(questions), {}, tmp_path / f"{name}-select")
    raw["data"] = {"questions": str(questions), "candidates": str(candidates)}
    raw["generate"] = {"output": str(tmp_path / name)}
    metadata = run_generate(load_config(raw), "socratic")
    rows = read_parts(tmp_path / name / "train")
    assert all(r.pop("teacher") == f"file:{candidates}[socratic]" for r in rows)
    return metadata, rows


@pytest.fixture(scope="module")
def clean_training_set(ray_local, tmp_path_factory) -> list[dict]:
    """The training set from clean files, which every format's faulty files must give (made once)."""
    tmp_path = tmp_path_factory.mktemp("clean")
    questions, candidates = tmp_path / "q.jsonl", tmp_path / "c.jsonl"
    questions.write_text(jsonl(QUESTIONS))
    candidates.write_text(jsonl(TEACHER_ROWS))
    return file_teacher_set(tmp_path, questions, candidates, "clean")[1]


# datasets: over 20 s in both full runs (22.6 and 50.5 s), the other formats not in the quieter one
@pytest.mark.parametrize("fmt", [pytest.param(f, marks=pytest.mark.slow) if f == "datasets" else f for f in FORMATS])
def test_generate_with_a_file_teacher_writes_the_same_set_from_faulty_files(fmt, clean_training_set, tmp_path):
    questions, bad_questions = write_faulty(fmt, QUESTIONS, "question", tmp_path / "faulty-q")
    candidates, bad_candidates = write_faulty(fmt, TEACHER_ROWS, "response", tmp_path / "faulty-c")
    metadata, train = file_teacher_set(tmp_path, questions, candidates, "faulty")
    assert train == clean_training_set and len(clean_training_set) == len(QUESTIONS)
    assert metadata["question_rows_rejected"] == len(bad_questions)
    assert metadata["rows"] + metadata["rejected"] - len(bad_questions) == len(QUESTIONS)
    rejects = read_parts(tmp_path / "faulty" / "rejects")
    assert sorted(r["source"] for r in rejects) == sorted(f"{questions}{w}" for w in bad_questions)
    assert bad_candidates  # the teacher file's bad rows cost no question its response


def test_a_question_whose_only_teacher_row_is_bad_is_rejected_with_that_rows_reason(ray_local, tmp_path):
    (tmp_path / "q.jsonl").write_text(jsonl(QUESTIONS))
    rows = [{**r, "strategy": "human"} for r in candidate_rows("human")]
    rows[1]["response"] = {"text": rows[1]["response"]}
    (tmp_path / "c.jsonl").write_text(jsonl(rows))
    raw = select_config(tmp_path, str(tmp_path / "q.jsonl"), {}, tmp_path / "select")
    raw["data"] = {"questions": str(tmp_path / "q.jsonl"), "candidates": str(tmp_path / "c.jsonl")}
    raw["generate"] = {"output": str(tmp_path / "train")}
    metadata = run_generate(load_config(raw), "human")
    assert metadata["rows"] == 2 and metadata["rejected"] == 1
    (reject,) = read_parts(tmp_path / "train" / "rejects")
    assert reject["question_id"] == rows[1]["question_id"]
    assert reject["reason"].endswith(f"its row {tmp_path / 'c.jsonl'}:2: column 'response' is dict, not a string")


@pytest.mark.slow
def test_filter_scores_good_samples_exactly_as_from_a_clean_file(ray_local, tmp_path):
    """The faulty file (17 MiB with its over-long line) is read in 4 MiB shards by several workers."""
    good = [{"question": q["question"], "response": r["response"]}
            for q, r in zip(QUESTIONS, candidate_rows("socratic"), strict=True)]
    (tmp_path / "clean.jsonl").write_text(jsonl(good))
    faulty, bad = write_faulty("jsonl", good, "response", tmp_path / "faulty")
    results, scores = {}, {}
    for kind, path in (("clean", tmp_path / "clean.jsonl"), ("faulty", faulty)):
        cfg = load_filter_config({"method": "ifd", "model": TINY_RANDOM, "input": str(path),
                                  "output": str(tmp_path / f"out-{kind}"),
                                  "ray": {"actors": 1, "batch_size": 6, "shard_mb": 4}})
        results[kind] = run_filter(cfg)
        scores[kind] = [r for part in sorted((tmp_path / f"out-{kind}" / "scores").iterdir())
                        for r in pq.read_table(part).to_pylist()]
    keep = ("question", "response", "nll_given_question", "nll_alone", "ifd", "kept", "reason")
    assert [{k: r[k] for k in keep} for r in scores["faulty"]] == [{k: r[k] for k in keep} for r in scores["clean"]]
    counts = results["faulty"].summary["counts"]
    assert counts["rows_in"] == len(good) + len(bad) and counts["rejected"] == len(bad)
    assert counts["kept"] + counts["dropped"] == len(good)
    rejects = [Reject(**json.loads(line)) for part in sorted((tmp_path / "out-faulty" / "rejects").iterdir())
               for line in part.read_text().splitlines()]
    assert_rejects(rejects, str(faulty), bad)
