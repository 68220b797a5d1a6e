"""The journal by itself: entries whole or absent, a changed fingerprint refused naming what changed, --restart,
and batch logs keyed by their rows."""

from __future__ import annotations

import pyarrow as pa
import pytest

from sapray.dataplane.journal import BatchMemo, Journal, JournalMismatch, batch_log, changes, input_identity


def test_entries_round_trip_and_a_half_written_one_is_not_an_entry(tmp_path):
    journal = Journal(str(tmp_path / "j"), {"model": "m", "seed": 0})
    journal.put("round-0001", {"scored": [1, 2]})
    (tmp_path / "j" / "round-0002.json.tmp").write_text('{"scored": [')  # a write the kill cut short
    again = Journal(str(tmp_path / "j"), {"model": "m", "seed": 0})
    assert again.entries == {"round-0001"} and again.get("round-0001") == {"scored": [1, 2]}
    assert again.get("round-0002") is None


def test_a_changed_fingerprint_is_refused_naming_what_changed_unless_restarting(tmp_path):
    folder = str(tmp_path / "j")
    Journal(folder, {"model": "m", "sample": {"seed": 0, "round_size": 10}}).put("round-0001", {})
    with pytest.raises(JournalMismatch, match=r"sample\.seed: 0 -> 1.*--restart"):
        Journal(folder, {"model": "m", "sample": {"seed": 1, "round_size": 10}})
    fresh = Journal(folder, {"model": "m", "sample": {"seed": 1, "round_size": 10}}, restart=True)
    assert fresh.entries == set()
    assert changes({"a": {"b": 1, "c": [1]}}, {"a": {"b": 2, "c": [1]}, "d": 3}) == ["a.b: 1 -> 2", "d: null -> 3"]


def test_an_input_is_known_by_its_size_and_time(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("a\n")
    first = input_identity(str(path))
    path.write_text("ab\n")
    assert input_identity(str(path)) != first and input_identity(str(tmp_path / "absent")) is None


def test_batches_are_logged_by_their_rows_not_their_position(tmp_path):
    log = batch_log(Journal(str(tmp_path / "j"), {}), "gen-r0001-teacher")
    batch = [{"row_id": "q1", "strategy": "a"}, {"row_id": "q2", "strategy": "a"}]
    assert log(batch) is None
    log(batch, [{"texts": ["x"]}, {"texts": ["y"]}])
    assert log(batch) == [{"texts": ["x"]}, {"texts": ["y"]}]
    assert log(batch[:1]) is None and log([batch[1], batch[0]]) is None  # other rows: another batch


def test_a_batch_memo_is_found_by_its_rows_orders(tmp_path):
    memo = BatchMemo(str(tmp_path / "j"), "sums-score")
    columns = pa.table({"sum_0": [-1.5, -2.0], "tokens_0": [3, 4]})
    memo.put([4, 5], columns)
    assert memo.get([4, 5]).equals(columns)
    assert memo.get([4, 6]) is None and memo.get([5]) is None and memo.get([]) is None
