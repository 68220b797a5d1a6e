"""Hugging Face formats, checked with the real `datasets` library: inputs it saved, the training set it loads."""

from __future__ import annotations

import json

import pytest
from conftest import load_questions

from sapray.config import Columns, GenerateConfig, RayConfig, StrategyConfig, TeacherConfig
from sapray.dataplane.read import InputError, read_questions
from sapray.jobs.generate import run_full_generation

datasets = pytest.importorskip("datasets")


def test_questions_from_save_to_disk_in_several_shards(tmp_path):
    rows = load_questions()[:12]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"), num_shards=3)
    questions, rejects = read_questions(str(tmp_path / "ds"), Columns(), need_gold=True)
    assert list(questions) == [r["question_id"] for r in rows] and not rejects
    assert questions[rows[5]["question_id"]]["gold"] == rows[5]["gold"]


def test_a_dataset_dict_names_its_splits(tmp_path):
    split = datasets.Dataset.from_list(load_questions()[:2])
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(InputError, match=r"a DatasetDict; name one split's folder, e.g. .*dd/train"):
        read_questions(str(tmp_path / "dd"), Columns(), need_gold=False)
    questions, _ = read_questions(str(tmp_path / "dd" / "test"), Columns(), need_gold=False)
    assert len(questions) == 2


def test_json_array_files_read_like_datasets_reads_them(tmp_path):
    rows = load_questions()[:3]
    (tmp_path / "q.json").write_text(json.dumps(rows, indent=2))
    questions, rejects = read_questions(str(tmp_path / "q.json"), Columns(), need_gold=True)
    assert list(questions) == [r["question_id"] for r in rows] and not rejects
    expected = datasets.load_dataset("json", data_files=str(tmp_path / "q.json"))["train"]["question_id"]
    assert list(questions) == expected


def test_training_set_loads_in_datasets_and_renders_with_the_chat_template(ray_local, tmp_path, tokenizer):
    from conftest import DATA_DIR

    strategy = StrategyConfig(name="socratic", system="You are a careful tutor.",
                              teacher=TeacherConfig(kind="file", path=str(DATA_DIR / "candidates.jsonl"),
                                                    strategy="socratic"))
    out = tmp_path / "train"
    run_full_generation(strategy, load_questions()[:5], RayConfig(), GenerateConfig(output=str(out)))
    from_jsonl = datasets.load_dataset("json", data_files=str(out / "train" / "*.jsonl"))["train"]
    from_parquet = datasets.load_dataset("parquet", data_files=str(out / "parquet" / "*.parquet"))["train"]
    assert from_jsonl.num_rows == from_parquet.num_rows == 5
    assert from_jsonl["messages"] == from_parquet["messages"]
    for row in from_jsonl:
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        assert {"strategy", "teacher", "sampling", "prompt_hash", "question_id"} <= set(row)
        # TRL's conversational format: the tokenizer's chat template takes `messages` as they are
        text = tokenizer.apply_chat_template(row["messages"], tokenize=False)
        assert row["messages"][-1]["content"].strip() in text and "You are a careful tutor." in text
