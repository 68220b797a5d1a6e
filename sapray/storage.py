"""Whole files on local disk or an object store (``s3://``, ``gs://``) through pyarrow's filesystems.

The one place sapray opens a path or URI for a whole file: the data plane's readers and writers, the
journal and the report all go through it, so a URI works wherever a path does.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow.fs as pafs

from sapray.core.errors import ConfigError, InputError


class Unreadable(ConfigError):
    """A file that is there but cannot be read (``why``: the error) or parsed (``unparsable``)."""

    def __init__(self, uri: str, exc: Exception) -> None:
        self.why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
        self.unparsable = isinstance(exc, ValueError)
        super().__init__(f"{uri}: unreadable ({self.why})")


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), uri


def child(uri: str, name: str) -> str:
    """``uri/name``, keeping a URI's query (``s3://b/out?endpoint_override=...``) at the end."""
    base, sep, query = uri.partition("?")
    return f"{base.rstrip('/')}/{name}{sep}{query}"


def parent(uri: str) -> str:
    """The folder holding ``uri`` (``.`` for a bare file name), keeping a URI's query."""
    base, sep, query = uri.partition("?")
    return f"{base.rpartition('/')[0] or '.'}{sep}{query}"


def with_suffix(uri: str, suffix: str) -> str:
    """``x.jsonl`` -> ``x{suffix}``; a name without ``.jsonl`` gets ``suffix`` added; a URI keeps its query."""
    base, sep, query = uri.partition("?")
    return f"{base.removesuffix('.jsonl')}{suffix}{sep}{query}"


def read_text(uri: str, fs: pafs.FileSystem | None = None) -> str:
    """A whole file as UTF-8 text; ``fs`` when ``uri`` is already a path on that filesystem."""
    if fs is None:
        fs, uri = filesystem(uri)
    with fs.open_input_stream(uri) as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{uri}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def read_json(uri: str, lines: bool = False) -> Any:
    """A whole JSON file's value (``lines``: a JSON-lines file's values), or None when there is no such file;
    one that is there but cannot be read or parsed is ``Unreadable``, naming it: only "not found" means "no
    file"."""
    fs, path = filesystem(uri)
    try:
        text = read_text(path, fs)
        return [json.loads(line) for line in text.splitlines()] if lines else json.loads(text)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # ValueError: not JSON, not UTF-8 (InputError)
        # some object stores say "not found" as a plain OSError
        if isinstance(exc, OSError) and fs.get_file_info(path).type == pafs.FileType.NotFound:
            return None
        raise Unreadable(uri, exc) from None


def write_text(uri: str, text: str) -> None:
    """A whole UTF-8 file, there whole or not at all (``write_whole``)."""
    write_whole(uri, text.encode("utf-8"))


def write_whole(uri: str, data: bytes) -> None:
    """A whole file, there whole or not at all: written to a temporary name, then moved (on an object store
    each write is one object, there once complete)."""
    fs, path = filesystem(uri)
    fs.create_dir(path.rpartition("/")[0] or ".", recursive=True)
    with fs.open_output_stream(path + ".tmp") as f:
        f.write(data)
    fs.move(path + ".tmp", path)
