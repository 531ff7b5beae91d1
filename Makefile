# Two entry points for a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
TEST_STAMP := $(VENV)/.test-stamp
DATA ?= data
RUNS ?= runs

.PHONY: setup demo test test-all docs benchmark methods gpu-check clean

# Set-up is idempotent: the stamp is only rebuilt when the requirements change.
$(STAMP): pyproject.toml requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# The optional packages the tests exercise (faiss search, ONNX export and its onnxruntime check, h5py for CUHK03).
$(TEST_STAMP): $(STAMP) requirements-test.txt
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $(TEST_STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m spcl demo --data-root $(DATA) --output $(RUNS)/demo

test: $(TEST_STAMP)
	$(PY) -m pytest -q

test-all: $(TEST_STAMP)
	$(PY) -m pytest -q -m ""

# The documentation site (docs/ -> site/); --strict: a broken link, anchor or API reference fails.
DOCS_STAMP := $(VENV)/.docs-stamp
$(DOCS_STAMP): $(STAMP) requirements-docs.txt
	$(PY) -m pip install --quiet -r requirements-docs.txt
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

benchmark: $(STAMP)
	$(PY) -m spcl demo --data-root $(DATA) --output $(RUNS)/benchmark --seeds 0 1 2 --ablations

# The prepared check of a lent GPU machine, with the PyTorch installed there (this project's
# virtual environment when it exists, else $(PYTHON)); without CUDA it runs at tiny sizes.
GPU_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	$(GPU_PY) -c "import spcl" 2>/dev/null || $(GPU_PY) -m pip install --quiet --no-deps -e .
	$(GPU_PY) bench/gpu_check.py

methods: $(STAMP)
	$(PY) -m spcl demo --data-root $(DATA) --output $(RUNS)/methods --seeds 0 1 2 --methods

clean:
	rm -rf $(VENV) $(RUNS) build dist site src/*.egg-info
