"""``sapray select``: the target resolved, its scorer resident for the whole race, the selection
(``sapray.dataplane.selection``: read -> strategies -> sample -> exemplars -> race rounds -> reduce)
journaled in ``<output>/journal``; the caller writes the outputs (``write_selection``).
"""

from __future__ import annotations

from collections.abc import Callable

from sapray.config import SelectConfig
from sapray.core.race import race_label
from sapray.dataplane.outputs import write_outputs
from sapray.dataplane.raydata import init_ray
from sapray.dataplane.resident import Engines
from sapray.dataplane.sample import Target, scorer_spec
from sapray.dataplane.selection import SelectResult, open_journal, select_strategy
from sapray.present.html_report import write_report
from sapray.present.lines import round_lines


def run_select(cfg: SelectConfig, on_round: Callable[[str], None] | None = None,
               restart: bool = False) -> SelectResult:
    """The selection with its own scorer; ``on_round`` gets a line per round; ``restart`` empties the
    journal first (else a rerun continues from it)."""
    target = Target.of(cfg)
    journal = open_journal(cfg, target.commit, restart)  # before Ray starts: a journal it cannot use fails fast
    init_ray(cfg.ray)
    with Engines({"scorer": scorer_spec(cfg, target)}, cfg.ray, cfg.ray.resident_engines) as engines:
        return select_strategy(cfg, target, engines, journal,
                               on_look=round_lines(on_round, cfg.sample.confidence, cfg.sample.epsilon,
                                                   race_label(cfg.sample.rank_by)))


def write_selection(output: str, result: SelectResult, config: dict) -> dict[str, str]:
    """The selection's output folder (``sapray.dataplane.outputs``) and its report.html."""
    paths = write_outputs(output, result, config)
    paths["report.html"] = write_report(output)
    return paths
