# The two commands of the README: `make run` and `make test` (each sets up first if needed).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mmfed-installed

# Flower state stays inside the project; no telemetry, no update checks, no runtime installs.
export FLWR_HOME := $(CURDIR)/.flwr
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup run run-plain flwr-run test test-fast bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: torch 2.14.1 + torchvision 0.29.1 is the pair whose torchvision imports here
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# private and secure: public pretraining (cached), DP at every site (ε ≤ 3), SecAgg+, then the ledgers' audit
run: setup
	$(BIN)/mmfed simulate --config simulations/digits-av.toml

# the same federation without privacy (no DP, no SecAgg+, random initial weights), for comparison
run-plain: setup
	$(BIN)/mmfed simulate --config simulations/digits-av-plain.toml

# the same apps under Flower's own launcher; `flwr run` leaves a local SuperLink behind: stop it
flwr-run: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/flwr run . --stream; status=$$?; pkill -f '[f]lower-superlink .*--port 39091'; exit $$status

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

bench: setup
	$(BIN)/python benchmarks/run_all.py

lint: setup
	$(BIN)/ruff check mmfed server client tests benchmarks deploy

clean:
	rm -rf $(VENV) .flwr .pytest_cache
