"""Cluster mode for real: a two-node Ray cluster on 127.0.0.1 (a head with the dashboard, a second
node beside it, one CPU each), the select job submitted with ``ray job submit`` exactly as on a real
cluster, and its outputs compared with a local-mode run of the same config.

The cluster is hermetic: its own temp dirs and ports, and its own auth token (RAY_AUTH_MODE=token,
RAY_AUTH_TOKEN), so it neither joins nor disturbs any other Ray on the machine. It is torn down by
process group and by its temp dir in a ``finally`` (not ``ray stop --force``, which would end every
Ray process on the machine, other users' included).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import PATIENCE_S, wait_until
from small_job import DATA_DIR, REPO, exemplar_rows, jsonl, small_config

from sapray.dataplane.raydata import STARTUP_TIMEOUTS

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

RAY = str(Path(sys.executable).with_name("ray"))
# Keep the working_dir upload small (Ray's limit is 100 MiB; sapray's is ~1 MB).
EXCLUDES = [".git", ".venv", "venv", "runs", "out", "build", "**/__pycache__", ".pytest_cache", ".ruff_cache",
            "*.egg-info"]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalCluster:
    """A head and extra nodes started with ``ray start``, each in its own process group."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.gcs, self.dashboard, self.client, agent = free_ports(4)
        self.agent_ports = [agent]
        self.groups: list[int] = []
        self.env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0",
                        PYTHONUNBUFFERED="1")
        self.api = f"http://127.0.0.1:{self.dashboard}"

    def _start(self, args: list[str], name: str, attempts: int = 5) -> None:
        """``ray start``; again (after stopping what it left) when a node missed one of Ray's fixed startup
        waits, as sapray's own local start does on a busy machine (``raydata.startup_timed_out``)."""
        for attempt in range(attempts):
            log = (self.root / f"{name}.log").open("w")
            proc = subprocess.Popen([RAY, "start", *args, "--disable-usage-stats"], env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            self.groups.append(proc.pid)  # the group outlives `ray start`: its daemons stay in it
            if proc.wait(timeout=PATIENCE_S) == 0:
                return
            text = (self.root / f"{name}.log").read_text()
            if attempt == attempts - 1 or not any(t in text for t in STARTUP_TIMEOUTS):
                raise RuntimeError(f"ray start ({name}) failed:\n{text[-4000:]}")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.groups.pop(), signal.SIGKILL)

    def start_head(self) -> None:
        self._start(["--head", "--node-ip-address", "127.0.0.1", "--port", str(self.gcs),
                     "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard),
                     "--include-dashboard", "true", "--ray-client-server-port", str(self.client),
                     "--dashboard-agent-listen-port", str(self.agent_ports[0]),
                     "--num-cpus", "1", "--num-gpus", "0", "--temp-dir", str(self.root / "h")], "head")

    def add_node(self) -> None:
        i = len(self.agent_ports)
        (agent,) = free_ports(1)
        self.agent_ports.append(agent)
        # A second node on the same machine: its own temp dir (sockets, session files) and agent port.
        self._start(["--address", f"127.0.0.1:{self.gcs}", "--num-cpus", "1", "--num-gpus", "0",
                     "--dashboard-agent-listen-port", str(agent), "--temp-dir", str(self.root / f"w{i}")], f"node{i}")

    def ray(self, *args: str, timeout: float = PATIENCE_S, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run([RAY, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n"
                               f"{out.stderr[-3000:]}")
        return out

    def alive_nodes(self) -> list[str]:
        out = self.ray("list", "nodes", "--address", self.api, "--format", "json", check=False)
        if out.returncode != 0:
            return []
        return [n["node_id"] for n in json.loads(out.stdout) if n.get("state") == "ALIVE"]

    def wait_for_nodes(self, n: int) -> list[str]:
        wait_until(lambda: len(self.alive_nodes()) >= n, f"{n} Ray nodes to be alive", poll_s=2)
        return self.alive_nodes()

    def kill_node(self, i: int) -> None:
        """SIGKILL every process of node ``i`` (its ``ray start`` group: raylet, agents and workers)."""
        os.killpg(self.groups[i], signal.SIGKILL)

    def stop(self) -> None:
        """End what this cluster started, by process group, then any straggler whose command line
        names this cluster's temp dir (job drivers run in their own group)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pgid in self.groups:
                try:
                    os.killpg(pgid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            for pid in _pids_mentioning(str(self.root)):
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(3 if sig == signal.SIGTERM else 0)


def _pids_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


def test_select_job_on_two_node_cluster():
    """One race, three ways: in local mode; submitted to the cluster with an engine on each node, one node
    killed while it scores; the same command again. Its outputs are the local run's, byte for byte."""
    # Short root: Ray's unix socket paths (root/h/session_.../sockets/...) must stay under 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="sapray-", dir="/tmp"))
    cluster = LocalCluster(root)
    try:
        (root / "exemplars.jsonl").write_text(jsonl(exemplar_rows()))
        config = small_config(str(DATA_DIR / "questions.jsonl"), str(DATA_DIR / "candidates.jsonl"),
                              str(root / "exemplars.jsonl"), str(root / "unused"))
        (root / "job.yaml").write_text(yaml.safe_dump(config))
        # A race of 3 rounds of 2 questions, 6 requests a block: both engines busy in every round.
        race = ["-m", "sapray", "select", "--config", str(root / "job.yaml"), "--set", "sample.max_questions=6",
                "--set", "sample.round_size=2", "--set", "ray.batch_size=6"]
        local_mode = ["--set", "ray.address=local", "--set", "ray.actors=1"]

        # Local mode first (its own single-node Ray; one actor), so the two runs do not share the CPUs.
        t0 = time.monotonic()
        local = subprocess.run([sys.executable, *race, *local_mode, "--output", str(root / "local")], cwd=REPO,
                               env=cluster.env, capture_output=True, text=True, timeout=PATIENCE_S)
        assert local.returncode == 0, local.stderr[-4000:]
        local_s = time.monotonic() - t0

        t0 = time.monotonic()
        cluster.start_head()
        cluster.add_node()
        nodes = cluster.wait_for_nodes(2)
        assert len(nodes) == 2
        start_s = time.monotonic() - t0

        # Submitted as on a real cluster. Ray Data starts both actors before sending work, one per node (a CPU
        # each). Once round 1 is journaled the second node is killed: the engine on it leaves the pool, the
        # batch it held goes to the head's engine, and the job finishes (it never waits for the lost engine).
        job_id = f"sapray-node-lost-{secrets.token_hex(4)}"
        runtime_env = {"excludes": EXCLUDES, "env_vars": {
            "RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": str(int(PATIENCE_S)),
            "RAY_DATA_ACTOR_DEFAULT_MAX_TASKS_IN_FLIGHT_TO_MAX_CONCURRENCY_FACTOR": "1"}}
        out = root / "cluster"
        cluster.ray("job", "submit", "--no-wait", "--address", cluster.api, "--submission-id", job_id,
                    "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env), "--",
                    sys.executable, *race, "--set", "ray.address=auto", "--set", "ray.actors=2", "--output", str(out))
        wait_until(lambda: (out / "journal" / "round-0001.json").exists(), "round 1 of the race journaled")
        engines = json.loads(cluster.ray("list", "actors", "--address", cluster.api, "--format", "json",
                                         "--filter", "class_name=ResidentEngine", "--filter", "state=ALIVE").stdout)
        assert {e["node_id"] for e in engines} == set(nodes), engines  # an engine on each node
        cluster.kill_node(1)

        def ended() -> bool:
            status = cluster.ray("job", "status", "--address", cluster.api, job_id, check=False).stdout
            return any(word in status for word in ("succeeded", "failed", "stopped"))

        wait_until(ended, "the job to end after its node was lost", poll_s=2)
        job_s = time.monotonic() - t0 - start_s
        status = cluster.ray("job", "status", "--address", cluster.api, job_id).stdout
        logs = cluster.ray("job", "logs", "--address", cluster.api, job_id).stdout
        assert "round 1: 2 questions" in logs  # progress, as the job runs
        assert f"Job '{job_id}' succeeded" in status or "every engine actor of this pool was lost" in logs, (
            f"{status}\n{logs[-4000:]}")
        finished = f"Job '{job_id}' succeeded" in status
        if finished:
            assert "winner:" in logs and f"wrote {out}/report.html, selection.json" in logs
        print(f"\nlocal run {local_s:.1f}s; cluster start {start_s:.1f}s; job {job_s:.1f}s "
              f"({'finished' if finished else 'stopped: every engine lost'})")

        # The same command again resumes from the journal; the selection is the local run's, byte for byte
        # (fixed-size Ray Data blocks make scores independent of the pool and of the engine that scored them).
        again = subprocess.run([sys.executable, *race, *local_mode, "--output", str(out)], cwd=REPO,
                               env=cluster.env, capture_output=True, text=True, timeout=PATIENCE_S)
        assert again.returncode == 0, again.stderr[-4000:]
        assert "resuming:" in again.stderr and "from the journal" in again.stderr
        for name in ("selection.json", "exemplars.jsonl", "scores.parquet"):
            assert (out / name).read_bytes() == (root / "local" / name).read_bytes(), name
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
