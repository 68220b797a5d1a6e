"""Scoring throughput: the authors' one-at-a-time loop against sapray's hf and vllm engines, each path.

Scores every GSM8K candidate with the SAP context and the plain-question (PPL) context in the chat
layout (2 requests per candidate) and prints, per engine: requests, scored tokens (context +
continuation tokens processed), seconds, tokens/s, the speed ratio against the baseline measured in
the same run, and the largest relative difference of exp(NLL) from the baseline. Engine paths:
hf ``cached`` (a shared context runs once, continuations on copies of its KV cache), ``packed`` (one
forward per batch of packed rows with a 4D mask) and ``flex`` (packed rows without padding under a
FlexAttention BlockMask), side by side, the engine's default on this device marked; vllm without and with
its prefix cache for shared contexts (``VLLMEngine.reads_prefix_cache``).

    PYTHONPATH=. python benchmarks/bench_scoring.py                       # tests/data/gsm8k_first20
    PYTHONPATH=. python benchmarks/bench_scoring.py --data ../shared/data/gsm8k --questions 50
    PYTHONPATH=. python benchmarks/bench_scoring.py --batch-tokens 2048,4096,8192,16384 --no-vllm
    PYTHONPATH=. python benchmarks/bench_scoring.py --rank-overhead --no-vllm --no-baseline --repeats 5

``--rank-overhead`` also times each hf path without the clipped-rank count that the rank-surprisal ratios
(``rsr``, ``sa_rsr``) read (the engine's ``token_scores`` swapped for a log-prob-only twin, the
computation before ranks were added), interleaved with the full one in every repeat: what turning the ratios
on costs, since they need no forward of their own where PPL and SAP are scored.

Baseline ("authors"): Hugging Face transformers, one example at a time, float32, full logits, labels
with the context positions set to -100, the model's mean loss. All engines get the same token ids
(encoded once by sapray.core.scoring).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT / "tests" / "data" / "gsm8k_first20"
MAX_LENGTH = 2048  # the vllm engine's default max_model_len; every engine gets the same encoding
N_EXEMPLARS = 3
HF_PATHS = ("cached", "packed", "flex")


def use_path(engine, way: str) -> None:
    """Put the hf engine on one of HF_PATHS (shared contexts on)."""
    engine.packed, engine.flex = way in ("packed", "flex"), way == "flex"


def path_of(engine) -> str:
    return ("flex" if engine.flex else "packed") if engine.packed else "cached"


def machine() -> str:
    import torch

    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or cpu
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{cpu}, nproc {os.cpu_count()}, torch {torch.__version__} ({torch.get_num_threads()} threads){gpu}, "
            f"python {platform.python_version()}")


def load_data(data: Path | None, n_questions: int | None) -> tuple[list[dict], list[dict]]:
    if data is None:
        def read(name: str) -> list[dict]:
            with (DEFAULT_DATA / name).open(encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]

        questions, candidates = read("questions.jsonl"), read("candidates.jsonl")
    else:
        from sapray.dataplane.gsm8k import load_six_strategies

        questions, candidates = load_six_strategies(data)
    if n_questions is not None:
        if not 0 < n_questions <= len(questions):  # else a smaller run than asked would be printed as if whole
            more = " (--data DIR for more)" if data is None else ""
            raise SystemExit(f"--questions {n_questions}: the data has {len(questions)} questions{more}")
        questions = questions[:n_questions]
        keep = {q["question_id"] for q in questions}
        candidates = [c for c in candidates if c["question_id"] in keep]
    return questions, candidates


def build(questions: list[dict], candidates: list[dict]):
    """SAP and PPL requests (chat layout) for every candidate; exemplars = next 3 questions' human answers."""
    from sapray.core.contexts import Layout, build_requests

    human = {c["question_id"]: c["response"] for c in candidates if c["strategy"] == "human"}
    order = [q["question_id"] for q in questions]
    text = {q["question_id"]: q["question"] for q in questions}
    exemplars = {
        qid: [human[order[(i + k) % len(order)]] for k in range(1, N_EXEMPLARS + 1)] for i, qid in enumerate(order)
    }
    layout = Layout("chat")
    requests = []
    for k, c in enumerate(candidates):
        qid = c["question_id"]
        requests += build_requests(layout, f"{qid}/{c['strategy']}/{k}", text[qid], c["response"], exemplars[qid],
                                   kinds=("sap", "ppl"), question_id=qid)
    return requests, layout


def authors_loop(model, encoded) -> list[list[float] | float]:
    """The baseline: one example at a time, full logits, -100 labels, mean loss. Returns the NLL per request."""
    import torch

    out = []
    with torch.no_grad():
        for enc in encoded:
            ids = torch.tensor([enc.input_ids])
            labels = ids.clone()
            labels[:, : len(enc.context_ids)] = -100
            out.append(model(input_ids=ids, labels=labels).loss.item())
    return out


def timed(fn, *args, repeats: int = 1, **kwargs):
    """The value of ``fn`` and its fastest wall time over ``repeats`` runs (the machine may be shared)."""
    best = math.inf
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        value = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return value, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="openai/grade-school-math directory (e.g. ../shared/data/gsm8k); default: the "
                             "20-question test subset")
    parser.add_argument("--questions", type=int, default=None, help="use the first N questions")
    parser.add_argument("--model", default="smollm2", help="'smollm2' or a local Hugging Face directory")
    parser.add_argument("--batch-tokens", default="8192",
                        help="comma-separated max_batch_tokens values to try for the hf engine")
    parser.add_argument("--no-vllm", action="store_true", help="skip the vllm engine")
    parser.add_argument("--hf-paths", default=",".join(HF_PATHS), help=f"comma-separated hf paths, of {HF_PATHS}")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time each engine this many times and keep the fastest (for a shared machine)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the authors' loop (no ratio column then)")
    parser.add_argument("--rank-overhead", action="store_true",
                        help="also time each hf path without the clipped-rank count (what rsr / sa_rsr cost)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own); 1 is what an hf actor with one CPU computes with")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    from sapray.core.metrics import nll
    from sapray.core.scoring import EncodedRequest, encode_all
    from sapray.engines import hf as hf_module
    from sapray.engines.hf import HFEngine
    from sapray.engines.models import resolve_model

    with_ranks = hf_module.token_scores

    def logprobs_only(logits: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The computation before ranks: log_softmax and gather alone (ranks left 0)."""
        picked = torch.log_softmax(logits[rows].float(), dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
        return torch.stack((picked, torch.zeros_like(picked)))

    print(f"machine: {machine()}")
    print(f"timing: fastest of {args.repeats} run(s) per engine, after a one-request warm-up")
    print(f"load average at start: {os.getloadavg()}")
    path = resolve_model(args.model)
    questions, candidates = load_data(args.data, args.questions)
    requests, layout = build(questions, candidates)

    hf = HFEngine(path, device="cpu" if not torch.cuda.is_available() else None)
    slots, enc_s = timed(encode_all, requests, hf.tokenizer, MAX_LENGTH, layout.boundary)
    encoded = [e for e in slots if isinstance(e, EncodedRequest)]
    rejected = [e for e in slots if not isinstance(e, EncodedRequest)]
    tokens = sum(len(e.input_ids) for e in encoded)
    cont_tokens = sum(len(e.continuation_ids) for e in encoded)
    print(f"data: {len(questions)} questions, {len(candidates)} candidates, {len(requests)} requests "
          f"({len(rejected)} rejected), {tokens} tokens ({cont_tokens} continuation), encoded in {enc_s:.2f} s")

    rows = []  # (engine, requests, tokens, seconds, nlls)

    # warm-up: one short request per engine, outside the timings
    warm = sorted(encoded, key=lambda e: len(e.input_ids))[:1]

    if not args.no_baseline:
        ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(hf.device).eval()
        authors_loop(ref, warm)
        nlls, secs = timed(authors_loop, ref, encoded, repeats=args.repeats)
        rows.append(("authors (HF, 1 at a time, full logits)", len(encoded), tokens, secs, nlls))
        print(f"  authors loop: {secs:.1f} s", flush=True)
        del ref
        gc.collect()

    budgets = [int(b) for b in args.batch_tokens.split(",")]
    counts = [True, False] if args.rank_overhead else [True]
    variants = [(way, budget, ranks) for way in args.hf_paths.split(",") for budget in budgets for ranks in counts]
    default_path = path_of(hf)
    longest = sorted(encoded, key=lambda e: len(e.input_ids))[-1:]
    for way in args.hf_paths.split(","):
        use_path(hf, way)
        # the flex path compiles FlexAttention for the first row width and again, for any width, at the second
        start = time.perf_counter()
        hf.sequence_logprobs(warm)
        hf.sequence_logprobs(longest)
        print(f"  hf {way} warm-up: {time.perf_counter() - start:.1f} s", flush=True)
    best = dict.fromkeys(variants, math.inf)
    best_cpu = dict.fromkeys(variants, math.inf)  # process CPU seconds: what a busy shared machine leaves intact
    nlls_by_variant: dict[tuple[str, int, bool], list[float]] = {}
    # rounds interleave the variants, so a burst of load from elsewhere does not land on one of them only
    for _ in range(args.repeats):
        for way, budget, ranks in variants:
            use_path(hf, way)
            hf.max_batch_tokens = budget
            hf_module.token_scores = with_ranks if ranks else logprobs_only
            cpu = time.process_time()
            lps, secs = timed(hf.sequence_logprobs, encoded)
            cpu = time.process_time() - cpu
            best[way, budget, ranks] = min(best[way, budget, ranks], secs)
            best_cpu[way, budget, ranks] = min(best_cpu[way, budget, ranks], cpu)
            nlls_by_variant[way, budget, ranks] = [nll(x) for x in lps]
            print(f"  hf {way} max_batch_tokens={budget}{'' if ranks else ' without ranks'}: {secs:.1f} s "
                  f"({cpu:.1f} s CPU)", flush=True)
    hf_module.token_scores = with_ranks
    for way, budget, ranks in variants:
        mark = ", the default" if way == default_path else ""
        rows.append((f"hf {way} (max_batch_tokens={budget}{mark}){'' if ranks else ', no ranks'}", len(encoded),
                     tokens, best[way, budget, ranks], nlls_by_variant[way, budget, ranks]))
    if args.rank_overhead:
        for way in args.hf_paths.split(","):
            for budget in budgets:
                print(f"  ranks cost hf {way} max_batch_tokens={budget}: "
                      f"{best[way, budget, True] / best[way, budget, False] - 1:+.1%} wall time, "
                      f"{best_cpu[way, budget, True] / best_cpu[way, budget, False] - 1:+.1%} CPU time "
                      "(fastest of the repeats, against the same path without them)")
    del hf
    gc.collect()

    if not args.no_vllm:
        try:
            from sapray.engines import load_engine

            (vllm, load_s) = timed(load_engine, "vllm", path)
        except ImportError as exc:
            print(f"  vllm skipped: {exc}")
        else:
            print(f"  vllm engine loaded in {load_s:.1f} s", flush=True)
            vllm.sequence_logprobs(warm)
            caches = [False, True] if vllm.reads_prefix_cache else [False]
            best_v = dict.fromkeys(caches, math.inf)
            nlls_v: dict[bool, list[float]] = {}
            for _ in range(args.repeats):
                for cache in caches:
                    vllm.reads_prefix_cache = cache
                    lps, secs = timed(vllm.sequence_logprobs, encoded)
                    best_v[cache] = min(best_v[cache], secs)
                    nlls_v[cache] = [nll(x) for x in lps]
                    print(f"  vllm {'with' if cache else 'without'} prefix cache: {secs:.1f} s", flush=True)
            for cache in caches:
                rows.append((f"vllm ({'with' if cache else 'without'} prefix cache)", len(encoded), tokens,
                             best_v[cache], nlls_v[cache]))
            print(f"  vllm requests scored again (the cache reached a continuation): {vllm.recomputed}")
            core = getattr(getattr(vllm.llm, "llm_engine", None), "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            del vllm
            gc.collect()

    base = rows[0] if not args.no_baseline else None
    header = f"{'engine':<52} {'requests':>8} {'tokens':>9} {'seconds':>9} {'tokens/s':>9} {'ratio':>7} {'max rel':>9}"
    print()
    print(header)
    print("-" * len(header))
    for name, n, tok, secs, nlls in rows:
        ratio = f"{base[3] / secs:6.2f}x" if base else "-"
        if base:
            rel = max(abs(math.exp(a) - math.exp(b)) / math.exp(b) for a, b in zip(nlls, base[4], strict=True))
            rel_s = f"{rel:9.1e}"
        else:
            rel_s = "-"
        print(f"{name:<52} {n:>8} {tok:>9} {secs:>9.1f} {tok / secs:>9.0f} {ratio:>7} {rel_s:>9}")
    print("\n'tokens': context + continuation tokens processed; 'ratio': baseline seconds / engine seconds.")
    print("'max rel': largest relative difference of per-request exp(NLL) from the baseline.")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
