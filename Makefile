# Quick start: `make demo` and `make test`. Both create .venv and install with the tested pins.
PYTHON ?= python3
BENCH_ARGS ?=
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt
SAMPLES := sample_models/textbook_fresh.pt sample_models/textbook_dying.pt \
           sample_models/cnn_dead.pt sample_models/textbook_data.pt \
           $(foreach k,1 2 3 4 5 6,sample_models/run/epoch$(k).pt)

.PHONY: demo test lint bench samples docs clean

$(VENV)/.runtime: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(PIP) -e '.[dev]'
	touch $@

$(SAMPLES) &: sample_models/make_samples.py $(VENV)/.runtime
	$(PY) sample_models/make_samples.py

samples: $(SAMPLES)

# The README's picture (docs/images/textbook_dying.png), from the sample network that died.
docs: $(SAMPLES) $(VENV)/.dev
	$(PY) docs/make_figures.py

demo: $(SAMPLES)
	$(VENV)/bin/relu-doctor scan sample_models/textbook_dying.pt

test: $(VENV)/.dev
	$(PY) -m pytest -q

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check relu_doctor tests benchmarks sample_models docs
	$(VENV)/bin/ruff format --check relu_doctor tests benchmarks sample_models docs
	$(VENV)/bin/mypy

# `make bench BENCH_ARGS="--device cuda"` (or --quick, --only NAME, --threads 1)
bench: $(VENV)/.runtime
	$(PY) benchmarks/bench.py $(BENCH_ARGS)
	$(PY) benchmarks/monitor_bench.py
	$(PY) benchmarks/check_cost.py --threads 1
	$(PY) benchmarks/verify_cost.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(SAMPLES) sample_models/run
