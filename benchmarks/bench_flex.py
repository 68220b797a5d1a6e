"""Issue 41's device check: the flex path (packed rows under a FlexAttention BlockMask) against today's packed
path, in one command of at most 5 minutes, on whatever device there is.

    PYTHONPATH=. python benchmarks/bench_flex.py --tokenizer out/bench_tokenizer --json $OUT/flex.json
    PYTHONPATH=. python benchmarks/bench_flex.py --device cpu --tiny --json /tmp/flex.json   # CPU smoke run

The tokenizer directory comes from ``bench_gpu.py --copy-tokenizer out/bench_tokenizer``. Models, workload,
FLOP count and MFU are bench_gpu.py's (random weights built from each shape's config on the device; the 20
questions' SAP, PPL and IFD requests; useful FLOPs only). Rows, in this order, each written to the JSON as it
finishes; a row that would start after ``--budget-s`` is skipped and listed under "skipped":

1. Llama-3-8B shape, block 36: ``packed`` eager, ``flex`` eager, ``flex`` compiled (each layer compiled; the row
   widths bucketed to at most 8), ``packed`` compiled (the whole decoder, dynamic shapes: the issue's baseline,
   as docs/scaling.md's run 2 compiled it), each with a profiled pass for the GPU's idle share;
2. its parity on 2 questions (bench_gpu.py's rule, ``RELATIVE_TO_PADDED`` in bf16): unshared (the reference),
   packed, flex eager, flex compiled;
3. the flex path compiled at block 144;
4. SmolLM2-135M shape, block 36: ``packed`` and ``flex`` eager, profiled; its parity.

Per row: scored tokens/s, useful TFLOP/s, MFU, padding share, the warm-up (seconds before the timed pass:
first calls, compilation), and the flex path's compiled widths with each one's first-forward seconds
(``HFEngine.warmup_s``). Exit status 1 if a parity check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_gpu  # noqa: E402 (benchmarks/ is not a package)

from sapray.engines.hf import HFEngine  # noqa: E402

# (model, path, block_rows, compiled) in order; "packed" compiled is the whole decoder, "flex" compiled its layers
PLAN: tuple[tuple[str, str, int, bool], ...] = (
    ("llama3-8b", "packed", 36, False), ("llama3-8b", "flex", 36, False), ("llama3-8b", "flex", 36, True),
    ("llama3-8b", "packed", 36, True), ("llama3-8b", "parity", 0, False), ("llama3-8b", "flex", 144, True),
    ("smollm2-135m", "packed", 36, False), ("smollm2-135m", "flex", 36, False), ("smollm2-135m", "parity", 0, False),
)
PARITY = {"llama3-8b": ("packed", "flex", "flex_compiled"), "smollm2-135m": ("packed", "flex")}


def idle_share(engine: HFEngine, calls: Sequence[Sequence[Any]]) -> dict[str, float | None]:
    """One more pass under torch.profiler: the share of its span in which no kernel ran (None off CUDA)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = engine.device.startswith("cuda")
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for block in calls:
            engine.sequence_logprobs(block)
        bench_gpu.sync(engine.device)
    events = prof.events()
    span = max(e.time_range.end for e in events) - min(e.time_range.start for e in events)
    kernels = sorted((e.time_range.start, e.time_range.end) for e in events if e.device_type == DeviceType.CUDA)
    busy, end = 0, None
    for a, b in kernels:  # the union of the kernels' intervals (microseconds)
        start = a if end is None else max(a, end)
        busy += max(0, b - start)
        end = b if end is None else max(end, b)
    return {"profiled_span_s": span / 1e6, "kernel_busy_s": busy / 1e6 if cuda else None,
            "gpu_idle_share": 1 - busy / span if cuda and span else None}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the embedded SmolLM2)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="bench_gpu.py's tiny layers, 1 question: a CPU smoke run")
    parser.add_argument("--budgets", default=None, help="max_batch_tokens:max_logit_rows (default 32768:8192, "
                                                        "the GPU defaults; --tiny: 4096:1024)")
    parser.add_argument("--budget-s", type=float, default=270.0,
                        help="start no row after this many seconds (the device allows 300 s for the command)")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    begin = time.perf_counter()
    tokens, logit_rows = map(int, (args.budgets or ("4096:1024" if args.tiny else "32768:8192")).split(":"))
    device = args.device
    dtype_name = "bfloat16" if device.startswith("cuda") else "float32"
    info = bench_gpu.machine(device)
    peak = bench_gpu.peak_tflops(info["gpu"]) if device.startswith("cuda") else None
    tokenizer = bench_gpu.load_tokenizer(args.tokenizer)
    requests = bench_gpu.workload(tokenizer, 1 if args.tiny else 20, 1)
    parity_requests = requests[:18 * (1 if args.tiny else 2)]
    report: dict[str, Any] = {"machine": info, "dtype": dtype_name, "peak_tflops": peak, "tiny": args.tiny,
                              "max_batch_tokens": tokens, "max_logit_rows": logit_rows,
                              "workload": {"requests": len(requests),
                                           "scored_tokens": sum(len(r.input_ids) for r in requests)},
                              "rows": [], "parity": {}, "skipped": [], "build_s": {}}
    print(f"machine: {info}; peak {peak} TFLOP/s; {report['workload']}", flush=True)

    def save() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    built: dict[str, Any] = {}
    for name, path, block, compiled in PLAN:
        if time.perf_counter() - begin > args.budget_s:
            report["skipped"].append([name, path, block, compiled])
            save()
            continue
        if built.get("name") != name:
            built.clear()
            bench_gpu.reset_memory(device)
            start = time.perf_counter()
            model = bench_gpu.build_model(name, args.tiny, device, getattr(torch, dtype_name), tokenizer, seed=0)
            built.update(name=name, model=model, shape=bench_gpu.Shape.of(model),
                         engine=HFEngine.from_model(model, tokenizer, max_batch_tokens=tokens,
                                                    max_logit_rows=logit_rows, compile=False),
                         counter=bench_gpu.ForwardCounter(model))
            report["build_s"][name] = time.perf_counter() - start
        engine, decoder = built["engine"], built["model"].get_decoder()
        if path == "parity":
            relative = bench_gpu.RELATIVE_TO_PADDED[dtype_name]
            report["parity"][name] = bench_gpu.parity(engine, parity_requests, bench_gpu.TOLERANCES[dtype_name],
                                                      relative, PARITY[name])
            print(f"parity {name}: {json.dumps(report['parity'][name])}", flush=True)
            save()
            continue
        engine.compile = path == "flex" and compiled
        if path == "packed" and compiled:
            decoder.compile(dynamic=True)
        setting = bench_gpu.Setting(block, tokens, logit_rows)
        engine.warmup_s.clear()
        # one whole untimed pass first, so the timed one meets no new shape (FlexAttention compiles per width too)
        row = {"model": name, "compiled": compiled,
               **bench_gpu.measure(engine, built["shape"], built["counter"], requests, setting, path, peak,
                                   warm_passes=1)}
        row["padding_share"] = (row["padded_tokens"] - row["computed_tokens"]) / row["padded_tokens"]
        row["flex_widths_first_forward_s"] = dict(engine.warmup_s) if path == "flex" else None
        if block == 36:
            row.update(idle_share(engine, bench_gpu.blocks(requests, block)))
        if path == "packed" and compiled:
            decoder._compiled_call_impl = None  # back to eager (what nn.Module.compile set)
        report["rows"].append(row)
        save()
        bench_gpu.print_table([row])
        print(f"  warm-up {row['warm_s']:.1f} s; GPU idle {row.get('gpu_idle_share')}; "
              f"flex widths {row['flex_widths_first_forward_s']}", flush=True)
    report["pass"] = all(p["pass"] for p in report["parity"].values())
    report["total_s"] = time.perf_counter() - begin
    save()
    print(f"{'PASS' if report['pass'] else 'FAIL'}: parity {', '.join(report['parity'])}; "
          f"skipped {report['skipped']}; {report['total_s']:.0f} s", flush=True)
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
