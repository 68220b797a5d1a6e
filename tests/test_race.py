"""The race's stopping and elimination rule: hand-computed sequences, its error rate by simulation,
and a real race in the select job (hf engine, Ray Data).

The coverage test is the one that has teeth: peeking after every round, a naive per-round 95%
interval names a strategy that is not within epsilon of the best (a wrong winner, or a false "good
enough") far more often than 5% of the time, while the anytime-valid sequences with the union bound
stay within the stated error.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
import ray
from conftest import load_candidates, wait_until
from helpers import base_config, run, write_jsonl

from sapray.config import load_config
from sapray.core.race import Race, RaceRule, cs_radius, pair_alpha, rho2_for
from sapray.jobs.select import run_select, write_selection
from sapray.present.lines import round_line


def test_radius_by_hand():
    # alpha = 0.05, n_opt = 50: rho^2 = (-2 ln 0.05 + ln(-2 ln 0.05 + 1)) / 50
    rho2 = rho2_for(50, 0.05)
    assert rho2 == pytest.approx((5.991465 + math.log(6.991465)) / 50, rel=1e-6)
    # n = 20, sd = 2: 2 * sqrt(2 (20 rho2 + 1) / (400 rho2) * ln(sqrt(20 rho2 + 1) / 0.05))
    v = 20 * rho2 + 1
    assert cs_radius(20, 2.0, 0.05, rho2) == pytest.approx(2 * math.sqrt(2 * v / (400 * rho2) * math.log(
        math.sqrt(v) / 0.05)), rel=1e-12)
    assert cs_radius(1, 2.0, 0.05, rho2) == math.inf
    # six strategies: 15 pairs share 1 - confidence
    assert pair_alpha(0.95, 6) == pytest.approx(0.05 / 15)


def test_sequence_is_wider_than_a_fixed_interval_and_shrinks():
    alpha = pair_alpha(0.95, 6)
    rho2 = rho2_for(50, alpha)
    widths = [cs_radius(n, 1.0, alpha, rho2) for n in (10, 50, 200, 1000)]
    assert widths == sorted(widths, reverse=True)
    # wider than the fixed-size z interval at the same level, whatever it is tuned for: the replay
    # benchmark's floor on any valid race rests on this
    z = NormalDist().inv_cdf(1 - alpha / 2)
    for tuned_for in (10, 50, 200, 2000):
        rho2 = rho2_for(tuned_for, alpha)
        assert all(cs_radius(n, 1.0, alpha, rho2) > z / math.sqrt(n) for n in range(2, 20_000, 7))


def test_replay_floor_by_hand():
    path = Path(__file__).parents[1] / "benchmarks" / "bench_race.py"
    spec = importlib.util.spec_from_file_location("bench_race", path)
    bench_race = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_race)
    best = np.full(100, 5.0)
    worse = best + np.tile([0.1, 0.5], 50)  # paired differences: mean 0.3, sd 0.2 * sqrt(100 / 99)
    sap = np.column_stack([best, worse])
    excess = 0.3 - 0.02 * 5.0
    z = NormalDist().inv_cdf(1 - 0.01 / 2)
    assert bench_race.questions_to_separate(sap, 0, 1, 0.02, 0.01) == pytest.approx(
        (z * 0.2 * math.sqrt(100 / 99) / excess) ** 2, rel=1e-12)
    assert bench_race.questions_to_separate(sap, 0, 1, 0.07, 0.01) == math.inf  # within epsilon: never
    # certify 0 within 10% of 1: D' = 5 - 1.1 (5.1 or 5.5) = -0.61 or -1.05: mean -0.83, sd 0.22 * sqrt(100 / 99)
    assert bench_race.questions_to_certify(sap, 0, 1, 0.10, 0.01) == pytest.approx(
        (z * 0.22 * math.sqrt(100 / 99) / 0.83) ** 2, rel=1e-12)
    assert bench_race.questions_to_certify(sap, 1, 0, 0.05, 0.01) == math.inf  # 1 is 6% behind 0: never within 5%


def feed(race: Race, values: np.ndarray, start: int, stop: int) -> None:
    for i in range(start, stop):
        for name in race.remaining:
            race.add(f"q{i}", name, float(values[i, race.column[name]]))


def test_clear_loser_is_dropped_winner_declared_and_recorded():
    rng = np.random.default_rng(1)
    base = rng.lognormal(1.0, 0.3, size=(200, 1))
    values = base * np.array([1.0, 1.6, 2.0]) * rng.lognormal(0, 0.05, size=(200, 3))
    race = Race(["a", "b", "c"], RaceRule(epsilon=0.02, min_questions=10))
    for r in range(20):
        feed(race, values, 10 * r, 10 * r + 10)
        record = race.look(r + 1, tokens=100 * (r + 1), money=None)
        if race.ended:
            break
    assert race.ended == "winner" and race.remaining == ["a"]
    assert set(race.eliminated) == {"b", "c"}
    first = race.rounds[0]
    assert first["leader"] == "a" and first["questions"] == 10 and first["tokens"] == 100
    assert first["intervals"]["b"]["lo"] > first["margin"]  # dropped at the first look: above the margin
    assert record["eliminated"] or race.rounds[-2]["eliminated"]
    out = race.to_dict("confident")
    assert out["ended"] == "winner" and out["contenders"] == ["a"]


def test_no_decision_before_min_questions_and_equal_strategies_are_good_enough():
    values = np.tile(np.array([[2.0, 2.0, 9.0]]), (40, 1)) + np.random.default_rng(0).normal(0, 1e-3, (40, 3))
    race = Race(["a", "b", "c"], RaceRule(epsilon=0.05, min_questions=10))
    feed(race, values, 0, 5)
    race.look(1, 0, None)
    assert race.ended is None and race.remaining == ["a", "b", "c"]  # 5 < min_questions: no decision
    feed(race, values, 5, 10)
    record = race.look(2, 0, None)
    assert race.eliminated == {"c": 2}
    leader, other = race.contenders()
    assert race.ended == "good_enough" and race.certified == [leader, other]  # each within 5% of the other
    assert record["certificate"][other]["hi"] <= 0 and f"{leader} is good enough" in race.end_reason
    # the console line of the round says so
    assert round_line(record, 0.95, 0.05).endswith(f"; {leader} is good enough (within 5% of the best, 95% "
                                                   "confidence)")
    assert race.to_dict("confident")["certified"] == [leader, other]


def test_certificate_by_hand():
    # p is 5% above s on every question, with spread: D' = SAP(p) - 1.1 SAP(s) = 1.05 s - 1.1 s = -0.05 s
    s = np.tile([2.0, 4.0], 20)
    values = np.column_stack([1.05 * s, s])
    race = Race(["p", "s"], RaceRule(epsilon=0.10))
    feed(race, values, 0, 40)
    cert = race.certificate(np.array(race.sap), "p", "s")
    d = -0.05 * s
    assert cert["n"] == 40 and cert["diff"] == pytest.approx(-0.15)
    assert cert["hi"] == pytest.approx(-0.15 + cs_radius(40, float(d.std(ddof=1)), race.alpha, race.rho2), rel=1e-12)
    assert race.alpha == pytest.approx(0.05 / 2)  # two strategies: 2 (K - 1) = 2 one-sided events
    race.look(1, 0, None)
    assert race.ended == "good_enough" and race.certified == ["s", "p"]  # s leads; p, 5% behind, is within 10%
    # with epsilon 1%, p is not within epsilon of s: only s is certified
    tight = Race(["p", "s"], RaceRule(epsilon=0.01))
    feed(tight, values, 0, 40)
    assert tight.certificate(np.array(tight.sap), "p", "s")["hi"] > 0
    tight.look(1, 0, None)
    assert tight.certified == ["s"] or tight.ended == "winner"


def test_union_bound_covers_the_events_that_involve_the_best():
    # max(K (K - 1) / 2 pairs, 2 (K - 1) one-sided events): the pairwise share from four strategies on
    assert [pair_alpha(0.95, k) * k for k in (2, 3)] == [pytest.approx(0.05), pytest.approx(0.05 * 3 / 4)]
    assert pair_alpha(0.95, 4) == pytest.approx(0.05 / 6) and pair_alpha(0.95, 6) == pytest.approx(0.05 / 15)


def test_cheapest_pick_follows_the_races_end():
    from types import SimpleNamespace

    from sapray.core.race import choice_set
    from sapray.dataplane.runs import pick_for_full_set

    costs = {"a": {"questions": 10, "money": 1.0, "prompt_tokens": 0, "completion_tokens": 0},
             "b": {"questions": 10, "money": 0.5, "prompt_tokens": 0, "completion_tokens": 0},
             "c": {"questions": 10, "money": 0.1, "prompt_tokens": 0, "completion_tokens": 0}}
    race = {"ended": "good_enough", "certified": ["a", "b"], "contenders": ["a", "b", "c"]}
    summary = {"winner": {"strategy": "a"}, "race": race, "strategies": ["a", "b", "c"]}
    cheapest, lowest = (SimpleNamespace(sample=SimpleNamespace(pick=p), strategy=lambda name: name)
                        for p in ("cheapest", "lowest_sap"))
    assert choice_set(race) == ["a", "b"]
    assert pick_for_full_set(cheapest, summary, costs) == "b"  # c is cheaper, but not shown good enough
    assert pick_for_full_set(lowest, summary, costs) == "a"
    for ended, pick in (("budget", "c"), ("exhausted", "c"), ("tie", "c"), ("winner", "a")):  # tie: older records
        race.update(ended=ended, certified=["a"] if ended == "winner" else [])
        assert pick_for_full_set(cheapest, summary, costs) == pick


def test_fixed_design_records_but_never_decides():
    values = np.tile(np.array([[1.0, 50.0]]), (30, 1)) + np.random.default_rng(0).normal(0, 0.01, (30, 2))
    race = Race(["a", "b"], RaceRule())
    feed(race, values, 0, 30)
    record = race.look(1, 0, None, decide=False)
    assert race.ended is None and race.remaining == ["a", "b"] and record["eliminated"] == []
    assert record["intervals"]["b"]["lo"] > 40


class NaiveRace(Race):
    """The same race with per-round 95% normal intervals: no correction for peeking or for pairs."""

    def radius(self, n: int, sd: float) -> float:
        return 1.96 * sd / math.sqrt(n)


# Per strategy (log-median, log-sd) of a log-normal SAP per question, times a shared question effect.
# At epsilon 2%: s0 and s1 are tied within epsilon (the best two); s2 is a trap: usually lower than both,
# but its heavy tail makes its mean 3% worse, beyond epsilon; s5 is far behind.
SPEC = [(0.0, 0.2), (0.005, 0.2), (-0.45, 1.0), (0.1, 0.2), (0.15, 0.2), (0.5, 0.2)]
# At the default epsilon (10%): s1 is 3% behind s0, within epsilon; the trap s2's mean is 13% worse.
SPEC_DEFAULT = [(0.0, 0.2), (0.03, 0.2), (-0.36, 1.0), (0.15, 0.2), (0.3, 0.2), (0.5, 0.2)]


def simulate(race_cls: type[Race], spec: list[tuple[float, float]], epsilon: float, seed: int,
             round_size: int = 10, max_questions: int = 300) -> tuple[str, bool]:
    """One race peeking after every round; (how it ended, whether its claim was false).

    A claim is false when a strategy it names (the winner, or any strategy certified good enough) has a
    true mean SAP above (1 + epsilon) times the best true mean."""
    rng = np.random.default_rng(seed)
    logm, logsd = np.array(spec).T
    values = np.exp(logm + logsd * rng.normal(size=(max_questions, len(spec))) + rng.normal(0, 0.3, (max_questions, 1)))
    means = np.exp(logm + logsd**2 / 2)  # the true means
    names = [f"s{j}" for j in range(len(spec))]
    good = {names[j] for j in range(len(spec)) if means[j] <= means.min() * (1 + epsilon)}
    assert good == {"s0", "s1"} and means[2] > means.min() * (1 + epsilon)
    race = race_cls(names, RaceRule(confidence=0.95, epsilon=epsilon))
    for r in range(max_questions // round_size):
        feed(race, values, r * round_size, (r + 1) * round_size)
        race.look(r + 1, 0, None)
        if race.ended:
            assert race.certified and race.certified[0] == race.contenders()[0]  # the leader first
            return race.ended, bool(set(race.certified) - good)
    return "budget", False


@pytest.mark.parametrize("spec, epsilon", [(SPEC, 0.02), (SPEC_DEFAULT, RaceRule().epsilon)])
def test_false_claim_rate_holds_under_peeking_and_naive_intervals_break_it(spec, epsilon):
    races = 1000
    bound = 0.05 + 3 * math.sqrt(0.05 * 0.95 / races)
    outcomes = [simulate(Race, spec, epsilon, seed) for seed in range(races)]
    false = sum(bad for _, bad in outcomes) / races
    naive = sum(bad for _, bad in (simulate(NaiveRace, spec, epsilon, seed) for seed in range(races))) / races
    assert false <= bound, f"anytime-valid race: a false claim in {false:.1%} of races (bound {bound:.1%})"
    assert naive > bound, f"the naive rule should break the bound, got {naive:.1%}"
    ends = [ended for ended, _ in outcomes]
    assert ends.count("good_enough") >= 10 and len(ends) - ends.count("budget") >= 20  # the race does claim


def garbled(text: str) -> str:
    """The same characters, shuffled per word: a response no model finds familiar."""
    import random

    rng = random.Random(len(text))
    return " ".join("".join(rng.sample(w, len(w))) for w in text.split()[::-1])


@pytest.mark.slow
def test_race_drops_a_loser_and_never_scores_it_again(ray_local, exemplar_file, tmp_path):
    keep = ("human", "175b_verification")
    rows = [c for c in load_candidates() if c["strategy"] in keep]
    rows += [{**c, "strategy": "garbled", "response": garbled(c["response"])}
             for c in load_candidates() if c["strategy"] == "human"]
    candidates = write_jsonl(tmp_path / "candidates.jsonl", rows)
    lines: list[str] = []
    raw = base_config(exemplar_file, str(tmp_path / "out"), **{
        "data.candidates": candidates, "metrics": ["sap"],
        "sample": {"max_questions": 10, "round_size": 5, "min_questions": 5, "seed": 7}})
    cfg = load_config(raw)
    result = run_select(cfg, on_round=lines.append)
    race = result.summary["race"]
    assert race["stop"] == "confident" and race["eliminated"] == {"garbled": 1}
    first = race["rounds"][0]
    assert first["eliminated"] == ["garbled"] and first["intervals"]["garbled"]["lo"] > first["margin"]
    assert "round 1: 5 questions" in lines[0] and "dropped garbled" in lines[0]
    scored = [s for s in result.scores if s["strategy"] == "garbled"]
    assert len(scored) == 5  # the first round only
    # SAP only: one request per candidate; the loser's requests stop after round 1
    assert result.counts["requests_scored"] == len(result.scores) == 15 + 10 * (len(race["rounds"]) - 1)
    counts = result.counts
    assert counts["not_sampled_eliminated"] == counts["questions_sampled"] - 5
    assert counts["scored"] + counts["rejected"] + counts["not_sampled"] == counts["candidate_rows_in"] == 60
    assert result.summary["ranking"][-1] == "garbled"
    assert len(race["rounds"]) > 1 and len(result.placement) == 1  # one engine actor for every round
    assert all(math.isnan(s["ppl"]) for s in result.scores)  # PPL was not scored
    cost = race["cost"]
    assert cost["garbled"]["questions"] == 5 and cost["garbled"]["scoring_tokens_saved"] > 0
    # same config, same race (a strategy dropped), same bytes
    write_selection(cfg.output, result, cfg.model_dump())
    again = tmp_path / "again"
    run({**raw, "output": str(again)})
    assert (again / "selection.json").read_bytes() == (tmp_path / "out" / "selection.json").read_bytes()
    # the job's end freed its actors: the next job gets the CPUs
    wait_until(lambda: ray.available_resources().get("CPU") == ray.cluster_resources()["CPU"],
               "the session's actors to go")


# Ranked by a rank-surprisal ratio (a ratio of means): per strategy (k, sd) with a response's mean surprisal
# u_i log-normal around 1.5 (its question's effect shared by every strategy) and its mean clipped rank
# r_i = k u_i w_i, w_i log-normal(0, sd): the true RSR is k exp(sd^2 / 2). At epsilon 10%: s1 is 3% behind s0;
# the trap s2 has the lowest typical ratio (k = 0.85) but a heavy tail makes its RSR 13% worse, beyond epsilon.
RSR_SPEC = [(1.0, 0.2), (1.03, 0.2), (0.85, 0.78), (1.15, 0.2), (1.3, 0.2), (1.6, 0.2)]


def simulate_ratio(race_cls: type[Race], seed: int, epsilon: float = 0.10, round_size: int = 10,
                   max_questions: int = 300) -> tuple[str, bool]:
    """One RSR race peeking after every round (``Race.add`` with denominators); (how it ended, whether its
    claim was false: a named strategy's true RSR above (1 + epsilon) times the best)."""
    rng = np.random.default_rng(seed)
    k, sd = np.array(RSR_SPEC).T
    u = np.exp(np.log(1.5) + 0.3 * rng.normal(size=(max_questions, len(k))) + rng.normal(0, 0.3, (max_questions, 1)))
    r = k * u * np.exp(sd * rng.normal(size=u.shape))
    truth = k * np.exp(sd**2 / 2)
    names = [f"s{j}" for j in range(len(k))]
    good = {names[j] for j in range(len(k)) if truth[j] <= truth.min() * (1 + epsilon)}
    assert good == {"s0", "s1"} and truth[2] > truth.min() * (1 + epsilon)
    race = race_cls(names, RaceRule(confidence=0.95, epsilon=epsilon), metric="rsr")
    for step in range(max_questions // round_size):
        for i in range(step * round_size, (step + 1) * round_size):
            for j, name in enumerate(names):
                if name in race.remaining:
                    race.add(f"q{i}", name, r[i, j], u[i, j])
        race.look(step + 1, 0, None)
        if race.ended:
            return race.ended, bool(set(race.certified) - good)
    return "budget", False


def test_ratio_race_ranks_by_the_ratio_of_means():
    race = Race(["a", "b"], metric="sa_rsr")
    for i, (ra, ua, rb, ub) in enumerate([(2.0, 1.0, 9.0, 1.0), (10.0, 4.0, 1.0, 1.0)]):
        race.add(f"q{i}", "a", ra, ua)
        race.add(f"q{i}", "b", rb, ub)
    record = race.look(1, 0, None, decide=False)
    # a: 12 / 5 = 2.4; b: 10 / 2 = 5 (means of the per-response ratios would say a 2.25, b 5)
    assert record["mean_sap"] == {"a": 2.4, "b": 5.0} and race.contenders() == ["a", "b"]
    assert record["intervals"]["b"]["diff"] == pytest.approx(2.6)
    assert race.to_dict("confident")["rank_by"] == "sa_rsr" and "rank_by" not in Race(["a"]).to_dict("fixed")


@pytest.mark.slow  # 800 simulated races: about 40 s on two busy cores (3.2% false claims, naive 24%, seeds 0-399)
def test_ratio_race_false_claim_rate_holds_under_peeking_and_naive_intervals_break_it():
    races = 400
    bound = 0.05 + 3 * math.sqrt(0.05 * 0.95 / races)
    outcomes = [simulate_ratio(Race, seed) for seed in range(races)]
    false = sum(bad for _, bad in outcomes) / races
    naive = sum(bad for _, bad in (simulate_ratio(NaiveRace, seed) for seed in range(races))) / races
    assert false <= bound, f"anytime-valid RSR race: a false claim in {false:.1%} of races (bound {bound:.1%})"
    assert naive > bound, f"the naive rule should break the bound, got {naive:.1%}"
    ends = [ended for ended, _ in outcomes]
    assert ends.count("good_enough") + ends.count("winner") >= 20  # the race does claim
