# Set-up is two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv/ when missing and install the exact versions in
# requirements.lock (uv, CPU torch); `make lock` regenerates it (see README).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed
# The second transformers the invariant tests run under (the lock holds the newest).
ALT_TRANSFORMERS ?= 5.23.0
ALT_VENV := .venv-alt
export HF_HUB_OFFLINE := 1

# torch comes as its CPU build: from a local wheel folder when one holds it (this
# machine's image ships /opt/wheels), else from PyTorch's CPU index.
TORCH_WHEELS ?= /opt/wheels
TORCH_SOURCE := $(if $(wildcard $(TORCH_WHEELS)/torch-2.13.0+cpu-*.whl),--find-links $(TORCH_WHEELS),--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)

.PHONY: demo test test-alt lint typecheck format bench bench-attention bench-gpu gpu-wheels figures notebooks lock canary clean

$(BIN)/uv:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv==$(UV_VERSION)

$(STAMP): requirements.lock pyproject.toml | $(BIN)/uv
	$(UV) pip install -q --python $(BIN)/python $(TORCH_SOURCE) -r requirements.lock
	$(UV) pip install -q --python $(BIN)/python --no-deps -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vsink demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory test-alt

# The version-independent invariants (KV cache == uncached loop, bridge == HF, edits
# take effect) again under a second transformers release, in a throw-away venv.
test-alt: $(STAMP)
	@rm -rf $(ALT_VENV)
	$(UV) venv -q --python $(BIN)/python $(ALT_VENV)
	echo transformers==$(ALT_TRANSFORMERS) > $(ALT_VENV)/override.txt
	$(UV) pip install -q --python $(ALT_VENV)/bin/python $(TORCH_SOURCE) -r requirements.lock --override $(ALT_VENV)/override.txt
	$(UV) pip install -q --python $(ALT_VENV)/bin/python --no-deps -e .
	$(ALT_VENV)/bin/python -m pytest -q -m invariant -p no:cacheprovider
	@rm -rf $(ALT_VENV)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Regenerate requirements.lock from pyproject.toml's ranges and constraints.txt:
# every package at the newest version those allow, pinned exactly.
lock: | $(BIN)/uv
	$(UV) pip compile -q pyproject.toml --extra dev -c constraints.txt $(TORCH_SOURCE) \
		--python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
		--custom-compile-command "make lock" -o requirements.lock

# Newest release of every dependency (ranges ignored) in a throw-away venv, then the
# invariant tests: an upstream break shows here, with the versions named, before users hit it.
canary: | $(BIN)/uv
	$(BIN)/python .ci/canary.py --uv $(UV) $(TORCH_SOURCE)

figures: $(STAMP)
	$(BIN)/vsink figures --out figures

# Re-pair the notebooks after editing either side (.py is the reviewed source).
notebooks: $(STAMP)
	$(BIN)/jupytext --sync notebooks/[0-9][0-9]_*.py

# Attention routing at real widths (CPU, ~30 min on one core): benchmarks/ATTENTION.md.
bench-attention: $(STAMP)
	$(BIN)/python benchmarks/attention.py --shapes llava7b:2,next7b:1 --threads 1 --repeats 2 --new-tokens 8

# The wheels the GPU machine lacks (needs a registry), then the GPU run (on the GPU machine).
gpu-wheels: $(STAMP)
	bash benchmarks/gpu/prepare_wheels.sh

bench-gpu:
	bash benchmarks/gpu/run.sh

# CPU, a few minutes: writes benchmarks/results.json and regenerates benchmarks/RESULTS.md.
# GPU: make bench BENCH_ARGS="--device cuda --dtype bfloat16"; no --quick: BENCH_ARGS=--full.
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py --quick --out benchmarks/results.json --md benchmarks/RESULTS.md $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(ALT_VENV) .pytest_cache .ruff_cache
