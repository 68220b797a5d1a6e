"""The scored filters' stages (METHOD.md §2, §4, §5): samples read in the cluster, each method's requests and
scores, the keep rule, the exact cut and distributions (order statistics over the whole set), the outputs.

Methods: ``dsweight`` (IWSI: keep the fraction of samples closest to a labeled valid set's loss), ``lobass``
(keep the most learnable: the largest relative loss drop from the initial to the reference model) and ``ifd``
(Cherry: keep high IFD, drop IFD > 1; or the reverse, low IFD) and ``rsr`` (keep the lowest rank-surprisal
ratio: the responses the target finds most familiar given their question). Input: rows with a question and a response,
either as columns or as a ``messages`` list (first user turn = question, last assistant turn = response).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sapray.config import Columns, FilterConfig
from sapray.core import filters, metrics, order_stats
from sapray.dataplane import stages
from sapray.dataplane.actors import engine_spec
from sapray.dataplane.raydata import actor_pool
from sapray.dataplane.read import (
    InputError,
    Reject,
    iter_records,
    nothing_usable,
    number_as_text,
    row_pair,
    text_problem,
)
from sapray.dataplane.shards import check_columns
from sapray.engines.models import locate


@dataclass
class FilterResult:
    summary: dict
    paths: dict[str, str]  # name -> folder or file written (kept, scores, rejects)
    output: str  # the folder they are in (a rehearsal's: <output>/rehearsal)


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


def _rsr_scores(row: dict) -> dict:
    """The response given its question: its mean NLL and its rank-surprisal ratio (the paper's context)."""
    return {"nll": _nll(row), "rsr": metrics.rsr_of_sums(row["ranks_0"], row["sum_0"])}


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


def keep_rule(cfg: FilterConfig) -> Rule:
    if cfg.method == "dsweight":
        return Rule("shift", True, cfg.dsweight.keep_fraction)
    if cfg.method == "lobass":
        return Rule("learnability", False, cfg.lobass.keep_fraction)
    if cfg.method == "rsr":
        return Rule("rsr", True, cfg.rsr.keep_fraction)
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
    if cfg.method == "rsr":
        return f"rsr {row['rsr']:.4f} outside the lowest {cfg.rsr.keep_fraction:.0%}"
    direction = cfg.ifd.direction
    if direction == "high" and row["ifd"] > 1.0:
        return f"ifd {row['ifd']:.4f} > 1 (the question makes the response harder)"
    side = "highest" if direction == "high" else "lowest"
    return f"ifd {row['ifd']:.4f} outside the {side} {cfg.ifd.keep_fraction:.0%}"


SCORE_COLUMNS = {"dsweight": ("loss", "ds_weight", "shift"),
                 "lobass": ("loss_initial", "loss_reference", "learnability"),
                 "ifd": ("nll_given_question", "nll_alone", "ifd"),
                 "rsr": ("nll", "rsr")}


def encode_samples(cfg: FilterConfig, ds, build: Callable[[dict], list], requests: int, skip: Any = None):
    """Each row's requests tokenized (``stages.EncodeRequests``), but rows whose order is in ``skip``."""
    return ds.map_batches(
        stages.EncodeRequests, batch_format="pyarrow", batch_size=cfg.ray.batch_size,
        fn_constructor_kwargs={"model": cfg.model, "revision": cfg.revision, "engine": cfg.engine,
                               "engine_args": cfg.engine_args, "build": build, "requests": requests,
                               "boundary": "joint", "overlong": cfg.overlong, "skip": skip}, **stages.cpu_pool())


def score_samples(cfg: FilterConfig, ds, requests: int, prefix: str, model: str, revision: str | None,
            engine_args: dict | None = None, drop_ids: bool = True, journaled: Any = None, writer: Any = None):
    """Score every request of every row with an engine actor pool; sums and token counts come back (rows in
    ``journaled`` take its values; newly scored rows go to ``writer``: ``stages.ScoreSums``)."""
    # Resolved here first, so a missing model fails before any actor starts; actors load the same commit.
    spec = engine_spec(cfg, locate(model, revision), model)
    pool = actor_pool(stages.ScoreSums, {
        "spec": spec.with_args({**spec.engine_args, **(engine_args or {})}), "requests": requests, "prefix": prefix,
        "drop_ids": drop_ids, "journaled": journaled, "writer": writer}, cfg.ray)
    return ds.map_batches(**pool, batch_format="pyarrow")


class ScoreColumns:
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
                            if not c.startswith(("sum_", "ranks_", "tokens_", "initial_", "reference_"))])
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


class Decide:
    def __init__(self, cfg: FilterConfig, cut: order_stats.Cut) -> None:
        self.cfg, self.cut = cfg, cut

    def __call__(self, batch: pa.Table) -> pa.Table:
        keys = batch.column("rank_key").to_numpy(zero_copy_only=False).astype(np.uint64)
        orders = batch.column("order").to_numpy(zero_copy_only=False).astype(np.uint64)
        kept = self.cut.keeps(keys, orders) & batch.column("eligible").to_numpy(zero_copy_only=False)
        reasons = ["" if k or row["reject"] else _reason(self.cfg, row, self.cut.value)
                   for k, row in zip(kept, batch.to_pylist(), strict=True)]
        return batch.append_column("kept", pa.array(kept, pa.bool_())).append_column("reason", pa.array(reasons))


def keep_summaries(ds, columns: tuple[str, ...], rule: Rule) -> tuple[order_stats.Cut, dict, int]:
    """(the keep cut, the score distributions, how many rows could be kept), in one set of passes."""
    eligible, _ = stages.moments(ds, [], where="eligible")
    k = filters.keep_count(rule.fraction, eligible)
    dists, selected = distributions(ds, columns, "ok", {"cut": (_eligible_keys, [k] if k else [])})

    def tied_order(key: int, j: int) -> int:
        return stages.select(ds, {"order": _tied_orders(key)}, {"order": [j]})["order"][0].key

    return order_stats.cut_at(k, selected["cut"][0] if k else None, tied_order), dists, eligible


def distributions(ds, columns: tuple[str, ...], where: str,
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


def read_samples_in_cluster(cfg: FilterConfig, uri: str, columns: Columns):
    """(usable rows, rejected rows, rows in, usable rows) of an input, read in the cluster. Rejected rows
    are set apart before scoring, so a good row's batch-mates are the same as in a clean file."""
    check_columns(uri, [[columns.question, columns.response], [columns.messages]])
    ds, rows_in = stages.read_dataset([uri], partial(sample_row, columns=columns), SAMPLE_SCHEMA,
                                      max(1, int(cfg.ray.shard_mb * 2**20)))
    usable, rejected = stages.split_rejected(ds)
    return usable, rejected, rows_in, usable.count()


def valid_mean_loss(cfg: FilterConfig, build) -> tuple[float, int, int]:
    """(mean loss, rows scored, rows rejected) of the dsweight valid set, through the same stages."""
    ds = cfg.dsweight
    columns = cfg.columns.model_copy(update={"response": ds.valid_response_column})
    usable, _, rows_in, n_usable = read_samples_in_cluster(cfg, ds.valid, columns)
    if not n_usable:
        raise InputError(f"{ds.valid}: no usable valid rows ({rows_in} rejected)")
    valid = score_samples(cfg, encode_samples(cfg, usable, build, 1), 1, "", cfg.model, cfg.revision)
    losses = valid.map_batches(ScoreColumns(partial(_dsweight_scores, valid_mean=1.0), SCORE_COLUMNS["dsweight"],
                                            Rule("shift", True, 1.0)), batch_format="pyarrow").materialize()
    used, parts = stages.moments(losses, ["loss"], where="ok")
    if not used:
        raise InputError(f"{ds.valid}: no valid row could be scored")
    return parts["loss"][0].mean, used, rows_in - used


def kept_messages(batch: pa.Table) -> pa.Table:
    kept = batch.filter(pc.field("kept"))
    messages = [[{"role": "user", "content": q}, {"role": "assistant", "content": r}]
                for q, r in zip(kept.column("question").to_pylist(), kept.column("response").to_pylist(), strict=True)]
    return pa.table({"messages": messages, "sample_id": kept.column("sample_id"), "source": kept.column("source")})


def scores_table(columns: tuple[str, ...]) -> Callable[[pa.Table], pa.Table]:
    def fn(batch: pa.Table) -> pa.Table:
        return batch.filter(pc.field("ok")).select(
            ["sample_id", "question", "response", "source", "gold", *columns, "kept", "reason"])
    return fn


def rejects_table(batch: pa.Table) -> pa.Table:
    out = batch.filter(pc.not_equal(batch.column("reject"), ""))
    none = pa.nulls(out.num_rows, pa.string())
    return pa.table({"source": out.column("source"), "reason": out.column("reject"),
                     "stage": out.column("reject_stage"), "question_id": none, "strategy": none})


def count_outcomes(batch: pa.Table) -> dict:
    ok = batch.column("ok").to_numpy(zero_copy_only=False)
    kept = batch.column("kept").to_numpy(zero_copy_only=False)
    return {"rows": [batch.num_rows], "kept": [int(kept.sum())], "dropped": [int((ok & ~kept).sum())],
            "rejected": [int((~ok).sum())]}


@dataclass(frozen=True)
class Method:
    """A scored filter method: the requests of a sample (``build``), the scores from their sums, the scoring
    passes (column prefix, model, revision, extra engine args) and what the summary says of its settings."""

    build: Callable[[dict], list[tuple[Any, str]]]
    score: Callable[[dict], dict]
    passes: list[tuple[str, str, str | None, dict | None]]
    info: dict[str, Any]


def scored_method(cfg: FilterConfig) -> Method:
    """dsweight (its valid set's mean loss scored first), lobass, ifd or rsr, as ``cfg`` sets it."""
    if cfg.method == "dsweight":
        if cfg.dsweight is None:
            raise ValueError("method dsweight needs a dsweight section with a valid set")
        build = partial(_dsweight_requests, loss=cfg.dsweight.loss)
        valid_mean, valid_rows, valid_rejected = valid_mean_loss(cfg, build)
        return Method(build, partial(_dsweight_scores, valid_mean=valid_mean), [("", cfg.model, cfg.revision, None)],
                      {"valid_rows": valid_rows, "valid_rows_rejected": valid_rejected, "valid_mean_loss": valid_mean,
                       "loss": cfg.dsweight.loss, "keep_fraction": cfg.dsweight.keep_fraction})
    if cfg.method == "lobass":
        lb = cfg.lobass
        if (lb.reference_model is None) == (lb.reference_adapter is None):
            raise ValueError("lobass needs exactly one of lobass.reference_model or lobass.reference_adapter")
        reference = ((cfg.model, cfg.revision, {"adapter": lb.reference_adapter}) if lb.reference_adapter
                     else (lb.reference_model, lb.reference_revision, None))
        return Method(_chat_request, _lobass_scores, [("initial_", cfg.model, cfg.revision, None),
                                                      ("reference_", *reference)],
                      {"keep_fraction": lb.keep_fraction, "reference": lb.reference_model or lb.reference_adapter,
                       "reference_revision": lb.reference_revision})
    if cfg.method == "rsr":
        return Method(_chat_request, _rsr_scores, [("", cfg.model, cfg.revision, None)],
                      {"keep_fraction": cfg.rsr.keep_fraction})
    return Method(_ifd_requests, _ifd_scores, [("", cfg.model, cfg.revision, None)],
                  {"direction": cfg.ifd.direction, "keep_fraction": cfg.ifd.keep_fraction})
