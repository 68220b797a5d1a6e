"""One run at a time on an output: the lock a job command holds on its output folder (a local path or a URI).

A run writes ``lock.json`` (its host, pid, start time and a heartbeat it refreshes every HEARTBEAT_S) before
it reads or writes anything else there, and removes it when it ends. A second run on the same output finds
it and stops, naming the holder (with priced teachers, both would pay). It takes the lock over only when the
holder is gone: on the same host, when its pid is no longer alive; from another host (whose processes it
cannot see), when the heartbeat is older than STALE_S (the hosts' clocks are assumed to agree well within it).

A local lock is created exclusively (``O_EXCL``). An object store has no such create, and a takeover replaces
a file, so there the run writes its lock, waits SETTLE_S and reads it back: of two runs that wrote within
that time, only the last writer finds its own token, and the other stops.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timezone

from sapray.console import console
from sapray.core.errors import ConfigError
from sapray.storage import Unreadable, child, filesystem, read_json, with_suffix, write_text

LOCK = "lock.json"
# how often the holder refreshes its heartbeat (the variable: for tests that wait for a beat)
HEARTBEAT_S = float(os.environ.get("SAPRAY_LOCK_HEARTBEAT_S", "30"))
STALE_S = 300.0  # a holder on another host without a heartbeat for this long is taken to be gone
SETTLE_S = 2.0  # written, then read back after this long, where the create cannot be exclusive


class OutputHeld(ConfigError):
    """Another run, alive, holds the output."""


def lock_of(output: str, file: bool = False) -> str:
    """The lock of an output folder (``<output>/lock.json``), or of an output file (``x.jsonl`` -> ``x.lock.json``,
    beside it)."""
    return with_suffix(output, f".{LOCK}") if file else child(output, LOCK)


def _read(uri: str) -> dict | None:
    """The holder written in the lock; None when there is none, or only a lock file cut short (nobody's). A lock
    that is there but cannot be read is an error: taken for absent, it would let a second run in."""
    try:
        return read_json(uri)
    except Unreadable as exc:
        if exc.unparsable:  # a lock file cut short: nobody's
            return None
        raise ConfigError(f"{uri}: the output's lock cannot be read ({exc.why}); another run may hold the "
                          "output") from None


def _gone(holder: dict) -> str | None:
    """Why the holder is gone (None: it may still be running)."""
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder.get("pid", 0)), 0)
        except ProcessLookupError:
            return f"pid {holder['pid']} is no longer running"
        except PermissionError:  # alive, another user's
            return None
        return None
    silent = time.time() - float(holder.get("heartbeat", 0))
    return f"no heartbeat for {silent:.0f} s (over {STALE_S:.0f} s)" if silent > STALE_S else None


def _describe(holder: dict) -> str:
    started = datetime.fromtimestamp(float(holder.get("started", 0)), timezone.utc).isoformat(timespec="seconds")
    beat = time.time() - float(holder.get("heartbeat", 0))
    return (f"host {holder.get('host')}, pid {holder.get('pid')}, started {started}, last heartbeat {beat:.0f} s "
            "ago")


def _create_exclusive(path: str, text: str) -> bool:
    """A local lock file created only when there is none, whole (written aside, then linked: a link fails
    where the name exists): whether this run created it."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    aside = f"{path}.{os.getpid()}.tmp"
    with open(aside, "w") as f:
        f.write(text)
    try:
        os.link(aside, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(aside)


@contextmanager
def held(uri: str) -> Iterator[None]:
    """Hold the lock file ``uri`` (``lock_of``) while the block runs; OutputHeld, naming the holder, when another
    run that is not gone holds it."""
    now = time.time()
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "started": now, "heartbeat": now,
            "token": uuid.uuid4().hex}
    fs, path = filesystem(uri)
    local = "://" not in uri
    folder = os.path.dirname(path) or "."
    made_folder = local and not os.path.isdir(folder)  # removed again at the end if the run wrote nothing there
    if not (local and _create_exclusive(path, json.dumps(mine))):
        holder = _read(uri)
        if holder is not None and holder.get("token") != mine["token"]:
            why = _gone(holder)
            if why is None:
                raise OutputHeld(f"{uri}: another run holds this output ({_describe(holder)}); wait for it to end, "
                                 f"or write to another output (a holder on another host is taken over after "
                                 f"{STALE_S:.0f} s without a heartbeat)")
            console.say(f"taking over {uri} from an earlier run ({_describe(holder)}): {why}")
        write_text(uri, json.dumps(mine))
        time.sleep(SETTLE_S)
        winner = _read(uri)
        if winner is None or winner.get("token") != mine["token"]:
            raise OutputHeld(f"{uri}: another run took this output at the same moment "
                             f"({_describe(winner or {})}); write to another output, or run again once it ends")
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(uri, mine, stop), daemon=True, name="sapray-lock-heartbeat")
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        holder = _read(uri)
        if holder is not None and holder.get("token") == mine["token"]:
            fs.delete_file(path)
            if made_folder:
                with suppress(OSError):  # not empty: the run (or another) wrote there
                    os.rmdir(folder)


def _heartbeat(uri: str, mine: dict, stop: threading.Event) -> None:
    """Refresh the lock's heartbeat until ``stop``; stop refreshing once another run has taken the lock over."""
    while not stop.wait(HEARTBEAT_S):
        holder = _read(uri)
        if holder is None or holder.get("token") != mine["token"]:
            console.say(f"{uri}: another run took this output over; this run's writes there may be mixed with "
                        "its")
            return
        try:
            write_text(uri, json.dumps({**mine, "heartbeat": time.time()}))
        except OSError as exc:  # a storage hiccup: the next beat tries again, well within STALE_S
            console.say(f"{uri}: heartbeat not written ({exc})")
