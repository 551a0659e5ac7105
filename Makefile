# Set-up and checks. `make install` then `make test` on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -c constraints.txt

.PHONY: install test test-fast test-slow test-hardware bench lint clean

install: $(BIN)/evit

$(BIN)/evit: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch first, pinned, so no later requirement can pull a CUDA build.
	$(PIP) torch==2.13.0
	$(PIP) -e '.[all,dev]'
	touch $@

# Everything this machine can run, fast suite and slow end-to-end matrix in one session, slow tests
# first (tests/conftest.py): the two workers steal each other's queued tests, so neither idles behind
# a long test at the end (two sessions in a row took 34 minutes here, over the 30 allowed). The 25
# slowest are listed, to keep an eye on that budget.
# Tests that need a GPU or macOS skip with the reason (-ra prints it).
test: install
	$(BIN)/pytest -n 2 --dist worksteal --durations=25 tests

test-fast: install
	$(BIN)/pytest -n 2 --dist worksteal -m "not slow" tests

test-slow: install
	$(BIN)/pytest -n 2 --dist worksteal -m slow tests

# The tests that need an NVIDIA GPU, a Mac or a Jetson, for whoever has one: first what was found
# here and which groups will run, then every `gpu`, `macos` and `jetson` test (missing hardware skips
# with the reason). One process (-n 0): the GPU and the Jetson clocks are not shared between workers.
test-hardware: install
	$(BIN)/python scripts/hardware_probe.py
	$(BIN)/pytest -n 0 -m "$$($(BIN)/python scripts/hardware_probe.py --markers)" tests

bench: install
	$(BIN)/python benchmarks/run.py

lint: install
	$(BIN)/ruff check evit_deploy tests benchmarks
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
