"""Scoring and generation engines: ``hf`` (transformers, the reference) and ``vllm``.

Both receive token ids already encoded by ``sapray.core.scoring``, so both score the same tokens.
``sapray.engines.models`` resolves a model name (the embedded ``smollm2``, a local directory or a Hub id)
into the local directory both load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

EngineName = Literal["hf", "vllm"]
# Both engines default to the same length limit, so a request is scored, truncated or rejected alike
# whichever engine runs it (vllm: max_model_len; hf: max_length). Raise both together.
DEFAULT_MAX_LENGTH = 2048


def max_length_of(engine_args: dict) -> int:
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


def load_engine(name: EngineName, model_path: str, own_process: bool = False, **options: Any):
    """Build an engine by name; options are that engine's keyword arguments. ``own_process``: the calling
    process holds this engine alone and ends with it (an engine actor), so the engine may run in it whole."""
    if name == "hf":
        from sapray.engines.hf import HFEngine

        return HFEngine(model_path, **options)
    if name == "vllm":
        from sapray.engines.vllm import VLLMEngine

        return VLLMEngine(model_path, own_process=own_process, **options)
    raise ValueError(f"unknown engine {name!r}: choose 'hf' or 'vllm'")
