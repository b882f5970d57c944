# make demo : create .venv if missing, install medvl, train + evaluate the default tiny experiment
# make test : create .venv if missing, install medvl, run the whole test suite (CI runs this)
# make browser : install Debian's chromium and chromium-driver when missing (tests/test_html_report.py; as root)
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.medvl-installed
DEMO    ?= outputs/demo

.PHONY: install demo test test-fast bench browser clean

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

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) browser
	$(BIN)/python -m pytest -q -m "not slow"

# The report's browser test drives the system's Chromium through chromedriver (Selenium, in the dev extra).
# `make test` installs them when missing (as root); MEDVL_SKIP_BROWSER=1 skips that and the browser tests.
browser:
	@if [ -n "$$MEDVL_SKIP_BROWSER" ] || { command -v chromium && command -v chromedriver; } >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else echo "make test needs Chromium for the HTML report's browser test: run 'sudo make browser' once, or MEDVL_SKIP_BROWSER=1 make test"; exit 1; fi

bench: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) outputs/demo
