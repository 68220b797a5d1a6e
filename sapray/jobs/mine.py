"""Exemplar mining on its own (``sapray mine``): the target answers pool questions until n pass the checker.

The pool is shuffled by the seed (as ``select`` orders its pool) after leaving out every question an
``exclude`` file asks (by id and by text), so no exemplar answers a question it will be scored on.
The target answers greedily and zero-shot on a ``GenerateActor`` pool; answers stream back in pool
order one Ray Data batch (``ray.batch_size`` questions) at a time, and mining stops at the batch
that brings the n-th checked-correct answer. ``sapray.core.exemplars.mine`` then applies the same counts
and shortfall policy as ``select``. Output: one exemplar per line, as ``exemplars.file`` reads it,
and a provenance sidecar (``<output>.json`` beside ``<output>.jsonl``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from sapray.config import Columns, RayConfig, Strict
from sapray.core import exemplars as ex
from sapray.core.answers import make_checker
from sapray.core.sample import sample_order
from sapray.dataplane.actors import GenerateActor
from sapray.dataplane.journal import Journal, batch_log, input_identity, sapray_version
from sapray.dataplane.raydata import init_ray
from sapray.dataplane.read import read_questions
from sapray.dataplane.teachers import BatchLog, answers_in_batches, unlogged
from sapray.engines import EngineName, SamplingConfig
from sapray.engines.models import locate
from sapray.present.console import console

log = logging.getLogger(__name__)


class MineConfig(Strict):
    """Exemplar mining alone (``sapray mine``): its flags set these keys."""

    pool: str = Field(description="questions with gold answers (JSONL, JSON, Parquet, CSV or a datasets folder)")
    output: str = Field(description="the exemplar file to write (JSONL); provenance goes beside it as .json")
    model: str = Field("smollm2", description="target: 'smollm2', a local HF directory or a Hugging Face Hub id")
    revision: str | None = Field(None, description="with a Hub id: branch, tag or commit hash")
    engine: EngineName = Field("hf", description="engine: hf (transformers) or vllm")
    engine_args: dict[str, Any] = Field({}, description="keyword arguments for the engine")
    n: int = Field(8, ge=1, description="checked-correct answers to find; mining stops once they are found")
    max_questions: int | None = Field(None, ge=1, description="ask at most this many pool questions")
    checker: Literal["gsm8k", "choice", "exact", "regex", "none"] = Field(
        "gsm8k", description="how an answer is checked against the gold one (none: every answer passes)")
    regex: str | None = Field(None, description="the regex checker's pattern")
    max_tokens: int = Field(256, ge=1, description="answer length cap; a cut-off answer never counts as correct")
    seed: int = Field(0, description="the order in which pool questions are asked")
    exclude: list[str] = Field([], description="question files whose questions must not be mined (id or text)")
    shortfall: Literal["unchecked", "error"] = Field(
        "error", description="fewer than n correct answers: stop with an error, or fill up with unchecked answers")
    columns: Columns = Columns()
    ray: RayConfig = RayConfig()


@dataclass
class MineResult:
    exemplars: list[ex.Exemplar]
    rows: list[dict]  # the exemplar file's rows
    provenance: dict


def greedy_answers(pool: Sequence[dict], tokenizer, engine: str, model: str, revision: str | None,
                   engine_args: dict[str, Any], ray_cfg: RayConfig, max_tokens: int,
                   log: BatchLog = unlogged) -> Iterator[dict]:
    """The target's greedy zero-shot answers to ``pool``, streamed in pool order, one batch at a time; a batch
    in ``log`` (a journal) comes from there, each other one is logged as it arrives.

    Rows as ``GenerateActor`` returns them: row_id (the question id), texts, finish_reasons,
    completion_tokens. ``revision`` should be the commit the driver resolved, so every node loads it.
    """
    prompts = ex.zero_shot_prompts(tokenizer, [q["question"] for q in pool])
    rows = [{"row_id": q["question_id"], "prompt_ids": p} for q, p in zip(pool, prompts, strict=True)]
    sampling = SamplingConfig(temperature=0.0, max_tokens=max_tokens)
    kwargs = {"engine": engine, "model": model, "revision": revision, "engine_args": engine_args,
              "sampling": sampling.__dict__}
    return iter(console.progress(answers_in_batches(None, rows, GenerateActor, kwargs, ray_cfg, log), len(rows),
                                 "mining: answering"))


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


def _normalised(text: str) -> str:
    return " ".join(text.split()).lower()


def journal_path(output: str) -> Path:
    """Where mining into ``output`` journals its batches: ``x.jsonl`` -> ``x.journal/``."""
    path = Path(output)
    return path.with_suffix(".journal") if path.suffix == ".jsonl" else path.with_name(path.name + ".journal")


def fingerprint(cfg: MineConfig, commit: str | None) -> dict:
    """What determines the mined answers: the config but its output and Ray placement (the batch size decides
    where mining may stop), the model's commit, the pool's and exclusions' identities, sapray's version."""
    config = cfg.model_dump(exclude={"output", "ray"})
    return {**config, "batch_size": cfg.ray.batch_size, "commit": commit, "sapray": sapray_version(),
            "inputs": {uri: input_identity(uri) for uri in [cfg.pool, *cfg.exclude]}}


def run_mine(cfg: MineConfig, restart: bool = False) -> MineResult:
    from transformers import AutoTokenizer

    started = time.monotonic()
    questions, rejects = read_questions(cfg.pool, cfg.columns, need_gold=cfg.checker != "none")
    banned_ids, banned_texts = set(), set()
    for uri in cfg.exclude:
        excluded, _ = read_questions(uri, cfg.columns, need_gold=False)
        banned_ids |= set(excluded)
        banned_texts |= {_normalised(q["question"]) for q in excluded.values()}
    eligible = [q for q, row in questions.items()
                if q not in banned_ids and _normalised(row["question"]) not in banned_texts]
    pool = [questions[q] for q in sample_order(eligible, cfg.seed)[: cfg.max_questions]]
    resolved = locate(cfg.model, cfg.revision)  # here first: a missing model fails before any actor starts
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    init_ray(cfg.ray)
    console.say(f"mining: the target answers up to {len(pool)} of {len(questions)} pool questions until {cfg.n} "
                f"pass the {cfg.checker} checker (greedy, up to {cfg.max_tokens} tokens, {cfg.ray.batch_size} "
                "a batch)")
    journal = Journal(str(journal_path(cfg.output)), fingerprint(cfg, resolved.commit), restart)
    done = sorted(name for name in journal.entries if name.startswith("batch-"))
    if done:
        console.say(f"resuming: {len(done)} batch(es) of answers from {journal.folder}")
    answers = greedy_answers(pool, tokenizer, cfg.engine, cfg.model, resolved.commit, cfg.engine_args, cfg.ray,
                             cfg.max_tokens, batch_log(journal, "batch"))
    mined, report, generated = mine_until(pool, answers, cfg.n, cfg.checker, cfg.regex, cfg.shortfall)
    by_id = {q["question_id"]: q for q in pool}
    finish = {r["row_id"]: r["finish_reasons"][0] for r in generated}
    rows = [{"exemplar_id": e.exemplar_id, "question_id": e.source_question_id, "checked": e.checked,
             "question": by_id[e.source_question_id]["question"], "gold": by_id[e.source_question_id].get("gold"),
             "finish_reason": finish[e.source_question_id], "text": e.text} for e in mined]
    answered = report.pool_questions
    provenance = {
        "model": cfg.model, "revision": cfg.revision, "commit": resolved.commit, "engine": cfg.engine,
        "engine_args": cfg.engine_args, "checker": cfg.checker, "regex": cfg.regex, "max_tokens": cfg.max_tokens,
        "seed": cfg.seed, "n": cfg.n, "shortfall": cfg.shortfall, "batch_size": cfg.ray.batch_size,
        "pool": cfg.pool, "pool_questions": len(questions), "pool_rows_rejected": len(rejects),
        "exclude": cfg.exclude, "excluded": len(questions) - len(eligible), "max_questions": cfg.max_questions,
        "questions_available": len(pool), "questions_answered": answered,
        "correct": report.correct, "wrong": report.wrong, "unparsable": report.unparsable,
        "truncated": report.truncated, "filled_unchecked": report.filled_unchecked,
        "hit_rate": round(report.correct / answered, 4) if answered and cfg.checker != "none" else None,
        "found_n": (report.correct if cfg.checker != "none" else len(mined)) >= cfg.n,
        "exemplars": len(mined),
        "generated_tokens": int(sum(r["completion_tokens"] for r in generated)),
        "wall_s": round(time.monotonic() - started, 1),
    }
    return MineResult(mined, rows, provenance)


def sidecar_path(output: str) -> Path:
    """Where the provenance of an exemplar file goes: ``x.jsonl`` -> ``x.json``."""
    path = Path(output)
    return path.with_suffix(".json") if path.suffix == ".jsonl" else path.with_name(path.name + ".json")


def write_mined(output: str, result: MineResult) -> tuple[Path, Path]:
    """The exemplar file (one exemplar per line) and its provenance sidecar."""
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.rows), encoding="utf-8")
    side = sidecar_path(output)
    side.write_text(json.dumps(result.provenance, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path, side
