"""The console: where sapray's own lines go, a line per stage, a progress line for long stages, the result.

Every layer that reports to a person says it here (the data plane's rounds and stages, the jobs); where the
lines end up, the terminal alone or also ``run.log``, is the command's session (``sapray.present.session``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, TypeVar

T = TypeVar("T")


# A non-terminal console (CI, a file) gets a progress line this often; a terminal gets a live one.
PROGRESS_EVERY_S = 10.0


class Console:
    """Where sapray's own lines go: ``out`` for results, ``err`` for stage and progress lines."""

    def __init__(self) -> None:
        self.use(None, None)

    def use(self, out: IO[str] | None, err: IO[str] | None, mirror: bool = False) -> None:
        """Write to these streams (None: to whatever sys.stdout and sys.stderr are at the time); with
        ``mirror``, stage lines also go to the log, so that run.log tells the whole story."""
        self._out, self._err, self.mirror = out, err, mirror

    @property
    def out(self) -> IO[str]:
        return self._out or sys.stdout

    @property
    def err(self) -> IO[str]:
        return self._err or sys.stderr

    def say(self, line: str) -> None:
        print(line, file=self.err, flush=True)
        if self.mirror:
            logging.getLogger("sapray").info(line)

    def result(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def progress(self, items: Iterable[T], total: int, what: str) -> Iterator[T]:
        """Yield ``items`` while showing ``what: done/total``: redrawn on a terminal, else a line every
        PROGRESS_EVERY_S, and a last line with the time taken."""
        live = self.err.isatty()
        started = shown = time.monotonic()
        done = 0
        for item in items:
            done += 1
            now = time.monotonic()
            if live and now - shown >= 0.2:
                self.err.write(f"\r{what}: {_bar(done, total)} {done}/{total}  {now - started:.0f} s")
                self.err.flush()
                shown = now
            elif not live and now - shown >= PROGRESS_EVERY_S and done > 1:  # 1: the first block just came
                self.say(f"{what}: {done}/{total} ({now - started:.0f} s)")
                shown = now
            yield item
        if live:
            self.err.write("\r\033[K")
        self.say(f"{what}: {done}/{total} in {time.monotonic() - started:.1f} s")


def _bar(done: int, total: int, width: int = 24) -> str:
    filled = int(width * done / max(total, 1))
    return "[" + "#" * filled + "." * (width - filled) + "]"


console = Console()  # the one console; session() points it at the terminal
