"""The full-scale output without a model: prompt templates, the output's owner, cost over runs, rejects.

A ``file`` teacher (precomputed responses) runs the same cluster path as a model teacher: read, join,
shards written by workers, resume, merge.
"""

from __future__ import annotations

import json

import pytest
from conftest import DATA_DIR, load_candidates, load_questions, read_parts

from sapray.config import ConfigError, GenerateConfig, RayConfig, StrategyConfig, TeacherConfig
from sapray.dataplane.fullset import run_full_generation
from sapray.dataplane.read import InputError, Reject


def file_strategy(strategy: str, name: str | None = None) -> StrategyConfig:
    teacher = TeacherConfig(kind="file", path=str(DATA_DIR / "candidates.jsonl"), strategy=strategy)
    return StrategyConfig(name=name or strategy, teacher=teacher)


@pytest.mark.parametrize("prompt, message", [
    ("Solve {question} like {style}", r"unknown placeholder\(s\) \['style'\]"),
    ("Return JSON {\"answer\": 1} for {question}", r"unknown placeholder"),
    ("Unclosed {question", "bad template"),
    ("Answer like these:\n{examples}\n\n{question}", r"uses \{examples\} but no examples"),
])
def test_bad_prompt_templates_fail_at_load_naming_the_strategy(prompt, message):
    with pytest.raises(ValueError, match=message) as info:
        StrategyConfig(name="styled", teacher={"kind": "vllm", "model": "smollm2"}, prompt=prompt)
    assert "strategy 'styled'" in str(info.value)


def test_templates_fill_question_gold_examples_and_literal_braces():
    strategy = StrategyConfig(
        name="styled", teacher={"kind": "vllm", "model": "smollm2"}, system="Follow this style:\n{examples}",
        prompt="Q: {question}\nReference: {gold}\nReply as JSON {{\"answer\": ...}}", examples=["A: 1", "A: 2"])
    question = {"question": "What is {x}?", "gold": "7"}  # braces inside values are data, not placeholders
    assert strategy.messages(question) == [
        {"role": "system", "content": "Follow this style:\nA: 1\n\nA: 2"},
        {"role": "user", "content": "Q: What is {x}?\nReference: 7\nReply as JSON {\"answer\": ...}"},
    ]
    plain = StrategyConfig(name="p", teacher={"kind": "vllm", "model": "smollm2"})
    assert strategy.prompt_hash != plain.prompt_hash
    assert plain.prompt_hash == plain.model_copy(update={"examples": []}).prompt_hash


@pytest.mark.slow
def test_output_resumes_sums_cost_over_runs_and_refuses_another_strategy(ray_local, tmp_path):
    questions = load_questions()[:6]
    gen = GenerateConfig(output=str(tmp_path / "train"), shard_size=2)
    bad_row = Reject("q.jsonl:7", "missing required column(s) ['question']", "questions")
    first = run_full_generation(file_strategy("socratic"), questions[:4], RayConfig(), gen, [bad_row])
    assert (first["questions_done"], first["rows"], first["question_rows_rejected"]) == (4, 4, 1)
    again = run_full_generation(file_strategy("socratic"), questions, RayConfig(), gen, [bad_row])
    assert again["questions_done"] == 6 and again["rows"] == 6 and again["rejected"] == 1
    # file teachers cost nothing; the point is that totals cover both runs' shards and the run's own part
    assert again["cost_total"]["prompt_tokens"] == 0 and again["cost_this_run"]["requests"] == 2

    train = read_parts(tmp_path / "train" / "train")
    expected = {c["question_id"]: c["response"] for c in load_candidates() if c["strategy"] == "socratic"}
    assert [r["question_id"] for r in train] == [q["question_id"] for q in questions]
    assert all(r["messages"][-1] == {"role": "assistant", "content": expected[r["question_id"]]} for r in train)
    assert read_parts(tmp_path / "train" / "rejects") == [bad_row.to_dict()]
    assert read_parts(tmp_path / "train" / "parquet") == train

    with pytest.raises(ConfigError, match=r"from strategy 'socratic' and it differs in \['strategy', 'teacher'\]"):
        run_full_generation(file_strategy("human"), questions, RayConfig(), gen)
    changed_prompt = file_strategy("socratic").model_copy(update={"prompt": "Q: {question}"})
    with pytest.raises(ConfigError, match=r"differs in \['prompt_hash'\]"):
        run_full_generation(changed_prompt, questions, RayConfig(), gen)


def test_misspelt_file_strategy_fails_naming_what_the_file_has(ray_local, tmp_path):
    gen = GenerateConfig(output=str(tmp_path / "train"))
    with pytest.raises(InputError, match=r"no responses for strategy 'socractic' \(it has \['175b_finetuning'"):
        run_full_generation(file_strategy("socractic"), load_questions()[:2], RayConfig(), gen)
    # nothing was written, so the corrected name may use the same output
    assert run_full_generation(file_strategy("socratic"), load_questions()[:2], RayConfig(), gen)["rows"] == 2


def test_a_file_teacher_without_usable_rows_says_so_whether_or_not_it_names_a_strategy():
    from sapray.dataplane.teachers import no_responses

    named = TeacherConfig(kind="file", path="t.jsonl", strategy="socratic")
    assert str(no_responses(named, {"human"})) == "t.jsonl has no responses for strategy 'socratic' (it has ['human'])"
    every = TeacherConfig(kind="file", path="t.jsonl")
    assert str(no_responses(every, set())) == "t.jsonl has no usable responses (every row was rejected)"


def test_an_api_teacher_whose_key_variable_is_unset_fails_before_any_request(ray_local, tmp_path, monkeypatch):
    monkeypatch.delenv("SAPRAY_UNSET_KEY", raising=False)
    strategy = StrategyConfig(name="api", teacher={"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1",
                                                   "api_key_env": "SAPRAY_UNSET_KEY"})
    with pytest.raises(ConfigError, match="strategy api: the API key variable SAPRAY_UNSET_KEY is not set"):
        run_full_generation(strategy, load_questions()[:1], RayConfig(), GenerateConfig(output=str(tmp_path / "t")))


def test_a_secret_never_prints():
    from sapray.dataplane.api_teacher import Secret

    secret = Secret("sk-very-secret")
    assert "sk-very" not in repr(secret) + str(secret) + f"{secret}" + repr({"api_key": secret})
    assert secret.reveal() == "sk-very-secret"


def test_a_finished_selection_is_reused_only_for_the_same_config(tmp_path):
    from sapray.config import load_config
    from sapray.dataplane.runs import finished_selection

    raw = {"data": {"questions": str(DATA_DIR / "questions.jsonl"), "candidates": str(DATA_DIR / "candidates.jsonl")},
           "exemplars": {"file": "x.jsonl"}, "output": str(tmp_path / "sel")}
    cfg = load_config(raw)
    out = tmp_path / "sel"
    out.mkdir()
    (out / "selection.json").write_text(json.dumps({"winner": {"strategy": "human"}}))
    (out / "run.json").write_text(json.dumps({"config": cfg.model_dump()}))
    assert finished_selection(cfg) is None  # no sample cost file: the selection did not finish writing
    (out / "sample_generation_cost.jsonl").write_text(json.dumps({"strategy": "t", "prompt_tokens": 3}) + "\n")
    assert finished_selection(cfg) == ({"winner": {"strategy": "human"}}, {"t": {"prompt_tokens": 3}})
    assert finished_selection(load_config(raw, ["sample.seed=1"])) is None


def test_entry_totals_sum_every_shard_entry_and_this_runs_by_hand():
    import pyarrow as pa

    from sapray.dataplane.fullset import ENTRY_SCHEMA, entry_totals

    def entry(run, prompt, completion, money, rows=1, rejected=0, truncated=0):
        return {"order": 0, "question_id": "q", "rows_json": "[]", "rejects_json": "[]", "rows": rows,
                "rejected": rejected, "truncated": truncated, "prompt_tokens": prompt, "completion_tokens": completion,
                "money": money, "run": run}

    batch = pa.Table.from_pylist([entry("a", 10, 5, 0.25), entry("b", 7, 0, None, rows=0, rejected=2),  # no prices
                                  entry("a", 3, 20, 0.5, rows=2, truncated=1)], schema=ENTRY_SCHEMA)
    totals = entry_totals(batch, "a")
    assert totals == {
        "all.rows": [3], "all.rejected": [2], "all.truncated": [1], "all.prompt_tokens": [20],
        "all.completion_tokens": [25], "all.money": [0.75], "all.questions": [3],
        "run.rows": [3], "run.rejected": [0], "run.truncated": [1], "run.prompt_tokens": [13],
        "run.completion_tokens": [25], "run.money": [0.75], "run.questions": [2]}
    assert entry_totals(batch, "b")["run.money"] == [None]  # a run without prices has no money, not 0


@pytest.mark.slow
def test_the_cluster_join_rejects_duplicate_ids_and_joins_id_less_responses_by_text(ray_local, tmp_path,
                                                                                     monkeypatch):
    """A teacher file in chat form without ids joins by exact text. A second row with a known id is a
    duplicate (its text joins nothing); a text two questions share joins neither. The same set from one
    shard and one join bucket as from 1 KiB shards and buckets of 2 rows."""
    import sapray.dataplane.stages
    questions = load_questions()[:4]
    rows = [*questions, {**questions[1], "question": "a different text"},
            {"question_id": "twin", "question": questions[2]["question"]}]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    chats = [{"messages": [{"role": "user", "content": q["question"]}, {"role": "assistant", "content": f"answer {i}"}]}
             for i, q in enumerate(questions)]
    chats.append({"messages": [{"role": "user", "content": "a different text"}, {"role": "assistant", "content": "x"}]})
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chats))
    strategy = StrategyConfig(name="chat", teacher=TeacherConfig(kind="file", path=str(tmp_path / "chat.jsonl")))
    outputs = {}
    for shard_mb, shard_size in ((64, 64), (1 / 1024, 1)):
        monkeypatch.setattr(sapray.dataplane.stages, "JOIN_BUCKET_ROWS", 250_000 if shard_size == 64 else 2)
        out = tmp_path / f"out-{shard_size}"
        metadata = run_full_generation(strategy, str(tmp_path / "q.jsonl"), RayConfig(shard_mb=shard_mb),
                                       GenerateConfig(output=str(out), shard_size=shard_size))
        outputs[shard_size] = read_parts(out / "train"), read_parts(out / "rejects"), metadata
    (train, rejects, metadata), (train_many, rejects_many, _) = outputs[64], outputs[1]
    assert (train_many, rejects_many) == (train, rejects)
    ids = [q["question_id"] for q in questions]
    assert [(r["question_id"], r["response"]) for r in train] == [(ids[0], "answer 0"), (ids[1], "answer 1"),
                                                                  (ids[3], "answer 3")]
    path = tmp_path / "q.jsonl"
    assert [(r["source"], r["stage"]) for r in rejects] == [(f"{path}:5", "questions"), (f"{path}:3", "generate"),
                                                            (f"{path}:6", "generate")]
    assert rejects[0]["reason"] == f"duplicate question_id {ids[1]!r} (first at {path}:2)"
    assert rejects[1]["reason"] == rejects[2]["reason"] == f"no response in {tmp_path / 'chat.jsonl'}"
    assert (metadata["questions"], metadata["questions_done"], metadata["question_rows_rejected"]) == (5, 5, 1)
    assert metadata["rows"] + metadata["rejected"] == len(rows)


@pytest.mark.slow
def test_run_whose_sample_responses_are_all_rejected_ends_with_one_clear_message(ray_local, tmp_path):
    """No response scored (here: every one over the length limit) means no winner: `sapray run` says so
    and where the rejects are, without a traceback (it ended in a TypeError, found when a run's tiny-model
    teachers wrote only empty responses)."""
    import yaml
    from click.testing import CliRunner
    from small_job import exemplar_rows, jsonl

    from sapray.cli import main
    from sapray.engines.models import TINY_RANDOM

    questions = load_questions()[:2]
    (tmp_path / "q.jsonl").write_text(jsonl(questions))
    (tmp_path / "ex.jsonl").write_text(jsonl(exemplar_rows()))
    strategies = []
    for name in ("blank", "spaces"):
        (tmp_path / f"{name}.jsonl").write_text(jsonl([{"question_id": q["question_id"], "strategy": name,
                                                        "response": "and so on " * 100} for q in questions]))
        strategies.append({"name": name, "teacher": {"kind": "file", "path": str(tmp_path / f"{name}.jsonl"),
                                                     "strategy": name}})
    config = {"model": TINY_RANDOM, "engine": "hf", "engine_args": {"max_length": 256},
              "data": {"questions": str(tmp_path / "q.jsonl")},
              "strategies": strategies, "sample": {"max_questions": 2, "round_size": 2},
              "exemplars": {"file": str(tmp_path / "ex.jsonl")}, "ray": {"actors": 1},
              "output": str(tmp_path / "select"), "generate": {"output": str(tmp_path / "train")}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    done = CliRunner().invoke(main, ["run", "--config", str(tmp_path / "run.yaml")])
    assert done.exit_code == 1 and "Traceback" not in done.output, done.output
    assert "no response of any strategy could be scored on the sample" in done.output
    assert f"{tmp_path / 'select' / 'rejects'}/" in done.output
    rejects = read_parts(tmp_path / "select" / "rejects")
    assert len(rejects) == 4 and all("over-length" in r["reason"] for r in rejects)
    assert not (tmp_path / "train").exists()  # nothing was generated


def test_each_row_is_generated_with_its_own_sampling_as_if_asked_alone():
    """GenerateActor with a sampling_json column: one engine call per distinct sampling, rows in order."""
    import numpy as np

    from sapray.dataplane.actors import GenerateActor
    from sapray.engines.base import EngineSpec, SamplingConfig
    from sapray.engines.models import TINY_RANDOM

    actor = GenerateActor(EngineSpec("hf", TINY_RANDOM), {"max_tokens": 1})
    prompts = [[1, 504, 3158], [1, 30, 31, 32, 33], [1, 504, 3158, 6]]
    samplings = [{"max_tokens": 3}, {"max_tokens": 5, "temperature": 0.8, "seed": 11}, {"max_tokens": 3}]
    out = actor({"prompt_ids": np.array(prompts, dtype=object), "row_id": np.array(["a", "b", "c"]),
                 "sampling_json": np.array([json.dumps(s, sort_keys=True) for s in samplings])})
    assert list(out["row_id"]) == ["a", "b", "c"] and "sampling_json" not in out and "prompt_ids" not in out
    for prompt, sampling, texts, tokens in zip(prompts, samplings, out["texts"], out["completion_tokens"],
                                               strict=True):
        alone = actor.engine.generate([prompt], SamplingConfig(**sampling))[0]
        assert texts == alone.texts and tokens == sum(alone.completion_tokens) <= sampling["max_tokens"]
    # without the column every row takes the actor's own sampling
    plain = actor({"prompt_ids": np.array(prompts, dtype=object)})
    assert plain["completion_tokens"] == [1, 1, 1]


@pytest.mark.slow
def test_strategies_of_one_model_teacher_share_its_actors_and_keep_their_own_prompts(ray_local):
    """The sample for two prompt styles of one hf teacher: one actor pool (the engine loads once), each
    strategy's prompts, sampling and costs its own, in the order asked."""
    import ray

    from sapray.dataplane.teachers import generate
    from sapray.engines.models import TINY_RANDOM

    teacher = {"kind": "hf", "model": TINY_RANDOM}
    strategies = [StrategyConfig(name="terse", teacher=teacher, prompt="{question}", max_tokens=2),
                  StrategyConfig(name="steps", teacher=teacher, prompt="{question}\nStep by step.", max_tokens=4),
                  file_strategy("human")]
    questions = [{**q, "source": "q"} for q in load_questions()[:3]]

    def engine_actors() -> set[str]:  # from the GCS (the state API would need the dashboard)
        return {i for i, a in ray._private.state.actors().items() if "GenerateActor" in a["ActorClassName"]}

    before = engine_actors()
    out = list(generate(strategies, questions, RayConfig(actors=1, batch_size=2)))
    assert len(engine_actors() - before) == 1  # terse and steps shared it; the file teacher needs none
    assert [name for name, *_ in out] == ["terse"] * 3 + ["steps"] * 3 + ["human"] * 3
    cost = {name: [c for n, _, _, c in out if n == name] for name in ("terse", "steps")}
    assert [c.completion_tokens for c in cost["terse"]] == [2] * 3  # a random model never stops early here
    assert [c.completion_tokens for c in cost["steps"]] == [4] * 3
    # the same questions, the longer prompt: each row went out with its own strategy's prompt
    assert all(s.prompt_tokens > t.prompt_tokens for s, t in zip(cost["steps"], cost["terse"], strict=True))
    assert all(len(rows) + len(rejects) == 1 for _, rows, rejects, _ in out)
