"""One run at a time on an output: a second run stops naming the holder (host, pid, start), and takes the output
over only once the holder is gone (its pid dead on this host; its heartbeat stale from another). The holder is a
real second process, killed with SIGKILL; waits are on events (the lock file's contents), never on time."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from conftest import BUCKET, kill_hard, wait_until
from small_job import REPO

from sapray.core.errors import ConfigError
from sapray.dataplane.lock import STALE_S, OutputHeld, held, lock_of
from sapray.storage import filesystem, read_text, write_text

HOLD = """
import sys, pathlib
from sapray.dataplane.lock import held
with held(sys.argv[1]):
    pathlib.Path(sys.argv[2]).touch()
    while not pathlib.Path(sys.argv[3]).exists():
        __import__("time").sleep(0.05)
"""


def holder(lock: str, tmp_path: Path, env: dict | None = None) -> subprocess.Popen:
    """A second process holding ``lock`` until tmp_path/release exists; returns once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, lock, str(tmp_path / "holding"), str(tmp_path / "release")],
                            env={**os.environ, "SAPRAY_LOCK_HEARTBEAT_S": "0.2", **(env or {})},
                            start_new_session=True)
    wait_until((tmp_path / "holding").exists, "the holder to take the lock", proc, poll_s=0.1)
    return proc


def contents(lock: str) -> dict | None:
    fs, path = filesystem(lock)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    return json.loads(read_text(path, fs))


def test_a_second_run_is_refused_naming_the_holder_and_takes_over_once_its_pid_is_gone(tmp_path, capsys):
    lock = lock_of(str(tmp_path / "out"))
    proc = holder(lock, tmp_path)
    try:
        first = contents(lock)
        assert first["pid"] == proc.pid and first["host"] == socket.gethostname()
        with pytest.raises(OutputHeld, match=rf"another run holds this output \(host {socket.gethostname()}, "
                                             rf"pid {proc.pid}, started 20"):
            with held(lock):
                pass
        # the holder refreshes its heartbeat while it runs
        wait_until(lambda: contents(lock)["heartbeat"] > first["heartbeat"], "a heartbeat", proc, poll_s=0.1)
    finally:
        kill_hard(proc)
    with held(lock):
        assert contents(lock)["pid"] == os.getpid()
    assert f"pid {proc.pid} is no longer running" in capsys.readouterr().err
    assert contents(lock) is None  # released on a normal exit


def refused(held_output: Path, tmp_path: Path, *command: str) -> tuple[subprocess.CompletedProcess, int]:
    """(``sapray COMMAND`` run while a second process holds ``held_output``, that holder's pid)."""
    proc = holder(lock_of(str(held_output)), tmp_path)
    try:
        done = subprocess.run([sys.executable, "-m", "sapray", *command], capture_output=True, text=True,
                              env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    finally:
        (tmp_path / "release").touch()
        proc.wait()
    return done, proc.pid


def test_the_cli_says_in_one_line_that_another_run_holds_the_output(tmp_path):
    output = tmp_path / "out"
    done, pid = refused(output, tmp_path, "demo", "--output", str(output))
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {output}/lock.json: another run holds this output "
                                                   f"(host {socket.gethostname()}, pid {pid}")
    assert contents(lock_of(str(output))) is None  # the holder released it when it ended


def test_run_holds_its_training_set_too_so_two_runs_never_write_one_training_set(tmp_path):
    """`sapray run` writes its output and generate.output: a run on another output that holds this training set
    stops this one before it starts, and the output's own lock is let go."""
    train, output = tmp_path / "train", tmp_path / "out"
    done, pid = refused(train, tmp_path, "run", "--config", str(REPO / "jobs/gsm8k_run.yaml"), "--output",
                        str(output), "--set", f"generate.output={train}")
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"Error: {train}/lock.json: another run holds this output (host {socket.gethostname()}, pid {pid}, "
        f"started {done.stderr.split('started ')[1].split(')')[0]}); wait for it to end, or write to another "
        f"output (a holder on another host is taken over after {STALE_S:.0f} s without a heartbeat)"]
    assert not output.exists()  # its lock let go, and the folder the lock made removed: nothing written


def test_a_holder_on_another_host_is_taken_over_only_once_its_heartbeat_is_stale(tmp_path, capsys):
    lock = lock_of(str(tmp_path / "out"))
    other = {"host": "elsewhere", "pid": 1, "started": time.time() - 60, "token": "theirs"}
    write_text(lock, json.dumps({**other, "heartbeat": time.time()}))
    with pytest.raises(OutputHeld, match="host elsewhere, pid 1"):
        with held(lock):
            pass
    write_text(lock, json.dumps({**other, "heartbeat": time.time() - STALE_S - 5}))
    with held(lock):
        assert contents(lock)["host"] == socket.gethostname()
    assert "no heartbeat for" in capsys.readouterr().err


def test_a_lock_that_cannot_be_read_is_an_error_not_a_free_output(tmp_path):
    """A lock file there but unreadable (here: a folder in its place; elsewhere a permission or a network error)
    must not read as "nobody holds it": the run stops, naming it."""
    lock = lock_of(str(tmp_path / "out"))
    Path(lock).mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"lock\.json: the output's lock cannot be read"):
        with held(lock):
            pass


def test_a_mine_output_file_has_its_lock_beside_it():
    assert lock_of("s3://b/x/ex.jsonl?endpoint_override=h", file=True) == "s3://b/x/ex.lock.json?endpoint_override=h"


def test_on_s3_the_same(s3_env, tmp_path):
    lock = lock_of(f"s3://{BUCKET}/locked-out")
    proc = holder(lock, tmp_path, s3_env)
    try:
        with pytest.raises(OutputHeld, match=f"pid {proc.pid}"):
            with held(lock):
                pass
    finally:
        kill_hard(proc)
    with held(lock):
        assert contents(lock)["pid"] == os.getpid()
    assert contents(lock) is None
