"""The simulated engine: valid, deterministic values whatever the batch or the instance, and waits that follow
its timing model (checked as arithmetic on what it says it waited, never as a timing)."""

from __future__ import annotations

import math

import pytest

from sapray.core.costs import SIMULATED_DEVICES
from sapray.core.scoring import EncodedRequest, ScoreRequest, score
from sapray.engines.base import SamplingConfig
from sapray.engines.models import resolve_model
from sapray.engines.sim import SimEngine, token_logprobs

FAST = {"time_scale": 1e6}  # the waits are still counted, not slept through


@pytest.fixture(scope="module")
def model_path() -> str:
    return resolve_model("smollm2")


def _requests() -> list[ScoreRequest]:
    context = [{"role": "user", "content": "Natalia sold clips to 48 of her friends in April. How many?"}]
    return [ScoreRequest("a", context, "She sold 48 / 2 = 24 clips in May."),
            ScoreRequest("b", context, "48 + 24 = 72"),
            ScoreRequest("c", "", "The answer is 72."),
            ScoreRequest("d", "Q: 2 + 2?\nA:", " 4")]


def test_token_logprobs_are_valid_and_a_function_of_the_token_and_the_one_before():
    values = token_logprobs([1, 5, 9, 1], [5, 9, 1, 5])
    assert all(math.log(0.05) - 1e-12 <= v <= 0 for v in values)
    assert values[0] == values[3]  # the same pair (1, 5) twice
    assert token_logprobs([5], [9]) == [values[1]]
    assert len(set(token_logprobs(list(range(200)), list(range(1, 201))))) > 190  # spread, not constant


def test_scores_are_the_same_whatever_the_batch_and_the_instance(model_path):
    one, other = SimEngine(model_path, **FAST), SimEngine(model_path, **FAST)
    together = score(one, _requests())
    alone = [score(other, [r])[0] for r in _requests()]
    assert [r.token_logprobs for r in together] == [r.token_logprobs for r in alone]
    assert all(r.error is None and r.n_continuation_tokens == len(r.token_logprobs) > 0 for r in together)
    # the shared context gives the first continuation token the same predecessor in both requests
    assert together[0].n_context_tokens == together[1].n_context_tokens


def test_generated_answers_are_seeded_bounded_and_decode(model_path):
    engine = SimEngine(model_path, answer_tokens=40, **FAST)
    prompts = [[1, 2, 3, 4, 5], [9, 8, 7]]
    sampling = SamplingConfig(max_tokens=48, n=3)
    first = engine.generate(prompts, sampling)
    again = SimEngine(model_path, answer_tokens=40, **FAST).generate(prompts[::-1], sampling)[::-1]
    assert [g.texts for g in first] == [g.texts for g in again]
    for g in first:
        assert len(g.texts) == 3 and len(set(g.texts)) > 1  # each sample its own answer
        assert all(1 <= n <= 48 for n in g.completion_tokens) and all(t for t in g.texts)
        assert all((r == "length") == (n == 48) for r, n in zip(g.finish_reasons, g.completion_tokens, strict=True))
    other_seed = SimEngine(model_path, answer_tokens=40, seed=1, **FAST).generate(prompts, sampling)
    assert [g.texts for g in other_seed] != [g.texts for g in first]


def test_waits_follow_the_timing_model(model_path):
    engine = SimEngine(model_path, score_tokens_per_s=1000.0, generate_tokens_per_s=50.0, call_overhead_s=0.25,
                       **FAST)
    results = score(engine, _requests())
    scored = sum(r.n_context_tokens + r.n_continuation_tokens for r in results)
    assert engine.waited_s == pytest.approx(0.25 + scored / 1000.0)
    [g] = engine.generate([[1, 2, 3, 4]], SamplingConfig(max_tokens=16))
    assert engine.waited_s == pytest.approx(0.5 + scored / 1000.0 + 4 / 1000.0 + g.completion_tokens[0] / 50.0)
    assert engine.stats()["scored"] == scored and engine.stats()["generated"] == g.completion_tokens[0]


def test_a_named_device_takes_its_measured_rates_and_an_unknown_one_is_refused(model_path):
    engine = SimEngine(model_path, device="h200-llama3-8b", **FAST)
    assert engine.score_rate == SIMULATED_DEVICES["h200-llama3-8b"].score_tokens_per_s == 55737.0
    with pytest.raises(ValueError, match="unknown simulated device 'tpu'"):
        SimEngine(model_path, device="tpu")


def test_ids_in_ids_out_never_load_a_tokenizer(model_path):
    """The filters' and teachers' actors hand the engine token ids: no tokenizer, no transformers, no torch."""
    engine = SimEngine(model_path, **FAST)
    engine.sequence_logprobs([EncodedRequest("a", [1, 2], [3, 4])])
    engine.generate([[1, 2, 3]], SamplingConfig(max_tokens=8))
    assert engine._tokenizer is None
