"""Scoring and generation engines: ``hf`` (transformers, the reference) and ``vllm``.

Both receive token ids already encoded by ``sapray.core.scoring``, so both score the same tokens; both keep
the contract of ``sapray.engines.base``. ``sapray.engines.models`` resolves a model name (the embedded
``smollm2``, a local directory or a Hub id) into the local directory both load.
"""

from __future__ import annotations

import importlib
from typing import Any

from sapray.engines.base import Engine, EngineName

# name -> (module, class), imported when an engine of that name is built (each pulls in torch or vLLM)
ENGINES: dict[str, tuple[str, str]] = {"hf": ("sapray.engines.hf", "HFEngine"),
                                       "vllm": ("sapray.engines.vllm", "VLLMEngine"),
                                       "sim": ("sapray.engines.sim", "SimEngine")}


def load_engine(name: EngineName, model_path: str, own_process: bool = False, **options: Any) -> Engine:
    """Build an engine by name; options are that engine's keyword arguments. ``own_process``: the calling
    process holds this engine alone and ends with it (an engine actor), so the engine may run in it whole
    (vllm; hf runs in its caller's process either way)."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}: choose {' or '.join(repr(n) for n in ENGINES)}")
    module, cls = ENGINES[name]
    return getattr(importlib.import_module(module), cls)(model_path, own_process=own_process, **options)
