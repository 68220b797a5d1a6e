"""The scoring primitive: boundary rules, bad input, over-length, empty and chat contexts."""

from __future__ import annotations

import math

import pytest
import torch

from sapray.core.scoring import EncodedRequest, ScoreRequest, TokenScores, encode, score

# A real BPE merge across the boundary with the SmolLM2 tokenizer (found by search):
# tok("Hello wor") = [Hello, ' wor'], tok("ld, how are you?") starts with 'ld', but
# tok("Hello world, how are you?") = [Hello, ' world', ...]: ' wor' + 'ld' became one token.
MERGE_CONTEXT = "Hello wor"
MERGE_CONTINUATION = "ld, how are you?"


def ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def text_ids(tokenizer, text: str) -> list[int]:
    """A text context gets the tokenizer's default special tokens."""
    return list(tokenizer(text)["input_ids"])


def plain_logprobs(model, context_ids: list[int], continuation_ids: list[int]) -> list[float]:
    """Unbatched float32 forward, log_softmax over the full logits, the actual next token picked."""
    seq = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=seq).logits[0].float(), dim=-1)
    return [logprobs[p - 1, seq[0, p]].item() for p in range(len(context_ids), seq.shape[1])]


class RecordingEngine:
    """Stands in for any engine: records the ids it is given and returns zeros."""

    name = "recording"

    def __init__(self, tokenizer, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.seen: list[EncodedRequest] = []

    def sequence_scores(self, requests):
        self.seen.extend(requests)
        return [TokenScores([0.0] * len(r.continuation_ids), [1] * len(r.continuation_ids)) for r in requests]


@pytest.fixture(scope="module")
def short_engine(smollm2_path):
    """The hf engine with a 64-token limit (63 usable positions), to exercise over-length rules."""
    from sapray.engines.hf import HFEngine

    return HFEngine(smollm2_path, device="cpu", max_length=64)


# --- boundary rules ----------------------------------------------------------------------------


def test_the_chosen_pair_really_merges(reference_tokenizer):
    tok = reference_tokenizer
    separate = ids(tok, MERGE_CONTEXT) + ids(tok, MERGE_CONTINUATION)
    joint = ids(tok, MERGE_CONTEXT + MERGE_CONTINUATION)
    assert joint != separate
    assert len(joint) < len(separate)


def test_split_rule_tokenizes_parts_separately(reference_tokenizer):
    tok = reference_tokenizer
    enc = encode(ScoreRequest("m", MERGE_CONTEXT, MERGE_CONTINUATION), tok, 8192, boundary="split")
    assert enc.context_ids == text_ids(tok, MERGE_CONTEXT)
    assert enc.continuation_ids == ids(tok, MERGE_CONTINUATION)


def test_joint_rule_splits_the_joint_encoding_at_the_context_length(reference_tokenizer):
    tok = reference_tokenizer
    enc = encode(ScoreRequest("m", MERGE_CONTEXT, MERGE_CONTINUATION), tok, 8192, boundary="joint")
    whole = text_ids(tok, MERGE_CONTEXT + MERGE_CONTINUATION)
    n = len(text_ids(tok, MERGE_CONTEXT))
    assert enc.context_ids == whole[:n]
    assert enc.continuation_ids == whole[n:]
    # the merged token is on the context side, so the two rules really differ here
    assert enc.continuation_ids != ids(tok, MERGE_CONTINUATION)


@pytest.mark.parametrize("boundary", ["split", "joint"])
def test_engines_receive_the_ids_that_encode_produces(hf_engine, reference_tokenizer, reference_model, boundary):
    tok = reference_tokenizer
    requests = [
        ScoreRequest("merge", MERGE_CONTEXT, MERGE_CONTINUATION),
        ScoreRequest("plain", "The answer is", " 42"),
        ScoreRequest("chat", [{"role": "user", "content": "Say hi."}], "Hi!"),
    ]
    expected = [encode(r, tok, hf_engine.max_length, boundary=boundary) for r in requests]

    # Any engine is handed exactly encode()'s ids: the encoding is not the engine's business.
    recorder = RecordingEngine(hf_engine.tokenizer, hf_engine.max_length)
    score(recorder, requests, boundary=boundary)
    assert [(e.context_ids, e.continuation_ids) for e in recorder.seen] == [
        (e.context_ids, e.continuation_ids) for e in expected
    ]

    # The hf engine records counts consistent with the rule and scores exactly those tokens.
    results = score(hf_engine, requests, boundary=boundary)
    for res, enc in zip(results, expected, strict=True):
        assert res.ok, res.error
        assert res.n_context_tokens == len(enc.context_ids)
        assert res.n_continuation_tokens == len(enc.continuation_ids) == len(res.token_logprobs)
        assert res.token_logprobs == pytest.approx(
            plain_logprobs(reference_model, enc.context_ids, enc.continuation_ids), abs=1e-4
        )


def test_boundary_counts_for_the_merging_pair(hf_engine, reference_tokenizer):
    tok = reference_tokenizer
    req = [ScoreRequest("m", MERGE_CONTEXT, MERGE_CONTINUATION)]
    (split,) = score(hf_engine, req, boundary="split")
    (joint,) = score(hf_engine, req, boundary="joint")
    n_ctx = len(text_ids(tok, MERGE_CONTEXT))
    assert split.n_context_tokens == joint.n_context_tokens == n_ctx
    assert split.n_continuation_tokens == len(ids(tok, MERGE_CONTINUATION))
    assert joint.n_continuation_tokens == len(text_ids(tok, MERGE_CONTEXT + MERGE_CONTINUATION)) - n_ctx


def test_unknown_boundary_rule_is_a_row_error(hf_engine):
    (res,) = score(hf_engine, [ScoreRequest("b", "ctx", "cont")], boundary="sideways")
    assert not res.ok and "b" in res.error and "boundary" in res.error


# --- bad input ---------------------------------------------------------------------------------

GOOD_CONTEXT = "Question: What is 2 + 3?\nAnswer:"
GOOD_CONTINUATION = " 5"


def test_bad_rows_are_reported_and_good_rows_scored(hf_engine, reference_model):
    requests = [
        ScoreRequest("good-0", GOOD_CONTEXT, GOOD_CONTINUATION),
        ScoreRequest("empty-cont", GOOD_CONTEXT, ""),
        ScoreRequest("space-cont", GOOD_CONTEXT, " \n\t "),
        ScoreRequest("int-cont", GOOD_CONTEXT, 42),
        ScoreRequest("none-cont", GOOD_CONTEXT, None),
        ScoreRequest("good-1", [{"role": "user", "content": "What is 2 + 3?"}], "5"),
        ScoreRequest("dict-ctx", {"role": "user", "content": "hi"}, "hello"),
        ScoreRequest("int-ctx", 7, "hello"),
        ScoreRequest("none-ctx", None, "hello"),
        ScoreRequest("empty-list-ctx", [], "hello"),
        ScoreRequest("msg-no-content", [{"role": "user"}], "hello"),
        ScoreRequest("msg-int-content", [{"role": "user", "content": 3}], "hello"),
        ScoreRequest("msg-no-role", [{"content": "hi"}], "hello"),
        ScoreRequest("msg-str", ["hi there"], "hello"),
        ScoreRequest("msg-mixed", [{"role": "user", "content": "hi"}, 5], "hello"),
        ScoreRequest("too-long", GOOD_CONTEXT, " five" * 9000),
        ScoreRequest("good-2", "", "Hello world"),
    ]
    reasons = {
        "empty-cont": "empty continuation",
        "space-cont": "empty continuation",
        "int-cont": "continuation must be a string",
        "none-cont": "continuation must be a string",
        "dict-ctx": "context must be",
        "int-ctx": "context must be",
        "none-ctx": "context must be",
        "empty-list-ctx": "context must be",
        "msg-no-content": "context message 0",
        "msg-int-content": "context message 0",
        "msg-no-role": "context message 0",
        "msg-str": "context message 0",
        "msg-mixed": "context message 1",
        "too-long": "over-length",
    }
    results = score(hf_engine, requests)
    assert len(results) == len(requests)
    assert [r.request_id for r in results] == [r.request_id for r in requests]
    for req, res in zip(requests, results, strict=True):
        if req.request_id in reasons:
            assert not res.ok, req.request_id
            assert req.request_id in res.error
            assert reasons[req.request_id] in res.error, res.error
            assert res.token_logprobs == []
        else:
            assert res.ok, res.error
            assert res.n_continuation_tokens == len(res.token_logprobs) > 0
            assert all(math.isfinite(x) and x <= 0.0 for x in res.token_logprobs)

    # the good rows score the same in the mixed batch as alone
    alone = score(hf_engine, [r for r in requests if r.request_id.startswith("good")])
    mixed = [r for r in results if r.request_id.startswith("good")]
    for a, m in zip(alone, mixed, strict=True):
        assert a.token_logprobs == pytest.approx(m.token_logprobs, abs=1e-4)


def test_only_bad_rows_never_reach_the_engine(hf_engine):
    recorder = RecordingEngine(hf_engine.tokenizer, hf_engine.max_length)
    results = score(recorder, [ScoreRequest("a", "x", ""), ScoreRequest("b", 3, "y")])
    assert [r.request_id for r in results] == ["a", "b"]
    assert all(not r.ok for r in results)
    assert recorder.seen == []


def test_out_of_vocabulary_context_ids_are_a_row_error(hf_engine):
    """A token-id context with ids outside the vocabulary must be rejected as that row, not crash the batch."""
    vocab = len(hf_engine.tokenizer)
    requests = [
        ScoreRequest("good", GOOD_CONTEXT, GOOD_CONTINUATION),
        ScoreRequest("oov", [5, vocab + 10], "hello"),
        ScoreRequest("negative", [5, -1], "hello"),
    ]
    results = score(hf_engine, requests)
    assert [r.request_id for r in results] == ["good", "oov", "negative"]
    assert results[0].ok
    assert not results[1].ok and "oov" in results[1].error
    assert not results[2].ok and "negative" in results[2].error


def test_non_string_request_ids_are_returned_in_order(hf_engine):
    """encode_all stringifies ids of rejected rows; scored rows must be found again too."""
    requests = [ScoreRequest(1, GOOD_CONTEXT, GOOD_CONTINUATION), ScoreRequest(2, GOOD_CONTEXT, "")]
    results = score(hf_engine, requests)
    assert len(results) == 2
    assert results[0].ok and not results[1].ok


def test_duplicate_request_ids_do_not_swap_results(hf_engine, reference_tokenizer):
    """Two requests sharing an id: each position must get its own result, or be flagged, never the other's."""
    tok = reference_tokenizer
    requests = [ScoreRequest("dup", GOOD_CONTEXT, " 5"), ScoreRequest("dup", GOOD_CONTEXT, " five plus zero")]
    results = score(hf_engine, requests)
    assert len(results) == 2
    for req, res in zip(requests, results, strict=True):
        if res.ok:
            assert res.n_continuation_tokens == len(ids(tok, req.continuation))
        else:
            assert "dup" in res.error


# --- over-length -------------------------------------------------------------------------------


def _long_pair(tok, n_context: int, n_continuation: int) -> tuple[str, str]:
    """A context and continuation of exactly the given token counts (' one' is one token, ' two' too)."""
    context = "Count:" + " one" * (n_context - 2)
    continuation = " two" * n_continuation
    assert len(text_ids(tok, context)) == n_context
    assert len(ids(tok, continuation)) == n_continuation
    return context, continuation


def test_overlong_pair_is_rejected_by_default(short_engine, reference_tokenizer):
    context, continuation = _long_pair(reference_tokenizer, 50, 30)  # 80 > 63
    results = score(short_engine, [ScoreRequest("long", context, continuation), ScoreRequest("ok", "Hi", " there")])
    assert not results[0].ok and "long" in results[0].error and "over-length" in results[0].error
    assert results[1].ok


def test_pair_at_the_limit_is_accepted(short_engine, reference_tokenizer):
    context, continuation = _long_pair(reference_tokenizer, 33, 30)  # 63 = max_length - 1
    (res,) = score(short_engine, [ScoreRequest("edge", context, continuation)])
    assert res.ok, res.error
    assert (res.n_context_tokens, res.n_continuation_tokens, res.truncated_tokens) == (33, 30, 0)
    context, continuation = _long_pair(reference_tokenizer, 34, 30)  # 64 > 63
    (res,) = score(short_engine, [ScoreRequest("edge", context, continuation)])
    assert not res.ok and "over-length" in res.error


def test_overlong_pair_is_truncated_from_the_left(short_engine, reference_tokenizer, reference_model):
    tok = reference_tokenizer
    context, continuation = _long_pair(tok, 50, 30)  # 80 tokens, limit 63 -> 17 context tokens dropped
    results = score(
        short_engine,
        [ScoreRequest("long", context, continuation), ScoreRequest("ok", "Hi", " there")],
        overlong="truncate",
    )
    res = results[0]
    assert res.ok, res.error
    assert res.truncated_tokens == 17 > 0
    assert res.n_context_tokens == 50 - 17
    assert res.n_continuation_tokens == 30 == len(res.token_logprobs)  # continuation fully scored
    kept_context = text_ids(tok, context)[17:]
    assert res.token_logprobs == pytest.approx(plain_logprobs(reference_model, kept_context, ids(tok, continuation)),
                                               abs=1e-4)
    assert results[1].ok and results[1].truncated_tokens == 0


def test_continuation_alone_too_long_is_rejected_even_with_truncate(short_engine, reference_tokenizer):
    tok = reference_tokenizer
    context, continuation = _long_pair(tok, 10, 63)  # the continuation alone fills all 63 positions
    results = score(
        short_engine,
        [ScoreRequest("cont-too-long", context, continuation), ScoreRequest("ok", "Hi", " there")],
        overlong="truncate",
    )
    assert not results[0].ok and "cont-too-long" in results[0].error and "over-length" in results[0].error
    assert results[1].ok
    # one token shorter fits, keeping a single context token
    context, continuation = _long_pair(tok, 10, 62)
    (res,) = score(short_engine, [ScoreRequest("fits", context, continuation)], overlong="truncate")
    assert res.ok, res.error
    assert (res.n_context_tokens, res.n_continuation_tokens, res.truncated_tokens) == (1, 62, 9)


# --- empty and chat contexts -------------------------------------------------------------------


@pytest.mark.parametrize("boundary", ["split", "joint"])
def test_empty_context_is_one_start_token(hf_engine, reference_tokenizer, reference_model, boundary):
    tok = reference_tokenizer
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    continuation = "Janet sells 9 eggs."
    enc = encode(ScoreRequest("e", "", continuation), tok, hf_engine.max_length, boundary=boundary)
    assert enc.context_ids == [start]
    assert enc.continuation_ids == ids(tok, continuation)
    (res,) = score(hf_engine, [ScoreRequest("e", "", continuation)], boundary=boundary)
    assert res.ok, res.error
    assert res.n_context_tokens == 1
    assert res.n_continuation_tokens == len(ids(tok, continuation))
    # the first continuation token is scored, given the start token only
    assert res.token_logprobs == pytest.approx(plain_logprobs(reference_model, [start], enc.continuation_ids),
                                               abs=1e-4)


def test_chat_context_is_rendered_by_the_chat_template(hf_engine, reference_tokenizer):
    tok = reference_tokenizer
    messages = [
        {"role": "system", "content": "You solve math problems."},
        {"role": "user", "content": "What is 2 + 3?"},
    ]
    enc = encode(ScoreRequest("c", messages, "2 + 3 = 5"), tok, hf_engine.max_length)
    expected_text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # the template writes its own special tokens; none are added on top
    assert enc.context_ids == ids(tok, expected_text)
    templated = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    templated = templated["input_ids"] if hasattr(templated, "keys") else templated
    assert enc.context_ids == list(templated)
    decoded = tok.decode(enc.context_ids)
    assert "You solve math problems." in decoded and "What is 2 + 3?" in decoded
    assert decoded.endswith("<|im_start|>assistant\n")  # the generation prompt
    assert enc.continuation_ids == ids(tok, "2 + 3 = 5")

    (res,) = score(hf_engine, [ScoreRequest("c", messages, "2 + 3 = 5")])
    assert res.ok and res.n_context_tokens == len(enc.context_ids)


def test_token_id_context_is_used_as_is(hf_engine, reference_tokenizer, reference_model):
    tok = reference_tokenizer
    context = ids(tok, "The answer is")
    (res,) = score(hf_engine, [ScoreRequest("t", context, " 42")])
    assert res.ok and res.n_context_tokens == len(context)
    assert res.token_logprobs == pytest.approx(plain_logprobs(reference_model, context, ids(tok, " 42")), abs=1e-4)
