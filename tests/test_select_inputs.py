"""The select job's inputs end to end (hf engine, Ray Data): bad rows rejected with reasons and counts
reconciled, a stray strategy excluded rather than the questions, and flags alone on chat files. The
tiny random-weight model scores: these check what is read, joined, counted and recorded, not SAP."""

from __future__ import annotations

import json

import pytest
from conftest import load_candidates, load_questions, read_parts
from helpers import base_config, run, write_jsonl

from sapray.engines.models import TINY_RANDOM

# Every test runs a select job with the 135M model, about 20 s or more each: make test-fast leaves the file out
pytestmark = pytest.mark.slow


def test_bad_rows_are_rejected_with_reasons_and_counts_reconcile(ray_local, exemplar_file, tmp_path):
    questions = load_questions()[:3]
    good = [c for c in load_candidates() if c["question_id"] in {q["question_id"] for q in questions}]
    long_response = "The answer follows. " * 400  # ~2,000 tokens: over max_length 1024
    rows = [json.dumps(c) for c in good[:17]] + [
        '{"question_id": "test-0000", "strategy": "human", "response": ',  # malformed JSON line
        {"question_id": "nope", "strategy": "human", "response": "4"},  # unknown question
        good[0],  # duplicate (question, strategy)
        {"question_id": good[17]["question_id"], "strategy": good[17]["strategy"], "response": "   "},  # empty
        {"question_id": "test-0001", "strategy": "human", "response": 42},  # not a string
    ]
    rows[5] = {**good[5], "response": long_response}  # over-long, rejected by the engine's length limit
    candidates = write_jsonl(tmp_path / "candidates.jsonl", rows)
    qfile = write_jsonl(tmp_path / "questions.jsonl", questions)
    raw = base_config(exemplar_file, str(tmp_path / "out"), **{
        "data.candidates": candidates, "data.questions": qfile, "engine_args": {"max_length": 1024},
        "model": TINY_RANDOM})
    result = run(raw)
    counts = result.counts
    assert counts["candidate_rows_in"] == len(rows) == 22
    assert counts["scored"] + counts["rejected"] + counts["not_sampled"] == counts["candidate_rows_in"]
    rejects = read_parts(tmp_path / "out" / "rejects")
    reasons = {r["source"].rsplit(":", 1)[1]: r["reason"] for r in rejects if r["stage"] != "sample"}
    assert "malformed JSON" in reasons["18"]
    assert "unknown question_id 'nope'" in reasons["19"]
    assert "duplicate (question_id, strategy)" in reasons["20"]
    assert reasons["21"] == "empty response"
    assert "'response' is int, not a string" in reasons["22"]
    assert "over-length" in reasons["6"]
    assert all(r["source"].startswith(candidates) for r in rejects)
    read_pass_lines = [int(r["source"].rsplit(":", 1)[1]) for r in rejects if r["stage"] != "score"]
    assert read_pass_lines == sorted(read_pass_lines)  # in input order, whatever hash bucket a row joined in
    # Questions that lost a strategy leave the paired sample; their other rows are recorded as such.
    sample_rejects = [r for r in rejects if r["stage"] == "sample"]
    assert {r["question_id"] for r in sample_rejects} == {good[17]["question_id"]}
    assert len(sample_rejects) == 5
    # 22 rows = 5 rejected at read + 5 unpaired + 1 over-long + 11 scored (2 questions x 6, less the over-long one)
    assert counts["rejected"] == 11 and counts["scored"] == 11 and counts["not_sampled"] == 0


def test_a_stray_strategy_is_excluded_not_the_questions(ray_local, exemplar_file, tmp_path):
    questions = load_questions()[:4]
    ids = {q["question_id"] for q in questions}
    rows = [c for c in load_candidates() if c["question_id"] in ids and c["strategy"] in ("human", "socratic")]
    rows.append({"question_id": questions[0]["question_id"], "strategy": "Human ", "response": "It is 4."})
    candidates = write_jsonl(tmp_path / "candidates.jsonl", rows)
    result = run(base_config(exemplar_file, str(tmp_path / "out"), **{
        "data.candidates": candidates, "data.questions": write_jsonl(tmp_path / "q.jsonl", questions),
        "metrics": ["sap"], "sample": {"max_questions": 4, "round_size": 4, "seed": 1}, "model": TINY_RANDOM}))
    chosen = result.summary["strategy_set"]
    assert chosen["chosen"] == ["human", "socratic"]
    assert "covers 1 of 4 questions" in chosen["excluded"]["Human "]
    assert chosen["similar_names"] == [["Human ", "human"]]
    assert result.summary["per_strategy"]["human"]["n"] == 4  # every question stays in the paired design
    rejects = read_parts(tmp_path / "out" / "rejects")
    assert [r["stage"] for r in rejects] == ["strategy"]
    # four questions are too few to rank: no certainty is claimed, anywhere
    assert result.summary["evidence"]["sufficient"] is False
    assert result.summary["winner"]["provisional"] is True
    assert "bootstrap_p_best" not in result.summary["winner"]
    from sapray.present.tables import render_table

    table = render_table(result.summary)
    assert "NOT ENOUGH EVIDENCE" in table and "bootstrap resamples" not in table


def test_flags_alone_select_from_chat_files_as_the_printed_yaml_does(ray_local, exemplar_file, tmp_path):
    """`sapray select --model --candidates NAME=PATH ...` with SFT files in chat form gives the same
    selection.json as `--config` with the YAML that `--print-config` printed for those flags."""
    import yaml
    from click.testing import CliRunner

    from sapray.cli import main

    questions = load_questions()[:4]
    text = {q["question_id"]: q["question"] for q in questions}
    files = []
    for name in ("human", "socratic"):
        rows = [{"messages": [{"role": "user", "content": text[c["question_id"]]},
                              {"role": "assistant", "content": c["response"]}]}
                for c in load_candidates() if c["strategy"] == name and c["question_id"] in text]
        files += ["--candidates", f"{name}={write_jsonl(tmp_path / f'{name}.jsonl', rows)}"]
    flags = ["select", "--model", TINY_RANDOM, *files, "--exemplars", exemplar_file,
             "--max-questions", "4", "--set", "bootstrap=200", "--set", "ray.actors=1"]
    runner = CliRunner()
    printed = runner.invoke(main, [*flags, "--output", str(tmp_path / "flags"), "--print-config"])
    assert printed.exit_code == 0, printed.output
    raw = yaml.safe_load(printed.output)
    assert raw["data"]["questions"] is None and raw["sample"]["stop"] == "confident"
    raw["output"] = str(tmp_path / "yaml")
    (tmp_path / "select.yaml").write_text(yaml.safe_dump(raw))
    by_flags = runner.invoke(main, [*flags, "--output", str(tmp_path / "flags")])
    assert by_flags.exit_code == 0, by_flags.output
    by_yaml = runner.invoke(main, ["select", "--config", str(tmp_path / "select.yaml")])
    assert by_yaml.exit_code == 0, by_yaml.output
    selection = (tmp_path / "flags" / "selection.json").read_bytes()
    assert selection == (tmp_path / "yaml" / "selection.json").read_bytes()
    summary = json.loads(selection)
    assert summary["candidates_joined"] == {"questions": "derived from the candidate files", "by_question_id": 0,
                                            "by_text": 8, "unmatched": 0, "ambiguous": 0}
    assert summary["counts"]["candidate_rows_in"] == 8 and summary["per_strategy"]["human"]["n"] == 4
