"""The journal of a long job: each finished unit of work, written whole before the job moves on.

A job killed at any point (``kill -9`` included) and run again with the same command reads its journal,
replays what was finished without computing it again, and continues from its last finished round, batch or
shard, with the same results as a run that was never stopped:

    <journal>/fingerprint.json   what determines the contents: the config that matters, the model's commit,
                                 the inputs' sizes and times, sapray's version
    <journal>/<unit>.json        one finished unit each (mined exemplars, a teacher's batch, a scored round)

A whole-dataset pass (a filter's scoring, self-consistency's sampling) journals rows, not batches
(``RowJournal``): each row's computed columns under its input ``order``, in entries of about
``ray.journal_rows`` (1,000) rows, merged into one file per pass when the pass ends. The rows go to one writer
actor (``RowJournalWriter``) as the engine actors finish them, and the writer cuts the entries: an engine actor
buffering its own rows would lose up to an entry per actor at a ``kill -9`` (8 actors, 1,000 rows: 8,000 rows a
kill, 4% of 1M after five), while the one writer loses at most the entry it is filling and the batches in
flight (about 1,000 + actors x batch_size rows a kill: under 1% of 1M after five). A rerun loads the pass's
entries, hands the journaled rows' columns to the engine actors (which score only the rest) and their orders to
the tokenizing stage (which skips rows journaled in every pass), so it never tokenizes or scores a journaled
row again; the rows keep their blocks, so the outputs are the bytes of a run never stopped (the engines score a
row alike whatever its batch-mates).

Each entry is written to a temporary name and moved into place (``read.write_text``), so an entry is there
whole or not at all. A journal whose fingerprint differs from the job's is refused with the keys that
changed, unless the job starts over (``restart``: the journal is emptied first). An entry that is there but
cannot be read or parsed (a partial copy of an output folder, a disk error) is computed again, with a console
line naming it; a fingerprint that cannot be read is an error naming it (never overwritten: it is what tells
whose journal this is).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sapray.console import console
from sapray.core.errors import ConfigError
from sapray.storage import Unreadable, child, filesystem, read_json, write_text, write_whole

FINGERPRINT = "fingerprint.json"


class JournalMismatch(ConfigError):
    """The output's journal was written by a job that differs in what determines its contents."""


class JournalUnreadable(ConfigError):
    """A journal file is there but cannot be read or parsed."""


def sapray_version() -> str:
    try:
        return metadata.version("sapray")
    except metadata.PackageNotFoundError:  # a source tree on the path, not installed
        return "unknown"


def input_identity(uri: str) -> dict | None:
    """What tells one version of an input from another without reading it: its size and modification time
    (each file's, for a folder); None for an input that is not there."""
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return None
    if info.type == pafs.FileType.Directory:
        files = sorted(fs.get_file_info(pafs.FileSelector(path, recursive=True)), key=lambda f: f.path)
        return {f.path[len(path):]: [f.size, f.mtime_ns] for f in files if f.type == pafs.FileType.File}
    return {"size": info.size, "mtime_ns": info.mtime_ns}


def job_fingerprint(config: dict[str, Any], commits: dict[str, str | None], inputs: Iterable[str | None],
                    **extra: Any) -> dict:
    """What determines a job's journal: ``config`` (the keys that decide what it computes), ``extra`` (the Ray
    settings that decide its batches: batch size, shard size), the models' ``commits``, the identities of its
    ``inputs`` (those given) and sapray's version."""
    return {**config, **extra, "commits": commits, "sapray": sapray_version(),
            "inputs": {uri: input_identity(uri) for uri in inputs if uri}}


def changes(old: Any, new: Any, where: str = "") -> list[str]:
    """The dotted keys whose values differ, each as ``key: old -> new``."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [c for k in sorted(set(old) | set(new), key=str)
                for c in changes(old.get(k), new.get(k), f"{where}.{k}" if where else str(k))]
    if old == new:
        return []
    shown = [json.dumps(v, sort_keys=True)[:60] for v in (old, new)]
    return [f"{where or 'the journal'}: {shown[0]} -> {shown[1]}"]


def _read_folder(folder: str, fingerprint: dict, restart: bool) -> tuple[Any, dict[str, Any]]:
    """(the fingerprint a journal folder holds or None, its entries by name: none when that fingerprint is not
    ``fingerprint``), emptied first with ``restart``. An entry that cannot be read or parsed is left out
    (computed again), with a console line; a fingerprint that cannot be read is an error naming it (never
    overwritten: it is what tells whose journal this is)."""
    fs, path = filesystem(folder)
    if restart and fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir_contents(path)
    try:
        earlier = read_json(child(folder, FINGERPRINT))
    except Unreadable as exc:
        raise JournalUnreadable(f"{exc}: the journal's fingerprint cannot be read; run with --restart to start "
                                "over, or write to another output") from None
    if earlier not in (None, fingerprint):
        return earlier, {}
    names = sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
                   if info.base_name.endswith(".json") and info.base_name != FINGERPRINT)
    entries = {}
    for name in names:
        try:
            value = read_json(child(folder, name))
        except Unreadable as exc:
            console.say(f"journal: {exc}: computing it again")
            continue
        if value is not None:
            entries[name.removesuffix(".json")] = value
    return earlier, entries


class Journal:
    """The entries of one job's journal folder (a local path or an object-store URI), read once when it opens
    (a journal holds rounds, batches of answers, exemplars: small)."""

    def __init__(self, folder: str, fingerprint: dict, restart: bool = False) -> None:
        self.folder = folder
        fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))  # as it reads back
        earlier, self.values = _read_folder(folder, fingerprint, restart)
        if earlier is None:
            write_text(child(folder, FINGERPRINT), json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")
        elif earlier != fingerprint:
            changed = "; ".join(changes(earlier, fingerprint)[:8])
            raise JournalMismatch(f"{folder} holds the journal of another run ({changed}): run with --restart to "
                                  "start over, or write to another output")

    @property
    def entries(self) -> set[str]:
        return set(self.values)

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def get(self, name: str) -> Any:
        """An entry's value, or None when the journal has no such entry (or it could not be read)."""
        return self.values.get(name)

    def put(self, name: str, value: Any) -> None:
        text = json.dumps(value, ensure_ascii=False, sort_keys=True)
        write_text(child(self.folder, f"{name}.json"), text)
        self.values[name] = json.loads(text)  # as a rerun reads it back


def batch_log(journal: Journal, scope: str) -> Callable[..., Any]:
    """``log(rows)``: the journaled outputs of that batch of rows (None when not journaled); ``log(rows,
    outputs)`` journals them (``sapray.dataplane.teachers.BatchLog``). A batch is named by its rows' ids
    (``row_id``, ``strategy``), so a batch cut otherwise in another run is asked again, never mistaken."""
    def log(rows: list[dict], outputs: list[dict] | None = None) -> Any:
        name = f"{scope}-{digest(repr([(r.get('row_id'), r.get('strategy')) for r in rows]))}"
        if outputs is None:
            return journal.get(name)
        journal.put(name, outputs)
        return None
    return log


def digest(text: str) -> str:
    """A short stable name for a long key (a teacher's model and engine arguments)."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class RowJournal:
    """The rows one pass finished: ``<folder>/<name>-*.parquet`` entries (each an ``order`` column and the
    columns computed for those rows) while the pass runs, ``<folder>/<name>.parquet`` once it has ended."""

    def __init__(self, folder: str, name: str) -> None:
        self.folder, self.name = folder, name

    def _files(self) -> list[pafs.FileInfo]:
        fs, path = filesystem(self.folder)
        if fs.get_file_info(path).type != pafs.FileType.Directory:
            return []
        return sorted((info for info in fs.get_file_info(pafs.FileSelector(path))
                       if info.base_name.endswith(".parquet")
                       and (info.base_name == f"{self.name}.parquet" or info.base_name.startswith(f"{self.name}-"))),
                      key=lambda info: info.base_name)

    def load(self) -> pa.Table | None:
        """Every journaled row once, by ``order``; None when there is none. An entry that cannot be read is left
        out (its rows are computed again), with a console line."""
        fs, _ = filesystem(self.folder)
        tables = []
        for info in self._files():
            try:
                with fs.open_input_file(info.path) as f:
                    tables.append(pq.read_table(f))
            except (OSError, pa.ArrowInvalid) as exc:
                console.say(f"journal: {child(self.folder, info.base_name)}: unreadable ({type(exc).__name__}): "
                            "computing its rows again")
        if not tables:
            return None
        table = pa.concat_tables(tables, promote_options="permissive").sort_by("order")
        orders = table.column("order").to_numpy()
        first = np.ones(len(orders), dtype=bool)
        first[1:] = orders[1:] != orders[:-1]  # a row a retried task journaled twice: the same values
        return table.filter(pa.array(first))

    def write(self, rows: pa.Table) -> None:
        """One entry, there whole or not at all, under a name no other run or writer uses."""
        sink = pa.BufferOutputStream()
        pq.write_table(rows, sink)
        write_whole(child(self.folder, f"{self.name}-{uuid.uuid4().hex[:16]}.parquet"), sink.getvalue().to_pybytes())

    def merge(self) -> None:
        """The pass's entries as one file (written whole before the entries go)."""
        pieces = [info for info in self._files() if info.base_name != f"{self.name}.parquet"]
        if not pieces:
            return
        table = self.load()
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        write_whole(child(self.folder, f"{self.name}.parquet"), sink.getvalue().to_pybytes())
        fs, _ = filesystem(self.folder)
        for info in pieces:
            fs.delete_file(info.path)


class RowJournalWriter:
    """Ray actor: the one writer of a pass's ``RowJournal``; rows come in from every engine actor, and go out in
    entries of exactly ``rows`` rows (the last one of a pass: the rest)."""

    def __init__(self, folder: str, name: str, rows: int) -> None:
        self.journal, self.rows = RowJournal(folder, name), rows
        self.buffer: list[pa.Table] = []
        self.buffered = 0

    def add(self, rows: pa.Table) -> None:
        self.buffer.append(rows)
        self.buffered += rows.num_rows
        while self.buffered >= self.rows:
            whole = pa.concat_tables(self.buffer)
            self.journal.write(whole.slice(0, self.rows))
            self.buffer, self.buffered = [whole.slice(self.rows)], whole.num_rows - self.rows

    def close(self) -> None:
        """The rest written, then every entry merged into one file."""
        if self.buffered:
            self.journal.write(pa.concat_tables(self.buffer))
            self.buffer, self.buffered = [], 0
        self.journal.merge()


@contextlib.contextmanager
def row_writer(journal: RowJournal | None, rows: int) -> Iterator[Any]:
    """The pass's ``RowJournalWriter``, a Ray actor (None without a journal); once the pass has ended, its last
    rows written and its entries merged into one file. (A pass that fails leaves its entries for the rerun.)"""
    if journal is None:
        yield None
        return
    import ray

    writer = ray.remote(num_cpus=0)(RowJournalWriter).remote(journal.folder, journal.name, rows)
    yield writer
    ray.get(writer.close.remote())
    ray.kill(writer)


class Journaled:
    """The journaled rows of a pass, looked up by ``order`` (an engine actor's copy): from a ``RowJournal``
    table, its object ref (a large table goes to the actors once) or None (nothing journaled)."""

    def __init__(self, table: pa.Table | Any) -> None:
        if table is not None and not isinstance(table, pa.Table):
            import ray

            table = ray.get(table)
        self.table = table
        self.orders = table.column("order").to_numpy() if table is not None else np.zeros(0, dtype=np.int64)

    def find(self, orders: np.ndarray) -> tuple[np.ndarray, pa.Table | None]:
        """(which of ``orders`` are journaled, their journaled rows in that order)."""
        if not len(self.orders):
            return np.zeros(len(orders), dtype=bool), None
        at = np.minimum(np.searchsorted(self.orders, orders), len(self.orders) - 1)
        found = self.orders[at] == orders
        return found, self.table.take(pa.array(at[found]))

    @staticmethod
    def merged(found: np.ndarray, known: pa.Table | None, done: pa.Table | None) -> pa.Table:
        """A batch's columns back in its order: the journaled rows (``known``, as ``find`` gave them) where
        ``found``, the newly computed ``done`` (the rest, in order) elsewhere, in ``done``'s types."""
        if known is None:
            return done
        known = known.select(done.column_names).cast(done.schema) if done is not None else known.drop(["order"])
        at = np.empty(len(found), dtype=np.int64)  # journaled rows first in the concatenation, then the new
        at[found] = np.arange(known.num_rows)
        at[~found] = known.num_rows + np.arange(len(found) - known.num_rows)
        return pa.concat_tables([known, done] if done is not None else [known]).take(pa.array(at))
