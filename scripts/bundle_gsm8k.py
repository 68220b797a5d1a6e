"""Copy the GSM8K subset that sapray ships from ../shared/data/gsm8k (MIT licence).

Run from the repository root: python scripts/bundle_gsm8k.py [--source DIR]
Writes sapray/data/gsm8k/{questions,candidates,pool,valid}.jsonl and the licence, and
tests/data/gsm8k_first20/ with the first 20 test questions and their six strategies.
With ``--train-pool FILE`` it writes only FILE: all 7,473 training questions as a ``sapray mine`` pool.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from sapray.dataplane.gsm8k import load_six_strategies, train_questions

N_QUESTIONS = 200
N_POOL = 400
N_VALID = 10


def write_jsonl(path: Path, rows: list[dict], ensure_ascii: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=ensure_ascii) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", default="../shared/data/gsm8k")
    parser.add_argument("--train-pool", type=Path, help="write only this: every training question, as a mining pool")
    args = parser.parse_args()
    source = Path(args.source)
    if args.train_pool:
        # escaped: one training question holds a raw U+2028, which str.splitlines() would break the row at
        write_jsonl(args.train_pool, train_questions(source), ensure_ascii=True)
        return
    questions, candidates = load_six_strategies(source)
    pool_rows = train_questions(source)[:N_POOL]
    out = Path("sapray/data/gsm8k")
    keep = {q["question_id"] for q in questions[:N_QUESTIONS]}
    write_jsonl(out / "questions.jsonl", questions[:N_QUESTIONS])
    write_jsonl(out / "candidates.jsonl", [c for c in candidates if c["question_id"] in keep])
    write_jsonl(out / "pool.jsonl", pool_rows)
    # A small labeled valid set for DS weight (METHOD.md §4): train questions after the pool.
    train = [json.loads(line) for line in (source / "train.jsonl").open()]
    write_jsonl(out / "valid.jsonl", [
        {"question_id": f"train-{i:04d}", "question": r["question"], "answer": r["answer"]}
        for i, r in enumerate(train[N_POOL:N_POOL + N_VALID], start=N_POOL)])
    shutil.copy(source / "LICENSE", out / "LICENSE")
    first20 = {q["question_id"] for q in questions[:20]}
    test_out = Path("tests/data/gsm8k_first20")
    write_jsonl(test_out / "questions.jsonl", questions[:20])
    write_jsonl(test_out / "candidates.jsonl", [c for c in candidates if c["question_id"] in first20])
    shutil.copy(source / "LICENSE", test_out / "LICENSE")


if __name__ == "__main__":
    main()
