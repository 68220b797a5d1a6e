"""Input files cut into shards that workers read on their own, with the same rows and faults as ``read``.

A shard is a piece of one file that a worker can read without the others: a byte range of a JSON
lines file (a line belongs to the shard its first byte falls in, as Hadoop's line splits do), a
group of row groups of a Parquet file, one Arrow file of a ``datasets`` folder, or a whole CSV or
JSON-array file (a quoted newline or an array cannot be split without parsing what comes before).

Rows keep the numbers a single reader would give them: ``source`` is file:line (file:row for the
other formats) and ``index`` counts records across all files in order. To know them before reading,
a first pass counts each shard's lines and records (for JSON lines without parsing JSON); the
driver adds the counts up, a number per shard.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sapray.dataplane.read import (
    _BOM,
    _CHUNK,
    InputError,
    _arrow_rows,
    _csv_records,
    _json_array,
    _require_columns,
    dataset_parts,
    is_record,
    iter_records,
    json_lines,
    split_lines,
)
from sapray.storage import child, filesystem

# JSON lines files are cut into byte ranges of this size; Parquet files into row groups of about it.
SHARD_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Shard:
    """``kind``: jsonl (lines starting in bytes [start, end)), parquet (row groups [start, end)),
    arrow, csv or json_array (the whole file)."""

    uri: str
    kind: str
    start: int = 0
    end: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _looks_like_array(fs: pafs.FileSystem, path: str) -> bool:
    with fs.open_input_stream(path) as f:
        return f.read(_CHUNK).removeprefix(_BOM).lstrip().startswith(b"[")


def _file_shards(fs: pafs.FileSystem, path: str, uri: str, size: int, shard_bytes: int) -> list[Shard]:
    if path.endswith(".parquet"):
        with fs.open_input_file(path) as f:
            meta = pq.ParquetFile(f).metadata
        shards, first, acc = [], 0, 0
        for g in range(meta.num_row_groups):
            acc += meta.row_group(g).total_byte_size
            if acc >= shard_bytes or g == meta.num_row_groups - 1:
                shards.append(Shard(uri, "parquet", first, g + 1))
                first, acc = g + 1, 0
        return shards
    if path.endswith(".csv"):
        return [Shard(uri, "csv")]
    if path.endswith((".jsonl", ".json")):
        if path.endswith(".json") and _looks_like_array(fs, path):
            return [Shard(uri, "json_array")]
        starts = range(0, max(size, 1), shard_bytes)
        return [Shard(uri, "jsonl", start, min(start + shard_bytes, size)) for start in starts]
    raise InputError(f"{uri}: unknown format (use .jsonl, .json, .parquet, .csv or a datasets directory)")


def plan_shards(uri: str, shard_bytes: int = SHARD_BYTES) -> list[Shard]:
    """The shards of one input (a file or a ``datasets`` folder), in reading order; InputError when it
    cannot be read at all."""
    try:
        fs, path = filesystem(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise InputError(f"{uri}: no such file")
        if info.type == pafs.FileType.Directory:
            return [Shard(child(uri, p.base_name), "arrow") for p in dataset_parts(fs, path, uri)]
        return _file_shards(fs, path, uri, info.size, shard_bytes)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{uri}: cannot be read: {exc}") from None


def check_columns(uri: str, choices: list[list[str]], rows: int = 1000) -> None:
    """InputError when none of the column sets in ``choices`` is among the first ``rows`` records' columns:
    a wrong column name fails at once instead of rejecting every row."""
    present: set[str] = set()
    seen = 0
    for _, row in iter_records(uri):
        if isinstance(row, dict):
            present.update(row)
            seen += 1
            if seen == rows:
                break
    if seen:
        _require_columns(uri, present, choices)


def _shard_lines(f: pa.NativeFile, start: int, end: int) -> Iterator[tuple[int, bytes | int, bool]]:
    """The lines whose first byte lies in [start, end)."""
    step = min(_CHUNK, max(2**16, end - start))  # a small shard reads little past its end
    aligned = 0
    if start:
        f.seek(start - 1)  # a line starts at ``start`` only if the byte before it ends a line
        aligned = start - 1
        while chunk := f.read(step):
            newline = chunk.find(b"\n")
            if newline != -1:
                aligned += newline + 1
                break
            aligned += len(chunk)
        else:
            return
        f.seek(aligned)
    for line in split_lines(lambda _: f.read(step), base=aligned):
        if line[0] >= end:
            return
        yield line


def _records(shard: Shard, first_line: int) -> Iterator[tuple[str, dict | str]]:
    fs, path = filesystem(shard.uri)
    if shard.kind == "jsonl":
        with fs.open_input_file(path) as f:
            yield from json_lines(_shard_lines(f, shard.start, shard.end), shard.uri, first_line)
    elif shard.kind == "parquet":
        with fs.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            before = sum(parquet.metadata.row_group(g).num_rows for g in range(shard.start))
            batches = parquet.iter_batches(batch_size=1024, row_groups=range(shard.start, shard.end))
            yield from _arrow_rows(batches, shard.uri, before + 1)
    elif shard.kind == "arrow":
        with fs.open_input_stream(path) as stream:
            yield from _arrow_rows(pa.ipc.open_stream(stream), shard.uri)
    elif shard.kind == "csv":
        with fs.open_input_stream(path, buffer_size=_CHUNK) as f:
            yield from _csv_records(f, shard.uri)
    elif shard.kind == "json_array":
        with fs.open_input_stream(path) as f:
            yield from _json_array(f.read().decode("utf-8", "surrogateescape"), shard.uri)
    else:
        raise ValueError(f"unknown shard kind {shard.kind!r}")


def count_shard(shard: Shard) -> tuple[int, int]:
    """(lines, records) of a shard: lines number the next shard's first line (JSON lines only)."""
    try:
        if shard.kind == "jsonl":
            fs, path = filesystem(shard.uri)
            with fs.open_input_file(path) as f:
                lines = records = 0
                for _, line, _ in _shard_lines(f, shard.start, shard.end):
                    lines += 1
                    records += is_record(line)
                return lines, records
        if shard.kind == "parquet":
            fs, path = filesystem(shard.uri)
            with fs.open_input_file(path) as f:
                meta = pq.ParquetFile(f).metadata
            rows = sum(meta.row_group(g).num_rows for g in range(shard.start, shard.end))
            return rows, rows
        records = sum(1 for _ in _records(shard, 1))
        return records, records
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{shard.uri}: cannot be read: {exc}") from None


def read_shard(shard: Shard, first_line: int, first_index: int) -> Iterator[tuple[int, str, dict | str]]:
    """(index, source, row or the reason it is unusable) of every record of the shard."""
    try:
        for index, (source, row) in enumerate(_records(shard, first_line), first_index):
            yield index, source, row
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{shard.uri}: cannot be read: {exc}") from None


def offsets(shards: list[Shard], counts: list[tuple[int, int]]) -> list[dict]:
    """Each shard with the number of its first line (within its file) and of its first record (overall)."""
    out, index, line, previous = [], 0, 1, None
    for shard, (lines, records) in zip(shards, counts, strict=True):
        if shard.uri != previous:
            line, previous = 1, shard.uri
        out.append({"shard": json.dumps(shard.to_dict()), "first_line": line, "first_index": index})
        line += lines
        index += records
    return out
