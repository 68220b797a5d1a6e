"""Replay seeded races on real per-question SAP, against fixed designs, with no model.

The table (``benchmarks/data/gsm8k_sap_smollm2.parquet``, made by ``benchmarks/sap_table.py``)
holds SmolLM2-135M-Instruct's SAP of every GSM8K test question for the six real strategies. The
full-data winner is the strategy of lowest mean SAP over all questions. Each replay shuffles the
questions with its seed and runs either

- the race (``sapray.core.race``, exactly as ``select`` runs it: rounds of ``--round-size``, looks
  after every round, eliminated strategies not scored further), or
- a fixed design of n questions (every strategy on the first n questions),

and reports how often the pick (the race's: the lowest mean SAP among its contenders, what ``sapray
run`` generates with) is the full-data winner or within epsilon of it, how often the reported set
holds the winner and how large that set is,
and the tokens it would have scored (the table's per-candidate token counts).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_race.py [--replays 200]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pyarrow.parquet as pq

from sapray.core.race import Race, RaceRule, pair_alpha

TABLE = Path(__file__).parent / "data" / "gsm8k_sap_smollm2.parquet"


def load(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(strategies, SAP question x strategy, tokens question x strategy)."""
    rows = pq.read_table(path).to_pylist()
    strategies = sorted({r["strategy"] for r in rows})
    questions = sorted({r["question_id"] for r in rows})
    qi = {q: i for i, q in enumerate(questions)}
    si = {s: j for j, s in enumerate(strategies)}
    sap = np.full((len(questions), len(strategies)), np.nan)
    tokens = np.zeros_like(sap)
    for r in rows:
        sap[qi[r["question_id"]], si[r["strategy"]]] = r["sap"]
        tokens[qi[r["question_id"]], si[r["strategy"]]] = r["scored_tokens"]
    keep = ~np.isnan(sap).any(axis=1)  # paired: questions every strategy was scored on
    return strategies, sap[keep], tokens[keep]


def race(strategies: list[str], sap: np.ndarray, tokens: np.ndarray, order: np.ndarray, rule: RaceRule,
         round_size: int, max_questions: int) -> tuple[str, list[str], int, int]:
    """(how it ended, the reported set, questions, tokens scored)."""
    r = Race(strategies, rule)
    spent = 0
    asked = 0
    for start in range(0, min(max_questions, len(order)), round_size):
        for i in order[start:min(start + round_size, max_questions)]:
            for name in r.remaining:
                r.add(str(i), name, float(sap[i, r.column[name]]))
                spent += int(tokens[i, r.column[name]])
            asked += 1
        r.look(start // round_size + 1, spent, None)
        if r.ended:
            return r.ended, r.contenders(), asked, spent
    return "budget", r.contenders(), asked, spent


def questions_to_separate(sap: np.ndarray, best: int, j: int, epsilon: float, alpha: float) -> float:
    """Questions a single fixed-size two-sided z-test at level ``alpha`` would need to show strategy ``j``
    worse than ``best`` by more than ``epsilon`` of its mean, were the full-data gap and spread true.

    A confidence sequence is wider than the fixed-size interval at every n, so no anytime-valid race
    drops ``j`` with fewer questions: this is a floor on any valid elimination, not an estimate.
    """
    d = sap[:, j] - sap[:, best]
    excess = d.mean() - epsilon * sap[:, best].mean()
    if excess <= 0:
        return float("inf")
    return float((NormalDist().inv_cdf(1 - alpha / 2) * d.std(ddof=1) / excess) ** 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--replays", type=int, default=200)
    parser.add_argument("--round-size", type=int, default=10)
    parser.add_argument("--caps", type=int, nargs="+", default=[50, 100, 200, 400],
                        help="the race's question caps (sample.max_questions), one row each")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--epsilon", type=float, default=0.02)
    parser.add_argument("--fixed", type=int, nargs="+", default=[30, 50, 100, 200])
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    strategies, sap, tokens = load(args.table)
    means = sap.mean(axis=0)
    best = strategies[int(np.argmin(means))]
    within = {s for s, m in zip(strategies, means, strict=True) if m <= means.min() * (1 + args.epsilon)}
    print(f"{sap.shape[0]} paired questions x {len(strategies)} strategies; full-data mean SAP: "
          + ", ".join(f"{s} {m:.3f}" for s, m in sorted(zip(strategies, means, strict=True), key=lambda x: x[1])))
    print(f"full-data winner: {best}; within {args.epsilon:.0%} of it: {sorted(within)}")
    rule = RaceRule(args.confidence, args.epsilon)
    alpha = pair_alpha(args.confidence, len(strategies))
    order = np.argsort(means)
    print(f"questions a fixed-size test at the race's pairwise level would need to show each worse than {best} by "
          f"more than {args.epsilon:.0%} (a floor for any valid race):")
    separating = {int(j): questions_to_separate(sap, int(order[0]), int(j), args.epsilon, alpha) for j in order[1:]}
    for j, n in separating.items():
        print(f"  {strategies[j]:<20} {n:>9,.0f}")
    n_fixed = max(args.fixed)
    needed = {j: min(n_fixed, n) for j, n in separating.items()} | {int(order[0]): n_fixed}
    per_question = tokens.mean(axis=0)
    floor = sum(per_question[j] * n for j, n in needed.items()) / (per_question.sum() * n_fixed)
    print(f"so a valid race that reaches {n_fixed} questions scores at least {floor:.0%} of the fixed design's "
          f"tokens (each strategy scored until such a test could drop it, or on all {n_fixed})")
    rows = []
    for cap in args.caps:
        outcomes = [race(strategies, sap, tokens, np.random.default_rng(seed).permutation(len(sap)), rule,
                         args.round_size, cap) for seed in range(args.replays)]
        rows.append({
            "design": f"race, cap {cap}",
            "picks_full_winner": np.mean([c[0] == best for _, c, _, _ in outcomes]),
            "picks_within_epsilon": np.mean([c[0] in within for _, c, _, _ in outcomes]),
            "set_holds_full_winner": np.mean([best in c for _, c, _, _ in outcomes]),
            "mean_set_size": float(np.mean([len(c) for _, c, _, _ in outcomes])),
            "median_questions": float(np.median([q for _, _, q, _ in outcomes])),
            "median_tokens": float(np.median([t for _, _, _, t in outcomes])),
            "ended": dict(Counter(e for e, _, _, _ in outcomes)),
        })
    for n in args.fixed:
        picks, spent = [], []
        for seed in range(args.replays):
            chosen = np.random.default_rng(seed).permutation(len(sap))[:n]
            picks.append(strategies[int(np.argmin(sap[chosen].mean(axis=0)))])
            spent.append(tokens[chosen].sum())
        rows.append({"design": f"fixed {n}", "picks_full_winner": np.mean([p == best for p in picks]),
                     "picks_within_epsilon": np.mean([p in within for p in picks]),
                     "set_holds_full_winner": np.mean([p == best for p in picks]), "mean_set_size": 1.0,
                     "median_questions": float(n), "median_tokens": float(np.median(spent)), "ended": {}})
    print(f"\n{'design':<16}{'picks winner':>13}{'within eps':>11}{'set holds it':>13}{'set size':>9}{'questions':>10}"
          f"{'tokens':>11}  ended")
    for r in rows:
        print(f"{r['design']:<16}{r['picks_full_winner']:>13.1%}{r['picks_within_epsilon']:>11.1%}"
              f"{r['set_holds_full_winner']:>13.1%}"
              f"{r['mean_set_size']:>9.2f}{r['median_questions']:>10.0f}{r['median_tokens']:>11.0f}  {r['ended']}")
    if args.json:
        args.json.write_text(json.dumps({"winner": best, "means": dict(zip(strategies, means.tolist(), strict=True)),
                                         "rows": rows}, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
