# make run  : create .venv, install faceverify, serve on SQLite at http://127.0.0.1:8000
# make test : create .venv, install with dev extras, lint, type-check and run the tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test test-container lint unit clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when pyproject.toml changes; the stamp files record what was installed.
$(VENV)/.stamp-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.stamp-dev: pyproject.toml clients/python/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e clients/python
	touch $@ $(VENV)/.stamp-run

run: $(VENV)/.stamp-run
	$(BIN)/faceverify serve

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

# One pytest worker per core (pytest-xdist): many tests wait on servers and sockets.
test: lint
	$(BIN)/pytest -n auto --dist worksteal

# The image built and run, and the compose stack (needs a container engine; minutes).
test-container: $(VENV)/.stamp-dev
	$(BIN)/pytest -m container -v

# The fast tests only (no dlib models): a few seconds.
unit: $(VENV)/.stamp-dev
	$(BIN)/pytest -m "not model"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
