"""``sapray validate``: the results table, or selection.json files joined with an accuracy table, judged
as ``sapray.core.validation`` judges them (METHOD.md §3)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from sapray.core.validation import (
    SELECTION_KEYS,
    Row,
    ValidationError,
    name_sources,
    rows_from_accuracy,
    rows_from_records,
)
from sapray.dataplane.read import InputError, iter_records
from sapray.storage import read_text


def read_results(uri: str) -> list[Row]:
    """A results table: CSV, JSONL or Parquet (local or object store)."""
    try:
        return rows_from_records(iter_records(uri), uri)
    except InputError as exc:
        raise ValidationError(str(exc)) from None


def rows_from_selections(selections: Sequence[tuple[str, str | None, str]], accuracy_uri: str) -> list[Row]:
    """Rows from selection.json files (metric values from per_strategy) joined with an accuracy table.

    The accuracy table has columns strategy and accuracy, and optionally task and model; a row applies
    to a selection when its task and model (where given) match the selection's. A scored strategy with
    no accuracy, or with two, is an error naming it.
    """
    try:
        records = list(iter_records(accuracy_uri))
    except InputError as exc:
        raise ValidationError(str(exc)) from None
    table = rows_from_accuracy(records, accuracy_uri)
    rows = []
    for task, subset, uri in selections:
        try:
            selection = json.loads(read_text(uri))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValidationError(f"{uri}: cannot read a selection ({exc})") from None
        model = str(selection.get("model", ""))
        for strategy, stats in sorted(selection.get("per_strategy", {}).items()):
            if not stats.get("n"):
                continue  # never scored: no metric values
            found = [a for a in table if a["strategy"] == strategy and a.get("task", task) == task
                     and a.get("model", model) == model]
            if len(found) != 1:
                sources = name_sources([f["source"] for f in found])
                how = f"{len(found)} accuracies ({sources})" if found else "no accuracy"
                raise ValidationError(f"{accuracy_uri}: {how} for strategy {strategy!r} of task {task!r}, "
                                      f"model {model!r} ({uri})")
            rows.append(Row(f"{uri}:{strategy}", model, task, subset, strategy, found[0]["accuracy"],
                            {m: stats.get(k) for m, k in SELECTION_KEYS.items() if stats.get(k) is not None}))
    return rows
