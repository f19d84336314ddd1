# One venv, created on demand; every target works on a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

.PHONY: install test test-fast quickstart bench
install: $(VENV)/.installed

test: install            ## every test, slow integration tests included (what CI runs)
	$(PY) -m pytest -q

test-fast: install       ## unit tests only
	$(PY) -m pytest -q -m "not slow"

quickstart: install      ## the offline quickstart study: local Ray, local MLflow store
	$(VENV)/bin/akd-ray tune studies/quickstart.yaml
