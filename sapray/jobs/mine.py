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

import time

from sapray.config import MineConfig
from sapray.console import console
from sapray.core.exemplars import zero_shot_prompts
from sapray.core.sample import sample_order
from sapray.dataplane.actors import engine_spec
from sapray.dataplane.journal import Journal, batch_log, job_fingerprint
from sapray.dataplane.mining import MineResult, greedy_answers, journal_path, mine_until, normalised
from sapray.dataplane.raydata import init_ray
from sapray.dataplane.read import read_questions
from sapray.engines.models import locate


def fingerprint(cfg: MineConfig, commit: str | None) -> dict:
    """What determines the mined answers: the config but its output and Ray placement (the batch size decides
    where mining may stop), the model's commit, the pool's and exclusions' identities, sapray's version."""
    return job_fingerprint(cfg.model_dump(exclude={"output", "ray"}), {"model": commit}, [cfg.pool, *cfg.exclude],
                           batch_size=cfg.ray.batch_size)


def run_mine(cfg: MineConfig, restart: bool = False) -> MineResult:
    from transformers import AutoTokenizer

    started = time.monotonic()
    questions, rejects = read_questions(cfg.pool, cfg.columns, need_gold=cfg.checker != "none")
    banned_ids, banned_texts = set(), set()
    for uri in cfg.exclude:
        excluded, _ = read_questions(uri, cfg.columns, need_gold=False)
        banned_ids |= set(excluded)
        banned_texts |= {normalised(q["question"]) for q in excluded.values()}
    eligible = [q for q, row in questions.items()
                if q not in banned_ids and normalised(row["question"]) not in banned_texts]
    pool = [questions[q] for q in sample_order(eligible, cfg.seed)[: cfg.max_questions]]
    resolved = locate(cfg.model, cfg.revision)  # here first: a missing model fails before any actor starts
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    init_ray(cfg.ray)
    console.say(f"mining: the target answers up to {len(pool)} of {len(questions)} pool questions until {cfg.n} "
                f"pass the {cfg.checker} checker (greedy, up to {cfg.max_tokens} tokens, {cfg.ray.batch_size} "
                "a batch)")
    journal = Journal(journal_path(cfg.output), fingerprint(cfg, resolved.commit), restart)
    done = sorted(name for name in journal.entries if name.startswith("batch-"))
    if done:
        console.say(f"resuming: {len(done)} batch(es) of answers from {journal.folder}")
    prompts = zero_shot_prompts(tokenizer, [q["question"] for q in pool])
    answers = greedy_answers(pool, prompts, engine_spec(cfg, resolved), cfg.ray, cfg.max_tokens,
                             "mining: answering", batch_log(journal, "batch"))
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


