"""``sapray run``: generate the sample -> select -> full-scale generation with the winner, the teachers and the
scorer resident throughout.

``sapray generate --strategy NAME`` is the last step alone.
"""

from __future__ import annotations

from collections.abc import Callable

from sapray.config import SelectConfig
from sapray.console import console
from sapray.core.race import race_label
from sapray.dataplane.fullset import generate_with
from sapray.dataplane.outputs import write_outputs
from sapray.dataplane.raydata import init_ray
from sapray.dataplane.resident import Engines
from sapray.dataplane.rounds import teacher_rounds
from sapray.dataplane.runs import (
    finished_selection,
    pick_for_full_set,
    planned_engines,
    record_engine_starts,
    sample_record,
)
from sapray.dataplane.sample import Target
from sapray.dataplane.selection import open_journal, select_strategy
from sapray.present.html_report import write_report
from sapray.present.lines import round_lines


def run_all(cfg: SelectConfig, on_round: Callable[[str], None] | None = None,
            restart: bool = False) -> tuple[dict, dict, dict]:
    """(selection summary, sample generation costs, training set metadata).

    The teachers and the scorer stay resident for the whole race (they take turns, each reserving its
    share of the cluster); a teacher leaves when the race drops its strategies, the scorer when the race
    ends, and the winner's engines, widened to the resources freed, generate the full set. Run again
    with the same config after a stop, it continues: from the selection's journal (its exemplars, the
    teachers' batches and the scored rounds), or, once the selection finished (say, killed during the
    full-scale generation), from that selection and the full set's shards. ``restart`` starts the
    selection over.
    """
    init_ray(cfg.ray)
    done = None if restart else finished_selection(cfg)
    with Engines({} if done else planned_engines(cfg), cfg.ray, cfg.ray.resident_engines) as engines:
        if done:
            summary, sample_costs = done
            console.say(f"the selection for this config is already in {cfg.output}; resuming the full set")
        else:
            if engines.reason:
                console.say(f"engines start again every round: {engines.reason}")
            # the race, with the teachers generating its sample; its outputs, the sample and its costs
            target = Target.of(cfg)
            journal = open_journal(cfg, target.commit, restart)
            teachers = teacher_rounds(cfg, engines, journal) if cfg.strategies else None
            result = select_strategy(cfg, target, engines, journal, teachers,
                                     round_lines(on_round, cfg.sample.confidence, cfg.sample.epsilon,
                                                 race_label(cfg.sample.rank_by)))
            sample_files, sample_costs = sample_record(teachers)
            write_outputs(cfg.output, result, cfg.model_dump(), last=sample_files)  # its costs last: done
            write_report(cfg.output)
            summary = result.summary
        strategy = pick_for_full_set(cfg, summary, sample_costs)
        key = strategy.engine_key
        for other in list(engines.pools):
            if other != key:
                engines.release(other)
        engines.widen(key)
        console.say(f"full training set with {strategy.name} (if stopped, `sapray generate --strategy "
                    f"{strategy.name}` with the same config resumes this step alone)")
        metadata = generate_with(cfg, strategy, engines.pools.get(key))
        if not done:
            record_engine_starts(cfg.output, engines.engine_starts())
    write_report(cfg.output)  # again, now with the sample and full-set costs
    return summary, sample_costs, metadata
