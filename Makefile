# `make demo` and `make test` create .venv on first use, install the project, then run.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
EXTRAS  := dev,reference,docs

export WANDB_MODE ?= offline
export WANDB_SILENT ?= true
export NO_MKDOCS_2_WARNING ?= 1

.PHONY: install demo test docs bench gpu-wheels clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

# every registered method on digits_mlp (conf/sweep/demo.yaml): the ground truth in two halves at
# once, then the methods two at a time, one torch thread each; DEMO_ARGS adds settings
DEMO := -m +sweep=demo hydra/launcher=parallel gt.num_shards=2 $(DEMO_ARGS)
demo: $(STAMP)
	$(BIN)/tdabench $(DEMO) gt.shard=0,1
	$(BIN)/tdabench $(DEMO)
	$(BIN)/tdabench-leaderboard results/demo

# the generated reference pages (registry, conf/config.yaml), then the site in strict mode (site/)
docs: $(STAMP)
	$(BIN)/python docs/generate.py
	$(BIN)/mkdocs build --strict --quiet

# two pytest workers (pytest-xdist): most tests are end-to-end runs in subprocesses, one thread each
test: $(STAMP) docs
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
	$(BIN)/python benchmarks/trainer_throughput.py; \
	$(BIN)/python benchmarks/gpu_check.py --tiny; \
	$(BIN)/python -m pytest -q -m slow -o addopts=""; \
	echo "make bench: all benchmarks in $$(( $$(date +%s) - start )) s"

# wheels of what benchmarks/gpu_check.py needs besides PyTorch, for a GPU machine without a network
# running Python GPU_PY (pip install --no-index --find-links gpu_wheels ..., see gpu_check.py)
GPU_PY ?= 3.11
gpu-wheels: $(STAMP)
	rm -rf gpu_wheels
	$(BIN)/pip wheel -q --no-deps -w gpu_wheels antlr4-python3-runtime==4.9.3
	$(BIN)/pip download -q -d gpu_wheels --find-links gpu_wheels --only-binary=:all: --python-version $(GPU_PY) \
	  --platform manylinux2014_x86_64 -r benchmarks/gpu_requirements.txt 'setuptools>=68' wheel
	du -sh gpu_wheels

clean:
	rm -rf $(VENV) .cache results/demo site gpu_wheels
