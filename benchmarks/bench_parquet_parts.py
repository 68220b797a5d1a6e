"""Writing scored rows as Parquet part files: Ray Data's ``write_parquet`` (Arrow's threaded dataset writer, which
may write a block's record batches out of order) against sapray's part-file datasink (``stages.write_folders``),
side by side in one run, over the same materialized rows: blocks of ``stages.SUMMARY_BLOCK_ROWS`` rows, each a
table of 32-row engine batches, as a filter's scores/ are. Each writer writes the rows ``--repeats`` times,
alternating; the median seconds of each, their ratio, and how many of each writer's files hold their rows out of
order.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_parquet_parts.py --rows 1000000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

ENGINE_BATCH_ROWS = 32


def scored_block(first: int, rows: int):
    """A scored block as the filter bundles it: one table of engine-batch chunks (order, source, three scores, a
    reason, the keep flag)."""
    import numpy as np
    import pyarrow as pa

    def batch(start: int, n: int) -> pa.Table:
        order = np.arange(start, start + n)
        return pa.table({"order": order, "source": [f"/data/train.jsonl:{k + 1}" for k in order],
                         "ifd": order * 1e-6, "ppl_response": order * 2e-6, "ppl_conditioned": order * 3e-6,
                         "reason": ["" if k % 2 else "below the keep cut" for k in order], "kept": order % 2 == 1})

    return pa.concat_tables([batch(s, min(ENGINE_BATCH_ROWS, first + rows - s))
                             for s in range(first, first + rows, ENGINE_BATCH_ROWS)])


def out_of_order(folder: Path) -> int:
    import pyarrow.parquet as pq

    files = 0
    for part in folder.iterdir():
        order = pq.read_table(part, columns=["order"]).column("order").to_numpy()
        files += bool((order[1:] < order[:-1]).any())
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import ray

    from sapray.config import RayConfig
    from sapray.dataplane import stages
    from sapray.dataplane.raydata import init_ray

    init_ray(RayConfig())
    ray.data.DataContext.get_current().enable_progress_bars = False
    block = stages.SUMMARY_BLOCK_ROWS
    rows = ray.data.from_arrow([scored_block(s, min(block, args.rows - s)) for s in range(0, args.rows, block)])
    rows = rows.materialize()

    def ray_writer(folder: str) -> None:
        rows.write_parquet(folder, row_group_size=stages.PARQUET_ROW_GROUP_ROWS)

    def sapray_writer(folder: str) -> None:
        stages.write_folders(str(Path(folder).parent), {Path(folder).name: (rows, "parquet")})

    writers = {"ray write_parquet": ray_writer, "sapray write_folders": sapray_writer}
    seconds: dict[str, list[float]] = {name: [] for name in writers}
    misordered = dict.fromkeys(writers, 0)
    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.repeats):
            for k, (name, write) in enumerate(writers.items()):
                folder = Path(tmp) / f"w{k}-{n}"
                start = time.perf_counter()
                write(str(folder))
                seconds[name].append(time.perf_counter() - start)
                misordered[name] += out_of_order(folder)
                files[name] = len(list(folder.iterdir()))
    result = {"date": str(date.today()), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "rows": args.rows, "repeats": args.repeats, "block_rows": block, "engine_batch_rows": ENGINE_BATCH_ROWS,
              "writers": {name: {"median_s": statistics.median(s), "seconds": s, "files_per_write": files[name],
                                 "files_out_of_order": misordered[name]} for name, s in seconds.items()}}
    ray_s, sapray_s = (statistics.median(s) for s in seconds.values())
    result["sapray_over_ray"] = sapray_s / ray_s
    for name, r in result["writers"].items():
        print(f"{name:22s} median {r['median_s']:.2f} s over {args.repeats} writes of {args.rows:,} rows "
              f"({r['files_per_write']} files each); files out of order: {r['files_out_of_order']}")
    print(f"sapray / ray: {result['sapray_over_ray']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
