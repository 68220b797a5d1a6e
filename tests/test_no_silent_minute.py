"""No silent minute: `sapray select` from flags alone, on chat files without gold answers, says what each stage
will do before it does it, mines only the answers it uses (unchecked, and says so), and gives every
generation actor work. Checked by the order of the console's lines and by counts, never by time."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import PATIENCE_S, load_candidates, load_questions
from helpers import write_jsonl

from sapray.cli import main as cli

# One `sapray select` from flags with mining (minutes): make test-fast leaves the file out
pytestmark = pytest.mark.slow


def test_flag_only_select_announces_each_stage_before_its_work(ray_local, tmp_path):
    questions = {q["question_id"]: q["question"] for q in load_questions()[:6]}
    files = []
    for name in ("human", "175b_verification"):
        rows = [{"messages": [{"role": "user", "content": questions[c["question_id"]]},
                              {"role": "assistant", "content": c["response"]}]}
                for c in load_candidates() if c["question_id"] in questions and c["strategy"] == name]
        files += ["--candidates", f"{name}={write_jsonl(tmp_path / f'{name}.jsonl', rows)}"]
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    flags = ["--model", "smollm2", *files, "--set", "sample.max_questions=4", "--set", "sample.round_size=2",
             "--set", "metrics=[sap]", "--set", "exemplars.max_tokens=12"]
    # the plan in this test process (its Ray); the select it foretells from a fresh process, as a user runs it
    planned = CliRunner().invoke(cli, ["plan", *flags, "--json", str(tmp_path / "plan.json")])
    assert planned.exit_code == 0, planned.output[-3000:]
    done = subprocess.run([sys.executable, "-m", "sapray", "select", *flags, "--output", str(out)], env=env,
                          capture_output=True, text=True, timeout=PATIENCE_S)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stderr.splitlines()

    def first(text: str) -> int:
        return next(i for i, line in enumerate(lines) if text in line)

    # each stage's start line comes before its work (and its progress)
    assert first("reading the questions and candidates") < first("read 12 candidate rows")
    announce = first("mining exemplars: the target answers 4 questions")
    assert "used unchecked" in lines[announce]  # no gold answers: said before mining starts
    assert first("read 12 candidate rows") < announce < first("mining exemplars: 4/4 in")
    assert first("mining exemplars: 4/4 in") < first("scoring: starting") < first("round 1: scoring")
    # mining generated only the answers it uses: the exemplars (3) and one more, as each question leaves out
    # its own answer
    selection = json.loads((out / "selection.json").read_text())
    exemplars = selection["exemplars"]
    assert exemplars["pool_questions"] == 4 and exemplars["filled_unchecked"] == 4
    # `sapray plan` from the same flags foretold it: 4 answers of at most 12 tokens, and bounds the run kept
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["strategies"]["names"] == selection["strategies"]
    assert plan["exemplars"]["generated_tokens"] == {**plan["exemplars"]["generated_tokens"], "value": 4 * 12,
                                                    "kind": "bound"}
    assert exemplars["generated_tokens"] <= 4 * 12
    assert selection["budget"]["tokens_scored"] <= plan["scoring"]["tokens"]["value"]
    # every generation actor received work: two actors (one per CPU) shared the four answers
    placement = json.loads((out / "run.json").read_text())["mining_placement"]
    assert len(placement) == min(2, os.cpu_count() or 1) and sum(placement.values()) == 4
