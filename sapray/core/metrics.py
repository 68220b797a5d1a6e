"""Familiarity metrics as pure functions of continuation token log-probabilities.

Every function here takes the natural-log probabilities that the target model gave
the continuation's tokens (one float per token) and returns a number; METHOD.md
gives the formulas. Nothing here knows about engines, tokenizers or Ray.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def nll(token_logprobs: Sequence[float]) -> float:
    """Mean negative log-likelihood per continuation token (METHOD.md notation NLL)."""
    if len(token_logprobs) == 0:
        raise ValueError("NLL of an empty continuation is undefined")
    return -math.fsum(token_logprobs) / len(token_logprobs)


def nll_of_sum(logprob_sum: float, tokens: int) -> float:
    """NLL from the sum of the continuation's log-probs and its length (what engine actors return)."""
    if tokens == 0:
        raise ValueError("NLL of an empty continuation is undefined")
    return -logprob_sum / tokens


def perplexity(token_logprobs: Sequence[float]) -> float:
    """exp(NLL). Given the plain-question context this is PPL; given the SAP context, SAP."""
    return math.exp(nll(token_logprobs))


def sap(token_logprobs_given_exemplars: Sequence[float]) -> float:
    """Self-aligned perplexity of one response: exp(NLL(y | context with the model's own answers))."""
    return perplexity(token_logprobs_given_exemplars)


def ifd(token_logprobs_given_question: Sequence[float], token_logprobs_alone: Sequence[float]) -> float:
    """Instruction-following difficulty: NLL(y | x) / NLL(y | empty context).

    Direction is the caller's choice: strategy selection ranks low IFD first, the
    Cherry data filter keeps high IFD and drops IFD > 1.
    """
    return ifd_of_nll(nll(token_logprobs_given_question), nll(token_logprobs_alone))


def ifd_of_nll(nll_given_question: float, nll_alone: float) -> float:
    """IFD from the two NLLs; infinite when the response alone has zero loss."""
    return math.inf if nll_alone == 0.0 else nll_given_question / nll_alone


def car(mean_reward: float, mean_nll_given_question: float) -> float:
    """CAR(s) = mean reward / (1 + 3 * mean NLL(y | x)) (METHOD.md §2)."""
    return mean_reward / (1.0 + 3.0 * mean_nll_given_question)


# The contexts each metric needs (METHOD.md §1-2): SAP its own, PPL the plain question, IFD both
# the plain question and the empty context.
KINDS_OF_METRIC = {"sap": ("sap",), "ppl": ("ppl",), "ifd": ("ppl", "empty")}


def context_kinds(names: list[str]) -> tuple[str, ...]:
    needed = {k for m in names for k in KINDS_OF_METRIC[m]}
    return tuple(k for k in ("sap", "ppl", "empty") if k in needed)


def candidate_metrics(by_kind: dict[str, dict]) -> dict:
    """The metrics of one candidate from its scored contexts; a metric whose context was not scored is NaN.
    SAP and PPL are exp(NLL) of the SAP and plain-question contexts; IFD the ratio of the question's NLL
    to the empty context's."""
    nll = {k: nll_of_sum(r["logprob_sum"], r["n_continuation_tokens"]) for k, r in by_kind.items()}
    nan = math.nan
    return {
        "sap": math.exp(nll["sap"]),
        "ppl": math.exp(nll["ppl"]) if "ppl" in nll else nan,
        "ifd": ifd_of_nll(nll["ppl"], nll["empty"]) if "empty" in nll else nan,
        **{f"nll_{k}": v for k, v in nll.items()},
        "length": by_kind["sap"]["n_continuation_tokens"],
        "context_tokens_sap": by_kind["sap"]["n_context_tokens"],
        "scored_tokens": sum(r["n_context_tokens"] + r["n_continuation_tokens"] for r in by_kind.values()),
        "truncated_tokens": max(r["truncated_tokens"] for r in by_kind.values()),
    }
