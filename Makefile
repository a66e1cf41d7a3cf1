# make demo / make test work on a fresh machine: each creates .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.steelseg-installed
DEMO ?= runs/demo

.PHONY: setup demo test bench image image-torch clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,serve,export,openvino,pretrained,kaggle,tiramisu,line,ray,docs]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m steelseg.demo $(DEMO)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --timeout=900 tests

# the container image (podman, a Debian base made here with debootstrap), smoke-run on an ONNX bundle: SMOKE_BUNDLE,
# else a tiny random-init one exported here (deploy/image/smoke_bundle.py)
image: $(STAMP)
	@b="$${SMOKE_BUNDLE:-}"; if [ -z "$$b" ]; then rm -rf .image-smoke && $(PY) deploy/image/smoke_bundle.py .image-smoke >/dev/null && b=.image-smoke/onnx; fi; \
	PY=$(PY) SMOKE_BUNDLE=$$b deploy/image/make-image.sh onnx

# the torch target (PyTorch bundles too; PyTorch from PyPI brings its CUDA libraries), smoke-run on a PyTorch bundle
image-torch: $(STAMP)
	@b="$${SMOKE_BUNDLE:-}"; if [ -z "$$b" ]; then rm -rf .image-smoke && $(PY) deploy/image/smoke_bundle.py .image-smoke >/dev/null && b=.image-smoke/torch; fi; \
	PY=$(PY) SMOKE_BUNDLE=$$b deploy/image/make-image.sh torch

bench: $(STAMP)
	$(PY) bench/rle.py

clean:
	rm -rf $(VENV) runs mlruns .pytest_cache
