# Set-up is two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv/ when missing and install through constraints.txt, which pins
# the CPU torch wheel so nothing pulls a CUDA build (see README for GPU installs).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench figures notebooks clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/vsink demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/ruff check .
	HF_HUB_OFFLINE=1 $(BIN)/ruff format --check .
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

figures: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/vsink figures --out figures

# Re-pair the notebooks after editing either side (.py is the reviewed source).
notebooks: $(STAMP)
	$(BIN)/jupytext --sync notebooks/[0-9][0-9]_*.py

# CPU, a few minutes: writes benchmarks/results.json and regenerates benchmarks/RESULTS.md.
# GPU: make bench BENCH_ARGS="--device cuda --dtype bfloat16"; no --quick: BENCH_ARGS=--full.
bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/run.py --quick --out benchmarks/results.json --md benchmarks/RESULTS.md $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
