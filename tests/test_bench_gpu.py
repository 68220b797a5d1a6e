"""benchmarks/bench_gpu.py on CPU (--tiny): runs without ray, vllm, pydantic, click or yaml, and reports every row."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sapray.scoring import EncodedRequest

ROOT = Path(__file__).resolve().parent.parent
# What the GPU machine lacks: in the benchmark's process these are invisible to imports and to
# importlib.util.find_spec alike, as if not installed (ModuleNotFoundError, find_spec None).
BLOCKED = ("ray", "vllm", "pydantic", "click", "yaml")
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
RUN_BENCH = HIDE + f"""
import runpy
sys.argv = ["bench_gpu.py", *sys.argv[1:]]
runpy.run_path({str(ROOT / "benchmarks" / "bench_gpu.py")!r}, run_name="__main__")
"""


def run_blocked(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", RUN_BENCH, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)


def test_the_blocked_packages_look_uninstalled():
    probe = HIDE + f"import importlib.util\nprint([importlib.util.find_spec(n) for n in {BLOCKED!r}])\nimport yaml"
    done = subprocess.run([sys.executable, "-c", probe],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == str([None] * len(BLOCKED))
    assert "ModuleNotFoundError: No module named 'yaml'" in done.stderr


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, smollm2_path) -> Path:
    """The tokenizer files alone, as carried to a GPU machine (no weights, no model config)."""
    dest = tmp_path_factory.mktemp("tokenizer")
    done = run_blocked("--copy-tokenizer", str(dest))
    assert done.returncode == 0, done.stderr
    assert not (dest / "model.safetensors").exists() and (dest / "tokenizer.json").exists()
    return dest


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
    settings = [(18, 2048, 256), (0, 8192, 1024)]
    assert [(r["model"], r["block_rows"], r["max_batch_tokens"], r["max_logit_rows"], r["share_contexts"])
            for r in report["rows"]] == [(m, *s, share) for m in models for s in settings for share in (True, False)]
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
        assert check["shared"]["max_abs_logprob"] <= check["tol_abs_logprob"] == 1e-4
        assert report["generation"][name]["generated_tokens"] > 0
    assert "PASS smollm2-135m" in done.stdout and "PASS llama3-8b" in done.stdout


def test_flop_count_by_hand():
    """A 3-token context shared by continuations of 2 and 1 tokens, on a made-up shape."""
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "bench_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = bench  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    Shape, computed_positions = bench.Shape, bench.computed_positions

    block = [EncodedRequest("a", [1, 2, 3], [4, 5]), EncodedRequest("b", [1, 2, 3], [6]),
             EncodedRequest("c", [9], [8])]
    shared = computed_positions(block, share=True)
    assert shared == [(0, 3), (3, 2), (3, 1), (0, 2)]
    assert computed_positions(block, share=False) == [(0, 5), (0, 4), (0, 2)]
    shape = Shape(layer_params=10, n_layers=2, heads=3, head_dim=5, d_model=7, vocab=11, total_params=0)
    # tokens 3 + 2 + 1 + 2 = 8; keys (1+2+3) + (4+5) + 4 + (1+2) = 22; scored continuation tokens 2 + 1 + 1 = 4
    assert shape.flops(shared, 4) == 2 * 10 * 8 + 4 * 2 * 3 * 5 * 22 + 2 * 7 * 11 * 4
