"""The scoring primitive: (context, continuation) requests in, continuation token log-probs out.

This follows lm-evaluation-harness's ``loglikelihood`` idea. Tokenization happens here, once,
with the target's Hugging Face tokenizer, and engines receive token ids only, so every engine
scores exactly the same tokens.

Boundary rules (where BPE may merge the end of the context with the start of the continuation):
- ``split``: context and continuation are tokenized separately and the ids concatenated; the
  continuation's tokens are the same whatever the context, so SAP, PPL and the IFD
  denominator score identical tokens. Default.
- ``joint``: the authors' rule: tokenize ``context`` and ``context + continuation``; the
  continuation is every token after the context's token count in the joint encoding.

Special tokens: a text context is encoded with the tokenizer's default special tokens (BOS
where the tokenizer adds one); a chat context is rendered by the chat template (which writes its
own special tokens) and encoded without adding more; a continuation never gets special tokens,
and no end-of-sequence token is appended to it. An empty context becomes the single start
token (BOS, else EOS), as in lm-evaluation-harness, so the first continuation token is scored.

Over-length: a pair longer than ``max_length - 1`` tokens (one position is reserved because
vLLM must generate one token after the prompt) is rejected by default; with
``overlong="truncate"`` the context loses tokens from the left and ``truncated_tokens`` says how
many. A continuation that does not fit on its own is always rejected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Message = dict[str, str]
Context = str | list[Message] | list[int]
Boundary = Literal["split", "joint"]
Overlong = Literal["reject", "truncate"]


@dataclass(frozen=True)
class ScoreRequest:
    """One continuation to score after one context.

    ``context_key`` groups requests whose contexts are identical (for example the SAP context of
    one question, scored against every strategy's response), so an engine may compute it once.
    """

    request_id: str
    context: Context
    continuation: str
    context_key: str | None = None


@dataclass(frozen=True)
class EncodedRequest:
    request_id: str
    context_ids: list[int]
    continuation_ids: list[int]
    truncated_tokens: int = 0
    context_key: str | None = None

    @property
    def input_ids(self) -> list[int]:
        return self.context_ids + self.continuation_ids


# What a journaled score carries, in job fingerprints: 2 added the clipped-rank sum, so a journal of
# log-prob sums alone is not resumed into a job that reports the rank-surprisal ratio.
SCORES_FORMAT = 2
# The rank-surprisal ratio clips each token's rank here (arXiv 2601.14249, eq. 7; docs/concepts/rsr.md).
RANK_CLIP = 100


@dataclass(frozen=True)
class TokenScores:
    """What an engine gives for each continuation token: its log-probability and its rank among the
    vocabulary, clipped at ``RANK_CLIP`` (1 + the tokens of higher logit; the engine's tie rule,
    docs/concepts/rsr.md)."""

    logprobs: list[float]
    ranks: list[int]


@dataclass
class ScoreResult:
    """Log-probabilities and clipped ranks of the continuation's tokens, or the reason the request was
    rejected."""

    request_id: str
    token_logprobs: list[float] = field(default_factory=list)
    token_ranks: list[int] = field(default_factory=list)
    n_context_tokens: int = 0
    n_continuation_tokens: int = 0
    truncated_tokens: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def rank_sum(self) -> int:
        """The continuation's clipped ranks summed: the numerator of its rank-surprisal ratio."""
        return sum(self.token_ranks)


class ScoringEngine(Protocol):
    """What an engine must offer: a tokenizer, a length limit, and log-probs (with clipped ranks) of
    token sequences."""

    name: str
    tokenizer: Any
    max_length: int

    def sequence_scores(self, requests: Sequence[EncodedRequest]) -> list[TokenScores]:
        """For each request, the log-probability and clipped rank of each continuation token given all
        before it."""
        ...


class RequestError(ValueError):
    """A request that cannot be scored; the message names the reason."""


def _check_messages(context: list) -> None:
    for i, message in enumerate(context):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(f"context message {i} is not a {{'role', 'content'}} mapping")
        if not isinstance(message.get("content"), str):
            raise RequestError(f"context message {i} has non-string content")


def render_context(context: Context, tokenizer: Any) -> tuple[str | None, list[int] | None]:
    """A context as (text, None) to be tokenized, or (None, ids) when it already is token ids."""
    if isinstance(context, str):
        return context, None
    if isinstance(context, list) and context and all(isinstance(t, int) and not isinstance(t, bool) for t in context):
        vocabulary = len(tokenizer)
        outside = [t for t in context if not 0 <= t < vocabulary]
        if outside:
            raise RequestError(f"context token ids {outside[:5]} are outside the vocabulary [0, {vocabulary})")
        return None, list(context)
    if isinstance(context, list) and context:
        _check_messages(context)
        return tokenizer.apply_chat_template(context, tokenize=False, add_generation_prompt=True), None
    raise RequestError(f"context must be text, chat messages or token ids, not {type(context).__name__}")


def start_token_id(tokenizer: Any) -> int:
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise RequestError("an empty context needs a BOS or EOS token and the tokenizer has neither")
    return token


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def encode(
    request: ScoreRequest,
    tokenizer: Any,
    max_length: int,
    boundary: Boundary = "split",
    overlong: Overlong = "reject",
) -> EncodedRequest:
    """Tokenize one request by the boundary rule and apply the over-length policy."""
    if not isinstance(request.continuation, str):
        raise RequestError(f"continuation must be a string, not {type(request.continuation).__name__}")
    if not request.continuation.strip():
        raise RequestError("empty continuation")
    text, context_ids = render_context(request.context, tokenizer)
    # A chat template writes its own special tokens; plain text gets the tokenizer's defaults.
    special = isinstance(request.context, str)
    if boundary == "joint" and text is not None:
        context_ids = _ids(tokenizer, text, special) if text else [start_token_id(tokenizer)]
        whole = _ids(tokenizer, text + request.continuation, special) if text else (
            context_ids + _ids(tokenizer, request.continuation, False))
        context_ids, continuation_ids = whole[: len(context_ids)], whole[len(context_ids):]
    elif boundary in ("split", "joint"):
        if context_ids is None:
            context_ids = _ids(tokenizer, text, special) if text else []
        if not context_ids:
            context_ids = [start_token_id(tokenizer)]
        continuation_ids = _ids(tokenizer, request.continuation, False)
    else:
        raise RequestError(f"unknown boundary rule {boundary!r}")
    if not continuation_ids:
        raise RequestError("continuation has no tokens after the context boundary")
    limit = max_length - 1
    excess = len(context_ids) + len(continuation_ids) - limit
    truncated = 0
    if excess > 0:
        if overlong != "truncate" or len(continuation_ids) >= limit:
            raise RequestError(
                f"over-length: {len(context_ids) + len(continuation_ids)} tokens > limit {limit} "
                f"(max_length {max_length} - 1)"
            )
        context_ids, truncated = context_ids[excess:], excess
    return EncodedRequest(request.request_id, context_ids, continuation_ids, truncated, request.context_key)


def encode_all(
    requests: Sequence[ScoreRequest],
    tokenizer: Any,
    max_length: int,
    boundary: Boundary = "split",
    overlong: Overlong = "reject",
) -> list[EncodedRequest | ScoreResult]:
    """Encode a batch, position for position; a bad row becomes a rejected ScoreResult that names it."""
    out: list[EncodedRequest | ScoreResult] = []
    for request in requests:
        try:
            out.append(encode(request, tokenizer, max_length, boundary, overlong))
        except RequestError as exc:
            out.append(ScoreResult(request_id=request.request_id, error=f"{request.request_id}: {exc}"))
    return out


def score(
    engine: ScoringEngine,
    requests: Sequence[ScoreRequest],
    boundary: Boundary = "split",
    overlong: Overlong = "reject",
) -> list[ScoreResult]:
    """Score a batch of requests; results come back in request order, rejected rows included.

    Results are matched by position, so request ids need not be unique or strings.
    """
    slots = encode_all(requests, engine.tokenizer, engine.max_length, boundary, overlong)
    encoded = [s for s in slots if isinstance(s, EncodedRequest)]
    scores = iter(engine.sequence_scores(encoded) if encoded else [])
    return [
        slot if isinstance(slot, ScoreResult) else _result(slot, next(scores))
        for slot in slots
    ]


def _result(slot: EncodedRequest, scores: TokenScores) -> ScoreResult:
    return ScoreResult(request_id=slot.request_id, token_logprobs=scores.logprobs, token_ranks=scores.ranks,
                       n_context_tokens=len(slot.context_ids), n_continuation_tokens=len(slot.continuation_ids),
                       truncated_tokens=slot.truncated_tokens)
