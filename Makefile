# Two commands on a bare machine with Python 3.11+ and make: `make up` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev

.PHONY: install install-dev up test lint security audit bench load chaos format clean deploy-tools deploy-debian-tools deploy-check dr-drill

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml requirements.lock
	$(PIP) install --quiet -c requirements.lock -e .
	@touch $@

$(DEVSTAMP): $(STAMP)
	$(PIP) install --quiet -c requirements.lock -e '.[dev]'
	@touch $@

## install: the virtualenv with the pinned runtime dependencies (what up and test build on)
install: $(STAMP)

install-dev: $(DEVSTAMP)

## up: install, migrate and run the whole platform (embedded PostgreSQL when FEINT_DATABASE_URL is unset)
up: install
	$(BIN)/feint up

## test: every test tier this machine can run, with coverage (floor 90%)
test: install-dev
	$(BIN)/python tests/run_tiers.py

## lint: ruff and mypy --strict on src/
lint: install-dev
	$(BIN)/ruff check src tests $(wildcard bench)
	$(BIN)/ruff format --check src tests $(wildcard bench)
	$(BIN)/mypy --strict src/feint

## security: bandit static analysis of src/ (fails on any finding not skipped with a reason in pyproject.toml)
security: install-dev
	$(BIN)/bandit -q -c pyproject.toml -r src/feint

## audit: the pinned dependencies against PyPI's vulnerability data (pip-audit's source; needs PyPI)
audit: install
	$(BIN)/python tests/audit_deps.py requirements.lock

format: install-dev
	$(BIN)/ruff format src tests $(wildcard bench)
	$(BIN)/ruff check --fix src tests $(wildcard bench)

## bench: the benchmarks under bench/ (each prints its figures); bench/*/requirements.txt are
## benchmark-only dependencies (MABWiser, compared with our UCB1), installed into the venv here only
BENCHSTAMP := $(VENV)/.installed-bench
$(BENCHSTAMP): $(DEVSTAMP) bench/camouflage/requirements.txt
	$(PIP) install --quiet -r bench/camouflage/requirements.txt
	@touch $@

bench: install-dev $(BENCHSTAMP)
	@for script in bench/*/run.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

## deploy-tools: checkov and hadolint in their own virtualenv (.venv-tools; pinned in deploy/tools-requirements.txt)
TOOLS_VENV ?= .venv-tools
$(TOOLS_VENV)/.installed: deploy/tools-requirements.txt
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install --quiet -r deploy/tools-requirements.txt
	@touch $@

deploy-tools: $(TOOLS_VENV)/.installed

## deploy-debian-tools: kubectl, promtool and amtool from Debian's packages (installed when missing and root)
DEPLOY_DEBIAN_TOOLS := kubectl:kubectl promtool:prometheus amtool:prometheus-alertmanager
deploy-debian-tools:
	@missing=""; for pair in $(DEPLOY_DEBIAN_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing from Debian:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "deploy-check needs:$$missing (apt-get install$$missing, as root)"; exit 1; fi; \
	fi

## deploy-check: render and validate deploy/ offline (kubectl, promtool and amtool from Debian on PATH)
deploy-check: install-dev deploy-tools deploy-debian-tools
	$(BIN)/ruff check deploy
	$(BIN)/python -m deploy.checks

## dr-drill: fill the ledger, back up, destroy the database, restore, verify; prints RTO and the data-loss window
## (FEINT_DATABASE_URL or embedded PostgreSQL; FEINT_BACKUP_URL or a SeaweedFS started for the drill)
dr-drill: install-dev
	$(BIN)/feint backup drill
## load: the platform under a realistic mix with locust (search for the highest sustainable rate, then a soak)
LOADSTAMP := .venv-load/.installed
$(LOADSTAMP): bench/load/requirements.txt
	$(PYTHON) -m venv .venv-load
	.venv-load/bin/python -m pip install --quiet -r bench/load/requirements.txt
	@touch $@

load: install $(LOADSTAMP)
	$(BIN)/python bench/load/load.py $(LOAD_ARGS)

## chaos: faults under load (kill -9, PostgreSQL and Redis restarts, a slow lossy database link, a full backup disk); root
chaos: install
	$(BIN)/python bench/chaos/chaos.py $(CHAOS_ARGS)

## lock: re-resolve the pinned dependencies (needs the network)
lock:
	rm -rf /tmp/feint-lock && $(PYTHON) -m venv /tmp/feint-lock
	/tmp/feint-lock/bin/pip install --quiet -e '.[dev]'
	/tmp/feint-lock/bin/pip freeze --exclude-editable > requirements.lock

clean:
	rm -rf $(VENV) .venv-load load-report .coverage .coverage.* htmlcov .pytest_cache .mypy_cache .ruff_cache
