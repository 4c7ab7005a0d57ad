# The two commands: `make demo` runs the notebooks on the toy world and writes
# HTML to build/; `make test` runs the whole test suite. Both create .venv when missing.
# While working: `make test-fast` (unit tests and doctests: no notebooks, browser or subprocesses).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.puretools-installed

.PHONY: install test test-fast demo lint clean chromium

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: $(STAMP) chromium
	$(PY) -m pytest

FAST := not slow and not notebook and not browser and not subprocess and not distributed and not benchmark
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "$(FAST)"

# The browser test drives JupyterLab in Debian's Chromium (Playwright never downloads a browser).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; }; }

# The demo never downloads: notebook 07 runs in smoke mode (random weights, generated images).
# It records each notebook's wall time in build/notebook_times.json (python docs/time_notebooks.py
# then makes them the stated runtimes: docs/notebook_times.json, the README and the notebooks' headers).
demo: $(STAMP)
	PURETOOLS_SMOKE=1 HF_HUB_OFFLINE=1 $(PY) -m puretools demo --out build

lint: $(STAMP)
	$(PY) -m ruff check puretools tests benchmarks

clean:
	rm -rf build .pytest_cache
