# make demo / make test work on a fresh clone: both create .venv when it is missing.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python

.PHONY: install demo test lint typecheck pytest bench clean

install: $(VENV)/.installed

# torch goes in first and on its own: an unpinned torch (pulled in by a dependency)
# would fetch a multi-GB CUDA build. Override TORCH on machines with another wheel.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[all,dev]"
	touch $@

demo: install
	$(PY) -m gradwatch demo

test: install lint typecheck pytest

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

typecheck: install
	$(VENV)/bin/mypy src

pytest: install
	$(PY) -m pytest

bench: install
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
