# Two commands on a fresh machine: `make run` and `make test`. Everything installs into .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TESTSTAMP := $(VENV)/.installed-test

.PHONY: run test check bench-inventory bench-fanout bench-cluster bench-media soak load load-groupbuy install clean promtool chromium

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(TESTSTAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,dev,load]'
	touch $@ $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/livesale demo

# promtool (Debian's prometheus package) checks monitoring/prometheus/alerts.yml in the tests. Installed
# through apt when missing and we are root; otherwise those tests skip and say why.
promtool:
	@command -v promtool >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || { \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || \
	  { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; } || \
	  echo "promtool: apt-get install prometheus failed; the promtool tests will skip"; }

# The page tests drive Debian's chromium through Playwright for Python (a test extra); Playwright's own
# browser download is never used. Installed through apt when missing and we are root; otherwise the
# browser tests skip and say why.
chromium:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || { \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
	  { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; } || true; }
	@command -v chromium >/dev/null 2>&1 || echo "chromium: not installed (apt-get install chromium needs root); the browser tests will skip"

test: $(TESTSTAMP) promtool chromium
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

check: $(TESTSTAMP) promtool chromium
	$(BIN)/ruff check livesale live realtime commerce monitoring load tests bench
	$(BIN)/mypy livesale live realtime commerce monitoring load
	$(BIN)/lint-imports --no-cache  # the layering of docs/design.md (.importlinter)
	$(BIN)/python -m pytest -q -p no:cacheprovider -W error $(PYTEST_ARGS)

# Benchmarks need Debian's wrk as the load generator (installed through apt when missing, as root).
bench-inventory: $(TESTSTAMP)
	$(BIN)/python bench/inventory.py $(BENCH_ARGS)

bench-fanout: $(TESTSTAMP)
	$(BIN)/python bench/fanout.py $(BENCH_ARGS)

bench-cluster: $(TESTSTAMP)
	$(BIN)/python bench/cluster.py $(BENCH_ARGS)

bench-media: $(TESTSTAMP)
	$(BIN)/python bench/media.py $(BENCH_ARGS)

# Viewers, buyers, slowloris and idle connections together for a few minutes (at most 10), on loopback:
# the server's connections, RSS and file handles over time (docs/limits.md).
soak: $(TESTSTAMP)
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

load: $(TESTSTAMP)
	$(BIN)/python -m load.show $(LOAD_ARGS)

# A group-buy rush: joins, declines, double taps, closes; the verdict checks units and money (load/README.md).
load-groupbuy: $(TESTSTAMP)
	$(BIN)/python -m load.groupbuy $(LOAD_ARGS)

clean:
	rm -rf .livesale .pytest_cache build *.egg-info
