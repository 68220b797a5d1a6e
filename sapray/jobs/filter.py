"""The ``filter`` job: keep the training samples that will help (METHOD.md §2, §4, §5).

Methods: ``consistency`` (self-consistency: sample N answers per question, keep the majority's),
``dsweight`` (IWSI: keep the fraction of samples closest to a labeled valid set's loss),
``lobass`` (keep the most learnable: the largest relative loss drop from the initial to the
reference model), ``ifd`` (Cherry: keep high IFD, drop IFD > 1; or the reverse, low IFD) and ``rsr`` (keep the
lowest rank-surprisal ratio).

Input for dsweight, lobass, ifd and rsr: rows with a question and a response, either as columns or as a
``messages`` list (first user turn = question, last assistant turn = response). Input for
consistency: questions (with a gold answer column when there is one). Every input row ends kept,
dropped (with its reason) or rejected (with its reason); the job checks that the counts add up.
"""

from __future__ import annotations

import functools

import numpy as np

from sapray.config import FilterConfig
from sapray.console import console
from sapray.core.scoring import SCORES_FORMAT
from sapray.dataplane import consistency, filtering, stages
from sapray.dataplane.filtering import FilterResult
from sapray.dataplane.journal import Journal, RowJournal, job_fingerprint, row_writer
from sapray.dataplane.outputs import write_filter_outputs
from sapray.dataplane.questions import question_rejects, questions_dataset, unique_questions
from sapray.dataplane.raydata import init_ray
from sapray.dataplane.read import InputError, Reject, nothing_usable
from sapray.dataplane.rehearsal import Meter, Rehearsal, rehearsed
from sapray.engines.models import locate
from sapray.present.html_report import write_report
from sapray.storage import child


def run_filter(cfg: FilterConfig, restart: bool = False, rehearsal: Rehearsal | None = None) -> FilterResult:
    """Run the filter and write kept/, scores/ and rejects/ under ``cfg.output`` (from the workers). The
    engine actors journal each batch they score or sample (``<output>/journal``): run again after a stop,
    the filter reads what was finished and computes the rest (``restart``: from scratch). ``rehearsal``: the
    whole job with simulated engines, into ``<output>/rehearsal``, with its measurements and projection in the
    summary (``rehearsal``)."""
    meter = Meter(cfg.output) if rehearsal else None
    if rehearsal:
        cfg = rehearsed(cfg, rehearsal, str(meter.stats_dir))
    journal = Journal(child(cfg.output, "journal"), fingerprint(cfg), restart)  # before Ray: fails fast
    init_ray(cfg.ray)
    try:
        job = run_consistency if cfg.method == "consistency" else run_scored_filter
        counts, info, paths = job(cfg, journal.folder)
    except Exception as exc:
        error = None if isinstance(exc, InputError) else stages.input_error(exc)
        if error is not None:
            raise error from None
        raise
    summary = {"method": cfg.method, "model": cfg.model, "revision": cfg.revision, "engine": cfg.engine,
               "counts": counts, **info}
    if meter:
        summary["rehearsal"] = meter.finish(rehearsal)
    return FilterResult(summary, paths, cfg.output)


def write_filter(output: str, result: FilterResult) -> dict[str, str]:
    """summary.json and report.html beside the folders the workers wrote."""
    paths = write_filter_outputs(output, result)
    paths["report.html"] = write_report(output)
    return paths


def run_scored_filter(cfg: FilterConfig, journal: str | None = None) -> tuple[dict, dict, dict[str, str]]:
    """dsweight, lobass, ifd or rsr over the whole input in the cluster: (counts, info, paths written)."""
    import ray

    method = filtering.scored_method(cfg)
    requests = len(method.build({"question": "q", "response": "r"}))
    console.say(f"{cfg.method}: reading {cfg.input} in the cluster")
    usable, read_rejects, rows_in, n_usable = filtering.read_samples_in_cluster(cfg, cfg.input, cfg.columns)
    console.say(f"{cfg.method}: {n_usable:,} usable samples of {rows_in:,} rows read")
    if not n_usable:
        raise nothing_usable("samples", [cfg.input], [Reject(**r) for r in
                                                      read_rejects.map_batches(filtering.rejects_table,
                                                                                 batch_format="pyarrow")
                                                      .take(1)])
    journals = [RowJournal(journal, f"sums-{prefix or 'score'}") if journal else None for prefix, *_ in method.passes]
    journaled = [j.load() if j else None for j in journals]
    skip = everywhere([t.column("order").to_numpy() if t is not None else None for t in journaled])
    if len(skip):
        console.say(f"resuming: {len(skip):,} of {n_usable:,} samples scored by the earlier run (not tokenized or "
                    f"scored again) from {journal}")
    ds = filtering.encode_samples(cfg, usable, method.build, requests, ray.put(skip))
    for n, (prefix, model, revision, extra) in enumerate(method.passes):
        with row_writer(journals[n], cfg.ray.journal_rows) as writer:
            scoring = filtering.score_samples(cfg, ds, requests, prefix, model, revision, extra,
                                              drop_ids=n == len(method.passes) - 1,
                                              journaled=None if journaled[n] is None else ray.put(journaled[n]),
                                              writer=writer)
            # each pass's actors hold a whole model: passes run one after the other, not side by side
            ds = stages.materialized(scoring, n_usable, f"{cfg.method}: scoring with {model}", console.progress)
    rule, columns = filtering.keep_rule(cfg), filtering.SCORE_COLUMNS[cfg.method]
    scored = ds.map_batches(filtering.ScoreColumns(method.score, columns, rule), batch_format="pyarrow",
                            batch_size=stages.SUMMARY_BLOCK_ROWS).materialize()
    cut, distributions, eligible = filtering.keep_summaries(scored, columns, rule)
    decided = scored.map_batches(filtering.Decide(cfg, cut), batch_format="pyarrow").materialize()
    counted = decided.map_batches(filtering.count_outcomes, batch_format="pyarrow", batch_size=None).take_all()
    counts = {"rows_in": rows_in, **{k: sum(c[k] for c in counted) for k in ("kept", "dropped", "rejected")}}
    counts["rejected"] += rows_in - n_usable
    if counts["kept"] + counts["dropped"] + counts["rejected"] != rows_in:
        raise AssertionError(f"row counts do not reconcile: {counts}")
    paths = stages.write_folders(cfg.output, {
        "kept": (decided.map_batches(filtering.kept_messages, batch_format="pyarrow"), "jsonl"),
        "scores": (decided.map_batches(filtering.scores_table(columns), batch_format="pyarrow"), "parquet"),
        # read rejects first, then those the encoder refused: the order a single reader gives
        "rejects": (read_rejects.union(decided).map_batches(filtering.rejects_table, batch_format="pyarrow"),
                    "jsonl")})
    # the last kept value of the keep column: rows beyond it were dropped (None: nothing kept)
    info = method.info | {"eligible": eligible, "distributions": distributions,
             "cut": None if cut.value is None else cut.value if rule.lowest else -cut.value}
    return counts, info, paths


def everywhere(orders: list[np.ndarray | None]) -> np.ndarray:
    """The sorted orders in every one of the passes' journals (none when a pass has no journal)."""
    if not orders or any(o is None for o in orders):
        return np.zeros(0, dtype=np.int64)
    return functools.reduce(np.intersect1d, orders)


def run_consistency(cfg: FilterConfig, journal: str | None = None) -> tuple[dict, dict, dict[str, str]]:
    """Self-consistency over every question in the cluster: rows in are the sampled answers; rejected
    question rows (unreadable, duplicate id) are counted apart and written to rejects/."""
    cc = cfg.consistency
    read, rows_read = questions_dataset(cfg.input, cfg.columns, cfg.ray)
    usable, read_rejects = stages.split_rejected(read)
    if not usable.count():
        raise nothing_usable("questions", [cfg.input], [Reject(r["source"], r["reject"], r["reject_stage"])
                                                        for r in read_rejects.take(1)])
    questions, duplicates = stages.split_rejected(unique_questions(usable, rows_read))
    # Resolved here first, so a missing model fails before any actor starts; actors load the same commit.
    resolved = locate(cfg.model, cfg.revision)
    sampled = consistency.sample_answers(cfg, questions, resolved, RowJournal(journal, "answers") if journal else None)
    sampling_sums = sampled.map_batches(consistency.sampling_sums, batch_format="pyarrow", batch_size=None).take_all()
    voted = sampled.map_batches(consistency.Vote(cc), batch_format="pyarrow").materialize()
    vote_sums = voted.map_batches(consistency.vote_sums, batch_format="pyarrow", batch_size=None).take_all()
    rows, kept = sum(p["rows"] for p in vote_sums), sum(p["kept"] for p in vote_sums)
    asked, rejected = sum(p["questions"] for p in sampling_sums), read_rejects.count() + duplicates.count()
    if asked + rejected != rows_read:
        raise AssertionError(f"question rows do not reconcile: {rows_read} read, {asked} asked, {rejected} rejected")
    distributions, _ = filtering.distributions(voted, ("agreement",), "kept")
    info = {"samples_per_question": cc.samples, "temperature": cc.temperature, "questions": asked,
            # every question has cc.samples rows, all with or all without a majority
            "questions_without_parsable_answer": sum(p["without_majority"] for p in vote_sums) // cc.samples,
            "generated_tokens": sum(p["generated_tokens"] for p in sampling_sums), "distributions": distributions,
            "question_rows_rejected": rejected}
    counts = {"rows_in": rows, "kept": kept, "dropped": rows - kept, "rejected": 0}
    paths = stages.write_folders(cfg.output, {
        "kept": (voted.map_batches(filtering.kept_messages, batch_format="pyarrow"), "jsonl"),
        "scores": (voted, "parquet"),
        # in input order, as a single reader would list them
        "rejects": (stages.in_order(read_rejects.union(duplicates)).map_batches(question_rejects(None),
                                                                                batch_format="pyarrow"), "jsonl")})
    return counts, info, paths


def fingerprint(cfg: FilterConfig) -> dict:
    """What determines a filter's journal: the config but its output and Ray placement (the batch size and
    shard size decide the batches), the models' commits, the inputs' identities, sapray's version."""
    lb = cfg.lobass
    commits = {"model": locate(cfg.model, cfg.revision).commit,
               "reference": locate(lb.reference_model, lb.reference_revision).commit if lb.reference_model else None}
    inputs = [cfg.input, cfg.dsweight.valid if cfg.dsweight else None, lb.reference_adapter]
    return job_fingerprint(cfg.model_dump(exclude={"output", "ray"}), commits, inputs, batch_size=cfg.ray.batch_size,
                           shard_mb=cfg.ray.shard_mb, scores=SCORES_FORMAT)
