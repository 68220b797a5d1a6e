"""The engine contract: what every engine offers (``Engine``), what it generates with and returns
(``SamplingConfig``, ``Generation``), and what an engine actor is built from (``EngineSpec``).

Plain data and protocols only: the engines (``hf``, ``vllm``) import from here, and so does every layer
above that builds or calls one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from sapray.core.scoring import ScoringEngine

EngineName = Literal["hf", "vllm", "sim"]  # sim: the simulated engine of rehearsals (engines/sim.py)
# Both engines default to the same length limit, so a request is scored, truncated or rejected alike
# whichever engine runs it (vllm: max_model_len; hf: max_length). Raise both together.
DEFAULT_MAX_LENGTH = 2048


def max_length_of(engine_args: Mapping[str, Any]) -> int:
    """The length limit an engine built with these arguments will apply."""
    return int(engine_args.get("max_model_len") or engine_args.get("max_length") or DEFAULT_MAX_LENGTH)


@dataclass(frozen=True)
class SamplingConfig:
    """Generation settings, named as vLLM's SamplingParams names them."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    n: int = 1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


@dataclass
class Generation:
    """The n completions of one prompt, with the token counts cost accounting needs."""

    texts: list[str]
    prompt_tokens: int
    completion_tokens: list[int]
    finish_reasons: list[str]  # vLLM's and OpenAI's words: "stop" (EOS or a stop string) or "length" (max_tokens)


class Engine(ScoringEngine, Protocol):
    """An engine: it scores (``sapray.core.scoring.ScoringEngine``: a tokenizer, a length limit and the
    log-probs of token sequences) and generates."""

    def generate(self, prompts: Sequence[list[int]], sampling: SamplingConfig) -> list[Generation]:
        """The completions of each token-id prompt (already rendered by the caller's chat template)."""
        ...


@dataclass(frozen=True)
class EngineSpec:
    """What an engine actor loads: ``engine`` (hf or vllm) over ``model`` at ``revision`` (the commit the
    driver resolved, so every node loads the same; None for a local model), built with ``engine_args``;
    ``weights_bytes``, the size of its weight files where the driver resolved it (placement's memory estimate;
    None: not measured)."""

    engine: EngineName
    model: str
    revision: str | None = None
    engine_args: dict[str, Any] = field(default_factory=dict)
    weights_bytes: int | None = None

    def with_args(self, engine_args: Mapping[str, Any]) -> EngineSpec:
        """The same engine built with ``engine_args`` instead (those placement settled: parallelism, a share
        of a GPU's memory)."""
        return replace(self, engine_args=dict(engine_args))
