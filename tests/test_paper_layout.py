"""Paper-layout fidelity: sapray's SAP equals the authors' plain computation on GSM8K questions x 6 strategies.

The authors (METHOD.md §1) tokenize ``wrapper`` and ``wrapper + ' ' + response`` separately, mask the
wrapper's token count with -100 and take the model's mean loss; SAP = exp(loss). Here that is done one
example at a time in float32 with a separately loaded model and tokenizer, and compared with
``build_requests(Layout("paper"))`` scored by the batched hf engine with the ``joint`` boundary rule.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import gsm8k_pairs, n_test_questions

from sapray.core import metrics
from sapray.core.contexts import Layout, build_requests, sap_user_text
from sapray.core.scoring import score

REL_TOL = 1e-3  # 0.1 %
# 120 plain forward passes of ~750 tokens take over 10 minutes on a 2-core CPU: 3 questions by default,
# SAPRAY_TEST_QUESTIONS=20 for all of them.
N_QUESTIONS = n_test_questions(3)

# The authors' templates, typed from METHOD.md §1 rather than imported.
AUTHORS_USER_TEXT = (
    "Question: {question}\n\n"
    "We have inference examples below to show you how to solve the problem. "
    "please follow the inference style and solve the problem\n\n"
    "inference example: {e1}\n\n"
    "inference example: {e2}\n\n"
    "inference example: {e3}\n\n"
    "now, according to the inference examples, please solve the problem. \n\n\n"
)
AUTHORS_WRAPPER = "[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\n{user} [/INST]"


def authors_sap(model, tokenizer, question: str, exemplars: list[str], response: str) -> tuple[float, int]:
    """SAP of one example exactly as the authors compute it; also the number of scored tokens."""
    user = sap_user_text(question, exemplars)
    wrapper = AUTHORS_WRAPPER.format(user=user)
    ctx = tokenizer(wrapper, return_tensors="pt").input_ids
    whole = tokenizer(wrapper + " " + response, return_tensors="pt").input_ids
    labels = whole.clone()
    labels[:, : ctx.shape[1]] = -100
    with torch.no_grad():
        loss = model(input_ids=whole, labels=labels).loss
    return math.exp(loss.item()), whole.shape[1] - ctx.shape[1]


def test_sap_user_text_is_the_authors_template(pairs):
    row = pairs[0]
    e1, e2, e3 = row["exemplars"]
    assert sap_user_text(row["question"], row["exemplars"]) == AUTHORS_USER_TEXT.format(
        question=row["question"], e1=e1, e2=e2, e3=e3
    )


@pytest.mark.slow
def test_paper_layout_reproduces_the_authors_sap(hf_engine, reference_model, reference_tokenizer):
    pairs = gsm8k_pairs(n_questions=N_QUESTIONS)
    assert len(pairs) == 6 * N_QUESTIONS
    layout = Layout("paper", model_name="smollm2")
    requests = []
    for k, row in enumerate(pairs):
        (req,) = build_requests(layout, f"row{k}", row["question"], row["response"], row["exemplars"],
                                kinds=("sap",), question_id=row["question_id"])
        assert req.continuation == " " + row["response"]
        requests.append(req)
    results = score(hf_engine, requests, boundary=layout.boundary)
    assert layout.boundary == "joint"
    assert [r.request_id for r in results] == [r.request_id for r in requests]

    failures, worst = [], 0.0
    for row, res in zip(pairs, results, strict=True):
        assert res.ok, res.error
        ours = metrics.sap(res.token_logprobs)
        theirs, n_scored = authors_sap(reference_model, reference_tokenizer, row["question"], row["exemplars"],
                                       row["response"])
        assert res.n_continuation_tokens == n_scored, res.request_id
        rel = abs(ours - theirs) / theirs
        worst = max(worst, rel)
        if rel > REL_TOL:
            failures.append((row["question_id"], row["strategy"], ours, theirs, rel))
    print(f"\npaper layout vs the authors' loop on {len(pairs)} examples: worst relative difference {worst:.2e}")
    assert not failures, f"{len(failures)} examples differ by > {REL_TOL:.1%} (worst {worst:.2e}): {failures[:5]}"
