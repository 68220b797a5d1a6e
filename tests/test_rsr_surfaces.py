"""Where the rank-surprisal ratios (``rsr``, ``sa_rsr``) appear: the summary (a ratio of means per strategy, with
a paired bootstrap interval), the console table, the report, ``sapray validate`` on records with their columns,
and ``plan``'s token counts (``sa_rsr`` adds no context; ``rsr`` PPL's, once)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from sapray.cli import main
from sapray.core import metrics
from sapray.core.reduce import summarize
from sapray.present.tables import render_table


def _score(qid: str, strategy: str, nll: float, rank: float, with_rsr: bool = True) -> dict:
    row = {"question_id": qid, "strategy": strategy, "sap": 2.0 + nll, "ppl": 2.5 + nll, "ifd": 0.9, "length": 10,
           "nll_sap": nll, "nll_ppl": nll + 0.1, "scored_tokens": 100}
    if with_rsr:
        row |= {"rank_sap": rank, "sa_rsr": rank / nll, "rank_ppl": rank + 1, "rsr": (rank + 1) / (nll + 0.1)}
    return row


SCORES = [_score(f"q{i}", s, nll, rank) for i in range(4)
          for s, nll, rank in (("a", 0.5 + 0.1 * i, 2.0 + i), ("b", 1.0 + 0.1 * i, 9.0 - i))]


def test_summary_reports_each_strategys_ratio_of_means_with_an_interval():
    per = summarize(SCORES, ["a", "b"], bootstrap=200)["per_strategy"]
    a = [s for s in SCORES if s["strategy"] == "a"]
    assert per["a"]["sa_rsr"] == pytest.approx(metrics.strategy_rsr(a, "sa_rsr"), abs=1e-6)
    assert per["a"]["sa_rsr"] == pytest.approx((2 + 3 + 4 + 5) / (0.5 + 0.6 + 0.7 + 0.8), abs=1e-6)
    assert per["a"]["sa_rsr"] != pytest.approx(sum(s["sa_rsr"] for s in a) / 4, abs=1e-3)  # not a mean of ratios
    lo, hi = per["a"]["ci95_rsr"]
    assert lo <= per["a"]["rsr"] <= hi and lo < hi
    plain = summarize([_score(s["question_id"], s["strategy"], s["nll_sap"], 1, False) for s in SCORES], ["a", "b"],
                      bootstrap=200)["per_strategy"]
    assert not {"rsr", "sa_rsr", "ci95_rsr", "ci95_sa_rsr"} & set(plain["a"])  # default summaries keep their keys


def test_console_table_shows_rsr_columns_only_where_scored():
    with_rsr = render_table(summarize(SCORES, ["a", "b"], bootstrap=0))
    assert "RSR" in with_rsr.splitlines()[0] and "SA-RSR" in with_rsr.splitlines()[0]
    plain = [_score(s["question_id"], s["strategy"], s["nll_sap"], 1, False) for s in SCORES]
    assert "RSR" not in render_table(summarize(plain, ["a", "b"], bootstrap=0))


def test_report_shows_rsr_in_the_ranking_and_per_question():
    from sapray.present.html_report import render_selection

    sel = summarize(SCORES, ["a", "b"], bootstrap=0)
    page = render_selection({"selection": sel, "scores": SCORES, "run": {}, "reject_groups": []})
    assert "<th>SA-RSR</th>" in page or ">SA-RSR<" in page
    assert 'id="distributions-rsr"' in page and 'id="distributions-sa_rsr"' in page
    assert "ratio of means" in page


def test_validate_reports_intervals_and_calibration_for_rsr_columns(tmp_path):
    # two (model, task) pairs x three strategies; RSR orders them as accuracy does, SAP the reverse on one pair
    rows = []
    for task, sap in (("gsm8k", (1.0, 2.0, 3.0)), ("math", (3.0, 2.0, 1.0))):
        for strategy, accuracy, s, r in zip("xyz", (0.6, 0.4, 0.2), sap, (5.0, 6.0, 8.0), strict=True):
            rows.append({"model": "m", "task": task, "strategy": strategy, "accuracy": accuracy, "sap": s,
                         "rsr": r, "sa_rsr": r + 0.5})
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = CliRunner().invoke(main, ["validate", "--results", str(path), "--json", str(tmp_path / "v.json"),
                                    "--resamples", "200"])
    assert out.exit_code == 0, out.output
    result = json.loads((tmp_path / "v.json").read_text())
    for name in ("rsr", "sa_rsr"):
        judged = result["metrics"][name]
        assert judged["lower_is_better"] and judged["weighted_rho"] == pytest.approx(1.0)
        assert judged["ci95"]["weighted_rho"] and judged["calibration"]["pairs"] == 6
        assert judged["versus_reference"]["reference"] == "sap"
        assert f"calibration of {name}" in out.output
    assert result["metrics"]["sap"]["weighted_rho"] == pytest.approx(0.0)


@pytest.mark.slow  # four plans, each reading the inputs: 30 to 60 s on two busy cores
def test_plan_counts_no_context_for_sa_rsr_and_ppls_for_rsr(tmp_path):
    from small_job import DATA_DIR, exemplar_rows, jsonl, small_config

    from sapray.config import load_config
    from sapray.jobs.plan import plan_job

    (tmp_path / "ex.jsonl").write_text(jsonl(exemplar_rows()))
    base = small_config(str(DATA_DIR / "questions.jsonl"), str(DATA_DIR / "candidates.jsonl"),
                        str(tmp_path / "ex.jsonl"), str(tmp_path / "out"))

    def tokens(names: list[str]) -> int:
        return plan_job(load_config({**base, "metrics": names}))["scoring"]["tokens"]["value"]

    sap, sap_ppl = tokens(["sap"]), tokens(["sap", "ppl"])
    assert sap < sap_ppl
    assert tokens(["sap", "sa_rsr"]) == sap
    assert tokens(["sap", "rsr"]) == tokens(["sap", "ppl", "rsr", "sa_rsr"]) == sap_ppl


def test_rank_by_must_be_scored_and_sap_need_not_be(tmp_path):
    from sapray.config import load_config

    raw = {"data": {"questions": "q.jsonl", "candidates": "c.jsonl"}}
    assert load_config(raw).sample.rank_by == "sap"
    assert load_config({**raw, "metrics": ["rsr"], "sample": {"rank_by": "rsr"}}).metrics == ["rsr"]
    with pytest.raises(ValueError, match="must include 'sa_rsr'"):
        load_config({**raw, "metrics": ["sap", "rsr"], "sample": {"rank_by": "sa_rsr"}})
    with pytest.raises(ValueError, match="must include 'sap'"):
        load_config({**raw, "metrics": ["rsr"]})


def test_summary_ranked_by_rsr_names_the_lowest_ratio_of_means():
    # b has the lower SAP everywhere but the higher RSR: ranked by RSR, a wins
    scores = [{**row, "sap": 1.0 if row["strategy"] == "b" else 2.0} for row in SCORES]
    by_sap = summarize(scores, ["a", "b"], bootstrap=100, min_questions=2)
    by_rsr = summarize(scores, ["a", "b"], bootstrap=100, min_questions=2, rank_by="rsr")
    assert by_sap["ranking"] == ["b", "a"] and by_rsr["ranking"] == ["a", "b"]
    w = by_rsr["winner"]
    assert w["rank_by"] == "rsr" and w["rsr"] == by_rsr["per_strategy"]["a"]["rsr"]
    assert w["margin_rsr"] == pytest.approx(by_rsr["per_strategy"]["b"]["rsr"] - w["rsr"], abs=1e-6)
    assert w["p_best"]["a"] > 0.5 and w["p_best"]["a"] + w["p_best"]["b"] == pytest.approx(1.0) and "mean_sap" not in w
    text = render_table(by_rsr)
    assert "winner: a (RSR " in text
    # a ratio of means has no paired mean difference: the margin and the win rate say what they are
    assert "(the difference of their ratios of means); a lower ratio on 50% of paired questions" in text
    assert "on their shared questions; more familiar on" in render_table(by_sap)
    unscored_sap = summarize([{k: v for k, v in r.items() if k != "sap"} | {"sap": float("nan")} for r in SCORES],
                             ["a", "b"], bootstrap=0, rank_by="sa_rsr")
    assert unscored_sap["per_strategy"]["a"]["n"] == 4 and unscored_sap["ranking"] == ["a", "b"]


def test_round_line_names_the_races_statistic():
    from sapray.present.lines import round_line

    record = {"round": 3, "questions": 30, "leader": "a", "mean_sap": {"a": 2.4, "b": 5.0}, "eliminated": ["b"],
              "intervals": {"b": {"lo": 1.2}}}
    line = round_line(record, 0.95, 0.1, "RSR")
    assert "leading a (RSR 2.400)" in line and "by >= 1.200 RSR" in line
    assert "(mean SAP 2.400)" in round_line(record, 0.95, 0.1) and "1.200 SAP" in round_line(record, 0.95, 0.1)


def test_the_ranking_table_keeps_its_columns_apart_whatever_the_values():
    """A random-weight model's SAP runs to five digits before the point, and names can be long: every cell
    stays a field of its own, and the table keeps its widths where values are small."""
    small = summarize(SCORES, ["a", "b"], bootstrap=50)
    lines = render_table(small).splitlines()
    assert lines[0] == ("rank  strategy                n  mean SAP              95% CI   median      PPL     IFD"
                        "      RSR   SA-RSR  length")
    large = [{**r, "strategy": "a_strategy_named_at_length" if r["strategy"] == "a" else "b",
              "sap": 40000.0 + r["sap"], "ppl": 45000.0 + r["ppl"]} for r in SCORES]
    table = render_table(summarize(large, ["a_strategy_named_at_length", "b"], bootstrap=50)).splitlines()
    for line in table[2:4]:
        # rank, name, n, mean SAP, CI low, CI high, median, PPL, IFD, RSR, SA-RSR, length
        assert len(line.split()) == 12, line
        assert float(line.split()[3]) > 40000
