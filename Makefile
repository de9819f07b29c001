# make run  : create .venv, install faceverify, serve on SQLite at http://127.0.0.1:8000
# make test : create .venv, install with dev extras, lint, type-check and run the tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test test-slow test-container lint unit clean lock licenses

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Every package comes from the lock (requirements/*.txt, `make lock`), each file checked
# against its sha256 (--require-hashes); then faceverify itself from this checkout, built
# with the locked setuptools. pip check fails if the lock misses a dependency.
# Reinstall when the lock or a pyproject changes; the stamp files record what was installed.
$(VENV)/.stamp-run: requirements/run.txt pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements/run.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	$(BIN)/python tools/compile_run.py
	touch $@

# --no-compile: the tests import a fraction of the dev tools' modules, and Python compiles
# those on first import; compiling all of them at install took 16 of its 50 s. What the
# server imports is compiled (tools/compile_run.py, ~1 s): with PYTHONDONTWRITEBYTECODE
# set, every start compiled it again (~0.3 s of start-up).
$(VENV)/.stamp-dev: requirements/dev.txt pyproject.toml clients/python/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --no-compile --require-hashes --no-deps -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e . -e clients/python
	$(BIN)/python -m pip check
	$(BIN)/python tools/compile_run.py
	touch $@ $(VENV)/.stamp-run

# Re-lock after changing a dependency in pyproject.toml (tests/test_lock.py fails until
# you do): keeps every pin that still fits. UPGRADE=1 takes the newest releases instead.
lock: $(VENV)/.stamp-dev
	$(BIN)/python tools/lock.py $(if $(UPGRADE),--upgrade)
	$(BIN)/python -m pip install --quiet --no-compile --require-hashes --no-deps -r requirements/dev.txt
	$(BIN)/python tools/licenses.py

# docs/LICENSES.md from the installed lock (tests/test_lock.py checks it is current).
licenses: $(VENV)/.stamp-dev
	$(BIN)/python tools/licenses.py

run: $(VENV)/.stamp-run
	@$(BIN)/python tools/compile_run.py  # faceverify's own sources, when changed since
	$(BIN)/faceverify serve

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

# One pytest worker per core (pytest-xdist): many tests wait on servers and sockets.
test: lint
	$(BIN)/pytest -n auto --dist worksteal

# The tests of about 10 s or more each (load, kill -9, generated requests, several
# servers, the browser); CI runs them after make test.
test-slow: $(VENV)/.stamp-dev
	$(BIN)/pytest -m slow -n auto --dist worksteal

# The image built and run, and the compose stack (needs a container engine; minutes).
test-container: $(VENV)/.stamp-dev
	$(BIN)/pytest -m container -v

# The fast tests only (no dlib models): a few seconds.
unit: $(VENV)/.stamp-dev
	$(BIN)/pytest -m "not model"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
