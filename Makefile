# The two commands of the README are `make run` and `make test`. Both create the project's virtual
# environment (.venv) and install into it from the lock (requirements/), so nothing else is typed.
PYTHON ?= python3
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 8000
# Where PyTorch comes from: empty = pip's configured index; e.g.
# TORCH_INDEX=https://download.pytorch.org/whl/cpu for the CPU-only build.
TORCH_INDEX ?=
# Where `make lock` reads PyTorch's dependencies from: its CPU build (see requirements/README.md).
TORCH_FIND_LINKS ?= $(if $(PIP_FIND_LINKS),$(PIP_FIND_LINKS),https://download.pytorch.org/whl/cpu/torch/)
# The lock installed by `make install` (`make upgrade-check` points it at a fresh resolution).
LOCKED ?= requirements/dev.lock
# Test processes (pytest-xdist): `make test JOBS=0` runs the suite in one process.
JOBS ?= 2

BIN := $(abspath $(VENV))/bin
PY := $(BIN)/python
export PATH := $(BIN):$(PATH)
export MOVIEREC_DEVICE ?= auto

LOCK_FLAGS = --quiet --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	--constraint requirements/torch.txt --no-emit-package torch \
	--find-links $(TORCH_FIND_LINKS) --no-header --annotation-style line \
	$(if $(UPGRADE),--upgrade)
PYTEST = $(PY) -m pytest -q -p no:cacheprovider $(if $(filter-out 0,$(JOBS)),-n $(JOBS) --dist loadgroup)

.PHONY: install run test test-all lint fmt typecheck lock upgrade-check

# The environment is rebuilt when the lock or the project's metadata changes.
$(VENV)/.installed: requirements/torch.txt $(LOCKED) pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements/torch.txt $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q --require-hashes --no-deps -r $(LOCKED)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $@

install: $(VENV)/.installed

# The lock tool alone (from the lock), so that `make lock` works while pyproject.toml names a
# package the lock does not have yet.
$(BIN)/uv:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes --no-deps -r $(LOCKED)

# Everything on the embedded default (SQLite + MovieLens-100K): set up, migrate, fetch, import,
# train, serve on http://$(HOST):$(PORT)/ (`make run PORT=8080 HOST=0.0.0.0`).
run: install
	movierec db upgrade
	movierec data fetch movielens-100k
	movierec data import var/data/ml-100k
	movierec train --if-no-model
	movierec serve --host $(HOST) --port $(PORT)

test: install
	$(PYTEST) -m "not slow"

test-all: install
	$(PYTEST)

lint: install
	ruff check app ml migrations tests bench
	ruff format --check app ml migrations tests bench

fmt: install
	ruff check --fix app ml migrations tests bench
	ruff format app ml migrations tests bench

typecheck: install
	mypy app ml tests

# Re-resolve the lock after a change to pyproject.toml, keeping the pins that still fit;
# `make lock UPGRADE=1` moves every pin to the newest release allowed.
lock: $(BIN)/uv
	uv pip compile pyproject.toml requirements/build.in --extra dev $(LOCK_FLAGS) \
		-o requirements/dev.lock
	uv pip compile pyproject.toml requirements/build.in $(LOCK_FLAGS) \
		--constraint requirements/dev.lock -o requirements/runtime.lock

# Try the newest releases on purpose: resolve them into var/upgrade-check/, install them into a
# separate environment there and run the suite with it. The committed lock is left alone.
upgrade-check: $(BIN)/uv
	mkdir -p var/upgrade-check
	uv pip compile pyproject.toml requirements/build.in --extra dev $(LOCK_FLAGS) --upgrade \
		-o var/upgrade-check/dev.lock
	$(MAKE) test VENV=var/upgrade-check/venv \
		LOCKED=var/upgrade-check/dev.lock
