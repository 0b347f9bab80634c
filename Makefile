# mcp-raspi: build, run, test and measure.
#
#   make run     the server on 127.0.0.1:8000 with the development config (simulated
#                hardware, no authentication, state under ~/.local/state/mcp-raspi)
#   make test    formatting, lints, Rust unit and integration tests, and the suite driven
#                by the official MCP Python SDK
#   make bench   memory and latency figures, written to BENCHMARKS.md
#   make docs    regenerate docs/TOOLS.md from the tool declarations

SHELL := /bin/bash
CARGO ?= cargo
PYTHON ?= python3
VENV := .venv
DEV_LISTEN ?= 127.0.0.1:8000
# The server refuses to run as root; as root, `make run` starts it as this user.
RUN_AS_UID ?= 65534

.PHONY: all build release run test reachable lint unit pytest conformance venv bench docs clean

all: build

build:
	$(CARGO) build --bins

release:
	$(CARGO) build --release --bins

run: build
	@set -e; as_user=""; \
	if [ "$$(id -u)" = 0 ]; then \
	  home=$${TMPDIR:-/tmp}/mcp-raspi-dev; mkdir -p "$$home"; chown $(RUN_AS_UID) "$$home"; \
	  echo "make run: running as root; starting the agent and server as uid $(RUN_AS_UID) (they refuse root), state in $$home"; \
	  as_user="setpriv --reuid=$(RUN_AS_UID) --regid=$(RUN_AS_UID) --clear-groups env XDG_STATE_HOME=$$home"; \
	fi; \
	$$as_user target/debug/raspi-ops-agent --dev & agent=$$!; \
	trap 'kill $$agent 2>/dev/null' EXIT INT TERM; \
	$$as_user target/debug/mcp-raspi-server --dev --listen $(DEV_LISTEN)

test: reachable lint unit pytest conformance

# As root, the tests start the daemons as uid $(RUN_AS_UID): it must reach the checkout.
reachable:
	@if [ "$$(id -u)" = 0 ] && ! setpriv --reuid=$(RUN_AS_UID) --regid=$(RUN_AS_UID) --clear-groups test -x "$(CURDIR)"; then \
	  echo "uid $(RUN_AS_UID) cannot reach $(CURDIR): the tests run the daemons as that user."; \
	  echo "Clone the repository under a directory others may traverse, or run: chmod o+x on each directory above it."; \
	  exit 1; \
	fi

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

unit:
	$(CARGO) test

$(VENV)/.installed: tests/python/requirements.txt
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  echo "installing python3-venv"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv; fi; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
	touch $@

venv: $(VENV)/.installed

pytest: venv build
	MCP_RASPI_SERVER_BIN=$(CURDIR)/target/debug/mcp-raspi-server $(VENV)/bin/python -m pytest -q tests/python

# The official MCP conformance suite (npm @modelcontextprotocol/conformance, installed
# with a Node 22 binary into tests/conformance/node_modules on first use).
conformance: build
	MCP_RASPI_SERVER_BIN=$(CURDIR)/target/debug/mcp-raspi-server RUN_AS_UID=$(RUN_AS_UID) tests/conformance/run.sh

bench: release
	$(PYTHON) bench/run.py --server target/release/mcp-raspi-server --agent target/release/raspi-ops-agent --out BENCHMARKS.md

docs:
	MCP_RASPI_UPDATE_DOCS=1 $(CARGO) test --lib tools::docs

clean:
	$(CARGO) clean
	rm -rf $(VENV)
