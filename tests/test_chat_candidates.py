"""Candidates as SFT files in chat ``messages`` form, joined to the questions by id or exact text (no model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_candidates, load_questions

from sapray.config import DataConfig, RayConfig, StrategyConfig, TeacherConfig
from sapray.dataplane.read import chat_pair, derived_question_id
from sapray.dataplane.select_inputs import read_selection_inputs
from sapray.dataplane.teachers import _file_answers


def chat(question: str, response: str, system: str | None = "You are helpful.") -> list[dict]:
    return [*([{"role": "system", "content": system}] if system else []),
            {"role": "user", "content": question}, {"role": "assistant", "content": response}]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("messages, expected", [
    (chat("Q?", "A."), ("Q?", "A.")),
    # multi-turn: the first user turn is the question, the last assistant turn the response
    ([{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "draft"},
      {"role": "user", "content": "again"}, {"role": "assistant", "content": "final"}], ("Q?", "final")),
    # OpenAI-style content parts: text parts joined
    ([{"role": "user", "content": [{"type": "text", "text": "Q"}, {"type": "text", "text": "?"}]},
      {"role": "assistant", "content": "A."}], ("Q?", "A.")),
    ([{"role": "assistant", "content": "A."}, {"role": "user", "content": "Q?"}],
     "no assistant turn after the first user turn in 'messages'"),
    ([{"role": "system", "content": "s"}], "no user turn in 'messages'"),
    ("Q? A.", "column 'messages' is str, not a list of turns"),
    ([{"content": "Q?"}], "messages[0] is not a turn with a role"),
    ([{"role": "user", "content": "Q?"}, {"role": "assistant", "content": None}],
     "the last assistant turn of 'messages' is null, not a string"),
])
def test_chat_pair(messages, expected):
    assert chat_pair(messages) == expected


@pytest.fixture
def chat_files(tmp_path):
    """Two strategies' SFT files for the 20 test questions: human's rows carry question_id, socratic's
    only the text; plus one unmatched row and one whose text two questions share."""
    questions = load_questions()
    text = {q["question_id"]: q["question"] for q in questions}
    twin = {"question_id": "twin-of-0001", "question": text["test-0001"], "gold": "0"}
    qfile = write_jsonl(tmp_path / "questions.jsonl", [*questions, twin])
    cands = load_candidates()
    human = [{"question_id": c["question_id"], "messages": chat(text[c["question_id"]], c["response"])}
             for c in cands if c["strategy"] == "human"]
    socratic = [{"messages": chat(text[c["question_id"]], c["response"], system=None)}
                for c in cands if c["strategy"] == "socratic"]
    socratic.append({"messages": chat("A question nobody asked?", "42")})
    files = {"human": write_jsonl(tmp_path / "human.jsonl", human),
             "socratic": write_jsonl(tmp_path / "socratic.jsonl", socratic)}
    return qfile, files, cands


def read_pass(data: DataConfig) -> tuple:
    """select's read pass in the cluster, and every question's rows and every reject brought back."""
    inputs = read_selection_inputs(data, RayConfig(), [])
    questions, rows = inputs.fetch(set(inputs.question_ids))
    return inputs, questions, rows, inputs.rejects.take_all()


def test_joined_by_id_and_by_text_with_unmatched_and_ambiguous_rejected(ray_local, chat_files):
    qfile, files, cands = chat_files
    inputs, _, rows, rejects = read_pass(DataConfig(questions=qfile, candidates_by_strategy=files))
    assert inputs.rows_in == 41 == len(rows) + len(rejects)
    by_key = {(r["question_id"], r["strategy"]): r for r in rows}
    for c in cands:
        if c["strategy"] in files and c["question_id"] != "test-0001":
            assert by_key[(c["question_id"], c["strategy"])]["response"] == c["response"]
    assert (inputs.joined["by_question_id"], inputs.joined["by_text"]) == (20, 19)
    unjoined = [r for r in rejects if r["stage"] == "candidates"]
    reasons = sorted(r["reason"] for r in unjoined)
    assert reasons[0].startswith("ambiguous: the question text matches 2 questions ['test-0001', 'twin-of-0001']")
    assert reasons[1] == "unmatched: no question has this exact text"
    assert {r["source"].rsplit(":", 1)[0] for r in unjoined} == {files["socratic"]}
    # test-0001 lost its socratic row (ambiguous), so its human row cannot be paired
    assert [(r["stage"], r["question_id"], r["strategy"]) for r in rejects if r["stage"] != "candidates"] == [
        ("sample", "test-0001", "human")]


def test_questions_derived_from_the_files_take_given_ids(ray_local, chat_files):
    _, files, cands = chat_files
    inputs, questions, rows, rejects = read_pass(DataConfig(candidates_by_strategy=files))
    # human's rows name the ids; socratic's text-only rows join them; the stray question gets a derived id
    stray = derived_question_id("A question nobody asked?")
    assert sorted(questions) == sorted(inputs.question_ids) == sorted({c["question_id"] for c in cands} | {stray})
    assert inputs.rows_in == 41 == len(rows) + 1
    assert [(r["stage"], r["question_id"]) for r in rejects] == [("sample", stray)]  # only socratic answers it
    assert all(q["gold"] is None for q in questions.values())


def test_a_file_teacher_reads_chat_rows_joined_by_text(chat_files):
    _, files, cands = chat_files
    questions = load_questions()[:5]
    teacher = StrategyConfig(name="socratic", teacher=TeacherConfig(kind="file", path=files["socratic"]))
    out = {r["row_id"]: r for r in _file_answers(teacher.teacher, questions)}
    expected = {c["question_id"]: c["response"] for c in cands if c["strategy"] == "socratic"}
    assert {q: r["texts"] for q, r in out.items()} == {q["question_id"]: [expected[q["question_id"]]]
                                                       for q in questions}
