"""The simulated engine (``engine: sim``): a stand-in for a GPU engine, to rehearse a job at cluster scale.

It takes the requests and prompts a real engine would take, with the target's own tokenizer, and
- waits as long as the device it stands for would compute: a per-call overhead plus the call's tokens over
  that device's measured rate (``sapray.core.costs.SIMULATED_DEVICES``, or rates given), divided by
  ``time_scale`` (10: ten times faster than real time). It sleeps, so it uses no CPU while it waits, and it
  imports no torch, so dozens of its actors fit beside the data plane on one machine;
- returns values derived from the token ids alone, the same in every run, batch and actor: each token's
  log-probability is a function of it and the token before it (a valid log-probability in [log 0.05, 0]), and its
  rank is floor(1 / its probability) (1 to 20: at most that many tokens could be as probable); each
  answer's length is a function of its prompt's ids, the sample's index and the seed, around
  ``answer_tokens``, one word a token.

The target's tokenizer is loaded only where a stage hands the engine text to encode (select's scoring actors);
the filters' actors and the teachers receive token ids, and their simulated actors never import transformers
(nor, through it, torch).

With ``stats_dir`` (a rehearsal's, on the driver's machine) each engine writes its ``stats()`` there after every
call. Times are what the simulation waits (``waited_s``), not what a device would do with real weights: a rehearsal
projects from them and says so.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sapray.core.costs import SIMULATED_DEVICES
from sapray.core.scoring import RANK_CLIP, EncodedRequest, TokenScores
from sapray.engines.base import DEFAULT_MAX_LENGTH, Generation, SamplingConfig

_MIX = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio: an odd multiplier that spreads bits
_FLOOR = 0.05  # the least probability a simulated token gets
_WORDS = ("the", "so", "she", "has", "apples", "each", "costs", "then", "total", "is", "=", "+", "*", "2", "3", "5",
          "12", "48", "more", "than", "per", "day", "left", "after", "A:", "####", "answer", "we", "get", "of")


def _unit(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A number in [0, 1) for each pair (a, b) of non-negative integers: a fixed hash (splitmix64's finaliser)."""
    with np.errstate(over="ignore"):
        x = (a.astype(np.uint64) * _MIX) ^ (b.astype(np.uint64) + np.uint64(0x632BE59BD9B4E019))
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(2**53)


def token_logprobs(previous: Sequence[int], tokens: Sequence[int]) -> list[float]:
    """The simulated log-probability of each of ``tokens`` after the one before it (``previous[k]``)."""
    return np.log(_FLOOR + (1 - _FLOOR) * _unit(np.asarray(previous), np.asarray(tokens))).tolist()


def token_ranks(logprobs: Sequence[float]) -> list[int]:
    """The simulated rank of each token of log-probability ``logprobs[k]``: floor(1 / p), so a more probable
    token never ranks worse (1e-9 absorbs exp's rounding where 1 / p is a whole number)."""
    return [min(RANK_CLIP, int(np.exp(-lp) + 1e-9)) for lp in logprobs]


class SimEngine:
    """Scores and generates as ``hf`` and ``vllm`` do, in simulated time (see the module's doc)."""

    name = "sim"

    def __init__(self, model_path: str, device: str = "h200-llama3-8b", score_tokens_per_s: float | None = None,
                 generate_tokens_per_s: float | None = None, call_overhead_s: float = 0.0, time_scale: float = 1.0,
                 answer_tokens: int = 128, seed: int = 0, max_length: int = DEFAULT_MAX_LENGTH,
                 max_model_len: int | None = None, stats_dir: str | None = None, adapter: str | None = None,
                 own_process: bool = False) -> None:
        # adapter: a simulated engine has no weights to adapt; own_process: every engine's keyword (load_engine)
        if device not in SIMULATED_DEVICES and (score_tokens_per_s is None or generate_tokens_per_s is None):
            raise ValueError(f"unknown simulated device {device!r}: choose one of {sorted(SIMULATED_DEVICES)}, or "
                             "give score_tokens_per_s and generate_tokens_per_s")
        measured = SIMULATED_DEVICES.get(device)
        self.score_rate = float(score_tokens_per_s or measured.score_tokens_per_s)
        self.generate_rate = float(generate_tokens_per_s or measured.generate_tokens_per_s)
        if min(self.score_rate, self.generate_rate, time_scale) <= 0 or call_overhead_s < 0 or answer_tokens < 1:
            raise ValueError("simulated rates and time_scale must be positive, call_overhead_s >= 0, "
                             "answer_tokens >= 1")
        self.device, self.call_overhead_s, self.time_scale = device, call_overhead_s, time_scale
        self.answer_tokens, self.seed = answer_tokens, seed
        self.model_path, self.stats_dir = model_path, stats_dir
        self._tokenizer: Any = None
        self.max_length = int(max_model_len or max_length)
        self.waited_s = 0.0  # simulated device time, before time_scale
        self.tokens = {"scored": 0, "prompt": 0, "generated": 0}

    @property
    def tokenizer(self) -> Any:
        """The target's tokenizer, loaded when first asked for."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        return self._tokenizer

    def _wait(self, seconds: float) -> None:
        self.waited_s += seconds
        time.sleep(seconds / self.time_scale)
        if self.stats_dir:  # a rehearsal's: its stats after every call, one file per engine
            path = Path(self.stats_dir) / f"{os.getpid()}-{id(self)}.json"
            # the process's CPU time too: what the actor's host did (tokenizing, Arrow), which a real engine's
            # host would do as well; dead actors can no longer be asked for it
            path.with_suffix(".tmp").write_text(json.dumps({**self.stats(), "pid": os.getpid(),
                                                            "process_cpu_s": round(time.process_time(), 3)}))
            path.with_suffix(".tmp").replace(path)

    def sequence_logprobs(self, requests: Sequence[EncodedRequest]) -> list[list[float]]:
        """The continuation tokens' log-probs alone."""
        return [s.logprobs for s in self.sequence_scores(requests)]

    def sequence_scores(self, requests: Sequence[EncodedRequest]) -> list[TokenScores]:
        out = []
        for r in requests:
            ids, start = r.input_ids, len(r.context_ids)
            previous = ids[start - 1:-1] if start else [0, *ids[:-1]]
            logprobs = token_logprobs(previous, ids[start:])
            out.append(TokenScores(logprobs, token_ranks(logprobs)))
        scored = sum(len(r.input_ids) for r in requests)
        self.tokens["scored"] += scored
        self._wait(self.call_overhead_s + scored / self.score_rate)
        return out

    def generate(self, prompts: Sequence[list[int]], sampling: SamplingConfig) -> list[Generation]:
        out = []
        for prompt in prompts:
            ids = np.asarray(prompt or [0])
            texts, lengths, reasons = [], [], []
            for k in range(sampling.n):
                salt = int(_unit(np.asarray([ids.sum() + len(ids)]), np.asarray([self.seed * 1000 + k]))[0] * 2**31)
                wanted = max(1, round(self.answer_tokens * (0.5 + _unit(np.asarray([salt]), np.asarray([7]))[0])))
                length = min(wanted, sampling.max_tokens)
                picks = (_unit(np.full(length, salt), np.arange(length)) * len(_WORDS)).astype(np.int64)
                texts.append(" ".join(_WORDS[i] for i in picks))
                lengths.append(length)
                reasons.append("length" if wanted >= sampling.max_tokens else "stop")
            out.append(Generation(texts, len(prompt), lengths, reasons))
        prompt_tokens = sum(len(p) for p in prompts)
        generated = sum(sum(g.completion_tokens) for g in out)
        self.tokens["prompt"] += prompt_tokens
        self.tokens["generated"] += generated
        self._wait(self.call_overhead_s + prompt_tokens / self.score_rate + generated / self.generate_rate)
        return out

    def stats(self) -> dict[str, Any]:
        """What this engine simulated: device seconds (before ``time_scale``) and tokens."""
        return {"device": self.device, "waited_s": round(self.waited_s, 6), **self.tokens}
