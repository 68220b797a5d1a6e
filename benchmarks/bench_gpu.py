"""GPU benchmark of the hf engine: scoring tokens/s and MFU on each of its paths, on random weights.

Two model shapes, each built from its config directly on the device with random weights (no weight
file travels; only the SmolLM2 tokenizer does, and its ids are valid in both vocabularies):

- ``smollm2-135m``: SmolLM2-135M-Instruct's shape (the embedded target);
- ``llama3-8b``: Llama-3-8B's shape (hidden 4096, 32 layers, 32 heads, 8 KV heads, MLP 14336,
  vocabulary 128256, RoPE theta 500000).

Workload: the GSM8K SAP + PPL + IFD scoring requests of tests/data/gsm8k_first20 (20 questions x 6
strategies x 3 contexts, chat layout, exemplars = the next 3 questions' human answers, as in
tests/conftest.py), ``--repeat`` times (repeat k > 0 prefixes each question with "(k) " so that no
context is shared across repeats). The requests are cut into blocks of ``block_rows`` rows in the
pipeline's order (question > strategy > kind), as Ray Data hands them to an engine actor, and each
block is one ``HFEngine.sequence_logprobs`` call.

For each setting ``block_rows:max_batch_tokens:max_logit_rows`` (block_rows 0 = the whole workload
in one call) and each path (``packed``: shared contexts in one packed forward per batch of rows with a
4D mask; ``cached``: shared contexts run once, continuations on copies of their KV cache; ``unshared``:
left-padded batches of whole requests) it reports: scored tokens (context + continuation of every
request, what vLLM computes), computed tokens (a shared context counted once), padded tokens (what
the forwards actually ran, padding included), seconds, tokens/s, achieved TFLOP/s, MFU and peak GPU
memory. Then greedy generation tokens/s (``HFEngine.generate``), and a correctness check: every engine
path against plain one-sequence forwards of the same model (PASS/FAIL; exit status 1 on FAIL).

FLOPs (useful work only, forward pass), from PaLM's count (Chowdhery et al. 2022, "PaLM: Scaling
Language Modeling with Pathways", appendix B: 6N + 12LHQT matmul FLOPs per token for training, a
third of it, 2N + 4LHQT, for a forward pass), made causal and split at the LM head:

    FLOPs = sum over computed tokens  [ 2 * N_layers + 4 * L * H * Q * (p + 1) ]
          + sum over scored tokens    [ 2 * d_model * V ]

N_layers = the parameters of the transformer blocks (attention and MLP matrices, norms); L layers,
H query heads, Q head dimension, p the token's 0-based position in its sequence (causal attention: a
token attends to p + 1 keys, so a sequence of T tokens costs 4LHQ * T(T+1)/2, about Kaplan et al.'s
2 * n_layer * n_ctx * d_attn per token); d_model x V the LM head, counted once per scored
continuation token (the engine keeps only the logits it needs). The input embedding is a lookup (no
FLOPs). A shared context's tokens count once; padding counts nothing. MFU = achieved FLOP/s / the
chip's dense bf16 peak (table below, or --peak-tflops).

    PYTHONPATH=. python benchmarks/bench_gpu.py --copy-tokenizer out/bench_tokenizer   # here, once
    PYTHONPATH=. python benchmarks/bench_gpu.py --tokenizer out/bench_tokenizer --repeat 3 --json $OUT/gpu.json
    PYTHONPATH=. python benchmarks/bench_gpu.py --device cpu --tiny --json /tmp/tiny.json   # CPU smoke run

Imports only torch, transformers and sapray modules that need none of ray, vllm, pydantic or click
(nor yaml of their own), so it runs on a bare GPU machine with torch and transformers.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sapray.core.contexts import Layout, build_requests
from sapray.core.metrics import nll
from sapray.core.scoring import EncodedRequest, encode_all
from sapray.engines.base import SamplingConfig
from sapray.engines.hf import HFEngine

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "gsm8k_first20"
MAX_LENGTH = 2048  # both engines' default length limit
N_EXEMPLARS = 3
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")

# LlamaConfig arguments of the two shapes; bos/eos/pad come from the tokenizer.
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         intermediate_size=1536, vocab_size=49152, max_position_embeddings=8192,
                         rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
                         rms_norm_eps=1e-5, tie_word_embeddings=True),
    "llama3-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=14336, vocab_size=128256, max_position_embeddings=8192,
                      rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
                      rms_norm_eps=1e-5, tie_word_embeddings=False),
}
# --tiny: two small layers and the tokenizer's own vocabulary (its ids must fit; the vocabulary-wide
# log-softmax dominates a tiny model's time), for CPU smoke runs.
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
            vocab_size=49152)

DEFAULTS: dict[str, Any] = {
    "questions": 20, "parity_questions": 2, "gen_prompts": 64, "gen_tokens": 128,
    "settings": "36:8192:1024,36:32768:8192,36:32768:8192:0.25,0:32768:8192,0:32768:8192:0.25",
}
TINY_DEFAULTS: dict[str, Any] = {"questions": 1, "settings": "18:2048:256,0:8192:1024:0.25",
                                 "parity_questions": 1, "gen_prompts": 2, "gen_tokens": 4}
# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s; first substring match wins.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200 NVL", 835.0), ("H200", 989.0),
    ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0),  # plain "H100 80GB HBM3" is the SXM part
    ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0),
)
# Correctness tolerances (engine path vs plain one-sequence forwards): max |per-token logprob
# difference| in nats and max relative difference of a request's mean NLL. In float32 they are
# absolute. In bf16 (8 bits of mantissa; batch shape changes the kernels' summation order, and over 32
# layers of random weights an ordinary padded batch strays 0.23 nats from plain forwards on an H100) a
# path passes when it strays at most RELATIVE_TO_PADDED times as far as the padded batch of the same
# model does (the "unshared" variant, which shares nothing and packs nothing), never less than the
# float32 tolerances. Fixed 2026-12-04, before the first run that uses it.
TOLERANCES = {"float32": (1e-4, 1e-5), "bfloat16": (1e-4, 1e-5), "float16": (1e-4, 1e-5)}
RELATIVE_TO_PADDED = {"float32": None, "bfloat16": 2.0, "float16": 2.0}

@dataclass(frozen=True)
class Setting:
    block_rows: int  # 0: the whole workload in one sequence_logprobs call
    max_batch_tokens: int
    max_logit_rows: int
    max_padding: float | None = None  # HFEngine.max_padding: None packs by the budgets alone

    @classmethod
    def parse(cls, text: str) -> Setting:
        block, tokens, rows, *padding = text.split(":")
        return cls(int(block), int(tokens), int(rows), float(padding[0]) if padding else None)


def peak_tflops(device_name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in device_name), None)


def copy_tokenizer(source: str, dest: Path) -> list[str]:
    """Copy only the tokenizer files of a Hugging Face model directory (a few MB) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(source) / name).exists():
            shutil.copy2(Path(source) / name, dest / name)
            copied.append(name)
    return copied


def load_tokenizer(directory: str | None) -> Any:
    from transformers import AutoTokenizer

    if directory is None:
        from sapray.engines.models import resolve_model

        directory = resolve_model("smollm2")
    return AutoTokenizer.from_pretrained(directory)


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def workload(tokenizer: Any, n_questions: int | None, repeat: int) -> list[EncodedRequest]:
    """SAP, PPL and empty-context requests for every candidate, in the pipeline's row order."""
    questions = read_jsonl(DATA / "questions.jsonl")
    candidates = read_jsonl(DATA / "candidates.jsonl")
    human = {c["question_id"]: c["response"] for c in candidates if c["strategy"] == "human"}
    order = [q["question_id"] for q in questions]
    # as tests/conftest.py: question i's exemplars are the next three questions' human answers
    exemplars = {qid: [human[order[(i + k) % len(order)]] for k in range(1, N_EXEMPLARS + 1)]
                 for i, qid in enumerate(order)}
    text = {q["question_id"]: q["question"] for q in questions}
    if n_questions is not None and not 0 < n_questions <= len(order):  # the report would name questions never run
        raise SystemExit(f"--questions {n_questions}: the bundled data has {len(order)} questions")
    keep = set(order[:n_questions])
    layout = Layout("chat")
    requests = []
    for k in range(repeat):
        for c in candidates:
            qid = c["question_id"]
            if qid in keep:
                question = text[qid] if k == 0 else f"({k}) {text[qid]}"
                requests += build_requests(layout, f"{k}/{qid}/{c['strategy']}", question, c["response"],
                                           exemplars[qid], question_id=f"{k}/{qid}")
    slots = encode_all(requests, tokenizer, MAX_LENGTH, layout.boundary)
    rejected = [s for s in slots if not isinstance(s, EncodedRequest)]
    if rejected:
        raise SystemExit(f"{len(rejected)} requests rejected, e.g. {rejected[0].error}")
    return slots


def blocks(requests: list[EncodedRequest], block_rows: int) -> list[list[EncodedRequest]]:
    size = block_rows or len(requests)
    return [requests[i:i + size] for i in range(0, len(requests), size)]


def computed_positions(block: Sequence[EncodedRequest], share: bool) -> list[tuple[int, int]]:
    """(first position, token count) runs the engine computes for one call: a shared context once.

    Mirrors HFEngine.sequence_logprobs: requests with identical context ids share the context when
    sharing is on and there are at least two of them.
    """
    groups: dict[tuple[int, ...], list[EncodedRequest]] = {}
    for r in block:
        groups.setdefault(tuple(r.context_ids), []).append(r)
    runs = []
    for context, members in groups.items():
        if share and len(members) > 1:
            runs.append((0, len(context)))
            runs += [(len(context), len(r.continuation_ids)) for r in members]
        else:
            runs += [(0, len(r.input_ids)) for r in members]
    return runs


@dataclass(frozen=True)
class Shape:
    """What the FLOP count needs of a model."""

    layer_params: int  # N_layers
    n_layers: int
    heads: int
    head_dim: int
    d_model: int
    vocab: int
    total_params: int

    @classmethod
    def of(cls, model: Any) -> Shape:
        c = model.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return cls(
            layer_params=sum(p.numel() for p in model.model.layers.parameters()),
            n_layers=c.num_hidden_layers, heads=c.num_attention_heads, head_dim=head_dim,
            d_model=c.hidden_size, vocab=c.vocab_size,
            total_params=sum(p.numel() for p in model.parameters()),
        )

    def flops(self, runs: Sequence[tuple[int, int]], scored_tokens: int) -> float:
        """Forward FLOPs of the computed token runs plus the LM head rows of the scored tokens (see the docstring)."""
        tokens = sum(n for _, n in runs)
        # keys attended, summed over a run of n tokens from position s: sum_{p=s}^{s+n-1} (p + 1)
        keys = sum(n * (2 * s + n + 1) // 2 for s, n in runs)
        return (2.0 * self.layer_params * tokens + 4.0 * self.n_layers * self.heads * self.head_dim * keys
                + 2.0 * self.d_model * self.vocab * scored_tokens)


def build_model(name: str, tiny: bool, device: str, dtype: torch.dtype, tokenizer: Any, seed: int) -> Any:
    """A Llama of the named shape with random weights, created on ``device`` (nothing is loaded from disk)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    shape = {**SHAPES[name], **(TINY if tiny else {})}
    config = LlamaConfig(**shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, attn_implementation="sdpa")
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


class ForwardCounter:
    """Counts the positions the model's forward passes really run (padding included) and the calls (at the
    decoder, which every path calls: the packed path calls it alone, then the LM head on a few positions)."""

    def __init__(self, model: Any) -> None:
        self.positions = 0
        self.calls = 0
        self.handle = model.get_decoder().register_forward_pre_hook(self._count, with_kwargs=True)

    @torch.compiler.disable  # counted as it happens, also in front of a compiled decoder
    def _count(self, module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.positions += ids.numel()
        self.calls += 1

    def reset(self) -> None:
        self.positions = self.calls = 0


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


PATHS = ("packed", "cached", "unshared")  # the default rows; "flex" too on request (--paths)


def use_path(engine: HFEngine, path: str) -> None:
    """``flex``: packed rows under a FlexAttention BlockMask (its decoder compiled as ``engine.compile`` says)."""
    engine.share_contexts, engine.packed, engine.flex = path != "unshared", path in ("packed", "flex"), path == "flex"


def measure(engine: HFEngine, shape: Shape, counter: ForwardCounter, requests: list[EncodedRequest],
            setting: Setting, path: str, peak: float | None, warm_passes: int = 0) -> dict:
    """One timed pass over the workload (after a warm-up call on the first block, and ``warm_passes`` whole
    passes: a compiled model compiles for the shapes it meets)."""
    use_path(engine, path)
    share = path != "unshared"
    engine.max_batch_tokens = setting.max_batch_tokens
    engine.max_logit_rows = setting.max_logit_rows
    engine.max_padding = setting.max_padding
    calls = blocks(requests, setting.block_rows)
    # warm-up (kernels, allocator): two candidates, so both the shared and the padded path run
    warm_start = time.perf_counter()
    engine.sequence_logprobs(calls[0][:6])
    for _ in range(warm_passes):
        for block in calls:
            engine.sequence_logprobs(block)
    sync(engine.device)
    warm_s = time.perf_counter() - warm_start
    reset_memory(engine.device)
    counter.reset()
    sync(engine.device)
    start = time.perf_counter()
    for block in calls:
        engine.sequence_logprobs(block)
    sync(engine.device)
    seconds = time.perf_counter() - start
    runs = [run for block in calls for run in computed_positions(block, share)]
    scored = sum(len(r.input_ids) for r in requests)
    computed = sum(n for _, n in runs)
    continuation = sum(len(r.continuation_ids) for r in requests)
    tflops = shape.flops(runs, continuation) / seconds / 1e12
    return {
        "path": path, "share_contexts": share, "block_rows": setting.block_rows,
        "max_batch_tokens": setting.max_batch_tokens, "max_logit_rows": setting.max_logit_rows,
        "max_padding": setting.max_padding,
        "requests": len(requests), "engine_calls": len(calls),
        "forward_calls": counter.calls, "scored_tokens": scored, "computed_tokens": computed,
        "padded_tokens": counter.positions, "seconds": seconds, "scored_tokens_per_s": scored / seconds,
        "computed_tokens_per_s": computed / seconds, "tflops": tflops,
        "mfu": tflops / peak if peak else None, "peak_memory_gib": peak_memory_gib(engine.device),
        "warm_s": warm_s, "flex_compiled": engine.compile if path == "flex" else None,
    }


def profile(engine: HFEngine, requests: list[EncodedRequest], setting: Setting, top: int) -> str:
    """Where one pass spends its time: the costliest ops by host time and by device time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if engine.device.startswith("cuda") else [])
    with torch_profile(activities=activities) as prof:
        for block in blocks(requests, setting.block_rows):
            engine.sequence_logprobs(block)
        sync(engine.device)
    table = prof.key_averages()
    device_sort = "self_cuda_time_total" if engine.device.startswith("cuda") else "self_cpu_time_total"
    return "\n".join([table.table(sort_by="self_cpu_time_total", row_limit=top),
                      table.table(sort_by=device_sort, row_limit=top)])


def plain_logprobs(model: Any, request: EncodedRequest) -> tuple[list[float], list[float]]:
    """One sequence, no padding, no mask, full logits: the continuation's log-probs, and the same
    positions scored against the next token instead (a one-token misalignment, to show the check's reach)."""
    ids = torch.tensor([request.input_ids], device=model.device)
    logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    start = len(request.context_ids)
    right = logprobs[start - 1:-1].gather(-1, ids[0, start:, None]).squeeze(-1)
    shifted = logprobs[start - 1:-2].gather(-1, ids[0, start + 1:, None]).squeeze(-1)
    return right.tolist(), shifted.tolist()


def compare(got: Sequence[Sequence[float]], expected: Sequence[Sequence[float]]) -> dict[str, float]:
    """Max |per-token difference| and max relative difference of mean NLL, over requests."""
    max_abs = max((abs(a - b) for g, e in zip(got, expected, strict=True) for a, b in zip(g, e, strict=True)),
                  default=0.0)
    rel = max(abs(nll(g) - nll(e)) / abs(nll(e)) for g, e in zip(got, expected, strict=True))
    return {"max_abs_logprob": max_abs, "max_rel_mean_nll": rel}


# variant: (path, max_padding); "flex" runs the flex path's decoder eager, "flex_compiled" compiled
PARITY_VARIANTS = {"packed": ("packed", None), "flex": ("flex", None), "flex_compiled": ("flex", None),
                   "shared": ("cached", None), "unshared": ("unshared", None), "shared_padding_cap": ("cached", 0.25),
                   "unshared_padding_cap": ("unshared", 0.25)}
DEFAULT_PARITY = tuple(v for v in PARITY_VARIANTS if v != "flex_compiled")


@torch.inference_mode()
def parity(engine: HFEngine, requests: list[EncodedRequest], tolerance: tuple[float, float],
           relative: float | None, variants: Sequence[str] = DEFAULT_PARITY) -> dict:
    """The engine paths ``variants`` (of PARITY_VARIANTS; ``unshared``, the rule's reference, always) against
    plain forwards of the same model.

    The engine runs with large budgets, so its batches have many rows of mixed lengths. With ``relative``
    (low-precision dtypes) the tolerances are that multiple of the padded batch's own deviation, floored
    at ``tolerance``.
    """
    reference, misaligned = zip(*(plain_logprobs(engine.model, r) for r in requests), strict=True)
    result: dict[str, Any] = {"requests": len(requests)}
    engine.max_batch_tokens, engine.max_logit_rows = 32768, 8192
    variants = list(dict.fromkeys(["unshared", *variants]))
    compiled = engine.compile
    for variant in variants:
        path, padding = PARITY_VARIANTS[variant]
        use_path(engine, path)
        engine.max_padding, engine.compile = padding, variant == "flex_compiled"
        result[variant] = compare(engine.sequence_logprobs(requests), reference)
    engine.compile = compiled
    keys = ("max_abs_logprob", "max_rel_mean_nll")
    if relative is None:
        limits = tolerance
    else:
        limits = tuple(max(floor, relative * result["unshared"][key])
                       for floor, key in zip(tolerance, keys, strict=True))
        result["tolerance_rule"] = f"{relative}x the padded batch's (unshared) deviation, at least {tolerance}"
    result["tol_abs_logprob"], result["tol_rel_mean_nll"] = limits
    ok = all(result[v][key] <= limit for v in variants for key, limit in zip(keys, limits, strict=True))
    # A check that cannot tell a one-token misalignment from agreement proves nothing.
    reach = max(abs(a - b) for r, m in zip(reference, misaligned, strict=True) for a, b in zip(r[:-1], m, strict=True))
    result["misaligned_max_abs_logprob"] = reach
    result["sensitive"] = reach > 2 * limits[0]
    result["pass"] = bool(ok and result["sensitive"])
    return result


def generation(engine: HFEngine, requests: list[EncodedRequest], n_prompts: int, max_tokens: int,
               batch_tokens: int) -> dict:
    """Greedy generation from the plain-question (PPL) chat prompts, cycled to ``n_prompts``."""
    contexts = list(dict.fromkeys(tuple(r.context_ids) for r in requests if r.request_id.endswith("/ppl")))
    prompts = [list(contexts[i % len(contexts)]) for i in range(n_prompts)]
    engine.max_batch_tokens = batch_tokens
    sampling = SamplingConfig(temperature=0.0, max_tokens=max_tokens)
    engine.generate(prompts[:1], SamplingConfig(temperature=0.0, max_tokens=2))  # warm-up
    reset_memory(engine.device)
    sync(engine.device)
    start = time.perf_counter()
    out = engine.generate(prompts, sampling)
    sync(engine.device)
    seconds = time.perf_counter() - start
    generated = sum(sum(g.completion_tokens) for g in out)
    return {"prompts": n_prompts, "max_tokens": max_tokens, "max_batch_tokens": batch_tokens,
            "prompts_per_batch": min(n_prompts, max(1, batch_tokens // (max(map(len, prompts)) + max_tokens))),
            "prompt_tokens": sum(map(len, prompts)), "generated_tokens": generated, "seconds": seconds,
            "generated_tokens_per_s": generated / seconds, "peak_memory_gib": peak_memory_gib(engine.device)}


def machine(device: str) -> dict:
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "device": device, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    return info


def print_table(rows: list[dict]) -> None:
    head = (f"{'model':<13} {'path':>8} {'block':>5} {'b.tokens':>8} {'l.rows':>6} {'m.pad':>5} {'scored':>8} "
            f"{'computed':>8} "
            f"{'pad%':>5} {'s':>7} {'scored/s':>9} {'comp/s':>9} {'TFLOP/s':>8} {'MFU':>6} {'mem GiB':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        pad = 100 * (r["padded_tokens"] - r["computed_tokens"]) / r["padded_tokens"]
        mfu = f"{100 * r['mfu']:5.1f}%" if r["mfu"] is not None else "-"
        mem = f"{r['peak_memory_gib']:7.1f}" if r["peak_memory_gib"] is not None else "-"
        print(f"{r['model']:<13} {r['path']:>8} {r['block_rows'] or 'all':>5} "
              f"{r['max_batch_tokens']:>8} {r['max_logit_rows']:>6} {r['max_padding'] or '-':>5} "
              f"{r['scored_tokens']:>8} {r['computed_tokens']:>8} {pad:>5.1f} {r['seconds']:>7.2f} "
              f"{r['scored_tokens_per_s']:>9.0f} {r['computed_tokens_per_s']:>9.0f} {r['tflops']:>8.2f} "
              f"{mfu:>6} {mem:>7}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copy-tokenizer", type=Path, metavar="DIR",
                        help="copy the embedded SmolLM2 tokenizer files into DIR (to carry to a GPU machine) and exit")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer directory (default: the embedded SmolLM2, via sapray.engines.models)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny layers (the real vocabularies), for CPU smoke runs")
    parser.add_argument("--models", default="smollm2-135m,llama3-8b", help=f"comma-separated, of {list(SHAPES)}")
    parser.add_argument("--questions", type=int, default=None, help="the first N of the 20 questions (default 20; "
                        "--tiny: 1)")
    parser.add_argument("--repeat", type=int, default=1, help="repeat the questions this many times")
    parser.add_argument("--settings", default=None,
                        help="comma-separated block_rows:max_batch_tokens:max_logit_rows[:max_padding] "
                             "(block_rows 0: all requests in one call; 36 is jobs/gsm8k.yaml's ray.batch_size; "
                             "max_padding: HFEngine's padding cap, default none; 8192:1024 the engine's CPU "
                             "defaults, 32768:8192 its GPU defaults); "
                             f"default {DEFAULTS['settings']}, --tiny: {TINY_DEFAULTS['settings']}")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, of {list(PATHS)}")
    parser.add_argument("--parity-questions", type=int, default=None,
                        help="questions (x 6 strategies x 3 contexts) in the correctness check (default 2; --tiny: 1)")
    parser.add_argument("--gen-prompts", type=int, default=None, help="default 64; --tiny: 2")
    parser.add_argument("--gen-tokens", type=int, default=None, help="default 128; --tiny: 4")
    parser.add_argument("--gen-batch-tokens", type=int, default=32768,
                        help="generation's max_batch_tokens (prompts per batch = this // (prompt + max tokens))")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the chip's dense peak TFLOP/s in this dtype (default: from the bf16 table by GPU name)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the decoder (dynamic shapes) before measuring: fuses the elementwise ops")
    parser.add_argument("--warm-passes", type=int, default=0,
                        help="whole untimed passes before each timed one (with --compile: its compilations)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after each timed pass, one more under torch.profiler: print its N costliest ops")
    parser.add_argument("--profile-paths", default=",".join(PATHS), help="the paths --profile applies to")
    parser.add_argument("--json", type=Path, default=None, help="write the results here (rewritten after each row)")
    args = parser.parse_args(argv)
    for key, value in (TINY_DEFAULTS if args.tiny else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    if args.copy_tokenizer:
        from sapray.engines.models import resolve_model

        copied = copy_tokenizer(resolve_model("smollm2"), args.copy_tokenizer)
        print(f"copied {', '.join(copied)} to {args.copy_tokenizer}")
        return 0

    device = args.device
    dtype_name = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    dtype = getattr(torch, dtype_name)
    info = machine(device)
    peak = args.peak_tflops
    peak_source = "--peak-tflops" if peak else None
    if peak is None and device.startswith("cuda") and dtype_name == "bfloat16":
        peak = peak_tflops(info["gpu"])
        peak_source = f"dense bf16 table entry for {info['gpu']!r}" if peak else "unknown GPU: no MFU"
    tolerance = TOLERANCES[dtype_name]
    tokenizer = load_tokenizer(args.tokenizer)
    requests = workload(tokenizer, args.questions, args.repeat)
    parity_requests = [r for r in requests if r.request_id.split("/")[0] == "0"][: 18 * args.parity_questions]
    settings = [Setting.parse(s) for s in args.settings.split(",")]
    report: dict[str, Any] = {
        "machine": info, "dtype": dtype_name, "peak_tflops": peak, "peak_source": peak_source,
        "flops_formula": "sum over computed tokens [2*N_layers + 4*L*H*Q*(p+1)] + sum over scored tokens "
                         "[2*d_model*V] (PaLM appendix B forward count, causal, LM head only where needed)",
        "workload": {"questions": args.questions, "repeat": args.repeat, "requests": len(requests),
                     "scored_tokens": sum(len(r.input_ids) for r in requests),
                     "continuation_tokens": sum(len(r.continuation_ids) for r in requests)},
        "tiny": args.tiny, "compile": args.compile, "warm_passes": args.warm_passes,
        "models": {}, "rows": [], "parity": {}, "generation": {},
    }
    print(f"machine: {info}")
    print(f"dtype {dtype_name}; peak {peak} TFLOP/s ({peak_source}); workload {report['workload']}", flush=True)

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    for name in args.models.split(","):
        start = time.perf_counter()
        model = build_model(name, args.tiny, device, dtype, tokenizer, args.seed)
        if args.compile:
            model.get_decoder().compile(dynamic=True)
        sync(device)
        shape = Shape.of(model)
        report["models"][name] = {**shape.__dict__, "build_s": time.perf_counter() - start}
        print(f"\n{name}: {shape.total_params / 1e6:.1f}M parameters ({shape.layer_params / 1e6:.1f}M in the "
              f"layers), built on {device} in {time.perf_counter() - start:.1f} s", flush=True)
        engine = HFEngine.from_model(model, tokenizer)
        counter = ForwardCounter(model)
        for setting in settings:
            for path in args.paths.split(","):
                row = {"model": name, "compiled": args.compile,
                       **measure(engine, shape, counter, requests, setting, path, peak, args.warm_passes)}
                report["rows"].append(row)
                save()
                print_table([row])
                if args.profile and path in args.profile_paths.split(","):
                    print(profile(engine, requests, setting, args.profile), flush=True)
        counter.handle.remove()
        report["parity"][name] = parity(engine, parity_requests, tolerance, RELATIVE_TO_PADDED[dtype_name])
        save()
        print(f"correctness {name}: {json.dumps(report['parity'][name])}", flush=True)
        report["generation"][name] = generation(engine, requests, args.gen_prompts, args.gen_tokens,
                                                args.gen_batch_tokens)
        save()
        print(f"generation {name}: {json.dumps(report['generation'][name])}", flush=True)
        del engine, model, counter
        reset_memory(device)

    print()
    print_table(report["rows"])
    print("\nscored: context + continuation tokens of every request (what vLLM computes); computed: a shared "
          "context once; pad%: padding share of the positions the forwards ran; TFLOP/s and MFU count "
          "useful FLOPs only (see the docstring).")
    failed = [name for name, p in report["parity"].items() if not p["pass"]]
    for name, p in report["parity"].items():
        worst = {key: max(p[v][key] for v in DEFAULT_PARITY) for key in ("max_abs_logprob", "max_rel_mean_nll")}
        print(f"{'PASS' if p['pass'] else 'FAIL'} {name}: worst of {list(DEFAULT_PARITY)} against plain forwards: "
              f"max |logprob diff| {worst['max_abs_logprob']:.3g} (tolerance {p['tol_abs_logprob']}), mean-NLL "
              f"rel. diff {worst['max_rel_mean_nll']:.3g} (tolerance {p['tol_rel_mean_nll']}); a one-token "
              f"misalignment would show {p['misaligned_max_abs_logprob']:.3g}")
    report["pass"] = not failed
    save()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
