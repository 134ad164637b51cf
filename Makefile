# trackmw: `make demo` runs the example site, `make test` the whole suite, `make bench`
# the benchmarks. Each creates .venv by itself on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: demo test bench wrk lint typecheck clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Reinstalled when the C speedups change: an editable install builds them in place.
$(VENV)/.installed: pyproject.toml setup.py src/trackmw/_speedups.c | $(BIN)/python
	$(BIN)/pip install -q -e ".[flask]" uvicorn
	touch $@

$(STAMP): pyproject.toml setup.py src/trackmw/_speedups.c | $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"
	touch $@ $(VENV)/.installed

# The Starlette example on http://127.0.0.1:8000, on the embedded SQLite default.
demo: $(VENV)/.installed
	$(BIN)/uvicorn app:app --app-dir examples/starlette_app --host 127.0.0.1 --port 8000

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP) wrk
	$(BIN)/python -m bench $(BENCH_ARGS)

# The wire section's load generator, Debian's wrk: installed when missing and this is a
# Debian-like machine run as root; otherwise the section says it was skipped and why.
wrk:
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing wrk (apt-get)"; \
	    apt-get update -qq && apt-get install -y -qq wrk >/dev/null; \
	  else \
	    echo "wrk is not installed (apt-get install wrk): the wire section will be skipped"; \
	  fi; }

lint: $(STAMP)
	$(BIN)/ruff check src tests examples bench

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info src/trackmw/*.so .pytest_cache .mypy_cache .ruff_cache
