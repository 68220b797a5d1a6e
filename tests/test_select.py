"""The select job end to end on Ray Data with the hf engine (fast), on the 20-question test data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from conftest import DATA_DIR, init_local_ray, load_candidates, load_questions

from sapray.config import ConfigError, load_config
from sapray.report import write_outputs
from sapray.select import run_select


@pytest.fixture(scope="module")
def ray_local():
    import ray

    init_local_ray(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def exemplar_file(tmp_path_factory) -> str:
    """Four fixed exemplars (answers to train-set questions, not to any test question)."""
    pool = [json.loads(line) for line in open("sapray/data/gsm8k/pool.jsonl")][:4]
    rows = [{"exemplar_id": f"ex-{i}", "question_id": q["question_id"],
             "text": f"We compute step by step and get {q['gold']}.\nA: {q['gold']}"} for i, q in enumerate(pool)]
    return write_jsonl(tmp_path_factory.mktemp("ex") / "exemplars.jsonl", rows)


def base_config(exemplar_file: str, output: str, **changes) -> dict:
    cfg = {
        "model": "smollm2",
        "engine": "hf",
        "data": {"questions": str(DATA_DIR / "questions.jsonl"), "candidates": str(DATA_DIR / "candidates.jsonl")},
        "sample": {"max_questions": 3, "round_size": 2, "seed": 7},
        "exemplars": {"file": exemplar_file, "n": 3},
        "ray": {"actors": 1, "batch_size": 18},
        "bootstrap": 200,
        "output": output,
    }
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return cfg


def run(raw: dict):
    cfg = load_config(raw)
    result = run_select(cfg)
    write_outputs(cfg.output, result, cfg.model_dump())
    return result


@pytest.fixture(scope="module")
def one_actor(ray_local, exemplar_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    return run(base_config(exemplar_file, str(out))), out


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


def test_mean_sap_equals_plain_computation(one_actor, smollm2_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result, out = one_actor
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
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


def test_exemplars_recorded_and_never_the_question_itself(one_actor):
    result, out = one_actor
    for row in pq.read_table(out / "scores.parquet").to_pylist():
        assert len(row["exemplar_ids"]) == 3
        assert len(set(row["exemplar_ids"])) == 3


def test_two_actors_give_identical_scores(one_actor, exemplar_file, tmp_path):
    result_one, _ = one_actor
    result_two = run(base_config(exemplar_file, str(tmp_path), **{"ray.actors": 2}))
    key = lambda r: (r["question_id"], r["strategy"])  # noqa: E731
    one = {key(r): r for r in result_one.scores}
    two = {key(r): r for r in result_two.scores}
    assert one.keys() == two.keys()
    for k in one:
        assert one[k]["sap"] == two[k]["sap"] and one[k]["ppl"] == two[k]["ppl"] and one[k]["ifd"] == two[k]["ifd"]


def test_same_config_and_seed_give_identical_json(one_actor, exemplar_file, tmp_path):
    _, out = one_actor
    run(base_config(exemplar_file, str(tmp_path)))
    assert (tmp_path / "selection.json").read_bytes() == (out / "selection.json").read_bytes()
    assert (tmp_path / "exemplars.jsonl").read_bytes() == (out / "exemplars.jsonl").read_bytes()


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
        "data.candidates": candidates, "data.questions": qfile, "engine_args": {"max_length": 1024}})
    result = run(raw)
    counts = result.counts
    assert counts["candidate_rows_in"] == len(rows) == 22
    assert counts["scored"] + counts["rejected"] + counts["not_sampled"] == counts["candidate_rows_in"]
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").open()]
    reasons = {r["source"].rsplit(":", 1)[1]: r["reason"] for r in rejects if r["stage"] != "sample"}
    assert "malformed JSON" in reasons["18"]
    assert "unknown question_id 'nope'" in reasons["19"]
    assert "duplicate (question_id, strategy)" in reasons["20"]
    assert reasons["21"] == "empty response"
    assert "'response' is int, not a string" in reasons["22"]
    assert "over-length" in reasons["6"]
    assert all(r["source"].startswith(candidates) for r in rejects)
    # Questions that lost a strategy leave the paired sample; their other rows are recorded as such.
    sample_rejects = [r for r in rejects if r["stage"] == "sample"]
    assert {r["question_id"] for r in sample_rejects} == {good[17]["question_id"]}
    assert len(sample_rejects) == 5
    # 22 rows = 5 rejected at read + 5 unpaired + 1 over-long + 11 scored (2 questions x 6, less the over-long one)
    assert counts["rejected"] == 11 and counts["scored"] == 11 and counts["not_sampled"] == 0


def test_missing_column_fails_naming_file_and_column(ray_local, exemplar_file, tmp_path):
    bad = write_jsonl(tmp_path / "c.jsonl", [{"question_id": "test-0000", "strategy": "human", "answer": "x"}])
    from sapray.read import InputError

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


def garbled(text: str) -> str:
    """The same characters, shuffled per word: a response no model finds familiar."""
    import random

    rng = random.Random(len(text))
    return " ".join("".join(rng.sample(w, len(w))) for w in text.split()[::-1])


def test_race_drops_a_loser_and_never_scores_it_again(ray_local, exemplar_file, tmp_path):
    keep = ("human", "175b_verification")
    rows = [c for c in load_candidates() if c["strategy"] in keep]
    rows += [{**c, "strategy": "garbled", "response": garbled(c["response"])}
             for c in load_candidates() if c["strategy"] == "human"]
    candidates = write_jsonl(tmp_path / "candidates.jsonl", rows)
    lines: list[str] = []
    raw = base_config(exemplar_file, str(tmp_path / "out"), **{
        "data.candidates": candidates, "metrics": ["sap"],
        "sample": {"max_questions": 20, "round_size": 5, "min_questions": 5, "seed": 7}})
    cfg = load_config(raw)
    result = run_select(cfg, on_round=lines.append)
    race = result.summary["race"]
    assert race["stop"] == "confident" and race["eliminated"] == {"garbled": 1}
    first = race["rounds"][0]
    assert first["eliminated"] == ["garbled"] and first["intervals"]["garbled"]["lo"] > first["margin"]
    assert "round 1: 5 questions" in lines[0] and "dropped garbled" in lines[0]
    scored = [s for s in result.scores if s["strategy"] == "garbled"]
    assert len(scored) == 5  # the first round only
    # SAP only: one request per candidate; the loser's requests stop after round 1
    assert result.counts["requests_scored"] == len(result.scores) == 15 + 10 * (len(race["rounds"]) - 1)
    counts = result.counts
    assert counts["not_sampled_eliminated"] == counts["questions_sampled"] - 5
    assert counts["scored"] + counts["rejected"] + counts["not_sampled"] == counts["candidate_rows_in"] == 60
    assert result.summary["ranking"][-1] == "garbled"
    assert all(math.isnan(s["ppl"]) for s in result.scores)  # PPL was not scored
    cost = race["cost"]
    assert cost["garbled"]["questions"] == 5 and cost["garbled"]["scoring_tokens_saved"] > 0
    # same config, same race, same bytes
    write_outputs(cfg.output, result, cfg.model_dump())
    again = tmp_path / "again"
    run({**raw, "output": str(again)})
    assert (again / "selection.json").read_bytes() == (tmp_path / "out" / "selection.json").read_bytes()


def test_a_stray_strategy_is_excluded_not_the_questions(ray_local, exemplar_file, tmp_path):
    questions = load_questions()[:4]
    ids = {q["question_id"] for q in questions}
    rows = [c for c in load_candidates() if c["question_id"] in ids and c["strategy"] in ("human", "socratic")]
    rows.append({"question_id": questions[0]["question_id"], "strategy": "Human ", "response": "It is 4."})
    candidates = write_jsonl(tmp_path / "candidates.jsonl", rows)
    result = run(base_config(exemplar_file, str(tmp_path / "out"), **{
        "data.candidates": candidates, "data.questions": write_jsonl(tmp_path / "q.jsonl", questions),
        "metrics": ["sap"], "sample": {"max_questions": 4, "round_size": 4, "seed": 1}}))
    chosen = result.summary["strategy_set"]
    assert chosen["chosen"] == ["human", "socratic"]
    assert "covers 1 of 4 questions" in chosen["excluded"]["Human "]
    assert chosen["similar_names"] == [["Human ", "human"]]
    assert result.summary["per_strategy"]["human"]["n"] == 4  # every question stays in the paired design
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").open()]
    assert [r["stage"] for r in rejects] == ["strategy"]
    # four questions are too few to rank: no certainty is claimed, anywhere
    assert result.summary["evidence"]["sufficient"] is False
    assert result.summary["winner"]["provisional"] is True
    assert "bootstrap_p_best" not in result.summary["winner"]
    from sapray.report import render_table

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
    flags = ["select", "--model", "smollm2", *files, "--exemplars", exemplar_file,
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
