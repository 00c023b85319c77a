# make demo / make test work on a fresh clone: both create .venv when it is missing.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python

.PHONY: install demo test lint typecheck pytest bench clean chromium

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

pytest: install chromium
	$(PY) -m pytest

# The HTML report's test opens it in a real headless Chromium: install Debian's package when
# it is missing and we can (root with apt-get); otherwise that one test says why it skips.
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (for the HTML report's browser test)"; \
		apt-get install -y -q chromium >/dev/null || \
		{ apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } || \
		echo "could not install chromium: the browser test will skip"; \
	else echo "no chromium and no root apt-get: the HTML report's browser test will skip"; fi

bench: install
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
