"""The rank-surprisal ratio (RSR, arXiv 2601.14249): its definitions and each engine's tie rule. The hf engine's
ranks and surprisals on every path against a plain recomputation (one example at a time, full fp32 logits, the
reference's definition: surprisal logsumexp(z) - z[y], rank 1 + #{v: z_v > z[y]} clipped at 100) are checked with
the same plain forwards as its log-probs, in tests/test_shared_contexts.py."""

from __future__ import annotations

import math

import pytest
import torch

from sapray.core import metrics
from sapray.core.scoring import RANK_CLIP, EncodedRequest
from sapray.engines.hf import token_scores
from sapray.engines.sim import token_logprobs, token_ranks


def test_rsr_of_a_response_is_its_clipped_ranks_over_its_surprisals():
    assert metrics.rsr([-0.5, -1.5], [1, 7]) == pytest.approx(8 / 2.0)
    assert metrics.rsr_of_sums(8, -2.0) == pytest.approx(4.0)
    assert metrics.rsr_of_sums(3, 0.0) == 3 / metrics.RSR_GUARD  # a response of certain tokens: guarded, finite
    with pytest.raises(ValueError):
        metrics.rsr([-1.0], [1, 2])


def test_a_strategys_rsr_is_a_ratio_of_means_not_a_mean_of_ratios():
    # response A: mean rank 1, mean surprisal 0.1 (ratio 10); B: mean rank 9, mean surprisal 3 (ratio 3)
    assert metrics.rsr_of_means([1.0, 9.0], [0.1, 3.0]) == pytest.approx(10 / 3.1)
    assert metrics.rsr_of_means([1.0, 9.0], [0.1, 3.0]) != pytest.approx((10 + 3) / 2)


def test_candidate_metrics_add_rsr_columns_only_when_asked():
    by_kind = {k: {"logprob_sum": -4.0, "rank_sum": 12, "n_continuation_tokens": 4, "n_context_tokens": 10,
                   "truncated_tokens": 0} for k in ("sap", "ppl")}
    by_kind["ppl"] = {**by_kind["ppl"], "logprob_sum": -8.0, "rank_sum": 40}
    plain = metrics.candidate_metrics(by_kind)
    assert not {"rsr", "sa_rsr", "rank_sap", "rank_ppl"} & set(plain)
    both = metrics.candidate_metrics(by_kind, ["sap", "rsr", "sa_rsr"])
    assert both["sa_rsr"] == pytest.approx(3.0) and both["rsr"] == pytest.approx(5.0)
    assert both["rank_sap"] == 3.0 and both["rank_ppl"] == 10.0
    assert metrics.strategy_rsr([both, {**both, "rank_ppl": 2.0, "nll_ppl": 1.0}], "rsr") == pytest.approx(12 / 3)


def test_contexts_of_the_rsr_metrics_add_no_forward_beyond_ppl_and_sap():
    assert metrics.context_kinds(["sap", "sa_rsr"]) == ("sap",)
    assert metrics.context_kinds(["sap", "ppl", "rsr"]) == ("sap", "ppl")
    assert metrics.context_kinds(["sap", "rsr"]) == ("sap", "ppl")  # PPL not scored: one plain context


# --- tie rules ----------------------------------------------------------------------------------------

def test_hf_rank_is_strict_ties_count_for_the_token_and_clips():
    logits = torch.tensor([[2.0, 5.0, 5.0, 1.0, 5.0],    # target 1 ties two others at the top: rank 1
                           [2.0, 5.0, 5.0, 1.0, 5.0],    # target 0: three strictly higher, rank 4
                           [0.0, 0.0, 0.0, 0.0, 0.0]])  # all tied: rank 1
    values = token_scores(logits, torch.tensor([0, 1, 2]), torch.tensor([1, 0, 3]))
    assert values[1].tolist() == [1.0, 4.0, 1.0]
    assert values[0].tolist() == pytest.approx(torch.log_softmax(logits, -1)[[0, 1, 2], [1, 0, 3]].tolist())
    wide = torch.arange(300, dtype=torch.float32)[None].expand(2, -1)
    assert token_scores(wide, torch.tensor([0, 1]), torch.tensor([0, 250]))[1].tolist() == [RANK_CLIP, 50.0]


def test_vllm_rank_counts_ties_against_the_token_and_sapray_clips_it():
    from types import SimpleNamespace

    from vllm.v1.sample.ops.logprobs import batched_count_greater_than

    from sapray.engines.vllm import continuation_scores

    # vLLM's own rank kernel (what prompt_logprobs' ranks come from) on a crafted tie: >=, not >
    row = torch.tensor([[2.0, 5.0, 5.0, 1.0, 5.0]])
    assert batched_count_greater_than(row, row[:, [1]]).tolist() == [3]  # strict would say 1
    # the engine keeps that rank as it comes, clipped (flat prompt log-probs of a 3-token prompt)
    flat = SimpleNamespace(start_indices=[0, 0, 1], end_indices=[0, 1, 2], token_ids=[7, 8],
                           logprobs=[-0.1, -6.0], ranks=[3, 4000])
    scores = continuation_scores(flat, EncodedRequest("r", [5], [7, 8]))
    assert scores.logprobs == [-0.1, -6.0] and scores.ranks == [3, RANK_CLIP]


def test_sim_ranks_are_deterministic_and_never_worse_for_a_likelier_token():
    logprobs = token_logprobs(list(range(500)), list(range(1, 501)))
    ranks = token_ranks(logprobs)
    assert ranks == token_ranks(logprobs) and min(ranks) >= 1 and max(ranks) <= 20
    order = sorted(range(500), key=lambda k: -logprobs[k])
    assert all(ranks[a] <= ranks[b] for a, b in zip(order[:-1], order[1:], strict=True))
    assert token_ranks([0.0, math.log(0.5), math.log(0.05)]) == [1, 2, 20]
