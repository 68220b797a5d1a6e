"""Generation: teachers, `sapray run`, resume after kill -9, API teachers against a real server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import (
    DATA_DIR,
    PATIENCE_S,
    kill_hard,
    load_questions,
    read_parts,
    stop_process,
    wait_until,
    without_timings,
)
from helpers import write_jsonl

from sapray.config import load_config
from sapray.dataplane.api_teacher import retry_after_seconds
from sapray.engines.models import TINY_RANDOM
from sapray.jobs.generate import run_generate
from sapray.jobs.plan import plan_job
from sapray.jobs.run import run_all

SECRET = "sk-sapray-test-7f3c9e1d"


def teacher_strategies(kind: str) -> list[dict]:
    return [
        {"name": "smol_plain", "teacher": {"kind": kind, "model": "smollm2"}, "prompt": "{question}",
         "max_tokens": 24},
        {"name": "smol_steps", "teacher": {"kind": kind, "model": "smollm2"},
         "prompt": "{question}\nLet's think step by step.", "max_tokens": 24},
    ]


def job(tmp_path: Path, exemplars: str, questions: str, **extra) -> dict:
    return {
        "model": "smollm2", "engine": "hf",
        "data": {"questions": questions, "candidates": str(DATA_DIR / "candidates.jsonl")},
        "sample": {"max_questions": 2, "round_size": 2}, "exemplars": {"file": exemplars},
        "ray": {"actors": 1, "batch_size": 24}, "bootstrap": 50, "output": str(tmp_path / "select"),
        "generate": {"output": str(tmp_path / "train"), "shard_size": 2}, **extra,
    }


@pytest.mark.slow
def test_run_resumes_after_kill_9_in_full_generation_without_duplicates(ray_local, tmp_path, exemplar_file,
                                                                        capsys):
    """`sapray run`, killed during the full set and run again: the selection is reused, the set completed.
    The target is the tiny random-weight model (what is checked is the resume, not SAP); the teachers are
    SmolLM2, as the tiny model's 12 tokens decode to empty responses. The run to kill is a CLI subprocess
    with a Ray of its own; the rerun runs in this test process."""
    questions = write_jsonl(tmp_path / "q.jsonl", load_questions()[:6])
    config = job(tmp_path, exemplar_file, questions, model=TINY_RANDOM, strategies=teacher_strategies("hf"))
    del config["data"]["candidates"]  # only the two hf teachers compete, so the winner is one to kill
    for strategy in config["strategies"]:
        strategy["max_tokens"] = 12
    config["generate"]["shard_size"] = 1
    config["ray"]["batch_size"] = 1
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "sapray", "run", "--config", str(path)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray of its own
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(command, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    shards = tmp_path / "train" / "shards"
    wait_until(lambda: len(list(shards.glob("part-*.parquet"))) >= 3, "three shards from the first run", first,
               tmp_path / "first.log", poll_s=0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    # A shard is whole or absent, so a run killed after its third shard leaves three (and perhaps a .tmp).
    # Where the machine is so busy that more were written before the kill landed, the later ones go: the
    # state is then that of a kill after the third, whatever the speed (one question per shard, in order).
    for late in sorted(shards.glob("part-*.parquet"))[3:]:
        late.unlink()
    done_before = {q for p in shards.glob("part-*.parquet") for q in pq.read_table(p)["question_id"].to_pylist()}
    assert len(done_before) == 3
    winner = json.loads((tmp_path / "select" / "selection.json").read_text())["winner"]["strategy"]
    capsys.readouterr()
    run_all(load_config(config))
    second = capsys.readouterr().err
    assert "the selection for this config is already in" in second
    assert "generating the sample" not in second
    assert f"{len(done_before)} already done" in second
    assert json.loads((tmp_path / "train" / "metadata.json").read_text())["strategy"] == winner
    train = read_parts(tmp_path / "train" / "train")
    ids = [r["question_id"] for r in train]
    assert sorted(ids) == sorted(q["question_id"] for q in load_questions()[:6])  # each exactly once


def test_hf_generation_says_why_it_stopped(hf_engine):
    from sapray.engines.base import SamplingConfig

    tok = hf_engine.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 2? Reply with one number."}],
                                     tokenize=True, add_generation_prompt=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    (short,) = hf_engine.generate([prompt], SamplingConfig(max_tokens=2))
    assert short.finish_reasons == ["length"] and short.completion_tokens == [2]
    (full,) = hf_engine.generate([prompt], SamplingConfig(max_tokens=64))
    assert full.finish_reasons == ["stop"] and full.completion_tokens[0] < 64  # it ended with EOS
    (cut,) = hf_engine.generate([prompt], SamplingConfig(max_tokens=64, stop=[full.texts[0][-1]]))
    assert cut.finish_reasons == ["stop"] and not cut.texts[0].endswith(full.texts[0][-1])


def test_hf_seeded_sampling_does_not_depend_on_batch_mates(hf_engine):
    """As vLLM's per-request seed: a prompt's samples are the same alone and in any batch, so a job's
    samples do not depend on how its blocks were cut."""
    from sapray.core.exemplars import zero_shot_prompts
    from sapray.engines.base import SamplingConfig

    a, b = zero_shot_prompts(hf_engine.tokenizer, ["Name a colour.", "What is 12 times 7? Show your work."])
    sampling = SamplingConfig(temperature=1.0, max_tokens=12, n=3, seed=7)
    (alone,) = hf_engine.generate([a], sampling)
    first, _ = hf_engine.generate([a, b], sampling)
    _, last = hf_engine.generate([b, a], sampling)
    assert alone.texts == first.texts == last.texts
    assert len(set(alone.texts)) > 1  # really sampled: the check would hold trivially for greedy decoding


# -- an OpenAI-compatible teacher: vLLM's server on loopback behind a fault-injecting proxy ------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The API teacher's timeout in the test. Normal requests never meet it, however slow the server: the
# proxy keeps their connection busy (below). Only the stalled request does, which costs this once.
CLIENT_TIMEOUT_S = 20


class FaultProxy(ThreadingHTTPServer):
    """Forwards to the real server after injecting a 429, a 500 and a stall; 400s any 'POISON' prompt.

    The stall holds its request, unanswered, until the client gives up on it and closes the
    connection (``stall_abandoned`` is set then): a timeout however fast or slow the machine is."""

    def __init__(self, upstream: str, faults: tuple[str, ...] = ("429", "500", "stall")) -> None:
        self.upstream, self.seen, self.faults, self.lock = upstream, [], list(faults), threading.Lock()
        self.bodies: list[bytes] = []  # every request that reached the server, for counting by prompt
        self.arrivals: list[float] = []
        self.unauthorized = 0
        self.stall_abandoned = threading.Event()
        super().__init__(("127.0.0.1", free_port()), ProxyHandler)


class ProxyHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _forward(self, body: bytes) -> None:
        """The upstream answer, with a space (JSON's leading whitespace) sent every second until it
        comes: the client's read timeout counts from the last byte, so a slow server never trips it.
        The status is sent first, so it is 200: vLLM answers these valid requests with 200."""
        server: FaultProxy = self.server
        request = urllib.request.Request(server.upstream + self.path, data=body,
                                         headers={"Content-Type": "application/json"})
        answer: list[bytes] = []
        done = threading.Event()

        def fetch() -> None:
            try:
                with urllib.request.urlopen(request, timeout=PATIENCE_S) as response:
                    answer.append(response.read())
            except OSError as exc:  # HTTPError included: the client sees a malformed answer and says so
                answer.append(json.dumps({"proxy_error": str(exc)}).encode())
            done.set()

        threading.Thread(target=fetch, daemon=True).start()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()  # no Content-Length: HTTP/1.0, the body ends when the connection closes
        while not done.wait(1.0):
            self.wfile.write(b" ")
            self.wfile.flush()
        self.wfile.write(answer[0])

    def do_POST(self) -> None:  # noqa: N802
        server: FaultProxy = self.server
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Authorization") != f"Bearer {SECRET}":
            server.unauthorized += 1
            return self._reply(401, b'{"error": "bad key"}')
        if b"POISON" in body:
            return self._reply(400, b'{"error": "content rejected"}')
        with server.lock:
            fault = server.faults.pop(0) if server.faults else None
            server.seen.append(fault or "ok")
            server.arrivals.append(time.monotonic())
            server.bodies.append(body)
        if fault == "429":
            return self._reply(429, b'{"error": "rate limited"}', {"Retry-After": "1"})
        if fault == "500":
            return self._reply(500, b'{"error": "upstream broke"}')
        if fault == "stall":
            self.connection.settimeout(PATIENCE_S)
            if self.connection.recv(1) == b"":  # the client closed the connection: it gave up
                server.stall_abandoned.set()
            return None
        self._forward(body)


@pytest.fixture(scope="module")
def vllm_server(smollm2_path, tmp_path_factory):
    pytest.importorskip("vllm")
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", smollm2_path,
             "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
             "--enforce-eager", "--max-model-len", "1024"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            urllib.request.urlopen(url + "/v1/models", timeout=PATIENCE_S).close()
            return True
        except OSError:  # not listening yet
            return False

    try:
        wait_until(ready, "vllm serve to answer /v1/models", server, log)
        yield url
    finally:
        stop_process(server, "vllm serve", group=True)


@pytest.mark.vllm
@pytest.mark.slow
def test_openai_teacher_retries_transient_failures_and_rejects_permanent_ones(
        ray_local, exemplar_file, vllm_server, tmp_path, monkeypatch, capfd):
    proxy = FaultProxy(vllm_server)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    monkeypatch.setenv("SAPRAY_TEST_API_KEY", SECRET)
    rows = load_questions()[:3] + [{"question_id": "poison", "question": "POISON question", "gold": "1"}]
    questions = write_jsonl(tmp_path / "q.jsonl", rows)
    teacher = {"kind": "openai", "model": "smollm2", "base_url": f"http://127.0.0.1:{proxy.server_port}/v1",
               "api_key_env": "SAPRAY_TEST_API_KEY", "timeout_s": CLIENT_TIMEOUT_S, "max_retries": 4,
               "max_concurrency": 1,
               "requests_per_second": 20, "price_per_million_prompt": 0.5, "price_per_million_completion": 1.5}
    strategies = [{"name": "api", "teacher": teacher, "prompt": "{question}", "max_tokens": 16}]
    cfg = load_config(job(tmp_path, exemplar_file, questions, strategies=strategies))
    try:
        metadata = run_generate(cfg, "api")
    finally:
        proxy.shutdown()
    assert proxy.unauthorized == 0
    assert proxy.seen[:3] == ["429", "500", "stall"] and proxy.seen.count("ok") >= 3
    assert proxy.stall_abandoned.is_set()  # the client timed out on the stall, then retried
    assert proxy.arrivals[1] - proxy.arrivals[0] >= 0.9  # the 429's Retry-After: 1 was honoured
    assert metadata["rows"] == 3 and metadata["rejected"] == 1
    rejects = read_parts(tmp_path / "train" / "rejects")
    assert rejects[0]["question_id"] == "poison" and "permanent error" in rejects[0]["reason"]
    assert "HTTP 400" in rejects[0]["reason"]
    cost = metadata["cost_this_run"]
    assert cost["completion_tokens"] > 0 and cost["prompt_tokens"] > 0
    assert cost["money"] == pytest.approx((cost["prompt_tokens"] * 0.5 + cost["completion_tokens"] * 1.5) / 1e6)
    # The key lives only in the environment: no output file, console line or Ray worker log mentions it.
    import ray

    session_logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    for path in [*tmp_path.rglob("*"), *session_logs.rglob("*")]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    console = capfd.readouterr()
    assert SECRET not in console.out and SECRET not in console.err


def test_retry_after_header_parsing():
    assert retry_after_seconds("2") == 2.0
    assert retry_after_seconds("0.5") == 0.5
    assert retry_after_seconds("86400") == 60.0  # capped
    assert retry_after_seconds("Wed, 21 Oct 2026 07:28:00 GMT") is None
    assert retry_after_seconds(None) is None and retry_after_seconds("-3") == 0.0


@pytest.mark.vllm
@pytest.mark.slow
def test_race_in_run_stops_asking_an_eliminated_teacher(ray_local, exemplar_file, vllm_server, tmp_path,
                                                         monkeypatch):
    """Three API teachers; the one sampling at temperature 2 writes text the target finds unfamiliar,
    is dropped after round 1, and its teacher gets no request in the later rounds. The full
    training set is still written with the winner."""
    proxy = FaultProxy(vllm_server, faults=())
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    monkeypatch.setenv("SAPRAY_TEST_API_KEY", SECRET)
    questions = write_jsonl(tmp_path / "q.jsonl", load_questions()[:10])
    teacher = {"kind": "openai", "model": "smollm2", "base_url": f"http://127.0.0.1:{proxy.server_port}/v1",
               "api_key_env": "SAPRAY_TEST_API_KEY", "timeout_s": 20, "max_concurrency": 2,
               "price_per_million_prompt": 0.5, "price_per_million_completion": 1.5}
    strategies = [
        {"name": "plain", "teacher": teacher, "prompt": "{question}", "max_tokens": 24},
        {"name": "steps", "teacher": teacher, "prompt": "{question}\nLet's think step by step.", "max_tokens": 24},
        {"name": "noisy", "teacher": teacher, "prompt": "{question} (noisy)", "max_tokens": 24, "temperature": 2.0,
         "seed": 3},
    ]
    raw = job(tmp_path, exemplar_file, questions, strategies=strategies, metrics=["sap"])
    del raw["data"]["candidates"]
    raw["sample"] = {"max_questions": 10, "round_size": 5, "min_questions": 5, "seed": 0}
    lines: list[str] = []
    try:
        summary, costs, metadata = run_all(load_config(raw), on_round=lines.append)
    finally:
        proxy.shutdown()
    race = summary["race"]
    assert race["eliminated"] == {"noisy": 1}, lines
    assert "dropped noisy" in lines[0]
    assert len(race["rounds"]) >= 2  # later rounds ran without it
    noisy_requests = [b for b in proxy.bodies if b"(noisy)" in b]
    assert len(noisy_requests) == 5  # round 1 only
    assert costs["noisy"]["questions"] == 5 and costs["plain"]["questions"] == 5 * len(race["rounds"])
    saved = race["cost"]["noisy"]["generation_saved"]
    assert saved["tokens"] > 0 and saved["money"] > 0
    winner = summary["winner"]["strategy"]
    assert winner in ("plain", "steps") and metadata["strategy"] == winner
    assert metadata["rows"] == 10 and metadata["rejected"] == 0
    train = read_parts(tmp_path / "train" / "train")
    assert sorted(r["question_id"] for r in train) == sorted(q["question_id"] for q in load_questions()[:10])


def _asked(body: bytes) -> tuple[str, str]:
    """(user message, model) of one chat request the proxy saw: which question a strategy asked."""
    request = json.loads(body)
    return request["messages"][-1]["content"], request["model"]


@pytest.mark.vllm
@pytest.mark.slow
def test_run_with_an_api_teacher_resumes_from_its_journal_after_kill_9(ray_local, exemplar_file,
                                                                       vllm_server, tmp_path, monkeypatch, capsys):
    """`sapray run` with an OpenAI-compatible teacher (`vllm serve` behind the proxy), killed with SIGKILL once
    its second batch of round 1 is journaled, then run again: the teacher is never asked again for a batch
    the journal held at the kill (only the batch in flight may be), and the selection, the scores and the
    training set are a whole run's, timing fields aside. The run to kill is a CLI subprocess with a Ray of
    its own; the plan, the whole run and the rerun run in this test process, to spare three Ray starts."""
    proxy = FaultProxy(vllm_server, faults=())
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    monkeypatch.setenv("SAPRAY_TEST_API_KEY", SECRET)
    teacher = {"kind": "openai", "model": "smollm2", "base_url": f"http://127.0.0.1:{proxy.server_port}/v1",
               "api_key_env": "SAPRAY_TEST_API_KEY", "timeout_s": CLIENT_TIMEOUT_S, "max_concurrency": 1,
               "price_per_million_prompt": 0.5, "price_per_million_completion": 1.5}
    questions = write_jsonl(tmp_path / "q.jsonl", load_questions()[:6])
    config = job(tmp_path, exemplar_file, questions, model=TINY_RANDOM, metrics=["sap"],
                 strategies=[{"name": "plain", "teacher": teacher, "prompt": "{question}", "max_tokens": 16},
                             {"name": "steps", "teacher": teacher, "prompt": "{question}\nStep by step.",
                              "max_tokens": 16}])
    del config["data"]["candidates"]
    config["sample"] = {"max_questions": 6, "round_size": 3}  # two rounds; no decision before 10 questions
    config["ray"]["batch_size"] = 1  # a batch per question: three per strategy and round

    def raw(name: str) -> dict:
        generate = {**config["generate"], "output": str(tmp_path / name / "train")}
        return {**config, "output": str(tmp_path / name / "select"), "generate": generate}

    journal = tmp_path / "resumed" / "select" / "journal"
    try:
        plan = plan_job(load_config(raw("whole")))
        run_all(load_config(raw("whole")))
        path = tmp_path / "resumed.yaml"
        path.write_text(yaml.safe_dump(raw("resumed")))
        log = tmp_path / "first.log"
        with log.open("w") as out:
            first = subprocess.Popen([sys.executable, "-m", "sapray", "run", "--config", str(path)],
                                     env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
                                     start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
            wait_until(lambda: len(list(journal.glob("gen-r0001-*.json"))) >= 2,
                       "a second teacher batch journaled", first, log, poll_s=0.1)
            kill_hard(first)
        held = {(row["row_id"], row["strategy"]) for entry in journal.glob("gen-*.json")
                for row in json.loads(entry.read_text())}
        asked_before = len(proxy.bodies)
        capsys.readouterr()
        run_all(load_config(raw("resumed")))
        console = capsys.readouterr().err
    finally:
        proxy.shutdown()
    assert "resuming:" in console and "of generation not paid again" in console
    text = {q["question_id"]: q["question"] for q in load_questions()[:6]}
    prompts = {"plain": "{question}", "steps": "{question}\nStep by step."}
    asked_again = {_asked(b)[0] for b in proxy.bodies[asked_before:]}
    assert held and not {(q, s) for q, s in held if prompts[s].format(question=text[q]) in asked_again}
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    for name in ("scores.parquet", "sample_candidates/plain.jsonl", "sample_candidates/steps.jsonl",
                 "rejects/part-scoring.jsonl"):
        assert (whole / "select" / name).read_bytes() == (resumed / "select" / name).read_bytes(), name
    for folder in ("train", "parquet", "rejects"):
        names = sorted(p.name for p in (whole / "train" / folder).iterdir())
        assert names == sorted(p.name for p in (resumed / "train" / folder).iterdir())
        for name in names:
            assert (whole / "train" / folder / name).read_bytes() == (resumed / "train" / folder / name).read_bytes()

    for name in ("select/selection.json", "train/metadata.json"):
        assert without_timings(json.loads((whole / name).read_text())) == without_timings(
            json.loads((resumed / name).read_text())), name

    # `sapray plan`, run before: the prompts counted with the target's tokenizer (an estimate for an endpoint)
    # within 10% of what the server counted, the answers' tokens and money bounds not exceeded
    spent = {row["strategy"]: row for row in map(json.loads, (whole / "select" / "sample_generation_cost.jsonl")
                                                  .read_text().splitlines())}
    for name, planned in plan["sample_generation"].items():
        assert planned["prompt_tokens"]["kind"] == "estimate"
        counted = spent[name]["prompt_tokens"]
        assert abs(planned["prompt_tokens"]["value"] - counted) <= 0.1 * counted
        assert spent[name]["completion_tokens"] <= planned["generated_tokens"]["value"]
        assert spent[name]["money"] <= planned["money"]["value"]
    metadata = json.loads((whole / "train" / "metadata.json").read_text())
    full = plan["full_set"]["per_winner"][metadata["strategy"]]
    assert plan["full_set"]["questions"] == {**plan["full_set"]["questions"], "value": 6, "kind": "exact"}
    assert abs(full["prompt_tokens"]["value"] - metadata["cost_total"]["prompt_tokens"]) <= 0.1 * metadata[
        "cost_total"]["prompt_tokens"]
    assert metadata["cost_total"]["completion_tokens"] <= full["generated_tokens"]["value"]
