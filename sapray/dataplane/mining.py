"""Exemplar mining: the target answers questions zero-shot and greedily; its checked-correct answers are
the exemplars of the self-aligned contexts (METHOD.md §1).

``selection_exemplars``: the pool of ``sapray select`` and ``run`` (supplied in a file, or mined once and
kept in the selection's journal). ``greedy_answers``: the target's answers, for both; ``mine_until``:
``sapray mine``, which streams answers batch by batch and stops once n pass the checker.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sapray.config import RayConfig, SelectConfig
from sapray.console import console
from sapray.core import exemplars as ex
from sapray.core.answers import make_checker
from sapray.core.sample import sample_order
from sapray.dataplane.actors import GenerateActor, engine_spec
from sapray.dataplane.journal import Journal
from sapray.dataplane.read import load_exemplar_file, read_questions
from sapray.dataplane.sample import Target
from sapray.dataplane.teachers import BatchLog, answers_in_batches, unlogged
from sapray.engines.base import EngineSpec, SamplingConfig
from sapray.storage import with_suffix, write_text

log = logging.getLogger(__name__)


def selection_exemplars(cfg: SelectConfig, target: Target, inputs: Any, journal: Journal) -> tuple[list, dict]:
    """The exemplars: supplied in a file, or mined (once: the journal keeps them)."""
    if cfg.exemplars.file is None and "exemplars" in journal:
        mined = journal.get("exemplars")
        return [ex.Exemplar(**e) for e in mined["exemplars"]], mined["info"]
    pool, info = _mine_for_selection(cfg, target, inputs.question_ids, lambda ids: inputs.fetch(ids)[0])
    if cfg.exemplars.file is None:
        journal.put("exemplars", {"exemplars": [e.to_dict() for e in pool], "info": info})
    return pool, info


def _mine_for_selection(cfg: SelectConfig, target: Target, compared: list[str],
                    fetch: Callable[[set[str]], dict[str, dict]]) -> tuple[list, dict]:
    """The exemplar pool: supplied, mined from a pool kept apart from the ``compared`` questions, or,
    with neither, mined from the compared questions themselves (``ex.choose`` skips a question's own;
    ``fetch`` brings their rows from the cluster)."""
    if cfg.exemplars.file:
        pool = load_exemplar_file(cfg.exemplars.file)
        return pool, {"source": cfg.exemplars.file, "supplied": len(pool)}
    if cfg.exemplars.pool:
        questions, rejects = read_questions(cfg.exemplars.pool, cfg.data.columns,
                                            need_gold=cfg.exemplars.checker != "none")
        kept_apart = set(compared)
        chosen = sample_order([q for q in questions if q not in kept_apart], cfg.sample.seed)[: cfg.exemplars.pool_size]
    else:
        rejects = []
        chosen = sample_order(compared, cfg.sample.seed)[: cfg.exemplars.pool_size]
        questions = fetch(set(chosen))
    pool = [questions[q] for q in chosen]
    # from the compared questions, one more: a question whose own answer is among them still gets n others
    need = cfg.exemplars.n + (0 if cfg.exemplars.pool else 1)
    unchecked = cfg.exemplars.checker == "none" or not any(q.get("gold") for q in pool)
    if unchecked:  # nothing can be checked: ask only for the answers that will be used
        pool = pool[:need]
    prompts = ex.zero_shot_prompts(target.tokenizer, [q["question"] for q in pool])
    console.say(f"mining exemplars: the target answers {len(pool)} questions (greedy, up to "
                f"{cfg.exemplars.max_tokens} tokens each)" + ("; with no gold answer to check them against, its "
                                                             "answers are used unchecked" if unchecked else ""))
    out = {r["row_id"]: r for r in greedy_answers(pool, prompts, engine_spec(cfg, target.model), cfg.ray,
                                                   cfg.exemplars.max_tokens, "mining exemplars")}
    placement = {}
    for row in out.values():
        placement[row["actor"]] = placement.get(row["actor"], 0) + 1
    answers = [out[q["question_id"]]["texts"][0] for q in pool]
    truncated = [out[q["question_id"]]["finish_reasons"][0] == "length" for q in pool]
    mined, report = ex.mine(pool, answers, need, cfg.exemplars.checker, cfg.exemplars.regex,
                            cfg.exemplars.shortfall, truncated)
    info = {"source": cfg.exemplars.pool or "the compared questions", "pool_rejects": len(rejects), **report.to_dict(),
            "generated_tokens": int(sum(r["completion_tokens"] for r in out.values())), "placement": placement}
    return mined, info


@dataclass
class MineResult:
    exemplars: list[ex.Exemplar]
    rows: list[dict]  # the exemplar file's rows
    provenance: dict


def greedy_answers(pool: Sequence[dict], prompts: Sequence[list[int]], spec: EngineSpec, ray_cfg: RayConfig,
                   max_tokens: int, what: str, log: BatchLog = unlogged) -> Iterator[dict]:
    """The target's greedy answers to ``pool`` (its zero-shot ``prompts``, ``ex.zero_shot_prompts``), streamed in
    pool order, one batch (``ray.batch_size`` questions, or fewer so that every actor gets one) at a time,
    ``what`` showing the progress; a batch in ``log`` (a journal) comes from there, each other one is logged as
    it arrives. ``select`` and ``run`` mine their exemplars here, ``mine`` too.

    Rows as ``GenerateActor`` returns them: row_id (the question id), texts, finish_reasons,
    completion_tokens, actor. ``spec.revision`` should be the commit the driver resolved, so every node loads it.
    """
    rows = [{"row_id": q["question_id"], "prompt_ids": p} for q, p in zip(pool, prompts, strict=True)]
    sampling = SamplingConfig(temperature=0.0, max_tokens=max_tokens)
    answers = answers_in_batches(None, rows, GenerateActor, {"spec": spec, "sampling": sampling.__dict__}, ray_cfg, log)
    return iter(console.progress(answers, len(rows), what))


def mine_until(
    pool: Sequence[dict], answers: Iterable[dict], n: int, checker_name: str, regex: str | None = None,
    shortfall: str = "error",
) -> tuple[list[ex.Exemplar], ex.MiningReport, list[dict]]:
    """Check ``answers`` (rows in pool order) as they arrive and stop once ``n`` pass the checker (with
    checker ``none``: once ``n`` are non-empty); then ``exemplars.mine`` over the questions answered.

    Returns the exemplars, the report and the generated rows of the questions answered.
    """
    checker = None if checker_name == "none" else make_checker(checker_name, regex)
    asked, rows, found = [], [], 0
    stream = iter(answers)
    for question, row in zip(pool, stream, strict=True):
        if row["row_id"] != question["question_id"]:  # the checks below pair answers with questions by order
            raise AssertionError(f"answer for {row['row_id']} arrived in place of {question['question_id']}")
        asked.append(question)
        rows.append(row)
        text, cut = row["texts"][0], row["finish_reasons"][0] == "length"
        hit = bool(text.strip()) if checker is None else bool(ex.judge(checker, question, text, cut))
        found += hit
        if hit:  # a long run shows its progress
            log.info("mining: %d of %d found after %d questions", found, n, len(asked))
        if found >= n:
            break
    close = getattr(stream, "close", None)
    if close:  # stop generating the batches already queued
        close()
    mined, report = ex.mine(asked, [r["texts"][0] for r in rows], n, checker_name, regex, shortfall,
                            [r["finish_reasons"][0] == "length" for r in rows])
    return mined, report, rows


def normalised(text: str) -> str:
    return " ".join(text.split()).lower()


def journal_path(output: str) -> str:
    """Where mining into ``output`` journals its batches: ``x.jsonl`` -> ``x.journal/`` (beside it, on S3 too)."""
    return with_suffix(output, ".journal")


def sidecar_path(output: str) -> str:
    """Where the provenance of an exemplar file goes: ``x.jsonl`` -> ``x.json``."""
    return with_suffix(output, ".json")


def write_mined(output: str, result: MineResult) -> tuple[str, str]:
    """The exemplar file (one exemplar per line) and its provenance sidecar, local or on an object store."""
    write_text(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.rows))
    side = sidecar_path(output)
    write_text(side, json.dumps(result.provenance, indent=2, ensure_ascii=False) + "\n")
    return output, side
