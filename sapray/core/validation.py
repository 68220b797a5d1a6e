"""Judge metrics' rankings against downstream accuracy (METHOD.md §3).

Input: one row per (model, task[, subset], strategy) with the strategy's fine-tuned ``accuracy`` and
one column per metric present (sap, ppl, ifd, rsr, sa_rsr, length: lower is better; reward, car: higher
is better). Or selection.json files, each labelled with a task, plus an accuracy table keyed by strategy.

For each metric and each (model, task) pair:
- Spearman's rho between the metric's order and the accuracy order (average ranks for ties), signed
  so that a positive rho means the metric agrees with accuracy whatever its direction;
- top-1 accuracy: the accuracy of the metric's first-ranked strategy.
With subsets, each subset is ranked on its own and the pair's rho and top-1 are the means over its
subsets (the authors' three 50-question slices). Over all pairs: the sigma-weighted rho
``sum(rho_t * sd_t) / sum(sd_t)`` (``sd_t``: standard deviation, ddof=1, of the strategies'
accuracies on pair t), the mean top-1 accuracy, and the upper bound (the mean best accuracy).

Tie rules:
- ranks: tied values share the mean of the ranks they span (on both the metric and accuracy side);
- rho is undefined (null) when every accuracy, or every metric value, of a subset is tied; a pair's
  rho is the mean over its subsets where defined (null if none); a pair with a null rho leaves the
  weighted mean together with its weight, and is listed under ``rho_undefined``;
- top-1 when several strategies share the best metric value: the mean accuracy of those strategies;
- a (model, task[, subset]) with fewer than two strategies cannot be ranked: it is skipped and listed
  under ``skipped`` (a pair all of whose subsets are skipped is skipped).
With subsets, a strategy's accuracy on the pair (for ``sd_t`` and the upper bound) is the mean of
its accuracies over the pair's subsets (the same number when accuracy does not depend on the subset).

How sure these figures are (``sapray.core.uncertainty``): 95% percentile-bootstrap intervals for each
metric's weighted rho, mean rho and mean top-1, resampling (model, task) pairs; the same statistics'
difference between a reference metric (``sap`` by default) and each other metric, with P(difference >
0); and per metric the calibration table of its gaps against accuracy gaps with the smallest actionable
gap. These are added keys (``ci95``, ``versus_reference``, ``calibration`` per metric; ``uncertainty``
at the top); the point figures above are computed exactly as without them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from sapray.core import uncertainty

# metric column -> True when a lower value is better
LOWER_IS_BETTER = {"sap": True, "ppl": True, "ifd": True, "rsr": True, "sa_rsr": True, "length": True,
                   "reward": False, "car": False}
# selection.json per_strategy key for each metric (a strategy's RSR is a ratio of means, not a mean)
SELECTION_KEYS = {"sap": "mean_sap", "ppl": "mean_ppl", "ifd": "mean_ifd", "rsr": "rsr", "sa_rsr": "sa_rsr",
                  "length": "mean_length", "reward": "mean_reward", "car": "car"}
TIE_RULE = ("ties share the mean of their ranks; rho is undefined (null) when all accuracies or all metric values "
            "of a subset are tied, and such a pair leaves the weighted mean with its weight; top-1 with several "
            "strategies tied on the best metric value is their mean accuracy")
CALIBRATION_RULE = ("every two strategies within a (model, task[, subset]); gap: the metric's difference relative "
                    "to the value of the one it prefers; agreement: the preferred one reached the higher accuracy (1), "
                    "the lower (0), the same (1/2); pairs the metric ties are left out and counted; intervals resample "
                    "(model, task) groups; smallest actionable gap: the lowest bucket edge from which every non-empty "
                    "bucket's 95% interval for agreement lies above 1/2")
_MAX_NAMED = 10


class ValidationError(ValueError):
    """An unusable results table: names the rows or columns at fault."""


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ascending; tied values get the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho (Pearson's r of the average ranks); None when either side is constant."""
    rx, ry = average_ranks(x), average_ranks(y)
    mx, my = math.fsum(rx) / len(rx), math.fsum(ry) / len(ry)
    sxy = math.fsum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = math.fsum((a - mx) ** 2 for a in rx)
    syy = math.fsum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def _sd(values: Sequence[float]) -> float:
    mean = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return math.fsum(values) / len(values) if values else None


@dataclass(frozen=True)
class Row:
    source: str
    model: str
    task: str
    subset: str | None
    strategy: str
    accuracy: float
    metrics: dict[str, float | None]


def _number(value, what: str, source: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ValidationError(f"{source}: {what} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValidationError(f"{source}: {what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValidationError(f"{source}: {what} must be finite, got {value!r}")
    return number


def name_sources(sources: list[str]) -> str:
    more = f" and {len(sources) - _MAX_NAMED} more" if len(sources) > _MAX_NAMED else ""
    return ", ".join(sources[:_MAX_NAMED]) + more


def rows_from_records(records: Iterable[tuple[str, dict]], uri: str) -> list[Row]:
    """Rows of a results table; missing columns, bad numbers and duplicates are errors naming the rows."""
    records = list(records)
    bad = [source for source, r in records if isinstance(r, str)]
    if bad:
        raise ValidationError(f"unreadable rows: {name_sources(bad)}")
    if not records:
        raise ValidationError(f"{uri}: no rows")
    columns = set().union(*(r.keys() for _, r in records))
    missing = [c for c in ("model", "task", "strategy", "accuracy") if c not in columns]
    if missing:
        raise ValidationError(f"{uri}: missing column(s) {missing} (have {sorted(columns)})")
    rows = []
    for source, r in records:
        for key in ("model", "task", "strategy"):
            if r.get(key) is None or str(r[key]).strip() == "":
                raise ValidationError(f"{source}: empty {key}")
        accuracy = _number(r.get("accuracy"), "accuracy", source)
        if accuracy is None:
            raise ValidationError(f"{source}: empty accuracy")
        subset = r.get("subset")
        rows.append(Row(source, str(r["model"]), str(r["task"]), None if subset in (None, "") else str(subset),
                        str(r["strategy"]), accuracy,
                        {m: _number(r.get(m), m, source) for m in LOWER_IS_BETTER if m in columns}))
    return rows


def check_rows(rows: list[Row], metrics: Sequence[str] | None = None) -> list[str]:
    """The metrics to judge; a chosen metric without a value in some rows is an error naming them."""
    present = [m for m in LOWER_IS_BETTER if any(m in r.metrics for r in rows)]
    if metrics is not None:
        unknown = [m for m in metrics if m not in LOWER_IS_BETTER]
        if unknown:
            raise ValidationError(f"unknown metric(s) {unknown}; known: {list(LOWER_IS_BETTER)}")
        absent = [m for m in metrics if m not in present]
        if absent:
            raise ValidationError(f"no column for metric(s) {absent}; present: {present}")
        present = [m for m in LOWER_IS_BETTER if m in metrics]
    if not present:
        raise ValidationError(f"no metric column: give at least one of {list(LOWER_IS_BETTER)}")
    for m in present:
        lacking = [r.source for r in rows if r.metrics.get(m) is None]
        if lacking:
            raise ValidationError(f"metric {m!r} has no value in {len(lacking)} row(s): {name_sources(lacking)} "
                                  "(fill them, or leave the metric out with --metrics)")
    seen: dict[tuple, str] = {}
    for r in rows:
        key = (r.model, r.task, r.subset, r.strategy)
        if key in seen:
            raise ValidationError(f"{r.source}: duplicate of {seen[key]} (model {r.model!r}, task {r.task!r}, "
                                  f"subset {r.subset!r}, strategy {r.strategy!r})")
        seen[key] = r.source
    return present


def _judge_subset(rows: list[Row], metric: str) -> dict:
    sign = -1.0 if LOWER_IS_BETTER[metric] else 1.0
    goodness = [sign * r.metrics[metric] for r in rows]  # higher = ranked earlier by the metric
    accuracy = [r.accuracy for r in rows]
    best = max(goodness)
    top = [r for r, g in zip(rows, goodness, strict=True) if g == best]
    return {"subset": rows[0].subset, "strategies": len(rows), "rho": spearman(goodness, accuracy),
            "top1_strategies": sorted(r.strategy for r in top),
            "top1_accuracy": math.fsum(r.accuracy for r in top) / len(top)}


def validate(rows: list[Row], metrics: Sequence[str] | None = None, reference: str | None = None,
             resamples: int = 10_000, seed: int = 0,
             gap_edges: Sequence[float] = uncertainty.DEFAULT_GAP_EDGES) -> dict:
    """The judgement of every metric present (see the module docstring), as a JSON-ready dict.

    ``reference``: the metric the others are compared with (default: sap when judged, else the first
    metric); ``resamples`` and ``seed``: the bootstrap's; ``gap_edges``: the calibration buckets' edges,
    as shares (0.05 = 5%).
    """
    chosen = check_rows(rows, metrics)
    reference = _reference(chosen, reference)
    if resamples < 1:
        raise ValidationError(f"resamples must be at least 1, got {resamples}")
    if not gap_edges or any(e <= 0 or not math.isfinite(e) for e in gap_edges) or list(gap_edges) != sorted(
            set(gap_edges)):
        raise ValidationError(f"gap edges must be positive, finite and increasing, got {list(gap_edges)}")
    groups: dict[tuple[str, str], dict[str | None, list[Row]]] = {}
    for r in rows:
        groups.setdefault((r.model, r.task), {}).setdefault(r.subset, []).append(r)
    skipped, pairs = [], []
    for (model, task), subsets in sorted(groups.items()):
        usable = {}
        for subset, members in sorted(subsets.items(), key=lambda kv: (kv[0] is not None, kv[0] or "")):
            if len(members) < 2:
                skipped.append({"model": model, "task": task, "subset": subset,
                                "reason": f"{len(members)} strategy: cannot rank"})
            else:
                usable[subset] = sorted(members, key=lambda r: r.strategy)
        if usable:
            pairs.append((model, task, usable))
    if not pairs:
        raise ValidationError("no (model, task) pair has two or more strategies to rank")

    pair_facts = []
    for model, task, usable in pairs:
        by_strategy: dict[str, list[float]] = {}
        for members in usable.values():
            for r in members:
                by_strategy.setdefault(r.strategy, []).append(r.accuracy)
        accuracy = {s: math.fsum(v) / len(v) for s, v in by_strategy.items()}
        pair_facts.append({"model": model, "task": task, "subsets": len(usable), "strategies": len(accuracy),
                           "sd_accuracy": _sd(list(accuracy.values())), "best_accuracy": max(accuracy.values()),
                           "best_strategies": sorted(s for s, a in accuracy.items() if a == max(accuracy.values()))})

    out_metrics = {}
    for metric in chosen:
        per_pair = []
        for (model, task, usable), facts in zip(pairs, pair_facts, strict=True):
            judged = [_judge_subset(members, metric) for members in usable.values()]
            rho = _mean(j["rho"] for j in judged if j["rho"] is not None)
            per_pair.append({"model": model, "task": task, "rho": rho,
                             "top1_accuracy": _mean(j["top1_accuracy"] for j in judged),
                             "sd_accuracy": facts["sd_accuracy"],
                             **({"subsets": judged} if len(judged) > 1 or judged[0]["subset"] is not None
                                else {"top1_strategies": judged[0]["top1_strategies"]})})
        defined = [p for p in per_pair if p["rho"] is not None]
        weight = math.fsum(p["sd_accuracy"] for p in defined)
        out_metrics[metric] = {
            "lower_is_better": LOWER_IS_BETTER[metric],
            "weighted_rho": math.fsum(p["rho"] * p["sd_accuracy"] for p in defined) / weight if weight else None,
            "mean_rho": _mean(p["rho"] for p in defined),
            "mean_top1_accuracy": _mean(p["top1_accuracy"] for p in per_pair),
            "rho_undefined": [{"model": p["model"], "task": p["task"]} for p in per_pair if p["rho"] is None],
            "pairs": per_pair,
        }
    counts = uncertainty.resample_counts(len(pairs), resamples, seed)
    samples = {m: _resampled(out_metrics[m]["pairs"], counts) for m in chosen}
    for metric in chosen:
        judged = out_metrics[metric]
        judged["ci95"] = {stat: uncertainty.percentile_interval(v) for stat, v in samples[metric].items()}
        if metric != reference:
            judged["versus_reference"] = {"reference": reference, **{
                stat: uncertainty.compare(samples[reference][stat], v, _minus(out_metrics[reference][stat],
                                                                              judged[stat]))
                for stat, v in samples[metric].items()}}
        units = [(g, [(r.metrics[metric], r.accuracy) for r in members])
                 for g, (_, _, usable) in enumerate(pairs) for members in usable.values()]
        judged["calibration"] = uncertainty.gap_table(units, LOWER_IS_BETTER[metric], len(pairs), gap_edges, counts)
    return {"pairs": pair_facts, "upper_bound": _mean(p["best_accuracy"] for p in pair_facts),
            "metrics": out_metrics, "skipped": skipped, "tie_rule": TIE_RULE,
            "uncertainty": {"method": uncertainty.METHOD, "calibration_method": CALIBRATION_RULE,
                            "level": uncertainty.LEVEL, "resamples": resamples, "seed": seed,
                            "unit": "(model, task) pair", "reference": reference}}


def _reference(chosen: list[str], reference: str | None) -> str:
    if reference is None:
        return "sap" if "sap" in chosen else chosen[0]
    if reference not in chosen:
        raise ValidationError(f"reference metric {reference!r} is not among the metrics judged {chosen}")
    return reference


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _resampled(per_pair: list[dict], counts: np.ndarray) -> dict[str, np.ndarray]:
    """Each summary statistic over the bootstrap resamples of the (model, task) pairs (``counts``)."""
    defined = np.array([p["rho"] is not None for p in per_pair], dtype=float)
    rho = np.array([p["rho"] if p["rho"] is not None else 0.0 for p in per_pair])
    sd = np.array([p["sd_accuracy"] for p in per_pair]) * defined  # an undefined rho leaves with its weight
    top1 = np.array([p["top1_accuracy"] for p in per_pair])
    return {"weighted_rho": uncertainty.ratio_resamples(rho * sd, sd, counts),
            "mean_rho": uncertainty.ratio_resamples(rho * defined, defined, counts),
            "mean_top1_accuracy": uncertainty.ratio_resamples(top1, np.ones_like(top1), counts)}


_LABEL = re.compile(r"^([\w.-]+)(?::([\w.-]+))?=(.+)$")


def parse_selection_arg(arg: str) -> tuple[str, str | None, str]:
    """``TASK=PATH`` or ``TASK:SUBSET=PATH`` -> (task, subset, path)."""
    match = _LABEL.match(arg)
    if not match:
        raise ValidationError(f"--selection {arg!r}: expected TASK=PATH or TASK:SUBSET=PATH")
    return match.group(1), match.group(2), match.group(3)


def rows_from_accuracy(records: list[tuple[str, dict]], uri: str) -> list[dict]:
    bad = [source for source, r in records if isinstance(r, str)]
    if bad:
        raise ValidationError(f"unreadable rows: {name_sources(bad)}")
    out = []
    for source, r in records:
        if r.get("strategy") in (None, "") or "accuracy" not in r:
            raise ValidationError(f"{source}: the accuracy table needs strategy and accuracy columns")
        accuracy = _number(r["accuracy"], "accuracy", source)
        if accuracy is None:
            raise ValidationError(f"{source}: empty accuracy")
        out.append({"source": source, "strategy": str(r["strategy"]), "accuracy": accuracy,
                    **{k: str(r[k]) for k in ("task", "model") if r.get(k) not in (None, "")}})
    if not out:
        raise ValidationError(f"{uri}: no rows")
    return out
