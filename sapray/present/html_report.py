"""report.html: a self-contained page for a selection or a filter, built from its output folder alone.

Everything comes from the files a run wrote (selection.json, scores.parquet, the rejects/ part
files, exemplars.jsonl, run.json and, for ``sapray run``, sample_generation_cost.jsonl and the
training set's metadata.json; for a filter, summary.json and the scores/ part files), so ``sapray
report RUN_DIR`` rebuilds the same bytes later, locally or from an object store. A validation.json in the folder
(``sapray validate --json``) adds its section. The page has no scripts and loads nothing: figures
are matplotlib SVG inlined with text kept as text, styles are inline, and a Content-Security-Policy
forbids any fetch.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from html import escape
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sapray.core.race import race_label
from sapray.core.reduce import RANK_KEYS
from sapray.present.tables import actionable_line, gap_label, margin_words
from sapray.storage import child, filesystem, read_text

ACCENT = "#c2410c"
MUTED = "#94a3b8"
# the keep criterion of each filter method: (score column, True when low scores are kept)
MAX_DOTS = 400  # per strategy, in the per-question figure
FILTER_SCORE = {"dsweight": ("shift", True), "lobass": ("learnability", False), "ifd": ("ifd", None),
                "rsr": ("rsr", True), "consistency": ("agreement", None)}

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1e293b;
 background:#f8fafc;margin:0;line-height:1.45}
main{max-width:1080px;margin:0 auto;padding:24px 28px 60px;background:#fff;min-height:100vh;
 box-shadow:0 0 0 1px #e2e8f0}
h1{font-size:1.6rem;margin:.2em 0 .1em}h2{font-size:1.2rem;margin:2em 0 .5em;padding-bottom:.25em;
 border-bottom:2px solid #e2e8f0}h3{font-size:1rem;margin:1.3em 0 .4em}
.sub{color:#64748b;margin:0 0 1em}.summary{font-size:1.05rem;background:#fff7ed;border-left:4px solid #c2410c;
 padding:10px 14px;margin:14px 0}.caution{background:#fef9c3;border-left:4px solid #ca8a04;padding:10px 14px;
 margin:10px 0}.ok{background:#ecfdf5;border-left:4px solid #059669;padding:10px 14px;margin:10px 0}
nav{font-size:.9rem;margin:8px 0 0}nav a{color:#334155;margin-right:14px;text-decoration:none;
 border-bottom:1px dotted #94a3b8}
table{border-collapse:collapse;margin:6px 0 12px;font-size:.88rem}
th,td{padding:4px 10px;text-align:left;border-bottom:1px solid #e2e8f0;vertical-align:top}
th{background:#f1f5f9;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr.win td{background:#fff7ed;font-weight:600}tr.out td{color:#94a3b8}
.badge{display:inline-block;padding:0 7px;border-radius:9px;font-size:.78rem;font-weight:600}
.b-win{background:#c2410c;color:#fff}.b-out{background:#e2e8f0;color:#475569}.b-ok{background:#d1fae5;color:#065f46}
.b-warn{background:#fef3c7;color:#92400e}.b-bad{background:#fee2e2;color:#991b1b}
figure{margin:10px 0 18px}figure svg{max-width:100%;height:auto}figcaption{font-size:.85rem;color:#475569}
pre{background:#f1f5f9;padding:10px;overflow:auto;font-size:.8rem;max-height:480px}
details summary{cursor:pointer;color:#334155}.muted{color:#64748b}code{font-size:.88em}
"""


class ReportError(ValueError):
    """A folder that holds no run outputs to report on."""


# ---------- reading a run folder ----------

def _text(uri: str) -> str | None:
    try:
        return read_text(uri)
    except (FileNotFoundError, OSError):
        return None


def _json(uri: str) -> Any:
    text = _text(uri)
    try:
        return None if text is None else json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{uri}: not valid JSON ({exc})") from None


def _jsonl(uri: str) -> list[dict] | None:
    """The rows of a JSON lines file; None without the file (an empty file has no rows)."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    return list(_jsonl_stream([uri]))


def _parquet(uri: str) -> list[dict] | None:
    """The rows of a Parquet file."""
    fs, path = filesystem(uri)
    try:
        with fs.open_input_file(path) as f:
            return pq.ParquetFile(f).read().to_pylist()
    except (FileNotFoundError, OSError):
        return None


def _part_names(folder: str, ext: str) -> list[str] | None:
    """The part files of a folder (the workers write them), in part order; None without the folder."""
    fs, path = filesystem(folder)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path))
    except (FileNotFoundError, OSError):
        return None
    return [child(folder, name) for name in sorted(i.base_name for i in infos if i.base_name.endswith(ext))]


def _opened(uris: list[str], random_access: bool = False) -> Iterator[tuple[str, Any]]:
    """Each file of ``uris`` that opens, with its open stream (a random-access file for Parquet); the others
    skipped."""
    for uri in uris:
        fs, path = filesystem(uri)
        try:
            handle = fs.open_input_file(path) if random_access else fs.open_input_stream(path)
        except (FileNotFoundError, OSError):
            continue
        with handle:
            yield uri, handle


def _jsonl_stream(uris: list[str]) -> Iterator[dict]:
    """The rows of JSON lines files one at a time, so that a million rejects are never all in memory."""
    for uri, stream in _opened(uris):
        with io.TextIOWrapper(stream, encoding="utf-8") as lines:
            for n, line in enumerate(lines, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ReportError(f"{uri}:{n}: not valid JSON lines ({exc})") from None


def _reject_groups(folder: str) -> list[ReasonGroup]:
    """The run's rejects grouped by stage and reason, read part by part (one file before the read pass
    ran in the cluster)."""
    parts = _part_names(child(folder, "rejects"), ".jsonl") or [child(folder, "rejects.jsonl")]
    return _group_reasons((r.get("stage", ""), r.get("reason", ""), r.get("source", ""))
                          for r in _jsonl_stream(parts))


def load_run(folder: str) -> dict:
    """Every file a report may use, None where absent; ``kind`` is selection or filter."""
    run: dict[str, Any] = {"selection": _json(child(folder, "selection.json"))}
    if run["selection"] is not None:
        run["kind"] = "selection"
        for name in ("exemplars", "sample_generation_cost"):
            run[name] = _jsonl(child(folder, f"{name}.jsonl"))
        run["run"] = _json(child(folder, "run.json")) or {}
        config = run["run"].get("config") or {}
        # only `sapray run` generates a training set; a plain select's default generate.output means nothing
        output = (config.get("generate") or {}).get("output")
        is_run = run["sample_generation_cost"] is not None or config.get("strategies")
        run["training"] = _json(child(output, "metadata.json")) if is_run and output else None
    else:
        run["summary"] = _json(child(folder, "summary.json"))
        if run["summary"] is None:
            raise ReportError(f"{folder}: no selection.json or summary.json to report on")
        run["kind"] = "filter"
        # part files since filters run in the cluster, a single file before: read column by column, file by file
        # when the page is drawn, so a filter over a million samples never has them all in memory
        run["score_files"] = _part_names(child(folder, "scores"), ".parquet") or [child(folder, "scores.parquet")]
    run["reject_groups"] = _reject_groups(folder)
    if run["kind"] == "selection":
        run["scores"] = _parquet(child(folder, "scores.parquet")) or []
    run["validation"] = _json(child(folder, "validation.json"))
    return run


# ---------- small formatting helpers ----------

def _num(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x if round(x, digits) else 0.0:,.{digits}f}"  # no "-0.000" from rounding noise
    return escape(str(x))


def _seconds(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.1f} s" if x < 120 else f"{x / 60:.1f} min"


def _money(x: float | None) -> str:
    return "not priced" if x is None else f"${x:,.4f}"


def _table(header: list[str], rows: list[list[str]], numeric: Collection[int] = (),
           row_class: list[str] | None = None) -> str:
    """An HTML table from already-escaped cells; ``numeric`` columns are right-aligned."""
    head = "".join(f'<th class="n">{h}</th>' if i in numeric else f"<th>{h}</th>" for i, h in enumerate(header))
    body = []
    for k, row in enumerate(rows):
        cls = f' class="{row_class[k]}"' if row_class and row_class[k] else ""
        cells = "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _facts(rows: list[tuple[str, str]]) -> str:
    """A two-column table of labelled, already-escaped values, without a header."""
    body = "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table><tbody>{body}</tbody></table>"


def _badge(text: str, kind: str) -> str:
    return f'<span class="badge b-{kind}">{escape(text)}</span>'


def _reason_pattern(reason: str) -> str:
    """Group reasons that differ only in their numbers ('shift 1.23 outside ...')."""
    return re.sub(r"\d+(?:\.\d+)?", "#", reason)


class ReasonGroup(NamedTuple):
    stage: str
    pattern: str
    rows: int
    reason: str  # the first row's reason and source, as an example
    source: str


def _group_reasons(items: Iterable[tuple[str, str, str]]) -> list[ReasonGroup]:
    """(stage, reason, source) -> one group per (stage, reason pattern), the most rows first."""
    counts: Counter = Counter()
    example = {}
    for stage, reason, source in items:
        key = (stage, _reason_pattern(reason))
        counts[key] += 1
        example.setdefault(key, (reason, source))
    return [ReasonGroup(stage, pattern, n, *example[stage, pattern])
            for (stage, pattern), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def _reasons_table(groups: list[ReasonGroup], stages: bool = True) -> str:
    """Counts per (stage, reason pattern) with one example each."""
    if not groups:
        return '<p class="muted">None.</p>'
    rows = [[escape(g.stage), escape(g.pattern), str(g.rows),
             f'{escape(g.reason)}<br><span class="muted">{escape(g.source)}</span>'] for g in groups]
    if not stages:
        return _table(["reason (numbers as #)", "rows", "example"], [r[1:] for r in rows], {1})
    return _table(["stage", "reason (numbers as #)", "rows", "example"], rows, {2})


# ---------- figures ----------

class _Figures:
    """matplotlib figures as inline SVG; each figure gets its own id salt so ids never collide on a page
    and the same data gives the same bytes."""

    def __init__(self) -> None:
        self.count = 0

    def new(self, width: float, height: float, **subplots):
        from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

        fig = Figure(figsize=(width, height), layout="constrained")
        return fig, fig.subplots(**subplots)

    def svg(self, fig, caption: str) -> str:
        import matplotlib

        self.count += 1
        buffer = io.StringIO()
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"sapray-figure-{self.count}"}):
            fig.savefig(buffer, format="svg", metadata={"Date": None})
        svg = buffer.getvalue()
        svg = svg[svg.index("<svg"):]  # drop the XML prolog and doctype: inline SVG
        return f'<figure id="figure-{self.count}" class="figure">{svg}<figcaption>{caption}</figcaption></figure>'


def _style(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="x", color="#e2e8f0", linewidth=0.8)
    ax.set_axisbelow(True)


def _palette(names: list[str]) -> dict[str, str]:
    """A fixed colour per strategy (by sorted name), so one strategy has one colour in every figure."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: to_hex(cmap(i % cmap.N)) for i, name in enumerate(sorted(names))}


# ---------- selection ----------

def _ranked_by(sel: dict) -> tuple[str, str, str]:
    """(per-strategy key, its interval's key, label) of what the selection ranked by (``sample.rank_by``)."""
    metric = (sel.get("race") or {}).get("rank_by") or (sel.get("winner") or {}).get("rank_by") or "sap"
    key = RANK_KEYS[metric]
    return key, "ci95_mean_sap" if metric == "sap" else f"ci95_{key}", race_label(metric)


def _ranking_figure(figs: _Figures, sel: dict, order: list[str], winner: str | None, out: set[str]) -> str:
    per = sel["per_strategy"]
    key, ci_key, label = _ranked_by(sel)
    fig, ax = figs.new(7.2, 0.42 * len(order) + 1.1)
    for y, name in enumerate(order):
        s = per[name]
        lo, hi = (s.get(ci_key) or [None, None])[:2]
        color = ACCENT if name == winner else (MUTED if name in out else "#334155")
        if lo is not None and hi is not None:
            ax.plot([lo, hi], [y, y], color=color, linewidth=2.2, solid_capstyle="round")
        ax.plot([s[key]], [y], "o", color=color, markersize=8 if name == winner else 6.5, zorder=3)
    ax.set_yticks(range(len(order)), order)
    ax.invert_yaxis()
    ax.set_xlabel(f"{label} (lower = more familiar to the target)")
    _style(ax)
    return figs.svg(fig, f"{label[0].upper()}{label[1:]} per strategy with its 95% bootstrap interval (questions "
                         "resampled, paired); ranked first at the top" + (", winner in orange." if winner else "."))


def _heatmap(figs: _Figures, sel: dict, order: list[str]) -> str:
    win = sel.get("win_rate") or {}
    k = len(order)
    values = np.full((k, k), np.nan)
    for i, a in enumerate(order):
        for j, b in enumerate(order):
            if i != j and win.get(a, {}).get(b) is not None:
                values[i, j] = win[a][b]
    fig, ax = figs.new(0.62 * k + 3.2, 0.5 * k + 1.6)
    image = ax.imshow(values, cmap="RdBu", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if not np.isnan(values[i, j]):
                v = values[i, j]
                ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=8.5,
                        color="white" if abs(v - 0.5) > 0.3 else "#1e293b")
    ax.set_xticks(range(k), order, rotation=35, ha="right")
    ax.set_yticks(range(k), order)
    ax.set_xlabel("… than this strategy")
    ax.set_ylabel("this strategy is more familiar …")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of paired questions")
    return figs.svg(fig, "Paired win rates: the percentage of questions scored for both on which the row "
                         "strategy's response has the lower SAP (ties count half).")


def _running_from_scores(scores: list[dict], order: list[str]) -> list[dict]:
    """Without a race: the cumulative mean SAP after each question, in the order the questions were scored
    (rounds are collected as they finish, so this is how the estimate moved)."""
    questions = list(dict.fromkeys(s["question_id"] for s in scores))
    by_question: dict[str, dict[str, float]] = {}
    for s in scores:
        by_question.setdefault(s["question_id"], {})[s["strategy"]] = s["sap"]
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    steps = []
    for i, q in enumerate(questions, start=1):
        for name, value in by_question[q].items():
            sums[name] = sums.get(name, 0.0) + value
            counts[name] = counts.get(name, 0) + 1
        steps.append({"round": i, "questions": i, "mean_sap": {n: sums[n] / counts[n] for n in order if n in sums}})
    return steps


def _running_figure(figs: _Figures, rounds: list[dict], order: list[str], eliminated: dict[str, int],
                    colors: dict[str, str], race: bool, round_size: int | None = None) -> str:
    from matplotlib.ticker import MaxNLocator

    fig, ax = figs.new(7.6, 3.6)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    last = rounds[-1].get("questions", rounds[-1]["round"])
    if round_size and round_size > 1 and not race:  # rounds of one question: every point ends one
        for end in range(round_size, last, round_size):
            ax.axvline(end + 0.5, color="#94a3b8", linewidth=0.9, linestyle=":")
    x_of = {r["round"]: r.get("questions", r["round"]) for r in rounds}
    for name in order:
        pts = [(x_of[r["round"]], r["mean_sap"][name]) for r in rounds
               if (r.get("mean_sap") or {}).get(name) is not None]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, "-o", color=colors[name], markersize=3.5, linewidth=1.6, label=name)
        if name in eliminated:
            ax.plot([xs[-1]], [ys[-1]], "X", color=colors[name], markersize=10, markeredgecolor="white")
    ax.set_xlabel("questions scored (paired, cumulative)")
    ax.set_ylabel("mean SAP so far")
    ax.grid(color="#e2e8f0", linewidth=0.8)
    ax.spines[["top", "right"]].set_visible(False)
    if ax.lines:  # nothing is drawn where every response was rejected: no legend to show
        ax.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if race:
        text = ("Running estimate: each strategy's mean SAP after every round of the race; a cross marks the round "
                "in which the race eliminated a strategy.")
    else:
        rounds_note = (f"; dotted lines end each round of {round_size} questions"
                       if round_size and 1 < round_size < last else "")
        text = ("Running estimate: each strategy's mean SAP after every question, in the order the questions were "
                f"scored (recomputed from scores.parquet){rounds_note}.")
    return figs.svg(fig, text)


def _interval_figure(figs: _Figures, race: dict, order: list[str], winner: str | None) -> str | None:
    """Each strategy's last anytime-valid interval for the ranked metric's (strategy) - (leader), mean SAP's
    unless the race ranked by another (``sample.rank_by``)."""
    last: dict[str, tuple[int, dict]] = {}
    for r in race.get("rounds") or []:
        for name, iv in (r.get("intervals") or {}).items():
            if iv and iv.get("lo") is not None and iv.get("hi") is not None:
                last[name] = (r["round"], iv)
    names = [n for n in order if n in last]
    if not names:
        return None
    fig, ax = figs.new(7.2, 0.42 * len(names) + 1.2)
    # the margin is epsilon times the leader's value, in the ranked metric's units: the last round's
    label = race_label(race.get("rank_by") or "sap")
    margin = next((r["margin"] for r in reversed(race.get("rounds") or []) if r.get("margin") is not None), None)
    if margin:
        ax.axvspan(-margin, margin, color="#f1f5f9", zorder=0)
    ax.axvline(0, color="#64748b", linewidth=1)
    for y, name in enumerate(names):
        rnd, iv = last[name]
        color = ACCENT if name == winner else "#334155"
        ax.plot([iv["lo"], iv["hi"]], [y, y], color=color, linewidth=2.2, solid_capstyle="round")
        ax.plot([iv["diff"]], [y], "o", color=color, markersize=6)
        ax.annotate(f"round {rnd}", (iv["hi"], y), xytext=(5, 0), textcoords="offset points", va="center",
                    fontsize=7.5, color="#64748b")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(f"{label} minus the leader's (above 0: less familiar than the leader)")
    _style(ax)
    band = (f"; the shaded band is ± the margin, {margin:.3g} {label.removeprefix('mean ')} "
            f"({race.get('epsilon')} of the leader's {label})") if margin else ""
    return figs.svg(fig, "The race's anytime-valid intervals, each strategy's from the last round it was "
                         f"scored in{band}. An interval wholly above the band eliminates the strategy.")


def _distribution_figure(figs: _Figures, scores: list[dict], order: list[str], winner: str | None,
                         metric: str = "sap", per: dict | None = None) -> str | None:
    """Per-question values of ``metric`` per strategy; a rank-surprisal ratio's diamond is the strategy's own
    ratio of means (``per``: selection.json's per_strategy), not the mean of its responses' ratios."""
    label = metric.upper().replace("_", "-")
    data = [[s[metric] for s in scores if s["strategy"] == name and s.get(metric) is not None
             and not (isinstance(s[metric], float) and math.isnan(s[metric]))] for name in order]
    if not any(data):
        return None
    fig, ax = figs.new(7.2, 0.45 * len(order) + 1.2)
    ax.boxplot(data, positions=range(len(order)), orientation="horizontal", widths=0.55, showfliers=False,
               medianprops={"color": "#1e293b"}, boxprops={"color": "#64748b"}, whiskerprops={"color": "#64748b"},
               capprops={"color": "#64748b"})
    rng = np.random.default_rng(0)  # fixed jitter: the same data gives the same figure
    dots = max(len(v) for v in data) <= MAX_DOTS
    for y, (name, vals) in enumerate(zip(order, data, strict=True)):
        mark = np.mean(vals) if per is None else per[name].get(metric)
        if not dots:  # thousands of dots would bloat the page; the box and the mean say enough
            ax.plot([mark], [y], "D", color="#1e293b", markersize=5, zorder=4)
            continue
        jitter = rng.uniform(-0.18, 0.18, size=len(vals))
        ax.scatter(vals, y + jitter, s=12, alpha=0.7, color=ACCENT if name == winner else "#2563eb",
                   linewidths=0, zorder=3)
        if vals and mark is not None:
            ax.plot([mark], [y], "D", color="#1e293b", markersize=5, zorder=4)
    ax.set_yticks(range(len(order)), order)
    ax.invert_yaxis()
    ax.set_xlabel(f"{label} of one response (per question)")
    _style(ax)
    dot_note = "one dot per scored response, " if dots else ""
    diamond = ("mean (the ranking statistic)" if per is None else
               f"the strategy's {label}, mean clipped rank over mean surprisal (a ratio of means)")
    return figs.svg(fig, f"Per-question {label} for each strategy: {dot_note}box = quartiles, whiskers = 1.5 IQR, "
                         f"diamond = {diamond}.")


def _cost_rows(run: dict) -> list[dict]:
    sel, info = run["selection"], run["run"]
    timings = info.get("timings") or {}
    exemplars = sel.get("exemplars") or {}
    race = sel.get("race") or {}
    last_round = (race.get("rounds") or [{}])[-1]
    rows = []
    if exemplars.get("supplied") is not None:
        rows.append({"stage": "exemplar mining", "detail": f"{exemplars['supplied']} supplied in a file",
                     "wall_s": timings.get("mining_s")})
    else:
        rows.append({"stage": "exemplar mining", "generated": exemplars.get("generated_tokens"),
                     "detail": f"{exemplars.get('pool_questions', '?')} pool questions answered by the target",
                     "wall_s": timings.get("mining_s")})
    for c in run.get("sample_generation_cost") or []:
        rows.append({"stage": "sample generation", "detail": c.get("strategy", ""), "prompt": c.get("prompt_tokens"),
                     "generated": c.get("completion_tokens"), "wall_s": c.get("wall_s"), "money": c.get("money")})
    budget = sel.get("budget") or {}
    rows.append({"stage": "scoring", "detail": f"{budget.get('questions_scored', '?')} questions × "
                                               f"{len(sel.get('strategies') or sel.get('ranking') or [])} strategies",
                 "prompt": last_round.get("tokens", budget.get("tokens_scored")), "wall_s": timings.get("scoring_s"),
                 **({"money": last_round["money"]} if last_round.get("money") is not None else {})})
    training = run.get("training")
    if training:
        c = training.get("cost_this_run") or {}
        total = training.get("cost_total") or {}
        detail = (f"{training.get('strategy', '')}: {training.get('rows')} rows (this run; all runs: "
                  f"{_num(total.get('prompt_tokens'))} + {_num(total.get('completion_tokens'))} tokens)")
        winner = (sel.get("winner") or {}).get("strategy")
        if winner and training.get("strategy") != winner:  # generate.output holds another strategy's set
            detail += f"; not the winner {winner}"
        rows.append({"stage": "full generation", "detail": detail,
                     "prompt": c.get("prompt_tokens"), "generated": c.get("completion_tokens"),
                     "wall_s": c.get("wall_s"), "money": c.get("money")})
    return rows


def _cost_section(figs: _Figures, run: dict) -> str:
    rows = _cost_rows(run)
    table = _table(["stage", "what", "prompt / scored tokens", "generated tokens", "wall time", "money"],
                   [[escape(r["stage"]), escape(str(r.get("detail", ""))), _num(r.get("prompt")),
                     _num(r.get("generated")), _seconds(r.get("wall_s")),
                     _money(r["money"]) if "money" in r else "–"] for r in rows], {2, 3, 4, 5})
    stages: dict[str, float] = {}
    for r in rows:
        if r.get("wall_s") is not None:
            stages[r["stage"]] = stages.get(r["stage"], 0.0) + r["wall_s"]
    figure = ""
    if any(stages.values()):
        fig, ax = figs.new(7.2, 0.42 * len(stages) + 1.0)
        names = list(stages)
        ax.barh(range(len(names)), [stages[n] for n in names], color="#64748b", height=0.55)
        for y, n in enumerate(names):
            ax.annotate(_seconds(stages[n]), (stages[n], y), xytext=(4, 0), textcoords="offset points",
                        va="center", fontsize=8)
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_xlabel("wall time (s)")
        _style(ax)
        summed = " (sample generation summed over strategies)" if run.get("sample_generation_cost") else ""
        figure = figs.svg(fig, f"Wall time by stage{summed}.")
    total = (run["run"].get("timings") or {}).get("total_s")
    note = f"Selection wall time in all: {_seconds(total)}. " if total is not None else ""
    note += "Money is shown where the config prices a teacher; the target's own scoring is not priced."
    return f'{table}{figure}<p class="muted">{note}</p>'


def _summary_line(sel: dict, winner: str | None) -> str:
    per = sel.get("per_strategy") or {}
    w = sel.get("winner") or {}
    race = sel.get("race") or {}
    parts = []
    if winner:
        s = per.get(winner, {})
        key, ci_key, label = _ranked_by(sel)
        lo, hi = (s.get(ci_key) or [None, None])[:2]
        ci = f" (95% CI {_num(lo)}–{_num(hi)})" if lo is not None and hi is not None else ""
        parts.append(f"Winner: <strong>{escape(winner)}</strong>, {label} {_num(w.get(key))}{ci} over "
                     f"{_num(s.get('n'))} questions")
        if w.get("runner_up"):
            parts.append(f"ahead of {escape(w['runner_up'])} by {_num(w.get(f'margin_{key}'))} {margin_words(w)} on "
                         f"{_num(100 * w['win_rate_vs_runner_up'], 0)}% of paired questions"
                         if w.get("win_rate_vs_runner_up") is not None else
                         f"ahead of {escape(w['runner_up'])} by {_num(w.get(f'margin_{key}'))}")
        if w.get("bootstrap_p_best") is not None:
            parts.append(f"best in {_num(100 * w['bootstrap_p_best'], 0)}% of bootstrap resamples")
    else:
        parts.append("<strong>No winner</strong> was named")
    line = "; ".join(parts) + "."
    if race.get("end_reason"):
        line += f" The race ended ({escape(str(race.get('ended', '')))}): {escape(race['end_reason'])}"
    else:
        budget = sel.get("budget") or {}
        if budget:
            line += (f" The run stopped by {escape(str(budget.get('stopped_by')))} after "
                     f"{_num(budget.get('questions_scored'))} questions "
                     f"({_num(budget.get('tokens_scored'))} tokens scored).")
    return line


def _evidence_box(sel: dict, winner: str | None) -> str:
    evidence = sel.get("evidence")
    if evidence:
        reason = escape(str(evidence.get("reason", "")))
        if evidence.get("sufficient"):
            return f'<div class="ok" id="evidence">{_badge("evidence sufficient", "ok")} {reason}</div>'
        return (f'<div class="caution" id="evidence">{_badge("thin evidence", "warn")} {reason} Treat the ranking '
                "as provisional: score more questions before relying on it.</div>")
    p_best = (sel.get("winner") or {}).get("bootstrap_p_best")
    if winner and p_best is not None and p_best < 0.95:
        return (f'<div class="caution" id="evidence">{_badge("not decisive", "warn")} {escape(winner)} was best in '
                f"only {100 * p_best:.0f}% of bootstrap resamples; the order near the top may change with more "
                "questions.</div>")
    return ""


def _status(name: str, winner: str | None, eliminated: dict[str, int], contenders: list[str],
            certified: Collection[str] = ()) -> str:
    if name == winner:
        return _badge("winner", "win")
    if name in certified:
        return _badge("good enough", "ok")
    if name in eliminated:
        return _badge(f"eliminated in round {eliminated[name]}", "out")
    if name in contenders:
        return _badge("contender", "warn")
    return ""


def _ranking_section(figs: _Figures, sel: dict, order: list[str], winner: str | None,
                     eliminated: dict[str, int], contenders: list[str], certified: Collection[str] = ()) -> str:
    per = sel["per_strategy"]
    labels = {"rsr": "RSR", "sa_rsr": "SA-RSR", "mean_reward": "reward", "car": "CAR"}
    extra = [k for k in labels if any(k in per[n] for n in order)]
    header = ["rank", "strategy", "status", "n", "mean SAP", "95% CI", "median", "geo-mean", "PPL", "IFD", "length",
              *[labels[k] for k in extra]]
    rows, classes = [], []
    for rank, name in enumerate(order, start=1):
        s = per[name]
        lo, hi = (s.get("ci95_mean_sap") or [None, None])[:2]
        rows.append([str(rank), f"<strong>{escape(name)}</strong>" if name == winner else escape(name),
                     _status(name, winner, eliminated, contenders, certified), _num(s.get("n")),
                     _num(s.get("mean_sap")),
                     f"{_num(lo)} – {_num(hi)}", _num(s.get("median_sap")), _num(s.get("geomean_sap")),
                     _num(s.get("mean_ppl")), _num(s.get("mean_ifd")), _num(s.get("mean_length"), 1),
                     *[_num(s.get(k)) for k in extra]])
        classes.append("win" if name == winner else "out" if name in eliminated else "")
    table = _table(header, rows, {0, 3, 4, 5, 6, 7, 8, 9, 10, *range(11, 11 + len(extra))}, classes)
    unscored = sorted(n for n in per if n not in order)
    if unscored:
        table += (f'<p class="caution">Not scored (every row rejected or none sampled): '
                  f"{escape(', '.join(unscored))}.</p>")
    if not order:
        return table
    return _ranking_figure(figs, sel, order, winner, set(eliminated)) + table


def _worst_certificate(record: dict) -> float | None:
    """The largest upper bound of mean SAP(leader) - (1 + epsilon) mean SAP(s) over the other remaining s."""
    bounds = [c["hi"] for c in (record.get("certificate") or {}).values()]
    return None if not bounds or None in bounds else max(bounds)


def _race_section(figs: _Figures, race: dict | None, order: list[str], winner: str | None,
                  colors: dict[str, str], scores: list[dict], round_size: int | None) -> str:
    if race:
        html = _facts([("stop rule", escape(str(race.get("stop")))), ("confidence", _num(race.get("confidence"))),
                       ("epsilon", _num(race.get("epsilon"))), ("method", escape(str(race.get("method", "")))),
                       ("ended", escape(str(race.get("ended")))), ("why", escape(str(race.get("end_reason", "")))),
                       ("contenders left", escape(", ".join(race.get("contenders") or []) or "–")),
                       *([("certified good enough", escape(", ".join(race["certified"])))]
                         if race.get("ended") == "good_enough" else [])])
        rounds = race.get("rounds") or []
        eliminated = race.get("eliminated") or {}
        if rounds:
            html += _running_figure(figs, rounds, order, eliminated, colors, race=True)
        interval = _interval_figure(figs, race, order, winner)
        html += interval or ""
        html += _table(["round", "questions", "leader", "margin", "eliminated", "leader's certificate (≤ 0: good "
                        "enough)", "tokens scored", "money"],
                       [[str(r.get("round")), _num(r.get("questions")), escape(str(r.get("leader") or "–")),
                         _num(r.get("margin")), escape(", ".join(r.get("eliminated") or []) or "–"),
                         _num(_worst_certificate(r)), _num(r.get("tokens")),
                         _money(r.get("money")) if r.get("money") is not None else "–"]
                        for r in rounds], {0, 1, 3, 5, 6, 7})
        return html
    rounds = _running_from_scores(scores, order)
    note = ('<p class="muted">This selection ran without a race: every strategy was scored on every sampled '
            "question.</p>")
    if not rounds:
        return note + '<p class="muted">No per-question scores to show it round by round.</p>'
    return note + _running_figure(figs, rounds, order, {}, colors, race=False, round_size=round_size)


def _exemplar_section(run: dict) -> str:
    info = run["selection"].get("exemplars") or {}
    exemplars = run.get("exemplars") or []
    used: Counter = Counter()
    for s in run["scores"]:
        used.update(s.get("exemplar_ids") or [])
    facts = ", ".join(f"{escape(k)}: {_num(v)}" for k, v in sorted(info.items()))
    unchecked = [e for e in exemplars if not e.get("checked")]
    warn = (f'<div class="caution">{_badge(f"{len(unchecked)} unchecked", "warn")} These exemplars did not pass the '
            "answer checker (no gold answer, or filled in by the shortfall policy); SAP contexts that use them show "
            "the target possibly wrong answers.</div>" if unchecked else "")
    rows = [[escape(str(e.get("exemplar_id"))), escape(str(e.get("source_question_id", "–"))),
             _badge("checked", "ok") if e.get("checked") else _badge("unchecked", "bad"),
             _num(used.get(e.get("exemplar_id"), 0)),
             f"<details><summary>{escape(str(e.get('text', ''))[:90])}…</summary><pre>{escape(str(e.get('text', '')))}"
             "</pre></details>"] for e in exemplars]
    table = _table(["exemplar", "source question", "checker", "used by scored responses", "text"], rows, {3})
    return f'<p class="muted">{facts}</p>{warn}{table if exemplars else ""}'


def _counts_section(sel: dict) -> str:
    c = sel.get("counts") or {}
    if not c:
        return '<p class="muted">No counts recorded.</p>'
    total = c.get("scored", 0) + c.get("rejected", 0) + c.get("not_sampled", 0)
    ok = total == c.get("candidate_rows_in")
    line = (f'<p>{_badge("reconciles" if ok else "does not reconcile", "ok" if ok else "bad")} candidate rows in '
            f"<strong>{_num(c.get('candidate_rows_in'))}</strong> = {_num(c.get('scored'))} scored + "
            f"{_num(c.get('rejected'))} rejected + {_num(c.get('not_sampled'))} not sampled</p>")
    rest = [[escape(k.replace("_", " ")), _num(v)] for k, v in sorted(c.items())]
    return line + _table(["count", "value"], rest, {1})


def render_selection(run: dict) -> str:
    sel = run["selection"]
    figs = _Figures()
    per = sel.get("per_strategy") or {}
    ranking = [n for n in sel.get("ranking") or [] if n in per]
    order = ranking + sorted(n for n in per if n not in ranking)
    winner = (sel.get("winner") or {}).get("strategy")
    race = sel.get("race")
    eliminated = (race or {}).get("eliminated") or {}
    contenders = [] if not race or race.get("ended") == "winner" else race.get("contenders") or []
    colors = _palette(order)
    scored = [n for n in order if per[n].get(_ranked_by(sel)[0]) is not None]
    config = (run["run"] or {}).get("config") or {}
    round_size = (config.get("sample") or {}).get("round_size")
    title = f"sapray selection: {sel.get('model', '?')}"
    sub = (f"{len(order)} strategies · engine {escape(str(sel.get('engine', '?')))} · layout "
           f"{escape(str(sel.get('layout', '?')))} · {escape(str(sel.get('statistic', 'mean SAP')))}")
    sections = [
        ("ranking", "Ranking", _ranking_section(figs, sel, scored, winner, eliminated, contenders,
                                                (race or {}).get("certified") or ())),
        ("win-rates", "Paired win rates", _heatmap(figs, sel, scored) if len(scored) > 1 else
         '<p class="muted">Only one strategy scored.</p>'),
        ("running", "Running estimate" + (" and the race" if race else ""),
         _race_section(figs, race, scored, winner, colors, run["scores"], round_size)),
        ("distributions", "Per-question SAP", _distribution_figure(figs, run["scores"], scored, winner)
         or '<p class="muted">No per-question scores (scores.parquet is missing or empty).</p>'),
        *((f"distributions-{m}", f"Per-question {m.upper().replace('_', '-')}",
           _distribution_figure(figs, run["scores"], scored, winner, m, per)
           or '<p class="muted">No per-question values of this metric in scores.parquet.</p>')
          for m in ("rsr", "sa_rsr") if any(m in per[n] for n in scored) and run["scores"]),
        ("cost", "Cost by stage", _cost_section(figs, run)),
        ("exemplars", "Exemplars", _exemplar_section(run)),
        ("counts", "Counts", _counts_section(sel)),
        ("rejects", "Rejected rows", _reasons_table(run["reject_groups"])),
    ]
    if run.get("validation"):
        sections.append(("validation", "Validation against downstream accuracy",
                         validation_section(figs, run["validation"])))
    sections.append(("config", "Resolved config", _config_section(run["run"])))
    header = (f'<p class="summary" id="summary">{_summary_line(sel, winner)}</p>{_evidence_box(sel, winner)}')
    return _page(title, sub, header, sections)


def _config_section(info: dict) -> str:
    timings = info.get("timings") or {}
    placement = info.get("actor_placement") or {}
    html = ""
    if timings:
        html += _table(["timing", "seconds"], [[escape(k), _num(v, 2)] for k, v in timings.items()], {1})
    if placement:
        html += _table(["actor (node/actor)", "requests scored"],
                       [[f"<code>{escape(k)}</code>", _num(v)] for k, v in sorted(placement.items())], {1})
    config = info.get("config")
    if config is not None:
        html += ("<details><summary>config as run (run.json)</summary>"
                 f"<pre>{escape(json.dumps(config, indent=2))}</pre></details>")
    return html or '<p class="muted">run.json is missing.</p>'


# ---------- filter ----------

def _score_batches(uris: list[str], columns: list[str]) -> Iterator[pa.Table]:
    """The ``columns`` (those a file has) of each scores file, a record batch at a time."""
    for _, f in _opened(uris, random_access=True):
        parquet = pq.ParquetFile(f)
        names = [c for c in columns if c in parquet.schema_arrow.names]
        for batch in parquet.iter_batches(columns=names):
            yield pa.Table.from_batches([batch])


class _ScoreHistogram:
    """One score column's kept and dropped counts over equal-width bins of its finite values, in two streamed
    passes (the range, then the counts): the figure a list of every value would give, in memory of the bins."""

    def __init__(self, files: list[str], column: str) -> None:
        self.files, self.column = files, column
        self.kept = self.dropped = self.finite = 0
        self.low, self.high = math.inf, -math.inf
        self.kept_low, self.kept_high = math.inf, -math.inf
        for values, valid, kept in self._batches():
            self.kept += int((valid & kept).sum())
            self.dropped += int((valid & ~kept).sum())
            finite = values[np.isfinite(values)]
            self.finite += len(finite)
            if len(finite):
                self.low, self.high = min(self.low, finite.min()), max(self.high, finite.max())
            kept_values = values[valid & kept]
            if len(kept_values):
                self.kept_low, self.kept_high = min(self.kept_low, kept_values.min()), max(self.kept_high,
                                                                                         kept_values.max())

    def _batches(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for table in _score_batches(self.files, [self.column, "kept"]):
            if self.column not in table.column_names:
                continue
            column = table.column(self.column)
            yield (column.to_numpy(zero_copy_only=False).astype(np.float64),
                   pc.is_valid(column).to_numpy(zero_copy_only=False),
                   pc.fill_null(table.column("kept"), False).to_numpy(zero_copy_only=False))

    def threshold(self, low_kept: bool | None) -> float | None:
        """The last kept value: the largest when low scores are kept, else the smallest."""
        if not self.kept or low_kept is None:
            return None
        return float(self.kept_high if low_kept else self.kept_low)

    def counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(bin edges, kept counts, dropped counts) over the finite values."""
        edges = np.histogram_bin_edges([self.low, self.high], bins=min(30, max(5, self.finite // 3)))
        kept, dropped = np.zeros(len(edges) - 1, np.int64), np.zeros(len(edges) - 1, np.int64)
        for values, _, is_kept in self._batches():
            finite = np.isfinite(values)
            kept += np.histogram(values[finite & is_kept], bins=edges)[0]
            dropped += np.histogram(values[finite & ~is_kept], bins=edges)[0]
        return edges, kept, dropped


def _filter_figure(figs: _Figures, scores: _ScoreHistogram, threshold: float | None, ifd_cut: bool,
                   main: bool) -> str | None:
    if not scores.finite:
        return None
    column = scores.column
    fig, ax = figs.new(6.6 if main else 4.6, 2.9 if main else 2.3)
    edges, kept, dropped = scores.counts()
    ax.hist([edges[:-1], edges[:-1]], bins=edges, weights=[kept, dropped], stacked=True, color=["#059669", "#cbd5e1"],
            label=[f"kept ({scores.kept})", f"dropped ({scores.dropped})"])
    if threshold is not None:
        ax.axvline(threshold, color=ACCENT, linewidth=1.8, linestyle="--", label=f"keep threshold {threshold:.4g}")
    if ifd_cut:
        ax.axvline(1.0, color="#7c3aed", linewidth=1.4, linestyle=":", label="IFD = 1 (dropped above)")
    ax.set_xlabel(column.replace("_", " "))
    ax.set_ylabel("samples")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=7.5, frameon=False)
    return figs.svg(fig, f"Distribution of {escape(column)} over the scored samples, kept and dropped"
                         + (" (the keep criterion)." if main else "."))


def _dropped(files: list[str]) -> Iterator[tuple[str, str, str]]:
    """("dropped", reason, source) of each scored sample that was not kept, streamed."""
    for table in _score_batches(files, ["kept", "reason", "source"]):
        dropped = table.filter(pc.invert(pc.fill_null(table.column("kept"), False)))
        for reason, source in zip(dropped.column("reason").to_pylist(), dropped.column("source").to_pylist(),
                                  strict=True):
            yield "dropped", reason or "", source or ""


def render_filter(run: dict) -> str:
    summary, files = run["summary"], run["score_files"]
    figs = _Figures()
    method = summary.get("method", "?")
    counts = summary.get("counts") or {}
    column, low_kept = FILTER_SCORE.get(method, (None, None))
    ifd_high = method == "ifd" and summary.get("direction", "high") == "high"
    if method == "ifd":
        low_kept = not ifd_high
    main = _ScoreHistogram(files, column) if column else None
    threshold = main.threshold(low_kept) if main else None
    total = counts.get("kept", 0) + counts.get("dropped", 0) + counts.get("rejected", 0)
    ok = total == counts.get("rows_in")
    fraction = summary.get("keep_fraction")
    summary_line = (f"<strong>{_num(counts.get('kept'))}</strong> of {_num(counts.get('rows_in'))} rows kept by "
                    f"<strong>{escape(method)}</strong>" + (f" (keep fraction {fraction:.0%})" if fraction is not None
                                                           else "")
                    + (f"; threshold on {escape(column)}: {threshold:.4g}" if threshold is not None else "") + ".")
    dists = summary.get("distributions") or {}
    main_fig = _filter_figure(figs, main, threshold, ifd_high, True) if main else None
    others = [_filter_figure(figs, _ScoreHistogram(files, k), None, False, False) for k in dists if k != column]
    stats = ("count", "mean", "std", "min", "p10", "p25", "p50", "p75", "p90", "max")
    dist_rows = [[escape(k), *[_num(d.get(q), 4) for q in stats]] for k, d in dists.items()]
    scores_html = ((main_fig or "") + "".join(f for f in others if f)
                   + _table(["score", *stats[:6], "median", *stats[7:]], dist_rows, set(range(1, len(stats) + 1))))
    counts_html = (f'<p>{_badge("reconciles" if ok else "does not reconcile", "ok" if ok else "bad")} rows in '
                   f"<strong>{_num(counts.get('rows_in'))}</strong> = {_num(counts.get('kept'))} kept + "
                   f"{_num(counts.get('dropped'))} dropped + {_num(counts.get('rejected'))} rejected</p>")
    settings = {k: v for k, v in summary.items() if k not in ("counts", "distributions")}
    settings_html = _table(["setting", "value"], [[escape(k), _num(v, 4)] for k, v in sorted(settings.items())], {})
    sections = [
        ("scores", "Score distributions", scores_html),
        ("counts", "Counts", counts_html),
        ("drops", "Drop reasons", _reasons_table(_group_reasons(_dropped(files)), stages=False)),
        ("rejects", "Rejected rows", _reasons_table(run["reject_groups"])),
        ("settings", "Settings", settings_html),
    ]
    if run.get("validation"):
        sections.append(("validation", "Validation against downstream accuracy",
                         validation_section(figs, run["validation"])))
    sub = f"model {escape(str(summary.get('model', '?')))} · engine {escape(str(summary.get('engine', '?')))}"
    return _page(f"sapray filter: {method}", sub, f'<p class="summary" id="summary">{summary_line}</p>', sections)


# ---------- validation ----------

def validation_section(figs: _Figures, result: dict) -> str:
    """Metrics judged against downstream accuracy (``sapray validate``): table, figure, per pair."""
    metrics = result.get("metrics") or {}
    names = list(metrics)
    rows = [[f"<strong>{escape(n)}</strong>", "lower" if m["lower_is_better"] else "higher", _num(m["weighted_rho"]),
             _num(m["mean_rho"]), _num(m["mean_top1_accuracy"], 4), str(len(m["rho_undefined"]))]
            for n, m in metrics.items()]
    html = _table(["metric", "better", "σ-weighted ρ", "mean ρ", "mean top-1 accuracy", "ρ undefined"], rows,
                  {2, 3, 4, 5})
    html += (f"<p>Upper bound (mean best accuracy over {len(result.get('pairs') or [])} (model, task) pairs): "
             f"<strong>{_num(result.get('upper_bound'), 4)}</strong></p>")
    if names:
        fig, (left, right) = figs.new(8.2, 0.4 * len(names) + 1.4, ncols=2, sharey=True)
        ys = range(len(names))
        rho = [metrics[n]["weighted_rho"] if metrics[n]["weighted_rho"] is not None else 0.0 for n in names]
        left.barh(ys, rho, color=[ACCENT if n == "sap" else "#64748b" for n in names], height=0.55)
        left.axvline(0, color="#1e293b", linewidth=0.8)
        left.set_yticks(list(ys), names)
        left.invert_yaxis()
        left.set_xlabel("σ-weighted Spearman ρ")
        top1 = [metrics[n]["mean_top1_accuracy"] or 0.0 for n in names]
        # dots, not bars: the axis does not start at zero
        right.scatter(top1, list(ys), s=70, color=[ACCENT if n == "sap" else "#64748b" for n in names], zorder=3)
        if result.get("upper_bound") is not None:
            right.axvline(result["upper_bound"], color="#059669", linestyle="--")
        ends = top1 + ([result["upper_bound"]] if result.get("upper_bound") is not None else [])
        if result.get("uncertainty"):  # 95% bootstrap intervals as error bars
            for ax, key, points in ((left, "weighted_rho", rho), (right, "mean_top1_accuracy", top1)):
                for y, n, x in zip(ys, names, points, strict=True):
                    lo, hi = metrics[n]["ci95"][key]
                    if lo is not None:
                        ax.errorbar([x], [y], xerr=[[max(0.0, x - lo)], [max(0.0, hi - x)]], color="#1e293b",
                                    capsize=3, linewidth=1, zorder=4)
                        ends += [lo, hi] if ax is right else []
        pad = 0.1 * (max(ends) - min(ends)) or 0.05
        right.set_xlim(min(ends) - pad, max(ends) + pad)
        right.set_xlabel("mean top-1 accuracy")
        for ax in (left, right):
            _style(ax)
        bars = ("; black bars: 95% bootstrap intervals over the (model, task) pairs" if result.get("uncertainty")
                else "")
        html += figs.svg(fig, "How well each metric's ranking of strategies predicts their downstream accuracy "
                              "(left) and the accuracy of the strategy each metric ranks first (right; dashed: the "
                              f"upper bound, the best strategy's accuracy averaged over pairs){bars}.")
        if result.get("uncertainty"):
            html += _uncertainty_html(figs, result)
    pairs = result.get("pairs") or []
    per_pair = [[escape(p["model"]), escape(p["task"]), _num(p.get("subsets")), _num(p.get("strategies")),
                 _num(p.get("sd_accuracy"), 4), _num(p.get("best_accuracy"), 4),
                 *[f"{_num(metrics[n]['pairs'][i]['rho'])} / {_num(metrics[n]['pairs'][i]['top1_accuracy'], 4)}"
                   for n in names]] for i, p in enumerate(pairs)]
    html += _table(["model", "task", "subsets", "strategies", "sd acc.", "best acc.", *[f"{escape(n)} ρ / top-1"
                                                                                       for n in names]],
                   per_pair, set(range(2, 6 + len(names))))
    for s in result.get("skipped") or []:
        subset = f", subset {escape(str(s['subset']))}" if s.get("subset") is not None else ""
        html += f'<p class="muted">Skipped: model {escape(s["model"])}, task {escape(s["task"])}{subset}: ' \
                f'{escape(s["reason"])}.</p>'
    html += f'<p class="muted">Ties: {escape(result.get("tie_rule", ""))}.</p>'
    return html


def _ci(pair: list, digits: int = 3) -> str:
    return "–" if pair[0] is None else f"{_num(pair[0], digits)} – {_num(pair[1], digits)}"


def _uncertainty_html(figs: _Figures, result: dict) -> str:
    """Bootstrap intervals, the reference against every other metric, and the calibration of gaps."""
    metrics, u = result["metrics"], result["uncertainty"]
    stats = (("weighted_rho", "σ-weighted ρ", 3), ("mean_rho", "mean ρ", 3), ("mean_top1_accuracy", "mean top-1", 4))
    html = (f"<h3>How sure</h3><p>95% intervals: {escape(u['method'])}; {u['resamples']:,} resamples over "
            f"{len(result['pairs'])} (model, task) pairs, seed {u['seed']}.</p>")
    html += _table(["metric", *[label for _, label, _ in stats]],
                   [[escape(n), *[_ci(m["ci95"][key], digits) for key, _, digits in stats]]
                    for n, m in metrics.items()], {1, 2, 3})
    ref = u["reference"]
    others = [(n, m["versus_reference"]) for n, m in metrics.items() if n != ref]
    if others:
        rows = [[escape(f"{ref} − {n}"), *[f"{_num(v[key]['difference'], digits)} ({_ci(v[key]['ci95'], digits)}); "
                                          f"P(&gt; 0) {_num(v[key]['p_positive'])}" for key, _, digits in stats]]
                for n, v in others]
        html += (f"<p>{escape(ref)} against every other metric, on the same resamples (paired): the difference, "
                 "its 95% interval, and the share of resamples in which it is above 0.</p>")
        html += _table(["difference", *[label for _, label, _ in stats]], rows, {1, 2, 3})
    html += (f"<h3>Calibration: which metric gaps predict a better fine-tuning result</h3><p class=\"muted\">"
             f"{escape(u['calibration_method'])}.</p>")
    html += _calibration_figure(figs, metrics)
    for name, m in metrics.items():
        table = m["calibration"]
        html += f"<p><strong>{escape(name)}</strong>: {escape(actionable_line(name, table))}.</p>"
        html += _table(["gap", "pairs", "groups", "agreement", "95% interval", "accuracy gain", "95% interval"],
                       [[escape(gap_label(b)), str(b["pairs"]), str(b["groups"]), _num(b["agreement"]),
                         _ci(b["agreement_ci95"]), _num(b["accuracy_gain"], 4), _ci(b["accuracy_gain_ci95"], 4)]
                        for b in table["buckets"]], {1, 2, 3, 4, 5, 6})
    return html


def _calibration_figure(figs: _Figures, metrics: dict) -> str:
    names = list(metrics)
    buckets = metrics[names[0]]["calibration"]["buckets"]
    colors = {n: ACCENT if n == "sap" else c for n, c in _palette(names).items()}
    fig, ax = figs.new(7.6, 3.4)
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        shown = [(k, b) for k, b in enumerate(metrics[name]["calibration"]["buckets"]) if b["agreement"] is not None]
        if not shown:
            continue
        xs = [k - 0.4 + width * (j + 0.5) for k, _ in shown]
        ys = [b["agreement"] for _, b in shown]
        ci = [b["agreement_ci95"] if b["agreement_ci95"][0] is not None else [y, y]  # no defined resample
              for y, (_, b) in zip(ys, shown, strict=True)]
        err = [[y - lo for y, (lo, _) in zip(ys, ci, strict=True)], [hi - y for y, (_, hi) in zip(ys, ci, strict=True)]]
        ax.errorbar(xs, ys, yerr=err, fmt="o", capsize=3, color=colors[name], label=name)
    ax.axhline(0.5, color="#1e293b", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(buckets)), [gap_label(b) for b in buckets])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("the metric's gap between two strategies, relative to the one it prefers")
    ax.set_ylabel("preferred one trained better")
    if len(names) > 1:
        ax.legend(frameon=False, fontsize=8)
    _style(ax)
    return figs.svg(fig, "Calibration: for every two strategies of a (model, task[, subset]), how often the one each "
                         "metric prefers reached the higher accuracy (ties count one half), by how far apart the "
                         "metric put them; bars: 95% intervals resampling (model, task) groups; dashed: a coin.")


def render_validation_page(result: dict) -> str:
    figs = _Figures()
    return _page("sapray validate", "metrics' rankings against downstream accuracy (METHOD.md §3)", "",
                 [("validation", "Validation against downstream accuracy", validation_section(figs, result))])


# ---------- page ----------

def _page(title: str, sub: str, header: str, sections: list[tuple[str, str, str]]) -> str:
    nav = "".join(f'<a href="#{sid}">{escape(name)}</a>' for sid, name, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{escape(name)}</h2>{html}</section>' for sid, name, html in sections)
    # no scripts, fonts or images to fetch; the policy makes sure nothing is ever requested
    csp = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head>\n<body><main>"
            f'<h1>{escape(title)}</h1><p class="sub">{sub}</p><nav>{nav}</nav>{header}{body}'
            "</main></body></html>\n")


def render_report(run: dict) -> str:
    return render_selection(run) if run["kind"] == "selection" else render_filter(run)


def write_report(folder: str, output: str | None = None, validation: dict | None = None) -> str:
    """Render report.html from ``folder``'s files (local or URI) to ``output`` (default: folder/report.html)."""
    run = load_run(folder)
    if validation is not None:
        run["validation"] = validation
    target = output or child(folder, "report.html")
    fs, path = filesystem(target)
    with fs.open_output_stream(path) as f:
        f.write(render_report(run).encode("utf-8"))
    return target
