"""Rehearsal: a job run whole with simulated engines (``engine: sim``) at the rates of a named device, before
any GPU is paid for.

Every input row is read and validated, every context built and tokenized, every output and journal entry
written (into ``<output>/rehearsal``); only the engines are simulated. What it measures on this machine:
- the engines' simulated device time (each ``SimEngine`` says what it waited, in device seconds);
- the data plane's CPU time: every process of the job (the driver, Ray's daemons and workers) but the
  simulated actors, and the driver's alone; and the engine actors' own host work (select's actors tokenize),
  which a real engine's host does too;
- the tokens the engines were handed.
From these it projects the real run on N such devices: the engines' time is their device seconds over N; the
data plane's, its CPU seconds (the engine actors' host work included) over the cores the cluster gives it; the
driver's does not shrink with N. The largest bounds the run. ``cores_per_device`` is how many data-plane
cores keep one device fed at its rate.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sapray.config import FilterConfig, SelectConfig, TeacherConfig
from sapray.core.costs import SIMULATED_DEVICES
from sapray.storage import child, write_text


@dataclass(frozen=True)
class Rehearsal:
    """A rehearsal's settings: the device simulated, how many of them, how much faster than real time."""

    device: str
    devices: int
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.device not in SIMULATED_DEVICES:
            raise ValueError(f"unknown device {self.device!r} to rehearse on: choose one of "
                             f"{sorted(SIMULATED_DEVICES)}")
        if self.devices < 1 or self.time_scale <= 0:
            raise ValueError("a rehearsal needs at least one device and a positive time scale")

    def engine_args(self, engine_args: dict[str, Any], stats_dir: str) -> dict[str, Any]:
        """The simulated engine's arguments: this device, where its stats go, and the length limit the real engine
        would apply."""
        limit = {k: engine_args[k] for k in ("max_model_len", "max_length") if k in engine_args}
        return {"device": self.device, "time_scale": self.time_scale, "stats_dir": stats_dir, **limit}

    def ray(self, ray_cfg: Any) -> Any:
        """One simulated actor per device; they hold no GPU and reserve no CPU (they sleep while they wait)."""
        return ray_cfg.model_copy(update={"actors": self.devices, "num_gpus_per_actor": 0, "num_cpus_per_actor": 0})


def _simulated(teacher: TeacherConfig, target: SelectConfig, rehearsal: Rehearsal, stats_dir: str) -> TeacherConfig:
    """A model or endpoint teacher as a simulated model teacher, at the rehearsal's device. An endpoint's prompts
    are tokenized with the target's tokenizer (the endpoint's own is not at hand) and its prices kept, so the
    rehearsal projects what its answers would cost; it asks no endpoint. File teachers stay as they are."""
    if teacher.kind == "file":
        return teacher
    model, revision = (teacher.model, teacher.revision) if teacher.on_engine else (target.model, target.revision)
    return TeacherConfig(kind="sim", model=model, revision=revision,
                         engine_args=rehearsal.engine_args(teacher.engine_args, stats_dir),
                         price_per_million_prompt=teacher.price_per_million_prompt,
                         price_per_million_completion=teacher.price_per_million_completion)


def rehearsed(cfg: FilterConfig | SelectConfig, rehearsal: Rehearsal, stats_dir: str) -> FilterConfig | SelectConfig:
    """``cfg`` with simulated engines (the target's and the teachers') on ``rehearsal.devices`` actors each,
    writing into ``<output>/rehearsal`` (and a training set into ``<generate.output>/rehearsal``)."""
    update = {"engine": "sim", "engine_args": rehearsal.engine_args(cfg.engine_args, stats_dir),
              "ray": rehearsal.ray(cfg.ray), "output": child(cfg.output, "rehearsal")}
    if isinstance(cfg, SelectConfig):
        update["strategies"] = [s.model_copy(update={"teacher": _simulated(s.teacher, cfg, rehearsal, stats_dir)})
                                for s in cfg.strategies]
        update["generate"] = cfg.generate.model_copy(update={"output": child(cfg.generate.output, "rehearsal")})
    return cfg.model_copy(update=update)


def write_rehearsal(output: str, result: dict[str, Any]) -> str:
    """The rehearsal's measurements and projection as ``<output>/rehearsal.json`` (the rehearsal's own folder)."""
    uri = child(output, "rehearsal.json")
    write_text(uri, json.dumps(result, indent=2, sort_keys=True) + "\n")
    return uri


def _tree_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of this process and every process below it, by pid."""
    import psutil

    me = psutil.Process()
    out = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.Error:  # ended meanwhile
            continue
    return out


class TreeCpu:
    """This process tree's CPU seconds by pid from now on. Ray ends processes while a job runs (an operator's
    workers once it has finished, the journal's writer), and nobody reaps their CPU time into a process we can
    still read: the tree is polled every ``poll_s``, so a process that ended counts with what it had spent when
    last seen (at most ``poll_s`` of its CPU lost)."""

    poll_s = 0.5

    def __init__(self) -> None:
        self.before = _tree_cpu()
        self.seen = dict(self.before)
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="tree-cpu", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.seen.update(_tree_cpu())

    def spent(self) -> dict[int, float]:
        """Stop polling; each process's CPU seconds since the start."""
        self._stop.set()
        self._poller.join()
        after = {**self.seen, **_tree_cpu()}  # the processes that ended, as last seen
        return {pid: after[pid] - self.before.get(pid, 0.0) for pid in after}


class Meter:
    """CPU (``TreeCpu``) and wall time of a rehearsed job, and what its simulated engines reported."""

    def __init__(self, output: str) -> None:
        # where the simulated engines write their stats: local, and the same for the same output, so the folder
        # (an engine argument) leaves the journal's fingerprint alone and a rerun resumes
        digest = hashlib.sha256(output.encode()).hexdigest()[:12]
        self.stats_dir = Path(tempfile.gettempdir()) / f"sapray-rehearsal-{digest}"
        self.stats_dir.mkdir(parents=True, exist_ok=True)
        for old in self.stats_dir.glob("*.json"):
            old.unlink()
        self.cpu, self.started = TreeCpu(), time.monotonic()

    def engines(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.stats_dir.glob("*.json"))]

    def finish(self, rehearsal: Rehearsal, cores_per_device: float | None = None) -> dict[str, Any]:
        """The measurements and the projection (``cores_per_device``: the data-plane cores the real cluster gives
        each device; None: as many as this machine has for all of them)."""
        wall = time.monotonic() - self.started
        spent = self.cpu.spent()
        engines = self.engines()
        simulated = {e["pid"] for e in engines}
        driver = spent.get(os.getpid(), 0.0)
        data_plane = sum(v for pid, v in spent.items() if pid not in simulated)
        # the engine actors' own host work (select's actors tokenize; every actor converts Arrow), each process's
        # latest report: a real engine's host does it too, so it counts toward the cores a device needs
        actors_cpu = sum({e["pid"]: e.get("process_cpu_s", 0.0) for e in engines}.values())
        tokens = sum(e["scored"] + e["prompt"] + e["generated"] for e in engines)
        device_s = sum(e["waited_s"] for e in engines)
        cores = cores_per_device * rehearsal.devices if cores_per_device else float(os.cpu_count() or 1)
        bounds = {"engines": device_s / rehearsal.devices, "data plane": (data_plane + actors_cpu) / cores,
                  "driver": driver}
        bound = max(bounds, key=bounds.get)
        rate = SIMULATED_DEVICES[rehearsal.device].score_tokens_per_s
        per_cpu_s = tokens / data_plane if data_plane else None
        per_host_cpu_s = tokens / (data_plane + actors_cpu) if data_plane + actors_cpu else None
        return {
            "rehearsal": asdict(rehearsal), "wall_s": round(wall, 2), "engine_actors": len(engines),
            "tokens": tokens, "device_s": round(device_s, 4), "data_plane_cpu_s": round(data_plane, 2),
            "engine_actors_cpu_s": round(actors_cpu, 2), "driver_cpu_s": round(driver, 2),
            "tokens_per_data_plane_cpu_s": round(per_cpu_s) if per_cpu_s else None,
            "cores_per_device": round(rate / per_host_cpu_s, 2) if per_host_cpu_s else None,
            "projection": {"data_plane_cores": cores, "bounds_s": {k: round(v, 2) for k, v in bounds.items()},
                           "wall_s": round(bounds[bound], 2), "bound_by": bound},
        }


def describe(result: dict[str, Any]) -> str:
    """The rehearsal's console lines."""
    r, p = result["rehearsal"], result["projection"]
    return (f"rehearsal on {r['devices']} x {r['device']} (time scale {r['time_scale']:g}): {result['tokens']:,} "
            f"tokens to the engines in {result['wall_s']:.1f} s here\n"
            f"  engines     {result['device_s']:,.1f} device-s ({p['bounds_s']['engines']:,.1f} s on each device)\n"
            f"  data plane  {result['data_plane_cpu_s']:,.1f} CPU-s ({result['tokens_per_data_plane_cpu_s'] or 0:,} "
            f"tokens per CPU-s), {result['engine_actors_cpu_s']:,.1f} more in the engine actors' hosts; driver "
            f"{result['driver_cpu_s']:,.1f} CPU-s\n"
            f"  projected   {p['wall_s']:,.1f} s on {r['devices']} devices with {p['data_plane_cores']:g} data-plane "
            f"cores, bound by the {p['bound_by']}; each device needs "
            f"{result['cores_per_device'] or 0:g} data-plane cores to stay fed at its scoring rate")
