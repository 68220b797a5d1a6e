"""`sapray run` with vLLM teachers in Ray Data (two prompt styles) beside the bundled six strategies.

Its own file so that the suite's two workers (one file each at a time) can run it beside the rest of
test_generate.py, the slowest file."""

from __future__ import annotations

import json

import pytest
from conftest import load_questions, read_parts
from test_generate import job, teacher_strategies
from test_select import exemplar_file, write_jsonl  # noqa: F401  (fixture)

from sapray.config import load_config
from sapray.jobs.run import run_all


@pytest.mark.vllm
def test_run_with_vllm_teacher_two_prompt_styles_and_the_bundled_six(ray_local, exemplar_file, tmp_path):  # noqa: F811
    pytest.importorskip("vllm")
    questions = write_jsonl(tmp_path / "q.jsonl", load_questions()[:3])
    cfg = load_config(job(tmp_path, exemplar_file, questions, strategies=teacher_strategies("vllm")))
    summary, costs, metadata = run_all(cfg)
    assert set(summary["strategies"]) == {"smol_plain", "smol_steps", "human", "socratic", "6b_finetuning",
                                                 "6b_verification", "175b_finetuning", "175b_verification"}
    assert summary["counts"]["scored"] == 2 * 8
    assert costs["smol_plain"]["completion_tokens"] > 0 and costs["smol_steps"]["prompt_tokens"] > 0
    train = read_parts(tmp_path / "train" / "train")
    assert metadata["questions"] == 3 and metadata["rows"] + metadata["rejected"] == 3
    assert sorted(r["question_id"] for r in train) == sorted({r["question_id"] for r in train})
    for row in train:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["user", "assistant"] and row["strategy"] == summary["winner"]["strategy"]
        assert row["prompt_hash"] and row["teacher"] and json.loads(row["sampling"])["max_tokens"] > 0
        assert row["finish_reason"] in ("stop", "length")
    assert metadata["rows_truncated"] == sum(r["finish_reason"] == "length" for r in train)
    assert read_parts(tmp_path / "train" / "parquet") == train
