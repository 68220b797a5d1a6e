"""A rehearsal runs the whole job with simulated engines: the real job's outputs, rejects and row counts, the same
bytes with 1 or 3 simulated devices, and a projection from what it measured."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import load_candidates, load_questions, read_parts

from sapray.config import load_filter_config
from sapray.dataplane.rehearsal import Meter, Rehearsal, describe
from sapray.engines.models import TINY_RANDOM
from sapray.jobs.filter import run_filter, write_filter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def samples_file(tmp_path_factory) -> str:
    """40 chat samples (20 questions x 2 strategies) and one without an assistant turn (rejected)."""
    questions = {q["question_id"]: q["question"] for q in load_questions()}
    rows = [{"messages": [{"role": "user", "content": questions[c["question_id"]]},
                          {"role": "assistant", "content": c["response"]}], "sample_id": c["question_id"]}
            for c in load_candidates() if c["strategy"] in ("human", "175b_verification")]
    rows.insert(7, {"messages": [{"role": "user", "content": "What is 2+2?"}]})
    path = tmp_path_factory.mktemp("samples") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _filter(samples_file: str, out: Path, rehearsal: Rehearsal | None, model: str = "smollm2"):
    cfg = load_filter_config({"method": "ifd", "input": samples_file, "model": model, "ifd": {"keep_fraction": 0.5},
                              "ray": {"actors": 1, "batch_size": 8}, "output": str(out)})
    result = run_filter(cfg, rehearsal=rehearsal)
    write_filter(result.output, result)
    return result


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.parts[-2] in ("kept", "scores", "rejects")}


def test_a_rehearsed_filter_is_the_real_job_with_simulated_engines(ray_local, samples_file, tmp_path):
    one = _filter(samples_file, tmp_path / "one", Rehearsal("h200-llama3-8b", 1, time_scale=1000))
    three = _filter(samples_file, tmp_path / "three", Rehearsal("h200-llama3-8b", 3, time_scale=1000))
    real = _filter(samples_file, tmp_path / "real", None, model=TINY_RANDOM)

    assert one.output == str(tmp_path / "one" / "rehearsal")
    # every row accounted for as the real job accounts for it; the bad row rejected with the real job's reason
    assert one.summary["counts"] == three.summary["counts"]
    assert {k: one.summary["counts"][k] for k in ("rows_in", "rejected")} == {
        k: real.summary["counts"][k] for k in ("rows_in", "rejected")} == {"rows_in": 41, "rejected": 1}
    assert one.summary["counts"]["kept"] + one.summary["counts"]["dropped"] == 40
    assert read_parts(tmp_path / "one" / "rehearsal" / "rejects") == read_parts(tmp_path / "real" / "rejects")
    # the same output structure, and the same bytes whatever the number of simulated devices
    assert set(_files(tmp_path / "one" / "rehearsal")) and \
        {Path(n).parent for n in _files(tmp_path / "one" / "rehearsal")} == {Path(n).parent for n in
                                                                           _files(tmp_path / "real")}
    assert _files(tmp_path / "one" / "rehearsal") == _files(tmp_path / "three" / "rehearsal")
    assert (tmp_path / "one" / "rehearsal" / "journal").is_dir()
    # run again on the same output: it resumes from its journal (the engines get nothing to do), same bytes
    again = _filter(samples_file, tmp_path / "one", Rehearsal("h200-llama3-8b", 1, time_scale=1000))
    assert again.summary["rehearsal"]["tokens"] == 0
    assert _files(tmp_path / "one" / "rehearsal") == _files(tmp_path / "three" / "rehearsal")
    assert {"summary.json", "report.html"} <= {p.name for p in (tmp_path / "one" / "rehearsal").iterdir()}

    # what it measured: the engines were handed the same tokens, the simulated device time follows from them
    r1, r3 = one.summary["rehearsal"], three.summary["rehearsal"]
    assert r1["tokens"] == r3["tokens"] > 0
    assert r1["device_s"] == pytest.approx(r1["tokens"] / 55737.0, rel=1e-3)
    assert r1["engine_actors"] == 1 and 1 <= r3["engine_actors"] <= 3
    assert r1["data_plane_cpu_s"] > 0 and r1["tokens_per_data_plane_cpu_s"] > 0
    assert r1["projection"]["bound_by"] in ("engines", "data plane", "driver")
    assert r1["projection"]["wall_s"] == max(r1["projection"]["bounds_s"].values())
    assert "projected" in describe(r1) and "h200-llama3-8b" in describe(r1)


def test_the_meter_counts_the_cpu_of_a_process_that_ended_during_the_job(tmp_path):
    """Ray ends workers while a job runs (an operator's actors once it is done): their CPU still counts. A child
    spends 0.3 CPU-s, waits until the meter has seen 0.2 of them (an event, not a time: /proc counts in clock ticks,
    so the margin), and exits before the end."""
    meter = Meter(str(tmp_path / "out"))
    burn = "import sys, time\nwhile time.process_time() < 0.3: pass\nsys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE)
    while meter.cpu.seen.get(child.pid, 0.0) < 0.2:
        assert child.poll() is None
        time.sleep(0.05)  # leaves the CPU to the child and the meter
    child.stdin.close()
    child.wait()
    assert meter.finish(Rehearsal("h200-llama3-8b", 1))["data_plane_cpu_s"] >= 0.2


def test_an_unknown_device_is_refused_before_anything_runs():
    with pytest.raises(ValueError, match="unknown device 'tpu-v9'"):
        Rehearsal("tpu-v9", 2)


def test_a_rehearsed_run_simulates_every_teacher_and_asks_no_endpoint(tmp_path):
    """`sapray run --rehearse`: the model teacher and the priced endpoint answer from simulated engines (the
    endpoint is a closed port: asked, it would fail every row), the file teacher's over-length row is rejected
    as the real job rejects it, and the outputs are the real run's, under OUTPUT/rehearsal."""
    import yaml
    from click.testing import CliRunner
    from small_job import exemplar_rows, jsonl

    from sapray.cli import main

    questions = load_questions()[:4]
    (tmp_path / "q.jsonl").write_text(jsonl(questions))
    (tmp_path / "ex.jsonl").write_text(jsonl(exemplar_rows()))
    answers = [{"question_id": q["question_id"], "response": "and so on " * (200 if k == 0 else 3)}
               for k, q in enumerate(questions)]
    (tmp_path / "file.jsonl").write_text(jsonl(answers))
    strategies = [
        {"name": "model", "teacher": {"kind": "hf", "model": TINY_RANDOM}, "prompt": "{question}", "max_tokens": 16},
        {"name": "api", "teacher": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "gpt-4o",
                                    "api_key_env": None, "price_per_million_prompt": 2.5,
                                    "price_per_million_completion": 10.0}, "prompt": "{question}", "max_tokens": 16},
        {"name": "file", "teacher": {"kind": "file", "path": str(tmp_path / "file.jsonl")}}]
    config = {"model": TINY_RANDOM, "engine": "hf", "engine_args": {"max_length": 256},
              "data": {"questions": str(tmp_path / "q.jsonl")}, "strategies": strategies,
              "sample": {"max_questions": 4, "round_size": 4}, "exemplars": {"file": str(tmp_path / "ex.jsonl")},
              "ray": {"actors": 1}, "output": str(tmp_path / "run"), "generate": {"output": str(tmp_path / "train")}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    done = CliRunner().invoke(main, ["run", "--config", str(tmp_path / "run.yaml"), "--rehearse", "h200-llama3-8b",
                                     "--devices", "2", "--time-scale", "10"])
    assert done.exit_code == 0, done.output
    out = tmp_path / "run" / "rehearsal"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["rehearsal"]  # nothing beside it
    assert {"selection.json", "scores.parquet", "exemplars.jsonl", "run.json", "report.html", "journal", "rejects",
            "sample_candidates", "sample_generation_cost.jsonl", "rehearsal.json"} <= {p.name for p in out.iterdir()}
    assert {"metadata.json", "train", "parquet", "shards"} <= {p.name for p in (tmp_path / "train" /
                                                                                   "rehearsal").iterdir()}
    costs = {c["strategy"]: c for c in map(json.loads, (out / "sample_generation_cost.jsonl").read_text().splitlines())}
    assert costs["api"]["money"] > 0 and costs["api"]["completion_tokens"] > 0  # priced as the endpoint would be
    sampled = [json.loads(line) for line in (out / "sample_candidates" / "api.jsonl").read_text().splitlines()]
    assert len(sampled) == 4 and not any(r.get("error") for r in sampled)  # no request was made
    rejects = read_parts(out / "rejects")
    assert [r["reason"] for r in rejects if "over-length" in r["reason"]], rejects
    measured = json.loads((out / "rehearsal.json").read_text())
    assert measured["tokens"] > 0 and measured["engine_actors"] >= 2  # the scorer's and the teachers'
    assert "projected" in done.output and "rehearsal on 2 x h200-llama3-8b" in done.output
