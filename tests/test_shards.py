"""Shards read apart give exactly the rows, sources and faults of one reader over the whole file."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import load_candidates, load_questions
from test_faults import FORMATS, candidate_rows, write_faulty

from sapray.dataplane.read import InputError, iter_records
from sapray.dataplane.shards import check_columns, count_shard, offsets, plan_shards, read_shard


def sharded(uris: list[str], pieces: int) -> list[tuple[int, str, dict | str]]:
    """Read in about ``pieces`` shards per file (JSON lines) or row groups (Parquet), in any case."""
    shards = [s for uri in uris for s in plan_shards(uri, max(1, size(uri) // pieces))]
    starts = offsets(shards, [count_shard(s) for s in shards])
    return [row for shard, start in zip(shards, starts, strict=True)
            for row in read_shard(shard, start["first_line"], start["first_index"])]


def size(uri: str) -> int:
    path = Path(uri)
    return sum(p.stat().st_size for p in path.rglob("*")) if path.is_dir() else path.stat().st_size


def whole(uris: list[str]) -> list[tuple[int, str, dict | str]]:
    rows = [(source, row) for uri in uris for source, row in iter_records(uri)]
    return [(index, source, row) for index, (source, row) in enumerate(rows)]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("pieces", [1, 3, 251])
def test_shards_read_what_one_reader_reads(fmt, pieces, tmp_path):
    samples = [{"question": q["question"], "response": r["response"]}
               for q, r in zip(load_questions()[:3], candidate_rows("human"), strict=True)]
    first, _ = write_faulty(fmt, samples, "response", tmp_path / "a", oversize=False)
    second, _ = write_faulty(fmt, samples[::-1], "question", tmp_path / "b", oversize=False)
    uris = [str(first), str(second)]
    assert sharded(uris, pieces) == whole(uris)


def test_an_over_long_line_spans_many_shards(tmp_path):
    rows = [{"question": q["question"], "response": r["response"]}
            for q, r in zip(load_questions()[:3], candidate_rows("human"), strict=True)]
    path, _ = write_faulty("jsonl", rows, "response", tmp_path / "big")  # holds a line over MAX_ROW_BYTES
    assert sharded([str(path)], 40) == whole([str(path)])


def test_parquet_row_groups_are_shards(tmp_path):
    import pyarrow as pa

    rows = [{"question_id": c["question_id"], "response": c["response"]} for c in load_candidates()[:50]]
    path = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=7)
    shards = plan_shards(str(path), shard_bytes=1)
    assert len(shards) == 8
    rows = sharded([str(path)], 10**9)
    assert rows == whole([str(path)])
    assert rows[-1][1] == f"{path}:50"


def test_unreadable_inputs_fail_with_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        plan_shards(str(tmp_path / "absent.jsonl"))
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(InputError, match="unknown format"):
        plan_shards(str(tmp_path / "x.txt"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match="without .arrow files"):
        plan_shards(str(tmp_path / "folder"))
    (tmp_path / "rows.jsonl").write_text('{"q": "a", "r": "b"}\n')
    with pytest.raises(InputError, match=r"missing required column\(s\) \['question', 'response'\]"):
        check_columns(str(tmp_path / "rows.jsonl"), [["question", "response"]])
