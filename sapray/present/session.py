"""A command's session: sapray's lines (``sapray.console``) on the terminal, the rest in run.log.

Quiet by default. While a job command runs, the process's own standard output and error (file
descriptors 1 and 2, where Ray's C++ core, its Python loggers, its warnings and the output it forwards
from workers all write) go to ``run.log`` beside the outputs, and only sapray's lines reach the
terminal. ``-v`` leaves the streams alone and logs at debug level. Ray errors that it recovered from
(a worker that died and was restarted) are counted from the log and reported in one line.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from sapray.console import console

# How long the end of a job waits for Ray Data's scheduling threads before it shuts Ray down (see end_ray).
RAY_DATA_THREADS_PATIENCE_S = 300.0
# Lines of run.log in which Ray itself reports a worker or actor lost (Ray retries the work, or the job fails
# with the error), and crashes anywhere. A line a worker printed itself reaches the log behind the worker's name
# ("(MapWorker(MapBatches(GenerateActor)) pid=123) ..."): what a process says as it shuts down (vLLM's "engine
# core exited unexpectedly", Python's resource tracker) is not a failure of the job.
LOST = re.compile(r"(worker|actor)\b.*\b(died|crashed|exited unexpectedly|was killed)", re.IGNORECASE)
CRASHED = re.compile(r"SIGABRT|SIGSEGV|Fatal Python error")
FORWARDED = re.compile(r"^(\x1b\[[0-9;]*m)?\((?!raylet\)|gcs_server\)).*?pid=\d+[^)]*\)")


def trouble(line: str) -> bool:
    """Whether a run.log line reports a lost worker or actor (Ray's own words) or a crash."""
    return bool(CRASHED.search(line) or (LOST.search(line) and not FORWARDED.match(line)))


_FORMAT = "%(asctime)s %(name)s: %(message)s"


def _real_fd(stream: IO[str], fd: int) -> bool:
    """Whether ``stream`` writes to file descriptor ``fd`` (not so under pytest or click's test runner)."""
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        return False


def _logging(verbose: bool, stream: IO[str]) -> None:
    logging.basicConfig(level=logging.INFO, format=_FORMAT, datefmt="%H:%M:%S", stream=stream, force=True)
    logging.getLogger("sapray").setLevel(logging.DEBUG if verbose else logging.INFO)


def end_ray() -> None:
    """Shut down the Ray this process started or joined, once Ray Data's executions have stopped.

    A job that stops reading a dataset early (mining, once it has its answers) leaves its execution to be
    shut down when the iterator is collected, and Ray Data gives that execution's scheduling thread 2 s to
    stop. On a busy machine it can take longer; a ``ray.shutdown()`` meanwhile ends the process from Ray's
    C++ core (exit status 1, no message) after the job's outputs were written. So: collect, then wait for
    those threads, with a generous bound.
    """
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    gc.collect()  # abandoned iterators: their executors shut down as they are collected
    deadline = time.monotonic() + RAY_DATA_THREADS_PATIENCE_S
    for thread in threading.enumerate():
        # the thread is the executor; only one already told to stop ends by itself (one whose iterator a
        # traceback still holds would not, and is left to the shutdown)
        if thread.name.startswith("StreamingExecutor-") and getattr(thread, "_shutdown", False):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
    ray.shutdown()


@contextmanager
def session(output: str | None, verbose: bool) -> Iterator[None]:
    """Run a job command quietly (see the module's text); the log goes to ``output``/run.log."""
    streams_are_fds = _real_fd(sys.stdout, 1) and _real_fd(sys.stderr, 2)
    if verbose or not streams_are_fds:  # -v, or under a test runner: nothing to move
        console.use(None, None)
        _logging(verbose, sys.stderr)
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    log_file = tempfile.NamedTemporaryFile("w+b", prefix="sapray-", suffix=".log", delete=False)
    saved = os.dup(1), os.dup(2)
    terminal_out, terminal_err = os.fdopen(os.dup(1), "w", buffering=1), os.fdopen(os.dup(2), "w", buffering=1)
    console.use(terminal_out, terminal_err, mirror=True)
    os.dup2(log_file.fileno(), 1)
    os.dup2(log_file.fileno(), 2)
    _logging(False, sys.stderr)
    try:
        yield
    finally:
        try:
            end_ray()  # Ray forwards worker output late: let it land in the log, not after
        finally:
            _restore(saved, log_file, output)
        console.use(None, None)
        terminal_out.close()
        terminal_err.close()


def _restore(saved: tuple[int, int], log_file: Any, output: str | None) -> None:
    """The process's own stdout and stderr back from the log, and the log kept beside the outputs."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    for fd in saved:
        os.close(fd)
    console.mirror = False  # the log is closed: what follows is for the terminal alone
    log_file.close()
    text = Path(log_file.name).read_bytes()
    where = _keep_log(text, output) or log_file.name
    if where != log_file.name:
        os.unlink(log_file.name)
    lost = sum(1 for line in text.decode(errors="replace").splitlines() if trouble(line))
    if lost:
        console.say(f"Ray reported {lost} line(s) of lost or crashed workers or actors (details in {where})")
    console.say(f"log: {where}")


def _keep_log(text: bytes, output: str | None) -> str | None:
    """Put the command's log at ``output``/run.log (appended locally: a resumed job keeps its history);
    None if it cannot be written there."""
    if not output:
        return None
    from sapray.storage import child, filesystem

    target = child(output, "run.log")
    fs, path = filesystem(target)
    try:
        if "://" in target:
            with fs.open_output_stream(path) as f:
                f.write(text)
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as f:
                f.write(text)
    except OSError:
        return None
    return target
