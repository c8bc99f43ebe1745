# `make demo` and `make test` create the virtual environment on first use.
# torch is installed first, pinned by TORCH_SPEC (default: the CPU wheel this project's machines
# carry), so pip does not pull a multi-GB CUDA build; override it, e.g. `make test TORCH_SPEC=torch`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m lrnn demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) -m lrnn bench ops

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
