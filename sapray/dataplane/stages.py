"""Ray Data stages of the whole-dataset jobs: every row is read, encoded, scored, decided and written
in the cluster; the driver receives counts, moments and histograms.

    read_dataset   shards (byte ranges, row groups, files) -> rows, parsed and validated in workers
    EncodeRequests CPU workers: each row's requests, rendered and tokenized (token ids out)
    ScoreSums      engine actors: per request the sum of the continuation's log-probs, of its clipped ranks, and
                   its length
    moments        counts, means and variances per column, computed where the blocks are
    select         exact order statistics (``order_stats``): the keys at given ranks, in passes over the blocks
    write_*        Parquet and JSON lines part files, written by the workers (local paths or s3://)

Rows carry ``order`` (their place in the input, across files) and ``reject`` (why the row is out, "" if
it is not), so a rejected row travels to the rejects file instead of being dropped on the way.
"""

from __future__ import annotations

import json
import math
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sapray.core.order_stats import Moments, Selected, add_counts, digit_counts, select_keys
from sapray.dataplane.read import InputError
from sapray.dataplane.shards import Shard, count_shard, offsets, plan_shards, read_shard
from sapray.engines.base import EngineSpec
from sapray.storage import child, filesystem

# (index, source, row or the reason it is unusable) -> the output row, with ``reject`` set when it is out
RowFn = Callable[[int, str, dict | str], dict]


def input_error(exc: BaseException) -> InputError | None:
    """The InputError a worker raised, from the exception Ray wrapped it in."""
    while exc is not None:
        if isinstance(exc, InputError):
            return InputError(str(exc).splitlines()[-1].removeprefix(f"{InputError.__module__}.InputError: "))
        exc = exc.__cause__ or exc.__context__
    return None


def _count(row: dict) -> dict:
    lines, records = count_shard(Shard(**json.loads(row["shard"])))
    return {"position": row["position"], "lines": lines, "records": records}


def _read_shards(batch: dict[str, np.ndarray], to_row: RowFn, schema: pa.Schema) -> pa.Table:
    rows = [to_row(index, source, row)
            for shard, first_line, first_index in zip(batch["shard"], batch["first_line"], batch["first_index"],
                                                      strict=True)
            for index, source, row in read_shard(Shard(**json.loads(shard)), int(first_line), int(first_index))]
    return pa.Table.from_pylist(rows, schema=schema)


def read_dataset(uris: Iterable[str], to_row: RowFn, schema: pa.Schema, shard_bytes: int):
    """(the rows of every input as a Ray Dataset, in input order; how many records there are).

    Files are listed and sized in the driver (a missing or unknown file fails here, naming it); shards
    are counted, then read, by workers."""
    import ray

    shards = [s for uri in uris for s in plan_shards(uri, shard_bytes)]
    items = [{"position": i, "shard": json.dumps(s.to_dict())} for i, s in enumerate(shards)]
    counted = sorted(ray.data.from_items(items, override_num_blocks=len(items)).map(_count).take_all(),
                     key=lambda r: r["position"])
    starts = offsets(shards, [(c["lines"], c["records"]) for c in counted])
    ds = ray.data.from_items(starts, override_num_blocks=len(starts)).map_batches(
        _read_shards, fn_kwargs={"to_row": to_row, "schema": schema}, batch_size=1)
    return ds, sum(c["records"] for c in counted)


# the rejects every job writes: one row per row left out
REJECT_SCHEMA = pa.schema([(name, pa.string()) for name in ("source", "reason", "stage", "question_id", "strategy")])


def union_all(parts: list):
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def usable_rows(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.equal(batch.column("reject"), ""))


def rejected_rows(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.not_equal(batch.column("reject"), ""))


# Rows per block once a whole dataset is scored. What follows (score columns, the keep cut's order-statistic passes,
# the decisions, the writers) makes a dozen passes over every block, a task per block each, and the driver's memory
# grows with the tasks it launches: at 1M samples, blocks of 1,500 rows (the reader's) raised its peak by 71 MB over
# those passes, blocks of this size by 35, and the passes took 34 s instead of 106
# (benchmarks/bench_summary_blocks.py; docs/scaling.md).
SUMMARY_BLOCK_ROWS = 16_384


def split_rejected(ds) -> tuple[Any, Any]:
    """(usable rows, rejected rows), each materialized: a pipeline that starts from them has no CPU task
    ahead of its actor pools (with one engine actor per CPU, the CPU default, such a task would never
    get a CPU), and a usable row's batch-mates are the same as in a clean input."""
    ds = ds.materialize()
    return (ds.map_batches(usable_rows, batch_format="pyarrow").materialize(),
            ds.map_batches(rejected_rows, batch_format="pyarrow").materialize())


# -- hash joins: rows keyed alike land in the same bucket, and a bucket is joined in one worker ------

JOIN_BUCKET_ROWS = 250_000  # rows per hash bucket: one bucket is joined in one worker's memory


def buckets_for(rows: int) -> int:
    return max(1, math.ceil(rows / JOIN_BUCKET_ROWS))


def coalesced(ds, blocks: int):
    """``ds`` in ``blocks`` contiguous blocks, in order, ahead of a sort or a groupby (one per hash bucket:
    ``buckets_for`` its rows). Ray's sort-based shuffle cuts each of its M input blocks into M pieces, and the
    driver holds a reference and metadata for each of the M x M: select's read pass at 100k questions joined
    226 blocks of 1 MiB, +450 MB in the driver and half the pass's time (1M questions: tens of GB)."""
    return ds.repartition(blocks, shuffle=False)


def in_order(ds, keys: str | list[str] = "order"):
    """``ds`` (materialized: its count costs nothing) sorted by ``keys``, ``coalesced`` first: the rejects of a
    read are few rows in as many blocks as the input had."""
    return coalesced(ds, buckets_for(ds.count())).sort(keys)


def bucket_of(keys: Sequence[str | None], buckets: int) -> np.ndarray:
    """A stable bucket per key (crc32, the same in every process, unlike Python's salted ``hash``)."""
    return np.array([zlib.crc32((k or "").encode()) % buckets for k in keys], dtype=np.int64)


def by_id(batch: pa.Table) -> list[str | None]:
    return batch.column("question_id").to_pylist()


def by_text(batch: pa.Table) -> list[str]:
    return [(q or "").strip() for q in batch.column("question").to_pylist()]  # as read.text_index matches texts


def cpu_pool() -> dict[str, Any]:
    """``map_batches`` arguments of a CPU stage that runs beside engine actors (tokenizing, rendering):
    it takes no CPU of its own from Ray, as on a CPU-only cluster the engine actors hold every CPU, and
    runs up to one actor per two CPUs of the cluster, so it keeps up with many engine actors."""
    import ray

    return {"compute": ray.data.ActorPoolStrategy(min_size=1, max_size=cpu_workers()), "num_cpus": 0}


def cpu_workers() -> int:
    """How many workers a CPU stage beside engine actors runs: one per two CPUs of the cluster."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)) // 2)


class EncodeRequests:
    """CPU stage: each row's scoring requests, tokenized as ``scoring.encode`` does for the engine.

    ``build(row)`` gives the row's (context, continuation) pairs, always as many; a request the rules
    refuse (over-length, no tokens) makes the row a reject with the reason. Rows whose ``order`` is in ``skip``
    (a sorted array, or its object ref: rows the journal holds for every pass) are not tokenized."""

    def __init__(self, model: str, revision: str | None, engine: str, engine_args: dict[str, Any],
                 build: Callable[[dict], list[tuple[Any, str]]], requests: int, boundary: str, overlong: str,
                 skip: Any = None) -> None:
        from transformers import AutoConfig, AutoTokenizer

        from sapray.engines.base import max_length_of
        from sapray.engines.models import resolve_model

        path = resolve_model(model, revision)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        limit = max_length_of(engine_args)
        if engine == "hf":  # the hf engine also stops at the model's positions (HFEngine._setup)
            limit = min(limit, int(getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", limit)))
        self.max_length, self.build, self.requests = limit, build, requests
        self.boundary, self.overlong = boundary, overlong
        self.skip = _got(skip) if skip is not None else np.zeros(0, dtype=np.int64)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from sapray.core.scoring import RequestError, ScoreRequest, encode

        rows = batch.to_pylist()
        skipped = np.isin(batch.column("order").to_numpy(), self.skip)
        ids: list[list[tuple[list[int], list[int]]]] = []
        for row, journaled in zip(rows, skipped, strict=True):
            encoded = []
            if not row["reject"] and not journaled:
                try:
                    encoded = [(e.context_ids, e.continuation_ids) for e in (
                        encode(ScoreRequest(str(row["order"]), context, continuation), self.tokenizer,
                               self.max_length, self.boundary, self.overlong)
                        for context, continuation in self.build(row))]
                except RequestError as exc:
                    row["reject"], row["reject_stage"] = str(exc), "score"
            ids.append(encoded or [([], [])] * self.requests)
        out = pa.Table.from_pylist(rows, schema=batch.schema)
        for r in range(self.requests):
            out = out.append_column(f"context_ids_{r}", pa.array([e[r][0] for e in ids], pa.list_(pa.int32())))
            out = out.append_column(f"continuation_ids_{r}", pa.array([e[r][1] for e in ids], pa.list_(pa.int32())))
        return out


def _got(value: Any) -> Any:
    """An object ref's value (a large value goes to the actors once, by ref), or the value itself."""
    import ray

    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


# what a scoring pass journals of each row beside its sums: the encoder's verdict, which a rerun takes
# instead of tokenizing the row again
VERDICT = ("reject", "reject_stage")


class ScoreSums:
    """Engine actor: for each request of each row, the sum of the continuation's token log-probs
    (``{prefix}sum_{r}``), the sum of its tokens' clipped ranks (``{prefix}ranks_{r}``, the rank-surprisal
    ratio's numerator) and its token count (``{prefix}tokens_{r}``); per-token log-probs only with
    ``token_logprobs`` (debugging). With ``drop_ids`` the token ids leave the rows here. ``journaled`` (a
    ``journal.RowJournal`` table, or its object ref): rows found there take its values instead of being scored
    (their ids may be empty: not tokenized). ``writer``: the pass's ``journal.RowJournalWriter``, sent each
    batch's newly scored rows before the batch goes on."""

    def __init__(self, spec: EngineSpec, requests: int, prefix: str, drop_ids: bool, token_logprobs: bool = False,
                 num_cpus: float = 1, journaled: Any = None, writer: Any = None) -> None:
        from sapray.dataplane.actors import actor_engine
        from sapray.dataplane.journal import Journaled

        self.engine = actor_engine(spec, num_cpus)
        self.requests, self.prefix, self.drop_ids, self.token_logprobs = requests, prefix, drop_ids, token_logprobs
        self.journaled, self.writer = Journaled(journaled), writer

    def __call__(self, batch: pa.Table) -> pa.Table:
        import ray

        found, known = self.journaled.find(batch.column("order").to_numpy())
        todo = batch.filter(pa.array(~found)) if found.any() else batch
        done = None
        if todo.num_rows:
            scored = self._score(todo)
            done = pa.table({**{c: todo.column(c) for c in VERDICT}, **dict(zip(scored.column_names, scored.columns,
                                                                                strict=True))})
            if self.writer is not None:  # journaled before the batch goes on: a row out is a row journaled
                ray.get(self.writer.add.remote(done.append_column("order", todo.column("order"))))
        done = self.journaled.merged(found, known, done)
        out = batch
        for c in VERDICT:
            out = out.set_column(out.schema.get_field_index(c), c, done.column(c).cast(out.schema.field(c).type))
        if self.drop_ids:
            out = out.drop_columns([f"{kind}_ids_{r}" for r in range(self.requests)
                                    for kind in ("context", "continuation")])
        for name in done.column_names[len(VERDICT):]:
            out = out.append_column(name, done.column(name))
        return out

    def _score(self, batch: pa.Table) -> pa.Table:
        from sapray.core.scoring import EncodedRequest

        ok = [not r for r in batch.column("reject").to_pylist()]
        slots, encoded = [], []
        for r in range(self.requests):
            contexts = batch.column(f"context_ids_{r}").to_pylist()
            continuations = batch.column(f"continuation_ids_{r}").to_pylist()
            for i in range(batch.num_rows):
                if ok[i]:
                    slots.append((r, i))
                    encoded.append(EncodedRequest(str(i), contexts[i], continuations[i]))
        scores = self.engine.sequence_scores(encoded) if encoded else []
        sums = np.zeros((self.requests, batch.num_rows))
        ranks = np.zeros((self.requests, batch.num_rows), dtype=np.int64)
        tokens = np.zeros((self.requests, batch.num_rows), dtype=np.int64)
        per_token: list[list[list[float]]] = [[[] for _ in range(batch.num_rows)] for _ in range(self.requests)]
        for (r, i), values in zip(slots, scores, strict=True):
            sums[r, i], ranks[r, i], tokens[r, i] = math.fsum(values.logprobs), sum(values.ranks), len(values.logprobs)
            per_token[r][i] = values.logprobs
        columns = {}
        for r in range(self.requests):
            columns[f"{self.prefix}sum_{r}"] = pa.array(sums[r])
            columns[f"{self.prefix}ranks_{r}"] = pa.array(ranks[r])
            columns[f"{self.prefix}tokens_{r}"] = pa.array(tokens[r])
            if self.token_logprobs:
                columns[f"{self.prefix}token_logprobs_{r}"] = pa.array(per_token[r], pa.list_(pa.float64()))
        return pa.table(columns)


# -- summaries computed where the blocks are --------------------------------------------------------

def _block_moments(columns: list[str], where: str | None) -> Callable[[pa.Table], dict]:
    def fn(batch: pa.Table) -> dict:
        mask = (np.ones(batch.num_rows, dtype=bool) if where is None
                else batch.column(where).to_numpy(zero_copy_only=False))
        out = {"rows": [int(mask.sum())]}
        for c in columns:
            values = batch.column(c).to_numpy(zero_copy_only=False)[mask].astype(np.float64)
            finite = values[np.isfinite(values)]
            m = Moments.of(finite)
            out |= {f"{c}.n": [m.n], f"{c}.mean": [m.mean], f"{c}.m2": [m.m2], f"{c}.non_finite": [len(values) - m.n]}
        return out
    return fn


def moments(ds, columns: list[str], where: str | None = None) -> tuple[int, dict[str, tuple[Moments, int]]]:
    """(rows, {column: (moments of its finite values, how many are not finite)}) over the rows where
    the boolean column ``where`` is true (all rows without it)."""
    parts = ds.map_batches(_block_moments(columns, where), batch_format="pyarrow", batch_size=None).take_all()
    rows = sum(p["rows"] for p in parts)
    out = {}
    for c in columns:
        total = Moments()
        for p in parts:  # in block order: the same sums whatever ran where
            total = total.merge(Moments(p[f"{c}.n"], p[f"{c}.mean"], p[f"{c}.m2"]))
        out[c] = (total, sum(p[f"{c}.non_finite"] for p in parts))
    return rows, out


def select(ds, keys: dict[str, Callable[[pa.Table], np.ndarray]],
           ranks: dict[str, list[int]]) -> dict[str, list[Selected]]:
    """Exact order statistics: for each name, the uint64 keys at ``ranks[name]`` (1-based) of the keys
    ``keys[name](block)`` gives for each block. ``order_stats.DIGITS`` passes over ``ds``."""
    def count(prefixes: dict[str, np.ndarray], level: int) -> dict[str, np.ndarray]:
        def fn(batch: pa.Table) -> dict:
            return {name: [digit_counts(keys[name](batch), p, level).ravel()] for name, p in prefixes.items()}
        parts = ds.map_batches(fn, batch_format="pyarrow", batch_size=None).take_all()
        return {name: add_counts((np.asarray(part[name], dtype=np.int64).reshape(3, -1) for part in parts), len(p))
                for name, p in prefixes.items()}

    wanted = {name: r for name, r in ranks.items() if r}
    return select_keys(wanted, count) if wanted else {}


# -- writers ----------------------------------------------------------------------------------------

def _names(ext: str):
    from ray.data.datasource import FilenameProvider

    class Parts(FilenameProvider):
        """part-00000.jsonl, ... in block order: the same names on every run."""

        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return f"part-{task_index:05d}.{ext}"

    return Parts()


def part_datasinks() -> dict[str, Callable[..., Any]]:
    """sapray's part-file datasinks by kind, each made with (folder, filesystem=...) and replacing what the folder
    held; each writes a write task's blocks to one file (``_names``), in block order.
    JSON lines: one JSON object per line (sorted keys, UTF-8 as is; Ray's own JSON writer goes through pandas,
    which escapes every '/'). Parquet: Ray's own writer hands the blocks to Arrow's threaded dataset writer,
    which may write their record batches out of order (a filter's scores/ once held its blocks of 8 rows out of
    place; tests/test_formats.py). Classes made on first use: Ray Data is imported by the jobs that write, not
    by whoever imports this module."""
    import pyarrow.parquet as pq
    from ray.data import SaveMode
    from ray.data.datasource import BlockBasedFileDatasink

    class JsonLines(BlockBasedFileDatasink):
        def write_block_to_file(self, block, file) -> None:
            file.write("".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n"
                               for row in block.to_arrow().to_pylist()).encode("utf-8"))

    class Parquet(BlockBasedFileDatasink):
        def write_block_to_file(self, block, file) -> None:
            pq.write_table(block.to_arrow(), file, row_group_size=PARQUET_ROW_GROUP_ROWS)

    return {kind: partial(sink, file_format=kind, filename_provider=_names(kind), mode=SaveMode.OVERWRITE)
            for kind, sink in (("jsonl", JsonLines), ("parquet", Parquet))}


# Rows per Parquet row group: a file's rows in groups of this many, whatever the blocks and engine batches they
# came in (Ray's writer made a row group of every record batch: 100k scored samples were 2,900 row groups of ~35
# rows, twice the bytes of one group a file, and every reader (the report, pandas, datasets) paid for the
# metadata; docs/scaling.md).
PARQUET_ROW_GROUP_ROWS = 65_536


def write_folders(output: str, folders: dict[str, tuple[Any, str]]) -> dict[str, str]:
    """Each dataset of ``folders`` (name -> (dataset, ``"jsonl"`` or ``"parquet"``)) as part files in that folder
    of ``output``, written by the workers, each file's rows in dataset order, replacing what an earlier run left
    there; a folder is there, empty, when its dataset has no rows (it says "none"). The folders' URIs by name."""
    sinks = part_datasinks()
    uris = {name: child(output, name) for name in folders}
    places = {name: filesystem(uri) for name, uri in uris.items()}
    for name, (ds, kind) in folders.items():
        fs, path = places[name]
        ds.write_datasink(sinks[kind](path, filesystem=fs))
        fs.create_dir(path, recursive=True)
    return uris


# -- progress of a whole-dataset pass --------------------------------------------------------------------

class _Tally:
    """Rows that passed a stage, counted by the workers (an async actor: counting never waits)."""

    def __init__(self) -> None:
        self.rows = 0

    async def add(self, rows: int) -> None:
        self.rows += rows

    async def value(self) -> int:
        return self.rows


def _counted(tally: Any) -> Callable[[pa.Table], pa.Table]:
    def fn(batch: pa.Table) -> pa.Table:
        tally.add.remote(batch.num_rows)
        return batch
    return fn


def materialized(ds, total: int, what: str, progress: Callable[[Iterator[Any], int, str], Iterator[Any]]):
    """``ds.materialize()``, its rows shown by ``progress`` as the workers finish them (a job's console; the
    data plane prints nothing itself). Blocks pass through unchanged, so the result is ``materialize()``'s."""
    import ray

    tally = ray.remote(num_cpus=0)(_Tally).remote()
    counted = ds.map_batches(_counted(tally), batch_format="pyarrow", batch_size=None, num_cpus=0)
    done: dict[str, Any] = {}

    def run() -> None:
        try:
            done["ds"] = counted.materialize()
        except BaseException as exc:  # raised again in the caller's thread
            done["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()

    def ticks() -> Iterator[None]:
        seen = 0
        while worker.is_alive() or seen < min(total, ray.get(tally.value.remote())):
            now = min(total, ray.get(tally.value.remote()))
            yield from (None for _ in range(now - seen))
            seen = now
            worker.join(timeout=1.0)

    for _ in progress(ticks(), total, what):
        pass
    ray.kill(tally)
    if "error" in done:
        raise done["error"]
    return done["ds"]
