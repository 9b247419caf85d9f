# onnxprune: `make demo` compresses the bundled model, `make test` runs the test suite.
# Both create a virtual environment in .venv on first use (CPU onnxruntime, CPU torch 2.13.0).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= out

.PHONY: setup demo test test-fast bench bench-fresh bench-quick clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch is pinned: the local CPU build; any other version would pull CUDA packages.
	$(BIN)/pip install -q -e '.[cpu,torch,dev]' torch==2.13.0
	# torchvision (test-only model definitions) must not upgrade torch: no deps.
	$(BIN)/pip install -q --no-deps torchvision==0.28.0
	$(BIN)/pip install -q onnxscript
	# timm (a corpus test exports one of its CNN families): no deps, so it cannot touch torch.
	$(BIN)/pip install -q --no-deps timm
	$(BIN)/pip install -q huggingface_hub safetensors pyyaml
	touch $@

demo: setup
	mkdir -p $(OUT)
	$(BIN)/python models/demo.py --out $(OUT)

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" -p no:cacheprovider

# The benchmark suite -> docs/*.md and the index docs/BENCHMARKS.md. Timing scripts measure anew
# (about 40 min on a quiet 2-core machine); the accuracy scripts resume from their logs in docs/
# (minutes when complete; measuring every row from scratch, `make bench-fresh`: about 3 h more).
# `make bench-quick` runs reduced configurations into /tmp/onnxprune-bench-quick in minutes.
bench: setup
	$(BIN)/pip install -q --no-deps 'torch-pruning>=1.5'
	$(BIN)/python benchmarks/run_all.py

bench-fresh: setup
	$(BIN)/pip install -q --no-deps 'torch-pruning>=1.5'
	$(BIN)/python benchmarks/run_all.py --fresh

bench-quick: setup
	$(BIN)/pip install -q --no-deps 'torch-pruning>=1.5'
	$(BIN)/python benchmarks/run_all.py --quick

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .hypothesis
