# Two commands on a fresh machine, each doing its own set-up (a venv in .venv with the CPU
# build of torch from requirements-cpu.txt; GPU users run `tox -e gpu` with their own torch):
#   make bench   run the benchmark suite and compare against this device's committed baselines
#   make test    run everything but the growth check at every flavor and the deep checks
#                (-m "not growth_all and not deep"), in two phases as tox -e gpu does: all but the
#                timed tests on two pytest-xdist workers (one per core), then the timed ones alone:
#                the suite's checks and its self-tests (what CI runs, within its 20 minutes),
#                in a random order (pytest-randomly; rerun one with -p randomly --randomly-seed=N)
#   make gpu-check OUT=DIR   on a GPU machine: scripts/gpu-check DIR
VENV ?= .venv
PY := $(VENV)/bin/python
# pytest-randomly's seed: "default" is a new one each run (printed in the header); .ci/run pins
# one whose order has passed, so that a landing run is reproducible.
RANDOMLY_SEED ?= default

.PHONY: bench test gpu-check
bench: $(VENV)/.installed
	$(VENV)/bin/pytest bench/ --benchmark-compare

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest --slow -m "not growth_all and not deep and not timing" -n 2 -p randomly --randomly-seed=$(RANDOMLY_SEED) --durations=40
	$(VENV)/bin/pytest --slow -m "timing and not growth_all and not deep" -p randomly --randomly-seed=$(RANDOMLY_SEED) --durations=10

# On a GPU machine with its own CUDA torch (no venv): the one-shot GPU check into $(OUT).
OUT ?= gpu-check-out
gpu-check:
	scripts/gpu-check $(OUT)

$(VENV)/.installed: requirements-cpu.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-cpu.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@
