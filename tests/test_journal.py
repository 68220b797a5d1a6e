"""The journal by itself: entries whole or absent, a changed fingerprint refused naming what changed, --restart,
and batch logs keyed by their rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sapray.dataplane.journal import (
    Journal,
    Journaled,
    JournalMismatch,
    JournalUnreadable,
    RowJournal,
    RowJournalWriter,
    batch_log,
    changes,
    input_identity,
)
from sapray.storage import Unreadable, read_json


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


def test_an_entry_that_does_not_parse_is_computed_again_with_a_line_saying_so(tmp_path, capsys):
    folder = tmp_path / "j"
    journal = Journal(str(folder), {"model": "m"})
    log = batch_log(journal, "batch")
    batch = [{"row_id": "q1"}]
    log(batch, [{"texts": ["x"]}])
    journal.put("round-0001", {"scored": [1]})
    entry = next(folder.glob("batch-*.json"))
    entry.write_bytes(entry.read_bytes()[:5])  # a partial copy
    again = Journal(str(folder), {"model": "m"})
    assert again.entries == {"round-0001"}
    assert batch_log(again, "batch")(batch) is None  # asked again, then journaled whole
    assert f"{entry}: unreadable (JSONDecodeError" in capsys.readouterr().err
    batch_log(again, "batch")(batch, [{"texts": ["y"]}])
    assert batch_log(Journal(str(folder), {"model": "m"}), "batch")(batch) == [{"texts": ["y"]}]


def test_an_unreadable_fingerprint_is_an_error_naming_it_and_restart_never_overwritten(tmp_path):
    folder = tmp_path / "j"
    Journal(str(folder), {"model": "m"}).put("round-0001", {})
    fingerprint = folder / "fingerprint.json"
    fingerprint.write_text('{"model": ')
    with pytest.raises(JournalUnreadable, match=rf"{fingerprint}: unreadable.*--restart") as error:
        Journal(str(folder), {"model": "m"})
    assert "\n" not in str(error.value) and fingerprint.read_text() == '{"model": '
    fingerprint.unlink()
    fingerprint.mkdir()  # there, but no file can be read from it: an OSError that is not "not found"
    with pytest.raises(JournalUnreadable, match="fingerprint.json: unreadable"):
        Journal(str(folder), {"model": "m"})
    fingerprint.rmdir()
    assert Journal(str(folder), {"model": "m"}, restart=True).entries == set()


def test_only_not_found_means_no_entry(tmp_path):
    assert read_json(str(tmp_path / "absent.json")) is None
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(Unreadable):
        read_json(str(tmp_path / "folder.json"))


def test_the_demo_on_an_output_whose_fingerprint_is_cut_short_says_so_in_one_line(tmp_path):
    from click.testing import CliRunner

    from sapray.cli import main

    (tmp_path / "journal").mkdir()
    (tmp_path / "journal" / "fingerprint.json").write_text('{"model": "smol')
    done = CliRunner().invoke(main, ["demo", "--output", str(tmp_path)])
    assert done.exit_code == 1 and "Traceback" not in done.output
    assert done.output.strip().splitlines()[-1].startswith(f"Error: {tmp_path}/journal/fingerprint.json: unreadable")
    assert "--restart" in done.output


def test_on_s3_a_missing_entry_is_no_entry_and_a_cut_short_fingerprint_an_error(s3_env):
    from conftest import BUCKET

    from sapray.storage import child, write_text

    folder = f"s3://{BUCKET}/journal-test"
    assert read_json(child(folder, "absent.json")) is None
    Journal(folder, {"model": "m"}).put("round-0001", {"scored": [1]})
    assert Journal(folder, {"model": "m"}).get("round-0001") == {"scored": [1]}
    write_text(child(folder, "fingerprint.json"), '{"model"')
    with pytest.raises(JournalUnreadable, match="fingerprint.json: unreadable.*--restart"):
        Journal(folder, {"model": "m"})


def test_rows_are_journaled_in_entries_of_journal_rows_and_merged_into_one_file_when_the_pass_ends(tmp_path):
    folder = tmp_path / "j"
    writer = RowJournalWriter(str(folder), "sums-score", 1000)
    for start in range(0, 2_500, 32):  # batches of 32, as the engine actors send them, in any order
        orders = list(range(start, min(start + 32, 2_500)))[::-1]
        writer.add(pa.table({"reject": [""] * len(orders), "sum_0": [-o / 10 for o in orders], "order": orders}))
    assert sorted(pq.read_metadata(p).num_rows for p in folder.glob("sums-score-*.parquet")) == [1000, 1000]
    writer.close()
    assert [p.name for p in folder.iterdir()] == ["sums-score.parquet"]
    table = RowJournal(str(folder), "sums-score").load()
    assert table.column("order").to_pylist() == list(range(2_500))
    assert table.column("sum_0").to_pylist() == [-o / 10 for o in range(2_500)]


def test_a_rerun_takes_journaled_rows_by_order_and_an_unreadable_entry_is_computed_again(tmp_path, capsys):
    journal = RowJournal(str(tmp_path / "j"), "sums-score")
    journal.write(pa.table({"sum_0": [-1.0, -2.0], "order": [7, 3]}))
    journal.write(pa.table({"sum_0": [-2.0], "order": [3]}))  # a retried batch: journaled twice
    journal.write(pa.table({"sum_0": [-9.0], "order": [9]}))
    cut = max((tmp_path / "j").glob("*.parquet"), key=lambda p: p.stat().st_size)
    cut.write_bytes(cut.read_bytes()[:30])
    table = journal.load()
    assert "computing its rows again" in capsys.readouterr().err
    found, rows = Journaled(table).find(np.array([9, 3, 4, 7]))
    kept = {3: -2.0, 7: -1.0, 9: -9.0}
    assert set(table.column("order").to_pylist()) < set(kept)  # the cut entry's rows are not journaled
    assert found.tolist() == [o in table.column("order").to_pylist() for o in (9, 3, 4, 7)]
    assert rows.column("sum_0").to_pylist() == [kept[o] for o, f in zip((9, 3, 4, 7), found, strict=True) if f]


def test_the_encoder_does_not_tokenize_rows_the_journal_holds(smollm2_path):
    from sapray.dataplane.stages import EncodeRequests

    encode = EncodeRequests("smollm2", None, "sim", {}, lambda row: [("", row["response"])], 1, "joint", "error",
                            skip=np.array([1]))
    out = encode(pa.table({"order": [0, 1], "response": ["two", "three"], "reject": ["", ""],
                           "reject_stage": ["", ""]}))
    lengths = [len(ids) for ids in out.column("continuation_ids_0").to_pylist()]
    assert lengths[0] > 0 and lengths[1] == 0


def test_the_answering_actor_takes_journaled_answers_by_order_and_journals_only_new_ones(smollm2_path, ray_local,
                                                                                       tmp_path):
    import ray

    from sapray.dataplane.actors import GenerateActor
    from sapray.dataplane.consistency import ZeroShotPrompts
    from sapray.engines.base import EngineSpec

    prompts = ZeroShotPrompts("smollm2", None, skip=pa.table({"order": [1]}))(
        pa.table({"order": [0, 1, 2], "question": ["one?", "two?", "three?"]}))
    assert [len(p) > 0 for p in prompts.column("prompt_ids").to_pylist()] == [True, False, True]
    journaled = pa.table({"texts": [["journaled"]], "prompt_tokens": [5], "completion_tokens": [1],
                          "finish_reasons": [["stop"]], "error": [""], "order": [1]})
    folder = str(tmp_path / "j")
    writer = ray.remote(num_cpus=0)(RowJournalWriter).remote(folder, "answers", 1000)
    actor = GenerateActor(EngineSpec("sim", "smollm2", None, {}), {"max_tokens": 8, "seed": 0},
                          journaled=ray.put(journaled), writer=writer)
    out = actor({"order": np.array([0, 1, 2]), "prompt_ids": np.array(prompts.column("prompt_ids").to_pylist(),
                                                                       dtype=object)})
    assert out["texts"][1] == ["journaled"] and out["prompt_tokens"][1] == 5
    assert all(t != ["journaled"] for i, t in enumerate(out["texts"]) if i != 1)
    ray.get(writer.close.remote())
    new = RowJournal(folder, "answers").load()
    assert new.column("order").to_pylist() == [0, 2] and new.column("texts").to_pylist() == [out["texts"][0],
                                                                                              out["texts"][2]]
