# All set-up happens here: a fresh machine with Python 3.11 needs only `make demo` or `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "need python3.11 on PATH (or set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned to the CPU wheel: a bare 'torch' would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/fedshield run --out runs/demo

lint: $(BIN)/.installed
	$(BIN)/ruff check fl secagg dp attacks tests benchmarks examples
	$(BIN)/mypy fl secagg dp attacks

test: $(BIN)/.installed lint
	$(BIN)/python -m pytest -n 2 -p no:cacheprovider

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/bench_core.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
