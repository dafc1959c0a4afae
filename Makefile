# Two commands for a fresh machine (README):
#   make demo   -> venv + pinned install, then the main job on the embedded default
#   make test   -> venv + pinned install, then the test suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
TEST_ENV := RAY_USAGE_STATS_ENABLED=0 OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu

.PHONY: install demo test bench lint

install: $(VENV)/.installed

# torch first and pinned: the CPU wheel (an unpinned torch pulls a multi-GB CUDA build).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip==25.3
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: install
	$(TEST_ENV) $(BIN)/worldclip demo

test: install
	$(TEST_ENV) $(BIN)/pytest -q -ra --durations=20

bench: install
	for b in bench/bench_*.py; do $(TEST_ENV) $(BIN)/python $$b || exit 1; done

lint: install
	$(BIN)/ruff check .
