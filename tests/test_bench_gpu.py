"""benchmarks/bench_gpu.py on CPU (--tiny): runs without ray, vllm, pydantic or click, and reports every row."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PATIENCE_S

from sapray.core.scoring import EncodedRequest
from sapray.engines.hf import HFEngine, batch_budgets

ROOT = Path(__file__).resolve().parent.parent
# What the GPU machine lacks: in the benchmark's process these are invisible to imports and to
# importlib.util.find_spec alike, as if not installed (ModuleNotFoundError, find_spec None).
# Not yaml: huggingface_hub, which transformers needs, imports it, so wherever transformers runs
# pyyaml is installed.
BLOCKED = ("ray", "vllm", "pydantic", "click")
HIDE = f"""
import importlib.machinery, sys
class Hiding(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)
sys.meta_path = [Hiding if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
"""
RUN_SCRIPT = HIDE + """
import runpy
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _load_bench():
    """benchmarks/bench_gpu.py as a module (benchmarks/ is not a package)."""
    if "bench_gpu" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "bench_gpu.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_gpu"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["bench_gpu"]


def run_blocked(*args: str, script: str = "bench_gpu.py") -> subprocess.CompletedProcess:
    # torch.compile traces as it does on the device (graphs, guards, a recompile per width) but runs the traced
    # graphs with AOTAutograd's eager backend: inductor's C++ builds are what a CPU run would spend most of its
    # minute on, and on the device it is inductor's Triton that compiles, which no CPU run checks anyway
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TORCH_COMPILE_OVERRIDE_BACKENDS": ">=0:aot_eager"}
    return subprocess.run([sys.executable, "-c", RUN_SCRIPT, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=PATIENCE_S)


def test_the_blocked_packages_look_uninstalled():
    probe = HIDE + f"import importlib.util\nprint([importlib.util.find_spec(n) for n in {BLOCKED!r}])\nimport click"
    done = subprocess.run([sys.executable, "-c", probe],
                          capture_output=True, text=True, timeout=PATIENCE_S)
    assert done.stdout.strip() == str([None] * len(BLOCKED))
    assert "ModuleNotFoundError: No module named 'click'" in done.stderr


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, smollm2_path) -> Path:
    """The tokenizer files alone, as carried to a GPU machine (no weights, no model config)."""
    dest = tmp_path_factory.mktemp("tokenizer")
    done = run_blocked("--copy-tokenizer", str(dest))
    assert done.returncode == 0, done.stderr
    assert not (dest / "model.safetensors").exists() and (dest / "tokenizer.json").exists()
    return dest


@pytest.mark.slow
def test_tiny_cpu_run_reports_every_row_and_passes_the_correctness_check(tokenizer_dir, tmp_path):
    out = tmp_path / "bench.json"
    done = run_blocked("--device", "cpu", "--tiny", "--tokenizer", str(tokenizer_dir), "--json", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    models = ["smollm2-135m", "llama3-8b"]
    assert report["pass"] is True and report["dtype"] == "float32" and report["peak_tflops"] is None
    assert list(report["models"]) == models
    # 1 question x 6 strategies x 3 contexts
    assert report["workload"]["requests"] == 18
    settings = [(18, 2048, 256, None), (0, 8192, 1024, 0.25)]
    assert [(r["model"], r["block_rows"], r["max_batch_tokens"], r["max_logit_rows"], r["max_padding"],
             r["path"]) for r in report["rows"]] == [
        (m, *s, path) for m in models for s in settings for path in ("packed", "cached", "unshared")]
    for r in report["rows"]:
        assert r["requests"] == 18 and r["scored_tokens"] == report["workload"]["scored_tokens"]
        assert r["padded_tokens"] >= r["computed_tokens"] > 0 and r["tflops"] > 0 and r["mfu"] is None
        if r["share_contexts"]:  # the SAP, PPL and empty contexts run once for all six strategies
            assert r["computed_tokens"] < r["scored_tokens"]
        else:
            assert r["computed_tokens"] == r["scored_tokens"]
    for name in models:
        check = report["parity"][name]
        assert check["pass"] and check["sensitive"] and check["requests"] == 18
        for variant in ("packed", "flex", "shared", "unshared", "shared_padding_cap", "unshared_padding_cap"):
            assert check[variant]["max_abs_logprob"] <= check["tol_abs_logprob"] == 1e-4
        assert report["generation"][name]["generated_tokens"] > 0
    assert "PASS smollm2-135m" in done.stdout and "PASS llama3-8b" in done.stdout


@pytest.mark.slow
def test_the_device_check_runs_its_whole_plan_tiny_on_cpu(tokenizer_dir, tmp_path):
    """benchmarks/bench_flex.py, the command prepared for the first device lent: every row and parity, on CPU."""
    out = tmp_path / "flex.json"
    done = run_blocked("--device", "cpu", "--tiny", "--tokenizer", str(tokenizer_dir), "--budget-s", "1e9",
                       "--json", str(out), script="bench_flex.py")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["pass"] is True and report["skipped"] == []
    assert [(r["model"], r["path"], r["block_rows"], r["compiled"]) for r in report["rows"]] == [
        ("llama3-8b", "packed", 36, False), ("llama3-8b", "flex", 36, False), ("llama3-8b", "flex", 36, True),
        ("llama3-8b", "packed", 36, True), ("llama3-8b", "flex", 144, True),
        ("smollm2-135m", "packed", 36, False), ("smollm2-135m", "flex", 36, False)]
    for r in report["rows"]:
        assert r["scored_tokens_per_s"] > 0 and 0 <= r["padding_share"] < 1 and r["warm_s"] > 0
        assert r["flex_compiled"] == (r["compiled"] if r["path"] == "flex" else None)
        if r["path"] == "flex":  # a width is compiled at most once a row, and at most 8 of them
            assert 0 < len(r["flex_widths_first_forward_s"]) <= 8
        if r["block_rows"] == 36:
            assert r["profiled_span_s"] > 0 and r["gpu_idle_share"] is None  # no GPU: no idle share
    for name, variants in (("llama3-8b", ("packed", "flex", "flex_compiled")), ("smollm2-135m", ("packed", "flex"))):
        check = report["parity"][name]
        assert check["pass"] and check["sensitive"]
        for variant in ("unshared", *variants):
            assert check[variant]["max_abs_logprob"] <= check["tol_abs_logprob"] == 1e-4


def test_flop_count_by_hand():
    """A 3-token context shared by continuations of 2 and 1 tokens, on a made-up shape."""
    bench = _load_bench()
    Shape, computed_positions = bench.Shape, bench.computed_positions

    block = [EncodedRequest("a", [1, 2, 3], [4, 5]), EncodedRequest("b", [1, 2, 3], [6]),
             EncodedRequest("c", [9], [8])]
    shared = computed_positions(block, share=True)
    assert shared == [(0, 3), (3, 2), (3, 1), (0, 2)]
    assert computed_positions(block, share=False) == [(0, 5), (0, 4), (0, 2)]
    shape = Shape(layer_params=10, n_layers=2, heads=3, head_dim=5, d_model=7, vocab=11, total_params=0)
    # tokens 3 + 2 + 1 + 2 = 8; keys (1+2+3) + (4+5) + 4 + (1+2) = 22; scored continuation tokens 2 + 1 + 1 = 4
    assert shape.flops(shared, 4) == 2 * 10 * 8 + 4 * 2 * 3 * 5 * 22 + 2 * 7 * 11 * 4


def test_padding_cap_runs_denser_batches_with_the_same_numbers(tokenizer_dir):
    """HFEngine's max_padding on a tiny random-weight model: fewer padded positions, same log-probs."""
    bench = _load_bench()
    tokenizer = bench.load_tokenizer(str(tokenizer_dir))
    requests = bench.workload(tokenizer, 1, 1)
    model = bench.build_model("smollm2-135m", True, "cpu", torch.float32, tokenizer, seed=0)
    engine = HFEngine.from_model(model, tokenizer, max_batch_tokens=32768, max_logit_rows=8192)
    counter = bench.ForwardCounter(model)
    engine.packed = False  # the cap applies to the cached and unshared paths' padded batches
    for share in (True, False):
        engine.share_contexts = share
        results = {}
        for cap in (None, 0.25, 0.0):
            engine.max_padding = cap
            counter.reset()
            results[cap] = (engine.sequence_logprobs(requests), counter.positions, counter.calls)
        (plain, plain_positions, plain_calls), (capped, positions, calls) = results[None], results[0.25]
        assert positions < plain_positions and calls > plain_calls
        for a, b in zip(capped, plain, strict=True):
            assert a == pytest.approx(b, abs=1e-5)
        exact, exact_positions, _ = results[0.0]  # no padding at all: only equal lengths share a batch
        assert exact_positions == sum(n for _, n in bench.computed_positions(requests, share))
        for a, b in zip(exact, plain, strict=True):
            assert a == pytest.approx(b, abs=1e-5)


def test_batch_budgets_default_by_device_and_yield_to_explicit_values(tokenizer_dir):
    """GPU budgets where the H100 run measured them faster (docs/scaling.md), CPU budgets elsewhere."""
    assert batch_budgets("cuda") == batch_budgets("cuda:1") == (32768, 8192)
    assert batch_budgets("cpu") == (8192, 1024)
    bench = _load_bench()
    tokenizer = bench.load_tokenizer(str(tokenizer_dir))
    model = bench.build_model("smollm2-135m", True, "cpu", torch.float32, tokenizer, seed=0)
    engine = HFEngine.from_model(model, tokenizer)
    assert (engine.max_batch_tokens, engine.max_logit_rows) == (8192, 1024)
    engine = HFEngine.from_model(model, tokenizer, max_batch_tokens=4096, max_logit_rows=512)
    assert (engine.max_batch_tokens, engine.max_logit_rows) == (4096, 512)
