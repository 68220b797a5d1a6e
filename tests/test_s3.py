"""Object-store inputs and outputs for real: an S3-compatible server (moto's server mode) on
127.0.0.1, the bundled test data uploaded to a bucket, and ``sapray select`` run with s3:// input,
exemplar and output URIs; the results are read back from the bucket.

pyarrow's S3 client takes the endpoint from the environment (AWS_ENDPOINT_URL_S3 or
AWS_ENDPOINT_URL, honoured by pyarrow >= 15) or from the URI's query
(``s3://bucket/key?endpoint_override=HOST:PORT&scheme=http``); credentials come from
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (dummy values for moto).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import BUCKET, CREDENTIALS, PATIENCE_S
from small_job import DATA_DIR, REPO, jsonl, small_config

from sapray.config import Columns, load_config_file
from sapray.dataplane.read import read_questions
from sapray.storage import filesystem


def _read(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def _parts(fs: pafs.FileSystem, folder: str) -> list[str]:
    return sorted(i.path for i in fs.get_file_info(pafs.FileSelector(folder)))


def _run_cli(command: str, config: dict, tmp_path, s3_env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``python -m sapray COMMAND --config job.yaml ARGS`` with a local Ray of its own and the S3 settings."""
    path = tmp_path / f"{command}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "sapray", command, "--config", str(path), *args,
                           "--set", "ray.address=local"], cwd=REPO, env={**env, **s3_env},
                          capture_output=True, text=True, timeout=PATIENCE_S)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.mark.slow
def test_select_reads_and_writes_s3(s3_env, tmp_path):
    out = f"s3://{BUCKET}/runs/small"
    config = small_config(f"s3://{BUCKET}/in/questions.jsonl", f"s3://{BUCKET}/in/candidates.jsonl",
                          f"s3://{BUCKET}/in/exemplars.jsonl", out)
    done = _run_cli("select", config, tmp_path, s3_env)
    assert f"wrote {out}/report.html, selection.json" in done.stdout
    assert b"round 1: " in _read(f"{out}/run.log")  # the command's log goes beside the outputs, on S3 too

    selection = json.loads(_read(f"{out}/selection.json"))
    assert selection["counts"]["scored"] == 12 and selection["counts"]["candidate_rows_in"] == 120
    assert len(selection["ranking"]) == 6
    assert selection["exemplars"]["source"] == f"s3://{BUCKET}/in/exemplars.jsonl"
    fs, scores_path = filesystem(f"{out}/scores.parquet")
    with fs.open_input_file(scores_path) as f:
        scores = pq.read_table(f).to_pylist()
    assert len(scores) == 12
    assert all(r["source"].startswith(f"s3://{BUCKET}/in/candidates.jsonl:") for r in scores)
    assert len(_read(f"{out}/exemplars.jsonl").decode().splitlines()) == 4
    rejects_fs, rejects_path = filesystem(f"{out}/rejects")
    parts = _parts(rejects_fs, rejects_path)
    assert parts and all(_read(f"s3://{p}") == b"" for p in parts)  # no rejects
    run = json.loads(_read(f"{out}/run.json"))
    # URIs in the config stay URIs (never resolved against the config file's folder)
    assert run["config"]["data"]["questions"] == f"s3://{BUCKET}/in/questions.jsonl"
    assert run["config"]["output"] == out


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"])
def test_endpoint_from_environment(s3_server, monkeypatch, variable):
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv(variable, s3_server)
    questions, rejects = read_questions(f"s3://{BUCKET}/in/questions.jsonl", Columns(), need_gold=True)
    assert len(questions) == 20 and not rejects


def test_endpoint_in_uri_query(s3_server, monkeypatch):
    """No endpoint in the environment: the URI carries it (works for inputs; see docs/scaling.md for outputs)."""
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    host = s3_server.removeprefix("http://")
    uri = f"s3://{BUCKET}/in/questions.jsonl?endpoint_override={host}&scheme=http"
    questions, _ = read_questions(uri, Columns(), need_gold=True)
    assert len(questions) == 20
    assert next(iter(questions.values()))["source"] == f"{uri}:1"


def test_uri_paths_are_not_resolved_locally(tmp_path):
    config = small_config(f"s3://{BUCKET}/in/questions.jsonl", "gs://other/candidates.parquet",
                          f"s3://{BUCKET}/in/exemplars.jsonl", f"s3://{BUCKET}/runs/x")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    cfg = load_config_file(tmp_path / "job.yaml")
    assert cfg.data.questions == f"s3://{BUCKET}/in/questions.jsonl"
    assert cfg.data.candidates == "gs://other/candidates.parquet"
    assert cfg.exemplars.file == f"s3://{BUCKET}/in/exemplars.jsonl"
    assert cfg.output == f"s3://{BUCKET}/runs/x"


@pytest.mark.slow
def test_filter_reads_and_writes_s3_from_the_workers(s3_env, tmp_path):
    """`sapray filter` (ifd) on an s3:// input read in 1 KiB shards: the workers read the bucket and
    write kept/, scores/ and rejects/ part files back to it."""
    questions, _ = read_questions(str(DATA_DIR / "questions.jsonl"), Columns(), need_gold=False)
    candidates = [json.loads(line) for line in (DATA_DIR / "candidates.jsonl").read_text().splitlines()][:6]
    rows = [{"question": questions[c["question_id"]]["question"], "response": c["response"]} for c in candidates]
    rows.insert(2, {"question": "What is 2+2?", "response": ""})
    fs, _ = pafs.FileSystem.from_uri(f"s3://{BUCKET}")
    with fs.open_output_stream(f"{BUCKET}/in/samples.jsonl") as f:
        f.write(jsonl(rows).encode())
    out = f"s3://{BUCKET}/runs/filter"
    config = {"method": "ifd", "input": f"s3://{BUCKET}/in/samples.jsonl", "ifd": {"keep_fraction": 0.5},
              "ray": {"actors": 1, "batch_size": 4, "shard_mb": 1 / 1024}, "output": out}
    done = _run_cli("filter", config, tmp_path, s3_env)
    assert f"wrote {out}/kept/ (the kept samples)" in done.stdout
    summary = json.loads(_read(f"{out}/summary.json"))
    assert summary["counts"] == {"rows_in": 7, "kept": 3, "dropped": 3, "rejected": 1}
    parts = {name: _parts(fs, f"{BUCKET}/runs/filter/{name}") for name in ("kept", "scores", "rejects")}
    kept = [json.loads(line) for p in parts["kept"] for line in _read(f"s3://{p}").decode().splitlines()]
    assert len(kept) == 3 and all(k["messages"][0]["role"] == "user" for k in kept)
    scores = [r for p in parts["scores"] for r in pq.read_table(p, filesystem=fs).to_pylist()]
    assert [r["source"] for r in scores] == [f"s3://{BUCKET}/in/samples.jsonl:{n}" for n in (1, 2, 4, 5, 6, 7)]
    (reject,) = [json.loads(line) for p in parts["rejects"] for line in _read(f"s3://{p}").decode().splitlines()]
    assert reject["source"] == f"s3://{BUCKET}/in/samples.jsonl:3" and reject["reason"] == "empty response"


@pytest.mark.slow
def test_generate_reads_and_writes_s3_from_the_workers(s3_env, tmp_path):
    """`sapray generate` with a file teacher, s3:// questions read in 1 KiB shards and an s3:// output:
    the workers write the shards and the training set's part files to the bucket."""
    out = f"s3://{BUCKET}/runs/train"
    config = small_config(f"s3://{BUCKET}/in/questions.jsonl", f"s3://{BUCKET}/in/candidates.jsonl",
                          f"s3://{BUCKET}/in/exemplars.jsonl", f"s3://{BUCKET}/runs/unused")
    config["generate"] = {"output": out, "shard_size": 3}
    config["ray"]["shard_mb"] = 1 / 1024
    done = _run_cli("generate", config, tmp_path, s3_env, "--strategy", "socratic")
    assert "training set: 20 rows for 20 of 20 questions" in done.stdout
    fs, _ = pafs.FileSystem.from_uri(f"s3://{BUCKET}")
    shards = [p for p in _parts(fs, f"{BUCKET}/runs/train/shards") if p.endswith(".parquet")]
    assert len(shards) >= 7  # 20 questions in shards of at most 3
    train = [json.loads(line) for p in _parts(fs, f"{BUCKET}/runs/train/train")
             for line in _read(f"s3://{p}").decode().splitlines()]
    expected = [json.loads(line) for line in (DATA_DIR / "candidates.jsonl").read_text().splitlines()]
    assert [r["question_id"] for r in train] == [q["question_id"] for q in map(
        json.loads, (DATA_DIR / "questions.jsonl").read_text().splitlines())]
    assert {r["question_id"]: r["response"] for r in train} == {
        c["question_id"]: c["response"] for c in expected if c["strategy"] == "socratic"}
    assert [r for p in _parts(fs, f"{BUCKET}/runs/train/parquet") for r in pq.read_table(p, filesystem=fs).to_pylist()
            ] == train
    assert json.loads(_read(f"{out}/metadata.json"))["questions_done"] == 20


@pytest.mark.slow
def test_mine_writes_its_exemplars_sidecar_and_journal_to_s3(s3_env, tmp_path):
    """`sapray mine --output s3://...`: the exemplar file, its provenance sidecar and the journal beside them
    in the bucket, nothing in a local folder named after the URI."""
    pool = [{"question_id": "e0", "question": "What is 2 + 3?", "gold": "5"},
            {"question_id": "e1", "question": "What is 7 times 6?", "gold": "42"}]
    fs, _ = pafs.FileSystem.from_uri(f"s3://{BUCKET}")
    with fs.open_output_stream(f"{BUCKET}/in/pool.jsonl") as f:
        f.write(jsonl(pool).encode())
    out = f"s3://{BUCKET}/mined/ex.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "sapray", "mine", "--pool", f"s3://{BUCKET}/in/pool.jsonl",
                           "--output", out, "--n", "1", "--max-tokens", "32", "--batch-size", "2",
                           "--shortfall", "unchecked", "--set", "ray.address=local"],
                          cwd=tmp_path, env={**env, **s3_env}, capture_output=True, text=True, timeout=PATIENCE_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"wrote {out} and s3://{BUCKET}/mined/ex.json" in done.stdout
    [row] = [json.loads(line) for line in _read(out).decode().splitlines()]
    assert row["question_id"] in ("e0", "e1")
    assert json.loads(_read(f"s3://{BUCKET}/mined/ex.json"))["pool_questions"] == 2
    assert json.loads(_read(f"s3://{BUCKET}/mined/ex.journal/fingerprint.json"))
    assert not (tmp_path / "s3:").exists()
