# make demo : create .venv if missing, install medvl, train + evaluate the default tiny experiment
# make test : create .venv if missing, install medvl, run the whole test suite (CI runs this)
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.medvl-installed
DEMO    ?= outputs/demo

.PHONY: install demo test test-fast bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Reinstall only when the dependency list changes; torch/torchvision come from local disk here.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO)
	$(BIN)/python -m medvl.train hydra.run.dir=$(DEMO)/train
	$(BIN)/python -m medvl.eval +ckpt=$(DEMO)/train compare_base=true hydra.run.dir=$(DEMO)/eval

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) outputs/demo
