"""The select job end to end on Ray Data with the hf engine, on the 20-question test data, scored by the tiny
random-weight model: SAP against a plain computation of the same weights, and the same bytes from one actor or
two (the 135M model's own SAP is checked in test_paper_layout.py and, against vLLM, in test_engine_parity.py)."""

from __future__ import annotations

import json
import math

import pyarrow.parquet as pq
import pytest
import torch
from conftest import load_candidates, load_questions
from helpers import base_config, run, write_jsonl

from sapray.config import ConfigError, load_config
from sapray.engines.models import TINY_RANDOM
from sapray.jobs.select import run_select

# One question (six requests) a batch: the first round's two questions are two blocks, so a second
# actor gets one of them (no more actors start than there are blocks).
ONE_QUESTION_A_BATCH = {"ray.batch_size": 6, "model": TINY_RANDOM}


@pytest.fixture(scope="module")
def one_actor(ray_local, exemplar_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    return run(base_config(exemplar_file, str(out), **ONE_QUESTION_A_BATCH)), out


def plain_sap(model, tokenizer, question: str, exemplars: list[str], response: str) -> float:
    """SAP the plain way: chat-rendered context, response tokens appended, prompt masked with -100."""
    user = (f"Question: {question}\n\nWe have inference examples below to show you how to solve the problem. "
            "please follow the inference style and solve the problem\n\n"
            + "".join(f"inference example: {e}\n\n" for e in exemplars)
            + "now, according to the inference examples, please solve the problem. \n\n\n")
    text = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                         add_generation_prompt=True)
    context = tokenizer(text, add_special_tokens=False)["input_ids"]
    target = tokenizer(response, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([context + target])
    labels = ids.clone()
    labels[0, : len(context)] = -100
    with torch.no_grad():
        return math.exp(model(input_ids=ids, labels=labels).loss.item())


@pytest.mark.slow
def test_mean_sap_equals_plain_computation(one_actor, tiny_reference):
    result, out = one_actor
    model, tokenizer = tiny_reference
    questions = {q["question_id"]: q["question"] for q in load_questions()}
    responses = {(c["question_id"], c["strategy"]): c["response"] for c in load_candidates()}
    exemplars = {json.loads(line)["exemplar_id"]: json.loads(line)["text"]
                 for line in (out / "exemplars.jsonl").open()}
    scores = pq.read_table(out / "scores.parquet").to_pylist()
    assert len(scores) == 3 * 6
    by_strategy: dict[str, list[float]] = {}
    for row in scores:
        texts = [exemplars[e] for e in row["exemplar_ids"]]
        by_strategy.setdefault(row["strategy"], []).append(
            plain_sap(model, tokenizer, questions[row["question_id"]], texts,
                      responses[(row["question_id"], row["strategy"])]))
    selection = json.loads((out / "selection.json").read_text())
    for strategy, values in by_strategy.items():
        expected = sum(values) / len(values)
        assert selection["per_strategy"][strategy]["mean_sap"] == pytest.approx(expected, rel=1e-4)
    ranked = sorted(by_strategy, key=lambda s: sum(by_strategy[s]) / len(by_strategy[s]))
    assert selection["ranking"] == ranked


@pytest.mark.slow
def test_exemplars_recorded_and_never_the_question_itself(one_actor):
    result, out = one_actor
    for row in pq.read_table(out / "scores.parquet").to_pylist():
        assert len(row["exemplar_ids"]) == 3
        assert len(set(row["exemplar_ids"])) == 3


@pytest.mark.slow
def test_two_actors_and_a_second_run_give_identical_bytes(one_actor, exemplar_file, tmp_path):
    """The same config and seed, run again with a second actor scoring: the same selection, exemplars and
    scores, byte for byte (one run covers both: a second run with one actor costs as much again)."""
    result_one, out = one_actor
    result_two = run(base_config(exemplar_file, str(tmp_path), **ONE_QUESTION_A_BATCH, **{"ray.actors": 2}))
    assert len(result_two.placement) > len(result_one.placement)  # a second actor scored
    for name in ("selection.json", "exemplars.jsonl", "scores.parquet"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


def test_missing_column_fails_naming_file_and_column(ray_local, exemplar_file, tmp_path):
    bad = write_jsonl(tmp_path / "c.jsonl", [{"question_id": "test-0000", "strategy": "human", "answer": "x"}])
    from sapray.dataplane.read import InputError

    with pytest.raises(InputError, match=r"c\.jsonl: missing required column\(s\) \['response'\]"):
        run_select(load_config(base_config(exemplar_file, str(tmp_path / "o"), **{"data.candidates": bad})))


@pytest.mark.parametrize("change, message", [
    ({"sample": {"max_questoins": 3}}, "sample.max_questoins: Extra inputs are not permitted"),
    ({"ray": {"actors": "two"}}, "ray.actors: Input should be a valid integer"),
    ({"layout": "fancy"}, "layout: Input should be 'chat' or 'paper'"),
])
def test_wrong_config_fails_before_work_naming_the_key(exemplar_file, change, message):
    raw = base_config(exemplar_file, "/nonexistent/out")
    raw.update(change)
    with pytest.raises(ConfigError, match=message):
        load_config(raw)
