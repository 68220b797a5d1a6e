"""`sapray filter` end to end through Ray Data (hf engine, CPU), scored by the tiny random-weight model (its
numbers against plain computations of its weights) but where a LoRA adapter trained on SmolLM2 is the point."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import load_candidates, load_questions, read_parts
from helpers import write_jsonl

from sapray.config import load_filter_config
from sapray.core import filters
from sapray.dataplane.journal import Journal
from sapray.engines.models import TINY_RANDOM
from sapray.jobs.filter import fingerprint, run_filter, write_filter

# Every test runs filter jobs on Ray Data, each over 20 s: make test-fast leaves the file out
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def samples_file(tmp_path_factory) -> str:
    """8 training samples as chat `messages` (4 questions x human and 175b_verification)."""
    questions = {q["question_id"]: q["question"] for q in load_questions()[:4]}
    rows = [{"messages": [{"role": "user", "content": questions[c["question_id"]]},
                          {"role": "assistant", "content": c["response"]}], "sample_id": c["question_id"]}
            for c in load_candidates() if c["question_id"] in questions
            and c["strategy"] in ("human", "175b_verification")]
    rows.append({"messages": [{"role": "user", "content": "What is 2+2?"}]})  # no assistant turn: rejected
    return write_jsonl(tmp_path_factory.mktemp("samples") / "train.jsonl", rows)


def run(raw: dict, tmp_path):
    cfg = load_filter_config({"model": TINY_RANDOM, "ray": {"actors": 1, "batch_size": 16},
                              "output": str(tmp_path / "out"), **raw})
    result = run_filter(cfg)
    write_filter(cfg.output, result)
    counts = result.summary["counts"]
    assert counts["kept"] + counts["dropped"] + counts["rejected"] == counts["rows_in"]
    kept = read_parts(tmp_path / "out" / "kept")
    assert len(kept) == counts["kept"]
    scores = read_parts(tmp_path / "out" / "scores")
    assert len(scores) == counts["kept"] + counts["dropped"]
    assert len(read_parts(tmp_path / "out" / "rejects")) == counts["rejected"]
    assert all(r["reason"] for r in scores if not r["kept"])  # every dropped row says why
    return result, scores


def plain_loss(model, tokenizer, context_ids: list[int], continuation: str) -> float:
    target = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([context_ids + target])
    labels = ids.clone()
    labels[0, : len(context_ids)] = -100
    with torch.no_grad():
        return model(input_ids=ids, labels=labels).loss.item()


def test_dsweight(ray_local, samples_file, tmp_path, tiny_reference):
    valid = write_jsonl(tmp_path / "valid.jsonl", [
        {"question": q["question"], "answer": c["response"]}
        for q, c in zip(load_questions()[10:12], [c for c in load_candidates() if c["strategy"] == "human"][10:12],
                        strict=True)])
    result, scores = run({"method": "dsweight", "input": samples_file,
                          "dsweight": {"valid": valid, "keep_fraction": 0.79}}, tmp_path)
    counts = result.summary["counts"]
    assert counts == {"rows_in": 9, "kept": 6, "dropped": 2, "rejected": 1}  # round(0.79 * 8 + 0.5) = 6
    # The authors' whole-string loss, recomputed plainly: start token, then 'Q: {q}\nA: {a}'.
    model, tokenizer = tiny_reference
    start = [tokenizer.bos_token_id]
    valid_rows = [json.loads(line) for line in open(valid)]
    valid_mean = sum(plain_loss(model, tokenizer, start, f"Q: {v['question']}\nA: {v['answer']}")
                     for v in valid_rows) / 2
    assert result.summary["valid_mean_loss"] == pytest.approx(valid_mean, rel=1e-4)
    for row in scores:
        loss = plain_loss(model, tokenizer, start, f"Q: {row['question']}\nA: {row['response']}")
        assert row["loss"] == pytest.approx(loss, rel=1e-4)
        assert row["ds_weight"] == pytest.approx(min(valid_mean / loss, 2.0), rel=1e-4)
    kept_shifts = sorted(r["shift"] for r in scores if r["kept"])
    dropped_shifts = [r["shift"] for r in scores if not r["kept"]]
    assert max(kept_shifts) <= min(dropped_shifts)


def test_ifd_both_directions_and_both_shared_context_paths(ray_local, samples_file, tmp_path):
    high, scores = run({"method": "ifd", "input": samples_file, "ifd": {"direction": "high", "keep_fraction": 0.5}},
                       tmp_path / "high")
    for r in scores:
        assert r["ifd"] == pytest.approx(r["nll_given_question"] / r["nll_alone"])
    eligible = [r for r in scores if r["ifd"] <= 1]
    assert high.summary["counts"]["kept"] == filters.keep_count(0.5, len(eligible))
    assert all(r["ifd"] <= 1 for r in scores if r["kept"])
    assert all("> 1" in r["reason"] for r in scores if r["ifd"] > 1)
    assert high.summary["cut"] == min(r["ifd"] for r in scores if r["kept"])  # the exact distributed cut
    # the other direction through the hf engine's packed path (every response after the shared empty context
    # in one row): the same losses as the cached path's, to float rounding
    low, low_scores = run({"method": "ifd", "input": samples_file, "ifd": {"direction": "low", "keep_fraction": 0.5},
                           "engine_args": {"packed": True}}, tmp_path / "low")
    cached = {r["sample_id"]: r for r in scores}
    for r in low_scores:
        for column in ("nll_given_question", "nll_alone"):
            assert r[column] == pytest.approx(cached[r["sample_id"]][column], rel=1e-5)
    assert low.summary["counts"]["kept"] == 4
    kept = [r["ifd"] for r in low_scores if r["kept"]]
    assert max(kept) <= min(r["ifd"] for r in low_scores if not r["kept"])
    assert low.summary["cut"] == max(kept)
    assert low.summary["distributions"]["ifd"] == pytest.approx(filters.distribution([r["ifd"] for r in low_scores]),
                                                                 rel=1e-12)


def test_rsr_keeps_the_lowest_ratio_and_matches_a_plain_recomputation(ray_local, samples_file, tmp_path,
                                                                      tiny_reference):
    """Each response with its question as chat context (the paper's): its rank-surprisal ratio against one plain
    fp32 forward per sample (surprisal logsumexp(z) - z[y], strict rank clipped at 100), the lowest half kept."""
    from sapray.core.scoring import RANK_CLIP, ScoreRequest, encode

    result, scores = run({"method": "rsr", "input": samples_file, "rsr": {"keep_fraction": 0.5}},
                         tmp_path)
    assert result.summary["counts"] == {"rows_in": 9, "kept": 4, "dropped": 4, "rejected": 1}
    model, tokenizer = tiny_reference
    for row in scores:
        e = encode(ScoreRequest("r", [{"role": "user", "content": row["question"]}], row["response"]), tokenizer,
                   2048, "joint", "reject")
        with torch.no_grad():
            logits = model(torch.tensor([e.context_ids + e.continuation_ids])).logits[0].float()
        z = logits[len(e.context_ids) - 1:-1]
        y = torch.tensor(e.continuation_ids)
        chosen = z[torch.arange(len(y)), y]
        surprisal = (torch.logsumexp(z, -1) - chosen).double().sum().item()
        ranks = (1 + (z > chosen[:, None]).sum(-1)).clamp(max=RANK_CLIP).sum().item()
        assert row["nll"] == pytest.approx(surprisal / len(y), rel=1e-5)
        assert row["rsr"] == pytest.approx(ranks / surprisal, rel=1e-3)
    kept = [r["rsr"] for r in scores if r["kept"]]
    assert max(kept) <= min(r["rsr"] for r in scores if not r["kept"]) and result.summary["cut"] == max(kept)
    assert all(r["reason"].startswith("rsr ") and "lowest 50%" in r["reason"] for r in scores if not r["kept"])


def train_tiny_lora(base: str, samples: list[dict], out) -> str:
    """A real LoRA adapter: a few SGD steps on the samples' response tokens."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(2):
        for s in samples[:2]:
            ids = torch.tensor([tokenizer(f"{s['question']}\n{s['response']}")["input_ids"]])
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.save_pretrained(out)
    return str(out)


def test_lobass_with_a_trained_lora_adapter(ray_local, samples_file, tmp_path, smollm2_path):
    rows = [json.loads(line) for line in open(samples_file)][:8]
    samples = [{"question": r["messages"][0]["content"], "response": r["messages"][1]["content"]} for r in rows]
    adapter = train_tiny_lora(smollm2_path, samples, tmp_path / "adapter")
    result, scores = run({"method": "lobass", "model": "smollm2", "input": samples_file,
                          "lobass": {"reference_adapter": adapter, "keep_fraction": 0.25}}, tmp_path)
    assert result.summary["counts"] == {"rows_in": 9, "kept": 2, "dropped": 6, "rejected": 1}
    for r in scores:
        assert r["learnability"] == pytest.approx((r["loss_initial"] - r["loss_reference"]) / r["loss_initial"])
    # The adapter was trained on the first two samples: their loss really dropped.
    assert all(r["loss_reference"] < r["loss_initial"] for r in scores[:2])
    assert any(abs(r["learnability"]) > 0.01 for r in scores)
    top = sorted(scores, key=lambda r: -r["learnability"])[:2]
    assert {r["sample_id"] for r in top} == {r["sample_id"] for r in scores if r["kept"]}


def test_self_consistency_in_the_cluster_same_bytes_whatever_the_batches_and_actors(ray_local, tmp_path, capsys):
    """Questions read, deduplicated, sampled and voted on in the cluster; a duplicate id and a broken line
    are question rejects; one actor, or two (one question per batch) resuming from a journal that holds the
    first question's answers (as if stopped after its first entry): the same files."""
    questions = load_questions()[:2]
    path = tmp_path / "q.jsonl"
    write_jsonl(path, [*questions, {**questions[0], "question": "a later row with the same id"},
                       '{"question_id": "broken", "question": '])
    raw = {"method": "consistency", "input": str(path),
           "consistency": {"samples": 4, "temperature": 0.8, "max_tokens": 48, "seed": 1}}

    def filtered(actors: int, batch_size: int, journaled=None) -> tuple[dict, dict, pa.Table]:
        out = tmp_path / f"out-{actors}"
        cfg = load_filter_config({**raw, "output": str(out), "ray": {"actors": actors, "batch_size": batch_size}})
        if journaled is not None:
            Journal(str(out / "journal"), fingerprint(cfg))
            pq.write_table(journaled, out / "journal" / "answers-stopped.parquet")
        result = run_filter(cfg)
        write_filter(cfg.output, result)
        assert [p.name for p in (out / "journal").glob("*.parquet")] == ["answers.parquet"]  # its entries merged
        files = {f"{d}/{p.name}": p.read_bytes() for d in ("kept", "scores", "rejects")
                 for p in sorted((out / d).iterdir())}
        return result.summary, files, pq.read_table(out / "journal" / "answers.parquet")

    summaries, outputs, journals = {}, {}, {}
    summaries[1], outputs[1], journals[1] = filtered(1, 16)
    assert journals[1].column("order").to_pylist() == [0, 1]
    capsys.readouterr()
    summaries[2], outputs[2], journals[2] = filtered(2, 1, journaled=journals[1].slice(0, 1))
    assert "resuming: 1 questions answered by the earlier run (not prompted" in capsys.readouterr().err
    assert outputs[1] == outputs[2] and journals[1].equals(journals[2])
    summary = summaries[1]
    assert summary == summaries[2]
    assert summary["counts"] == {"rows_in": 8, "kept": summary["counts"]["kept"],
                                 "dropped": 8 - summary["counts"]["kept"], "rejected": 0}
    assert summary["questions"] == 2 and summary["question_rows_rejected"] == 2
    scores = read_parts(tmp_path / "out-1" / "scores")
    assert [r["sample_id"] for r in scores] == [f"{q['question_id']}#{k}" for q in questions for k in range(4)]
    assert len(read_parts(tmp_path / "out-1" / "kept")) == summary["counts"]["kept"]
    for qid in {r["question_id"] for r in scores}:
        group = [r for r in scores if r["question_id"] == qid]
        answers = [r["answer"] for r in group]
        vote = filters.majority(answers)
        assert all(r["majority"] == vote for r in group)
        assert [r["kept"] for r in group] == [vote is not None and a == vote for a in answers]
        assert all(r["reason"] for r in group if not r["kept"])
        assert all(r["finish_reason"] in ("stop", "length") for r in group)
    assert len({r["response"] for r in scores}) > 2  # really sampled
    no_answer = sum(1 for qid in {r["question_id"] for r in scores}
                    if all(r["answer"] is None for r in scores if r["question_id"] == qid))
    assert summary["questions_without_parsable_answer"] == no_answer
    kept_agreement = [r["agreement"] for r in scores if r["kept"]]
    assert summary["distributions"]["agreement"] == pytest.approx(filters.distribution(kept_agreement))
    assert summary["generated_tokens"] > 0
    rejects = read_parts(tmp_path / "out-1" / "rejects")
    assert [(r["source"], r["stage"]) for r in rejects] == [(f"{path}:3", "questions"), (f"{path}:4", "questions")]
    assert "duplicate" in rejects[0]["reason"] and rejects[0]["question_id"] == questions[0]["question_id"]


def test_same_bytes_whatever_the_actors_and_input_order_whatever_the_shards(
        ray_local, samples_file, tmp_path):
    """Many small shards (1 KiB) read by different workers, scored by one actor or two: the same files."""
    rows = [json.loads(line) for line in open(samples_file)]
    path = write_jsonl(tmp_path / "many.jsonl", rows * 3)  # 27 rows, 3 without a response
    outputs = {}
    for actors, shard_mb in ((1, 1 / 1024), (2, 1 / 1024), (1, 64)):
        cfg = load_filter_config({"method": "ifd", "model": TINY_RANDOM, "input": path,
                                  "ifd": {"direction": "low", "keep_fraction": 0.5},
                                  "ray": {"actors": actors, "batch_size": 4, "shard_mb": shard_mb},
                                  "output": str(tmp_path / f"out-{actors}-{shard_mb}")})
        result = run_filter(cfg)
        assert result.summary["counts"] == {"rows_in": 27, "kept": 12, "dropped": 12, "rejected": 3}
        out = tmp_path / f"out-{actors}-{shard_mb}"
        outputs[actors, shard_mb] = {f"{d}/{p.name}": p.read_bytes() for d in ("kept", "scores", "rejects")
                                     for p in sorted((out / d).iterdir())}
    assert outputs[1, 1 / 1024] == outputs[2, 1 / 1024]
    few, many = (read_parts(tmp_path / f"out-1-{mb}" / "scores") for mb in (64, 1 / 1024))
    assert [r["sample_id"] for r in many] == [r["sample_id"] for r in few]  # input order, across shards
    assert [r["source"] for r in many] == [f"{path}:{n}" for n in range(1, 28) if n % 9]
    assert [r["ifd"] for r in many] == pytest.approx([r["ifd"] for r in few], rel=1e-5)
    # one block of 24 scored rows, six engine batches of 4: one row group, not one a batch
    (scores,) = (tmp_path / "out-1-64" / "scores").iterdir()
    assert pq.ParquetFile(scores).metadata.num_row_groups == 1
    rejects = read_parts(tmp_path / "out-1-64" / "rejects")
    assert [r["source"] for r in rejects] == [f"{path}:{n}" for n in (9, 18, 27)]
    assert all(r["reason"] == "no assistant turn after the first user turn in 'messages'" and r["stage"] == "read"
               for r in rejects)
