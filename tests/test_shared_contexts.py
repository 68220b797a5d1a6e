"""The hf engine's shared-context paths against plain one-sequence forwards of the same weights (float32, CPU).

Both paths (``packed``: one forward per batch of packed rows under a 4D mask; ``cached``: the context once,
continuations on copies of its KV cache) must give every continuation's log-probs as a forward of that
context + continuation alone does: mean NLL within 1e-5 relative, the same token counts. The checks are
shown to fail on the two mistakes packing can make: a continuation that sees another continuation, and a
log-prob read one position off.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import gsm8k_pairs

from sapray.core import packing
from sapray.core.contexts import Layout, build_requests
from sapray.core.metrics import nll
from sapray.core.scoring import EncodedRequest, encode_all

# The module fixtures' plain forwards and the shared-context paths, 173-234 s for the file in two full runs
# (3 to 6 of its 7 tests over 20 s): make test-fast leaves the file out
pytestmark = pytest.mark.slow

REL_TOL = 1e-5  # relative, on each request's mean NLL


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
def plain(reference_model, encoded) -> list[list[float]]:
    """Each request as one sequence: no padding, no mask, no cache, all logits."""
    out = []
    with torch.no_grad():
        for r in encoded:
            logprobs = torch.log_softmax(reference_model(torch.tensor([r.input_ids])).logits[0].float(), dim=-1)
            n = len(r.context_ids)
            out.append([logprobs[n - 1 + k, t].item() for k, t in enumerate(r.continuation_ids)])
    return out


@pytest.fixture(scope="module")
def first_question(encoded, plain) -> tuple[list[EncodedRequest], list[list[float]]]:
    """The first question's 18 requests (three contexts, six continuations each) and the lone one, with their
    plain log-probs: enough for the negative controls and the order check, at half the forwards."""
    keep = [*range(18), len(encoded) - 1]
    return [encoded[i] for i in keep], [plain[i] for i in keep]


def worst_relative(got: list[list[float]], expected: list[list[float]]) -> float:
    assert [len(g) for g in got] == [len(e) for e in expected]
    return max(abs(nll(g) - nll(e)) / nll(e) for g, e in zip(got, expected, strict=True))


@pytest.fixture
def engine(hf_engine):
    """The session's hf engine; each test sets its path, and the engine's own is restored after."""
    saved = hf_engine.packed, hf_engine.share_contexts, hf_engine.max_batch_tokens
    yield hf_engine
    hf_engine.packed, hf_engine.share_contexts, hf_engine.max_batch_tokens = saved


@pytest.mark.parametrize("budget", [8192, 2048])  # 2048: several forwards, rows of one segment each
def test_packed_path_equals_plain_forwards(engine, encoded, plain, budget):
    engine.share_contexts, engine.packed, engine.max_batch_tokens = True, True, budget
    assert worst_relative(engine.sequence_logprobs(encoded), plain) < REL_TOL


def test_cached_path_equals_plain_forwards(engine, encoded, plain):
    engine.share_contexts, engine.packed = True, False
    assert worst_relative(engine.sequence_logprobs(encoded), plain) < REL_TOL


def test_packed_numbers_do_not_depend_on_request_order(engine, first_question):
    engine.share_contexts, engine.packed = True, True
    subset, _ = first_question
    forward = engine.sequence_logprobs(subset)
    order = np.random.default_rng(0).permutation(len(subset))
    shuffled = engine.sequence_logprobs([subset[i] for i in order])
    assert [shuffled[k] for k in np.argsort(order)] == forward


def test_the_check_sees_a_continuation_that_sees_another(engine, first_question, monkeypatch):
    """Let every position see its whole segment's past, other continuations included: far off."""
    def segment_causal(segment, branch, columns):
        return (columns[None, :] <= columns[:, None])[None] & (segment[:, :, None] == segment[:, None, :])

    monkeypatch.setattr(packing, "allowed", segment_causal)
    engine.share_contexts, engine.packed = True, True
    requests, expected = first_question
    assert worst_relative(engine.sequence_logprobs(requests), expected) > 100 * REL_TOL


def test_the_check_sees_a_one_token_misalignment(engine, first_question, monkeypatch):
    """Read each continuation token's log-prob one position late: far off."""
    layout = packing.layout

    def late(rows, continuations, width, pad_id):
        packed = layout(rows, continuations, width, pad_id)
        packed.predictors[:, 1] = np.minimum(packed.predictors[:, 1] + 1, width - 1)
        return packed

    monkeypatch.setattr(packing, "layout", late)
    engine.share_contexts, engine.packed = True, True
    requests, expected = first_question
    assert worst_relative(engine.sequence_logprobs(requests), expected) > 100 * REL_TOL


def test_packed_rows_are_the_default_on_gpus_and_the_cached_path_on_cpus(hf_engine):
    """By measurement (docs/scaling.md): packed 2.1x the cached path on an H200, 0.71x on this CPU."""
    from sapray.engines.hf import HFEngine

    for device, packed in (("cuda", True), ("cuda:1", True), ("cpu", False)):
        engine = HFEngine.__new__(HFEngine)  # the engine's setup on a device name alone: nothing moves
        engine._setup(hf_engine.model, hf_engine.tokenizer, device, None, None, None, True, None, None)
        assert engine.packed is packed, device
        assert engine.sequence_logprobs([]) == []  # nothing to score, on either path
