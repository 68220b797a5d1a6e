"""Racing: drop strategies as soon as the evidence says they lost, stop when the leader is good enough.

After every round, each remaining strategy is compared with the current leader (the lowest mean
SAP) through the paired differences ``D_i = SAP_i(s) - SAP_i(leader)`` over the questions both
were scored on. A confidence sequence for the mean of ``D`` that holds uniformly over every look
lets the race look after every round without inflating its error:

    mean(D) +/- sd(D) * sqrt( 2 (n rho^2 + 1) / (n^2 rho^2) * log( sqrt(n rho^2 + 1) / alpha ) )

the two-sided asymptotic confidence sequence of Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas
(2021), "Time-uniform central limit theory and asymptotic confidence sequences", arXiv:2103.06476
(Robbins' normal-mixture boundary with the sample standard deviation plugged in). ``rho`` tunes
where the sequence is tightest: ``rho^2 = (-2 log alpha + log(-2 log alpha + 1)) / n_opt`` (their
closed-form choice for a target sample size ``n_opt``).

Rules, with ``epsilon`` the indifference margin as a share of mean SAP:
- elimination: a strategy is dropped when its interval for ``mean SAP(s) - mean SAP(leader)`` lies
  above ``epsilon * mean SAP of the leader`` (``margin`` in the record): worse than the leader by
  more than epsilon, with the stated confidence;
- ``winner``: one strategy remains;
- ``good_enough``: the leader is certified within epsilon of the best (epsilon-good, or PAC,
  identification: Even-Dar, Mannor & Mansour 2006, "Action elimination and stopping conditions for
  the multi-armed bandit and reinforcement learning problems", JMLR 7). The certificate of a
  remaining strategy ``p`` against another remaining ``s`` is the upper end of a confidence sequence
  (the same boundary) for the mean of ``D'_i = SAP_i(p) - (1 + epsilon) SAP_i(s)`` lying at or below
  0; ``p`` is certified when that holds against every other remaining strategy. The record lists
  every remaining strategy certified at the end (``certified``): ``sample.pick: cheapest`` chooses
  among them;
- no decision is made before ``min_questions`` paired questions (the sample standard deviation
  of a handful of heavy-tailed values is not to be trusted);
- a cap (questions, tokens, money) or running out of questions ends it as ``budget`` or
  ``exhausted``: no confidence is claimed, the contenders are reported with P(best).

What is claimed, and why it holds. Let ``mu_s`` be the true mean SAP of strategy ``s`` (over the
population the questions are drawn from), ``mu* = min_s mu_s`` and ``b`` a strategy attaining it. A
claim ``p`` (the ``winner``, or any strategy ``certified`` at a ``good_enough`` end) is false when
``mu_p > (1 + epsilon) mu*``: the margin is relative to the best true mean, not to an estimate.
Consider the 2(K - 1) one-sided events, for the K strategies raced:
  (a) for every ``t != b``, the lower end of the sequence for ``mu_b - mu_t`` is at most its true value
      at every look;
  (b) for every ``p != b``, the upper end of the sequence for ``mu_p - (1 + epsilon) mu_b`` is at least
      its true value at every look.
Each fails with probability at most ``alpha``, so all hold with probability at least
``1 - 2 (K - 1) alpha`` (union bound). On that event:
  1. ``b`` is never eliminated: that would need the lower end for ``mu_b - mu_leader`` above the margin
     (>= 0), yet ``mu_b - mu_leader <= 0``. So ``b`` is always among the remaining strategies (the
     eliminated ones were shown worse than someone).
  2. A certified ``p != b`` was certified against ``b`` too (``b`` remains), so by (b)
     ``mu_p - (1 + epsilon) mu_b <= upper end <= 0``: ``mu_p <= (1 + epsilon) mu*``. ``p = b`` is the best.
     Every certified strategy is within epsilon of the best at once, so the cheapest of them is too.
  3. A ``winner`` is the last remaining strategy, hence ``b`` by 1.
``b`` is unknown, so every sequence is built at the same ``alpha``:
``alpha = (1 - confidence) / max(K (K - 1) / 2, 2 (K - 1))``. For four or more strategies this is the
share the race has always given each of the K (K - 1) / 2 pairs (its union bound over every pair),
which now covers the certificate as well; for two or three strategies it is smaller, so that the
2 (K - 1) events above fit in ``1 - confidence``.

Ranking by another metric (``sample.rank_by``): PPL is a mean like SAP and is raced the same way. A
rank-surprisal ratio is a ratio of means, ``R_s = mean_i(r_i) / mean_i(u_i)`` (``r_i`` a response's mean
clipped rank, ``u_i`` its mean surprisal), not a mean; the race works on its linearized per-question value
(the delta method's influence function)

    L_i(s) = R_s + (r_i(s) - R_s u_i(s)) / mean(u(s)),

whose mean over the questions is exactly ``R_s`` and whose paired differences ``L_i(s) - c L_i(t)`` have
mean ``R_s - c R_t`` and, to first order, that estimate's spread. Every rule above then applies to
``L`` unchanged; the guarantee holds asymptotically (the linearization's error is of order 1/n, below the
sequence's radius of order sqrt(log n / n)), and tests/test_race.py checks its error rate by simulation.

Certifying ``mu_p <= (1 + epsilon) mu_s`` directly through ``D'`` makes the margin relative to the
true mean without estimating it: the alternative, bounding ``mu*`` from below by a confidence sequence
for a mean SAP, would carry the spread of SAP across questions (large) where ``D'`` carries only the
spread of paired differences (small). Compared with the former ``tie`` end (every remaining strategy
within plus or minus epsilon of the leader's estimated mean), the certificate needs one side of each
interval, so it can stop sooner with the same guarantee.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

METHOD = ("paired differences of per-question SAP against the leader; two-sided asymptotic confidence "
          "sequences (Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas 2021, arXiv:2103.06476); good enough: the "
          "upper end of the same sequence for SAP(leader) - (1 + epsilon) SAP(s) at or below 0 for every other "
          "remaining s (epsilon-good identification, Even-Dar, Mannor & Mansour 2006); union bound over the "
          "2 (K - 1) one-sided events that involve the best strategy")


def race_label(metric: str) -> str:
    """What a race ranks by, in words: ``mean SAP``, ``mean PPL``; a rank-surprisal ratio is a ratio of means:
    ``RSR``, ``SA-RSR``."""
    name = metric.upper().replace("_", "-")
    return f"mean {name}" if metric in ("sap", "ppl") else name


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
    """Error budget of one sequence among ``k`` strategies (module docstring): ``1 - confidence`` split over
    every pair, or over the 2 (k - 1) events that involve the best strategy when those are more."""
    return (1 - confidence) / max(1, k * (k - 1) // 2, 2 * (k - 1))


@dataclass(frozen=True)
class RaceRule:
    confidence: float = 0.95
    epsilon: float = 0.10  # see docs/statistics.md: SAP gaps under 10% do not predict the better fine-tuning
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
    certified: list[str] = field(default_factory=list)  # within epsilon of the best, at the end
    metric: str = "sap"  # what it ranks by (sample.rank_by): the name its records and reasons give

    @property
    def label(self) -> str:
        return race_label(self.metric)

    def __post_init__(self) -> None:
        self.remaining = list(self.strategies)
        self.column = {s: j for j, s in enumerate(self.strategies)}
        self.row: dict[str, int] = {}
        self.sap: list[list[float]] = []  # question x strategy, NaN where not scored: the ranked values
        self.denominators: list[list[float]] = []  # a ratio of means' per-question denominators, alike
        self.alpha = pair_alpha(self.rule.confidence, len(self.strategies))
        self.rho2 = rho2_for(self.rule.tuned_for, self.alpha)

    def add(self, question_id: str, strategy: str, sap: float, denominator: float | None = None) -> None:
        """One question's value for a strategy; with ``denominator``, the race ranks the ratio of the means of
        the values and of the denominators (a rank-surprisal ratio: mean clipped rank, mean surprisal)."""
        if question_id not in self.row:
            self.row[question_id] = len(self.sap)
            self.sap.append([math.nan] * len(self.strategies))
            self.denominators.append([math.nan] * len(self.strategies))
        self.sap[self.row[question_id]][self.column[strategy]] = sap
        if denominator is not None:
            self.denominators[self.row[question_id]][self.column[strategy]] = denominator

    def _values(self) -> np.ndarray:
        """The per-question values the rules work on: as added, or for a ratio of means its linearized value
        ``L_i = R + (x_i - R d_i) / mean(d)`` per strategy (module docstring), whose mean is the ratio."""
        values = np.array(self.sap, dtype=float).reshape(-1, len(self.strategies))
        denominators = np.array(self.denominators, dtype=float).reshape(values.shape)
        if np.isnan(denominators).all():
            return values
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # a strategy not scored yet: NaN, as unscored
            mean_x, mean_d = np.nanmean(values, axis=0), np.nanmean(denominators, axis=0)
            ratio = mean_x / np.maximum(mean_d, 1e-12)
            return ratio + (values - ratio * denominators) / np.maximum(mean_d, 1e-12)

    def _means(self, values: np.ndarray) -> dict[str, float]:
        counts = (~np.isnan(values)).sum(axis=0)
        sums = np.nansum(values, axis=0)
        return {s: float(sums[j] / counts[j]) if counts[j] else math.nan for s, j in self.column.items()}

    def radius(self, n: int, sd: float) -> float:
        """Half-width of every sequence (elimination and certificate) after ``n`` paired questions."""
        return cs_radius(n, sd, self.alpha, self.rho2)

    def _paired(self, values: np.ndarray, strategy: str, other: str, scale: float) -> dict:
        """Anytime-valid interval for mean SAP(strategy) - scale * mean SAP(other) on their shared questions."""
        d = values[:, self.column[strategy]] - scale * values[:, self.column[other]]
        d = d[~np.isnan(d)]
        n = len(d)
        mean = float(d.mean()) if n else math.nan
        radius = self.radius(n, float(d.std(ddof=1))) if n > 1 else math.inf
        return {"n": n, "diff": mean, "lo": mean - radius, "hi": mean + radius}

    def interval(self, values: np.ndarray, strategy: str, leader: str) -> dict:
        """For elimination: mean SAP(strategy) - mean SAP(leader)."""
        return self._paired(values, strategy, leader, 1.0)

    def certificate(self, values: np.ndarray, strategy: str, other: str) -> dict:
        """For the good-enough end: mean SAP(strategy) - (1 + epsilon) mean SAP(other); ``hi <= 0`` certifies
        that ``strategy`` is within epsilon of ``other``."""
        return self._paired(values, strategy, other, 1 + self.rule.epsilon)

    def _certified(self, values: np.ndarray, strategy: str) -> bool:
        return all(self.certificate(values, strategy, s)["hi"] <= 0 for s in self.remaining if s != strategy)

    def look(self, round_number: int, tokens: int, money: float | None, decide: bool = True) -> dict:
        """Compare every remaining strategy with the leader, eliminate, and record the round.

        ``decide=False`` records the intervals only (the fixed design: nothing is dropped or ended).
        """
        values = self._values()
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
        # the leader's certificate against every other remaining strategy; its worst bound <= 0: good enough
        bounds = ({s: self.certificate(values, leader, s) for s in self.remaining if s != leader}
                  if decided and len(self.remaining) > 1 else {})
        worst = max((b["hi"] for b in bounds.values()), default=math.nan)
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
            "certificate": {s: {"diff": _r(b["diff"]), "hi": _r(b["hi"])} for s, b in bounds.items()},
            "good_enough": bool(worst <= 0),
            "tokens": tokens,
            "money": None if money is None else round(money, 6),
        }
        self.rounds.append(record)
        if not decide:
            return record
        if len(self.remaining) == 1:
            self.ended, self.certified = "winner", [leader]
            self.end_reason = (f"{leader} is the only strategy left: every other is worse by more than "
                               f"{self.rule.epsilon:.0%} of its {self.label} ({self.rule.confidence:.0%} confidence)")
        elif worst <= 0:
            also = [p for p in self.contenders() if p != leader and self._certified(values, p)]
            self.ended, self.certified = "good_enough", [leader, *also]
            self.end_reason = (
                f"{leader} is good enough: within {self.rule.epsilon:.0%} of the best strategy's {self.label} "
                f"({self.rule.confidence:.0%} confidence; the upper bounds on {self.label} of {leader} minus "
                f"{1 + self.rule.epsilon:g} x that of each other remaining strategy are at most {worst:.3f}, below 0)"
                + (f"; so {'is' if len(also) == 1 else 'are'} {', '.join(also)}" if also else ""))
        return record

    def stop(self, reason: str, why: str) -> None:
        """End without a confident decision (a cap reached, or no questions left)."""
        self.ended, self.end_reason = reason, why

    def contenders(self) -> list[str]:
        """The strategies still in the race, lowest mean SAP first."""
        means = self._means(self._values())
        return sorted(self.remaining, key=lambda s: (means[s], s))

    def to_dict(self, stop: str) -> dict:
        return {
            **({"rank_by": self.metric} if self.metric != "sap" else {}),  # a SAP race's record as it always was
            "stop": stop,
            "method": METHOD,
            "confidence": self.rule.confidence,
            "epsilon": self.rule.epsilon,
            "min_questions": self.rule.min_questions,
            "tuned_for": self.rule.tuned_for,
            "pair_alpha": _r(self.alpha),
            "ended": self.ended,
            "end_reason": self.end_reason,
            "certified": self.certified,
            "contenders": self.contenders(),
            "eliminated": dict(sorted(self.eliminated.items())),
            "rounds": self.rounds,
        }


def choice_set(race: dict) -> list[str]:
    """What ``sample.pick: cheapest`` may choose from, by how a race (``Race.to_dict``) ended: after
    ``good_enough`` the strategies certified within epsilon of the best; after ``budget`` or ``exhausted``
    (no claim), or an older record's ``tie``, every contender; after ``winner``, the winner alone."""
    if race.get("ended") == "good_enough":
        return race["certified"]
    if race.get("ended") in ("budget", "exhausted", "tie"):
        return race["contenders"]
    return race.get("contenders", [])[:1]


def _r(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)
