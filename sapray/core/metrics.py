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


RSR_GUARD = 1e-12  # the reference guards the ratio's denominator so (arXiv 2601.14249, rsr_cal.py)


def rsr(token_logprobs: Sequence[float], token_ranks: Sequence[int]) -> float:
    """Rank-surprisal ratio of one response: its clipped ranks summed over its surprisals summed (lower: the
    model ranks the response's tokens near the top for the surprise they carry; docs/concepts/rsr.md)."""
    if len(token_logprobs) == 0 or len(token_logprobs) != len(token_ranks):
        raise ValueError("RSR needs one clipped rank per token of a non-empty continuation")
    return rsr_of_sums(sum(token_ranks), math.fsum(token_logprobs))


def rsr_of_sums(rank_sum: float, logprob_sum: float) -> float:
    """RSR from the sums an engine returns: sum of clipped ranks / max(sum of surprisals, 1e-12)."""
    return rank_sum / max(-logprob_sum, RSR_GUARD)


def rsr_of_means(mean_ranks: Sequence[float], mean_surprisals: Sequence[float]) -> float:
    """A strategy's RSR: the mean over its responses of the per-token mean clipped rank, over the mean of
    the per-token mean surprisal (a ratio of means, as the paper defines it, not a mean of ratios)."""
    if len(mean_ranks) == 0 or len(mean_ranks) != len(mean_surprisals):
        raise ValueError("a strategy's RSR needs one mean rank and one mean surprisal per response")
    return math.fsum(mean_ranks) / max(math.fsum(mean_surprisals), RSR_GUARD)


def car(mean_reward: float, mean_nll_given_question: float) -> float:
    """CAR(s) = mean reward / (1 + 3 * mean NLL(y | x)) (METHOD.md §2)."""
    return mean_reward / (1.0 + 3.0 * mean_nll_given_question)


# The contexts each metric needs (METHOD.md §1-2): SAP its own, PPL the plain question, IFD both
# the plain question and the empty context; RSR PPL's context and SA-RSR SAP's (their ranks come from
# the same forwards as the log-probs).
KINDS_OF_METRIC = {"sap": ("sap",), "ppl": ("ppl",), "ifd": ("ppl", "empty"), "rsr": ("ppl",), "sa_rsr": ("sap",)}
# metric -> the context kind of its ranks, for the metrics that are rank-surprisal ratios
RSR_KIND = {"rsr": "ppl", "sa_rsr": "sap"}


def context_kinds(names: list[str]) -> tuple[str, ...]:
    needed = {k for m in names for k in KINDS_OF_METRIC[m]}
    return tuple(k for k in ("sap", "ppl", "empty") if k in needed)


def strategy_rsr(rows: Sequence[dict], name: str) -> float:
    """A strategy's ``rsr`` or ``sa_rsr`` from its candidates' rows (``candidate_metrics``): mean of the
    per-token mean clipped ranks over mean of the per-token mean surprisals, NaN where none were scored."""
    kind = RSR_KIND[name]
    scored = [r for r in rows if math.isfinite(r.get(f"rank_{kind}", math.nan))]
    if not scored:
        return math.nan
    return rsr_of_means([r[f"rank_{kind}"] for r in scored], [r[f"nll_{kind}"] for r in scored])


def candidate_metrics(by_kind: dict[str, dict], names: Sequence[str] = ()) -> dict:
    """The metrics of one candidate from its scored contexts; a metric whose context was not scored is NaN.
    SAP and PPL are exp(NLL) of the SAP and plain-question contexts; IFD the ratio of the question's NLL
    to the empty context's. The rank-surprisal ratios among ``names`` add the response's RSR in their context
    and its mean clipped rank per token there (``rank_<kind>``, what a strategy's RSR averages)."""
    nll = {k: nll_of_sum(r["logprob_sum"], r["n_continuation_tokens"]) for k, r in by_kind.items()}
    nan = math.nan
    any_kind = by_kind.get("sap") or by_kind["ppl"]
    out = {
        "sap": math.exp(nll["sap"]) if "sap" in nll else nan,
        "ppl": math.exp(nll["ppl"]) if "ppl" in nll else nan,
        "ifd": ifd_of_nll(nll["ppl"], nll["empty"]) if "empty" in nll else nan,
        **{f"nll_{k}": v for k, v in nll.items()},
        "length": any_kind["n_continuation_tokens"],
        "context_tokens_sap": by_kind["sap"]["n_context_tokens"] if "sap" in by_kind else 0,
        "scored_tokens": sum(r["n_context_tokens"] + r["n_continuation_tokens"] for r in by_kind.values()),
        "truncated_tokens": max(r["truncated_tokens"] for r in by_kind.values()),
    }
    for name in (m for m in RSR_KIND if m in names):  # only when asked: default outputs keep their columns
        scored = by_kind[RSR_KIND[name]]
        out[name] = rsr_of_sums(scored["rank_sum"], scored["logprob_sum"])
        out[f"rank_{RSR_KIND[name]}"] = scored["rank_sum"] / scored["n_continuation_tokens"]
    return out
