"""Text tables for the console: a selection's ranking and a validation's judgement."""

from __future__ import annotations


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
    return "\n".join(lines)
