# The two commands of the README are `make run` and `make test`.
PYTHON ?= python3
export MOVIEREC_DEVICE ?= auto

.PHONY: install run test test-all lint fmt typecheck bench

install:
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[dev]"

# Everything on the embedded default (SQLite + MovieLens-100K): set up, migrate, fetch, import,
# train, serve on http://127.0.0.1:8000 .
run: install
	movierec db upgrade
	movierec data fetch movielens-100k
	movierec data import var/data/ml-100k
	movierec train --if-no-model
	movierec serve

test: install
	$(PYTHON) -m pytest -q -m "not slow"

test-all: install
	$(PYTHON) -m pytest -q

lint:
	ruff check app ml migrations tests bench
	ruff format --check app ml migrations tests bench

fmt:
	ruff check --fix app ml migrations tests bench
	ruff format app ml migrations tests bench

typecheck:
	mypy app ml tests
