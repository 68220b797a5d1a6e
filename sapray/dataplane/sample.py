"""The selection's paired sample and its scoring requests.

``Target``: the model being selected for, resolved once by the driver. ``Sample``: the questions in the
seeded order, those the caps can reach and their candidate rows. ``Requests``: each question's scoring
requests, its candidates' responses after the contexts the metrics need (``sapray select``, ``run`` and
``plan`` build them alike, so ``plan`` counts the tokens the race will score).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sapray.config import SelectConfig
from sapray.core import exemplars as ex
from sapray.core.contexts import Layout, build_requests
from sapray.core.metrics import context_kinds
from sapray.core.sample import sample_order
from sapray.core.scoring import EncodedRequest, ScoreRequest, encode_all
from sapray.dataplane.actors import ScoreActor, engine_spec
from sapray.engines.base import max_length_of
from sapray.engines.models import ResolvedModel, locate


@dataclass
class Target:
    """The model being selected for, resolved once by the driver (actors load this same commit)."""

    path: str
    commit: str | None
    tokenizer: Any
    layout: Layout

    @property
    def model(self) -> ResolvedModel:
        return ResolvedModel(self.path, self.commit)

    @classmethod
    def of(cls, cfg: SelectConfig) -> Target:
        from transformers import AutoTokenizer

        resolved = locate(cfg.model, cfg.revision)  # the driver fails first
        layout = Layout(cfg.layout, model_name=cfg.model if cfg.model != "smollm2" else Path(resolved.path).name)
        return cls(resolved.path, resolved.commit, AutoTokenizer.from_pretrained(resolved.path), layout)


def scorer_spec(cfg: SelectConfig, target: Target) -> tuple[type, dict[str, Any]]:
    """The scoring engine actors: their class and arguments (they load the commit the driver resolved)."""
    return ScoreActor, {"spec": engine_spec(cfg, target.model), "boundary": target.layout.boundary,
                        "overlong": cfg.overlong}


@dataclass
class Sample:
    """The paired sample: questions in the seeded order, those the caps can reach, and their rows (brought
    to the driver; the rest stay in the cluster). Generated strategies cover every sampled question."""

    order: list[str]
    reachable: list[str]
    questions: dict[str, dict]
    by_question: dict[str, dict[str, dict]]  # question -> strategy -> candidate row
    rows_fetched: int

    @classmethod
    def draw(cls, cfg: SelectConfig, inputs: Any) -> Sample:
        order = sample_order(inputs.complete, cfg.sample.seed)
        reachable = order[: cfg.sample.max_questions] if cfg.sample.max_questions else order
        questions, rows = inputs.fetch(set(reachable))
        by_question: dict[str, dict[str, dict]] = {}
        for c in rows:
            by_question.setdefault(c["question_id"], {})[c["strategy"]] = c
        return cls(order, reachable, questions, by_question, len(rows))


@dataclass
class Requests:
    """Each question's scoring requests: its candidates' responses after the contexts the metrics need."""

    cfg: SelectConfig
    target: Target
    exemplars: list[ex.Exemplar]
    sample: Sample

    def __post_init__(self) -> None:
        self.kinds = context_kinds(self.cfg.metrics)
        self.position = {q: i for i, q in enumerate(self.sample.order)}
        self.limit = max_length_of(self.cfg.engine_args)

    def chosen_exemplars(self, qid: str) -> list[ex.Exemplar]:
        return ex.choose(self.exemplars, self.position[qid], qid, self.cfg.exemplars.n)

    def of(self, qid: str, names: list[str]) -> list[ScoreRequest]:
        texts = [e.text for e in self.chosen_exemplars(qid)]
        candidates = self.sample.by_question.get(qid, {})
        return [r for name in names if name in candidates
                for r in build_requests(self.target.layout, f"{qid}/{name}", self.sample.questions[qid]["question"],
                                        candidates[name]["response"], texts, self.kinds, question_id=qid)]

    def tokens(self, qid: str, names: list[str]) -> int:
        slots = encode_all(self.of(qid, names), self.target.tokenizer, self.limit, self.target.layout.boundary,
                           self.cfg.overlong)
        return sum(len(e.input_ids) for e in slots if isinstance(e, EncodedRequest))

    def rows(self, round_ids: list[str], names: list[str]) -> list[dict]:
        """The requests of a round as rows for the scoring actors."""
        return [{"request_id": r.request_id, "context_json": json.dumps(r.context), "continuation": r.continuation,
                 "context_key": r.context_key or ""} for qid in round_ids for r in self.of(qid, names)]
