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

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from sapray import filters, metrics
from sapray.actors import GenerateActor, ScoreActor
from sapray.answers import make_checker
from sapray.config import Columns, RayConfig, Strict, validate
from sapray.engines import EngineName, SamplingConfig
from sapray.exemplars import zero_shot_prompts
from sapray.models import locate
from sapray.raydata import init_ray, map_with_actors
from sapray.read import MISSING, Reject, iter_records, nothing_usable, read_questions, text_problem


class ConsistencyConfig(Strict):
    samples: int = Field(15, ge=1, description="answers sampled per question (authors: 15)")
    temperature: float = Field(0.8, ge=0)
    max_tokens: int = Field(256, ge=1)
    seed: int = 0
    checker: Literal["gsm8k", "choice", "exact", "regex"] = "gsm8k"
    regex: str | None = None


class DSWeightConfig(Strict):
    valid: str = Field(description="labeled valid set: question and gold solution columns (<= 5% of the train size)")
    valid_response_column: str = "answer"
    loss: Literal["whole", "response"] = Field(
        "whole", description="whole: the authors' loss over 'Q: {q}\\nA: {a}'; response: only the answer's tokens")
    keep_fraction: float = Field(0.79, ge=0, le=1)


class LobassConfig(Strict):
    reference_model: str | None = Field(None, description="the initial model fine-tuned on the candidates (merged): "
                                       "a local HF directory or a Hub id")
    reference_revision: str | None = Field(None, description="with a Hub id: branch, tag or commit hash")
    reference_adapter: str | None = Field(None, description="or: a LoRA adapter directory on the initial model")
    keep_fraction: float = Field(0.06, ge=0, le=1)


class IFDConfig(Strict):
    direction: Literal["high", "low"] = Field(
        "high", description="high: Cherry (keep high IFD, drop IFD > 1); low: strategy-selection order")
    keep_fraction: float = Field(0.5, ge=0, le=1)


class FilterConfig(Strict):
    method: Literal["consistency", "dsweight", "lobass", "ifd"]
    input: str
    columns: Columns = Columns()
    model: str = Field("smollm2", description="'smollm2', a local HF directory or a Hugging Face Hub id")
    revision: str | None = Field(None, description="with a Hub id: branch, tag or commit hash (default main)")
    engine: EngineName = "hf"
    engine_args: dict[str, Any] = {}
    overlong: Literal["reject", "truncate"] = "reject"
    consistency: ConsistencyConfig = ConsistencyConfig()
    dsweight: DSWeightConfig | None = None
    lobass: LobassConfig = LobassConfig()
    ifd: IFDConfig = IFDConfig()
    ray: RayConfig = RayConfig()
    output: str = "runs/filter"


def load_filter_config(raw: dict, overrides: list[str] = ()) -> FilterConfig:
    return validate(FilterConfig, raw, overrides)


@dataclass
class FilterResult:
    rows: list[dict]  # every sample: its scores, kept flag and (if dropped) reason
    rejects: list[Reject]
    summary: dict


def read_samples(uri: str, columns: Columns) -> tuple[list[dict], list[Reject]]:
    """Question-response rows from columns or from a ``messages`` list; InputError if none is usable."""
    samples, rejects = [], []
    for index, (source, row) in enumerate(iter_records(uri)):
        if isinstance(row, str):
            rejects.append(Reject(source, row, "read"))
            continue
        question, response = row.get(columns.question, MISSING), row.get(columns.response, MISSING)
        names, problem = (f"column {columns.question!r}", f"column {columns.response!r}"), None
        messages = row.get("messages")
        if isinstance(messages, list):
            users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
            bots = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
            names = ("the first user turn of 'messages'", "the last assistant turn of 'messages'")
            question, response = (users[0] if users else None), (bots[-1] if bots else None)
            if not users or not bots:
                problem = f"'messages' has no {'user' if not users else 'assistant'} turn"
        problem = problem or text_problem(question, names[0]) or text_problem(response, names[1])
        if problem is None and not response.strip():
            problem = "empty response"
        if problem:
            rejects.append(Reject(source, problem, "read"))
            continue
        sample_id = str(row.get("sample_id", row.get(columns.question_id, index)))
        samples.append({"sample_id": f"{sample_id}#{index}", "question": question, "response": response,
                        "source": source, **({"gold": row[columns.gold]} if columns.gold in row else {})})
    if not samples:
        raise nothing_usable("samples", [uri], rejects)
    return samples, rejects


def _score(cfg: FilterConfig, model: str, revision: str | None, requests: list[dict],
           engine_args: dict | None = None) -> dict[str, dict]:
    """Score request rows (request_id, context, continuation) with a ScoreActor pool; by request_id."""
    rows = [{"request_id": r["request_id"], "context_json": json.dumps(r["context"]),
             "continuation": r["continuation"], "context_key": r.get("context_key", "")} for r in requests]
    # Resolved here first, so a missing model fails before any actor starts; actors load the same commit.
    kwargs = {"engine": cfg.engine, "model": model, "revision": locate(model, revision).commit,
              "engine_args": {**cfg.engine_args, **(engine_args or {})},
              "boundary": "joint", "overlong": cfg.overlong}
    return {row["request_id"]: row for row in map_with_actors(rows, ScoreActor, kwargs, cfg.ray, what="scoring")}


def _nll(result: dict) -> float:
    return metrics.mean_loss(result["token_logprobs"])


def _chat(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


def _dsweight_requests(samples: list[dict], loss: str, prefix: str) -> list[dict]:
    """The authors score the whole 'Q: {q}\\nA: {a}' string; the variant scores only the answer."""
    if loss == "whole":
        return [{"request_id": f"{prefix}{s['sample_id']}", "context": "",
                 "continuation": f"Q: {s['question']}\nA: {s['response']}"} for s in samples]
    return [{"request_id": f"{prefix}{s['sample_id']}", "context": f"Q: {s['question']}\nA:",
             "continuation": f" {s['response']}"} for s in samples]


def _apply_scores(samples, scored, rejects, score_fn) -> list[dict]:
    """Attach scores; a sample whose request the engine refused becomes a reject with the reason."""
    kept = []
    for s in samples:
        errors = [r["error"] for r in scored(s) if r["error"]]
        if errors:
            rejects.append(Reject(s["source"], "; ".join(errors), "score"))
            continue
        kept.append({**s, **score_fn(*scored(s))})
    return kept


def run_dsweight(cfg: FilterConfig, samples: list[dict], rejects: list[Reject]) -> tuple[list[dict], dict]:
    ds = cfg.dsweight
    if ds is None:
        raise ValueError("method dsweight needs a dsweight section with a valid set")
    valid_columns = cfg.columns.model_copy(update={"response": ds.valid_response_column})
    valid, valid_rejects = read_samples(ds.valid, valid_columns)
    requests = _dsweight_requests(samples, ds.loss, "") + _dsweight_requests(valid, ds.loss, "valid/")
    scored = _score(cfg, cfg.model, cfg.revision, requests)
    valid_scored = [scored[f"valid/{v['sample_id']}"] for v in valid]
    valid_losses = [_nll(r) for r in valid_scored if not r["error"]]
    valid_mean = math.fsum(valid_losses) / len(valid_losses)

    def score_fn(result: dict) -> dict:
        loss = _nll(result)
        weight = filters.ds_weight(valid_mean, loss)
        return {"loss": loss, "ds_weight": weight, "shift": filters.ds_shift(weight)}

    rows = _apply_scores(samples, lambda s: [scored[s["sample_id"]]], rejects, score_fn)
    keep = filters.keep_lowest([r["shift"] for r in rows], ds.keep_fraction)
    threshold = max((r["shift"] for r, k in zip(rows, keep, strict=True) if k), default=None)
    for r, k in zip(rows, keep, strict=True):
        r["kept"] = k
        r["reason"] = "" if k else f"shift {r['shift']:.4f} outside the lowest {ds.keep_fraction:.0%} (cut {threshold})"
    info = {"valid_rows": len(valid_losses), "valid_rows_rejected": len(valid_rejects),
            "valid_mean_loss": valid_mean, "loss": ds.loss, "keep_fraction": ds.keep_fraction,
            "distributions": {k: filters.distribution([r[k] for r in rows]) for k in ("loss", "ds_weight", "shift")}}
    return rows, info


def run_lobass(cfg: FilterConfig, samples: list[dict], rejects: list[Reject]) -> tuple[list[dict], dict]:
    lb = cfg.lobass
    if (lb.reference_model is None) == (lb.reference_adapter is None):
        raise ValueError("lobass needs exactly one of lobass.reference_model or lobass.reference_adapter")
    requests = [{"request_id": s["sample_id"], "context": _chat(s["question"]), "continuation": s["response"]}
                for s in samples]
    initial = _score(cfg, cfg.model, cfg.revision, requests)
    if lb.reference_adapter:
        reference = _score(cfg, cfg.model, cfg.revision, requests, {"adapter": lb.reference_adapter})
    else:
        reference = _score(cfg, lb.reference_model, lb.reference_revision, requests)

    def score_fn(r0: dict, r1: dict) -> dict:
        l0, l1 = _nll(r0), _nll(r1)
        return {"loss_initial": l0, "loss_reference": l1, "learnability": filters.lobass_score(l0, l1)}

    rows = _apply_scores(samples, lambda s: [initial[s["sample_id"]], reference[s["sample_id"]]], rejects, score_fn)
    keep = filters.keep_highest([r["learnability"] for r in rows], lb.keep_fraction)
    for r, k in zip(rows, keep, strict=True):
        r["kept"] = k
        r["reason"] = "" if k else f"learnability {r['learnability']:.4f} outside the top {lb.keep_fraction:.0%}"
    info = {"keep_fraction": lb.keep_fraction, "reference": lb.reference_model or lb.reference_adapter,
            "reference_revision": lb.reference_revision,
            "distributions": {k: filters.distribution([r[k] for r in rows])
                              for k in ("loss_initial", "loss_reference", "learnability")}}
    return rows, info


def run_ifd(cfg: FilterConfig, samples: list[dict], rejects: list[Reject]) -> tuple[list[dict], dict]:
    requests = []
    for s in samples:
        requests.append({"request_id": f"{s['sample_id']}/q", "context": _chat(s["question"]),
                         "continuation": s["response"]})
        requests.append({"request_id": f"{s['sample_id']}/0", "context": "", "continuation": s["response"]})
    scored = _score(cfg, cfg.model, cfg.revision, requests)

    def score_fn(given_question: dict, alone: dict) -> dict:
        return {"nll_given_question": _nll(given_question), "nll_alone": _nll(alone),
                "ifd": metrics.ifd(given_question["token_logprobs"], alone["token_logprobs"])}

    rows = _apply_scores(samples, lambda s: [scored[f"{s['sample_id']}/q"], scored[f"{s['sample_id']}/0"]],
                         rejects, score_fn)
    direction = cfg.ifd.direction
    if direction == "high":  # Cherry: IFD > 1 means the question does not help; drop those first
        eligible = [r for r in rows if r["ifd"] <= 1.0]
        keep = filters.keep_highest([r["ifd"] for r in eligible], cfg.ifd.keep_fraction)
        kept_ids = {r["sample_id"] for r, k in zip(eligible, keep, strict=True) if k}
    else:
        keep = filters.keep_lowest([r["ifd"] for r in rows], cfg.ifd.keep_fraction)
        kept_ids = {r["sample_id"] for r, k in zip(rows, keep, strict=True) if k}
    for r in rows:
        r["kept"] = r["sample_id"] in kept_ids
        if r["kept"]:
            r["reason"] = ""
        elif direction == "high" and r["ifd"] > 1.0:
            r["reason"] = f"ifd {r['ifd']:.4f} > 1 (the question makes the response harder)"
        else:
            r["reason"] = f"ifd {r['ifd']:.4f} outside the {'highest' if direction == 'high' else 'lowest'} " \
                          f"{cfg.ifd.keep_fraction:.0%}"
    info = {"direction": direction, "keep_fraction": cfg.ifd.keep_fraction,
            "distributions": {k: filters.distribution([r[k] for r in rows])
                              for k in ("nll_given_question", "nll_alone", "ifd")}}
    return rows, info


def canonical_answer(answer: str | None) -> str | None:
    """Numbers compare by value ('18', '18.0', '1,8' aside), other answers by normalised text."""
    if answer is None:
        return None
    try:
        value = float(answer.replace(",", ""))
        return str(int(value)) if value.is_integer() else repr(value)
    except ValueError:
        return " ".join(answer.lower().split())


def run_consistency(cfg: FilterConfig, questions: dict[str, dict]) -> tuple[list[dict], dict]:
    cc = cfg.consistency
    from transformers import AutoTokenizer

    resolved = locate(cfg.model, cfg.revision)
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    ids = list(questions)
    prompts = zero_shot_prompts(tokenizer, [questions[q]["question"] for q in ids])
    sampling = SamplingConfig(temperature=cc.temperature, max_tokens=cc.max_tokens, n=cc.samples, seed=cc.seed)
    rows_in = [{"row_id": q, "prompt_ids": p} for q, p in zip(ids, prompts, strict=True)]
    generated = {r["row_id"]: r for r in map_with_actors(
        rows_in, GenerateActor, {"engine": cfg.engine, "model": cfg.model, "revision": resolved.commit,
                                 "engine_args": cfg.engine_args, "sampling": sampling.__dict__}, cfg.ray,
        what="sampling answers")}
    checker = make_checker(cc.checker, cc.regex)
    rows, no_answer = [], 0
    for qid in ids:
        texts, finish = list(generated[qid]["texts"]), list(generated[qid]["finish_reasons"])
        answers = [canonical_answer(checker.extract(t)) for t in texts]
        vote = filters.majority(answers)
        no_answer += vote is None
        gold = questions[qid].get("gold")
        for k, (text, answer) in enumerate(zip(texts, answers, strict=True)):
            kept = vote is not None and answer == vote
            reason = ("" if kept else "no parsable answer among the samples" if vote is None
                      else "no parsable answer" if answer is None
                      else f"answer {answer} disagrees with majority {vote}")
            rows.append({
                "sample_id": f"{qid}#{k}", "question_id": qid, "question": questions[qid]["question"],
                "response": text, "finish_reason": finish[k], "answer": answer, "majority": vote,
                "agreement": sum(a == vote for a in answers) / len(answers) if vote else 0.0,
                "majority_correct": None if gold is None or vote is None
                else canonical_answer(checker.extract(gold) or gold) == vote,
                "kept": kept, "reason": reason, "source": questions[qid]["source"]})
    info = {"samples_per_question": cc.samples, "temperature": cc.temperature, "questions": len(ids),
            "questions_without_parsable_answer": no_answer,
            "generated_tokens": int(sum(g["completion_tokens"] for g in generated.values())),
            "distributions": {"agreement": filters.distribution([r["agreement"] for r in rows if r["kept"]])}}
    return rows, info


def run_filter(cfg: FilterConfig) -> FilterResult:
    init_ray(cfg.ray)
    if cfg.method == "consistency":
        # Rows in are the generated samples; rejected question rows are counted apart.
        questions, question_rejects = read_questions(cfg.input, cfg.columns, need_gold=False)
        rows, info = run_consistency(cfg, questions)
        info["question_rows_rejected"] = len(question_rejects)
        rows_in, rejects = len(rows), []
        rejects_out = question_rejects
    else:
        samples, rejects = read_samples(cfg.input, cfg.columns)
        rows_in = len(samples) + len(rejects)
        method = {"dsweight": run_dsweight, "lobass": run_lobass, "ifd": run_ifd}[cfg.method]
        rows, info = method(cfg, samples, rejects)
        rejects_out = rejects
    kept = sum(r["kept"] for r in rows)
    counts = {"rows_in": rows_in, "kept": kept, "dropped": len(rows) - kept, "rejected": len(rejects)}
    if counts["kept"] + counts["dropped"] + counts["rejected"] != rows_in:
        raise AssertionError(f"row counts do not reconcile: {counts}")
    summary = {"method": cfg.method, "model": cfg.model, "revision": cfg.revision, "engine": cfg.engine,
               "counts": counts, **info}
    return FilterResult(rows, rejects_out, summary)
