"""Teacher generation throughput: one prompt at a time against sapray's batched hf and vllm engines.

Greedy answers to GSM8K questions (the chat template, `{question}` as the user message), the same
token-id prompts for every engine. Prints per engine: prompts, generated tokens, seconds, generated
tokens/s, the speed ratio against the baseline measured in the same run, and how many answers are
token-identical to the baseline's (greedy decoding in float32; a few differ where two tokens' logits
are within rounding of each other).

    PYTHONPATH=. python benchmarks/bench_generate.py                     # 20 questions, 128 new tokens
    PYTHONPATH=. python benchmarks/bench_generate.py --data ../shared/data/gsm8k --questions 100
    PYTHONPATH=. python benchmarks/bench_generate.py --threads 1 --max-tokens 192 --engines hf,vllm --start

``--threads 1 --engines hf`` measures what one CPU core of an hf actor does (as ``sapray plan`` assumes:
an actor computes with one thread per CPU it reserves). Beside generated tokens/s it prints answer
slots/s (prompts x max_tokens / seconds): the hf engine generates in static batches that run until their
longest answer ends, so its time follows the slots more than the tokens. ``--start`` also times each
engine's cold start in a fresh process, built as sapray's engine actors build it (imports and model load,
what an engine actor's start costs beside Ray's own worker start), which ``sapray plan`` adds to its time
estimates. The vllm engine here is built in this process beside the others, so it runs in vLLM's own
processes; sapray's actors run it in theirs, faster on CPUs: benchmarks/bench_vllm_start.py.

Baseline: Hugging Face ``model.generate`` on one prompt at a time (no padding, no batching).
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import time
from pathlib import Path

from bench_scoring import load_data, machine, timed  # the sibling script (this folder is on sys.path)


def one_at_a_time(model, prompts: list[list[int]], max_tokens: int, eos: int) -> list[list[int]]:
    import torch

    out = []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p])
            seq = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                 do_sample=False, temperature=None, top_p=None, top_k=None,
                                 pad_token_id=eos)[0, len(p):].tolist()
            out.append(seq[:seq.index(eos)] if eos in seq else seq)
    return out


COLD_START = """
import sys, time
start = time.perf_counter()
from sapray.engines import load_engine
engine = load_engine(sys.argv[1], sys.argv[2], own_process=True, **({"device": "cpu"} if sys.argv[1] == "hf" else {}))
print(f"loaded in {time.perf_counter() - start:.2f} s")
"""


def cold_start(engine: str, path: str) -> None:
    """Print the seconds from a fresh interpreter to a loaded engine (imports included), in a process of its own."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", COLD_START, engine, path], capture_output=True, text=True,
                          check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    loaded = next(line for line in done.stdout.splitlines() if line.startswith("loaded in "))
    print(f"  {engine} cold start: {loaded}, imports included ({time.perf_counter() - start:.1f} s with the "
          "interpreter's own start)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="openai/grade-school-math directory")
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--engines", default="baseline,hf,vllm", help="comma-separated, of baseline, hf, vllm")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--start", action="store_true", help="also time each engine's cold start in a fresh process")
    args = parser.parse_args()
    engines = args.engines.split(",")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    from sapray.core.exemplars import zero_shot_prompts
    from sapray.engines import load_engine
    from sapray.engines.base import SamplingConfig
    from sapray.engines.models import resolve_model

    print(f"machine: {machine()}")
    print(f"load average at start: {os.getloadavg()}")
    path = resolve_model(args.model)
    questions, _ = load_data(args.data, args.questions)
    hf = load_engine("hf", path, device="cpu" if not torch.cuda.is_available() else None)
    tok = hf.tokenizer
    prompts = zero_shot_prompts(tok, [q["question"] for q in questions])
    sampling = SamplingConfig(temperature=0.0, max_tokens=args.max_tokens)
    print(f"data: {len(prompts)} prompts, {sum(map(len, prompts))} prompt tokens, up to {args.max_tokens} new tokens")
    if args.start:
        for name in (e for e in engines if e in ("hf", "vllm")):
            cold_start(name, path)

    def ids_of(generations) -> list[list[int]]:
        return [tok(g.texts[0], add_special_tokens=False)["input_ids"] for g in generations]

    rows = []  # (engine, generated tokens, seconds, outputs as token ids)
    if "baseline" in engines:
        ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(hf.device).eval()
        one_at_a_time(ref, prompts[:1], 4, tok.eos_token_id)  # warm-up
        raw, secs = timed(one_at_a_time, ref, prompts, args.max_tokens, tok.eos_token_id)
        # decode-then-encode, as for the engines, so "identical" compares like with like
        base = [tok(tok.decode(s, skip_special_tokens=True), add_special_tokens=False)["input_ids"] for s in raw]
        rows.append(("HF generate, one prompt at a time", sum(map(len, raw)), secs, base))
        print(f"  one at a time: {secs:.1f} s", flush=True)
        del ref
        gc.collect()

    if "hf" in engines:
        hf.generate(prompts[:1], SamplingConfig(max_tokens=4))
        gens, secs = timed(hf.generate, prompts, sampling)
        rows.append((f"hf engine (batched, max_batch_tokens={hf.max_batch_tokens})",
                     sum(sum(g.completion_tokens) for g in gens), secs, ids_of(gens)))
        print(f"  hf engine: {secs:.1f} s", flush=True)
    del hf
    gc.collect()

    if "vllm" in engines:
        vllm, load_s = timed(load_engine, "vllm", path)
        print(f"  vllm engine loaded in {load_s:.1f} s", flush=True)
        vllm.generate(prompts[:1], SamplingConfig(max_tokens=4))
        gens, secs = timed(vllm.generate, prompts, sampling)
        rows.append(("vllm engine", sum(sum(g.completion_tokens) for g in gens), secs, ids_of(gens)))
        print(f"  vllm engine: {secs:.1f} s", flush=True)
        core = getattr(vllm.llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()

    base_rate, base_out = (rows[0][1] / rows[0][2], rows[0][3]) if "baseline" in engines else (None, None)
    slots = len(prompts) * args.max_tokens
    print(f"\ntorch threads: {torch.get_num_threads()}; answer slots (prompts x max_tokens): {slots}")
    print("| engine | generated tokens | seconds | tokens/s | answer slots/s | ratio (tokens/s) | "
          "answers identical to baseline |")
    print("|---|---|---|---|---|---|---|")
    for name, n_tokens, secs, outs in rows:
        ratio = f"{n_tokens / secs / base_rate:.2f}x" if base_rate else "-"
        same = f"{sum(a == b for a, b in zip(outs, base_out, strict=True))}/{len(base_out)}" if base_out else "-"
        print(f"| {name} | {n_tokens} | {secs:.1f} | {n_tokens / secs:.0f} | {slots / secs:.0f} | {ratio} | {same} |")


if __name__ == "__main__":
    main()
