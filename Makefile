# All set-up happens here: a fresh machine with Python 3.11 needs only `make demo` or `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo train test lint browser bench clean

$(BIN)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "need python3.11 on PATH (or set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned to the CPU wheel: a bare 'torch' would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# The main job: train the built-in tasks under every defence, attack each pipeline, write runs/audit/report.html.
demo: $(BIN)/.installed
	$(BIN)/fedshield audit --out runs/audit

train: $(BIN)/.installed
	$(BIN)/fedshield run --out runs/demo

# Headless Chromium renders report.html in the tests (Debian package; skipped with a message where unavailable).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    { apt-get install -y -qq chromium >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }; }; } || \
	  echo "chromium is not installed: the report-rendering test will be skipped"

lint: $(BIN)/.installed
	$(BIN)/ruff check fl secagg dp attacks tests benchmarks examples
	$(BIN)/mypy fl secagg dp attacks

test: $(BIN)/.installed lint browser
	$(BIN)/python -m pytest -n 2 -p no:cacheprovider

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/bench_core.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
