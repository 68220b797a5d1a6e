"""Ray at the edge: start or join Ray, and run an engine actor pool over rows with Ray Data.

Rows are cut into blocks of exactly ``batch_size`` rows in a fixed order, so every actor sees the
same batches whatever the number of actors: scores do not depend on the pool size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psutil
import pyarrow as pa

from sapray.config import RayConfig

log = logging.getLogger(__name__)


# How long to keep restarting a local Ray that does not come up (Ray gives its raylet a fixed 30 s);
# SAPRAY_RAY_STARTUP_PATIENCE_S overrides, read when Ray starts so a caller may set it at any time.
STARTUP_PATIENCE_S = 600


# How Ray says that a process of a starting node missed one of its fixed waits: the raylet's 30 s
# ("... timed out during startup") or the GCS server's port file (seen at load 60+ on 2 cores).
STARTUP_TIMEOUTS = ("timed out during startup", "Timed out waiting for file")


def startup_timed_out(exc: BaseException) -> bool:
    return any(text in str(exc) for text in STARTUP_TIMEOUTS)


def start_local_ray(patience_s: float, **kwargs: Any) -> None:
    """``ray.init`` of a local Ray, started again when it fails to come up in time.

    Ray waits a fixed time for its raylet, and the raylet a fixed time for its dashboard agent
    (a Python process); on a busy machine either can run out, and the node dies at startup.
    """
    import ray

    deadline = time.monotonic() + patience_s
    while True:
        before = {p.pid for p in psutil.Process().children()}
        try:
            ray.init(**kwargs)
            return
        except Exception as exc:  # Ray raises a bare Exception for this
            if not startup_timed_out(exc) or time.monotonic() > deadline:
                raise
            log.warning("Ray did not start in time (a busy machine?); starting it again")
            ray.shutdown()
            _stop_processes_started_since(before)


def _stop_processes_started_since(before: set[int]) -> None:
    """Kill what a failed ``ray.init`` left running: its node's processes (GCS server, raylet, dashboard,
    monitors) are children of this process that ``ray.shutdown`` does not know, and each start again
    would add its own, making a busy machine busier until no start can succeed."""
    started = [p for p in psutil.Process().children() if p.pid not in before]
    for process in started:
        with contextlib.suppress(psutil.Error):
            started += process.children(recursive=True)
    for process in started:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(started, timeout=60)


def init_ray(cfg: RayConfig) -> None:
    """Join ``cfg.address`` (or RAY_ADDRESS), else start a local single-node Ray."""
    import ray

    if not ray.is_initialized():
        _start_or_join(cfg)
    # Also when Ray was started by the caller: whole-dataset jobs write rows in block order.
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    # Ray's default hash shuffle starts aggregator actors for every groupby (~10 s each on a small node,
    # most of a small generate job's time); the sort-based shuffle runs as tasks (bench_dataplane at 1M).
    ctx.shuffle_strategy = ray.data.context.ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    ctx.enable_progress_bars = True
    ctx.print_on_execution_start = False


def _start_or_join(cfg: RayConfig) -> None:
    import ray

    address = cfg.address or os.environ.get("RAY_ADDRESS")
    options = {"include_dashboard": False if address in (None, "local") else None,
               "logging_level": logging.WARNING, "log_to_driver": True, "configure_logging": True}
    if address in (None, "local"):
        patience = float(os.environ.get("SAPRAY_RAY_STARTUP_PATIENCE_S", STARTUP_PATIENCE_S))
        start_local_ray(patience, address=address, **options)
    else:
        ray.init(address=address, **options)


# How a job shows a stream's progress: ``progress(items, total, what)`` yields the items (the job passes
# its console's; the data plane itself prints nothing).
Progress = Callable[[Iterator[Any], int, str], Iterator[Any]]


def unobserved(items: Iterator[Any], total: int, what: str) -> Iterator[Any]:
    return items


def blocks(rows: Sequence[dict], batch_size: int) -> list[pa.Table]:
    return [pa.Table.from_pylist(list(rows[i:i + batch_size])) for i in range(0, len(rows), batch_size)]


def actor_pool(actor_cls: type, actor_kwargs: dict[str, Any], cfg: RayConfig,
               n_blocks: int | None = None) -> dict[str, Any]:
    """``map_batches`` arguments for a pool of ``actor_cls`` the cluster can hold, placed as
    ``placement.plan`` says; a config the cluster cannot hold fails here, before any actor starts.
    With ``n_blocks`` known, no more actors start than there are blocks: an actor with no block
    would load its model for nothing (a small race round, a short sample)."""
    import ray

    from sapray.dataplane.placement import actor_bytes, cluster_view, plan
    from sapray.engines.models import locate

    engine = actor_kwargs.get("engine", "hf")
    model = actor_kwargs.get("model") if "engine" in actor_kwargs else None  # API teachers hold no weights
    size = actor_bytes(engine, locate(model, actor_kwargs.get("revision")).path) if model else None
    where = plan(engine, actor_kwargs.get("engine_args") or {}, cfg, *cluster_view(), actor_bytes=size)
    log.debug("%s: %s", actor_cls.__name__, where.describe())
    if "engine_args" in actor_kwargs:
        actor_kwargs = {**actor_kwargs, "engine_args": where.engine_args}
    return {"fn": actor_cls, "fn_constructor_kwargs": {**actor_kwargs, "num_cpus": where.num_cpus},
            "batch_size": cfg.batch_size,
            "compute": ray.data.ActorPoolStrategy(size=min(where.actors, n_blocks or where.actors)),
            "num_cpus": where.num_cpus, "num_gpus": where.num_gpus or None}


class _BlockStore:
    """Blocks posted by the driver, by number, for the session's ticket tasks to take (an async actor:
    its methods share one event loop, so a waiting ``take`` does not hold ``post`` back)."""

    def __init__(self) -> None:
        self.blocks: dict[int, Any] = {}
        self.changed = asyncio.Condition()

    async def post(self, number: int, block: list) -> None:
        async with self.changed:
            self.blocks[number] = block[0]  # in a list: Ray passes the reference, not the table
            self.changed.notify_all()

    async def take(self, number: int) -> list:
        async with self.changed:
            await self.changed.wait_for(lambda: number in self.blocks)
            return [self.blocks.pop(number)]


def _take_block(store: Any):
    def fn(batch: pa.Table) -> pa.Table:
        import ray

        return ray.get(ray.get(store.take.remote(batch.column("ticket")[0].as_py()))[0])
    return fn


class ActorSession:
    """One actor pool kept over several passes (the rounds of a race): the engines load once per job.

    One Ray Data execution runs over numbered tickets; the task of ticket k waits for block k, which
    the driver posts when it has the pass. (A read task cannot feed it: Ray Data holds a read task's
    output until 128 MiB or the task's end.) Blocks are cut as ``map_with_actors`` cuts them and each
    is one batch, so the output does not depend on the passes or the actors. ``tickets`` bounds the
    blocks of all passes together; use it as a context manager, which ends the execution and frees
    the actors.
    """

    def __init__(self, actor_cls: type, actor_kwargs: dict[str, Any], cfg: RayConfig, tickets: int,
                 n_blocks: int | None = None) -> None:
        import ray

        self.cfg, self.tickets, self.posted = cfg, tickets, 0
        self.store = ray.remote(num_cpus=0)(_BlockStore).remote()
        pool = {**actor_pool(actor_cls, actor_kwargs, cfg, n_blocks=n_blocks), "batch_size": None}
        numbered = ray.data.from_items([{"ticket": k} for k in range(tickets)], override_num_blocks=tickets)
        blocks = numbered.map_batches(_take_block(self.store), batch_format="pyarrow", batch_size=None,
                                      num_cpus=0, compute=ray.data.TaskPoolStrategy(size=2))
        self.batches = iter(blocks.map_batches(**pool).iter_batches(batch_size=None, prefetch_batches=0,
                                                                    batch_format="pyarrow"))

    def map(self, rows: Sequence[dict]) -> Iterator[dict]:
        """The pool's output rows for ``rows``, in input order."""
        import ray

        tables = blocks(rows, self.cfg.batch_size)
        if self.posted + len(tables) > self.tickets:
            raise AssertionError(f"{self.posted + len(tables)} blocks in this session, {self.tickets} planned")
        for table in tables:
            self.store.post.remote(self.posted, [ray.put(table)])
            self.posted += 1
        return self._rows(len(rows))

    def _rows(self, n: int) -> Iterator[dict]:
        while n > 0:
            batch = next(self.batches).to_pylist()
            n -= len(batch)
            yield from batch

    def __enter__(self) -> ActorSession:
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        self.batches.close()  # ends the execution: its waiting ticket tasks and its actors
        ray.kill(self.store)


def map_with_actors(
    rows: Sequence[dict],
    actor_cls: type,
    actor_kwargs: dict[str, Any],
    cfg: RayConfig,
) -> Iterator[dict]:
    """Stream the actor pool's output rows, in input order."""
    import ray

    if not rows:
        return iter(())
    tables = blocks(rows, cfg.batch_size)
    pool = actor_pool(actor_cls, actor_kwargs, cfg, n_blocks=len(tables))
    mapped = ray.data.from_arrow(tables).map_batches(**pool)
    return mapped.iter_rows()
