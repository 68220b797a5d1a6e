"""The package's layers hold: each imports only from those below it (the contracts in pyproject.toml), and the
modules of the old flat layout still import as the same objects."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import sapray

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_contracts_hold():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint, "import-linter is a dev dependency: pip install -e '.[dev]'"
    done = subprocess.run([lint, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "broken" in done.stdout and " 0 broken" in done.stdout


@pytest.mark.parametrize("old", sorted(sapray.MOVED))
def test_an_old_module_name_is_the_module_at_its_new_place_with_a_warning(old):
    new = importlib.import_module(f"sapray.{sapray.MOVED[old]}")
    sys.modules.pop(f"sapray.{old}", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        moved = importlib.import_module(f"sapray.{old}")
    assert moved is new
    assert new.__spec__.name == new.__name__  # the module keeps its own spec
    assert any(issubclass(w.category, DeprecationWarning) and sapray.MOVED[old] in str(w.message) for w in caught)


def test_every_module_of_the_package_sits_in_a_layer():
    layers = {"cli", "jobs", "present", "dataplane", "storage", "console", "config", "engines", "core"}
    top = {p.stem for p in (ROOT / "sapray").iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert top - {"__init__", "__main__", "data"} == layers


def test_every_job_is_under_the_independence_contract():
    """A new module in sapray/jobs/ cannot import another job unseen: the contract names every one."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    independent = next(c["modules"] for c in contracts if c["type"] == "independence")
    jobs = {f"sapray.jobs.{p.stem}" for p in (ROOT / "sapray" / "jobs").glob("*.py") if p.stem != "__init__"}
    assert set(independent) == jobs
