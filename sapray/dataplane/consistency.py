"""The consistency filter's stages (METHOD.md §4): the target's zero-shot prompts, the vote over each
question's sampled answers (its samples kept when their answer is the majority's), and the sums the
summary is made of."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from sapray.config import ConsistencyConfig
from sapray.core.answers import make_checker
from sapray.core.exemplars import zero_shot_prompts
from sapray.core.filters import voted_samples

# One row per sampled answer: what scores/ holds, in this column order.
VOTE_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("question_id", pa.string()), ("question", pa.string()), ("response", pa.string()),
    ("finish_reason", pa.string()), ("answer", pa.string()), ("majority", pa.string()), ("agreement", pa.float64()),
    ("majority_correct", pa.bool_()), ("kept", pa.bool_()), ("reason", pa.string()), ("source", pa.string())])


class ZeroShotPrompts:
    """CPU stage: the target's zero-shot chat prompt for each question, tokenized."""

    def __init__(self, model: str, revision: str | None) -> None:
        from transformers import AutoTokenizer

        from sapray.engines.models import resolve_model

        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(model, revision))

    def __call__(self, batch: pa.Table) -> pa.Table:
        prompts = zero_shot_prompts(self.tokenizer, batch.column("question").to_pylist())
        return batch.append_column("prompt_ids", pa.array(prompts, pa.list_(pa.int32())))


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
