# make demo / make test work on a fresh machine: each creates .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.steelseg-installed
DEMO ?= runs/demo

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,serve,export,openvino,pretrained,kaggle,tiramisu,line]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m steelseg.demo $(DEMO)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --timeout=900 tests

bench: $(STAMP)
	$(PY) bench/rle.py

clean:
	rm -rf $(VENV) runs mlruns .pytest_cache
