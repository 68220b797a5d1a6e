"""Replay seeded races on real per-question SAP, against fixed designs, with no model.

The table (``benchmarks/data/gsm8k_sap_smollm2.parquet``, made by ``benchmarks/sap_table.py``)
holds SmolLM2-135M-Instruct's SAP of every GSM8K test question for the six real strategies. The
full-data winner is the strategy of lowest mean SAP over all questions. Each replay shuffles the
questions with its seed and runs either

- the race (``sapray.core.race``, exactly as ``select`` runs it: rounds of ``--round-size``, looks
  after every round, eliminated strategies not scored further), or
- a fixed design of n questions (every strategy on the first n questions),

and reports how often the pick (the race's: the lowest mean SAP among its contenders, what ``sapray
run`` generates with) is the full-data winner or within epsilon of it (of the full-data winner's
mean), how often the race claimed (``winner`` or ``good_enough``) and how often a claim named a
strategy that is not within epsilon on the full data, how large the reported set is (the certified
strategies after a claim, the contenders otherwise), and the tokens it would have scored (the
table's per-candidate token counts).

It also prints floors that hold for any valid rule at the race's confidence, were the full-data gaps
and spreads the truth: the questions a single fixed-size z-test at the race's level would need to
drop each strategy (``questions_to_separate``) or to show the winner within epsilon of it
(``questions_to_certify``). A confidence sequence is wider than that fixed-size interval at every n,
so a race can neither drop nor certify sooner; it ends when every other strategy is dropped or
certified against, so no valid race stops before the largest, over the others, of the smaller of the
two.

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
    """(how it ended, the reported set: the certified after a claim, else the contenders, the leader first;
    questions, tokens scored)."""
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
            return r.ended, r.certified, asked, spent
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


def questions_to_certify(sap: np.ndarray, best: int, j: int, epsilon: float, alpha: float) -> float:
    """Questions the same fixed-size test would need to show ``best`` within ``epsilon`` of ``j``: the
    upper end of its interval for mean SAP(best) - (1 + epsilon) mean SAP(j) at or below 0. A floor on
    the race's certificate against ``j``, as ``questions_to_separate`` is on its elimination."""
    d = sap[:, best] - (1 + epsilon) * sap[:, j]
    if d.mean() >= 0:
        return float("inf")
    return float((NormalDist().inv_cdf(1 - alpha / 2) * d.std(ddof=1) / d.mean()) ** 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--replays", type=int, default=200)
    parser.add_argument("--round-size", type=int, default=10)
    parser.add_argument("--caps", type=int, nargs="+", default=[50, 100, 200, 400],
                        help="the race's question caps (sample.max_questions), one row each")
    parser.add_argument("--confidence", type=float, default=RaceRule().confidence)
    parser.add_argument("--epsilon", type=float, default=RaceRule().epsilon)
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
          f"more than {args.epsilon:.0%} (drop), or {best} within {args.epsilon:.0%} of it (certify), were the "
          "full-data gaps and spreads known; a valid race can do neither sooner:")
    separating = {int(j): questions_to_separate(sap, int(order[0]), int(j), args.epsilon, alpha) for j in order[1:]}
    certifying = {int(j): questions_to_certify(sap, int(order[0]), int(j), args.epsilon, alpha) for j in order[1:]}
    for j in separating:
        print(f"  {strategies[j]:<20} drop {separating[j]:>9,.0f}   certify {certifying[j]:>9,.0f}")
    # each other strategy is out of the way once dropped or certified against: the race stops no sooner
    stop = max(max(min(separating[j], certifying[j]) for j in separating), rule.min_questions)
    per_question = tokens.mean(axis=0)
    needed = {j: min(stop, n) for j, n in separating.items()} | {int(order[0]): stop}
    if np.isfinite(stop):
        floor = sum(per_question[j] * n for j, n in needed.items()) / (per_question.sum() * stop)
        print(f"so no valid race stops with a claim before {stop:,.0f} questions, and it scores at least {floor:.0%} "
              f"of the tokens of the fixed design of that size (each strategy until such a test could drop it)")
    else:
        print("so no valid race can end with a claim on this data")
    rows = []
    for cap in args.caps:
        outcomes = [race(strategies, sap, tokens, np.random.default_rng(seed).permutation(len(sap)), rule,
                         args.round_size, cap) for seed in range(args.replays)]
        claims = [c for e, c, _, _ in outcomes if e in ("winner", "good_enough")]
        rows.append({
            "design": f"race, cap {cap}",
            "picks_full_winner": np.mean([c[0] == best for _, c, _, _ in outcomes]),
            "picks_within_epsilon": np.mean([c[0] in within for _, c, _, _ in outcomes]),
            "claims": len(claims) / len(outcomes),
            "false_claims": sum(bool(set(c) - within) for c in claims) / len(outcomes),
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
                     "picks_within_epsilon": np.mean([p in within for p in picks]), "claims": 0.0,
                     "false_claims": 0.0, "mean_set_size": 1.0, "median_questions": float(n),
                     "median_tokens": float(np.median(spent)), "ended": {}})
    print(f"\n{'design':<16}{'picks winner':>13}{'within eps':>11}{'claims':>8}{'false':>7}{'set size':>9}"
          f"{'questions':>10}{'tokens':>11}  ended")
    for r in rows:
        print(f"{r['design']:<16}{r['picks_full_winner']:>13.1%}{r['picks_within_epsilon']:>11.1%}{r['claims']:>8.1%}"
              f"{r['false_claims']:>7.1%}{r['mean_set_size']:>9.2f}{r['median_questions']:>10.0f}"
              f"{r['median_tokens']:>11,.0f}  {r['ended']}")
    if args.json:
        args.json.write_text(json.dumps({"winner": best, "means": dict(zip(strategies, means.tolist(), strict=True)),
                                         "epsilon": args.epsilon, "confidence": args.confidence,
                                         "floor_questions": stop, "rows": rows}, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
