"""The ``filter`` job: keep the training samples that will help (METHOD.md §2, §4, §5).

Methods: ``consistency`` (self-consistency: sample N answers per question, keep the majority's),
``dsweight`` (IWSI: keep the fraction of samples closest to a labeled valid set's loss),
``lobass`` (keep the most learnable: the largest relative loss drop from the initial to the
reference model) and ``ifd`` (Cherry: keep high IFD, drop IFD > 1; or the reverse, low IFD).

Input for dsweight, lobass and ifd: rows with a question and a response, either as columns or as a
``messages`` list (first user turn = question, last assistant turn = response). Input for
consistency: questions (with a gold answer column when there is one). Every input row ends kept,
dropped (with its reason) or rejected (with its reason); the job checks that the counts add up.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from sapray.config import Columns, RayConfig, Strict, validate
from sapray.core import filters, metrics, order_stats
from sapray.core.answers import make_checker
from sapray.core.exemplars import zero_shot_prompts
from sapray.dataplane import stages
from sapray.dataplane.actors import GenerateActor
from sapray.dataplane.journal import Journal, input_identity, memos, sapray_version
from sapray.dataplane.raydata import actor_pool, init_ray
from sapray.dataplane.read import (
    InputError,
    Reject,
    child,
    iter_records,
    nothing_usable,
    number_as_text,
    row_pair,
    text_problem,
)
from sapray.dataplane.shards import check_columns
from sapray.engines import EngineName, SamplingConfig
from sapray.engines.models import locate
from sapray.jobs.generate import question_rejects, questions_dataset, unique_questions
from sapray.present.console import console


class ConsistencyConfig(Strict):
    """method consistency: sample answers per question and keep the samples of the majority answer."""

    samples: int = Field(15, ge=1, description="answers sampled per question (authors: 15)")
    temperature: float = Field(0.8, ge=0, description="sampling temperature (authors: 0.8)")
    max_tokens: int = Field(256, ge=1, description="generated tokens per answer at most")
    seed: int = Field(0, description="sampling seed: each question gets the same answers whatever its batch")
    checker: Literal["gsm8k", "choice", "exact", "regex"] = Field(
        "gsm8k", description="extracts the answer that is voted on")
    regex: str | None = Field(None, description="the regex checker's pattern")


class DSWeightConfig(Strict):
    """method dsweight (IWSI): keep the samples whose loss is closest to a labeled valid set's mean loss."""

    valid: str = Field(description="labeled valid set: question and gold solution columns (<= 5% of the train size)")
    valid_response_column: str = Field("answer", description="the valid set's column holding the gold solution")
    loss: Literal["whole", "response"] = Field(
        "whole", description="whole: the authors' loss over 'Q: {q}\\nA: {a}'; response: only the answer's tokens")
    keep_fraction: float = Field(0.79, ge=0, le=1, description="share of the samples kept (lowest shift)")


class LobassConfig(Strict):
    """method lobass: keep the most learnable samples, the largest relative loss drop from the target to a
    reference model."""

    reference_model: str | None = Field(None, description="the initial model fine-tuned on the candidates (merged): "
                                       "a local HF directory or a Hub id")
    reference_revision: str | None = Field(None, description="with a Hub id: branch, tag or commit hash")
    reference_adapter: str | None = Field(None, description="or: a LoRA adapter directory on the initial model")
    keep_fraction: float = Field(0.06, ge=0, le=1, description="share of the samples kept (highest learnability)")


class IFDConfig(Strict):
    """method ifd: instruction-following difficulty, the response's perplexity with its question over without."""

    direction: Literal["high", "low"] = Field(
        "high", description="high: Cherry (keep high IFD, drop IFD > 1); low: strategy-selection order")
    keep_fraction: float = Field(0.5, ge=0, le=1, description="share of the samples kept")


class FilterConfig(Strict):
    """A filter job (``sapray filter``): one method over a whole set of samples."""

    method: Literal["consistency", "dsweight", "lobass", "ifd"] = Field(
        description="the filter; its section below holds its settings")
    input: str = Field(description="the samples (question and response columns, or chat messages; consistency: "
                       "questions); a file, folder or URI")
    columns: Columns = Columns()
    model: str = Field("smollm2", description="'smollm2', a local HF directory or a Hugging Face Hub id")
    revision: str | None = Field(None, description="with a Hub id: branch, tag or commit hash (default main)")
    engine: EngineName = Field("hf", description="engine: hf (transformers) or vllm")
    engine_args: dict[str, Any] = Field({}, description="keyword arguments for the engine")
    overlong: Literal["reject", "truncate"] = Field(
        "reject", description="a request longer than the model's length: rejected, or its context cut from the left")
    consistency: ConsistencyConfig = ConsistencyConfig()
    dsweight: DSWeightConfig | None = None
    lobass: LobassConfig = LobassConfig()
    ifd: IFDConfig = IFDConfig()
    ray: RayConfig = RayConfig()
    output: str = Field("runs/filter", description="folder or URI for kept/, scores/, rejects/, summary.json and "
                        "report.html")


def load_filter_config(raw: dict, overrides: list[str] = ()) -> FilterConfig:
    return validate(FilterConfig, raw, overrides)


@dataclass
class FilterResult:
    summary: dict
    paths: dict[str, str]  # name -> folder or file written (kept, scores, rejects)


SAMPLE_SCHEMA = pa.schema([
    ("order", pa.int64()), ("source", pa.string()), ("sample_id", pa.string()), ("question", pa.string()),
    ("response", pa.string()), ("gold", pa.string()), ("reject", pa.string()), ("reject_stage", pa.string())])


def sample_record(index: int, row: dict | str, columns: Columns) -> dict | str:
    """A question-response sample from columns or a chat ``messages`` list (``read.row_pair``); else why
    the row is unusable."""
    if isinstance(row, str):
        return row
    pair = row_pair(row, columns, question_required=True)
    if isinstance(pair, str):
        return pair
    question, response = pair
    if not response.strip():
        return "empty response"
    gold = number_as_text(row.get(columns.gold))
    sample_id = number_as_text(row.get("sample_id", row.get(columns.question_id, index)))
    return {"sample_id": f"{sample_id}#{index}", "question": question, "response": response,
            "gold": gold if text_problem(gold, "gold") is None else None}


def sample_row(index: int, source: str, row: dict | str, columns: Columns) -> dict:
    """``sample_record`` as a row of SAMPLE_SCHEMA: a reject keeps its place with the reason."""
    record = sample_record(index, row, columns)
    if isinstance(record, str):
        return {"order": index, "source": source, "sample_id": "", "question": "", "response": "", "gold": None,
                "reject": record, "reject_stage": "read"}
    return {"order": index, "source": source, **record, "reject": "", "reject_stage": ""}


def read_samples(uri: str, columns: Columns) -> tuple[list[dict], list[Reject]]:
    """All samples of a small file in the driver (tests, tools); InputError if none is usable."""
    samples, rejects = [], []
    for index, (source, row) in enumerate(iter_records(uri)):
        record = sample_record(index, row, columns)
        if isinstance(record, str):
            rejects.append(Reject(source, record, "read"))
        else:
            samples.append({**record, "source": source})
    if not samples:
        raise nothing_usable("samples", [uri], rejects)
    return samples, rejects


def _chat(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


# -- the methods: requests per sample, scoring passes, scores from the sums, keep rule -------------------

def _ifd_requests(row: dict) -> list[tuple[Any, str]]:
    return [(_chat(row["question"]), row["response"]), ("", row["response"])]


def _chat_request(row: dict) -> list[tuple[Any, str]]:
    return [(_chat(row["question"]), row["response"])]


def _dsweight_requests(row: dict, loss: str) -> list[tuple[Any, str]]:
    """The authors score the whole 'Q: {q}\\nA: {a}' string; the variant scores only the answer."""
    if loss == "whole":
        return [("", f"Q: {row['question']}\nA: {row['response']}")]
    return [(f"Q: {row['question']}\nA:", f" {row['response']}")]


def _nll(row: dict, prefix: str = "", r: int = 0) -> float:
    return metrics.nll_of_sum(row[f"{prefix}sum_{r}"], row[f"{prefix}tokens_{r}"])


def _ifd_scores(row: dict) -> dict:
    given_question, alone = _nll(row, r=0), _nll(row, r=1)
    return {"nll_given_question": given_question, "nll_alone": alone,
            "ifd": metrics.ifd_of_nll(given_question, alone)}


def _lobass_scores(row: dict) -> dict:
    l0, l1 = _nll(row, "initial_"), _nll(row, "reference_")
    return {"loss_initial": l0, "loss_reference": l1, "learnability": filters.lobass_score(l0, l1)}


def _dsweight_scores(row: dict, valid_mean: float) -> dict:
    loss = _nll(row)
    weight = filters.ds_weight(valid_mean, loss)
    return {"loss": loss, "ds_weight": weight, "shift": filters.ds_shift(weight)}


@dataclass(frozen=True)
class Rule:
    """How a method keeps: rank by ``column`` (``lowest`` or highest first) among the eligible rows."""

    column: str
    lowest: bool
    fraction: float
    eligible: Callable[[dict], bool] = lambda row: True

    def rank_value(self, row: dict) -> float:
        return row[self.column] if self.lowest else -row[self.column]


def _rule(cfg: FilterConfig) -> Rule:
    if cfg.method == "dsweight":
        return Rule("shift", True, cfg.dsweight.keep_fraction)
    if cfg.method == "lobass":
        return Rule("learnability", False, cfg.lobass.keep_fraction)
    if cfg.ifd.direction == "high":  # Cherry: IFD > 1 means the question does not help; drop those first
        return Rule("ifd", False, cfg.ifd.keep_fraction, _ifd_at_most_one)
    return Rule("ifd", True, cfg.ifd.keep_fraction)


def _ifd_at_most_one(row: dict) -> bool:
    return row["ifd"] <= 1.0


def _reason(cfg: FilterConfig, row: dict, cut: float | None) -> str:
    if cfg.method == "dsweight":
        return f"shift {row['shift']:.4f} outside the lowest {cfg.dsweight.keep_fraction:.0%} (cut {cut})"
    if cfg.method == "lobass":
        return f"learnability {row['learnability']:.4f} outside the top {cfg.lobass.keep_fraction:.0%}"
    direction = cfg.ifd.direction
    if direction == "high" and row["ifd"] > 1.0:
        return f"ifd {row['ifd']:.4f} > 1 (the question makes the response harder)"
    side = "highest" if direction == "high" else "lowest"
    return f"ifd {row['ifd']:.4f} outside the {side} {cfg.ifd.keep_fraction:.0%}"


SCORE_COLUMNS = {"dsweight": ("loss", "ds_weight", "shift"),
                 "lobass": ("loss_initial", "loss_reference", "learnability"),
                 "ifd": ("nll_given_question", "nll_alone", "ifd")}


# -- the pipeline ------------------------------------------------------------------------------------

def _encoded(cfg: FilterConfig, ds, build: Callable[[dict], list], requests: int):
    return ds.map_batches(
        stages.EncodeRequests, batch_format="pyarrow", batch_size=cfg.ray.batch_size,
        fn_constructor_kwargs={"model": cfg.model, "revision": cfg.revision, "engine": cfg.engine,
                               "engine_args": cfg.engine_args, "build": build, "requests": requests,
                               "boundary": "joint", "overlong": cfg.overlong}, **stages.cpu_pool())


def _scored(cfg: FilterConfig, ds, requests: int, prefix: str, model: str, revision: str | None,
            engine_args: dict | None = None, drop_ids: bool = True, journal: str | None = None):
    """Score every request of every row with an engine actor pool; sums and token counts come back (and go
    to ``journal`` batch by batch, where a rerun finds them)."""
    # Resolved here first, so a missing model fails before any actor starts; actors load the same commit.
    pool = actor_pool(stages.ScoreSums, {
        "engine": cfg.engine, "model": model, "revision": locate(model, revision).commit,
        "engine_args": {**cfg.engine_args, **(engine_args or {})}, "requests": requests, "prefix": prefix,
        "drop_ids": drop_ids, "journal": journal}, cfg.ray)
    return ds.map_batches(**pool, batch_format="pyarrow")


class _Score:
    """Scores from the sums, the rank key of the keep rule, and whether the row may be kept."""

    def __init__(self, score: Callable[[dict], dict], columns: tuple[str, ...], rule: Rule) -> None:
        self.score, self.columns, self.rule = score, columns, rule

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        values = {c: [] for c in self.columns}
        rank, eligible = [], []
        for row in rows:
            scores = self.score(row) if not row["reject"] else dict.fromkeys(self.columns, math.nan)
            for c in self.columns:
                values[c].append(scores[c])
            ok = not row["reject"] and self.rule.eligible(scores)
            eligible.append(ok)
            rank.append(self.rule.rank_value(scores) if ok else math.nan)
        out = batch.select([c for c in batch.column_names
                            if not c.startswith(("sum_", "tokens_", "initial_", "reference_"))])
        for c in self.columns:
            out = out.append_column(c, pa.array(values[c], pa.float64()))
        out = out.append_column("rank_key", pa.array(order_stats.sortable(np.array(rank, dtype=np.float64))))
        out = out.append_column("ok", pc.equal(batch.column("reject"), ""))
        return out.append_column("eligible", pa.array(eligible, pa.bool_()))


def _finite_where(column: str, where: str) -> Callable[[pa.Table], np.ndarray]:
    def keys(batch: pa.Table) -> np.ndarray:
        values = batch.column(column).to_numpy(zero_copy_only=False)
        mask = batch.column(where).to_numpy(zero_copy_only=False) & np.isfinite(values)
        return order_stats.sortable(values[mask])
    return keys


def _eligible_keys(batch: pa.Table) -> np.ndarray:
    mask = batch.column("eligible").to_numpy(zero_copy_only=False)
    return batch.column("rank_key").to_numpy(zero_copy_only=False).astype(np.uint64)[mask]


def _tied_orders(key: int) -> Callable[[pa.Table], np.ndarray]:
    def orders(batch: pa.Table) -> np.ndarray:
        mask = batch.column("eligible").to_numpy(zero_copy_only=False) & (
            batch.column("rank_key").to_numpy(zero_copy_only=False).astype(np.uint64) == np.uint64(key))
        return batch.column("order").to_numpy(zero_copy_only=False).astype(np.uint64)[mask]
    return orders


class _Decide:
    def __init__(self, cfg: FilterConfig, cut: order_stats.Cut) -> None:
        self.cfg, self.cut = cfg, cut

    def __call__(self, batch: pa.Table) -> pa.Table:
        keys = batch.column("rank_key").to_numpy(zero_copy_only=False).astype(np.uint64)
        orders = batch.column("order").to_numpy(zero_copy_only=False).astype(np.uint64)
        kept = self.cut.keeps(keys, orders) & batch.column("eligible").to_numpy(zero_copy_only=False)
        reasons = ["" if k or row["reject"] else _reason(self.cfg, row, self.cut.value)
                   for k, row in zip(kept, batch.to_pylist(), strict=True)]
        return batch.append_column("kept", pa.array(kept, pa.bool_())).append_column("reason", pa.array(reasons))


def _summaries(ds, columns: tuple[str, ...], rule: Rule) -> tuple[order_stats.Cut, dict, int]:
    """(the keep cut, the score distributions, how many rows could be kept), in one set of passes."""
    eligible, _ = stages.moments(ds, [], where="eligible")
    k = filters.keep_count(rule.fraction, eligible)
    dists, selected = _distributions(ds, columns, "ok", {"cut": (_eligible_keys, [k] if k else [])})

    def tied_order(key: int, j: int) -> int:
        return stages.select(ds, {"order": _tied_orders(key)}, {"order": [j]})["order"][0].key

    return order_stats.cut_at(k, selected["cut"][0] if k else None, tied_order), dists, eligible


def _distributions(ds, columns: tuple[str, ...], where: str,
                   also: dict[str, tuple[Callable[[pa.Table], np.ndarray], list[int]]] | None = None,
                   ) -> tuple[dict, dict[str, list[order_stats.Selected]]]:
    """(``filters.distribution`` of each column over the rows where the boolean column ``where`` is
    true, exact; the keys at the ranks ``also`` asks for), in one set of order-statistic passes."""
    also = also or {}
    _, parts = stages.moments(ds, list(columns), where=where)
    ranks = {c: order_stats.quantile_ranks(parts[c][0].n) if parts[c][0].n else [] for c in columns}
    keys = {c: _finite_where(c, where) for c in columns} | {name: f for name, (f, _) in also.items()}
    selected = stages.select(ds, keys, ranks | {name: r for name, (_, r) in also.items()})
    dists = {c: order_stats.distribution(parts[c][0], parts[c][1],
                                         {r: order_stats.value_of(s.key) for r, s in zip(ranks[c], selected.get(c, []),
                                                                                        strict=True)})
             for c in columns}
    return dists, selected


def _read_in_cluster(cfg: FilterConfig, uri: str, columns: Columns):
    """(usable rows, rejected rows, rows in, usable rows) of an input, read in the cluster. Rejected rows
    are set apart before scoring, so a good row's batch-mates are the same as in a clean file."""
    check_columns(uri, [[columns.question, columns.response], [columns.messages]])
    ds, rows_in = stages.read_dataset([uri], partial(sample_row, columns=columns), SAMPLE_SCHEMA,
                                      max(1, int(cfg.ray.shard_mb * 2**20)))
    usable, rejected = stages.split_rejected(ds)
    return usable, rejected, rows_in, usable.count()


def _valid_mean_loss(cfg: FilterConfig, build) -> tuple[float, int, int]:
    """(mean loss, rows scored, rows rejected) of the dsweight valid set, through the same stages."""
    ds = cfg.dsweight
    columns = cfg.columns.model_copy(update={"response": ds.valid_response_column})
    usable, _, rows_in, n_usable = _read_in_cluster(cfg, ds.valid, columns)
    if not n_usable:
        raise InputError(f"{ds.valid}: no usable valid rows ({rows_in} rejected)")
    scored = _scored(cfg, _encoded(cfg, usable, build, 1), 1, "", cfg.model, cfg.revision)
    losses = scored.map_batches(_Score(partial(_dsweight_scores, valid_mean=1.0), SCORE_COLUMNS["dsweight"],
                                       Rule("shift", True, 1.0)), batch_format="pyarrow").materialize()
    used, parts = stages.moments(losses, ["loss"], where="ok")
    if not used:
        raise InputError(f"{ds.valid}: no valid row could be scored")
    return parts["loss"][0].mean, used, rows_in - used


def _keep_messages(batch: pa.Table) -> pa.Table:
    kept = batch.filter(pc.field("kept"))
    messages = [[{"role": "user", "content": q}, {"role": "assistant", "content": r}]
                for q, r in zip(kept.column("question").to_pylist(), kept.column("response").to_pylist(), strict=True)]
    return pa.table({"messages": messages, "sample_id": kept.column("sample_id"), "source": kept.column("source")})


def _scores_table(columns: tuple[str, ...]) -> Callable[[pa.Table], pa.Table]:
    def fn(batch: pa.Table) -> pa.Table:
        return batch.filter(pc.field("ok")).select(
            ["sample_id", "question", "response", "source", "gold", *columns, "kept", "reason"])
    return fn


def _rejects_table(batch: pa.Table) -> pa.Table:
    out = batch.filter(pc.not_equal(batch.column("reject"), ""))
    none = pa.nulls(out.num_rows, pa.string())
    return pa.table({"source": out.column("source"), "reason": out.column("reject"),
                     "stage": out.column("reject_stage"), "question_id": none, "strategy": none})


def _count_outcomes(batch: pa.Table) -> dict:
    ok = batch.column("ok").to_numpy(zero_copy_only=False)
    kept = batch.column("kept").to_numpy(zero_copy_only=False)
    return {"rows": [batch.num_rows], "kept": [int(kept.sum())], "dropped": [int((ok & ~kept).sum())],
            "rejected": [int((~ok).sum())]}


def run_scored_filter(cfg: FilterConfig, journal: str | None = None) -> tuple[dict, dict, dict[str, str]]:
    """dsweight, lobass or ifd over the whole input in the cluster: (counts, info, paths written)."""
    info: dict[str, Any] = {}
    if cfg.method == "dsweight":
        if cfg.dsweight is None:
            raise ValueError("method dsweight needs a dsweight section with a valid set")
        build, passes = partial(_dsweight_requests, loss=cfg.dsweight.loss), [("", cfg.model, cfg.revision, None)]
        valid_mean, valid_rows, valid_rejected = _valid_mean_loss(cfg, build)
        score = partial(_dsweight_scores, valid_mean=valid_mean)
        info = {"valid_rows": valid_rows, "valid_rows_rejected": valid_rejected, "valid_mean_loss": valid_mean,
                "loss": cfg.dsweight.loss, "keep_fraction": cfg.dsweight.keep_fraction}
    elif cfg.method == "lobass":
        lb = cfg.lobass
        if (lb.reference_model is None) == (lb.reference_adapter is None):
            raise ValueError("lobass needs exactly one of lobass.reference_model or lobass.reference_adapter")
        reference = ((cfg.model, cfg.revision, {"adapter": lb.reference_adapter}) if lb.reference_adapter
                     else (lb.reference_model, lb.reference_revision, None))
        build, score = _chat_request, _lobass_scores
        passes = [("initial_", cfg.model, cfg.revision, None), ("reference_", *reference)]
        info = {"keep_fraction": lb.keep_fraction, "reference": lb.reference_model or lb.reference_adapter,
                "reference_revision": lb.reference_revision}
    else:
        build, score, passes = _ifd_requests, _ifd_scores, [("", cfg.model, cfg.revision, None)]
        info = {"direction": cfg.ifd.direction, "keep_fraction": cfg.ifd.keep_fraction}
    requests = len(build({"question": "q", "response": "r"}))
    console.say(f"{cfg.method}: reading {cfg.input} in the cluster")
    usable, read_rejects, rows_in, n_usable = _read_in_cluster(cfg, cfg.input, cfg.columns)
    console.say(f"{cfg.method}: {n_usable:,} usable samples of {rows_in:,} rows read")
    if not n_usable:
        raise nothing_usable("samples", [cfg.input], [Reject(**r) for r in
                                                      read_rejects.map_batches(_rejects_table, batch_format="pyarrow")
                                                      .take(1)])
    ds = _encoded(cfg, usable, build, requests)
    for n, (prefix, model, revision, extra) in enumerate(passes):
        # each pass's actors hold a whole model: passes run one after the other, not side by side
        ds = stages.materialized(_scored(cfg, ds, requests, prefix, model, revision, extra,
                                         drop_ids=n == len(passes) - 1, journal=journal),
                                 n_usable, f"{cfg.method}: scoring with {model}", console.progress)
    rule, columns = _rule(cfg), SCORE_COLUMNS[cfg.method]
    scored = ds.map_batches(_Score(score, columns, rule), batch_format="pyarrow").materialize()
    cut, distributions, eligible = _summaries(scored, columns, rule)
    decided = scored.map_batches(_Decide(cfg, cut), batch_format="pyarrow").materialize()
    counted = decided.map_batches(_count_outcomes, batch_format="pyarrow", batch_size=None).take_all()
    counts = {"rows_in": rows_in, **{k: sum(c[k] for c in counted) for k in ("kept", "dropped", "rejected")}}
    counts["rejected"] += rows_in - n_usable
    if counts["kept"] + counts["dropped"] + counts["rejected"] != rows_in:
        raise AssertionError(f"row counts do not reconcile: {counts}")
    paths = {"kept": child(cfg.output, "kept"), "scores": child(cfg.output, "scores"),
             "rejects": child(cfg.output, "rejects")}
    stages.write_jsonl(decided.map_batches(_keep_messages, batch_format="pyarrow"), paths["kept"])
    stages.write_parquet(decided.map_batches(_scores_table(columns), batch_format="pyarrow"), paths["scores"])
    # read rejects first, then those the encoder refused: the order a single reader gives
    stages.write_jsonl(read_rejects.union(decided).map_batches(_rejects_table, batch_format="pyarrow"),
                       paths["rejects"])
    # the last kept value of the keep column: rows beyond it were dropped (None: nothing kept)
    info |= {"eligible": eligible, "distributions": distributions,
             "cut": None if cut.value is None else cut.value if rule.lowest else -cut.value}
    return counts, info, paths


def canonical_answer(answer: str | None) -> str | None:
    """Numbers compare by value ('18', '18.0', '1,8' aside), other answers by normalised text."""
    if answer is None:
        return None
    try:
        value = float(answer.replace(",", ""))
        return str(int(value)) if value.is_integer() else repr(value)
    except ValueError:
        return " ".join(answer.lower().split())


# -- self-consistency: sample answers per question, keep the majority's ------------------------------

# One row per sampled answer: what scores/ holds, in this column order.
VOTE_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("question_id", pa.string()), ("question", pa.string()), ("response", pa.string()),
    ("finish_reason", pa.string()), ("answer", pa.string()), ("majority", pa.string()), ("agreement", pa.float64()),
    ("majority_correct", pa.bool_()), ("kept", pa.bool_()), ("reason", pa.string()), ("source", pa.string())])


def voted_samples(question: dict, texts: list[str], finish_reasons: list[str], checker) -> list[dict]:
    """The rows of one question's sampled answers: each kept when its answer is the majority's."""
    answers = [canonical_answer(checker.extract(t)) for t in texts]
    vote = filters.majority(answers)
    gold = question.get("gold")
    agreement = sum(a == vote for a in answers) / len(answers) if vote else 0.0
    correct = None if gold is None or vote is None else canonical_answer(checker.extract(gold) or gold) == vote
    rows = []
    for k, (text, answer, finish) in enumerate(zip(texts, answers, finish_reasons, strict=True)):
        kept = vote is not None and answer == vote
        reason = ("" if kept else "no parsable answer among the samples" if vote is None
                  else "no parsable answer" if answer is None
                  else f"answer {answer} disagrees with majority {vote}")
        rows.append({"sample_id": f"{question['question_id']}#{k}", "question_id": question["question_id"],
                     "question": question["question"], "response": text, "finish_reason": finish, "answer": answer,
                     "majority": vote, "agreement": agreement, "majority_correct": correct, "kept": kept,
                     "reason": reason, "source": question["source"]})
    return rows


class ZeroShotPrompts:
    """CPU stage: the target's zero-shot chat prompt for each question, tokenized."""

    def __init__(self, model: str, revision: str | None) -> None:
        from transformers import AutoTokenizer

        from sapray.engines.models import resolve_model

        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(model, revision))

    def __call__(self, batch: pa.Table) -> pa.Table:
        prompts = zero_shot_prompts(self.tokenizer, batch.column("question").to_pylist())
        return batch.append_column("prompt_ids", pa.array(prompts, pa.list_(pa.int32())))


class _Vote:
    def __init__(self, cc: ConsistencyConfig) -> None:
        self.checker = make_checker(cc.checker, cc.regex)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [row for q in batch.to_pylist()
                for row in voted_samples(q, q["texts"], q["finish_reasons"], self.checker)]
        return pa.Table.from_pylist(rows, schema=VOTE_SCHEMA)


def _sampling_sums(batch: pa.Table) -> dict:
    tokens = pc.sum(batch.column("completion_tokens")).as_py() or 0
    return {"questions": [batch.num_rows], "generated_tokens": [int(tokens)]}


def _vote_sums(batch: pa.Table) -> dict:
    kept = batch.column("kept").to_numpy(zero_copy_only=False)
    return {"rows": [batch.num_rows], "kept": [int(kept.sum())],
            "without_majority": [batch.column("majority").null_count]}


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
    commit = locate(cfg.model, cfg.revision).commit
    sampling = SamplingConfig(temperature=cc.temperature, max_tokens=cc.max_tokens, n=cc.samples, seed=cc.seed)
    prompts = questions.map_batches(ZeroShotPrompts, batch_format="pyarrow", batch_size=cfg.ray.batch_size,
                                    fn_constructor_kwargs={"model": cfg.model, "revision": commit},
                                    **stages.cpu_pool())
    sampled = stages.materialized(prompts.map_batches(**actor_pool(GenerateActor, {
        "engine": cfg.engine, "model": cfg.model, "revision": commit, "engine_args": cfg.engine_args,
        "sampling": sampling.__dict__, "journal": journal}, cfg.ray)), questions.count(),
        f"consistency: {cc.samples} answers per question", console.progress)
    sampling_sums = sampled.map_batches(_sampling_sums, batch_format="pyarrow", batch_size=None).take_all()
    voted = sampled.map_batches(_Vote(cc), batch_format="pyarrow").materialize()
    vote_sums = voted.map_batches(_vote_sums, batch_format="pyarrow", batch_size=None).take_all()
    rows, kept = sum(p["rows"] for p in vote_sums), sum(p["kept"] for p in vote_sums)
    asked, rejected = sum(p["questions"] for p in sampling_sums), read_rejects.count() + duplicates.count()
    if asked + rejected != rows_read:
        raise AssertionError(f"question rows do not reconcile: {rows_read} read, {asked} asked, {rejected} rejected")
    distributions, _ = _distributions(voted, ("agreement",), "kept")
    info = {"samples_per_question": cc.samples, "temperature": cc.temperature, "questions": asked,
            # every question has cc.samples rows, all with or all without a majority
            "questions_without_parsable_answer": sum(p["without_majority"] for p in vote_sums) // cc.samples,
            "generated_tokens": sum(p["generated_tokens"] for p in sampling_sums), "distributions": distributions,
            "question_rows_rejected": rejected}
    counts = {"rows_in": rows, "kept": kept, "dropped": rows - kept, "rejected": 0}
    paths = {"kept": child(cfg.output, "kept"), "scores": child(cfg.output, "scores"),
             "rejects": child(cfg.output, "rejects")}
    stages.write_jsonl(voted.map_batches(_keep_messages, batch_format="pyarrow"), paths["kept"])
    stages.write_parquet(voted, paths["scores"])
    # in input order, as a single reader would list them
    stages.write_jsonl(read_rejects.union(duplicates).sort("order").map_batches(question_rejects(None),
                                                                                batch_format="pyarrow"),
                       paths["rejects"])
    return counts, info, paths


def fingerprint(cfg: FilterConfig) -> dict:
    """What determines a filter's journal: the config but its output and Ray placement (the batch size and
    shard size decide the batches), the models' commits, the inputs' identities, sapray's version."""
    lb = cfg.lobass
    commits = {"model": locate(cfg.model, cfg.revision).commit,
               "reference": locate(lb.reference_model, lb.reference_revision).commit if lb.reference_model else None}
    inputs = [cfg.input, cfg.dsweight.valid if cfg.dsweight else None, lb.reference_adapter]
    return {**cfg.model_dump(exclude={"output", "ray"}), "batch_size": cfg.ray.batch_size,
            "shard_mb": cfg.ray.shard_mb, "commits": commits, "sapray": sapray_version(),
            "inputs": {uri: input_identity(uri) for uri in inputs if uri}}


def run_filter(cfg: FilterConfig, restart: bool = False) -> FilterResult:
    """Run the filter and write kept/, scores/ and rejects/ under ``cfg.output`` (from the workers). The
    engine actors journal each batch they score or sample (``<output>/journal``): run again after a stop,
    the filter reads what was finished and computes the rest (``restart``: from scratch)."""
    init_ray(cfg.ray)
    journal = Journal(child(cfg.output, "journal"), fingerprint(cfg), restart)
    if memos(journal.folder):
        console.say(f"resuming: {memos(journal.folder):,} batch(es) of the earlier run from {journal.folder}")
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
    return FilterResult(summary, paths)
