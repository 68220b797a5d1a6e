"""The consistency filter's stages (METHOD.md §4): the target's zero-shot prompts, the vote over each
question's sampled answers (its samples kept when their answer is the majority's), and the sums the
summary is made of."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sapray.config import ConsistencyConfig, FilterConfig
from sapray.console import console
from sapray.core.answers import make_checker
from sapray.core.exemplars import zero_shot_prompts
from sapray.core.filters import voted_samples
from sapray.dataplane import stages
from sapray.dataplane.actors import GenerateActor, engine_spec
from sapray.dataplane.journal import Journaled, RowJournal, row_writer
from sapray.dataplane.raydata import actor_pool
from sapray.engines.base import SamplingConfig
from sapray.engines.models import ResolvedModel

# One row per sampled answer: what scores/ holds, in this column order.
VOTE_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("question_id", pa.string()), ("question", pa.string()), ("response", pa.string()),
    ("finish_reason", pa.string()), ("answer", pa.string()), ("majority", pa.string()), ("agreement", pa.float64()),
    ("majority_correct", pa.bool_()), ("kept", pa.bool_()), ("reason", pa.string()), ("source", pa.string())])


class ZeroShotPrompts:
    """CPU stage: the target's zero-shot chat prompt for each question, tokenized; a question whose ``order``
    is in ``skip`` (answered in a journal: a rerun) gets an empty prompt, not tokenized again."""

    def __init__(self, model: str, revision: str | None, skip: Any = None) -> None:
        from transformers import AutoTokenizer

        from sapray.engines.models import resolve_model

        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(model, revision))
        self.skip = Journaled(skip)

    def __call__(self, batch: pa.Table) -> pa.Table:
        journaled, _ = self.skip.find(batch.column("order").to_numpy())
        questions = batch.column("question").to_pylist()
        todo = [q for q, done in zip(questions, journaled, strict=True) if not done]
        prompts = iter(zero_shot_prompts(self.tokenizer, todo))
        ids = [[] if done else next(prompts) for done in journaled]
        return batch.append_column("prompt_ids", pa.array(ids, pa.list_(pa.int32())))


class Vote:
    def __init__(self, cc: ConsistencyConfig) -> None:
        self.checker = make_checker(cc.checker, cc.regex)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [row for q in batch.to_pylist()
                for row in voted_samples(q, q["texts"], q["finish_reasons"], self.checker)]
        return pa.Table.from_pylist(rows, schema=VOTE_SCHEMA)


def sampling_sums(batch: pa.Table) -> dict:
    tokens = pc.sum(batch.column("completion_tokens")).as_py() or 0
    return {"questions": [batch.num_rows], "generated_tokens": [int(tokens)]}


def vote_sums(batch: pa.Table) -> dict:
    kept = batch.column("kept").to_numpy(zero_copy_only=False)
    return {"rows": [batch.num_rows], "kept": [int(kept.sum())],
            "without_majority": [batch.column("majority").null_count]}


def sample_answers(cfg: FilterConfig, questions: Any, resolved: ResolvedModel, journal: RowJournal | None) -> Any:
    """``cc.samples`` answers to each question from the target (as the driver ``resolved`` it) in the cluster,
    materialized;
    questions the ``journal`` answered (a rerun) are neither prompted nor sampled again, and newly answered
    ones are journaled as they come."""
    import ray

    cc = cfg.consistency
    sampling = SamplingConfig(temperature=cc.temperature, max_tokens=cc.max_tokens, n=cc.samples, seed=cc.seed)
    journaled = journal.load() if journal else None
    if journaled is not None:
        console.say(f"resuming: {journaled.num_rows:,} questions answered by the earlier run (not prompted or "
                    f"sampled again) from {journal.folder}")
    skip = None if journaled is None else ray.put(journaled.select(["order"]))
    prompts = questions.map_batches(ZeroShotPrompts, batch_format="pyarrow", batch_size=cfg.ray.batch_size,
                                    fn_constructor_kwargs={"model": cfg.model, "revision": resolved.commit,
                                                           "skip": skip}, **stages.cpu_pool())
    with row_writer(journal, cfg.ray.journal_rows) as writer:
        pool = actor_pool(GenerateActor, {"spec": engine_spec(cfg, resolved), "sampling": sampling.__dict__,
                                          "journaled": None if journaled is None else ray.put(journaled),
                                          "writer": writer}, cfg.ray)
        return stages.materialized(prompts.map_batches(**pool), questions.count(),
                                   f"consistency: {cc.samples} answers per question", console.progress)
