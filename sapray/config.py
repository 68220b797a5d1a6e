"""Job configuration: YAML validated strictly before any work starts.

Unknown keys and wrong types fail at load time with the key's dotted path. CLI flags override
single keys with ``--set section.key=value`` (the value parsed as YAML).
"""

from __future__ import annotations

import hashlib
import json
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sapray.core.errors import ConfigError
from sapray.engines.base import EngineName, SamplingConfig


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Columns(Strict):
    """Names of the input columns, for data whose columns are named otherwise."""

    question_id: str = Field("question_id", description="the question's id, in questions and candidates")
    question: str = Field("question", description="the question's text")
    gold: str = Field("gold", description="the gold answer the checker compares with (optional)")
    strategy: str = Field("strategy", description="a long candidate table's strategy name")
    response: str = Field("response", description="a candidate's response text")
    reward: str = Field("reward", description="optional: a numeric reward per candidate enables mean reward and "
                        "CAR")
    messages: str = Field("messages", description="a candidate in chat form: the first user turn is the "
                          "question, the last assistant turn after it the response")


class DataConfig(Strict):
    """The inputs: questions and the candidate responses of every strategy (JSONL, JSON, Parquet, CSV or a
    ``datasets.save_to_disk`` folder; local paths or URIs such as ``s3://``)."""

    questions: str | None = Field(None, description="question_id, question[, gold]; None: the questions are the "
                                  "candidate files' own (chat messages or a question column)")
    candidates: str | None = Field(None, description="one long table: question_id, strategy, response")
    candidates_by_strategy: dict[str, str] | None = Field(None, description="strategy name -> file")
    columns: Columns = Columns()
    strategies: list[str] | None = Field(None, description="the strategies to compare (default: every strategy "
                                         "in the candidates with enough coverage)")
    min_coverage: float = Field(0.5, ge=0, le=1, description="a strategy with a usable candidate for fewer than "
                                "this share of the questions is excluded (with its reason), not the questions")

    def candidate_sources(self) -> dict[str | None, str]:
        """Files to read candidates from: None for the long table, else the strategy's name."""
        return {**({None: self.candidates} if self.candidates else {}), **(self.candidates_by_strategy or {})}


class SampleConfig(Strict):
    """The sample that is scored: its size and seed, and the race that stops once the choice is known."""

    seed: int = Field(0, description="orders the questions (the same seed, the same sample and race)")
    stop: Literal["confident", "fixed"] = Field(
        "confident", description="confident: race, dropping strategies once they have lost and stopping when the "
        "choice is known (sapray.core.race); fixed: score every strategy on every sampled question")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="race: confidence that holds over every look")
    epsilon: float = Field(0.10, ge=0, description="race: indifference margin, a share of the best strategy's mean "
                           "SAP (default from the SAP authors' records: smaller SAP gaps do not predict the better "
                           "fine-tuning; docs/statistics.md)")
    min_questions: int = Field(10, ge=2, description="race: no decision before this many paired questions")
    tuned_for: int = Field(50, ge=1, description="race: questions at which the confidence sequence is tightest")
    pick: Literal["lowest_sap", "cheapest"] = Field(
        "lowest_sap", description="run: the strategy to generate the full set with: the lowest mean SAP, or the "
        "cheapest of those certified good enough (or of the contenders after a budget stop)")
    max_questions: int | None = Field(50, ge=1, description="questions per strategy (paired: the same for all)")
    max_tokens: int | None = Field(None, ge=1, description="cap on tokens scored (context + continuation)")
    max_money: float | None = Field(None, gt=0, description="cap on sample generation cost where teachers have "
                                    "prices")
    round_size: int = Field(10, ge=1, description="questions scored per round before estimates are updated")
    rank_by: Literal["sap", "ppl", "rsr", "sa_rsr"] = Field(
        "sap", description="the metric the race ranks and certifies by, lower first (it must be among the metrics): "
        "mean SAP or PPL, or a rank-surprisal ratio (a ratio of means, raced through its linearized per-question "
        "value; docs/concepts/rsr.md)")

    @model_validator(mode="after")
    def some_bound(self) -> SampleConfig:
        if self.max_questions is None and self.max_tokens is None:
            raise ValueError("set sample.max_questions or sample.max_tokens (a run must be cost-bounded)")
        return self


MetricName = Literal["sap", "ppl", "ifd", "rsr", "sa_rsr"]


class ExemplarConfig(Strict):
    """The target's own correct answers shown before each question in the SAP context: supplied or mined."""

    n: int = Field(3, ge=1, description="exemplars in each SAP context")
    file: str | None = Field(None, description="exemplars you supply (JSONL with 'text'), instead of mining")
    pool: str | None = Field(None, description="questions with gold answers the target answers to mine exemplars; "
                             "with neither file nor pool, the questions being compared (each question's context "
                             "then leaves out the target's answer to that same question)")
    pool_size: int = Field(64, ge=1, description="mining: pool questions the target answers (greedy, zero-shot)")
    checker: Literal["gsm8k", "choice", "exact", "regex", "none"] = Field(
        "gsm8k", description="mining: how an answer is checked against the gold one (none: every answer passes)")
    regex: str | None = Field(None, description="the regex checker's pattern")
    max_tokens: int = Field(256, ge=1, description="mining: answer length cap; a cut-off answer never counts as "
                            "correct")
    shortfall: Literal["unchecked", "error"] = Field(
        "unchecked", description="fewer than n correct answers: fill with the model's unchecked answers, or stop")

    @model_validator(mode="after")
    def has_source(self) -> ExemplarConfig:
        if self.file is not None and self.pool is not None:
            raise ValueError("give exemplars.file or exemplars.pool, not both")
        if self.checker == "regex" and not self.regex:
            raise ValueError("exemplars.checker 'regex' needs exemplars.regex")
        return self


class RayConfig(Strict):
    """Where the job runs and how its engine actors are placed."""

    address: str | None = Field(None, description="None: start or join a local Ray; 'auto' or ray://...")
    actors: int | None = Field(None, ge=1, description="engine actors; None: one per GPU group on a cluster with "
                               "GPUs, else one per CPU as memory allows (see sapray.dataplane.placement)")
    batch_size: int = Field(32, ge=1, description="rows per batch handed to an engine actor (scoring requests or "
                            "prompts)")
    shard_mb: float = Field(64, gt=0, description="whole-dataset jobs read their input in pieces of about this "
                            "many MiB, each by one worker (a Parquet file by row groups)")
    journal_rows: int = Field(1000, ge=1, description="a whole-dataset pass journals its finished rows in entries "
                              "of this many (merged into one file per pass when it ends); a kill -9 computes "
                              "about this many again, besides the batches in flight")
    num_cpus_per_actor: float | None = Field(None, ge=0, description="None: 1 (a CPU engine computes on one "
                                             "thread per CPU it has)")
    num_gpus_per_actor: float | None = Field(None, ge=0, description="None: vLLM tensor_parallel_size x "
                                             "pipeline_parallel_size (hf: 1) on a cluster with GPUs, else 0")
    resident_engines: bool = Field(True, description="select's scorer, and run's teachers and scorer, start once "
                                   "and serve every round (and run's full set); false: a pool per round, "
                                   "whose engines load again every round")


class TeacherConfig(Strict):
    """Who writes a strategy's responses: a model on an engine, an OpenAI-compatible endpoint, or a file."""

    kind: Literal["vllm", "hf", "sim", "openai", "file"] = Field(
        description="vllm or hf: a model on an engine actor; sim: a simulated one (a rehearsal's, with the model's "
        "tokenizer); openai: an OpenAI-compatible endpoint; file: responses written before")
    model: str | None = Field(None, description="vllm/hf: 'smollm2', a local HF directory or a Hub id; "
                              "openai: model name")
    revision: str | None = Field(None, description="vllm/hf with a Hub id: branch, tag or commit hash")
    engine_args: dict[str, Any] = Field({}, description="vllm/hf: keyword arguments for the engine")
    base_url: str | None = Field(None, description="openai: e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="openai: environment variable holding the key")
    path: str | None = Field(None, description="file: rows with question_id and response")
    strategy: str | None = Field(None, description="file: keep only rows whose strategy column is this")
    max_concurrency: int = Field(8, ge=1, description="openai: requests in flight at once")
    timeout_s: float = Field(60.0, gt=0, description="openai: seconds before a request is abandoned (and retried)")
    max_retries: int = Field(5, ge=0, description="openai: retries with exponential backoff on 429, 5xx and "
                             "timeouts (Retry-After honoured)")
    requests_per_second: float | None = Field(None, gt=0, description="openai: rate limit; null: none")
    price_per_million_prompt: float | None = Field(None, ge=0, description="money per million prompt tokens, for "
                                                   "the cost tables and sample.max_money")
    price_per_million_completion: float | None = Field(None, ge=0, description="money per million generated "
                                                       "tokens")

    @model_validator(mode="after")
    def needs(self) -> TeacherConfig:
        required = {"vllm": ["model"], "hf": ["model"], "sim": ["model"], "openai": ["model", "base_url"],
                    "file": ["path"]}[self.kind]
        missing = [k for k in required if getattr(self, k) is None]
        if missing:
            raise ValueError(f"a {self.kind} teacher needs {missing}")
        if self.revision and not self.on_engine:
            raise ValueError(f"revision applies to vllm, hf and sim teachers, not to a {self.kind} teacher")
        return self

    @property
    def on_engine(self) -> bool:
        """A model on engine actors (hf, vllm, or simulated), which the driver tokenizes prompts for."""
        return self.kind in ("hf", "vllm", "sim")

    def describe(self) -> str:
        if self.kind == "file":
            return f"file:{self.path}" + (f"[{self.strategy}]" if self.strategy else "")
        return f"{self.kind}:{self.model}" + (f"@{self.revision}" if self.revision else "")


PLACEHOLDERS = ("question", "gold", "examples")


class StrategyConfig(Strict):
    """A response-generation strategy for ``sapray run`` and ``sapray generate``: a teacher, a prompt and sampling
    (vLLM's names)."""

    name: str = Field(description="the strategy's name in every output")
    teacher: TeacherConfig
    prompt: str = Field("{question}", description="user message; placeholders {question}, {gold}, {examples}")
    system: str | None = Field(None, description="system message; the same placeholders")
    examples: list[str] = Field([], description="fill {examples}: responses whose style the teacher should follow")
    temperature: float = Field(0.0, ge=0, description="sampling temperature (0: greedy)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")
    max_tokens: int = Field(256, ge=1, description="generated tokens per response at most")
    seed: int | None = Field(0, description="sampling seed")
    stop: list[str] = Field([], description="strings that end a response")
    samples_per_question: int = Field(1, ge=1, description="responses generated per question")

    @model_validator(mode="after")
    def known_placeholders(self) -> StrategyConfig:
        """A stray brace or unknown placeholder fails here, not later in a worker (write {{ }} for braces)."""
        for text in (self.prompt, self.system or ""):
            try:
                names = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
            except ValueError as exc:
                raise ValueError(f"strategy {self.name!r}: bad template {text!r}: {exc}") from None
            unknown = names - set(PLACEHOLDERS)
            if unknown:
                raise ValueError(f"strategy {self.name!r}: unknown placeholder(s) {sorted(unknown)} in {text!r}; "
                                 f"use {list(PLACEHOLDERS)} and write literal braces as {{{{ }}}}")
        if "{examples}" in self.prompt + (self.system or "") and not self.examples:
            raise ValueError(f"strategy {self.name!r}: the template uses {{examples}} but no examples are given")
        return self

    @property
    def engine_key(self) -> str:
        """Strategies with one key share engine actors: a model teacher's kind, model, revision and engine
        arguments (the prompt and sampling travel with each row); any other teacher is its strategy's own."""
        t = self.teacher
        if t.on_engine:
            return json.dumps([t.kind, t.model, t.revision, t.engine_args], sort_keys=True)
        return f"strategy:{self.name}"

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                              n=self.samples_per_question, seed=self.seed, stop=list(self.stop))

    @property
    def prompt_hash(self) -> str:
        """The prompt template's hash, recorded with every training row."""
        template = {"system": self.system, "prompt": self.prompt}
        if self.examples:  # only when used, so hashes of outputs written before examples existed still match
            template["examples"] = self.examples
        text = json.dumps(template, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def messages(self, question: dict) -> list[dict]:
        fields = {"question": question["question"], "gold": question.get("gold") or "",
                  "examples": "\n\n".join(self.examples)}
        system = [{"role": "system", "content": self.system.format(**fields)}] if self.system else []
        return system + [{"role": "user", "content": self.prompt.format(**fields)}]


class GenerateConfig(Strict):
    """The full training set, generated with one strategy (``sapray generate``, the last step of ``sapray run``)."""

    output: str = Field("runs/train", description="folder or URI of the training set (resumable)")
    shard_size: int = Field(64, ge=1, description="questions per resumable shard")
    filter_correct: bool = Field(False, description="keep only responses that pass the answer checker")
    drop_truncated: bool = Field(False, description="reject responses cut off at max_tokens (else kept, counted)")
    checker: Literal["gsm8k", "choice", "exact", "regex"] = Field(
        "gsm8k", description="the answer checker filter_correct uses")
    regex: str | None = Field(None, description="the regex checker's pattern")


class SelectConfig(Strict):
    """A selection (``sapray select``), and with ``strategies``, a whole run (``sapray run``, ``sapray generate``)."""

    model: str = Field("smollm2", description="target: 'smollm2', a local HF directory or a Hugging Face Hub id")
    revision: str | None = Field(None, description="with a Hub id: branch, tag or commit hash (default main)")
    engine: EngineName = Field("hf", description="scoring engine: hf (transformers), vllm, or sim (simulated, for "
                               "rehearsals)")
    engine_args: dict[str, Any] = Field({}, description="keyword arguments for the engine (vLLM's LLM arguments; hf: "
                                        "dtype, max_batch_tokens, max_logit_rows, max_length, max_padding, ...)")
    layout: Literal["chat", "paper"] = Field(
        "chat", description="chat: the target's chat template; paper: the authors' wrapper, to reproduce their "
        "numbers")
    metrics: list[MetricName] = Field(["sap", "ppl", "ifd"], description="what to score; sample.rank_by (SAP by "
                                      "default) ranks and must be among them; PPL and IFD need contexts of their "
                                      "own, RSR PPL's and SA-RSR SAP's")
    overlong: Literal["reject", "truncate"] = Field(
        "reject", description="a request longer than the model's length: rejected, or its context cut from the left")
    data: DataConfig
    sample: SampleConfig = SampleConfig()
    exemplars: ExemplarConfig = ExemplarConfig()
    ray: RayConfig = RayConfig()
    bootstrap: int = Field(1000, ge=0, description="resamples for the 95% confidence intervals")
    output: str = Field("runs/select", description="folder or URI for selection.json, scores.parquet, rejects/, "
                        "report.html, ...")
    # `sapray run` / `sapray generate`: strategies with teachers, and the full-scale output.
    strategies: list[StrategyConfig] = Field([], description="run/generate: the strategies to generate responses "
                                             "with")
    generate: GenerateConfig = GenerateConfig()

    @model_validator(mode="after")
    def some_candidates(self) -> SelectConfig:
        if not self.data.candidate_sources() and not self.strategies:
            raise ValueError("give data.candidates, data.candidates_by_strategy or strategies with teachers")
        if not self.data.questions and not self.data.candidate_sources():
            raise ValueError("give data.questions: teachers need questions to answer")
        if self.sample.rank_by not in self.metrics:
            raise ValueError(f"metrics must include {self.sample.rank_by!r} (sample.rank_by): it ranks the strategies")
        names = [s.name for s in self.strategies]
        if len(names) != len(set(names)):
            raise ValueError(f"strategy names must be unique: {names}")
        return self

    def strategy(self, name: str) -> StrategyConfig:
        """The named strategy; a strategy that only exists as data becomes a file teacher over that data."""
        for s in self.strategies:
            if s.name == name:
                return s
        for strategy_name, path in self.data.candidate_sources().items():
            if strategy_name in (None, name):  # a long table is filtered by strategy; a strategy's own file: whole
                return StrategyConfig(name=name, teacher=TeacherConfig(
                    kind="file", path=path, strategy=name if strategy_name is None else None))
        known = [s.name for s in self.strategies] + [k for k in self.data.candidate_sources() if k]
        raise ConfigError(f"unknown strategy {name!r}: define it under strategies or give its candidates "
                          f"(known: {known})")


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {key} is not a section")
    node[keys[-1]] = value


def resolve_paths(raw: dict, base: Path) -> dict:
    """Relative paths in a config file, inputs and outputs, are relative to that file's folder.

    (Paths given on the command line, ``--set`` and ``--output``, stay relative to the working directory.)
    """
    def fix(p: str) -> str:
        return p if "://" in p or Path(p).is_absolute() else str((base / p).resolve())

    for key in ("input", "output"):
        if isinstance(raw.get(key), str):
            raw[key] = fix(raw[key])
    if isinstance(raw.get("generate"), dict) and isinstance(raw["generate"].get("output"), str):
        raw["generate"]["output"] = fix(raw["generate"]["output"])
    for section, key in (("dsweight", "valid"), ("lobass", "reference_model"), ("lobass", "reference_adapter")):
        if isinstance(raw.get(section), dict) and isinstance(raw[section].get(key), str):
            value = raw[section][key]
            # a reference model that is no folder beside the config is a Hub id ('org/name'): leave it
            is_model_id = key == "reference_model" and not (base / value).is_dir()
            raw[section][key] = value if is_model_id else fix(value)
    data = raw.get("data", {})
    for key in ("questions", "candidates"):
        if isinstance(data.get(key), str):
            data[key] = fix(data[key])
    if isinstance(data.get("candidates_by_strategy"), dict):
        data["candidates_by_strategy"] = {k: fix(v) if isinstance(v, str) else v
                                          for k, v in data["candidates_by_strategy"].items()}
    ex = raw.get("exemplars", {})
    for key in ("file", "pool"):
        if isinstance(ex.get(key), str):
            ex[key] = fix(ex[key])
    return raw


def validate(model: type[Strict], raw: dict, overrides: list[str] = ()):
    """Validate a config mapping after applying ``key=value`` overrides; errors name the key."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        _set_dotted(raw, key.strip(), yaml.safe_load(value))
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "config"
            problems.append(f"{where}: {err['msg']}")
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems)) from None


def load_config(raw: dict, overrides: list[str] = ()) -> SelectConfig:
    return validate(SelectConfig, raw, overrides)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping")
    return resolve_paths(raw, path.parent)


def load_config_file(path: str | Path, overrides: list[str] = ()) -> SelectConfig:
    return load_config(read_yaml(path), overrides)


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


class RSRFilterConfig(Strict):
    """method rsr: keep the samples the target finds most familiar, the lowest rank-surprisal ratio of the response
    with its question as context (docs/concepts/rsr.md)."""

    keep_fraction: float = Field(0.5, ge=0, le=1, description="share of the samples kept (lowest RSR)")


class FilterConfig(Strict):
    """A filter job (``sapray filter``): one method over a whole set of samples."""

    method: Literal["consistency", "dsweight", "lobass", "ifd", "rsr"] = Field(
        description="the filter; its section below holds its settings")
    input: str = Field(description="the samples (question and response columns, or chat messages; consistency: "
                       "questions); a file, folder or URI")
    columns: Columns = Columns()
    model: str = Field("smollm2", description="'smollm2', a local HF directory or a Hugging Face Hub id")
    revision: str | None = Field(None, description="with a Hub id: branch, tag or commit hash (default main)")
    engine: EngineName = Field("hf", description="engine: hf (transformers), vllm, or sim (simulated, for rehearsals)")
    engine_args: dict[str, Any] = Field({}, description="keyword arguments for the engine")
    overlong: Literal["reject", "truncate"] = Field(
        "reject", description="a request longer than the model's length: rejected, or its context cut from the left")
    consistency: ConsistencyConfig = ConsistencyConfig()
    dsweight: DSWeightConfig | None = None
    lobass: LobassConfig = LobassConfig()
    ifd: IFDConfig = IFDConfig()
    rsr: RSRFilterConfig = RSRFilterConfig()
    ray: RayConfig = RayConfig()
    output: str = Field("runs/filter", description="folder or URI for kept/, scores/, rejects/, summary.json and "
                        "report.html")


def load_filter_config(raw: dict, overrides: list[str] = ()) -> FilterConfig:
    return validate(FilterConfig, raw, overrides)


class MineConfig(Strict):
    """Exemplar mining alone (``sapray mine``): its flags set these keys."""

    pool: str = Field(description="questions with gold answers (JSONL, JSON, Parquet, CSV or a datasets folder)")
    output: str = Field(description="the exemplar file to write (JSONL); provenance goes beside it as .json")
    model: str = Field("smollm2", description="target: 'smollm2', a local HF directory or a Hugging Face Hub id")
    revision: str | None = Field(None, description="with a Hub id: branch, tag or commit hash")
    engine: EngineName = Field("hf", description="engine: hf (transformers), vllm, or sim (simulated, for rehearsals)")
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
