# The two commands: `make demo` runs the notebooks on the toy world and writes
# HTML to build/; `make test` runs the whole test suite. Both create .venv when missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.puretools-installed

.PHONY: install test demo lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) -m puretools demo --out build

lint: $(STAMP)
	$(PY) -m ruff check puretools tests benchmarks

clean:
	rm -rf build .pytest_cache
