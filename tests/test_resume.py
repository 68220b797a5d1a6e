"""Every long job survives kill -9: the same command again continues from its journal, with the bytes of a run
that was never stopped.

The run to kill is a CLI subprocess in a process group of its own, killed with SIGKILL (the whole group) at an
event, never at a time: when a given journal entry has been written. The whole run and the rerun run in this
test process (its Ray), to spare two starts. The targets are the tiny
random-weight model (what is checked is the resume, not SAP) and, for mining, SmolLM2 (whose answers are
text). `sapray run` with an API teacher is in test_generate.py, beside the `vllm serve` it shares.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import kill_hard, load_candidates, load_questions, wait_until, without_timings
from helpers import write_jsonl

from sapray.config import MineConfig, load_config, load_filter_config, validate
from sapray.dataplane.journal import JournalMismatch
from sapray.dataplane.mining import write_mined
from sapray.engines.models import TINY_RANDOM
from sapray.jobs.filter import run_filter, write_filter
from sapray.jobs.mine import run_mine
from sapray.jobs.plan import plan_job
from sapray.jobs.select import run_select, write_selection

# Every test kills a job and runs it again (minutes each): make test-fast leaves the file out
pytestmark = pytest.mark.slow

ENV = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # each job its own local Ray


def sapray(*args: str) -> list[str]:
    return [sys.executable, "-m", "sapray", *args]


def killed(command: list[str], at: str, ready, log: Path) -> None:
    """Run ``command`` until ``ready()`` holds (the event named ``at``), then kill it and all it started."""
    with log.open("w") as out:
        proc = subprocess.Popen(command, env=ENV, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
        wait_until(ready, at, proc, log, poll_s=0.1)
        kill_hard(proc)


def same_files(a: Path, b: Path, names: list[str]) -> None:
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def parts(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_select_resumes_from_its_journal_after_kill_9_at_two_rounds(ray_local, exemplar_file, tmp_path,
                                                                    capsys):
    """Killed once round 2 is journaled: the next run replays rounds 1-2 and scores round 3 alone; its outputs
    are byte for byte those of a run never stopped (which `sapray plan` foretold). (A rerun that is itself killed
    and resumed: the filter's test below, killed twice.)"""
    questions = load_questions()[:9]
    keep = {q["question_id"] for q in questions}
    raw = {
        "model": TINY_RANDOM, "engine": "hf", "metrics": ["sap", "ppl", "ifd"],
        "data": {"questions": write_jsonl(tmp_path / "q.jsonl", questions),
                 "candidates": write_jsonl(tmp_path / "c.jsonl",
                                           [c for c in load_candidates() if c["question_id"] in keep])},
        # three rounds of 3 (no decision before 10 questions), a block of 6 requests each
        "sample": {"max_questions": 9, "round_size": 3, "min_questions": 10, "seed": 0},
        "exemplars": {"file": exemplar_file}, "ray": {"actors": 1, "batch_size": 6}, "bootstrap": 50,
    }
    plan = plan_job(load_config({**raw, "output": str(tmp_path / "plan")}))
    selected(raw, tmp_path / "whole")
    selection = json.loads((tmp_path / "whole" / "selection.json").read_text())
    assert plan["strategies"]["names"] == selection["strategies"]
    # the race could have stopped sooner (a bound) but ran every round; round 1's tokens are exact
    assert plan["scoring"]["tokens"] == {**plan["scoring"]["tokens"], "kind": "bound",
                                         "value": selection["budget"]["tokens_scored"]}
    assert plan["scoring"]["rounds"][0] == {**plan["scoring"]["rounds"][0], "kind": "exact",
                                            "value": selection["race"]["rounds"][0]["tokens"]}
    assert sum(r["value"] for r in plan["scoring"]["rounds"]) == selection["budget"]["tokens_scored"]
    assert plan["questions"]["value"] == selection["budget"]["questions_scored"] == 9
    assert plan["scoring"]["requests"]["value"] == selection["counts"]["requests_scored"]

    out = tmp_path / "resumed"
    path = tmp_path / "select.yaml"
    path.write_text(yaml.safe_dump({**raw, "output": str(out)}))
    command = sapray("select", "--config", str(path))
    journal = out / "journal"
    killed(command, "round 2 journaled", lambda: (journal / "round-0002.json").exists(), tmp_path / "killed.log")
    capsys.readouterr()
    selected(raw, out)
    log = capsys.readouterr().err
    assert "resuming: rounds 1-2 from the journal (108 requests scored)" in log or "rounds 1-3" in log, log
    same_files(tmp_path / "whole", out, ["selection.json", "scores.parquet", "exemplars.jsonl",
                                         "rejects/part-scoring.jsonl"])
    counts = json.loads((out / "selection.json").read_text())["counts"]
    assert counts["scored"] + counts["rejected"] + counts["not_sampled"] == counts["candidate_rows_in"]
    with pytest.raises(JournalMismatch, match=r"sample\.seed: 0 -> 1.*--restart"):  # another config: refused
        selected({**raw, "sample": {**raw["sample"], "seed": 1}}, out)


def selected(raw: dict, out: Path) -> None:
    cfg = load_config({**raw, "output": str(out)})
    write_selection(cfg.output, run_select(cfg), cfg.model_dump())


def test_filter_resumes_row_by_row_after_kill_9_at_random_journal_events(ray_local, tmp_path, capsys):
    """IFD over 48 samples in batches of 4, journaled in entries of 5 rows: killed once k entries are written,
    its rerun killed again at a later k (both drawn, by journal event, never by time); the last run scores
    only the rows the journal lacks and tokenizes none it holds; kept/, scores/ and rejects/ are byte for byte
    a whole run's, and the journal ends as one file."""
    questions = {q["question_id"]: q["question"] for q in load_questions()}
    rows = [{"messages": [{"role": "user", "content": questions[c["question_id"]]},
                          {"role": "assistant", "content": c["response"]}], "sample_id": f"{c['question_id']}"}
            for c in load_candidates()[:48]]
    rows.insert(5, {"messages": [{"role": "user", "content": "no answer"}]})  # a reject, as in any real file
    raw = {"method": "ifd", "model": TINY_RANDOM, "input": write_jsonl(tmp_path / "samples.jsonl", rows),
           "ifd": {"direction": "low", "keep_fraction": 0.5}, "ray": {"actors": 1, "batch_size": 4, "journal_rows": 5}}
    filtered(raw, tmp_path / "whole")
    assert [p.name for p in (tmp_path / "whole" / "journal").glob("*.parquet")] == ["sums-score.parquet"]
    out = tmp_path / "resumed"
    path = tmp_path / "filter.yaml"
    path.write_text(yaml.safe_dump({**raw, "output": str(out)}))
    journal = out / "journal"
    first, second = sorted(random.Random(40).sample(range(1, 9), 2))  # of 9 entries (48 rows, 5 an entry)
    for at, log in ((first, "first.log"), (second, "second.log")):
        killed(sapray("filter", "--config", str(path)), f"{at} journal entries written",
               lambda at=at: len(list(journal.glob("sums-score-*.parquet"))) >= at, tmp_path / log)
    entries = [pq.read_table(p) for p in journal.glob("sums-score-*.parquet")]
    assert entries and all(t.num_rows == 5 for t in entries), [t.num_rows for t in entries]  # whole entries only
    journaled = sum(t.num_rows for t in entries)
    assert "samples scored by the earlier run" in (tmp_path / "second.log").read_text()  # it resumed
    capsys.readouterr()
    filtered(raw, out)
    assert f"resuming: {journaled} of 48 samples scored by the earlier run (not tokenized" in capsys.readouterr().err
    assert [p.name for p in journal.glob("*.parquet")] == ["sums-score.parquet"]
    assert pq.read_table(journal / "sums-score.parquet").column("order").to_pylist() == [
        i for i in range(49) if i != 5]
    for folder in ("kept", "scores", "rejects"):
        assert parts(tmp_path / "whole" / folder) == parts(out / folder)
        same_files(tmp_path / "whole" / folder, out / folder, parts(out / folder))


def filtered(raw: dict, out: Path) -> None:
    cfg = load_filter_config({**raw, "output": str(out)})
    write_filter(cfg.output, run_filter(cfg))


def test_mine_resumes_from_its_last_batch_after_kill_9(ray_local, tmp_path, capsys):
    """Mining (checker none, so every non-empty answer counts) in batches of 2 until 8: killed once two batches
    are journaled; the next run asks only the batches after them, and writes the same exemplar file."""
    pool = write_jsonl(tmp_path / "pool.jsonl", load_questions()[:12])
    raw = {"pool": pool, "model": "smollm2", "n": 8, "checker": "none", "max_tokens": 16,
           "ray": {"actors": 1, "batch_size": 2}}
    mined(raw, tmp_path / "whole" / "ex.jsonl")
    out = tmp_path / "resumed" / "ex.jsonl"
    journal = out.with_suffix(".journal")
    killed(sapray("mine", "--pool", pool, "--model", "smollm2", "--n", "8", "--checker", "none", "--max-tokens",
                  "16", "--batch-size", "2", "--set", "ray.actors=1", "--output", str(out)),
           "batch 2 journaled", lambda: len(list(journal.glob("batch-*.json"))) >= 2, tmp_path / "killed.log")
    capsys.readouterr()
    mined(raw, out)
    assert "batch(es) of answers" in capsys.readouterr().err
    assert out.read_bytes() == (tmp_path / "whole" / "ex.jsonl").read_bytes()
    whole = json.loads((tmp_path / "whole" / "ex.json").read_text())
    resumed = json.loads(out.with_suffix(".json").read_text())
    assert without_timings(whole) == without_timings(resumed)


def mined(raw: dict, out: Path) -> None:
    cfg = validate(MineConfig, {**raw, "output": str(out)})
    write_mined(cfg.output, run_mine(cfg))
