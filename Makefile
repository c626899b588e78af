# `make demo` and `make test` do all set-up on a fresh machine: they create .venv and install
# the project (editable) with what it needs, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml setup.py | cksum | cut -d' ' -f1)

.PHONY: demo test bench venv clean

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m synthseg demo

# the whole suite on TensorFlow (Keras' default backend), then the backend-agnostic
# generator tests again on JAX
test: $(STAMP)
	$(PY) -m pytest -q
	KERAS_BACKEND=jax $(PY) -m pytest -q -m backends

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/generation.py

clean:
	rm -rf $(VENV) demo_output
