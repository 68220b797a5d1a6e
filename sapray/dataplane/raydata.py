"""Ray at the edge: start or join Ray, and run an engine actor pool over rows with Ray Data.

Rows are cut into blocks of exactly ``batch_size`` rows in a fixed order, so every actor sees the
same batches whatever the number of actors: scores do not depend on the pool size.
"""

from __future__ import annotations

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


ACTOR_POOL_START_PATIENCE_S = 3600


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
    # An actor pool starts whole before its first block (Ray Data otherwise feeds the first actor up, which
    # can take every block while the others load their models for nothing), and a pool the cluster cannot
    # start fails after this long rather than waiting forever.
    ctx.wait_for_min_actors_s = ACTOR_POOL_START_PATIENCE_S


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


def batch_rows(rows: int, batch_size: int, actors: int) -> int:
    """Rows per block: ``ray.batch_size``, or fewer, so that every actor gets a block (a short sample, a small
    pool of questions)."""
    return max(1, min(batch_size, -(-rows // max(1, actors))))


def cut(rows: Sequence[dict], batch_size: int) -> list[list[dict]]:
    """Rows in blocks of ``batch_size`` (the last may be shorter), in order: each block one engine batch."""
    return [list(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]


def actor_pool(actor_cls: type, actor_kwargs: dict[str, Any], cfg: RayConfig,
               n_blocks: int | None = None) -> dict[str, Any]:
    """``map_batches`` arguments for a pool of ``actor_cls`` the cluster can hold, placed as
    ``placement.plan`` says; a config the cluster cannot hold fails here, before any actor starts.
    With ``n_blocks`` known, no more actors start than there are blocks: an actor with no block
    would load its model for nothing (a small race round, a short sample)."""
    import ray

    from sapray.dataplane.placement import place

    where = place(actor_kwargs, cfg)
    log.debug("%s: %s", actor_cls.__name__, where.describe())
    return {"fn": actor_cls, "fn_constructor_kwargs": where.actor_kwargs(actor_kwargs),
            "batch_size": cfg.batch_size,
            "compute": ray.data.ActorPoolStrategy(size=min(where.actors, n_blocks or where.actors)),
            "num_cpus": where.num_cpus, "num_gpus": where.num_gpus or None}


def map_blocks(row_blocks: Sequence[Sequence[dict]], actor_cls: type, actor_kwargs: dict[str, Any],
               cfg: RayConfig) -> Iterator[dict]:
    """Stream the actor pool's output rows, in input order; each block of rows is one batch."""
    import ray

    if not row_blocks:
        return iter(())
    pool = {**actor_pool(actor_cls, actor_kwargs, cfg, n_blocks=len(row_blocks)), "batch_size": None}
    mapped = ray.data.from_arrow([pa.Table.from_pylist(list(b)) for b in row_blocks]).map_batches(**pool)
    return mapped.iter_rows()
