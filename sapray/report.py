"""Write a selection's outputs and show it as a table.

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
- ``report.html``: all of the above as one self-contained page (sapray.html_report).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from sapray.html_report import write_report
from sapray.read import child, filesystem
from sapray.stages import write_jsonl


def _write_text(uri: str, text: str) -> None:
    fs, path = filesystem(uri)
    with fs.open_output_stream(path) as f:
        f.write(text.encode("utf-8"))


def _jsonl(rows: Sequence[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)


def write_outputs(output: str, result, config: dict) -> dict[str, str]:
    fs, root = filesystem(output)
    fs.create_dir(root, recursive=True)
    paths = {name: child(output, name) for name in ("selection.json", "scores.parquet", "rejects",
                                                    "exemplars.jsonl", "run.json")}
    _write_text(paths["selection.json"], json.dumps(result.summary, indent=2, sort_keys=True) + "\n")
    if result.input_rejects is not None:
        write_jsonl(result.input_rejects, paths["rejects"])
    fs.create_dir(child(root, "rejects"), recursive=True)
    _write_text(child(paths["rejects"], "part-scoring.jsonl"), _jsonl([r.to_dict() for r in result.rejects]))
    _write_text(paths["exemplars.jsonl"], _jsonl([e.to_dict() for e in result.exemplars]))
    _write_text(paths["run.json"], json.dumps({"timings": result.timings, "actor_placement": result.placement,
                                                       "config": config}, indent=2) + "\n")
    table = pa.Table.from_pylist(result.scores) if result.scores else pa.table({})
    pfs, ppath = filesystem(paths["scores.parquet"])
    with pfs.open_output_stream(ppath) as f:
        pq.write_table(table, f)
    paths["report.html"] = write_report(output)
    return paths


def _fmt(x, width: int = 8, digits: int = 3) -> str:
    return f"{x:>{width}.{digits}f}" if isinstance(x, float | int) else f"{'-':>{width}}"


def render_table(summary: dict) -> str:
    """The ranking as a fixed-width table, most familiar first."""
    header = (f"{'rank':>4}  {'strategy':<20}{'n':>5}{'mean SAP':>10}{'95% CI':>20}{'median':>9}"
              f"{'PPL':>9}{'IFD':>8}{'length':>8}")
    lines = [header, "-" * len(header)]
    for rank, name in enumerate(summary["ranking"], start=1):
        s = summary["per_strategy"][name]
        lo, hi = s["ci95_mean_sap"]
        ci = f"[{lo:.3f}, {hi:.3f}]" if lo is not None else "-"
        lines.append(f"{rank:>4}  {name:<20}{s['n']:>5}{_fmt(s['mean_sap'], 10)}{ci:>20}{_fmt(s['median_sap'], 9)}"
                     f"{_fmt(s['mean_ppl'], 9)}{_fmt(s['mean_ifd'], 8)}{_fmt(s['mean_length'], 8, 1)}")
    w = summary.get("winner")
    race = summary.get("race")
    if race:
        lines += ["", f"race ({race['stop']}): {race['ended']}: {race['end_reason']}"]
        if race["eliminated"]:
            lines.append("eliminated: " + ", ".join(f"{n} (round {r})" for n, r in race["eliminated"].items()))
    evidence = summary.get("evidence")
    if evidence and not evidence["sufficient"]:
        lines += ["", f"NOT ENOUGH EVIDENCE: {evidence['reason']}"]
    if w:
        lines.append("")
        line = f"{'provisional ' if w.get('provisional') else ''}winner: {w['strategy']} (mean SAP {w['mean_sap']:.3f})"
        if w.get("margin_mean_sap") is not None:
            line += (f", ahead of {w['runner_up']} by {w['margin_mean_sap']:.3f} on their shared questions; "
                     "more familiar on "
                     f"{100 * w['win_rate_vs_runner_up']:.0f}% of paired questions")
        if w.get("bootstrap_p_best") is not None:
            line += f"; best in {100 * w['bootstrap_p_best']:.0f}% of bootstrap resamples"
        lines.append(line)
    return "\n".join(lines)


def write_filter_outputs(output: str, result) -> dict[str, str]:
    """summary.json and report.html beside the folders the filter's workers wrote: kept/ (chat
    ``messages`` plus provenance, JSON lines), scores/ (every sample, kept or with its drop reason,
    Parquet) and rejects/ (JSON lines)."""
    paths = dict(result.paths)
    paths["summary.json"] = child(output, "summary.json")
    _write_text(paths["summary.json"], json.dumps(result.summary, indent=2, sort_keys=True) + "\n")
    paths["report.html"] = write_report(output)
    return paths
