# `make run` and `make test` work on a bare machine with python3 and make:
# each creates .venv from the pinned requirements on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test bench clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-cache-dir -r requirements-dev.txt
	touch $(STAMP)

run: $(STAMP)
	$(PY) entrypoint.py

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m bench.loader_bench

clean:
	rm -rf $(VENV) .cache output .pytest_cache
