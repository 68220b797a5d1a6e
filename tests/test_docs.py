"""The docs site builds in strict mode (a broken link, a missing page or a stale anchor fails), and its Reference
pages are generated from the code: every config key and command-line option is in the built site, a changed
description or an added key changes the page, and the README stays short with links that resolve."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from html import escape as html_escape
from pathlib import Path

import click
import pytest
from pydantic import Field, create_model

import sapray.config
from sapray.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]


def _load_generator():
    spec = importlib.util.spec_from_file_location("docs_reference", ROOT / "scripts" / "docs_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ref = _load_generator()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built as `make docs` builds it: `mkdocs build --strict`, here into a temporary folder."""
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    assert mkdocs, "mkdocs is a dev dependency: pip install -e '.[dev]'"
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(out)], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    return out


def _page(site: Path, path: str) -> str:
    """The built HTML of a page given by its Markdown path (reference/cli.md -> reference/cli/index.html)."""
    return (site / path.removesuffix(".md") / "index.html").read_text()


def test_the_site_builds_strictly_with_every_page_of_the_nav(site):
    for page in ["quickstart.md", "concepts/race.md", "statistics.md", "guides/clusters.md", "benchmarks.md",
                 "scaling.md", "development.md", *(p.path for p in ref.CONFIG_PAGES), ref.CLI_PAGE]:
        assert "<h1" in _page(site, page), page


def test_every_config_key_is_in_the_built_reference_with_this_trees_description(site):
    for page in ref.CONFIG_PAGES:
        html = _page(site, page.path)
        keys = ref.config_keys(ref.load(page.model))
        assert len(keys) > 10
        missing = [key for key in keys if f"<code>{key}</code>" not in html]
        assert not missing, f"{page.path} lacks {missing}"
        for section in ref.sections(ref.load(page.model)):
            for name, field in section.model.model_fields.items():
                if field.description and "`" not in field.description:
                    shown = html_escape(" ".join(field.description.split()), quote=False)
                    assert shown in html, f"{page.path}: {section.key}.{name}'s description {shown!r}"


def test_every_command_and_option_is_in_the_built_reference(site):
    html = _page(site, ref.CLI_PAGE)
    # one part per command, from its heading to the next
    parts = dict(re.findall(r'<h2 id="([a-z-]+)">(.*?)(?=<h2 id=|\Z)', html, flags=re.S))
    options = ref.command_options(cli_main)
    assert set(options) == set(parts) == {"select", "demo", "plan", "generate", "run", "filter", "report",
                                          "validate", "mine"}
    for command, opts in options.items():
        missing = [o for o in opts if f"<code>{o}</code>" not in parts[command]]
        assert not missing, f"sapray {command}: {missing} not in its section"


def test_reference_pages_are_not_files_in_docs():
    written = [p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")]
    generated = {p.path for p in ref.CONFIG_PAGES} | {ref.CLI_PAGE}
    assert not generated & set(written), "reference pages are generated at build time: delete the files in docs/"


def test_a_changed_description_changes_the_page(monkeypatch):
    field = sapray.config.SelectConfig.model_fields["bootstrap"]
    monkeypatch.setattr(field, "description", "resamples, as only this test describes them")
    option = next(p for p in cli_main.commands["select"].params if p.name == "max_questions")
    monkeypatch.setattr(option, "help", "questions, as only this test describes them")
    pages = ref.pages()
    assert "| `bootstrap` | integer, ≥ 0 | `1000` | resamples, as only this test describes them |" in \
        pages["reference/config-select.md"]
    assert "questions, as only this test describes them" in pages[ref.CLI_PAGE]


def test_an_added_key_and_section_appear_in_the_page(monkeypatch):
    section = create_model("ProbeSection", __doc__="A section only this test adds.",
                           depth=(int, Field(3, ge=1, le=9, description="a nested key")))
    extended = create_model("ProbeConfig", __base__=sapray.config.SelectConfig,
                            probe_key=(str | None, Field(None, description="a key only this test adds")),
                            probe=(section, section()))
    monkeypatch.setattr(sapray.config, "SelectConfig", extended)
    page = ref.pages()["reference/config-select.md"]
    assert "| `probe_key` | string or null | `null` | a key only this test adds |" in page
    assert "## `probe` {#probe}" in page and "A section only this test adds." in page
    assert "| `probe.depth` | integer, ≥ 1, ≤ 9 | `3` | a nested key |" in page
    assert "| `sample.max_questions` |" in page  # the real keys are still there


def test_every_config_key_and_option_has_a_description():
    undescribed = [f"{page.model}: {section.key or '(top)'}.{name}"
                   for page in ref.CONFIG_PAGES for section in ref.sections(ref.load(page.model))
                   for name, field in section.model.model_fields.items() if not ref.description(field)]
    assert not undescribed, "give these fields a Field(description=...): " + ", ".join(undescribed)
    no_help = [f"sapray {name} {param.opts[0]}" for name, command in cli_main.commands.items()
               for param in command.params if isinstance(param, click.Option) and not param.help]
    assert not no_help, "give these options a help text: " + ", ".join(no_help)


def test_readme_is_short_keeps_the_test_command_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 10_240
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    assert any(line.strip() == "make test" for block in blocks for line in block.splitlines())
    ci_lines = {line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()}
    assert "make test" in ci_lines  # .ci/run runs the command the README gives
    links = [target for target in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in target]
    assert links
    broken = [target for target in links if not (ROOT / target.split("#")[0]).exists()]
    assert not broken, f"README links to missing files: {broken}"
