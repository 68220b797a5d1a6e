"""``sapray generate --strategy NAME``: the last step of ``sapray run`` alone, the full training set with one
strategy (``sapray.dataplane.fullset``); run again after a stop, it continues from its shards."""

from __future__ import annotations

from sapray.config import SelectConfig
from sapray.dataplane.fullset import generate_with


def run_generate(cfg: SelectConfig, name: str) -> dict:
    """The full training set with strategy ``name``: its metadata.json."""
    return generate_with(cfg, cfg.strategy(name))
