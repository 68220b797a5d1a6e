"""Engines that stay for a whole job: started once, called by every pass of the job.

A race scores round after round, ``sapray run`` generates each round's sample before scoring it and the
winner's full set after the race. An ``EnginePool`` keeps the engine actors (``ScoreActor``,
``GenerateActor`` or ``ApiTeacherActor``) outside all of these passes, as plain Ray actors started once, so
an engine loads its weights once per job, not once per pass:

    a pipeline's batches --map_batches (tasks, no CPU)--> dispatcher --> a free engine actor
    a round's rows (driver) ----------------------------> dispatcher --> a free engine actor

The dispatcher (an async actor) hands each batch to the next free engine and returns its output. A
pipeline's task hands it the batch exactly as ``map_batches`` would hand it to an actor; a round's rows
go from the driver, cut into blocks and converted to batches and back to rows as a Ray Data pass cuts
and converts them (no task of a round then waits for a CPU the resident engines hold). Either way the
engines see the batches and give the outputs of a Ray Data actor pool: the same numbers and bytes.

Pools of engines that take turns (a run's teachers and its scorer) reserve a ``share`` of their CPUs
and GPUs each (``placement.plan``). ``close`` releases a pool's engines (an eliminated teacher, the
scorer once the race ends); ``grow`` adds engines where resources were freed (the winner's full set).
An engine actor lost with its node leaves its pool and its batch goes to another engine; when a pool has
none left, the job stops with an error that says so (a rerun resumes from the journal): nothing waits on a
lost actor.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

from sapray.config import RayConfig
from sapray.dataplane.placement import NotShareable, Placement, place

log = logging.getLogger(__name__)

# Tasks in flight per engine: one computing, one waiting at the dispatcher, so an engine never idles
# between batches.
TASKS_PER_ENGINE = 2


class ResidentEngine:
    """One engine actor: the job's actor class, built once; counts its engine starts itself."""

    def __init__(self, actor_cls: type, actor_kwargs: dict[str, Any]) -> None:
        self.inner = actor_cls(**actor_kwargs)
        self.starts = 1  # engine actors are never restarted (the Dispatcher moves a lost one's work)

    def run(self, batch: Any) -> Any:
        return self.inner(batch)

    def started(self) -> tuple[str, int]:
        """(node/actor id, engine starts in this instance), once the engine has loaded."""
        import ray

        ctx = ray.get_runtime_context()
        return f"{ctx.get_node_id()}/{ctx.get_actor_id()}", self.starts


class EnginesLost(RuntimeError):
    """Every engine actor of a pool was lost (their nodes gone): the job stops; a rerun resumes."""


class Dispatcher:
    """Hands each batch to a free engine (an async actor: calls wait for an engine, not for each other). An
    engine lost with its node leaves the pool and its batch goes to another; when none is left, every call
    fails at once, naming the lost engines (nothing waits for an engine that will not come back)."""

    def __init__(self, engines: list) -> None:
        self.free: asyncio.Queue = asyncio.Queue()
        self.live, self.lost = 0, []
        self.add(engines)

    def add(self, engines: list) -> None:
        for engine in engines:
            self.free.put_nowait(engine)
        self.live += len(engines)

    async def run(self, batch: list) -> Any:
        from ray.exceptions import ActorDiedError, ActorUnavailableError

        while True:
            engine = await self.free.get()
            if engine is None:  # the pool is empty: wake the next waiter too
                self.free.put_nowait(None)
                raise EnginesLost(f"every engine actor of this pool was lost ({'; '.join(self.lost)[:500]}): "
                                  "run the same command again to resume from the journal")
            try:
                output = await engine.run.remote(batch[0])  # in a list: the reference travels, not the batch
            except (ActorDiedError, ActorUnavailableError) as exc:
                self.live -= 1
                self.lost.append(str(exc).splitlines()[0][:200])
                if self.live == 0:
                    self.free.put_nowait(None)
                continue
            self.free.put_nowait(engine)
            return output


def _through(dispatcher: Any):
    def fn(batch: Any) -> Any:
        import ray

        return ray.get(dispatcher.run.remote([ray.put(batch)]))
    return fn


class EnginePool:
    """Engine actors started once for a job (see the module's text); a context manager releases them."""

    def __init__(self, actor_cls: type, actor_kwargs: dict[str, Any], cfg: RayConfig, where: Placement,
                 n_blocks: int | None = None) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.actor_cls, self.cfg, self.where = actor_cls, cfg, where
        log.debug("%s (resident): %s", actor_cls.__name__, self.where.describe())
        self.actor_kwargs = self.where.actor_kwargs(actor_kwargs)
        self.engines: list = []
        self.placements: list[tuple[str, int]] = []  # (node/actor id, engine starts) of each engine, at its start
        # on the driver's node: the job lives as long as that node does, and so must the dispatcher
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.dispatcher = ray.remote(num_cpus=0)(Dispatcher).options(scheduling_strategy=here).remote([])
        self.grow(min(self.where.actors, n_blocks or self.where.actors))

    def grow(self, actors: int) -> None:
        """Start engines until the pool has ``actors`` (none when it has as many already)."""
        import ray

        # not restarted: one lost with its node leaves the pool (Dispatcher), rather than wait for a node
        remote = ray.remote(ResidentEngine).options(
            num_cpus=self.where.reserved_cpus, num_gpus=self.where.reserved_gpus or None, max_restarts=0)
        new = [remote.remote(self.actor_cls, self.actor_kwargs) for _ in range(actors - len(self.engines))]
        if new:
            self.placements += ray.get([e.started.remote() for e in new])
            self.engines += new
            ray.get(self.dispatcher.add.remote(new))

    def starts(self) -> dict[str, int]:
        """Engine starts per actor, counted by the actors themselves when each had loaded (an engine lost since
        is not asked again: it cannot answer)."""
        return dict(self.placements)

    def stage(self) -> dict[str, Any]:
        """``map_batches`` arguments of a stage whose batches this pool's engines process."""
        import ray

        return {"fn": _through(self.dispatcher), "batch_size": self.cfg.batch_size, "num_cpus": 0,
                "compute": ray.data.TaskPoolStrategy(size=TASKS_PER_ENGINE * len(self.engines))}

    def map_blocks(self, row_blocks: Sequence[Sequence[dict]]) -> Iterator[dict]:
        """The engines' output rows, in input order; each block of rows is one batch, handed over as the batch
        Ray Data would make of it, and each output turned into rows as Ray Data turns it (its own block
        conversions), straight from the driver: no task of a round waits for a CPU the resident engines
        hold."""
        import pyarrow as pa
        import ray
        from ray.data.block import BlockAccessor

        def send(table: Any) -> Any:
            return self.dispatcher.run.remote([ray.put(BlockAccessor.for_block(table).to_batch_format("numpy"))])

        tables = [pa.Table.from_pylist(list(b)) for b in row_blocks]
        window = TASKS_PER_ENGINE * len(self.engines)
        pending = deque(send(table) for table in tables[:window])
        for table in tables[window:] + [None] * min(window, len(tables)):
            try:
                output = ray.get(pending.popleft())
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, EnginesLost):
                    raise EnginesLost(str(exc.cause)) from None
                raise
            if table is not None:
                pending.append(send(table))
            yield from BlockAccessor.for_block(BlockAccessor.batch_to_block(output)).iter_rows(public_row_format=True)

    def close(self) -> None:
        import ray

        for actor in [*self.engines, self.dispatcher]:
            ray.kill(actor)
        self.engines = []

    def __enter__(self) -> EnginePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Engines:
    """The engine pools of one job that stay resident together, by key (the scorer, each teacher model).

    ``planned``: each engine's actor class and arguments. Every engine is placed up front with an equal share of
    the cluster (they take turns: a round generates, then scores), so a config the cluster cannot hold,
    or engines that cannot share it, are known before anything starts. When they cannot share (``reason``
    says why) or ``resident`` is off, ``pool`` answers None and the job starts a pool per execution.
    """

    def __init__(self, planned: dict[str, tuple[type, dict[str, Any]]], cfg: RayConfig, resident: bool = True) -> None:
        self.cfg, self.planned = cfg, planned
        self.pools: dict[str, EnginePool] = {}
        self.starts: dict[str, dict[str, int]] = {}  # of the pools closed so far
        self.where: dict[str, Placement] = {}
        self.reason = None if resident else "ray.resident_engines is off"
        if resident:
            try:
                self.where = {key: place(kwargs, cfg, share=1 / len(planned)) for key, (_, kwargs) in planned.items()}
            except NotShareable as exc:
                self.reason = str(exc)

    def pool(self, key: str, n_blocks: int | None = None) -> EnginePool | None:
        """The resident pool of ``key``, started at its first use (for no more actors than ``n_blocks``, when
        known); None where engines are not resident."""
        if self.reason is not None or key not in self.where:
            return None
        if key not in self.pools:
            self.pools[key] = EnginePool(*self.planned[key], self.cfg, self.where[key], n_blocks)
        return self.pools[key]

    def to_start(self, key: str, n_blocks: int | None = None) -> int:
        """How many engine actors ``pool(key, n_blocks)`` would start now (0: started already, or not resident)."""
        if self.reason is not None or key not in self.where or key in self.pools:
            return 0
        return min(self.where[key].actors, n_blocks or self.where[key].actors)

    def release(self, key: str) -> None:
        """Stop ``key``'s engines (an eliminated teacher, the scorer after the race), freeing their resources."""
        pool = self.pools.pop(key, None)
        if pool is not None:
            self.starts[key] = pool.starts()
            pool.close()

    def widen(self, key: str) -> None:
        """Grow ``key``'s pool to the actors the cluster holds for it alone (after the others were released)."""
        if key in self.pools:
            self.pools[key].grow(place(self.planned[key][1], self.cfg).actors)

    def engine_starts(self) -> dict[str, dict[str, int]]:
        """Engine starts per actor of every pool, closed or running, counted by the actors."""
        return {**self.starts, **{key: pool.starts() for key, pool in self.pools.items()}}

    def close(self) -> None:
        for key in list(self.pools):
            self.release(key)

    def __enter__(self) -> Engines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
