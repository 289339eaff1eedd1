# Every target builds .venv itself, so a fresh clone needs only `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Nothing here may reach a model hub: tests and the demo run on files the project ships or writes.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv test demo attention-demo bench bench-memory bench-summary reference-venv clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install --no-deps -r requirements-nodeps.txt -c constraints.txt
	$(BIN)/python -m pip install --no-deps --no-build-isolation -e .
	@! $(BIN)/python -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('torch') and 'mindtorch' not in str(u.find_spec('torch').origin) else 1)" \
		|| (echo "real PyTorch got installed into $(VENV); it must not be (see requirements.txt)"; exit 1)
	touch $@

# Two workers (both cores): each takes whole test files (--dist loadfile), so a file's module
# fixtures are built once. TEST_WORKERS=0 runs the suite in this one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile,)

demo: $(STAMP)
	$(BIN)/ms-gpt2 demo

attention-demo: $(STAMP)
	$(BIN)/ms-gpt2 attention-demo

# The PyTorch reference for `make bench` lives in its own interpreter, never in .venv.
# `make reference-venv` builds one (real torch is large, except where a local wheel is cached);
# or point REFERENCE_PYTHON at any python with torch + transformers==4.56.2.
REF_VENV ?= .venv-ref
REFERENCE_PYTHON ?= $(if $(wildcard $(REF_VENV)/bin/python),$(REF_VENV)/bin/python,)
BENCH_JSON ?= runs/bench/bench.json
# BENCH_ONLY=train,decode runs only those parts of the bench (ms-gpt2 bench --only; docs/performance.md)
BENCH_ONLY ?=

bench: $(STAMP)
	$(BIN)/ms-gpt2 bench --json $(BENCH_JSON) $(if $(REFERENCE_PYTHON),--reference-python $(REFERENCE_PYTHON),) \
		$(if $(BENCH_ONLY),--only $(BENCH_ONLY),)

# Training's peak memory, each workload in a fresh process, and the real `ms-gpt2 train` beside the
# reference Trainer (with the reference: about 20 min on 2 cores)
bench-memory: $(STAMP)
	$(BIN)/ms-gpt2 bench --memory --json runs/bench/memory.json $(if $(REFERENCE_PYTHON),--reference-python $(REFERENCE_PYTHON),)

# A quotable figure is a spread over at least three runs on one CPU model: `make bench
# BENCH_JSON=runs/bench/run1.json`, then run2, run3, then `make bench-summary` (every saved report).
bench-summary: $(STAMP)
	$(BIN)/ms-gpt2 bench --summarize $(sort $(wildcard runs/bench/*.json))

reference-venv:
	test -x $(REF_VENV)/bin/python || $(PYTHON) -m venv $(REF_VENV)
	$(REF_VENV)/bin/python -m pip install torch==2.13.0 transformers==4.56.2 accelerate==1.10.1 "tokenizers<0.23" "safetensors<0.8" "numpy<2"

clean:
	rm -rf $(VENV) $(REF_VENV) runs .pytest_cache
