"""report.html: a real selection's page in headless Chromium (no console errors, no requests, not
blank, every strategy, the winner and the figures in the DOM), `sapray report` rebuilding the same
bytes from a finished run's folder (local and on moto's S3 server), a race with eliminations, a
selection without a winner, and a filter."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from html import unescape
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import BUCKET, CREDENTIALS, PATIENCE_S, load_candidates, load_questions
from small_job import DATA_DIR, REPO, exemplar_rows, jsonl, small_config

from sapray.core.filters import distribution
from sapray.core.validation import rows_from_records, validate
from sapray.present.html_report import ReportError, load_run, write_report

RACE_SELECTION = Path(__file__).parent / "data" / "report" / "race_selection.json"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
RUN_FILES = ("selection.json", "scores.parquet", "rejects/part-scoring.jsonl", "exemplars.jsonl", "run.json")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """A real `sapray select` (hf engine, 2 questions x 6 strategies, 2 rounds) that wrote report.html."""
    root = tmp_path_factory.mktemp("real")
    (root / "exemplars.jsonl").write_text(jsonl(exemplar_rows()))
    config = small_config(str(DATA_DIR / "questions.jsonl"), str(DATA_DIR / "candidates.jsonl"),
                          str(root / "exemplars.jsonl"), str(root / "run"))
    (root / "job.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run([sys.executable, "-m", "sapray", "select", "--config", str(root / "job.yaml"),
                           "--set", "ray.address=local"], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=PATIENCE_S)
    assert done.returncode == 0, done.stderr[-4000:]
    return root / "run"


def _copy_without_report(run: Path, target: Path) -> Path:
    (target / "rejects").mkdir(parents=True)
    for name in RUN_FILES:
        shutil.copy(run / name, target / name)
    return target


@pytest.mark.slow
def test_select_writes_report_and_sapray_report_rebuilds_it(real_run, tmp_path):
    page = (real_run / "report.html").read_text()
    selection = json.loads((real_run / "selection.json").read_text())
    for name in selection["ranking"]:
        assert name in page
    copy_dir = _copy_without_report(real_run, tmp_path / "copy")
    done = subprocess.run([sys.executable, "-m", "sapray", "report", str(copy_dir)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=PATIENCE_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"wrote {copy_dir}/report.html"
    assert (copy_dir / "report.html").read_bytes() == (real_run / "report.html").read_bytes()


@pytest.mark.slow
def test_sapray_report_from_s3(real_run, s3_server, tmp_path):
    fs = pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                           endpoint_override=s3_server.removeprefix("http://"), scheme="http")
    for name in RUN_FILES:
        with fs.open_output_stream(f"{BUCKET}/runs/finished/{name}") as f:
            f.write((real_run / name).read_bytes())
    env = {**_env(), **CREDENTIALS, "AWS_ENDPOINT_URL": s3_server}
    env.pop("AWS_ENDPOINT_URL_S3", None)
    uri = f"s3://{BUCKET}/runs/finished"
    done = subprocess.run([sys.executable, "-m", "sapray", "report", uri], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=PATIENCE_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"wrote {uri}/report.html"
    with fs.open_input_stream(f"{BUCKET}/runs/finished/report.html") as f:
        assert f.read() == (real_run / "report.html").read_bytes()
    missing = subprocess.run([sys.executable, "-m", "sapray", "report", f"s3://{BUCKET}/runs/nothing"], cwd=REPO,
                             env=env, capture_output=True, text=True, timeout=PATIENCE_S)
    assert missing.returncode == 1 and "no selection.json or summary.json" in missing.stderr
    assert "Traceback" not in missing.stderr


def _race_run(folder: Path, selection: dict) -> Path:
    """A `sapray run`-shaped folder around the synthetic race selection: per-question scores for the rounds
    each strategy raced in, one unchecked exemplar, rejects, sample generation costs, the training set."""
    folder.mkdir()
    (folder / "selection.json").write_text(json.dumps(selection, indent=2))
    rounds = {name: 10 * r for name, r in selection["race"]["eliminated"].items()}
    scores = []
    for q in range(30):
        for k, name in enumerate(selection["ranking"]):
            if q < rounds.get(name, 30):
                scores.append({"question_id": f"q{q:02d}", "strategy": name,
                               "sap": 2.4 + 0.5 * k + 0.08 * ((q * 7 + k) % 6),
                               "exemplar_ids": ["ex-0", "ex-1", "ex-2"], "exemplars_checked": False})
    pq.write_table(pa.Table.from_pylist(scores), folder / "scores.parquet")
    rejects = [{"source": f"cands.jsonl:{i}", "reason": f"over-long: {4100 + i} tokens > 4096", "stage": "score"}
               for i in (3, 9, 12)]
    rejects += [{"source": "cands.jsonl:40", "reason": "duplicate (question, strategy)", "stage": "candidates"},
                {"source": "questions.jsonl:7", "reason": "empty question", "stage": "questions"}]
    (folder / "rejects.jsonl").write_text(jsonl(rejects))
    (folder / "exemplars.jsonl").write_text(jsonl([
        {"checked": True, "exemplar_id": "ex-0", "source_question_id": "p-1", "text": "3 + 4 = 7.\nA: 7"},
        {"checked": True, "exemplar_id": "ex-1", "source_question_id": "p-5", "text": "10 / 2 = 5.\nA: 5"},
        {"checked": False, "exemplar_id": "ex-2", "source_question_id": "p-9", "text": "It is 12.\nA: 13"}]))
    train = folder / "train"
    train.mkdir()
    (train / "metadata.json").write_text(json.dumps({
        "strategy": "cot_teacher", "rows": 980, "questions": 1000, "questions_done": 1000, "rejected": 20,
        "cost_this_run": {"prompt_tokens": 150000, "completion_tokens": 210000, "wall_s": 812.5, "requests": 1000,
                          "money": 1.2345},
        "cost_total": {"prompt_tokens": 150000, "completion_tokens": 210000, "money": 1.2345}}))
    config = {"model": selection["model"], "sample": {"round_size": 10}, "strategies": [{"name": "cot_teacher"}],
              "generate": {"output": str(train)}, "output": str(folder)}
    (folder / "run.json").write_text(json.dumps({"timings": {"mining_s": 31.2, "scoring_s": 95.0, "total_s": 140.1},
                                                 "actor_placement": {"node-a/actor-1": 300}, "config": config}))
    (folder / "sample_generation_cost.jsonl").write_text(jsonl([
        {"strategy": s, "prompt_tokens": 4000, "completion_tokens": 6000 + 100 * i, "wall_s": 20.0 + i, "requests": 30,
         "money": 0.0123 if s == "cot_teacher" else None, "rejected": 0}
        for i, s in enumerate(["cot_teacher", "plain_teacher"])]))
    return folder


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html)))


def test_race_report(tmp_path):
    selection = json.loads(RACE_SELECTION.read_text())
    folder = _race_run(tmp_path / "race", selection)
    # a validation.json in the folder (sapray validate --json) adds its section
    # SAP agrees with accuracy on p (rho 1) and disagrees on q (rho -1), with equal sd: weighted rho 0
    pairs = [("p", "a", 0.6, 1.0), ("p", "b", 0.4, 2.0), ("q", "a", 0.2, 1.0), ("q", "b", 0.4, 2.0)]
    two_pairs = [{"model": "m", "task": t, "strategy": s, "accuracy": a, "sap": v} for t, s, a, v in pairs]
    (folder / "validation.json").write_text(json.dumps(validate(rows_from_records(
        [(f"r:{i}", r) for i, r in enumerate(two_pairs, start=1)], "r"))))
    page = Path(write_report(str(folder))).read_text()
    text = _text(page)
    assert "The race ended (winner): cot_teacher was more familiar than every other strategy" in text
    assert "evidence sufficient" in text
    for name, round_no in selection["race"]["eliminated"].items():
        assert f"eliminated in round {round_no}" in text and name in text
    assert "a cross marks the round in which the race eliminated a strategy" in text
    assert "anytime-valid intervals" in text and "± the margin, 0.4 SAP (0.02 of the leader" in text
    # cost by stage: mining, per-strategy sample generation (priced and not), scoring, the full set
    assert "exemplar mining 32 pool questions answered by the target – 4,096" in text
    assert "sample generation cot_teacher 4,000 6,000 20.0 s $0.0123" in text
    assert "sample generation plain_teacher 4,000 6,100 21.0 s not priced" in text
    assert "scoring 30 questions × 4 strategies 84,210" in text
    assert "full generation cot_teacher: 980 rows" in text and "13.5 min $1.2345" in text
    assert "1 unchecked" in text and "unchecked" in page
    # rejects grouped by reason with the numbers folded, and the counts reconciliation
    assert "score over-long: # tokens > # 3" in text
    assert "reconciles candidate rows in 250 = 100 scored + 4 rejected + 146 not sampled" in text
    assert "Validation against downstream accuracy" in text
    assert "sap lower 0.000 0.000 0.4000 0" in text  # rho +1 and -1 with equal sd; top-1 (.6 + .2) / 2
    assert "Upper bound (mean best accuracy over 2 (model, task) pairs): 0.5000" in text
    assert "How sure" in text and "Calibration: which metric gaps predict a better fine-tuning result" in text
    # ranking, win rates, running estimate, intervals, per-question SAP, cost, validation and its calibration
    assert page.count("<svg") == 8


def test_no_winner_thin_evidence_and_old_runs(tmp_path):
    selection = json.loads(RACE_SELECTION.read_text())
    selection["winner"] = None
    selection["evidence"] = {"sufficient": False, "reason": "Only 20 questions: the top two are within epsilon."}
    selection["race"].update({"ended": "budget", "end_reason": "the token budget ran out with two contenders left.",
                              "contenders": ["cot_teacher", "plain_teacher"], "eliminated": {"socratic": 2}})
    text = _text(Path(write_report(str(_race_run(tmp_path / "tie", selection)))).read_text())
    assert "No winner was named" in text and "thin evidence Only 20 questions" in text
    assert "The race ended (budget): the token budget ran out with two contenders left." in text
    assert text.count("contender") >= 2 and "winner" not in text.split("Ranking")[2].split("Paired")[0]
    # an old run: no race, no evidence, no run.json, no scores.parquet, no exemplars file
    old = copy.deepcopy(json.loads(RACE_SELECTION.read_text()))
    for key in ("race", "evidence"):
        del old[key]
    old["per_strategy"]["never"] = {"n": 0, "mean_sap": None, "ci95_mean_sap": [None, None]}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "selection.json").write_text(json.dumps(old))
    text = _text(Path(write_report(str(tmp_path / "old"))).read_text())
    assert "Winner: cot_teacher" in text and "ran without a race" in text
    assert "No per-question scores" in text and "run.json is missing" in text
    assert "Not scored (every row rejected or none sampled): never." in text
    with pytest.raises(ReportError, match="no selection.json or summary.json"):
        load_run(str(tmp_path / "nowhere"))


def test_good_enough_race_report(tmp_path):
    from sapray.present.tables import render_table

    selection = json.loads(RACE_SELECTION.read_text())
    race = selection["race"]
    race["rounds"] = race["rounds"][:2]
    race["rounds"][-1]["certificate"] = {"plain_teacher": {"diff": -0.4, "hi": -0.012}}
    race.update({"ended": "good_enough", "epsilon": 0.1, "contenders": ["cot_teacher", "plain_teacher"],
                 "certified": ["cot_teacher", "plain_teacher"], "eliminated": {"human": 2, "socratic": 2},
                 "end_reason": "cot_teacher is good enough: within 10% of the best strategy's mean SAP"})
    text = _text(Path(write_report(str(_race_run(tmp_path / "good", selection)))).read_text())
    assert "The race ended (good_enough): cot_teacher is good enough" in text
    assert "certified good enough cot_teacher, plain_teacher" in text
    assert "plain_teacher good enough" in text  # its badge in the ranking
    assert "leader's certificate (≤ 0: good enough)" in text
    assert " 2 20 cot_teacher 0.350 human, socratic -0.012 60,240" in text  # the rounds table's last row
    table = render_table({**selection, "race": {**race, "stop": "confident"}})
    assert "race (confident): good_enough: cot_teacher is good enough" in table
    assert "certified within 10% of the best: cot_teacher, plain_teacher" in table


def test_filter_report(tmp_path):
    folder = tmp_path / "filter"
    folder.mkdir()
    ifd = [0.35, 0.5, 0.62, 0.7, 0.81, 0.9, 0.95, 1.2, 1.4, 0.4]
    kept = {4, 5, 6, 2}  # the highest IFD <= 1: 0.95, 0.9, 0.81, 0.7 ... keep fraction 0.5 of the 8 eligible
    rows = [{"sample_id": f"s{i}#{i}", "ifd": v, "nll_given_question": v, "nll_alone": 1.0, "kept": i in kept,
             "source": f"in.jsonl:{i + 1}",
             "reason": "" if i in kept else (f"ifd {v:.4f} > 1 (the question makes the response harder)" if v > 1
                                            else f"ifd {v:.4f} outside the highest 50%")} for i, v in enumerate(ifd)]
    (folder / "scores").mkdir()  # part files, as the filter's workers write them
    pq.write_table(pa.Table.from_pylist(rows[:6]), folder / "scores" / "part-00000.parquet")
    pq.write_table(pa.Table.from_pylist(rows[6:]), folder / "scores" / "part-00001.parquet")
    summary = {"method": "ifd", "model": "smollm2", "engine": "hf", "direction": "high", "keep_fraction": 0.5,
               "counts": {"rows_in": 11, "kept": 4, "dropped": 6, "rejected": 1},
               "distributions": {"ifd": distribution(ifd), "nll_given_question": distribution(ifd)}}
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "rejects").mkdir()
    (folder / "rejects" / "part-00000.jsonl").write_text(jsonl([{"source": "in.jsonl:11", "reason": "empty response",
                                                                  "stage": "read"}]))
    page = Path(write_report(str(folder))).read_text()
    text = _text(page)
    assert "4 of 11 rows kept by ifd (keep fraction 50%); threshold on ifd: 0.62." in text
    assert "reconciles rows in 11 = 4 kept + 6 dropped + 1 rejected" in text
    assert "ifd # outside the highest #% 4" in text
    assert "ifd # > # (the question makes the response harder) 2" in text
    assert "ifd 10 0.7830" in text and "1.4000" in text  # count, mean (7.83 / 10), max
    assert "keep threshold 0.62" in page and "IFD = 1 (dropped above)" in page
    assert "read empty response 1" in text


def test_a_filter_report_over_many_samples_streams_its_scores(tmp_path):
    """200k scored samples: the histograms, the threshold and the drop reasons come from the score files read a
    batch at a time (the page's numbers are those of every value at once), and the report's Python allocations
    stay far below what holding the rows would take (over 100 MB here)."""
    import tracemalloc

    from sapray.present.html_report import _ScoreHistogram

    n = 200_000
    rng = np.random.default_rng(0)
    ifd = rng.gamma(4.0, 0.2, n)
    kept = ifd <= np.quantile(ifd, 0.3)
    (tmp_path / "scores").mkdir()
    for k, part in enumerate(np.array_split(np.arange(n), 4)):
        pq.write_table(pa.table({
            "sample_id": [f"s{i}" for i in part], "ifd": ifd[part], "nll_alone": ifd[part] + 1.0, "kept": kept[part],
            "source": [f"in.jsonl:{i + 1}" for i in part],
            "reason": ["" if kept[i] else f"ifd {ifd[i]:.4f} outside the lowest 30%" for i in part]}),
            tmp_path / "scores" / f"part-{k:05d}.parquet")
    summary = {"method": "ifd", "direction": "low", "keep_fraction": 0.3,
               "counts": {"rows_in": n, "kept": int(kept.sum()), "dropped": int((~kept).sum()), "rejected": 0},
               "distributions": {"ifd": distribution(ifd.tolist()), "nll_alone": distribution((ifd + 1).tolist())}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    files = sorted(str(p) for p in (tmp_path / "scores").iterdir())
    histogram = _ScoreHistogram(files, "ifd")
    edges, kept_counts, dropped_counts = histogram.counts()
    assert (edges == np.histogram_bin_edges(ifd, bins=30)).all()
    assert (kept_counts == np.histogram(ifd[kept], bins=edges)[0]).all()
    assert (dropped_counts == np.histogram(ifd[~kept], bins=edges)[0]).all()
    assert histogram.threshold(True) == ifd[kept].max() and histogram.threshold(False) == ifd[kept].min()
    tracemalloc.start()
    try:
        page = Path(write_report(str(tmp_path))).read_text()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"ifd # outside the lowest #% {int((~kept).sum())}" in _text(page)
    assert f"threshold on ifd: {ifd[kept].max():.4g}" in _text(page)
    assert peak < 40 * 2**20, peak


@pytest.mark.slow
def test_real_filter_writes_report_and_sapray_report_rebuilds_it(tmp_path):
    """`sapray filter --method ifd` on 4 samples (2 questions x 2 strategies) and one row without a response."""
    questions = {q["question_id"]: q["question"] for q in load_questions()[:2]}
    rows = [{"messages": [{"role": "user", "content": questions[c["question_id"]]},
                          {"role": "assistant", "content": c["response"]}], "sample_id": c["question_id"]}
            for c in load_candidates() if c["question_id"] in questions and c["strategy"] in ("human", "socratic")]
    rows.append({"messages": [{"role": "user", "content": "What is 2+2?"}]})
    (tmp_path / "train.jsonl").write_text(jsonl(rows))
    config = {"method": "ifd", "input": str(tmp_path / "train.jsonl"), "ifd": {"keep_fraction": 0.5},
              "ray": {"actors": 1, "batch_size": 16, "num_cpus_per_actor": 1}, "output": str(tmp_path / "out")}
    (tmp_path / "filter.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run([sys.executable, "-m", "sapray", "filter", "--config", str(tmp_path / "filter.yaml"),
                           "--set", "ray.address=local"], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=PATIENCE_S)
    assert done.returncode == 0, done.stderr[-4000:]
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    kept = [r["ifd"] for part in sorted((out / "scores").iterdir()) for r in pq.read_table(part).to_pylist()
            if r["kept"]]
    text = _text((out / "report.html").read_text())
    c = summary["counts"]
    assert (f"reconciles rows in {c['rows_in']} = {c['kept']} kept + {c['dropped']} dropped + "
            f"{c['rejected']} rejected") in text
    assert f"threshold on ifd: {min(kept):.4g}" in text and "empty response" not in text
    assert "no assistant turn after the first user turn in 'messages'" in text  # the row without one
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    shutil.copy(out / "summary.json", copy_dir / "summary.json")
    for name in ("scores", "rejects"):
        shutil.copytree(out / name, copy_dir / name)
    write_report(str(copy_dir))
    assert (copy_dir / "report.html").read_bytes() == (out / "report.html").read_bytes()


def _browse(page_path: Path, screenshot: Path) -> dict:
    """Open the page from disk in headless Chromium; record console errors and every request."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            errors, requests = [], []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.route(re.compile(r"^(?!file:).*"), lambda route: route.abort())  # never reach the network
            page.goto(page_path.as_uri(), wait_until="load")
            page.screenshot(path=str(screenshot), full_page=True)
            figures = page.locator("figure svg")
            sizes = [figures.nth(i).bounding_box() for i in range(figures.count())]
            return {"errors": errors, "requests": requests, "figure_sizes": sizes,
                    "summary": page.locator("#summary").inner_text(),
                    "ranking": page.locator("#ranking table").inner_text(),
                    "figure_text": [figures.nth(i).text_content() for i in range(figures.count())],
                    "title": page.title()}
        finally:
            browser.close()


def _not_blank(png: Path) -> bool:
    from PIL import Image, ImageStat

    image = Image.open(png).convert("L")
    colors = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
    return ImageStat.Stat(image).stddev[0] > 10 and len(colors) > 50


@pytest.mark.browser
@pytest.mark.slow
def test_real_report_in_headless_chromium(real_run, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium package)")
    pytest.importorskip("playwright", reason="playwright is in the dev extra: pip install -e '.[dev]'")
    selection = json.loads((real_run / "selection.json").read_text())
    screenshot = Path(os.environ.get("SAPRAY_REPORT_SCREENSHOT", tmp_path / "report.png"))
    seen = _browse(real_run / "report.html", screenshot)
    assert seen["errors"] == []
    assert seen["requests"] == [(real_run / "report.html").as_uri()]
    assert _not_blank(screenshot)
    winner = selection["winner"]["strategy"]
    assert f"Winner: {winner}" in seen["summary"]
    for name in selection["ranking"]:
        assert name in seen["ranking"]
        assert name in seen["figure_text"][0]  # the ranking figure labels every strategy as text
    # ranking, win rates, running estimate, the race's intervals, per-question SAP, cost
    assert len(seen["figure_sizes"]) == 6
    assert all(box and box["width"] > 200 and box["height"] > 100 for box in seen["figure_sizes"])
    assert seen["title"] == f"sapray selection: {selection['model']}"


@pytest.mark.browser
def test_race_report_in_headless_chromium(tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium package)")
    pytest.importorskip("playwright", reason="playwright is in the dev extra: pip install -e '.[dev]'")
    folder = _race_run(tmp_path / "race", json.loads(RACE_SELECTION.read_text()))
    page = Path(write_report(str(folder)))
    seen = _browse(page, tmp_path / "race.png")
    assert seen["errors"] == [] and seen["requests"] == [page.as_uri()]
    assert _not_blank(tmp_path / "race.png") and len(seen["figure_sizes"]) == 6
