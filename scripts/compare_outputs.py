"""Compare two output folders of sapray byte for byte: the check that a refactoring changed no output.

    python scripts/compare_outputs.py BEFORE AFTER [FILE_OR_FOLDER ...]

Without names it compares what a selection and a training set hold that is deterministic: every
``.parquet`` file as bytes, every ``.jsonl`` file as bytes unless a line holds a timing field named in
``TIMING_FIELDS`` (then line by line as JSON without them: wall times differ from run to run), and every
``.json`` file without those fields. ``run.json`` (timings, placements, the resolved config), ``report.html``
(shows run.json's timings), ``run.log``, the journal and the full set's ``shards/`` (named by each run's id;
the training set merged from them is compared) are left out. Exit status 1 when
anything differs or is missing on one side, naming each difference.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TIMING_FIELDS = ("wall_s", "total_s", "mining_s", "scoring_s", "sample_generation_s")
SKIPPED = {"run.json", "report.html", "run.log"}
SKIPPED_FOLDERS = {"journal", "shards"}


def _without_timings(value: object) -> object:
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMING_FIELDS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def compared_files(root: Path) -> set[str]:
    """The files of ``root`` that are compared, as paths relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and p.name not in SKIPPED and p.suffix in (".json", ".jsonl", ".parquet")
            and not SKIPPED_FOLDERS & set(p.relative_to(root).parts)}


def _lines(path: Path) -> list[object]:
    return [_without_timings(json.loads(line)) for line in path.read_text().splitlines()]


def differs(a: Path, b: Path) -> bool:
    if a.suffix == ".json":
        return _without_timings(json.loads(a.read_text())) != _without_timings(json.loads(b.read_text()))
    if a.read_bytes() == b.read_bytes():
        return False
    timed = a.suffix == ".jsonl" and any(f'"{name}"' in a.read_text() for name in TIMING_FIELDS)
    return not timed or _lines(a) != _lines(b)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    before, after = Path(argv[0]), Path(argv[1])
    names = set(argv[2:]) or compared_files(before) | compared_files(after)
    problems = []
    for name in sorted(names):
        a, b = before / name, after / name
        if not a.exists() or not b.exists():
            problems.append(f"only in {'after' if b.exists() else 'before'}: {name}")
        elif differs(a, b):
            problems.append(f"differs: {name}")
    for line in problems:
        print(line)
    print(f"{len(names) - len(problems)} of {len(names)} files the same" + (" (timing fields dropped from .json)"
                                                                          if names else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
