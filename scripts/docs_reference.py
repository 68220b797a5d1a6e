"""The docs site's Reference pages, generated from the code at every build (an MkDocs hook, see mkdocs.yml).

Configuration keys come from the pydantic models (``SelectConfig``, ``FilterConfig``, ``MineConfig``): every
key with its type, constraints, default and description, nested sections in turn. Commands and flags come
from click's command tree (``sapray.cli.main``). No reference page is a file in ``docs/``: the pages exist
only in the built site, so a key or a flag changed in the code is changed there at the next build
(``tests/test_docs.py`` checks both).

To read the pages without building the site: ``python scripts/docs_reference.py OUT_DIR``.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from pathlib import Path
from typing import Any, NamedTuple

import annotated_types
import click
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

ROOT = Path(__file__).resolve().parents[1]

GENERATED_NOTE = ("*This page is generated from the code at every build of the site "
                  "(`scripts/docs_reference.py`); it is not a file in the repository.*")


class ConfigPage(NamedTuple):
    path: str  # inside the site's docs, e.g. reference/config-select.md
    title: str
    model: str  # "module:Class"
    intro: str


CONFIG_PAGES = [
    ConfigPage(
        "reference/config-select.md", "Configuration: select, run and generate", "sapray.config:SelectConfig",
        "The YAML file that `sapray select --config`, `sapray run` and `sapray generate` read. Unknown keys and "
        "wrong types fail before any work starts, naming the key. Any key can be set from the command line with "
        "`--set key.path=value` (the value is parsed as YAML); `sapray select --print-config` prints the full "
        "resolved config. Relative paths in a config file are relative to that file's folder."),
    ConfigPage(
        "reference/config-filter.md", "Configuration: filter", "sapray.config:FilterConfig",
        "The YAML file that `sapray filter --config` reads (example: `jobs/filter_dsweight.yaml`). Only the "
        "section of the chosen `method` is used. `--set key.path=value` overrides any key."),
    ConfigPage(
        "reference/config-mine.md", "Configuration: mine", "sapray.config:MineConfig",
        "`sapray mine` takes no config file: its flags set these keys, and `--set key.path=value` sets any "
        "other (for example `columns.gold=answer` or `ray.actors=2`)."),
]
CLI_PAGE = "reference/cli.md"
CLI_ROOT = "sapray.cli:main"


def load(spec: str) -> Any:
    """``module:name`` from this tree's package, whatever sapray is installed (MkDocs takes a hook's folder off
    ``sys.path`` once the hook is loaded, so the tree goes first here, at the first import)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    module, _, name = spec.partition(":")
    __import__(module)
    return getattr(sys.modules[module], name)


# ---- configuration keys ---------------------------------------------------------------------------------------


def _section_model(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The pydantic model a field holds (directly, optionally, or as a list of them), and whether it is a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and args:
        inner, _ = _section_model(args[0])
        return inner, inner is not None
    if origin in (typing.Union, types.UnionType):
        models = [m for m, _ in map(_section_model, args) if m is not None]
        if len(models) == 1:
            return models[0], any(_section_model(a)[1] for a in args)
    return None, False


def type_name(annotation: Any) -> str:
    """A type as a YAML writer reads it: str, int, list of str, one of `a`, `b`, ..."""
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin is list:
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {type_name(args[0])} to {type_name(args[1])}" if args else "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(annotation, str(annotation))


_BOUNDS = ((annotated_types.Ge, "ge", "≥"), (annotated_types.Gt, "gt", ">"), (annotated_types.Le, "le", "≤"),
           (annotated_types.Lt, "lt", "<"))


def constraints(field: FieldInfo) -> str:
    found = []
    for item in field.metadata:
        for kind, attr, sign in _BOUNDS:
            if isinstance(item, kind):
                found.append(f"{sign} {getattr(item, attr)}")
    return ", ".join(found)


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10**6).strip()
    text = text.removesuffix("...").strip()
    return f"`{text}`"


def cell(text: str) -> str:
    """Text that stays inside one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")


class Section(NamedTuple):
    key: str  # dotted path of the section ("" for the top level), "[]" marking a list of sections
    model: type[BaseModel]
    optional: bool = False


def anchor(key: str) -> str:
    return "top" if not key else key.replace("[]", "").replace(".", "-").replace("_", "-")


def sections(model: type[BaseModel], key: str = "") -> list[Section]:
    found = [Section(key, model)]
    for name, field in model.model_fields.items():
        inner, is_list = _section_model(field.annotation)
        if inner is not None:
            child = f"{key}.{name}" if key else name
            found += sections(inner, child + ("[]" if is_list else ""))
    return found


def config_keys(model: type[BaseModel]) -> list[str]:
    """Every dotted key a config of ``model`` has, sections included (``strategies[].teacher.kind``)."""
    keys = []
    for section in sections(model):
        prefix = f"{section.key}." if section.key else ""
        keys += [prefix + name for name in section.model.model_fields]
    return keys


def own_doc(model: type[BaseModel]) -> str:
    """A model's own docstring on one line ("" when it has none: not pydantic's BaseModel one)."""
    return " ".join(inspect.cleandoc(model.__doc__).split()) if model.__doc__ else ""


def description(field: FieldInfo) -> str:
    """The field's description; for a section without one, its model's docstring."""
    if field.description:
        return field.description
    inner, _ = _section_model(field.annotation)
    return own_doc(inner) if inner is not None else ""


def section_table(section: Section) -> list[str]:
    prefix = f"{section.key}." if section.key else ""
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for name, field in section.model.model_fields.items():
        inner, is_list = _section_model(field.annotation)
        kind = type_name(field.annotation)
        if inner is not None:
            target = anchor(prefix + name + ("[]" if is_list else ""))
            kind = f"[{'list of sections' if is_list else 'section'}](#{target})"
            if not field.is_required() and field.get_default(call_default_factory=True) is None:
                kind += " or null"
        bounds = constraints(field)
        if bounds:
            kind += f", {bounds}"
        lines.append(f"| `{prefix}{name}` | {cell(kind)} | {cell(default_text(field))} | "
                     f"{cell(description(field))} |")
    return lines


def config_page(page: ConfigPage, model: type[BaseModel] | None = None) -> str:
    model = model or load(page.model)
    out = [f"# {page.title}", "", GENERATED_NOTE, "", page.intro, ""]
    for section in sections(model):
        title = f"`{section.key}`" if section.key else "Top-level keys"
        out += [f"## {title} {{#{anchor(section.key)}}}", ""]
        if own_doc(section.model):
            out += [own_doc(section.model), ""]
        if section.key.endswith("[]"):
            out += [f"A list: each item is a mapping with the keys below (`{section.key}.name`, ...).", ""]
        out += [*section_table(section), ""]
    return "\n".join(out)


# ---- commands and flags --------------------------------------------------------------------------------------


def help_markdown(text: str) -> list[str]:
    """click help text: paragraphs; a paragraph after click's ``\\b`` marker is kept as written (a code block)."""
    out = []
    for para in inspect.cleandoc(text).split("\n\n"):
        if para.startswith("\b"):
            out += ["```text", para.lstrip("\b").strip("\n"), "```", ""]
        else:
            out += [" ".join(para.split()), ""]
    return out


def param_type(param: click.Parameter) -> str:
    if isinstance(param, click.Option) and param.is_flag:
        return "flag"
    kind = param.type
    if isinstance(kind, click.Choice):
        text = "one of " + ", ".join(f"`{c}`" for c in kind.choices)
    elif isinstance(kind, click.IntRange):
        bounds = [f"≥ {kind.min}" if kind.min is not None else "", f"≤ {kind.max}" if kind.max is not None else ""]
        text = "integer" + "".join(f", {b}" for b in bounds if b)
    elif isinstance(kind, click.Path):
        text = "path" + (" (must exist)" if kind.exists else "")
    else:
        text = {"text": "text", "integer": "integer", "float": "number", "boolean": "boolean"}.get(
            kind.name, kind.name)
    if param.multiple:
        text += "; repeatable"
    return text


def param_default(param: click.Parameter, ctx: click.Context) -> str:
    if param.required:
        return "required"
    value = param.get_default(ctx, call=False)
    if value is None or value is False or value == () or callable(value) or type(value).__name__ == "Sentinel":
        return ""
    return f"`{value}`"


def command_section(name: str, command: click.Command) -> list[str]:
    ctx = click.Context(command, info_name=f"sapray {name}")
    usage = " ".join(["sapray", name, *command.collect_usage_pieces(ctx)])
    out = [f"## `sapray {name}` {{#{name}}}", "", "```text", usage, "```", ""]
    out += help_markdown(command.help or "")
    arguments = [p for p in command.params if isinstance(p, click.Argument)]
    options = [p for p in command.params if isinstance(p, click.Option)]
    if arguments:
        out += ["| argument | type | required |", "|---|---|---|"]
        out += [f"| `{p.human_readable_name}` | {cell(param_type(p))} | {'yes' if p.required else 'no'} |"
                for p in arguments]
        out.append("")
    if options:
        out += ["| option | type | default | description |", "|---|---|---|---|"]
        for p in options:
            flags = ", ".join(f"`{o}`" + (f" `{p.metavar}`" if p.metavar else "") for o in p.opts + p.secondary_opts)
            out.append(f"| {flags} | {cell(param_type(p))} | {cell(param_default(p, ctx))} | {cell(p.help or '')} |")
        out.append("")
    return out


def command_options(root: click.Group) -> dict[str, list[str]]:
    """Every command and what its page shows of each parameter (``--max-questions``, ``-v``, ``RUN_DIR``)."""
    def shown(p: click.Parameter) -> list[str]:
        return [p.human_readable_name] if isinstance(p, click.Argument) else [*p.opts, *p.secondary_opts]

    return {name: [o for p in cmd.params for o in shown(p)] for name, cmd in root.commands.items()}


def cli_page(root: click.Group | None = None) -> str:
    root = root or load(CLI_ROOT)
    out = ["# Command line", "", GENERATED_NOTE, ""]
    out += help_markdown(root.help or "")
    out += ["Every command takes `--help`. An option without a default leaves the config's value (or the config "
            "key's default, [Configuration](config-select.md)) as it is. The commands:", ""]
    out += [f"- [`sapray {name}`](#{name}): {(cmd.get_short_help_str(limit=200))}"
            for name, cmd in root.commands.items()]
    out.append("")
    for name, command in root.commands.items():
        out += command_section(name, command)
    return "\n".join(out)


def pages() -> dict[str, str]:
    """Every generated page: its path in the site's docs -> Markdown."""
    return {**{page.path: config_page(page) for page in CONFIG_PAGES}, CLI_PAGE: cli_page()}


# ---- the MkDocs hook -----------------------------------------------------------------------------------------


def on_files(files, config):
    """Add the generated pages to the site (MkDocs >= 1.6); a file of the same name in docs/ is an error."""
    from mkdocs.exceptions import PluginError
    from mkdocs.structure.files import File

    for path, text in pages().items():
        if files.get_file_from_path(path) is not None:
            raise PluginError(f"docs/{path} is generated from the code: delete the file in docs/")
        files.append(File.generated(config, path, content=text))
    return files


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/docs_reference.py OUT_DIR")
    for path, text in pages().items():
        target = Path(sys.argv[1]) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        print(target)
