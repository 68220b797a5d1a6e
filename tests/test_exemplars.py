"""Exemplar mining and choice (METHOD.md §1 steps 1-2), on hand-made answers."""

from __future__ import annotations

import pytest

from sapray.core.exemplars import Exemplar, ExemplarShortfall, choose, mine
from sapray.dataplane.read import InputError, load_exemplar_file

POOL = [{"question_id": f"p{k}", "question": f"q{k}", "gold": f"Steps.\n#### {k + 10}"} for k in range(5)]


def test_mining_counts_correct_wrong_unparsable_and_never_trusts_a_cut_off_answer():
    answers = [
        "So the answer is 10.",               # p0 correct
        "The answer is 99.",                  # p1 wrong
        "I am not sure.",                     # p2 unparsable
        "First 12 then ... so 12",            # p3 correct by its last number, but cut off at max_tokens
        "Total: 14",                          # p4 correct
    ]
    truncated = [False, False, False, True, False]
    mined, report = mine(POOL, answers, n=2, checker_name="gsm8k", truncated=truncated)
    assert [e.source_question_id for e in mined] == ["p0", "p4"] and all(e.checked for e in mined)
    assert (report.correct, report.wrong, report.unparsable, report.truncated) == (2, 1, 2, 1)
    assert report.filled_unchecked == 0


def test_shortfall_fills_with_complete_answers_before_cut_off_ones_or_stops():
    answers = ["12 is it", "The answer is 99.", "nothing", "The answer is 1", "Total: 14"]
    truncated = [True, False, False, False, False]
    mined, report = mine(POOL, answers, n=4, checker_name="gsm8k", truncated=truncated)
    assert [(e.source_question_id, e.checked) for e in mined] == [("p4", True), ("p1", False), ("p2", False),
                                                                  ("p3", False)]
    assert report.filled_unchecked == 3
    with pytest.raises(ExemplarShortfall, match="only 1 of 5 pool answers passed the gsm8k checker; 4 needed"):
        mine(POOL, answers, n=4, checker_name="gsm8k", shortfall="error", truncated=truncated)
    with pytest.raises(ExemplarShortfall, match="only 4 usable answers; 6 needed"):
        mine(POOL, answers[:4] + [" "], n=6, checker_name="gsm8k")


def test_choice_is_the_next_n_wrapping_and_skips_the_question_itself():
    pool = [Exemplar(f"e{k}", f"text {k}", f"p{k}", True) for k in range(4)]
    assert [e.exemplar_id for e in choose(pool, 2, "other", 3)] == ["e3", "e0", "e1"]
    assert [e.exemplar_id for e in choose(pool, 2, "p0", 3)] == ["e3", "e1", "e2"]
    with pytest.raises(ExemplarShortfall):
        choose(pool[:2], 0, "p0", 2)


def test_an_exemplar_file_row_without_text_is_an_input_error(tmp_path):
    path = tmp_path / "ex.jsonl"
    path.write_text('{"text": "fine"}\n{"exemplar_id": "x"}\n')
    with pytest.raises(InputError, match=r"ex\.jsonl:2: an exemplar row needs a non-empty string 'text'"):
        load_exemplar_file(str(path))
