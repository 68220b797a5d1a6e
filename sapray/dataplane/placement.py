"""Where engine actors run: GPUs per actor and how many actors, checked against the cluster first.

A pure decision from the config and the cluster's resources (``ray.cluster_resources()`` and the
GPUs of each alive node), made before any actor starts:

- GPUs per actor: ``ray.num_gpus_per_actor`` when set. Unset (auto): on a cluster with GPUs a
  vLLM actor takes ``tensor_parallel_size x pipeline_parallel_size`` GPUs (one engine per GPU
  group) and an hf actor takes 1; on a cluster without GPUs, 0 (the engines run on CPU).
- Actors: ``ray.actors`` when set. Unset: one per GPU group (cluster GPUs // GPUs per actor) when
  the actors use GPUs; on CPUs, one single-threaded actor per CPU of each node (``ray.num_cpus_per_actor``
  CPUs each when set), as many as the cluster's memory holds by the engine's estimate (weights twice
  over, plus vLLM's CPU KV cache). One actor per core beat one actor on every core here (docs/scaling.md,
  "CPU split"), and vLLM's CPU engine computes on one core each anyway.
- Checks, each a ``PlacementError`` naming what is missing: actors that need GPUs on a cluster
  without them (or with too few), a GPU group larger than the largest node (a tensor-parallel
  group must fit on one node), and more actors than the cluster can hold at once (Ray Data would
  otherwise wait for resources that never come).
- CPU stages (reading, sampling, building contexts, reducing) run in the driver and request no GPU.
- A vLLM actor spanning several GPUs runs vLLM's multiprocessing executor inside the actor
  (``distributed_executor_backend: mp``, unless set), so the GPUs Ray gave the actor are the
  ones vLLM uses, as Ray Data's own vLLM stage does for non-Ray executors.

- Engines resident together (``share`` < 1: the teachers and the scorer of ``sapray run`` take turns,
  each idle while another computes) keep the actors and compute threads each would have alone but
  reserve ``share`` of their CPUs and GPUs, and of the cluster's memory by the estimate, so all fit at
  once; a vLLM engine on a shared GPU also gets that share of ``gpu_memory_utilization``. A GPU group
  wider than one GPU cannot be shared (Ray gives whole GPUs past one): ``NotShareable`` says so.

The counts are of the cluster as it is when the job starts: an autoscaling cluster must already
have its GPU workers up (cluster/ray-cluster.yaml keeps ``min_workers`` at the size you want).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sapray.config import ConfigError, RayConfig
from sapray.engines.base import EngineSpec


class PlacementError(ConfigError):
    """The config asks for resources the cluster does not have."""


class NotShareable(PlacementError):
    """Engines that would stay resident together cannot share the cluster's resources."""


# vLLM's own default share of a GPU's memory, split between engines that share a GPU
VLLM_GPU_MEMORY_UTILIZATION = 0.9
SIM_ACTOR_BYTES = 2**29  # a simulated engine's actor


@dataclass(frozen=True)
class Placement:
    actors: int
    num_gpus: float  # per actor
    num_cpus: float  # per actor: the threads a CPU engine computes with
    engine_args: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    share: float = 1.0  # the part of num_cpus and num_gpus each actor reserves (engines that take turns)

    def actor_kwargs(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """An actor's arguments as placed: its engine built with the arguments placement settled (``spec``,
        where it has one) and computing on ``num_cpus`` threads."""
        spec = kwargs.get("spec")
        return {**kwargs, **({"spec": spec.with_args(self.engine_args)} if spec is not None else {}),
                "num_cpus": self.num_cpus}

    def describe(self) -> str:
        gpus = f", {self.num_gpus:g} GPU each" if self.num_gpus else " (CPU)"
        shared = f", reserving {self.share:.2g} of it (engines take turns)" if self.share < 1 else ""
        return f"{self.actors} actor(s), {self.num_cpus:g} CPU{gpus}{shared}; {self.reason}"

    @property
    def reserved_cpus(self) -> float:
        return self.num_cpus * self.share

    @property
    def reserved_gpus(self) -> float:
        return self.num_gpus * self.share


def gpu_group(engine: str, engine_args: Mapping[str, Any]) -> int:
    """GPUs one engine instance spans: vLLM's tensor x pipeline parallel sizes; hf runs on one device."""
    if engine != "vllm":
        return 1
    tp = int(engine_args.get("tensor_parallel_size") or 1)
    pp = int(engine_args.get("pipeline_parallel_size") or 1)
    return tp * pp


def plan(
    engine: str,
    engine_args: Mapping[str, Any],
    cfg: RayConfig,
    cluster: Mapping[str, float],
    node_gpus: Sequence[float] | None = None,
    node_cpus: Sequence[float] | None = None,
    actor_bytes: float | None = None,
    share: float = 1.0,
) -> Placement:
    """Decide actors and GPUs per actor; raise PlacementError if the cluster cannot hold them.

    ``cluster``: ``ray.cluster_resources()``; ``node_gpus``, ``node_cpus``: the GPUs and CPUs of each
    alive node (when known, a GPU group must fit on one of them, and CPU actors are counted per node);
    ``actor_bytes``: an engine actor's estimated memory, which caps the default number of CPU actors;
    ``share``: the part of the cluster this engine reserves, when engines stay resident together.
    """
    if engine == "sim" and cfg.num_gpus_per_actor is None:  # it stands for a device and sleeps: no GPU of its own
        cfg = cfg.model_copy(update={"num_gpus_per_actor": 0})
    total_gpus = float(cluster.get("GPU", 0))
    total_cpus = float(cluster.get("CPU", 0))
    group = gpu_group(engine, engine_args)
    args = dict(engine_args)

    if cfg.num_gpus_per_actor is not None:
        gpus = float(cfg.num_gpus_per_actor)
        why = f"ray.num_gpus_per_actor={gpus:g}"
        if engine == "vllm" and gpus and group > gpus:
            raise PlacementError(
                f"engine_args asks vLLM for {group} GPUs per engine (tensor_parallel_size x pipeline_parallel_size) "
                f"but ray.num_gpus_per_actor is {gpus:g}; set it to {group} or leave it unset")
    elif total_gpus > 0:
        gpus = float(group)
        why = (f"{group} GPU(s) per engine (tensor_parallel_size x pipeline_parallel_size)" if engine == "vllm"
               else "one GPU per hf engine")
    else:
        if group > 1:
            raise PlacementError(
                f"engine_args asks vLLM for tensor/pipeline parallelism over {group} GPUs, but the Ray cluster "
                f"has no GPUs ({_show(cluster)}); start GPU workers or drop tensor_parallel_size")
        gpus = 0.0
        why = "no GPUs in the cluster: engines run on CPU"

    if gpus > 0 and total_gpus < gpus:
        raise PlacementError(
            f"each engine actor needs {gpus:g} GPU(s) ({why}) but the Ray cluster has {total_gpus:g} "
            f"({_show(cluster)}); run on GPU nodes, or set ray.num_gpus_per_actor=0 for CPU engines")
    if gpus > 0 and node_gpus and max(node_gpus) < gpus:
        raise PlacementError(
            f"each engine actor needs {gpus:g} GPUs on one node ({why}) but the largest node has "
            f"{max(node_gpus):g} (nodes: {[float(g) for g in node_gpus]}); a tensor-parallel group must fit on "
            "one node")

    if cfg.actors is not None:
        actors = cfg.actors
        how = "ray.actors"
    elif gpus > 0:
        per_node = node_gpus if node_gpus else [total_gpus]
        actors = max(1, sum(math.floor(g / gpus + 1e-9) for g in per_node))
        how = f"one per {gpus:g}-GPU group of {total_gpus:g} GPUs"
    else:
        cpus = cfg.num_cpus_per_actor or 1
        fit = max(1, sum(math.floor(c / cpus + 1e-9) for c in (node_cpus or [total_cpus])))
        memory = float(cluster.get("memory", 0)) * share
        room = math.floor(memory / actor_bytes) if actor_bytes and memory else fit
        actors = max(1, min(fit, room))
        how = (f"one {cpus:g}-CPU actor per {cpus:g} CPU(s) of each node" if actors == fit else
               f"{actors} CPU actors: Ray's memory ({memory / 2**30:.1f} GiB) holds {room} engines of "
               f"~{actor_bytes / 2**30:.1f} GiB")

    if gpus > 0 and actors * gpus > total_gpus + 1e-9:
        raise PlacementError(
            f"{actors} actors x {gpus:g} GPUs = {actors * gpus:g} GPUs, but the Ray cluster has {total_gpus:g}; "
            "lower ray.actors or leave it unset (one actor per GPU group)")
    cpus = 1.0 if cfg.num_cpus_per_actor is None else float(cfg.num_cpus_per_actor)
    if cpus and actors * cpus > total_cpus + 1e-9:
        raise PlacementError(
            f"{actors} actors x {cpus:g} CPUs = {actors * cpus:g} CPUs, but the Ray cluster has {total_cpus:g}; "
            "lower ray.actors or ray.num_cpus_per_actor")
    if engine == "vllm" and gpus > 0 and group > 1:
        args.setdefault("distributed_executor_backend", "mp")
    if share < 1:
        if gpus > 1:
            raise NotShareable(f"each {engine} actor spans {gpus:g} GPUs, and Ray gives whole GPUs past one, so it "
                               "cannot share them with the other engines of the job")
        if engine == "vllm" and gpus > 0:
            args.setdefault("gpu_memory_utilization", round(VLLM_GPU_MEMORY_UTILIZATION * share, 4))
    return Placement(actors, gpus, cpus, args, f"{how}; {why}", share)


def _show(cluster: Mapping[str, float]) -> str:
    return f"CPU {float(cluster.get('CPU', 0)):g}, GPU {float(cluster.get('GPU', 0)):g}"


def cluster_view() -> tuple[dict[str, float], list[float], list[float]]:
    """The connected Ray cluster's resources and each alive node's GPUs and CPUs."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    return (dict(ray.cluster_resources()), [float(n.get("GPU", 0)) for n in nodes],
            [float(n.get("CPU", 0)) for n in nodes])


def actor_bytes(engine: str, weights_bytes: int | None) -> float | None:
    """An engine actor's memory on CPU, roughly: its weights twice over (loading, and float32 for
    half-precision files) and 1 GiB of runtime, plus vLLM's CPU KV cache (VLLM_CPU_KVCACHE_SPACE, GiB,
    4 when unset). None when the weights were not measured."""
    if engine == "sim":  # no weights: a Ray worker, numpy and, where it encodes text, a tokenizer
        return SIM_ACTOR_BYTES
    if weights_bytes is None:
        return None
    kv = float(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or 4) * 2**30 if engine == "vllm" else 0.0
    return 2 * weights_bytes + 2**30 + kv


def place(actor_kwargs: Mapping[str, Any], cfg: RayConfig, share: float = 1.0) -> Placement:
    """``plan`` for the actors of ``actor_kwargs`` on the connected cluster: the engine of their ``spec``
    (an API teacher, whose arguments hold no spec, holds no weights and takes no GPU)."""
    spec: EngineSpec | None = actor_kwargs.get("spec")
    if spec is None:
        return plan("hf", {}, cfg.model_copy(update={"num_gpus_per_actor": 0}), *cluster_view(), share=share)
    size = actor_bytes(spec.engine, spec.weights_bytes)
    return plan(spec.engine, spec.engine_args, cfg, *cluster_view(), actor_bytes=size, share=share)
