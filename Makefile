# Two commands do all the set-up:  `make repro` (run the pipeline) and `make test` (run the tests).
# Both create .venv if there is none and install exactly the lock file into it first.
# `make verify` checks that a clean clone reproduces the committed dvc.lock and metrics (CI runs it).
# `make lock` regenerates requirements.lock from pyproject.toml (Python 3.11, Linux).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
PIP_VERSION := 26.3

.PHONY: repro test install lock determinism verify clean-venv

$(STAMP): $(LOCK) pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install pip==$(PIP_VERSION)
	# every package at the locked version, each file checked against its locked sha256
	$(BIN)/pip install --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $(STAMP)

install: $(STAMP)

lock:
	@test -x $(BIN)/uv || { echo "run 'make install' first (uv comes with the dev extra)"; exit 2; }
	$(BIN)/uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 \
		--python-platform linux --custom-compile-command "make lock" -o $(LOCK)

repro: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest

determinism: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/determinism.py

# a clean clone of HEAD, `dvc repro`, every output and figure against the committed dvc.lock and metrics
verify: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/reproduce.py

clean-venv:
	rm -rf $(VENV)
