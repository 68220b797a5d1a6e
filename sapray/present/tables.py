"""Text tables for the console: a selection's ranking and a validation's judgement."""

from __future__ import annotations


def _num(x, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if isinstance(x, float | int) else "-"


def _columns(header: list[tuple[str, int]], rows: list[list[str]]) -> list[str]:
    """Fixed-width lines: each column as wide as its header's width, or as its widest cell and two spaces
    (values of any size stay apart); the second column (names) on the left, the others on the right."""
    widths = [max([width, *(len(row[i]) + 2 for row in rows)]) for i, (_, width) in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "".join(c.ljust(w) if i == 1 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
    head = line([name for name, _ in header])
    return [head, "-" * len(head), *(line(row) for row in rows)]


def render_table(summary: dict) -> str:
    """The ranking as a fixed-width table, most familiar first (RSR and SA-RSR columns where scored)."""
    ratios = [m for m in ("rsr", "sa_rsr") if any(m in s for s in summary["per_strategy"].values())]
    header = [("rank", 4), ("  strategy", 22), ("n", 5), ("mean SAP", 10), ("95% CI", 20), ("median", 9),
              ("PPL", 9), ("IFD", 8), *((m.upper().replace("_", "-"), 9) for m in ratios), ("length", 8)]
    rows = []
    for rank, name in enumerate(summary["ranking"], start=1):
        s = summary["per_strategy"][name]
        lo, hi = s["ci95_mean_sap"]
        ci = f"[{lo:.3f}, {hi:.3f}]" if lo is not None else "-"
        rows.append([str(rank), f"  {name}", str(s["n"]), _num(s["mean_sap"]), ci, _num(s["median_sap"]),
                     _num(s["mean_ppl"]), _num(s["mean_ifd"]), *(_num(s.get(m)) for m in ratios),
                     _num(s["mean_length"], 1)])
    lines = _columns(header, rows)
    w = summary.get("winner")
    race = summary.get("race")
    if race:
        lines += ["", f"race ({race['stop']}): {race['ended']}: {race['end_reason']}"]
        if race.get("ended") == "good_enough":
            lines.append(f"certified within {race['epsilon']:.0%} of the best: " + ", ".join(race["certified"]))
        if race["eliminated"]:
            lines.append("eliminated: " + ", ".join(f"{n} (round {r})" for n, r in race["eliminated"].items()))
    evidence = summary.get("evidence")
    if evidence and not evidence["sufficient"]:
        lines += ["", f"NOT ENOUGH EVIDENCE: {evidence['reason']}"]
    if w:
        lines.append("")
        key, label = _ranked_by(w)
        line = f"{'provisional ' if w.get('provisional') else ''}winner: {w['strategy']} ({label} {w[key]:.3f})"
        if w.get(f"margin_{key}") is not None:
            line += f", ahead of {w['runner_up']} by {w[f'margin_{key}']:.3f} {margin_words(w)} on "
            line += f"{100 * w['win_rate_vs_runner_up']:.0f}% of paired questions"
        if w.get("bootstrap_p_best") is not None:
            line += f"; best in {100 * w['bootstrap_p_best']:.0f}% of bootstrap resamples"
        lines.append(line)
    return "\n".join(lines)


def margin_words(winner: dict) -> str:
    """What the margin is and what the win rate counts: a ratio of means (RSR) is not a mean of paired
    differences, so its margin is the difference of the two strategies' ratios."""
    if winner.get("rank_by") in ("rsr", "sa_rsr"):
        return "(the difference of their ratios of means); a lower ratio"
    return "on their shared questions; more familiar"


def _ranked_by(winner: dict) -> tuple[str, str]:
    """(the winner's key in the summary, its label): mean SAP unless the race ranked by another metric."""
    metric = winner.get("rank_by", "sap")
    name = metric.upper().replace("_", "-")
    return ("mean_sap", "mean SAP") if metric == "sap" else (
        (f"mean_{metric}", f"mean {name}") if metric == "ppl" else (metric, name))


def _f(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x if round(x, digits) else 0.0:.{digits}f}"  # no "-0.000" from rounding noise


def render_validation(result: dict) -> str:
    """Console tables: one line per metric, then rho and top-1 per (model, task)."""
    header = f"{'metric':<8}{'better':>8}{'weighted rho':>14}{'mean rho':>10}{'mean top-1':>12}{'rho undefined':>15}"
    lines = [header, "-" * len(header)]
    for name, m in result["metrics"].items():
        lines.append(f"{name:<8}{'lower' if m['lower_is_better'] else 'higher':>8}{_f(m['weighted_rho']):>14}"
                     f"{_f(m['mean_rho']):>10}{_f(m['mean_top1_accuracy'], 4):>12}{len(m['rho_undefined']):>15}")
    lines.append(f"upper bound (mean best accuracy): {_f(result['upper_bound'], 4)} over {len(result['pairs'])} "
                 "(model, task) pair(s)")
    names = list(result["metrics"])
    lines += ["", f"{'model':<20}{'task':<16}{'sd acc':>8}" + "".join(f"{n + ' rho/top-1':>20}" for n in names)]
    for i, p in enumerate(result["pairs"]):
        judged = [result["metrics"][n]["pairs"][i] for n in names]
        cells = "".join(f"{_f(j['rho']) + ' / ' + _f(j['top1_accuracy'], 4):>20}" for j in judged)
        lines.append(f"{p['model'][:19]:<20}{p['task'][:15]:<16}{_f(p['sd_accuracy'], 4):>8}{cells}")
    for s in result["skipped"]:
        subset = f" subset {s['subset']}" if s["subset"] is not None else ""
        lines.append(f"skipped: model {s['model']}, task {s['task']}{subset}: {s['reason']}")
    lines += ["", f"ties: {result['tie_rule']}"]
    if result.get("uncertainty"):
        lines += ["", *_intervals(result), *(line for name, m in result["metrics"].items()
                                             for line in ["", *_calibration(name, m["calibration"])])]
    return "\n".join(lines)


STATS = (("weighted_rho", "weighted rho", 3), ("mean_rho", "mean rho", 3), ("mean_top1_accuracy", "mean top-1", 4))


def _interval(lo: float | None, hi: float | None, digits: int, sign: str = "") -> str:
    return "-" if lo is None else f"[{lo:{sign}.{digits}f}, {hi:{sign}.{digits}f}]"


def _intervals(result: dict) -> list[str]:
    """95% bootstrap intervals per metric, then the reference minus each other metric."""
    u = result["uncertainty"]
    lines = [f"{u['level']:.0%} intervals: {u['method']}; {u['resamples']:,} resamples over {len(result['pairs'])} "
             f"(model, task) pair(s), seed {u['seed']}",
             f"{'metric':<8}" + "".join(f"{label:>22}" for _, label, _ in STATS)]
    for name, m in result["metrics"].items():
        lines.append(f"{name:<8}" + "".join(f"{_interval(*m['ci95'][key], digits):>22}" for key, _, digits in STATS))
    ref = u["reference"]
    others = [(n, m["versus_reference"]) for n, m in result["metrics"].items() if n != ref]
    if others:
        lines += ["", f"{ref} minus each other metric (paired resamples; P: share of resamples where the "
                      "difference is above 0)",
                  f"{'metric':<8}" + "".join(f"{label:>36}" for _, label, _ in STATS)]
        for name, v in others:
            cells = []
            for key, _, digits in STATS:
                c = v[key]
                p = "-" if c["p_positive"] is None else f"{c['p_positive']:.3f}"
                d = "-" if c["difference"] is None else f"{c['difference']:+.{digits}f}"
                cells.append(f"{d} {_interval(*c['ci95'], digits, '+')} P {p}")
            lines.append(f"{name:<8}" + "".join(f"{cell:>36}" for cell in cells))
    return lines


def gap_label(bucket: dict) -> str:
    """``5-10%``, ``50%-``: a calibration bucket's range of relative gaps."""
    start = f"{100 * bucket['from']:g}"
    return f"{start}%-" if bucket["to"] is None else f"{start}-{100 * bucket['to']:g}%"


def actionable_line(name: str, table: dict) -> str:
    gap = table["smallest_actionable_gap"]
    if gap is None:
        return (f"smallest actionable gap for {name}: none shown (no gap from which every bucket's agreement is "
                "above 1/2 at 95%)")
    return (f"smallest actionable gap for {name}: {100 * gap:g}% (from there on, every bucket's agreement is above "
            "1/2 at 95%)")


def _calibration(name: str, table: dict) -> list[str]:
    """The calibration table of one metric: its relative gaps against which strategy trained better."""
    header = (f"{'gap':<10}{'pairs':>7}{'groups':>8}{'agreement':>11}{'95% interval':>18}{'acc. gain':>11}"
              f"{'95% interval':>22}")
    lines = [f"calibration of {name}: every two strategies within a (model, task[, subset]), by the gap relative to "
             f"the preferred one ({table['pairs']} pairs, {table['metric_ties']} tied on {name} left out)",
             header, "-" * len(header)]
    for b in table["buckets"]:
        agreement = "-" if b["agreement"] is None else f"{b['agreement']:.3f}"
        gain = "-" if b["accuracy_gain"] is None else f"{b['accuracy_gain']:+.4f}"
        lines.append(f"{gap_label(b):<10}{b['pairs']:>7}{b['groups']:>8}{agreement:>11}"
                     f"{_interval(*b['agreement_ci95'], 3):>18}{gain:>11}"
                     f"{_interval(*b['accuracy_gain_ci95'], 4, '+'):>22}")
    return [*lines, actionable_line(name, table)]
