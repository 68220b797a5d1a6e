"""Job configuration: YAML validated strictly before any work starts.

Unknown keys and wrong types fail at load time with the key's dotted path. CLI flags override
single keys with ``--set section.key=value`` (the value parsed as YAML).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sapray.engines import EngineName


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Columns(Strict):
    """Names of the input columns, for data whose columns are named otherwise."""

    question_id: str = "question_id"
    question: str = "question"
    gold: str = "gold"
    strategy: str = "strategy"
    response: str = "response"


class DataConfig(Strict):
    questions: str
    candidates: str | None = Field(None, description="one long table: question_id, strategy, response")
    candidates_by_strategy: dict[str, str] | None = Field(None, description="strategy name -> file")
    columns: Columns = Columns()

    @model_validator(mode="after")
    def one_candidate_source(self) -> DataConfig:
        if (self.candidates is None) == (self.candidates_by_strategy is None):
            raise ValueError("give exactly one of data.candidates or data.candidates_by_strategy")
        return self


class SampleConfig(Strict):
    seed: int = 0
    max_questions: int | None = Field(50, ge=1, description="questions per strategy (paired: the same for all)")
    max_tokens: int | None = Field(None, ge=1, description="cap on tokens scored (context + continuation)")
    round_size: int = Field(25, ge=1, description="questions scored per round before estimates are updated")

    @model_validator(mode="after")
    def some_bound(self) -> SampleConfig:
        if self.max_questions is None and self.max_tokens is None:
            raise ValueError("set sample.max_questions or sample.max_tokens (a run must be cost-bounded)")
        return self


class ExemplarConfig(Strict):
    n: int = Field(3, ge=1)
    file: str | None = Field(None, description="exemplars you supply (JSONL with 'text'), instead of mining")
    pool: str | None = Field(None, description="questions with gold answers the target answers to mine exemplars")
    pool_size: int = Field(64, ge=1)
    checker: Literal["gsm8k", "choice", "exact", "regex", "none"] = "gsm8k"
    regex: str | None = None
    max_tokens: int = Field(256, ge=1)
    shortfall: Literal["unchecked", "error"] = Field(
        "unchecked", description="fewer than n correct answers: fill with the model's unchecked answers, or stop")

    @model_validator(mode="after")
    def has_source(self) -> ExemplarConfig:
        if self.file is None and self.pool is None:
            raise ValueError("give exemplars.file or exemplars.pool")
        if self.checker == "regex" and not self.regex:
            raise ValueError("exemplars.checker 'regex' needs exemplars.regex")
        return self


class RayConfig(Strict):
    address: str | None = Field(None, description="None: start or join a local Ray; 'auto' or ray://...")
    actors: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
    num_cpus_per_actor: float = Field(1, ge=0)
    num_gpus_per_actor: float = Field(0, ge=0)


class SelectConfig(Strict):
    model: str = "smollm2"
    engine: EngineName = "hf"
    engine_args: dict[str, Any] = {}
    layout: Literal["chat", "paper"] = "chat"
    overlong: Literal["reject", "truncate"] = "reject"
    data: DataConfig
    sample: SampleConfig = SampleConfig()
    exemplars: ExemplarConfig
    ray: RayConfig = RayConfig()
    bootstrap: int = Field(1000, ge=0, description="resamples for the 95% confidence intervals")
    output: str = "runs/select"


class ConfigError(ValueError):
    pass


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {key} is not a section")
    node[keys[-1]] = value


def resolve_paths(raw: dict, base: Path) -> dict:
    """Relative data paths in a config file are relative to that file's folder."""
    def fix(p: str) -> str:
        return p if "://" in p or Path(p).is_absolute() else str((base / p).resolve())

    if isinstance(raw.get("input"), str):
        raw["input"] = fix(raw["input"])
    for section, key in (("dsweight", "valid"), ("lobass", "reference_model"), ("lobass", "reference_adapter")):
        if isinstance(raw.get(section), dict) and isinstance(raw[section].get(key), str):
            raw[section][key] = fix(raw[section][key])
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
