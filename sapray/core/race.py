"""Racing: drop strategies as soon as the evidence says they lost, stop when the choice is known.

After every round, each remaining strategy is compared with the current leader (the lowest mean
SAP) through the paired differences ``D_i = SAP_i(s) - SAP_i(leader)`` over the questions both
were scored on. A confidence sequence for the mean of ``D`` that holds uniformly over every look
lets the race look after every round without inflating its error:

    mean(D) +/- sd(D) * sqrt( 2 (n rho^2 + 1) / (n^2 rho^2) * log( sqrt(n rho^2 + 1) / alpha ) )

the two-sided asymptotic confidence sequence of Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas
(2021), "Time-uniform central limit theory and asymptotic confidence sequences", arXiv:2103.06476
(Robbins' normal-mixture boundary with the sample standard deviation plugged in). ``rho`` tunes
where the sequence is tightest: ``rho^2 = (-2 log alpha + log(-2 log alpha + 1)) / n_opt`` (their
closed-form choice for a target sample size ``n_opt``). The leader changes between looks, so the
sequences are built for every pair of strategies with a union (Bonferroni) bound:
``alpha = (1 - confidence) / (K (K - 1) / 2)``. With probability at least ``confidence`` every
pairwise sequence holds at every look, and then the best strategy is never eliminated.

Rules, with ``delta = epsilon * mean SAP of the leader`` (the indifference margin):
- a strategy is eliminated when its interval lies above ``delta``: worse than the leader by more
  than epsilon, with the stated confidence;
- the race ends with a ``winner`` when one strategy remains, and with a ``tie`` when every
  remaining strategy's interval lies within ``[-delta, delta]`` (all within epsilon of the
  leader; pick any, for example the cheapest);
- no decision is made before ``min_questions`` paired questions (the sample standard deviation
  of a handful of heavy-tailed values is not to be trusted);
- a cap (questions, tokens, money) or running out of questions ends it as ``budget`` or
  ``exhausted``: no confidence is claimed, the contenders are reported with P(best).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

METHOD = ("paired differences of per-question SAP against the leader; two-sided asymptotic confidence "
          "sequences (Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas 2021, arXiv:2103.06476), "
          "union bound over all pairs of strategies")


def rho2_for(n_opt: float, alpha: float) -> float:
    """The mixture variance that makes the sequence tightest near ``n_opt`` observations."""
    log_term = -2 * math.log(alpha)
    return (log_term + math.log(log_term + 1)) / n_opt


def cs_radius(n: int, sd: float, alpha: float, rho2: float) -> float:
    """Half-width of the asymptotic confidence sequence for a mean after ``n`` observations."""
    if n < 2:
        return math.inf
    v = n * rho2 + 1
    return sd * math.sqrt(2 * v / (n * n * rho2) * math.log(math.sqrt(v) / alpha))


def pair_alpha(confidence: float, k: int) -> float:
    """Error budget of one pairwise sequence: 1 - confidence split over every pair of ``k`` strategies."""
    return (1 - confidence) / max(1, k * (k - 1) // 2)


@dataclass(frozen=True)
class RaceRule:
    confidence: float = 0.95
    epsilon: float = 0.02
    min_questions: int = 10
    tuned_for: int = 50


@dataclass
class Race:
    """The race's state: per-question SAP of every strategy so far, who remains, and every look."""

    strategies: list[str]
    rule: RaceRule = RaceRule()
    remaining: list[str] = field(default_factory=list)
    eliminated: dict[str, int] = field(default_factory=dict)  # strategy -> round it was dropped in
    rounds: list[dict] = field(default_factory=list)
    ended: str | None = None
    end_reason: str = ""

    def __post_init__(self) -> None:
        self.remaining = list(self.strategies)
        self.column = {s: j for j, s in enumerate(self.strategies)}
        self.row: dict[str, int] = {}
        self.sap: list[list[float]] = []  # question x strategy, NaN where not scored
        self.alpha = pair_alpha(self.rule.confidence, len(self.strategies))
        self.rho2 = rho2_for(self.rule.tuned_for, self.alpha)

    def add(self, question_id: str, strategy: str, sap: float) -> None:
        if question_id not in self.row:
            self.row[question_id] = len(self.sap)
            self.sap.append([math.nan] * len(self.strategies))
        self.sap[self.row[question_id]][self.column[strategy]] = sap

    def _means(self, values: np.ndarray) -> dict[str, float]:
        counts = (~np.isnan(values)).sum(axis=0)
        sums = np.nansum(values, axis=0)
        return {s: float(sums[j] / counts[j]) if counts[j] else math.nan for s, j in self.column.items()}

    def interval(self, values: np.ndarray, strategy: str, leader: str) -> dict:
        """Anytime-valid interval for mean SAP(strategy) - mean SAP(leader) on their shared questions."""
        d = values[:, self.column[strategy]] - values[:, self.column[leader]]
        d = d[~np.isnan(d)]
        n = len(d)
        mean = float(d.mean()) if n else math.nan
        radius = cs_radius(n, float(d.std(ddof=1)), self.alpha, self.rho2) if n > 1 else math.inf
        return {"n": n, "diff": mean, "lo": mean - radius, "hi": mean + radius}

    def look(self, round_number: int, tokens: int, money: float | None, decide: bool = True) -> dict:
        """Compare every remaining strategy with the leader, eliminate, and record the round.

        ``decide=False`` records the intervals only (the fixed design: nothing is dropped or ended).
        """
        values = np.array(self.sap, dtype=float).reshape(-1, len(self.strategies))
        means = self._means(values)
        scored = [s for s in self.remaining if not math.isnan(means[s])]
        if not scored:  # every request so far was rejected: nothing to compare yet
            record = {"round": round_number, "questions": 0, "leader": None, "margin": None, "mean_sap": {},
                      "intervals": {}, "eliminated": [], "tokens": tokens, "money": money}
            self.rounds.append(record)
            return record
        leader = min(scored, key=lambda s: (means[s], s))
        margin = self.rule.epsilon * means[leader]
        intervals = {s: self.interval(values, s, leader) for s in self.remaining if s != leader}
        decided = decide and all(iv["n"] >= self.rule.min_questions for iv in intervals.values())
        dropped = sorted(s for s, iv in intervals.items() if decided and iv["lo"] > margin)
        for s in dropped:
            self.remaining.remove(s)
            self.eliminated[s] = round_number
        record = {
            "round": round_number,
            "questions": int((~np.isnan(values[:, self.column[leader]])).sum()),
            "leader": leader,
            "margin": _r(margin),
            "mean_sap": {s: _r(means[s]) for s in self.strategies
                         if s in self.remaining or self.eliminated.get(s) == round_number},
            "intervals": {s: {"n": iv["n"], "diff": _r(iv["diff"]), "lo": _r(iv["lo"]), "hi": _r(iv["hi"])}
                          for s, iv in intervals.items()},
            "eliminated": dropped,
            "tokens": tokens,
            "money": None if money is None else round(money, 6),
        }
        self.rounds.append(record)
        if not decide:
            return record
        if len(self.remaining) == 1:
            self.ended = "winner"
            self.end_reason = (f"{leader} is the only strategy left: every other is worse by more than "
                               f"{self.rule.epsilon:.0%} of its mean SAP ({self.rule.confidence:.0%} confidence)")
        elif decided and all(-margin <= intervals[s]["lo"] and intervals[s]["hi"] <= margin
                             for s in self.remaining if s != leader):
            self.ended = "tie"
            self.end_reason = (f"{len(self.remaining)} strategies are within {self.rule.epsilon:.0%} of the "
                               f"leader's mean SAP ({self.rule.confidence:.0%} confidence); any of them will do")
        return record

    def stop(self, reason: str, why: str) -> None:
        """End without a confident decision (a cap reached, or no questions left)."""
        self.ended, self.end_reason = reason, why

    def contenders(self) -> list[str]:
        """The strategies still in the race, lowest mean SAP first."""
        means = self._means(np.array(self.sap, dtype=float).reshape(-1, len(self.strategies)))
        return sorted(self.remaining, key=lambda s: (means[s], s))

    def to_dict(self, stop: str) -> dict:
        return {
            "stop": stop,
            "method": METHOD,
            "confidence": self.rule.confidence,
            "epsilon": self.rule.epsilon,
            "min_questions": self.rule.min_questions,
            "tuned_for": self.rule.tuned_for,
            "pair_alpha": _r(self.alpha),
            "ended": self.ended,
            "end_reason": self.end_reason,
            "contenders": self.contenders(),
            "eliminated": dict(sorted(self.eliminated.items())),
            "rounds": self.rounds,
        }


def _r(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)
