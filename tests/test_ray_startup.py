"""Which errors of a starting local Ray are Ray's fixed startup waits running out (retried), and which are not;
a start that ran out leaves nothing running."""

from __future__ import annotations

from sapray.dataplane.raydata import startup_timed_out


def test_the_startup_timeouts_seen_on_a_busy_machine_are_retried():
    # the raylet's fixed 30 s (a busy fresh-clone run, session 5) and the GCS port file (load 60+, session 6)
    assert startup_timed_out(Exception("The current node timed out during startup. This could happen because ..."))
    assert startup_timed_out(RuntimeError("Timed out waiting for file /tmp/ray/session_x/gcs_server_port_2f1a"))
    assert not startup_timed_out(ValueError("address 'ray://nowhere' is not a valid Ray address"))
    assert not startup_timed_out(RuntimeError("Maybe you called ray.init twice by accident?"))


def test_a_start_that_timed_out_leaves_no_process_behind(monkeypatch):
    """What a timed-out ``ray.init`` started (its node's daemons, their workers) is stopped before the
    next try: left running, each try's GCS server and raylet made a busy machine busier (21 GCS servers
    at load 80 in session 9's busy run) until no try could succeed."""
    import subprocess
    import sys

    import psutil
    import ray

    from sapray.dataplane import raydata

    left: list[psutil.Process] = []

    def init(**kwargs):
        if not left:  # the first try: a "daemon" with a "worker" of its own, then Ray's timeout
            daemon = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                                       "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
                                       "time.sleep(600)"])
            process = psutil.Process(daemon.pid)
            while not process.children():
                pass
            left.extend([process, *process.children()])
            raise Exception("The current node timed out during startup. This could happen because ...")

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    raydata.start_local_ray(600)
    assert len(left) == 2
    assert not [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
