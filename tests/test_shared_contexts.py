"""The hf engine's shared-context paths against plain one-sequence forwards of the same weights (float32, CPU):
the tiny random-weight model, whose two layers take every path a 30-layer model does at a tenth of the time (on
SmolLM2's own weights the cached path, the CPU default, is checked against vLLM in test_engine_parity.py).

The three paths (``packed``: one forward per batch of packed rows under a 4D mask; ``flex``: packed rows
without padding under a FlexAttention BlockMask; ``cached``: the context once, continuations on copies of its
KV cache) must give every continuation's log-probs as a forward of that context + continuation alone does:
mean NLL within 1e-5 relative, the same token counts (and the flex path each token within 1e-4 nats). The checks are
shown to fail on the two mistakes packing can make: a continuation that sees another continuation, and a
log-prob read one position off. Every path, the padded one (contexts not shared) included, also counts each
token's clipped rank as the rank-surprisal ratio's reference does (arXiv 2601.14249, ``rsr_cal.py``): the same
plain forwards check them (surprisal sums within 1e-5, RSR within 1e-3 relative, ranks identical on 99.9% of the
tokens).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import gsm8k_pairs

from sapray.core import packing
from sapray.core.contexts import Layout, build_requests
from sapray.core.metrics import nll, rsr
from sapray.core.scoring import RANK_CLIP, EncodedRequest, TokenScores, encode_all

REL_TOL = 1e-5  # relative, on each request's mean NLL
ABS_TOL = 1e-4  # nats, on each token's log-prob


# The tiny model in place of conftest's SmolLM2 for this module (its engine, tokenizer and plain reference)
@pytest.fixture(scope="module")
def hf_engine():
    from sapray.engines.hf import HFEngine
    from sapray.engines.models import TINY_RANDOM, resolve_model

    return HFEngine(resolve_model(TINY_RANDOM), device="cpu")


@pytest.fixture(scope="module")
def tokenizer(hf_engine):
    return hf_engine.tokenizer


@pytest.fixture(scope="module")
def reference_model(tiny_reference):
    return tiny_reference[0]


@pytest.fixture(scope="module")
def encoded(tokenizer) -> list[EncodedRequest]:
    """Two questions x 6 strategies x the SAP, PPL and empty contexts (36 requests, 5 distinct contexts: the
    empty one is shared by all 12 candidates), plus a request alone with its context."""
    requests = []
    for k, row in enumerate(gsm8k_pairs(n_questions=2)):
        requests += build_requests(Layout("chat"), f"row{k}", row["question"], row["response"], row["exemplars"],
                                   question_id=row["question_id"])
    slots = encode_all(requests, tokenizer, 2048)
    out = [s for s in slots if isinstance(s, EncodedRequest)]
    assert len(out) == len(requests) == 36
    return [*out, EncodedRequest("alone", out[0].context_ids[:40], out[0].continuation_ids[:30])]


@pytest.fixture(scope="module")
def plain_forwards(reference_model, encoded) -> list[tuple[list[float], list[int]]]:
    """Each request as one sequence: no padding, no mask, no cache, all its logits in fp32: each continuation
    token's log-prob and its rank as the rank-surprisal ratio's reference defines it (1 + the tokens of strictly
    higher logit, clipped at 100)."""
    out = []
    with torch.no_grad():
        for r in encoded:
            logits = reference_model(torch.tensor([r.input_ids])).logits[0].float()[len(r.context_ids) - 1:-1]
            target = torch.tensor(r.continuation_ids)
            chosen = logits.gather(1, target[:, None])
            logprobs = (chosen.squeeze(1) - torch.logsumexp(logits, dim=-1)).tolist()
            out.append((logprobs, (1 + (logits > chosen).sum(-1)).clamp(max=RANK_CLIP).tolist()))
    return out


@pytest.fixture(scope="module")
def plain(plain_forwards) -> list[list[float]]:
    return [logprobs for logprobs, _ in plain_forwards]


@pytest.fixture(scope="module")
def first_question(encoded, plain) -> tuple[list[EncodedRequest], list[list[float]]]:
    """The first question's 18 requests (three contexts, six continuations each) and the lone one, with their
    plain log-probs: enough for the negative controls and the order check, at half the forwards."""
    keep = [*range(18), len(encoded) - 1]
    return [encoded[i] for i in keep], [plain[i] for i in keep]


@pytest.fixture(scope="module")
def short_contexts(first_question) -> tuple[list[EncodedRequest], list[list[float]]]:
    """The first question's PPL and empty contexts (six continuations each) and the lone request: every sharing
    the negative controls and the order check need, without the exemplars' long context."""
    requests, expected = first_question
    keep = [i for i in range(len(requests)) if i % 3 or i == len(requests) - 1]  # sap, ppl, empty per candidate
    assert {requests[i].request_id.rsplit("/", 1)[-1] for i in keep[:-1]} == {"ppl", "empty"}
    return [requests[i] for i in keep], [expected[i] for i in keep]


def worst_relative(got: list[list[float]], expected: list[list[float]]) -> float:
    assert [len(g) for g in got] == [len(e) for e in expected]
    return max(abs(nll(g) - nll(e)) / nll(e) for g, e in zip(got, expected, strict=True))


def worst_token(got: list[list[float]], expected: list[list[float]]) -> float:
    assert [len(g) for g in got] == [len(e) for e in expected]
    return max(abs(a - b) for g, e in zip(got, expected, strict=True) for a, b in zip(g, e, strict=True))


def assert_rsr_matches(got: list[TokenScores], plain_forwards: list[tuple[list[float], list[int]]]) -> None:
    """Issue 42's bar for the hf paths: each response's surprisal sum within 1e-5 relative, its RSR within 1e-3,
    and the ranks identical on at least 99.9% of the tokens."""
    same = total = 0
    for scores, (logprobs, ranks) in zip(got, plain_forwards, strict=True):
        assert len(scores.ranks) == len(ranks)
        assert math.fsum(scores.logprobs) == pytest.approx(math.fsum(logprobs), rel=1e-5)
        assert rsr(scores.logprobs, scores.ranks) == pytest.approx(rsr(logprobs, ranks), rel=1e-3)
        same += sum(a == b for a, b in zip(scores.ranks, ranks, strict=True))
        total += len(ranks)
    assert same / total >= 0.999


@pytest.fixture
def engine(hf_engine):
    """The session's hf engine; each test sets its path, and the engine's own is restored after."""
    saved = hf_engine.packed, hf_engine.flex, hf_engine.share_contexts, hf_engine.max_batch_tokens
    yield hf_engine
    hf_engine.packed, hf_engine.flex, hf_engine.share_contexts, hf_engine.max_batch_tokens = saved


def test_packed_path_equals_plain_forwards(engine, encoded, plain, plain_forwards):
    engine.share_contexts, engine.packed, engine.flex, engine.max_batch_tokens = True, True, False, 8192
    got = engine.sequence_scores(encoded)
    assert worst_relative([s.logprobs for s in got], plain) < REL_TOL
    assert_rsr_matches(got, plain_forwards)


def test_packed_path_in_rows_of_one_segment_equals_plain_forwards(engine, first_question):
    """A budget of 2,048 tokens: several forwards, each row one context and what of its continuations fit."""
    engine.share_contexts, engine.packed, engine.flex, engine.max_batch_tokens = True, True, False, 2048
    requests, expected = first_question
    assert worst_relative(engine.sequence_logprobs(requests), expected) < REL_TOL


# 8192: every request in two rows; 1024: a context and its continuations (about 1,900 tokens) spread over
# segments in several rows, each repeating the context
@pytest.mark.parametrize("budget", [8192, 1024])
def test_flex_path_equals_plain_forwards(engine, encoded, plain, plain_forwards, budget):
    engine.share_contexts, engine.packed, engine.flex, engine.max_batch_tokens = True, True, True, budget
    scores = engine.sequence_scores(encoded)
    got = [s.logprobs for s in scores]
    assert worst_relative(got, plain) < REL_TOL and worst_token(got, plain) < ABS_TOL
    assert_rsr_matches(scores, plain_forwards)
    assert engine.compile is False  # the CPU default: the flex path's decoder eager


def test_the_flex_path_builds_no_dense_mask(engine, short_contexts, monkeypatch):
    """Every attention call of the flex path gets a BlockMask and goes to FlexAttention; no 4D mask is built."""
    from torch.nn.attention.flex_attention import BlockMask
    from transformers.integrations import flex_attention, sdpa_attention

    def no_dense_mask(*args, **kwargs):
        raise AssertionError("the flex path built the dense mask")

    def no_sdpa(*args, **kwargs):
        raise AssertionError("the flex path called SDPA")

    masks = []
    flex_forward = flex_attention.flex_attention_forward

    def spy(module, query, key, value, attention_mask, **kwargs):
        masks.append(attention_mask)
        return flex_forward(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setattr(packing, "allowed", no_dense_mask)
    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", no_sdpa)
    monkeypatch.setattr(flex_attention, "flex_attention_forward", spy)
    engine.share_contexts, engine.packed, engine.flex = True, True, True
    requests, expected = short_contexts
    assert worst_relative(engine.sequence_logprobs(requests), expected) < REL_TOL
    layers = engine.model.config.num_hidden_layers
    assert len(masks) % layers == 0 and masks and all(isinstance(m, BlockMask) for m in masks)


def test_cached_path_equals_plain_forwards(engine, encoded, plain, plain_forwards):
    engine.share_contexts, engine.packed = True, False
    got = engine.sequence_scores(encoded)
    assert worst_relative([s.logprobs for s in got], plain) < REL_TOL
    assert_rsr_matches(got, plain_forwards)


def test_padded_path_equals_plain_forwards(engine, encoded, plain, plain_forwards):
    """Contexts not shared: each request its own padded row, its ranks counted as on the other paths."""
    engine.share_contexts = False
    got = engine.sequence_scores(encoded)
    assert worst_relative([s.logprobs for s in got], plain) < REL_TOL
    assert_rsr_matches(got, plain_forwards)


@pytest.mark.parametrize("flex", [False, True])
def test_packed_numbers_do_not_depend_on_request_order(engine, short_contexts, flex):
    engine.share_contexts, engine.packed, engine.flex = True, True, flex
    subset, _ = short_contexts
    forward = engine.sequence_logprobs(subset)
    order = np.random.default_rng(0).permutation(len(subset))
    shuffled = engine.sequence_logprobs([subset[i] for i in order])
    assert [shuffled[k] for k in np.argsort(order)] == forward


@pytest.mark.parametrize("flex", [False, True])
def test_the_check_sees_a_continuation_that_sees_another(engine, short_contexts, monkeypatch, flex):
    """Let every position see its whole segment's past, other continuations included: far off."""
    def segment_causal(segment, branch, columns):
        return (columns[None, :] <= columns[:, None])[None] & (segment[:, :, None] == segment[:, None, :])

    # the flex path's mask and tiles: as if every position were its segment's context (branch 0)
    mask_mod, block_structure = packing.mask_mod, packing.block_structure
    monkeypatch.setattr(packing, "allowed", segment_causal)
    monkeypatch.setattr(packing, "mask_mod", lambda segment, branch: mask_mod(segment, torch.zeros_like(branch)))
    monkeypatch.setattr(packing, "block_structure",
                        lambda segment, branch, *block: block_structure(segment, np.zeros_like(branch), *block))
    engine.share_contexts, engine.packed, engine.flex = True, True, flex
    requests, expected = short_contexts
    assert worst_relative(engine.sequence_logprobs(requests), expected) > 100 * REL_TOL


@pytest.mark.parametrize("flex", [False, True])
def test_the_check_sees_a_one_token_misalignment(engine, short_contexts, monkeypatch, flex):
    """Read each continuation token's log-prob one position late: far off."""
    layout = packing.layout

    def late(rows, continuations, width, pad_id):
        packed = layout(rows, continuations, width, pad_id)
        packed.predictors[:, 1] = np.minimum(packed.predictors[:, 1] + 1, width - 1)
        return packed

    monkeypatch.setattr(packing, "layout", late)
    engine.share_contexts, engine.packed, engine.flex = True, True, flex
    requests, expected = short_contexts
    assert worst_relative(engine.sequence_logprobs(requests), expected) > 100 * REL_TOL


def test_packed_rows_are_the_default_on_gpus_and_the_cached_path_on_cpus(hf_engine):
    """By measurement (docs/scaling.md): packed 2.1x the cached path on an H200, 0.71x on this CPU."""
    from sapray.engines.hf import HFEngine

    for device, packed in (("cuda", True), ("cuda:1", True), ("cpu", False)):
        engine = HFEngine.__new__(HFEngine)  # the engine's setup on a device name alone: nothing moves
        engine._setup(hf_engine.model, hf_engine.tokenizer, device, None, None, None, True, None, None)
        assert engine.packed is packed, device
        # issue 41's plan on GPUs (the device check decides): the flex path, its layers compiled
        assert engine.flex is engine.compile is device.startswith("cuda"), device
        assert engine.sequence_logprobs([]) == []  # nothing to score, on either path
