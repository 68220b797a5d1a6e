"""The cluster definitions and job files parse, validate against their schemas, and say what matters:
a CPU head, GPU workers, the job's entrypoint and runtime_env, the Ray version in use."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest
import ray

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
import yaml
from small_job import REPO

from sapray.config import load_config_file

CLUSTER = REPO / "cluster"
JOBS = REPO / "jobs"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def requirement_name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].lower()


# ---- Ray cluster launcher ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def launcher() -> dict:
    return load(CLUSTER / "ray-cluster.yaml")


def test_launcher_config_valid_against_ray_schema(launcher):
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(launcher, schema)
    # what `ray up` does: merge the provider's defaults, then validate again
    validate_config(prepare_config(launcher))


def test_launcher_cpu_head_and_gpu_workers(launcher):
    types = launcher["available_node_types"]
    head = types[launcher["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] == 0
    assert any("--num-cpus=0" in c for c in launcher["head_start_ray_commands"])
    workers = {name: t for name, t in types.items() if name != launcher["head_node_type"]}
    gpu = {name: t for name, t in workers.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu == workers, "every worker type carries GPUs"
    assert any(t.get("min_workers", 0) >= 1 for t in gpu.values()), "GPUs present when a job starts"
    assert any(t["resources"]["GPU"] >= 4 for t in gpu.values()), "a node type for tensor parallelism"
    assert launcher["max_workers"] >= max(t.get("min_workers", 0) for t in workers.values())
    for t in gpu.values():
        assert t["resources"]["CPU"] >= t["resources"]["GPU"]  # one CPU per engine actor at least


def test_launcher_prepares_code_and_model_on_every_node(launcher):
    assert launcher["file_mounts"]["/home/ray/sapray"] == "."
    setup = " && ".join(launcher["setup_commands"])
    assert "pip install" in setup and "/home/ray/sapray[gpu]" in setup
    assert "python -m sapray.engines.models" in setup  # the embedded target at the same path on every node
    assert launcher["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-")


# ---- KubeRay RayJob ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rayjob() -> dict:
    return load(CLUSTER / "rayjob.yaml")


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def test_rayjob_kind_and_entrypoint(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", rayjob["metadata"]["name"])
    spec = rayjob["spec"]
    entry = spec["entrypoint"].split()
    assert entry[:4] == ["python", "-m", "sapray", "select"]
    config = entry[entry.index("--config") + 1]
    assert config == "/home/ray/sapray/jobs/gsm8k.yaml" and (JOBS / "gsm8k.yaml").exists()
    assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode", "SidecarMode")
    assert spec["shutdownAfterJobFinishes"] is True
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**yaml.safe_load(spec["runtimeEnvYAML"]))  # a valid runtime_env


def test_rayjob_cluster_spec(rayjob):
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    (head_container,) = _containers(head)
    assert "nvidia.com/gpu" not in head_container["resources"].get("limits", {})
    assert {p["containerPort"] for p in head_container["ports"]} >= {6379, 8265, 10001}
    assert any("secretRef" in e for e in head_container.get("envFrom", [])), "the driver's storage credentials"

    groups = cluster["workerGroupSpecs"]
    assert groups
    for group in groups:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["minReplicas"] >= 1
        (worker,) = _containers(group)
        limits, requests = worker["resources"]["limits"], worker["resources"]["requests"]
        assert int(limits["nvidia.com/gpu"]) >= 1 and limits["nvidia.com/gpu"] == requests["nvidia.com/gpu"]
        assert int(limits["cpu"]) >= int(limits["nvidia.com/gpu"])
        assert worker["image"] == head_container["image"]


def test_dockerfile_matches_ray_version():
    text = (CLUSTER / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-" in text
    assert "python -m sapray.engines.models" in text


# ---- jobs/ ---------------------------------------------------------------------------------------

def test_runtime_env_is_valid_and_small(tmp_path):
    from ray._private.runtime_env.packaging import _zip_files
    from ray.runtime_env import RuntimeEnv

    env = load(JOBS / "runtime_env.yaml")
    RuntimeEnv(**env)
    assert env["working_dir"] == "."
    assert {".git", ".venv", "runs"} <= set(env["excludes"])
    # every pip requirement is one of sapray's own dependencies
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    ours = {requirement_name(r) for r in project["dependencies"]}
    assert {requirement_name(r) for r in env["pip"]["packages"]} <= ours
    # what `ray job submit --working-dir .` would upload (Ray's own packaging, same excludes)
    out = tmp_path / "pkg.zip"
    _zip_files(str(REPO), env["excludes"], str(out), include_gitignore=True)
    names = zipfile.ZipFile(out).namelist()
    assert "sapray/cli.py" in names and "sapray/data/gsm8k/questions.jsonl" in names
    assert not any(n.startswith((".git/", "runs/")) for n in names)
    assert out.stat().st_size < 100 * 2**20


def test_cluster_job_config_loads():
    cfg = load_config_file(JOBS / "gsm8k.yaml")
    assert cfg.ray.address == "auto" and cfg.ray.actors is None and cfg.ray.num_gpus_per_actor is None
    assert cfg.engine == "vllm"
    for path in (cfg.data.questions, cfg.data.candidates, cfg.exemplars.pool):
        assert Path(path).is_file()
    # the same selection as the demo config, scaled up
    demo = load_config_file(JOBS / "gsm8k_demo.yaml")
    assert (cfg.data, cfg.model, cfg.layout) == (demo.data, demo.model, demo.layout)
