# bbp-notebooks: two commands matter, `make dev` and `make test`. See README.md.
SHELL := /bin/bash
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
PYTEST_ARGS ?=

.PHONY: help deps python-deps system-deps tools test unit dev crds crds-check chart-schema examples kind-e2e images node-e2e bench clean

help:
	@echo "make dev    - run the whole system locally (control plane, 2 emulated Slurm sites, operator, hub, proxy)"
	@echo "make test   - install what is needed and run the full suite"
	@echo "make unit   - the unit lane only: needs nothing but pip (about 30 s)"
	@echo "make bench  - the operator at scale, one table against same-run references (BENCH_ARGS=...)"
	@echo "make crds   - regenerate CRDs from the pydantic models"

# gssapi builds from source against libkrb5-dev: apt installs it first on a fresh machine.
python-deps:
	bash scripts/install-test-deps.sh --build-only
	$(PIP) install --quiet --disable-pip-version-check -e '.[test]'

system-deps: python-deps
	bash scripts/install-test-deps.sh
	PYTHON=$(PYTHON) bash scripts/install-dev-deps.sh >/dev/null

tools:
	bash scripts/build-tools.sh --node

deps: python-deps system-deps tools

crds:
	$(PYTHON) -m bbp_notebooks.api.crdgen --root .

chart-schema:
	$(PYTHON) -m bbp_notebooks.api.chartschema --root .

# examples/sites.yaml and examples/mockslurm-sites.yaml, from devtools/topology.py.
examples:
	$(PYTHON) -m bbp_notebooks.devtools.topology --root .

kind-e2e:
	bash scripts/kind-e2e.sh

# The four images with buildah (scripts/build-images.sh): from the pinned upstream base, or with
# `make images BASE=local` from a Debian base built here by debootstrap (no registry needed).
BASE ?= upstream
images:
	BASE=$(BASE) bash scripts/build-images.sh

# The chart on the real node (devtools/node.py), images built here; not yet part of `make test`.
node-e2e: deps
	$(PYTHON) -m pytest -ra -s tests/node/test_chart_on_node.py $(PYTEST_ARGS)

crds-check:
	$(PYTHON) -m bbp_notebooks.api.crdgen --root . --check

# The unit lane (see tests/conftest.py): pip's dependencies only, no apt packages, no Go builds.
unit: python-deps
	$(PYTHON) -m pytest -m unit $(PYTEST_ARGS)

# The suite, then the benchmarks in their own session (they load the stack and print numbers).
test: deps
	$(PYTHON) -m pytest -ra --ignore=tests/benchmarks $(PYTEST_ARGS)
	$(PYTHON) -m pytest -ra -s tests/benchmarks $(PYTEST_ARGS)

# Bounded by default (2,000 sessions, a burst of 1,000: about 25 min on 2 cores); the quiet
# full run at 10,000 is in README.md ("Performance").
BENCH_ARGS ?=
bench: deps
	$(PYTHON) -m bbp_notebooks.devtools.bench $(BENCH_ARGS)

# make dev KERBEROS=1: also a local KDC and a GSSAPI site on real Slurm (needs root).
dev: deps
	$(PYTHON) -m bbp_notebooks.devtools.dev $(if $(filter 1,$(KERBEROS)),--kerberos)

clean:
	rm -rf .dev build *.egg-info
