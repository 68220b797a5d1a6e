"""Metrics from hand-computed log-probabilities, and the hf engine's log-probs against a plain forward pass."""

from __future__ import annotations

import math

import pytest
import torch

from sapray.core import metrics
from sapray.core.scoring import EncodedRequest

LN2 = math.log(2.0)


# --- NLL / perplexity -------------------------------------------------------------------------


def test_nll_two_tokens():
    # logprobs [ln 1/2, ln 1/4] -> NLL = (ln 2 + 2 ln 2) / 2 = 1.5 ln 2
    assert metrics.nll([math.log(0.5), math.log(0.25)]) == pytest.approx(1.5 * LN2, rel=1e-12)


def test_perplexity_two_tokens():
    # PPL = exp(1.5 ln 2) = 2^1.5 = 2 * sqrt(2)
    assert metrics.perplexity([math.log(0.5), math.log(0.25)]) == pytest.approx(2.0 * math.sqrt(2.0), rel=1e-12)


def test_nll_certain_tokens_is_zero_and_perplexity_one():
    # every token has probability 1: NLL = 0, PPL = e^0 = 1
    assert metrics.nll([0.0, 0.0, 0.0]) == 0.0
    assert metrics.perplexity([0.0, 0.0, 0.0]) == 1.0


def test_perplexity_of_uniform_choice_is_the_branching_factor():
    # five tokens each drawn uniformly from 10: NLL = ln 10, PPL = 10
    lps = [-math.log(10.0)] * 5
    assert metrics.nll(lps) == pytest.approx(math.log(10.0), rel=1e-12)
    assert metrics.perplexity(lps) == pytest.approx(10.0, rel=1e-12)


def test_nll_is_a_mean_not_a_sum():
    # [ln 1/2, ln 1/8]: sum = -(1 + 3) ln 2 = -4 ln 2; mean NLL = 2 ln 2; PPL = 4
    lps = [math.log(0.5), math.log(0.125)]
    assert metrics.nll(lps) == pytest.approx(2.0 * LN2, rel=1e-12)
    assert metrics.perplexity(lps) == pytest.approx(4.0, rel=1e-12)


def test_nll_accepts_tuples():
    # same numbers as test_nll_two_tokens, as a tuple
    assert metrics.nll((math.log(0.5), math.log(0.25))) == pytest.approx(1.5 * LN2, rel=1e-12)


# --- SAP ---------------------------------------------------------------------------------------


def test_sap_is_perplexity_given_the_exemplar_context():
    # three tokens at probability 1/4 given the SAP context: NLL = ln 4, SAP = 4
    assert metrics.sap([math.log(0.25)] * 3) == pytest.approx(4.0, rel=1e-12)
    # [ln 1/2, ln 1/4] -> 2^1.5 as for perplexity
    assert metrics.sap([math.log(0.5), math.log(0.25)]) == pytest.approx(2.0**1.5, rel=1e-12)


# --- IFD ---------------------------------------------------------------------------------------


def test_ifd_ratio():
    # NLL(y|x) of [ln 1/2, ln 1/2] = ln 2; NLL(y) of [ln 1/4] = 2 ln 2; IFD = 1/2
    assert metrics.ifd([math.log(0.5), math.log(0.5)], [math.log(0.25)]) == pytest.approx(0.5, rel=1e-12)


def test_ifd_above_one_when_question_hurts():
    # NLL(y|x) of [ln 1/8] = 3 ln 2; NLL(y) of [ln 1/2, ln 1/4] = 1.5 ln 2; IFD = 3 / 1.5 = 2
    assert metrics.ifd([math.log(0.125)], [math.log(0.5), math.log(0.25)]) == pytest.approx(2.0, rel=1e-12)


def test_ifd_zero_denominator_is_infinite():
    # NLL(y | empty) = 0 (every token certain) while NLL(y | x) = ln 2 > 0: ratio x/0 -> +inf, no exception
    assert metrics.ifd([math.log(0.5)], [0.0, 0.0]) == math.inf


def test_ifd_empty_inputs_raise():
    with pytest.raises(ValueError):
        metrics.ifd([], [math.log(0.5)])
    with pytest.raises(ValueError):
        metrics.ifd([math.log(0.5)], [])


# --- from sums (what engine actors return), CAR ---------------------------------------------------


def test_nll_and_ifd_from_sums_equal_the_per_token_forms():
    # [ln 1/2, ln 1/4, ln 1/8]: cross-entropies 1, 2, 3 (times ln 2), mean = 2 ln 2, the filters' loss
    given = [math.log(0.5), math.log(0.25), math.log(0.125)]
    alone = [math.log(0.25), math.log(0.25), math.log(0.25)]
    assert metrics.nll_of_sum(math.fsum(given), 3) == metrics.nll(given) == pytest.approx(2.0 * LN2, rel=1e-12)
    assert metrics.ifd_of_nll(metrics.nll_of_sum(math.fsum(given), 3), metrics.nll_of_sum(math.fsum(alone), 3)) \
        == metrics.ifd(given, alone) == pytest.approx(1.0, rel=1e-12)
    assert metrics.ifd_of_nll(1.0, 0.0) == math.inf
    with pytest.raises(ValueError):
        metrics.nll_of_sum(0.0, 0)


def test_car():
    # CAR = 0.8 / (1 + 3 * 0.4) = 0.8 / 2.2 = 4 / 11
    assert metrics.car(0.8, 0.4) == pytest.approx(4.0 / 11.0, rel=1e-12)
    # zero NLL: CAR = reward / 1
    assert metrics.car(0.5, 0.0) == pytest.approx(0.5, rel=1e-12)
    # zero reward: 0 / (1 + 3 * 2) = 0
    assert metrics.car(0.0, 2.0) == 0.0


@pytest.mark.parametrize("fn", [metrics.nll, metrics.perplexity, metrics.sap])
def test_empty_input_raises(fn):
    with pytest.raises(ValueError):
        fn([])


# --- hf engine against a plain forward pass ----------------------------------------------------

SEQUENCES = [
    # (context, continuation): different lengths so the batch is left-padded
    ("Question: What is 2 + 3?\nAnswer:", " 2 + 3 = 5. The answer is 5."),
    ("Hi", " there"),
    ("Janet has 16 eggs. She eats 3 and bakes 4 into muffins. How many are left to sell?",
     " 16 - 3 - 4 = 9 eggs are left.\nA: 9"),
]


def _plain_logprobs(model, context_ids: list[int], continuation_ids: list[int]) -> list[float]:
    """One sequence, no padding, no masks: log_softmax of the full logits, the actual next token picked."""
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    start = len(context_ids)
    # logits at position p predict the token at p + 1
    return [logprobs[p - 1, ids[0, p]].item() for p in range(start, ids.shape[1])]


def test_hf_sequence_logprobs_match_a_plain_forward(hf_engine, reference_model, reference_tokenizer):
    requests = []
    for k, (ctx, cont) in enumerate(SEQUENCES):
        c = reference_tokenizer(ctx, add_special_tokens=False)["input_ids"]
        y = reference_tokenizer(cont, add_special_tokens=False)["input_ids"]
        requests.append(EncodedRequest(f"r{k}", list(c), list(y)))
    got = hf_engine.sequence_logprobs(requests)
    assert len(got) == len(requests)
    for req, lps in zip(requests, got, strict=True):
        expected = _plain_logprobs(reference_model, req.context_ids, req.continuation_ids)
        assert len(lps) == len(req.continuation_ids) == len(expected)
        assert lps == pytest.approx(expected, abs=1e-4)


def test_hf_sequence_logprobs_single_sequence(hf_engine, reference_model, reference_tokenizer):
    ctx, cont = SEQUENCES[0]
    c = reference_tokenizer(ctx, add_special_tokens=False)["input_ids"]
    y = reference_tokenizer(cont, add_special_tokens=False)["input_ids"]
    (lps,) = hf_engine.sequence_logprobs([EncodedRequest("one", list(c), list(y))])
    assert lps == pytest.approx(_plain_logprobs(reference_model, c, y), abs=1e-4)


def test_hf_sequence_logprobs_with_a_shared_context_match_a_plain_forward(hf_engine, reference_model,
                                                                         reference_tokenizer):
    """Requests with identical context ids (one question's SAP context, every strategy) against plain forwards."""
    tok = reference_tokenizer
    context = tok("Question: Janet has 16 eggs and eats 3. How many are left?\nAnswer:",
                  add_special_tokens=False)["input_ids"]
    continuations = [" 13", " She has 16 - 3 = 13 eggs left.\nA: 13", " Janet has 13.", " 16 - 3 = 13"]
    requests = [EncodedRequest(f"s{k}", list(context), tok(c, add_special_tokens=False)["input_ids"])
                for k, c in enumerate(continuations)]
    requests.append(EncodedRequest("other", tok("Hi", add_special_tokens=False)["input_ids"],
                                   tok(" there", add_special_tokens=False)["input_ids"]))
    got = hf_engine.sequence_logprobs(requests)
    for req, lps in zip(requests, got, strict=True):
        assert lps == pytest.approx(_plain_logprobs(reference_model, req.context_ids, req.continuation_ids), abs=1e-4)
