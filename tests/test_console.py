"""The quiet console: sapray's lines on the terminal, everything else in run.log (no model, no Ray)."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from conftest import PATIENCE_S

from sapray import console as console_module
from sapray.console import Console
from sapray.present import session as session_module

ROOT = Path(__file__).resolve().parent.parent


def test_progress_off_a_terminal_is_a_line_now_and_then_and_a_last_line(monkeypatch):
    monkeypatch.setattr(console_module, "PROGRESS_EVERY_S", 0.0)
    err = io.StringIO()
    c = Console()
    c.use(io.StringIO(), err)
    assert list(c.progress(iter(range(3)), 3, "scoring")) == [0, 1, 2]
    lines = err.getvalue().splitlines()
    # no line for the first item (it only says that the first block came back), one per later item, the total
    assert [line.split(" (")[0] for line in lines[:-1]] == ["scoring: 2/3", "scoring: 3/3"]
    assert lines[-1].startswith("scoring: 3/3 in ")


SCRIPT = """
import logging, os, sys
from sapray.console import console
from sapray.present.session import session

with session(sys.argv[1], verbose=False):
    console.say("round 1: 8 questions")
    print("a library's print")
    print("a warning on stderr", file=sys.stderr)
    os.write(2, b"[2026-11-26 E 1 1] core_worker.cc:2465: noise from C++\\n")
    logging.getLogger("ray").warning("Token authentication is enabled")
    print("(raylet) A worker died or was killed while executing a task by an unexpected system error", file=sys.stderr)
    # what a vLLM actor prints as it shuts down: its own words, forwarded, no failure of the job
    print("\x1b[36m(MapWorker(MapBatches(GenerateActor)) pid=9)\x1b[0m (MainProcess pid=10) WARNING [shutdown] "
          "MPClient: engine core exited unexpectedly; starting cleanup", file=sys.stderr)
    print("(MapWorker(MapBatches(GenerateActor)) pid=9) resource_tracker.py:123: UserWarning: resource_tracker: "
          "process died unexpectedly, relaunching.", file=sys.stderr)
console.result("the result")
"""


def test_a_command_session_keeps_the_terminal_to_sapray_and_logs_the_rest(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(SCRIPT))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, cwd=ROOT,
                          timeout=PATIENCE_S)
    assert done.returncode == 0, done.stderr
    log = out / "run.log"
    assert done.stdout.splitlines() == ["the result"]
    assert done.stderr.splitlines() == [
        "round 1: 8 questions",
        f"Ray reported 1 line(s) of lost or crashed workers or actors (details in {log})",
        f"log: {log}",
    ]
    text = log.read_text()
    for line in ("round 1: 8 questions", "a library's print", "a warning on stderr", "noise from C++",
                 "Token authentication is enabled", "A worker died"):
        assert line in text
    # a resumed job appends to its log
    subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, cwd=ROOT,
                   timeout=PATIENCE_S, check=True)
    assert log.read_text().count("noise from C++") == 2


def test_ray_is_shut_down_only_after_ray_data_s_scheduling_threads_end(monkeypatch):
    """An execution abandoned early (mining, once it has its answers) may still be winding down when the job
    ends: Ray's shutdown waits for its scheduling thread (a shutdown under it ends the process with status 1)."""
    release = threading.Event()
    winding_down = threading.Thread(target=release.wait, name="StreamingExecutor-abandoned", daemon=True)
    winding_down._shutdown = True  # as Ray Data's executor (the thread itself) marks itself once told to stop
    winding_down.start()

    class Ray:  # what end_ray uses of the ray module: whether it is up, and its shutdown
        alive_at_shutdown = None

        @staticmethod
        def is_initialized() -> bool:
            return True

        @classmethod
        def shutdown(cls) -> None:
            cls.alive_at_shutdown = winding_down.is_alive()

    monkeypatch.setitem(sys.modules, "ray", Ray)
    threading.Timer(0.5, release.set).start()  # the thread ends on its own, a moment later
    session_module.end_ray()
    assert Ray.alive_at_shutdown is False

    # an execution never told to stop (its iterator held by a traceback) would not end: not waited for
    class Executor(threading.Thread):
        joined = False

        def join(self, timeout=None):
            self.joined = True
            super().join(timeout)

    running = threading.Event()
    live = Executor(target=running.wait, name="StreamingExecutor-live", daemon=True)
    live.start()
    try:
        session_module.end_ray()
        assert not live.joined
    finally:
        running.set()
