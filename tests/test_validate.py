"""sapray validate (METHOD.md §3) on hand-computed cases: Spearman with average ranks, top-1 accuracy,
subsets averaged, the sigma-weighted rho, the upper bound, and the errors a user can make."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from sapray.cli import main
from sapray.core.validation import ValidationError, average_ranks, parse_selection_arg, spearman, validate
from sapray.jobs.validate import read_results as read

# Pair (m, gsm8k): four strategies, a tie on the accuracy side (a and b both 0.5).
#   SAP (lower is better) orders a > b > c > d: ranks 4, 3, 2, 1; accuracy ranks 3.5, 3.5, 2, 1.
#   Deviations from 2.5: (1.5, .5, -.5, -1.5) and (1, 1, -.5, -1.5): sxy = 4.5, sxx = 5, syy = 4.5,
#   rho = 4.5 / sqrt(22.5) = sqrt(0.9). Top-1: a, 0.5. sd(.5, .5, .3, .1; ddof=1) = sqrt(0.11 / 3).
# Pair (m, math): two strategies; SAP prefers x, accuracy prefers y: rho = -1, top-1 = 0.2,
#   sd(.2, .6) = sqrt(0.08).
TIED = [("m", "gsm8k", "a", 0.5, 1.0), ("m", "gsm8k", "b", 0.5, 2.0), ("m", "gsm8k", "c", 0.3, 3.0),
        ("m", "gsm8k", "d", 0.1, 4.0), ("m", "math", "x", 0.2, 2.0), ("m", "math", "y", 0.6, 3.0)]


def records(rows: list[tuple], metric: str = "sap", subset: bool = False) -> list[dict]:
    out = []
    for r in rows:
        record = {"model": r[0], "task": r[1], "strategy": r[2], "accuracy": r[3], metric: r[4]}
        if subset:
            record["subset"] = r[5]
        out.append(record)
    return out


def write(path: Path, rows: list[dict]) -> str:
    if path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_average_ranks_and_spearman():
    assert average_ranks([0.5, 0.5, 0.3, 0.1]) == [3.5, 3.5, 2.0, 1.0]
    assert average_ranks([2, 2, 2]) == [2.0, 2.0, 2.0]
    assert spearman([-1, -2, -3, -4], [0.5, 0.5, 0.3, 0.1]) == pytest.approx(math.sqrt(0.9), abs=1e-12)
    assert spearman([1, 2], [2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [0.4, 0.4, 0.4]) is None  # all accuracies tied: undefined
    assert spearman([7, 7, 7], [1, 2, 3]) is None  # all metric values tied: undefined


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_ties_two_strategy_pair_and_sd_weighting(tmp_path, suffix):
    result = validate(read(write(tmp_path / f"results{suffix}", records(TIED))))
    sap = result["metrics"]["sap"]
    gsm8k, math_pair = sap["pairs"]
    assert (gsm8k["task"], math_pair["task"]) == ("gsm8k", "math")
    assert gsm8k["rho"] == pytest.approx(math.sqrt(0.9), abs=1e-12)
    assert gsm8k["top1_accuracy"] == 0.5 and gsm8k["top1_strategies"] == ["a"]
    assert gsm8k["sd_accuracy"] == pytest.approx(math.sqrt(0.11 / 3), abs=1e-12)
    assert math_pair["rho"] == pytest.approx(-1.0) and math_pair["top1_accuracy"] == 0.2
    assert math_pair["sd_accuracy"] == pytest.approx(math.sqrt(0.08), abs=1e-12)
    sd1, sd2 = math.sqrt(0.11 / 3), math.sqrt(0.08)
    assert sap["weighted_rho"] == pytest.approx((math.sqrt(0.9) * sd1 - sd2) / (sd1 + sd2), abs=1e-12)
    assert sap["weighted_rho"] == pytest.approx(-0.2133, abs=1e-4)  # the number by hand
    assert sap["mean_rho"] == pytest.approx((math.sqrt(0.9) - 1) / 2, abs=1e-12)
    assert sap["mean_top1_accuracy"] == pytest.approx(0.35)
    assert result["upper_bound"] == pytest.approx(0.55)  # (0.5 + 0.6) / 2
    assert sap["lower_is_better"] is True and result["skipped"] == [] and sap["rho_undefined"] == []


def test_metric_where_higher_is_better(tmp_path):
    # reward a .9 > c .5 > b .1 and accuracy a .7 > c .4 > b .2: the same order, rho = +1 (it would be -1
    # if reward were read as lower-is-better); CAR likewise.
    rows = [("m", "t", "a", 0.7, 0.9), ("m", "t", "b", 0.2, 0.1), ("m", "t", "c", 0.4, 0.5)]
    for metric in ("reward", "car"):
        result = validate(read(write(tmp_path / f"{metric}.jsonl", records(rows, metric))))
        judged = result["metrics"][metric]
        assert judged["lower_is_better"] is False
        assert judged["pairs"][0]["rho"] == pytest.approx(1.0)
        assert judged["pairs"][0]["top1_accuracy"] == 0.7 and judged["pairs"][0]["top1_strategies"] == ["a"]
    # and a lower-is-better metric in reverse order agrees just as much
    flipped = [(m, t, s, acc, -v) for m, t, s, acc, v in rows]
    assert validate(read(write(tmp_path / "ppl.jsonl", records(flipped, "ppl"))))["metrics"]["ppl"][
        "pairs"][0]["rho"] == pytest.approx(1.0)


def test_subsets_ranked_separately_and_averaged(tmp_path):
    # Slice s1: SAP a 1 < b 2 < c 3, accuracy a .6 > b .4 > c .2: rho 1, top-1 a = .6.
    # Slice s2: SAP b 1 < a 2 < c 3: metric ranks (a 2, b 3, c 1), accuracy ranks (3, 2, 1);
    #   deviations (0, 1, -1) and (1, 0, -1): rho = 1 / 2; top-1 b = .4.
    # The pair: rho (1 + .5) / 2 = .75, top-1 (.6 + .4) / 2 = .5, sd(.6, .4, .2) = .2.
    rows = [("m", "t", "a", 0.6, 1.0, "s1"), ("m", "t", "b", 0.4, 2.0, "s1"), ("m", "t", "c", 0.2, 3.0, "s1"),
            ("m", "t", "a", 0.6, 2.0, "s2"), ("m", "t", "b", 0.4, 1.0, "s2"), ("m", "t", "c", 0.2, 3.0, "s2")]
    result = validate(read(write(tmp_path / "slices.csv", records(rows, subset=True))))
    pair = result["metrics"]["sap"]["pairs"][0]
    assert [s["rho"] for s in pair["subsets"]] == [pytest.approx(1.0), pytest.approx(0.5)]
    assert [s["top1_strategies"] for s in pair["subsets"]] == [["a"], ["b"]]
    assert pair["rho"] == pytest.approx(0.75) and pair["top1_accuracy"] == pytest.approx(0.5)
    assert pair["sd_accuracy"] == pytest.approx(0.2)
    assert result["metrics"]["sap"]["weighted_rho"] == pytest.approx(0.75)  # one pair: its own rho
    assert result["pairs"][0]["subsets"] == 2 and result["upper_bound"] == pytest.approx(0.6)


def test_tie_at_the_top_of_the_metric_takes_the_mean_accuracy():
    # SAP a 1 = b 1 < c 2; accuracy a .3, b .5, c .1. Top-1: mean(.3, .5) = .4.
    # Metric ranks (2.5, 2.5, 1), accuracy ranks (2, 3, 1): sxy = 1.5, sxx = 1.5, syy = 2, rho = 1.5 / sqrt(3).
    from sapray.core.validation import rows_from_records

    rows = rows_from_records([(f"t:{i}", r) for i, r in enumerate(records(
        [("m", "t", "a", 0.3, 1.0), ("m", "t", "b", 0.5, 1.0), ("m", "t", "c", 0.1, 2.0)]), start=1)], "t")
    pair = validate(rows)["metrics"]["sap"]["pairs"][0]
    assert pair["top1_accuracy"] == pytest.approx(0.4) and pair["top1_strategies"] == ["a", "b"]
    assert pair["rho"] == pytest.approx(1.5 / math.sqrt(3))


def test_undefined_rho_leaves_the_weighted_mean_with_its_weight(tmp_path):
    # Pair p1: rho 1, sd .2. Pair p2: every SAP tied, so rho is undefined although sd(.1, .9) > 0: the
    # weighted rho is p1's alone (1), not 1 * .2 / (.2 + sd2). p2's top-1 is the mean of its tied top (.5).
    rows = [("m", "p1", "a", 0.6, 1.0), ("m", "p1", "b", 0.4, 2.0), ("m", "p1", "c", 0.2, 3.0),
            ("m", "p2", "a", 0.1, 5.0), ("m", "p2", "b", 0.9, 5.0),
            ("m", "p3", "a", 0.3, 1.0), ("m", "p3", "b", 0.3, 2.0)]  # all accuracies tied: undefined, sd 0
    sap = validate(read(write(tmp_path / "r.jsonl", records(rows))))["metrics"]["sap"]
    assert [p["rho"] for p in sap["pairs"]] == [pytest.approx(1.0), None, None]
    assert sap["rho_undefined"] == [{"model": "m", "task": "p2"}, {"model": "m", "task": "p3"}]
    assert sap["weighted_rho"] == pytest.approx(1.0) and sap["mean_rho"] == pytest.approx(1.0)
    assert sap["mean_top1_accuracy"] == pytest.approx((0.6 + 0.5 + 0.3) / 3)


def test_pair_with_one_strategy_is_skipped_and_reported(tmp_path):
    rows = [*TIED, ("m", "lonely", "a", 0.9, 1.0)]
    path = write(tmp_path / "r.csv", records(rows))
    result = validate(read(path))
    assert [p["task"] for p in result["pairs"]] == ["gsm8k", "math"]
    assert result["skipped"] == [{"model": "m", "task": "lonely", "subset": None,
                                  "reason": "1 strategy: cannot rank"}]
    assert result["upper_bound"] == pytest.approx(0.55)  # the skipped pair does not count
    out = CliRunner().invoke(main, ["validate", "--results", path])
    assert out.exit_code == 0, out.output
    assert "skipped: model m, task lonely: 1 strategy: cannot rank" in out.output


def test_metric_missing_in_some_rows_is_an_error_naming_them(tmp_path):
    rows = records(TIED)
    rows[2]["sap"] = None
    rows[4]["sap"] = None
    path = write(tmp_path / "r.csv", rows)
    with pytest.raises(ValidationError, match=r"metric 'sap' has no value in 2 row\(s\): .*r\.csv:3, .*r\.csv:5"):
        validate(read(path))
    out = CliRunner().invoke(main, ["validate", "--results", path])
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert "r.csv:3" in out.output and "r.csv:5" in out.output
    # a key missing from JSON lines is the same error; --metrics leaves the metric out
    jsonl_rows = records(TIED)
    for r in jsonl_rows:
        r["ppl"] = 1.0
    del jsonl_rows[1]["ppl"]
    path = write(tmp_path / "r.jsonl", jsonl_rows)
    with pytest.raises(ValidationError, match=r"metric 'ppl' has no value in 1 row\(s\): .*r\.jsonl:2"):
        validate(read(path))
    assert list(validate(read(path), ["sap"])["metrics"]) == ["sap"]


@pytest.mark.parametrize("change, message", [
    (lambda rows: [{k: v for k, v in r.items() if k != "accuracy"} for r in rows], r"missing column.*'accuracy'"),
    (lambda rows: [{k: v for k, v in r.items() if k != "sap"} for r in rows], "no metric column"),
    (lambda rows: [*rows, dict(rows[0])], "duplicate of"),
    (lambda rows: [{**rows[0], "accuracy": "high"}, *rows[1:]], "accuracy must be a number"),
])
def test_bad_tables_are_errors(tmp_path, change, message):
    with pytest.raises(ValidationError, match=message):
        validate(read(write(tmp_path / "r.jsonl", change(records(TIED)))))


def test_selection_files_with_an_accuracy_table(tmp_path):
    def selection(means: dict[str, float]) -> str:
        per = {s: {"n": 4, "mean_sap": v, "mean_ppl": 10 - v, "mean_ifd": 0.5, "mean_length": 100.0}
               for s, v in means.items()}
        return json.dumps({"model": "smollm2", "per_strategy": per, "ranking": sorted(means, key=means.get)})

    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "selection.json").write_text(selection({"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}))
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "selection.json").write_text(selection({"x": 2.0, "y": 3.0}))
    # TIED's accuracies, keyed by task and strategy
    accuracy = write(tmp_path / "acc.csv", [{"task": {"gsm8k": "g", "math": "h"}[t], "strategy": s, "accuracy": acc}
                                            for _, t, s, acc, _ in TIED])
    assert parse_selection_arg(f"g={tmp_path}/g/selection.json") == ("g", None, f"{tmp_path}/g/selection.json")
    assert parse_selection_arg("g:s1=s3://b/x/selection.json") == ("g", "s1", "s3://b/x/selection.json")
    with pytest.raises(ValidationError, match="TASK=PATH"):
        parse_selection_arg("s3://b/x/selection.json")
    json_out = tmp_path / "validation.json"
    out = CliRunner().invoke(main, ["validate", "--selection", f"g={tmp_path}/g/selection.json",
                                    "--selection", f"h={tmp_path}/h/selection.json", "--accuracy", accuracy,
                                    "--metrics", "sap,ppl,ifd", "--json", str(json_out)])
    assert out.exit_code == 0, out.output
    result = json.loads(json_out.read_text())
    # the same numbers as the results table TIED: mean SAP per strategy is the metric
    sd1, sd2 = math.sqrt(0.11 / 3), math.sqrt(0.08)
    assert result["metrics"]["sap"]["weighted_rho"] == pytest.approx((math.sqrt(0.9) * sd1 - sd2) / (sd1 + sd2))
    assert result["metrics"]["ppl"]["pairs"][1]["rho"] == pytest.approx(1.0)  # ppl 8 (x) > 7 (y): y first
    assert result["metrics"]["ifd"]["rho_undefined"] == [{"model": "smollm2", "task": "g"},
                                                         {"model": "smollm2", "task": "h"}]
    assert "sap" in out.output and "upper bound (mean best accuracy): 0.5500" in out.output
    # a scored strategy without an accuracy is an error naming it
    write(tmp_path / "short.csv", [{"strategy": "x", "accuracy": 0.2}])
    out = CliRunner().invoke(main, ["validate", "--selection", f"h={tmp_path}/h/selection.json",
                                    "--accuracy", str(tmp_path / "short.csv")])
    assert out.exit_code == 1 and "no accuracy for strategy 'y'" in out.output


def test_cli_json_and_html(tmp_path):
    path = write(tmp_path / "r.parquet", records(TIED))
    out = CliRunner().invoke(main, ["validate", "--results", path, "--json", str(tmp_path / "v.json"),
                                    "--html", str(tmp_path / "v.html")])
    assert out.exit_code == 0, out.output
    assert json.loads((tmp_path / "v.json").read_text())["upper_bound"] == pytest.approx(0.55)
    page = (tmp_path / "v.html").read_text()
    assert "σ-weighted ρ" in page and "<svg" in page and "<script" not in page
    assert CliRunner().invoke(main, ["validate"]).exit_code == 2  # neither --results nor --selection


# ---------- how sure: bootstrap intervals over (model, task) pairs ----------

# TIED with a second metric that reverses SAP on gsm8k (rho -sqrt(0.9)) and agrees on math (rho +1).
PPL = {"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0, "x": 3.0, "y": 2.0}


def test_bootstrap_intervals_by_hand(tmp_path):
    from sapray.core.uncertainty import ratio_resamples

    rows = [{**r, "ppl": PPL[r["strategy"]]} for r in records(TIED)]
    result = validate(read(write(tmp_path / "r.jsonl", rows)))
    sap, ppl = result["metrics"]["sap"], result["metrics"]["ppl"]
    sd1, sd2, r1 = math.sqrt(0.11 / 3), math.sqrt(0.08), math.sqrt(0.9)
    assert ppl["weighted_rho"] == pytest.approx((-r1 * sd1 + sd2) / (sd1 + sd2), abs=1e-12)
    # Resampling two pairs draws (gsm8k, gsm8k) w.p. 1/4, one of each w.p. 1/2, (math, math) w.p. 1/4.
    counts = np.array([[2, 0], [1, 1], [0, 2]])
    rho, sd = np.array([r1, -1.0]), np.array([sd1, sd2])
    assert ratio_resamples(rho * sd, sd, counts) == pytest.approx([r1, sap["weighted_rho"], -1.0], abs=1e-12)
    # Each outcome holds a quarter or more of the resamples, so the 2.5th and 97.5th percentiles are the
    # extreme outcomes exactly: weighted and mean rho in [-1, sqrt(.9)], top-1 (.5 and .2) in [.2, .5].
    assert sap["ci95"] == {"weighted_rho": [-1.0, round(r1, 6)], "mean_rho": [-1.0, round(r1, 6)],
                           "mean_top1_accuracy": [0.2, 0.5]}
    assert ppl["ci95"]["mean_top1_accuracy"] == [0.1, 0.6]  # ppl's first: d (.1) and y (.6)
    # sap - ppl: 2 sqrt(.9) on (gsm8k, gsm8k), -2 on (math, math), and twice sap's own weighted rho (< 0) on
    # one of each: P(difference > 0) is P(gsm8k drawn twice) = 1/4 (10,000 resamples: within 3 SE).
    versus = ppl["versus_reference"]
    assert versus["reference"] == "sap" and "versus_reference" not in sap
    w = versus["weighted_rho"]
    assert w["difference"] == pytest.approx(2 * sap["weighted_rho"], abs=1e-6)
    assert w["ci95"] == [-2.0, round(2 * r1, 6)]
    assert abs(w["p_positive"] - 0.25) < 3 * math.sqrt(0.25 * 0.75 / 10_000)
    assert versus["mean_top1_accuracy"]["difference"] == pytest.approx(0.0, abs=1e-12)  # .35 - .35
    u = result["uncertainty"]
    assert (u["resamples"], u["seed"], u["level"], u["reference"]) == (10_000, 0, 0.95, "sap")
    assert "Efron & Tibshirani" in u["method"]
    # seeded: the same seed gives the same numbers, another seed moves only what is random
    rows_read = read(write(tmp_path / "r.jsonl", rows))
    assert validate(rows_read) == result
    other = validate(rows_read, seed=1)["metrics"]["ppl"]
    assert other["ci95"] == ppl["ci95"] and other["versus_reference"]["weighted_rho"]["p_positive"] != w["p_positive"]
    # another reference, and one that is not judged
    assert validate(rows_read, reference="ppl")["metrics"]["sap"]["versus_reference"]["weighted_rho"][
        "difference"] == pytest.approx(-w["difference"], abs=1e-6)
    with pytest.raises(ValidationError, match="reference metric 'ifd' is not among"):
        validate(rows_read, reference="ifd")


# Three (model, task) groups; (SAP, accuracy) per strategy. Pairs by hand (gap relative to the lower SAP):
#   t1: a-b gap .5% [0,1%) tie on accuracy 1/2; a-c gap 50% [50%,) agree; b-c gap .495/1.005 [20,50%) agree
#   t2: x-y gap 5% [5,10%) disagree (gain -.4); x-z gap 5% [5,10%) agree (+.1); y-z tied on SAP: left out
#   t3: p-q gap 60% [50%,) disagree (-.4); p-r gap 70% [50%,) disagree (-.3); q-r gap .1/1.6 [5,10%) agree (+.1)
GROUPS = [("t1", "a", 1.0, 0.5), ("t1", "b", 1.005, 0.5), ("t1", "c", 1.5, 0.3),
          ("t2", "x", 2.0, 0.2), ("t2", "y", 2.1, 0.6), ("t2", "z", 2.1, 0.1),
          ("t3", "p", 1.0, 0.1), ("t3", "q", 1.6, 0.5), ("t3", "r", 1.7, 0.4)]


def test_calibration_table_by_hand(tmp_path):
    from sapray.core.uncertainty import ratio_resamples

    rows = [{"model": "m", "task": t, "strategy": s, "accuracy": acc, "sap": v} for t, s, v, acc in GROUPS]
    table = validate(read(write(tmp_path / "r.csv", rows)))["metrics"]["sap"]["calibration"]
    assert table["pairs"] == 8 and table["metric_ties"] == 1 and table["edges"] == [0.01, 0.02, 0.05, 0.1, 0.2, 0.5]
    got = {(b["from"], b["to"]): (b["pairs"], b["groups"], b["agreement"], b["accuracy_gain"])
           for b in table["buckets"]}
    assert got == {
        (0.0, 0.01): (1, 1, 0.5, 0.0),
        (0.01, 0.02): (0, 0, None, None),
        (0.02, 0.05): (0, 0, None, None),
        (0.05, 0.1): (3, 2, round(2 / 3, 6), round((-0.4 + 0.1 + 0.1) / 3, 6)),
        (0.1, 0.2): (0, 0, None, None),
        (0.2, 0.5): (1, 1, 1.0, 0.2),
        (0.5, None): (3, 2, round(1 / 3, 6), round((0.2 - 0.4 - 0.3) / 3, 6)),
    }
    # The bucket from 50% resamples whole groups: t1 brings (1 agreeing of 1), t3 (0 of 2). Drawing t1 and t3
    # once: 1/3; t1 thrice: 1; t3 thrice: 0; t1 twice and t3 once: 2/4. A pair-level bootstrap would not give these.
    agree, n = np.array([1.0, 0.0, 0.0]), np.array([1.0, 0.0, 2.0])
    assert ratio_resamples(agree, n, np.array([[1, 1, 1], [3, 0, 0], [0, 0, 3], [2, 0, 1], [0, 3, 0]])) == \
        pytest.approx([1 / 3, 1.0, 0.0, 0.5, np.nan], nan_ok=True)
    # 0 holds whenever t3 is drawn and t1 is not (7/27 of resamples), 1 when t1 is and t3 is not (7/27):
    # the percentile interval is [0, 1]
    last = table["buckets"][-1]
    assert last["agreement_ci95"] == [0.0, 1.0]
    assert table["buckets"][0]["agreement_ci95"] == [0.5, 0.5]  # one group: no variation, never actionable
    assert table["smallest_actionable_gap"] is None


def test_smallest_actionable_gap():
    from sapray.core.uncertainty import DEFAULT_GAP_EDGES, gap_table, resample_counts

    def table(small_agree: bool, large_other: float) -> dict:
        # 20 groups; in each, two pairs under 1% (the first agreeing or not, the second agreeing: exactly 1/2 or 1
        # in every resample), one at 15% that agrees, and one at 100% whose other strategy reached `large_other`
        units = []
        for g in range(20):
            units += [(g, [(1.0, 0.6 if small_agree else 0.4), (1.005, 0.5)]), (g, [(1.0, 0.5), (1.005, 0.4)]),
                      (g, [(1.0, 0.9), (1.15, 0.1)]), (g, [(1.0, 0.5), (2.0, large_other)])]
        return gap_table(units, True, 20, DEFAULT_GAP_EDGES, resample_counts(20, 2000, 0))

    half = table(small_agree=False, large_other=0.1)
    assert [b["agreement"] for b in half["buckets"]] == [0.5, None, None, None, 1.0, None, 1.0]
    assert half["buckets"][0]["agreement_ci95"] == [0.5, 0.5]  # 1/2 is not above 1/2
    assert half["smallest_actionable_gap"] == 0.1  # the 15% bucket's lower edge: every bucket from it agrees
    assert table(small_agree=True, large_other=0.1)["smallest_actionable_gap"] == 0.0  # any gap counts
    assert table(small_agree=True, large_other=0.5)["smallest_actionable_gap"] is None  # the largest gaps: ties


def test_cli_intervals_calibration_flags_and_old_keys(tmp_path):
    rows = [{**r, "ppl": PPL[r["strategy"]]} for r in records(TIED)]
    path = write(tmp_path / "r.csv", rows)
    out = CliRunner().invoke(main, ["validate", "--results", path, "--json", str(tmp_path / "v.json"),
                                    "--html", str(tmp_path / "v.html"), "--resamples", "500", "--seed", "3",
                                    "--gap-edges", "10,50", "--reference", "ppl"])
    assert out.exit_code == 0, out.output
    result = json.loads((tmp_path / "v.json").read_text())
    assert result["uncertainty"]["resamples"] == 500 and result["uncertainty"]["seed"] == 3
    sap = result["metrics"]["sap"]
    assert sap["versus_reference"]["reference"] == "ppl" and "versus_reference" not in result["metrics"]["ppl"]
    assert [(b["from"], b["to"]) for b in sap["calibration"]["buckets"]] == [(0.0, 0.1), (0.1, 0.5), (0.5, None)]
    assert "500 resamples over 2 (model, task) pair(s), seed 3" in out.output
    assert "ppl minus each other metric" in out.output and "calibration of sap" in out.output
    assert "smallest actionable gap for sap: none shown" in out.output
    # today's keys and point figures are unchanged: the new ones are added beside them
    assert set(result) == {"pairs", "upper_bound", "metrics", "skipped", "tie_rule", "uncertainty"}
    assert set(sap) == {"lower_is_better", "weighted_rho", "mean_rho", "mean_top1_accuracy", "rho_undefined", "pairs",
                        "ci95", "versus_reference", "calibration"}
    assert sap["weighted_rho"] == validate(read(path))["metrics"]["sap"]["weighted_rho"]
    page = (tmp_path / "v.html").read_text()
    assert page.count("<svg") == 2 and "Calibration" in page and "sap − ppl" not in page and "ppl − sap" in page
    bad = CliRunner().invoke(main, ["validate", "--results", path, "--gap-edges", "5,x"])
    assert bad.exit_code == 2 and "--gap-edges" in bad.output
    bad = CliRunner().invoke(main, ["validate", "--results", path, "--gap-edges", "10,5"])
    assert bad.exit_code == 1 and "increasing" in bad.output
