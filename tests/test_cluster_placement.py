"""Placement: GPUs per actor and actor counts from the config and the cluster's resources, and the
checks that fail a job before any actor starts."""

from __future__ import annotations

import pytest
from conftest import init_local_ray

from sapray.config import RayConfig
from sapray.dataplane.placement import NotShareable, PlacementError, plan

CPU2 = {"CPU": 2.0, "memory": 2e10}


def ray_cfg(**kw) -> RayConfig:
    return RayConfig(**kw)


def test_cpu_cluster_defaults_to_one_single_threaded_actor_per_cpu_as_memory_allows():
    p = plan("hf", {}, ray_cfg(), CPU2, [0.0])
    assert (p.actors, p.num_gpus, p.num_cpus) == (2, 0.0, 1.0)
    p = plan("vllm", {}, ray_cfg(actors=1), CPU2, [0.0])
    assert (p.actors, p.num_gpus, p.num_cpus) == (1, 0.0, 1.0)
    assert p.engine_args == {}
    # counted per node: 3 + 5 CPUs hold four 2-CPU actors, not 8 // 2 of them spread over both
    p = plan("hf", {}, ray_cfg(num_cpus_per_actor=2), {"CPU": 8.0}, [0.0, 0.0], [3.0, 5.0])
    assert (p.actors, p.num_cpus) == (3, 2.0)
    # memory caps the count: 64 cores, but 20 GiB holds only two engines of 8 GiB
    p = plan("vllm", {}, ray_cfg(), {"CPU": 64.0, "memory": 20 * 2**30}, [0.0], [64.0], actor_bytes=8 * 2**30)
    assert p.actors == 2 and "holds 2 engines" in p.reason


def test_actor_memory_estimate(tmp_path, monkeypatch):
    from sapray.config import TeacherConfig
    from sapray.dataplane.actors import engine_spec
    from sapray.dataplane.placement import actor_bytes
    from sapray.engines.models import locate

    (tmp_path / "model.safetensors").write_bytes(b"0" * 1000)
    (tmp_path / "config.json").write_text("{}")
    # measured where the driver resolves the model, carried by the actors' spec
    spec = engine_spec(TeacherConfig(kind="hf", model=str(tmp_path)), locate(str(tmp_path)))
    assert spec.weights_bytes == 1000
    assert actor_bytes("hf", spec.weights_bytes) == 2000 + 2**30
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    assert actor_bytes("vllm", spec.weights_bytes) == 2000 + 2**30 + 2 * 2**30
    assert actor_bytes("hf", None) is None  # not measured


def test_engines_that_take_turns_keep_their_actors_and_reserve_a_share():
    """A run's teacher and scorer stay resident together: each keeps the actors and threads it would have
    alone, reserves half, and all of them fit the cluster at once."""
    alone = plan("hf", {}, ray_cfg(), CPU2, [0.0])
    shared = plan("hf", {}, ray_cfg(), CPU2, [0.0], share=0.5)
    assert (shared.actors, shared.num_cpus) == (alone.actors, alone.num_cpus) == (2, 1.0)
    assert shared.reserved_cpus == 0.5 and 2 * shared.actors * shared.reserved_cpus == 2.0
    # memory: each of two engines gets half of it (16 GiB holds two of 8 GiB alone, one each when sharing)
    cluster = {"CPU": 64.0, "memory": 16 * 2**30}
    assert plan("vllm", {}, ray_cfg(), cluster, [0.0], [64.0], actor_bytes=8 * 2**30).actors == 2
    assert plan("vllm", {}, ray_cfg(), cluster, [0.0], [64.0], actor_bytes=8 * 2**30, share=0.5).actors == 1
    # a vLLM engine on a shared GPU gets its share of the GPU's memory
    gpu = plan("vllm", {}, ray_cfg(), {"CPU": 32, "GPU": 8}, [8], share=0.5)
    assert (gpu.actors, gpu.reserved_gpus, gpu.engine_args["gpu_memory_utilization"]) == (8, 0.5, 0.45)


def test_a_gpu_group_wider_than_one_gpu_cannot_be_shared():
    with pytest.raises(NotShareable, match="spans 2 GPUs"):
        plan("vllm", {"tensor_parallel_size": 2}, ray_cfg(), {"CPU": 32, "GPU": 8}, [4, 4], share=0.5)


def test_hf_takes_one_gpu_each_and_one_actor_per_gpu():
    p = plan("hf", {}, ray_cfg(), {"CPU": 32, "GPU": 8}, [4, 4])
    assert (p.actors, p.num_gpus) == (8, 1.0)


def test_vllm_tensor_parallel_sets_gpus_per_actor():
    p = plan("vllm", {"tensor_parallel_size": 2}, ray_cfg(), {"CPU": 32, "GPU": 8}, [4, 4])
    assert (p.actors, p.num_gpus) == (4, 2.0)
    assert p.engine_args == {"tensor_parallel_size": 2, "distributed_executor_backend": "mp"}
    p = plan("vllm", {"tensor_parallel_size": 2, "pipeline_parallel_size": 2}, ray_cfg(), {"CPU": 32, "GPU": 8},
             [4, 4])
    assert (p.actors, p.num_gpus) == (2, 4.0)
    # one GPU per engine: vLLM's own default executor, nothing injected
    p = plan("vllm", {"max_model_len": 4096}, ray_cfg(), {"CPU": 32, "GPU": 8}, [8])
    assert (p.actors, p.num_gpus, p.engine_args) == (8, 1.0, {"max_model_len": 4096})


def test_gpu_groups_are_counted_per_node():
    # 3 GPUs on each of two nodes hold one 2-GPU group each, not three
    p = plan("vllm", {"tensor_parallel_size": 2}, ray_cfg(), {"CPU": 16, "GPU": 6}, [3, 3])
    assert p.actors == 2


def test_explicit_settings_win():
    p = plan("hf", {}, ray_cfg(actors=2, num_gpus_per_actor=0.5), {"CPU": 8, "GPU": 1}, [1])
    assert (p.actors, p.num_gpus) == (2, 0.5)
    p = plan("hf", {}, ray_cfg(num_gpus_per_actor=0.5), {"CPU": 8, "GPU": 2}, [1, 1])
    assert p.actors == 4
    p = plan("hf", {}, ray_cfg(num_gpus_per_actor=0), {"CPU": 8, "GPU": 2}, [2])
    assert (p.actors, p.num_gpus) == (8, 0.0)  # CPU engines on a GPU cluster, when asked: one per CPU


@pytest.mark.parametrize(("engine", "engine_args", "cfg", "cluster", "nodes", "message"), [
    ("hf", {}, {"num_gpus_per_actor": 1}, CPU2, [0], "needs 1 GPU(s)"),
    ("vllm", {"tensor_parallel_size": 2}, {}, CPU2, [0], "has no GPUs"),
    ("vllm", {"tensor_parallel_size": 4}, {}, {"CPU": 16, "GPU": 4}, [2, 2], "must fit on one node"),
    ("vllm", {"tensor_parallel_size": 4}, {"num_gpus_per_actor": 1}, {"CPU": 16, "GPU": 4}, [4], "set it to 4"),
    ("hf", {}, {"actors": 3, "num_gpus_per_actor": 2}, {"CPU": 16, "GPU": 4}, [4], "3 actors x 2 GPUs"),
    ("hf", {}, {"actors": 3}, CPU2, [0], "3 actors x 1 CPUs = 3 CPUs"),
])
def test_impossible_placements_fail_with_the_reason(engine, engine_args, cfg, cluster, nodes, message):
    with pytest.raises(PlacementError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan(engine, engine_args, ray_cfg(**cfg), cluster, nodes)


def test_config_accepts_unset_actors_and_gpus():
    cfg = RayConfig()
    assert cfg.actors is None and cfg.num_gpus_per_actor is None


@pytest.fixture(scope="module")
def ray_cpu():
    """A Ray of one CPU: the test process's shared one (``ray_local``) is stopped first, started again
    by the next module that asks for it."""
    import ray

    ray.shutdown()
    init_local_ray(num_cpus=1, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


class NeverStarted:
    def __init__(self, **kwargs):
        raise AssertionError("no actor may start when placement fails")

    def __call__(self, batch):
        return batch


def test_an_actor_pass_fails_at_once_without_gpus(ray_cpu, tmp_path):
    from sapray.dataplane.raydata import map_blocks
    from sapray.engines.base import EngineSpec

    blocks = [[{"x": 0}, {"x": 1}], [{"x": 2}, {"x": 3}]]
    # "At once": the call itself raises, before it returns the lazy iterator that would start actors
    # (which would wait for the GPUs forever); no clock needed.
    with pytest.raises(PlacementError, match="has no GPUs"):
        map_blocks(blocks, NeverStarted, {"spec": EngineSpec("vllm", str(tmp_path), None, {"tensor_parallel_size": 2})},
                   RayConfig(batch_size=2))
    with pytest.raises(PlacementError, match="needs 1 GPU"):
        map_blocks(blocks, NeverStarted, {"spec": EngineSpec("hf", str(tmp_path))},
                   RayConfig(batch_size=2, num_gpus_per_actor=1))
