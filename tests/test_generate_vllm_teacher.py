"""`sapray run` with vLLM teachers in Ray Data (two prompt styles): each engine starts once for the whole race and
the full set, with the outputs of a pool per round.

Its own file so that the suite's two workers (one file each at a time) can run it beside the rest of
test_generate.py, the slowest file."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from conftest import load_questions, read_parts, without_timings
from helpers import write_jsonl
from test_generate import job, teacher_strategies

from sapray.config import load_config
from sapray.engines.models import TINY_RANDOM
from sapray.jobs.run import run_all

# Two `sapray run`s with vLLM teachers (minutes): make test-fast leaves the file out
pytestmark = pytest.mark.slow


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.vllm
def test_run_with_a_vllm_teacher_starts_each_engine_once_with_the_outputs_of_a_pool_per_round(
        ray_local, exemplar_file, tmp_path):
    pytest.importorskip("vllm")
    questions = write_jsonl(tmp_path / "q.jsonl", load_questions()[:2])
    results = {}
    for resident in (True, False):
        out = tmp_path / ("resident" if resident else "per_round")
        # the tiny random-weight scorer: what is checked is where engines start and what they write, not SAP
        raw = job(out, exemplar_file, questions, strategies=teacher_strategies("vllm"), metrics=["sap"],
                  model=TINY_RANDOM)
        del raw["data"]["candidates"]  # the two teachers alone compete, so the full set is a teacher's
        raw["sample"] = {"max_questions": 2, "round_size": 1}  # two rounds (no decision before 10 questions)
        raw["ray"]["resident_engines"] = resident
        results[resident] = run_all(load_config(raw))
    summary, costs, metadata = results[True]
    resident, per_round = tmp_path / "resident", tmp_path / "per_round"

    assert len(summary["race"]["rounds"]) == 2
    assert set(summary["strategies"]) == {"smol_plain", "smol_steps"}
    assert summary["counts"]["scored"] == 2 * 2
    assert costs["smol_plain"]["completion_tokens"] > 0 and costs["smol_steps"]["prompt_tokens"] > 0

    # each engine (the scorer, the vLLM teacher of both prompt styles) started once, counted by its actor; the
    # winner's full set, on the teacher's engine, started nothing more
    starts = json.loads((resident / "select" / "run.json").read_text())["engine_starts"]
    teacher = load_config(raw).strategies[0].engine_key
    assert set(starts) == {"scorer", teacher}
    assert all(list(per_actor.values()) == [1] for per_actor in starts.values()), starts  # ray.actors: 1

    # the outputs of a pool per round: byte for byte, or but for wall times
    for name in ("scores.parquet", "exemplars.jsonl", "rejects/part-scoring.jsonl",
                 "sample_candidates/smol_plain.jsonl", "sample_candidates/smol_steps.jsonl"):
        assert (resident / "select" / name).read_bytes() == (per_round / "select" / name).read_bytes(), name
    for folder in ("train", "parquet", "rejects"):
        files = sorted(p.name for p in (per_round / "train" / folder).iterdir())
        assert sorted(p.name for p in (resident / "train" / folder).iterdir()) == files
        for name in files:
            assert (resident / "train" / folder / name).read_bytes() == (
                per_round / "train" / folder / name).read_bytes(), name
    selection = [json.loads((d / "select" / "selection.json").read_text()) for d in (resident, per_round)]
    assert without_timings(selection[0]) == without_timings(selection[1])
    assert without_timings(jsonl(resident / "select" / "sample_generation_cost.jsonl")) == without_timings(
        jsonl(per_round / "select" / "sample_generation_cost.jsonl"))
    assert without_timings(metadata) == without_timings(results[False][2])

    train = read_parts(resident / "train" / "train")
    assert metadata["questions"] == 2 and metadata["rows"] + metadata["rejected"] == 2
    assert sorted(r["question_id"] for r in train) == sorted({r["question_id"] for r in train})
    for row in train:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["user", "assistant"] and row["strategy"] == summary["winner"]["strategy"]
        assert row["prompt_hash"] and row["teacher"] and json.loads(row["sampling"])["max_tokens"] > 0
        assert row["finish_reason"] in ("stop", "length")
    assert metadata["rows_truncated"] == sum(r["finish_reason"] == "length" for r in train)
    assert read_parts(resident / "train" / "parquet") == train
    assert pq.read_table(resident / "select" / "scores.parquet").num_rows == 2 * 2
