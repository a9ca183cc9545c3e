# `make demo` and `make test` create .venv on first use, install the project, then run.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
EXTRAS  := dev,reference

export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tdabench -m threads=1 results_dir=results/demo
	$(BIN)/tdabench-leaderboard results/demo

# two pytest workers (pytest-xdist): most tests are end-to-end runs in subprocesses, one thread each
test: $(STAMP)
	$(BIN)/ruff check .
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --durations=15

# Benchmarks: ratios measured in one run each (see README, Performance), then the slow tests.
bench: $(STAMP)
	@start=$$(date +%s); set -e; export OMP_NUM_THREADS=1 TQDM_DISABLE=1; \
	$(BIN)/python benchmarks/cost_order.py; \
	$(BIN)/python benchmarks/memory_goals.py; \
	$(BIN)/python benchmarks/ground_truth_speed.py; \
	$(BIN)/python benchmarks/bif_overhead.py --devinterp; \
	$(BIN)/python benchmarks/curvature_vs_kronfluence.py --repeats 1; \
	$(BIN)/python benchmarks/curvature_vs_kronfluence.py --repeats 1 --hidden 1024; \
	$(BIN)/python benchmarks/trak_speed.py; \
	$(BIN)/python benchmarks/trak_speed.py --models 5; \
	$(BIN)/python benchmarks/pythia_cost.py; \
	$(BIN)/python benchmarks/exact_if_memory.py --solvers dense; \
	$(BIN)/python -m pytest -q -m slow -o addopts=""; \
	echo "make bench: all benchmarks in $$(( $$(date +%s) - start )) s"

clean:
	rm -rf $(VENV) .cache results/demo
