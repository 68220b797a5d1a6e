"""Command line: ``sapray select``, ``demo``, ``run``, ``generate``, ``plan``, ``filter``, ``mine``, ``validate`` and
``report``; each command parses its flags and config and hands them to its job (``sapray.jobs``)."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import click
import yaml

from sapray.config import ConfigError, SelectConfig, load_config, load_config_file, read_yaml
from sapray.console import console
from sapray.present.session import session


def _user_errors() -> tuple[type[Exception], ...]:
    from sapray.core.exemplars import ExemplarShortfall
    from sapray.dataplane.read import InputError
    from sapray.dataplane.resident import EnginesLost

    return ConfigError, InputError, ExemplarShortfall, EnginesLost


def friendly(command):
    """Errors about the user's input or cluster end the command with their message, not a traceback."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except _user_errors() as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


@contextlib.contextmanager
def locked_session(output: str, verbose: bool, lock: str | None = None,
                   also: Sequence[str] = ()) -> Iterator[None]:
    """A job command's session (see sapray.present.session), holding its output's lock first (one run at a time
    on an output: sapray.dataplane.lock); ``lock``: the lock file, when not ``<output>/lock.json``; ``also``: the
    other output folders the job writes (``sapray run``'s training set), each locked the same way."""
    from sapray.dataplane.lock import held, lock_of

    with contextlib.ExitStack() as locks:
        for uri in dict.fromkeys([lock or lock_of(output), *(lock_of(other) for other in also)]):
            locks.enter_context(held(uri))
        with session(output, verbose):
            yield


def _execute(cfg: SelectConfig, verbose: bool, restart: bool, rehearsal=None) -> None:
    from sapray.jobs.select import run_select, write_selection
    from sapray.present.tables import render_table

    with job_session(cfg, verbose, rehearsal) as job:
        result = run_select(job.cfg, on_round=console.say, restart=restart)
        paths = write_selection(job.cfg.output, result, job.cfg.model_dump())
    counts = result.counts
    lines = [render_table(result.summary), "",
             f"rows: {counts['candidate_rows_in']} in = {counts['scored']} scored + {counts['rejected']} rejected + "
             f"{counts['not_sampled']} not sampled; budget: {result.summary['budget']}"]
    ex = result.summary["exemplars"]
    if ex.get("filled_unchecked"):
        lines.append(f"exemplars: {ex['correct']} correct of {ex['pool_questions']} pool answers "
                     f"({ex.get('truncated', 0)} cut off at exemplars.max_tokens); {ex['filled_unchecked']} "
                     "unchecked answers filled in (shortfall policy 'unchecked')")
    t = result.timings
    lines.append(f"time: {t['total_s']:.0f} s ({t['mining_s']:.0f} s mining, {t['scoring_s']:.0f} s scoring"
                 + (f", {t['sample_generation_s']:.0f} s sample generation" if t["sample_generation_s"] else "")
                 + f"); wrote {paths['report.html']}, selection.json and {len(paths) - 2} more files")
    console.result("\n".join(lines))
    job.show_rehearsal()


def _overrides(set_items: tuple[str, ...], **flags) -> list[str]:
    names = {"engine": "engine", "output": "output", "max_questions": "sample.max_questions",
             "max_tokens": "sample.max_tokens", "seed": "sample.seed", "actors": "ray.actors",
             "layout": "layout", "model": "model", "revision": "revision"}
    return [*set_items, *(f"{names[k]}={v}" for k, v in flags.items() if v is not None)]


def common_flags(f):
    for option in reversed([
        click.option("--set", "set_items", multiple=True, metavar="KEY=VALUE", help="override a config key"),
        click.option("--engine", type=click.Choice(["hf", "vllm"]), help="scoring engine"),
        click.option("--model", help="target: 'smollm2' (embedded), a local HF model directory or a Hub id"),
        click.option("--revision", help="with a Hub id: branch, tag or commit hash"),
        click.option("--layout", type=click.Choice(["chat", "paper"]),
                     help="chat: the target's chat template; paper: the authors' wrapper"),
        click.option("--output", help="output folder or URI"),
        click.option("--max-questions", type=int, help="questions per strategy"),
        click.option("--max-tokens", type=int, help="cap on tokens scored"),
        click.option("--seed", type=int, help="the sample's seed"),
        click.option("--actors", type=int, help="scoring actors"),
        click.option("-v", "--verbose", is_flag=True, help="show Ray's and the workers' output on the console "
                     "instead of in run.log"),
    ]):
        f = option(f)
    return f


def restart_flag(f):
    return click.option("--restart", is_flag=True, help="start over: empty the output's journal first (a rerun "
                        "without it continues from the journal, and refuses one a different config wrote)")(f)


def rehearse_flags(f):
    """--rehearse DEVICE [--devices N] [--time-scale X], read as one ``Rehearsal`` (``rehearsal``, None without)."""
    for option in reversed([
        click.option("--rehearse", "device", metavar="DEVICE", help="run the whole job with simulated engines (the "
                     "target's and the teachers') at this device's measured rates (h200-llama3-8b, "
                     "h200-llama3-8b-eager, cpu-smollm2-hf, cpu-smollm2-vllm), into OUTPUT/rehearsal, and project "
                     "the real run; no endpoint is asked"),
        click.option("--devices", type=click.IntRange(min=1), default=1, show_default=True,
                     help="with --rehearse: how many such devices (one simulated actor each)"),
        click.option("--time-scale", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
                     help="with --rehearse: the simulated engines run this many times faster than the device"),
    ]):
        f = option(f)

    @functools.wraps(f)
    def wrapper(*args, device: str | None, devices: int, time_scale: float, **kwargs):
        from sapray.dataplane.rehearsal import Rehearsal

        try:
            rehearsal = Rehearsal(device, devices, time_scale) if device else None
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        return f(*args, rehearsal=rehearsal, **kwargs)
    return wrapper


@dataclass
class Job:
    """A select, run or generate job's config to run, and a rehearsal's measurements once it ends."""

    cfg: SelectConfig
    rehearsed: dict | None = None

    def show_rehearsal(self) -> None:
        if self.rehearsed:
            from sapray.dataplane.rehearsal import describe

            console.result(describe(self.rehearsed))


@contextlib.contextmanager
def job_session(cfg: SelectConfig, verbose: bool, rehearsal=None, log_in_training_set: bool = False,
                writes_training_set: bool = False):
    """The session a select, run or generate job runs in (its run.log in the output, or in the training set's;
    ``writes_training_set``: ``sapray run``, which holds the training set's lock as well as the output's).
    With --rehearse the job runs ``cfg``'s simulated twin, writing into OUTPUT/rehearsal, and its measurements
    (taken before the session stops Ray) go to the twin's rehearsal.json."""
    meter = None
    if rehearsal is not None:
        from sapray.dataplane.rehearsal import Meter, rehearsed

        meter = Meter(cfg.output)
        cfg = rehearsed(cfg, rehearsal, str(meter.stats_dir))
    job = Job(cfg)
    with locked_session(cfg.generate.output if log_in_training_set else cfg.output, verbose,
                        also=[cfg.generate.output] if writes_training_set else []):
        yield job
        if meter:
            from sapray.dataplane.rehearsal import write_rehearsal

            job.rehearsed = meter.finish(rehearsal)
            write_rehearsal(cfg.output, job.rehearsed)


@click.group()
def main() -> None:
    """sapray: pick the response strategy your model finds most familiar (self-aligned perplexity)."""


def _absolute(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


def data_flags(raw: dict, candidates: tuple[str, ...], questions: str | None, exemplars: str | None,
               pool: str | None) -> dict:
    """Put select's data flags into a config mapping (paths made absolute, so a printed config works
    from anywhere). ``--candidates NAME=PATH`` is one strategy's file; a bare PATH is a long table."""
    data = raw.setdefault("data", {})
    long_tables = []
    for arg in candidates:
        name, sep, path = arg.partition("=")
        if sep and name.strip() and "/" not in name:
            data.setdefault("candidates_by_strategy", {})[name.strip()] = _absolute(path)
        else:
            long_tables.append(arg)
    if len(long_tables) > 1:
        raise click.UsageError(f"--candidates {long_tables}: one long table only (else name each file: NAME=PATH)")
    if long_tables:
        data["candidates"] = _absolute(long_tables[0])
    if questions:
        data["questions"] = _absolute(questions)
    if exemplars or pool:
        section = raw.setdefault("exemplars", {})
        section.pop("file", None)
        section.pop("pool", None)
        section["file" if exemplars else "pool"] = _absolute(exemplars or pool)
    return raw


def select_inputs_flags(command):
    """select's inputs, as a config file or as flags (``plan`` takes the same)."""
    for option in reversed([
        click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
                     help="YAML config; without one, the flags below make the config (every other key at its "
                     "default)"),
        click.option("--candidates", "candidate_args", multiple=True, metavar="[NAME=]PATH",
                     help="one strategy's responses (NAME=PATH; columns question_id, response, or chat 'messages'), "
                     "or a long table with a strategy column (PATH); repeatable"),
        click.option("--questions", help="question_id, question[, gold]; default: the questions the candidate files "
                     "hold"),
        click.option("--exemplars", "exemplar_file", help="the target's own answers to use as exemplars (JSONL with "
                     "text)"),
        click.option("--pool", help="questions with gold answers to mine exemplars from (default: the compared "
                     "questions)"),
    ]):
        command = option(command)
    return command


def select_config(config_path: str | None, candidate_args: tuple[str, ...], questions: str | None,
                  exemplar_file: str | None, pool: str | None, set_items: tuple[str, ...], **flags) -> SelectConfig:
    """The config select's inputs flags (or file) and overrides make."""
    if not config_path and not candidate_args:
        raise click.UsageError("give --config, or --candidates NAME=PATH (once per strategy)")
    if exemplar_file and pool:
        raise click.UsageError("give --exemplars or --pool, not both")
    raw = read_yaml(config_path) if config_path else {}
    data_flags(raw, candidate_args, questions, exemplar_file, pool)
    try:
        return load_config(raw, _overrides(set_items, **flags))
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


@main.command()
@select_inputs_flags
@click.option("--print-config", is_flag=True, help="print the full resolved config as YAML and stop")
@restart_flag
@rehearse_flags
@common_flags
@friendly
def select(config_path: str | None, candidate_args: tuple[str, ...], questions: str | None,
           exemplar_file: str | None, pool: str | None, print_config: bool, restart: bool, rehearsal,
           set_items: tuple[str, ...], verbose: bool, **flags) -> None:
    """Score every strategy's responses on a cost-bounded sample and name the most familiar.

    \b
    sapray select --model Qwen/Qwen2.5-0.5B-Instruct --candidates gpt4o=gpt4o.jsonl --candidates claude=claude.jsonl
    sapray select --config select.yaml
    """
    cfg = select_config(config_path, candidate_args, questions, exemplar_file, pool, set_items, **flags)
    if print_config:
        click.echo(yaml.safe_dump(cfg.model_dump(), sort_keys=False, allow_unicode=True), nl=False)
        return
    _execute(cfg, verbose, restart, rehearsal)


def demo_config() -> dict:
    data = resources.files("sapray") / "data" / "gsm8k"
    return {
        "model": "smollm2",
        "engine": "hf",
        "data": {"questions": str(data / "questions.jsonl"), "candidates": str(data / "candidates.jsonl")},
        # SAP ranks; the race drops losers as soon as they have lost, so PPL and IFD are left out
        "metrics": ["sap"],
        # two looks of 8 questions, under 3 minutes on 2 cores; --max-questions 60 lets the race drop losers
        "sample": {"stop": "confident", "max_questions": 16, "round_size": 8, "seed": 0},
        # SmolLM2's own checked-correct answers, mined once by `sapray mine` (docs/guides/mine.md)
        "exemplars": {"file": str(data / "exemplars_smollm2.jsonl"), "n": 3},
        # actors: the default, one single-threaded actor per core
        "ray": {"batch_size": 18},
        "output": "runs/demo",
    }


@main.command()
@restart_flag
@rehearse_flags
@common_flags
@friendly
def demo(restart: bool, rehearsal, set_items: tuple[str, ...], verbose: bool, **flags) -> None:
    """Select among GSM8K's six real strategies for the embedded SmolLM2-135M-Instruct."""
    try:
        cfg = load_config(demo_config(), _overrides(set_items, **flags))
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    _execute(cfg, verbose, restart, rehearsal)


def _load(config_path: str, set_items, **flags) -> SelectConfig:
    try:
        return load_config_file(config_path, _overrides(set_items, **flags))
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def _tokens_and_money(cost: dict) -> str:
    money = f", ${cost['money']:.4f}" if cost.get("money") is not None else ""
    return f"{cost['prompt_tokens']} prompt + {cost['completion_tokens']} generated tokens{money}"


def _show_generation(metadata: dict) -> None:
    this_run = metadata["cost_this_run"]
    console.result(f"training set: {metadata['rows']} rows for {metadata['questions_done']} of {metadata['questions']} "
               f"questions ({metadata['rejected']} rejected, {metadata['rows_truncated']} kept rows cut off at "
               f"max_tokens) with {metadata['strategy']}; this run: "
               f"{_tokens_and_money(this_run)}, {this_run['wall_s']:.1f} s; all runs: "
               f"{_tokens_and_money(metadata['cost_total'])}")


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="YAML config with strategies")
@click.option("--strategy", required=True, help="strategy to generate the full training set with")
@rehearse_flags
@common_flags
@friendly
def generate(config_path: str, strategy: str, rehearsal, set_items: tuple[str, ...], verbose: bool, **flags) -> None:
    """Generate the full training set with one strategy (resumable: rerun the same command)."""
    from sapray.jobs.generate import run_generate

    cfg = _load(config_path, set_items, **flags)
    with job_session(cfg, verbose, rehearsal, log_in_training_set=True) as job:
        metadata = run_generate(job.cfg, strategy)
    _show_generation(metadata)
    job.show_rehearsal()


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="YAML config with strategies")
@restart_flag
@rehearse_flags
@common_flags
@friendly
def run(config_path: str, restart: bool, rehearsal, set_items: tuple[str, ...], verbose: bool, **flags) -> None:
    """Generate the sample with every strategy, select, then generate the full set with the winner."""
    from sapray.jobs.run import run_all
    from sapray.present.tables import render_table

    cfg = _load(config_path, set_items, **flags)
    with job_session(cfg, verbose, rehearsal, writes_training_set=True) as job:
        summary, costs, metadata = run_all(job.cfg, on_round=console.say, restart=restart)
    console.result(render_table(summary))
    for name, c in costs.items():
        console.result(f"sample generation {name}: {_tokens_and_money(c)}, {c['wall_s']:.1f} s, "
                       f"{c['rejected']} rejected")
    _show_generation(metadata)
    job.show_rehearsal()


@main.command("plan")
@select_inputs_flags
@click.option("--demo", "the_demo", is_flag=True, help="plan `sapray demo` instead of a config")
@click.option("--json", "json_out", help="write the plan as JSON here")
@common_flags
@friendly
def plan_command(config_path: str | None, candidate_args: tuple[str, ...], questions: str | None,
                 exemplar_file: str | None, pool: str | None, the_demo: bool, json_out: str | None,
                 set_items: tuple[str, ...], verbose: bool, **flags) -> None:
    """What a select or run will do and cost, before any engine starts: questions, strategies, requests and
    tokens to score, sample and full-set tokens and money per teacher, and times, each figure marked exact,
    bound or estimate. It takes a select or run config, select's flags, or --demo.

    \b
    sapray plan --config jobs/gsm8k_run.yaml
    sapray plan --model Qwen/Qwen2.5-0.5B-Instruct --candidates gpt4o=gpt4o.jsonl --candidates claude=claude.jsonl
    sapray plan --demo
    """
    import json

    from sapray.jobs.plan import plan_job
    from sapray.present.plan import render
    from sapray.storage import write_text

    if the_demo and (config_path or candidate_args):
        raise click.UsageError("give --demo alone, or a config or select's flags")
    if the_demo:
        try:
            cfg = load_config(demo_config(), _overrides(set_items, **flags))
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
    else:
        cfg = select_config(config_path, candidate_args, questions, exemplar_file, pool, set_items, **flags)
    with session(None, verbose):
        plan = plan_job(cfg)
    console.result(render(plan))
    if json_out:
        write_text(json_out, json.dumps(plan, indent=2, sort_keys=True) + "\n")
        console.result(f"wrote {json_out}")


@main.command("filter")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="YAML filter config")
@click.option("--method", type=click.Choice(["consistency", "dsweight", "lobass", "ifd", "rsr"]),
              help="the filter (overrides the config's method)")
@click.option("--set", "set_items", multiple=True, metavar="KEY=VALUE", help="override a config key")
@click.option("--output", help="output folder or URI")
@rehearse_flags
@click.option("-v", "--verbose", is_flag=True, help="show Ray's and the workers' output on the console instead of "
              "in run.log")
@restart_flag
@friendly
def filter_command(config_path: str, method: str | None, set_items: tuple[str, ...], output: str | None,
                   rehearsal, verbose: bool, restart: bool) -> None:
    """Keep the samples that will help: self-consistency, DS weight, LoBaSS, IFD or RSR."""
    import json

    from sapray.config import load_filter_config, read_yaml
    from sapray.dataplane.rehearsal import describe
    from sapray.jobs.filter import run_filter, write_filter

    overrides = [*set_items, *([f"method={method}"] if method else []), *([f"output={output}"] if output else [])]
    try:
        cfg = load_filter_config(read_yaml(config_path), overrides)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    with locked_session(cfg.output, verbose):
        result = run_filter(cfg, restart, rehearsal)
        paths = write_filter(result.output, result)
    c = result.summary["counts"]
    console.result(f"{cfg.method}: {c['rows_in']} in = {c['kept']} kept + {c['dropped']} dropped "
               f"+ {c['rejected']} rejected")
    console.result(json.dumps(result.summary.get("distributions", {}), indent=2))
    if rehearsal:
        console.result(describe(result.summary["rehearsal"]))
    console.result(f"wrote {paths['kept']}/ (the kept samples) and {len(paths) - 1} more")


@main.command("report")
@click.argument("run_dir")
@click.option("--output", help="where to write the page (default: RUN_DIR/report.html)")
@click.option("--validation", "validation_path", help="a validation.json from sapray validate --json to include "
              "(default: RUN_DIR/validation.json when there is one)")
def report_command(run_dir: str, output: str | None, validation_path: str | None) -> None:
    """Rebuild report.html from a finished select, run or filter folder (local or s3://)."""
    import json

    from sapray.present.html_report import ReportError, write_report
    from sapray.storage import read_text

    try:
        validation = json.loads(read_text(validation_path)) if validation_path else None
        click.echo(f"wrote {write_report(run_dir, output, validation)}")
    except (ReportError, OSError, json.JSONDecodeError) as exc:
        raise click.ClickException(str(exc)) from None


@main.command("validate")
@click.option("--results", help="one row per (model, task[, subset], strategy): accuracy and metric columns "
              "(sap, ppl, ifd, rsr, sa_rsr, length, reward, car); CSV, JSONL or Parquet")
@click.option("--selection", "selections", multiple=True, metavar="TASK[:SUBSET]=PATH",
              help="a selection.json and the task (and subset) it scored; repeatable; needs --accuracy")
@click.option("--accuracy", help="with --selection: table of strategy, accuracy (and optionally task, model)")
@click.option("--metrics", help="comma-separated metrics to judge (default: every metric present)")
@click.option("--reference", help="the metric every other is compared with, with bootstrap intervals for the "
              "difference (default: sap when judged, else the first metric)")
@click.option("--resamples", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="bootstrap resamples of the (model, task) pairs")
@click.option("--seed", type=int, default=0, show_default=True, help="the bootstrap's seed")
@click.option("--gap-edges", default="1,2,5,10,20,50", show_default=True,
              help="edges of the calibration table's buckets, in percent of the preferred strategy's metric value")
@click.option("--json", "json_out", help="write the result as JSON here")
@click.option("--html", "html_out", help="write the result as an HTML page here")
def validate_command(results: str | None, selections: tuple[str, ...], accuracy: str | None, metrics: str | None,
                     reference: str | None, resamples: int, seed: int, gap_edges: str, json_out: str | None,
                     html_out: str | None) -> None:
    """Judge metrics' strategy rankings against downstream accuracy (Spearman, top-1; METHOD.md §3), with
    bootstrap intervals and a calibration table of metric gaps against accuracy gaps."""
    import json

    from sapray.core import validation as v
    from sapray.jobs.validate import read_results, rows_from_selections
    from sapray.present.html_report import render_validation_page
    from sapray.present.tables import render_validation
    from sapray.storage import write_text

    if bool(results) == bool(selections):
        raise click.UsageError("give either --results or --selection (with --accuracy)")
    if selections and not accuracy:
        raise click.UsageError("--selection needs --accuracy")
    try:
        edges = [float(e) / 100 for e in gap_edges.split(",")]
    except ValueError:
        raise click.UsageError(f"--gap-edges {gap_edges!r}: expected percentages such as 1,2,5,10") from None
    try:
        if results:
            rows = read_results(results)
        else:
            rows = rows_from_selections([v.parse_selection_arg(a) for a in selections], accuracy)
        result = v.validate(rows, [m.strip() for m in metrics.split(",")] if metrics else None, reference=reference,
                            resamples=resamples, seed=seed, gap_edges=edges)
    except v.ValidationError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(render_validation(result))
    if json_out:
        write_text(json_out, json.dumps(result, indent=2) + "\n")
        click.echo(f"wrote {json_out}")
    if html_out:
        write_text(html_out, render_validation_page(result))
        click.echo(f"wrote {html_out}")
@main.command("mine")
@click.option("--pool", required=True, help="questions with gold answers (JSONL, JSON, Parquet, CSV, datasets folder)")
@click.option("--output", required=True, help="exemplar file to write (JSONL); its provenance goes beside it as .json")
@click.option("--model", default="smollm2", show_default=True,
              help="target: 'smollm2', a local HF model directory or a Hugging Face Hub id")
@click.option("--revision", help="Hub id only: branch, tag or commit hash")
@click.option("--engine", type=click.Choice(["hf", "vllm"]), default="hf", show_default=True,
              help="engine the target answers on")
@click.option("--n", type=click.IntRange(min=1), default=8, show_default=True,
              help="checked-correct answers to find; mining stops once they are found")
@click.option("--max-questions", type=click.IntRange(min=1), help="ask at most this many pool questions")
@click.option("--checker", type=click.Choice(["gsm8k", "choice", "exact", "regex", "none"]), default="gsm8k",
              show_default=True, help="how an answer is checked against the gold one (none: every answer passes)")
@click.option("--regex", help="the regex checker's pattern")
@click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="answer length cap; a cut-off answer never counts as correct")
@click.option("--seed", type=int, default=0, show_default=True, help="order in which pool questions are asked")
@click.option("--exclude", multiple=True, help="question file whose questions must not be mined (by id or text)")
@click.option("--shortfall", type=click.Choice(["error", "unchecked"]), default="error", show_default=True,
              help="fewer than n correct: stop, or fill up with unchecked answers")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="questions generated per batch; mining checks for n after each")
@click.option("--set", "set_items", multiple=True, metavar="KEY=VALUE",
              help="any other key, e.g. engine_args.max_model_len=4096, columns.gold=answer, ray.actors=2")
@click.option("-v", "--verbose", is_flag=True, help="show Ray's and the workers' output on the console instead of "
              "in run.log")
@restart_flag
@friendly
def mine_command(set_items: tuple[str, ...], verbose: bool, restart: bool, batch_size: int, exclude: tuple[str, ...],
                 **options) -> None:
    """Mine exemplars alone: the target answers pool questions until n pass the answer checker."""
    from sapray.config import MineConfig, validate
    from sapray.dataplane.lock import lock_of
    from sapray.dataplane.mining import write_mined
    from sapray.jobs.mine import run_mine
    from sapray.storage import parent

    raw = {**{k: v for k, v in options.items() if v is not None}, "exclude": list(exclude),
           "ray": {"batch_size": batch_size}}
    try:
        cfg = validate(MineConfig, raw, list(set_items))
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    with locked_session(parent(cfg.output), verbose, lock_of(cfg.output, file=True)):
        result = run_mine(cfg, restart)
        path, sidecar = write_mined(cfg.output, result)
    p = result.provenance
    rate = f"{p['hit_rate']:.1%}" if p["hit_rate"] is not None else "-"
    console.result(f"{p['correct']} correct of {p['questions_answered']} questions answered (hit rate {rate}; "
               f"{p['wrong']} wrong, {p['unparsable']} unparsable, {p['truncated']} cut off at {cfg.max_tokens} "
               f"tokens) in {p['wall_s']} s with {cfg.engine}; {p['exemplars']} exemplars"
               + (f" ({p['filled_unchecked']} unchecked)" if p["filled_unchecked"] else ""))
    console.result(f"wrote {path} and {sidecar}")


if __name__ == "__main__":
    sys.exit(main())
