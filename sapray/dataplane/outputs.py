"""Write the outputs of a selection (and of a filter) into the output folder.

Output folder (local path or object-store URI):
- ``selection.json``: ranking, per-strategy statistics, win rates, winner, budget, counts,
  exemplar provenance. Deterministic: same config and seed, same bytes (no timings in it).
- ``scores.parquet``: one row per scored candidate with its provenance.
- ``rejects/``: every row left out, with its source (file:row), stage and reason, as JSON lines part
  files: the read pass's, written by the workers, and ``part-scoring.jsonl``, the driver's (rows the
  engine refused, sample generation's rejects).
- ``exemplars.jsonl``: the exemplars used, with whether each passed the answer checker.
- ``run.json``: wall times, where the scoring actors ran (node/actor: requests) and the resolved
  config (not deterministic).

The jobs add ``report.html``, all of the above as one self-contained page (sapray.present.html_report).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from sapray.dataplane.stages import write_folders
from sapray.storage import child, filesystem, write_text


def _jsonl(rows: Sequence[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)


def write_outputs(output: str, result, config: dict, last: Mapping[str, str] | None = None) -> dict[str, str]:
    """The selection's files; then ``last`` (name -> text: a run's sample record), in its order."""
    texts = {"selection.json": json.dumps(result.summary, indent=2, sort_keys=True) + "\n",
             "rejects/part-scoring.jsonl": _jsonl([r.to_dict() for r in result.rejects]),
             "exemplars.jsonl": _jsonl([e.to_dict() for e in result.exemplars]),
             "run.json": json.dumps({"timings": result.timings, "actor_placement": result.placement,
                                     "mining_placement": result.mining_placement,
                                     "engine_starts": result.engine_starts, "config": config}, indent=2) + "\n"}
    table = pa.Table.from_pylist(result.scores) if result.scores else pa.table({})
    # the read pass's rejects, written by the workers (the folder replaced), then the driver's files beside them
    if result.input_rejects is not None:
        write_folders(output, {"rejects": (result.input_rejects, "jsonl")})
    fs, root = filesystem(output)
    fs.create_dir(child(root, "rejects"), recursive=True)
    paths = {name: child(output, name) for name in ("selection.json", "scores.parquet", "rejects",
                                                    "exemplars.jsonl", "run.json")}
    for name, text in texts.items():
        write_text(child(output, name), text)
    pfs, ppath = filesystem(paths["scores.parquet"])
    with pfs.open_output_stream(ppath) as f:
        pq.write_table(table, f)
    for name, text in (last or {}).items():
        write_text(child(output, name), text)
    return paths


def write_filter_outputs(output: str, result) -> dict[str, str]:
    """summary.json beside the folders the filter's workers wrote: kept/ (chat
    ``messages`` plus provenance, JSON lines), scores/ (every sample, kept or with its drop reason,
    Parquet) and rejects/ (JSON lines)."""
    paths = dict(result.paths)
    paths["summary.json"] = child(output, "summary.json")
    write_text(paths["summary.json"], json.dumps(result.summary, indent=2, sort_keys=True) + "\n")
    return paths
