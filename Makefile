# dcloop: `make run` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# torch/torchvision/torchaudio pinned together (torchaudio's ABI follows torch).
TORCH  := torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.0
ARGS   ?=

.PHONY: install system-deps run test test-fast lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

system-deps:  ## Debian's chromium: the report test renders report.html headless
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; }; }

run: install  ## the default experiment: digits, injected noise, K=5, CPU
	$(BIN)/dcloop $(ARGS)

test: install system-deps  ## the whole test suite (what CI runs)
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check dcloop tests scripts
	$(BIN)/ruff format --check dcloop tests scripts

format: install
	$(BIN)/ruff format dcloop tests scripts
	$(BIN)/ruff check --fix dcloop tests scripts

bench: install
	$(BIN)/python scripts/bench_noise.py
	$(BIN)/python scripts/bench_cl_engine.py
	$(BIN)/python scripts/bench_augment.py
	$(BIN)/python scripts/bench_augment.py --ops rotate scale elastic --out scripts/results/bench_augment_geometric
	$(BIN)/python scripts/bench_parallel_vs_sequential.py --epochs 15 --repeats 3
	$(BIN)/python scripts/bench_annotators.py
	$(BIN)/python scripts/bench_noise.py --seeds 0 1 2 --settings asym40 sym40 sym20 --methods inloop_prune --epochs 30 --out scripts/results/bench_noise_safe
	$(BIN)/python scripts/bench_real.py --jobs 2 --seeds 0 1 2 --seeds-cifar 0 1 --methods plain detect two_stage inloop inloop_dw inloop_old oracle --methods-cifar plain detect two_stage inloop inloop_old oracle  # needs ../shared/data; ~2.5 h on 2 cores

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
