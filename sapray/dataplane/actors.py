"""Ray Data stages that hold an engine: one actor class per job (score, generate).

Each actor loads the engine of its ``EngineSpec`` (``engine_spec``: from a config and the commit the driver
resolved) once and then serves batches. Actors resolve the model name themselves
(``smollm2`` is converted once per node; a Hub id at ``revision`` comes from that node's Hugging Face
cache or the Hub), so a cluster's nodes need not share the driver's paths.
Rows travel as plain columns; a context (text, chat messages or token ids) travels as JSON text so
Arrow sees one type.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pyarrow as pa

from sapray.config import FilterConfig, MineConfig, SelectConfig, TeacherConfig
from sapray.core.scoring import ScoreRequest, score
from sapray.dataplane.journal import Journaled
from sapray.engines import load_engine
from sapray.engines.base import Engine, EngineSpec, SamplingConfig
from sapray.engines.models import ResolvedModel, resolve_model


def engine_spec(cfg: SelectConfig | FilterConfig | MineConfig | TeacherConfig, resolved: ResolvedModel,
                model: str | None = None) -> EngineSpec:
    """The engine actors of a config: its engine (a teacher's kind), model (or ``model``: a filter's reference
    model, scored with the same engine) and engine arguments, at the commit the driver ``resolved`` (so every
    node loads that same commit), with the size of its weights."""
    engine = cfg.kind if isinstance(cfg, TeacherConfig) else cfg.engine
    return EngineSpec(engine, model or cfg.model, resolved.commit, dict(cfg.engine_args), resolved.weights_bytes)


def actor_engine(spec: EngineSpec, num_cpus: float) -> Engine:
    """The engine an actor holds for its life, on the cores Ray gave it (more threads would fight the other
    actors); the actor's process is the engine's own (``load_engine(own_process=True)``). A simulated engine
    computes nothing: its actor leaves torch unimported."""
    if spec.engine != "sim":
        import torch

        torch.set_num_threads(max(1, math.floor(num_cpus)))
    return load_engine(spec.engine, resolve_model(spec.model, spec.revision), own_process=True, **spec.engine_args)


def _placement() -> str:
    """node id / actor id, so a run can show where its actors ran."""
    import ray

    ctx = ray.get_runtime_context()
    return f"{ctx.get_node_id()}/{ctx.get_actor_id()}"


class ScoreActor:
    """Scores (context, continuation) rows: request_id, context_json, continuation, context_key."""

    def __init__(self, spec: EngineSpec, boundary: str, overlong: str, num_cpus: float = 1) -> None:
        self.engine = actor_engine(spec, num_cpus)
        self.boundary, self.overlong = boundary, overlong
        self.placement = _placement()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        requests = [
            ScoreRequest(str(rid), json.loads(ctx), cont, key)
            for rid, ctx, cont, key in zip(batch["request_id"], batch["context_json"], batch["continuation"],
                                           batch["context_key"], strict=True)
        ]
        results = score(self.engine, requests, self.boundary, self.overlong)
        return {
            "request_id": [r.request_id for r in results],
            "token_logprobs": [r.token_logprobs for r in results],
            "rank_sum": [r.rank_sum for r in results],
            "n_context_tokens": [r.n_context_tokens for r in results],
            "n_continuation_tokens": [r.n_continuation_tokens for r in results],
            "truncated_tokens": [r.truncated_tokens for r in results],
            "error": [r.error or "" for r in results],
            "actor": [self.placement] * len(results),
        }


class GenerateActor:
    """Generates from token-id prompts: prompt_ids -> texts, finish reasons, token counts (other columns pass).

    A ``sampling_json`` column, where present, gives each row its own sampling (strategies that share a
    teacher model share its actors); rows without one use ``sampling``. ``journaled`` (a ``journal.RowJournal``
    table, or its object ref): rows found there by their ``order`` take its answers instead of being generated
    (their prompts may be empty: not tokenized); ``writer``: the pass's ``journal.RowJournalWriter``, sent each
    batch's new answers before the batch goes on (seeded sampling answers a prompt alike whatever its
    batch-mates, so a resumed run writes the bytes of one never stopped)."""

    def __init__(self, spec: EngineSpec, sampling: dict[str, Any], num_cpus: float = 1, journaled: Any = None,
                 writer: Any = None) -> None:
        self.engine = actor_engine(spec, num_cpus)
        self.sampling = SamplingConfig(**sampling)
        self.journaled = Journaled(journaled)
        self.writer = writer
        self.placement = _placement()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        outputs = self._answers(batch)
        return {**{k: v for k, v in batch.items() if k not in ("prompt_ids", "sampling_json")},  # other columns pass
                **outputs, "actor": [self.placement] * len(outputs["texts"])}

    def _answers(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        """The batch's answers, journaled ones taken from the journal, the rest generated (and journaled)."""
        if self.writer is None and not len(self.journaled.orders):
            return self._generate(batch)
        import ray

        orders = np.asarray(batch["order"], dtype=np.int64)
        found, known = self.journaled.find(orders)
        new = None
        if not found.all():
            new = pa.table(self._generate({k: np.asarray(v)[~found] for k, v in batch.items()}))
            if self.writer is not None:  # journaled before the batch goes on: a row out is a row journaled
                ray.get(self.writer.add.remote(new.append_column("order", pa.array(orders[~found]))))
        return self.journaled.merged(found, known, new).to_pydict()

    def _generate(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        prompts = [list(map(int, p)) for p in batch["prompt_ids"]]
        per_row = batch.get("sampling_json")
        alike: dict[str, list[int]] = {}  # one engine call per distinct sampling, rows in batch order
        for i in range(len(prompts)):
            alike.setdefault("" if per_row is None else str(per_row[i]), []).append(i)
        generations: list[Any] = [None] * len(prompts)
        for text, rows in alike.items():
            sampling = SamplingConfig(**json.loads(text)) if text else self.sampling
            for i, generation in zip(rows, self.engine.generate([prompts[i] for i in rows], sampling), strict=True):
                generations[i] = generation
        return {
            "texts": [g.texts for g in generations],
            "prompt_tokens": [g.prompt_tokens for g in generations],
            "completion_tokens": [sum(g.completion_tokens) for g in generations],
            "finish_reasons": [g.finish_reasons for g in generations],
            "error": [""] * len(generations),
        }
