"""Every example job config in jobs/ validates, and its local input files exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from sapray.config import load_config_file, load_filter_config, read_yaml

JOBS = Path(__file__).resolve().parent.parent / "jobs"


@pytest.mark.parametrize("name", ["gsm8k_demo.yaml", "gsm8k_run.yaml"])
def test_select_and_run_configs_validate(name):
    cfg = load_config_file(JOBS / name)
    assert Path(cfg.data.questions).exists() and Path(cfg.data.candidates).exists()
    assert Path(cfg.exemplars.pool).exists()


def test_filter_config_validates():
    cfg = load_filter_config(read_yaml(JOBS / "filter_dsweight.yaml"))
    assert cfg.method == "dsweight" and Path(cfg.dsweight.valid).exists()


def test_paths_in_a_config_file_are_relative_to_it_and_command_line_paths_to_the_working_directory():
    repo = JOBS.parent
    cfg = load_config_file(JOBS / "gsm8k_run.yaml")
    assert cfg.output == str(repo / "runs" / "gsm8k_run")
    assert cfg.generate.output == str(repo / "runs" / "gsm8k_run" / "train")
    overridden = load_config_file(JOBS / "gsm8k_run.yaml", ["output=elsewhere", "generate.output=s3://b/train"])
    assert (overridden.output, overridden.generate.output) == ("elsewhere", "s3://b/train")
