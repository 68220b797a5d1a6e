"""``sapray mine``: exemplar mining alone, stopping once n answers pass the checker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PATIENCE_S

from sapray.config import load_config
from sapray.core.exemplars import ExemplarShortfall
from sapray.dataplane.mining import journal_path, mine_until, sidecar_path
from sapray.dataplane.read import load_exemplar_file

ROOT = Path(__file__).resolve().parent.parent
POOL = [{"question_id": f"p{k}", "question": f"q{k}", "gold": str(k)} for k in range(6)]


class Answers:
    """Answers as GenerateActor streams them; counts how many mining took and whether it closed the stream."""

    def __init__(self, texts: list[str], cut: frozenset[int] = frozenset()) -> None:
        self.rows = [{"row_id": f"p{k}", "texts": [t], "finish_reasons": ["length" if k in cut else "stop"],
                      "completion_tokens": 5} for k, t in enumerate(texts)]
        self.taken, self.closed = 0, False

    def __iter__(self) -> Answers:
        return self

    def __next__(self) -> dict:
        if self.taken == len(self.rows):
            raise StopIteration
        self.taken += 1
        return self.rows[self.taken - 1]

    def close(self) -> None:
        self.closed = True


def test_mining_stops_at_the_nth_correct_answer_and_never_counts_a_cut_off_one():
    answers = ["#### 0", "#### 9", "so 2", "the answer is 3", "#### 4", "#### 5"]
    stream = Answers(answers, cut=frozenset({2}))
    mined, report, generated = mine_until(POOL, stream, n=2, checker_name="gsm8k")
    assert [e.source_question_id for e in mined] == ["p0", "p3"] and all(e.checked for e in mined)
    assert stream.taken == 4 and len(generated) == 4 and stream.closed  # p2 was right but cut off: no count
    assert (report.pool_questions, report.correct, report.wrong, report.unparsable, report.truncated) == (4, 2, 1, 1, 1)


def test_checker_none_stops_at_n_non_empty_answers():
    stream = Answers(["", " ", "a", "b", "c", "d"])
    mined, report, _ = mine_until(POOL, stream, n=2, checker_name="none")
    assert [e.source_question_id for e in mined] == ["p2", "p3"] and not any(e.checked for e in mined)
    assert stream.taken == 4 and report.filled_unchecked == 2


def test_a_short_pool_applies_the_shortfall_policy():
    answers = ["#### 0", "#### 9", "#### 9", "#### 9", "#### 9", "#### 9"]
    with pytest.raises(ExemplarShortfall, match="only 1 of 6 pool answers passed the gsm8k checker; 2 needed"):
        mine_until(POOL, Answers(answers), n=2, checker_name="gsm8k", shortfall="error")
    mined, _, _ = mine_until(POOL, Answers(answers), n=2, checker_name="gsm8k", shortfall="unchecked")
    assert [(e.source_question_id, e.checked) for e in mined] == [("p0", True), ("p1", False)]


def test_answers_out_of_pool_order_are_refused():
    shuffled = [{"row_id": "p1", "texts": ["1"], "finish_reasons": ["stop"], "completion_tokens": 1}]
    with pytest.raises(AssertionError, match="answer for p1 arrived in place of p0"):
        mine_until(POOL, shuffled, n=1, checker_name="gsm8k")


def test_sidecar_sits_beside_the_exemplar_file():
    assert sidecar_path("out/ex.jsonl") == "out/ex.json"
    assert sidecar_path("out/ex") == "out/ex.json"
    assert sidecar_path("s3://b/ex.jsonl?endpoint_override=h:1") == "s3://b/ex.json?endpoint_override=h:1"
    assert journal_path("s3://b/ex.jsonl") == "s3://b/ex.journal"


EASY = [  # SmolLM2-135M answers only the first correctly (greedy, 64 tokens): checked on this machine
    ("What is 2 + 3?", "5"), ("What is 10 minus 4?", "6"),
    ("Tom has 3 apples and buys 2 more. How many apples does he have?", "5"),
    ("What is 7 times 6?", "42"), ("A box holds 12 eggs. How many eggs are in 2 boxes?", "24"),
    ("What is 9 + 1?", "10"),
]


@pytest.mark.slow
def test_the_mine_command_finds_a_checked_answer_writes_a_select_ready_file_and_honours_exclusions(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"question_id": f"e{k}", "question": q, "gold": g}) + "\n"
                            for k, (q, g) in enumerate(EASY)))
    excluded = tmp_path / "questions.jsonl"  # the same question under another id and spacing
    excluded.write_text(json.dumps({"question_id": "test-9", "question": "What  is 9 + 1?"}) + "\n")
    out = tmp_path / "mined" / "ex.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "sapray", "mine", "--pool", str(pool), "--output", str(out), "--n", "1",
         "--max-tokens", "64", "--batch-size", "1", "--exclude", str(excluded), "--seed", "3"],
        capture_output=True, text=True, timeout=PATIENCE_S, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    [row] = [json.loads(line) for line in out.read_text().splitlines()]
    assert (row["question_id"], row["checked"], row["gold"]) == ("e0", True, "5") and "5" in row["text"]
    p = json.loads(out.with_suffix(".json").read_text())
    assert (p["model"], p["engine"], p["checker"], p["max_tokens"], p["seed"], p["n"]) == \
        ("smollm2", "hf", "gsm8k", 64, 3, 1)
    assert (p["pool_questions"], p["excluded"], p["questions_available"]) == (6, 1, 5)
    # batches of one: mining stopped at the question that gave the one correct answer
    assert p["correct"] == 1 and p["found_n"] and p["questions_answered"] == p["correct"] + p["wrong"] + p["unparsable"]
    assert p["hit_rate"] == round(1 / p["questions_answered"], 4)
    assert f"1 correct of {p['questions_answered']} questions answered" in done.stdout
    # the file is what a select config's exemplars.file takes
    [exemplar] = load_exemplar_file(str(out))
    assert (exemplar.exemplar_id, exemplar.source_question_id, exemplar.checked) == ("mined-e0", "e0", True)
    cfg = load_config({"data": {"questions": str(excluded), "candidates": str(excluded)},
                       "exemplars": {"file": str(out), "n": 1}})
    assert cfg.exemplars.file == str(out)


def test_the_shipped_exemplars_are_checked_and_answer_none_of_the_bundled_questions():
    data = ROOT / "sapray" / "data" / "gsm8k"
    exemplars = load_exemplar_file(str(data / "exemplars_smollm2.jsonl"))
    provenance = json.loads((data / "exemplars_smollm2.json").read_text())
    assert len(exemplars) == provenance["correct"] == 8 and all(e.checked for e in exemplars)
    assert (provenance["model"], provenance["engine"], provenance["checker"]) == ("smollm2", "vllm", "gsm8k")
    bundled = [json.loads(line) for line in (data / "questions.jsonl").read_text().splitlines()]
    mined = [json.loads(line) for line in (data / "exemplars_smollm2.jsonl").read_text().splitlines()]
    assert not {q["question_id"] for q in bundled} & {e.source_question_id for e in exemplars}
    assert not {" ".join(q["question"].split()) for q in bundled} & {" ".join(m["question"].split()) for m in mined}
