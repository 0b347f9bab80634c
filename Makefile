# mcp-raspi: build, run, test and measure.
#
#   make run     the server on 127.0.0.1:8000 with the development config (simulated
#                hardware, no authentication, state under ~/.local/state/mcp-raspi)
#   make test    every stage below (TEST_STAGES), printing how long each took: formatting
#                and lints, Rust unit and integration tests, the Prometheus and Grafana
#                examples, the suite driven by the official MCP Python SDK, the MCP
#                conformance suite, and the package proof (root)
#   make bench   memory and latency figures, those of a self-update into the package of
#                this build, hostile load and a soak (bench/hostile.py), and the cost of
#                checking tokens (bench/identity.py) and the metrics history
#                (bench/metrics.py), written to BENCHMARKS.md
#   make docs    regenerate docs/TOOLS.md from the tool declarations
#   make fuzz    each fuzz target for FUZZ_SECONDS (not part of `make test`)
#   make fleet-proof  mcp-fleet over FLEET_DEVICES simulated Pis on loopback
#                (bench/fleet.py, not part of `make test`), written to BENCHMARKS.md

SHELL := /bin/bash
CARGO ?= cargo
PYTHON ?= python3
VENV := .venv
DEV_LISTEN ?= 127.0.0.1:8000
# The server refuses to run as root; as root, `make run` starts it as this user.
RUN_AS_UID ?= 65534

.PHONY: all build release run test reachable lint unit prometheus-examples pytest conformance venv bench bench-delta fleet-proof docs fuzz cargo-fuzz clean

all: build

build:
	$(CARGO) build --bins

release:
	$(CARGO) build --release --bins

# Ctrl-C reaches both daemons (one process group), which stop cleanly and exit 0; the
# recipe then exits with the server's status, not with that of its clean-up.
run: build
	@set -e; as_user=""; \
	if [ "$$(id -u)" = 0 ]; then \
	  home=$${TMPDIR:-/tmp}/mcp-raspi-dev; mkdir -p "$$home"; chown $(RUN_AS_UID) "$$home"; \
	  echo "make run: running as root; starting the agent and server as uid $(RUN_AS_UID) (they refuse root), state in $$home"; \
	  as_user="setpriv --reuid=$(RUN_AS_UID) --regid=$(RUN_AS_UID) --clear-groups env XDG_STATE_HOME=$$home"; \
	fi; \
	$$as_user target/debug/raspi-ops-agent --dev & agent=$$!; \
	trap 'kill $$agent 2>/dev/null || true' EXIT; \
	status=0; $$as_user target/debug/mcp-raspi-server --dev --listen $(DEV_LISTEN) || status=$$?; \
	wait $$agent 2>/dev/null || true; exit $$status

TEST_STAGES := reachable lint unit prometheus-examples pytest conformance test-package

test:
	@total=$$(date +%s); times=""; \
	for stage in $(TEST_STAGES); do \
	  start=$$(date +%s); \
	  $(MAKE) --no-print-directory $$stage; status=$$?; \
	  took=$$(( $$(date +%s) - start )); \
	  times="$$times$$(printf '  %-14s %5d s' $$stage $$took)\n"; \
	  if [ $$status != 0 ]; then printf "make test: $$stage failed\n$$times"; exit $$status; fi; \
	done; \
	printf "make test: passed\n$$times  %-14s %5d s\n" total $$(( $$(date +%s) - total ))

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

# promtool (Debian's prometheus package): tests/prometheus.rs checks the /metrics page with it.
unit:
	@packaging/need.sh prometheus
	$(CARGO) test

# The Prometheus and Grafana examples the package ships (packaging/prometheus/check.sh):
# promtool checks the scrape configuration and the alerting rules and runs the rules' unit
# tests, and every metric and label the rules and dashboards use must be one the server
# exports (packaging/prometheus/metric-names.txt). promtool comes with Debian's prometheus
# package.
prometheus-examples:
	@packaging/need.sh prometheus python3-yaml
	packaging/prometheus/check.sh

$(VENV)/.installed: tests/python/requirements.txt
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  echo "installing python3-venv"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv; fi; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
	touch $@

venv: $(VENV)/.installed

# curl: the README's first five minutes, which tests/python/test_readme.py runs as pasted.
# Node.js and the official TypeScript SDK (which the conformance suite brings) drive one test.
pytest: venv build
	@packaging/need.sh curl
	@node=$$(CONFORMANCE_INSTALL_ONLY=1 tests/conformance/run.sh) && \
	MCP_RASPI_NODE=$$node MCP_RASPI_SERVER_BIN=$(CURDIR)/target/debug/mcp-raspi-server $(VENV)/bin/python -m pytest -q tests/python

# The official MCP conformance suite (npm @modelcontextprotocol/conformance, installed
# with a Node 22 binary into tests/conformance/node_modules on first use).
conformance: build
	MCP_RASPI_SERVER_BIN=$(CURDIR)/target/debug/mcp-raspi-server RUN_AS_UID=$(RUN_AS_UID) tests/conformance/run.sh

# The update scenario installs the package of this machine's architecture (make deb).
bench: release deb
	$(PYTHON) bench/run.py --server target/release/mcp-raspi-server --agent target/release/raspi-ops-agent \
	  --cli target/release/mcp-raspi --packages $(DEB_DIR) --out BENCHMARKS.md
	$(PYTHON) bench/hostile.py --server target/release/mcp-raspi-server --agent target/release/raspi-ops-agent \
	  --out BENCHMARKS.md
	@packaging/need.sh openssl
	$(PYTHON) bench/identity.py --server target/release/mcp-raspi-server --out BENCHMARKS.md
	$(CARGO) build --release --example metrics_bench
	$(PYTHON) bench/metrics.py --example target/release/examples/metrics_bench \
	  --server target/release/mcp-raspi-server --out BENCHMARKS.md

# mcp-fleet's commands over FLEET_DEVICES devices (a server and an ops agent each), with
# some of them stopped: wall times and per-device times (bench/fleet.py); and the rolling
# update of tests/fleet_rollout.rs (batches of 10, devices 35-37 broken) and the drift and
# config deploy of tests/fleet_config.rs over as many.
FLEET_DEVICES ?= 100
fleet-proof: release
	MCP_RASPI_FLEET_DEVICES=$(FLEET_DEVICES) MCP_RASPI_FLEET_FIGURES=$(CURDIR)/target/fleet-rollout.json \
	  MCP_RASPI_FLEET_CONFIG_FIGURES=$(CURDIR)/target/fleet-config.json \
	  $(CARGO) test --release --test tests -- fleet_rollout fleet_config --nocapture
	$(PYTHON) bench/fleet.py --server target/release/mcp-raspi-server --agent target/release/raspi-ops-agent \
	  --fleet target/release/mcp-fleet --devices $(FLEET_DEVICES) --rollout target/fleet-rollout.json \
	  --config target/fleet-config.json --out BENCHMARKS.md

# Delta updates between two releases' packages for this machine (bench/delta.py), e.g.
# make bench-delta DELTA_FROM=old/mcp-raspi_0.1.0_amd64.deb DELTA_TO=target/packages/mcp-raspi_0.1.1_amd64.deb
bench-delta: release
	@test -n "$(DELTA_FROM)" -a -n "$(DELTA_TO)" || { echo "give DELTA_FROM=OLD.deb DELTA_TO=NEW.deb" >&2; exit 2; }
	$(PYTHON) bench/delta.py --cli target/release/mcp-raspi --from $(DELTA_FROM) --to $(DELTA_TO) --out BENCHMARKS.md

docs:
	MCP_RASPI_UPDATE_DOCS=1 $(CARGO) test --lib tools::docs

clean:
	$(CARGO) clean
	rm -rf $(VENV)

# Fuzzing with cargo-fuzz (libFuzzer): the targets of fuzz/fuzz_targets/ (or FUZZ_TARGETS),
# each for FUZZ_SECONDS, one after another, then a table of executions and crashes. Stable
# Rust without a sanitizer by default (a panic is what the targets find, and safe Rust needs
# no AddressSanitizer to report one); with a nightly toolchain installed,
# FUZZ_TOOLCHAIN=nightly FUZZ_SANITIZER=address adds it. Working corpora grow in
# fuzz/corpus/<target> from the seeds in fuzz/seeds/<target>, crash inputs land in
# fuzz/artifacts/<target> and the output in fuzz/logs (all ignored by git); a crash, once
# fixed, goes to fuzz/regressions/<target>/, which `cargo test` replays. An input that takes
# over FUZZ_TIMEOUT seconds, or memory over FUZZ_RSS_MB, counts as a crash.
CARGO_FUZZ_VERSION := 0.13.2
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= $(sort $(basename $(notdir $(wildcard fuzz/fuzz_targets/*.rs))))
FUZZ_TOOLCHAIN ?= stable
FUZZ_SANITIZER ?= none
FUZZ_TIMEOUT ?= 10
FUZZ_RSS_MB ?= 2048

cargo-fuzz:
	@if ! $(CARGO) fuzz --version 2>/dev/null | grep -q '^cargo-fuzz 0\.13\.'; then \
	  $(CARGO) install cargo-fuzz --version $(CARGO_FUZZ_VERSION) --locked; fi

fuzz: cargo-fuzz
	RUSTUP_TOOLCHAIN=$(FUZZ_TOOLCHAIN) $(CARGO) fuzz build --sanitizer $(FUZZ_SANITIZER)
	@mkdir -p fuzz/logs; table=""; failed=0; \
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/corpus/$$t fuzz/artifacts/$$t; touch fuzz/logs/$$t.start; start=$$(date +%s); \
	  echo "fuzz: $$t for $(FUZZ_SECONDS) s (output in fuzz/logs/$$t.log)"; \
	  RUSTUP_TOOLCHAIN=$(FUZZ_TOOLCHAIN) $(CARGO) fuzz run --sanitizer $(FUZZ_SANITIZER) $$t \
	    fuzz/corpus/$$t fuzz/seeds/$$t -- -max_total_time=$(FUZZ_SECONDS) -timeout=$(FUZZ_TIMEOUT) \
	    -rss_limit_mb=$(FUZZ_RSS_MB) -print_final_stats=1 >fuzz/logs/$$t.log 2>&1; status=$$?; \
	  took=$$(( $$(date +%s) - start )); \
	  runs=$$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' fuzz/logs/$$t.log | tail -n 1); \
	  [ -n "$$runs" ] || runs=$$(sed -n 's/^#\([0-9]*\).*DONE.*/\1/p' fuzz/logs/$$t.log | tail -n 1); \
	  crashes=$$(find fuzz/artifacts/$$t -type f -newer fuzz/logs/$$t.start \
	    \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' -o -name 'leak-*' \) | wc -l); \
	  if [ $$status != 0 ] && [ $$crashes = 0 ]; then crashes="?"; fi; \
	  if [ $$status != 0 ]; then failed=1; tail -n 30 fuzz/logs/$$t.log; fi; \
	  table="$$table$$(printf '%-18s %8s %12s %8s' $$t $$took "$${runs:-?}" $$crashes)\n"; \
	done; \
	printf "%-18s %8s %12s %8s\n$$table" target seconds executions crashes; \
	if [ $$failed != 0 ]; then echo "make fuzz: crashes above: the inputs are in fuzz/artifacts/<target>/"; fi; \
	exit $$failed

# Debian packages (cargo-deb, their payload recompressed with a 16 MiB window by
# packaging/deb-recompress.py), the fleet's signed APT repository, and the proof that the
# package installs, runs, upgrades, reinstalls, removes and purges cleanly in a booted Debian
# bookworm (tests/package/prove.py). The proof needs root (debootstrap, systemd-nspawn);
# missing build tools are installed with apt. Chroots are cached under target/package-test.
CARGO_DEB_VERSION := 3.8.0
PKG_VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -n 1)
# Not target/debian: cargo-deb deletes every other version of the package found there.
DEB_DIR := target/packages
DEBS := $(foreach arch,amd64 arm64 armhf,$(DEB_DIR)/mcp-raspi_$(PKG_VERSION)_$(arch).deb)
# The operator's workstation package (Cargo.toml's `fleet` variant), for the same three.
FLEET_DEBS := $(foreach arch,amd64 arm64 armhf,$(DEB_DIR)/mcp-fleet_$(PKG_VERSION)_$(arch).deb)
# The targets of the three packages: amd64, and Raspberry Pi OS 64-bit and 32-bit.
TRIPLES := x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf
CROSS_TOOLS := gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
APT_REPO := target/apt-repo
UPDATE_REPO := target/update-repo

.PHONY: deb deb-arm64 deb-armhf deb-fleet packages lintian apt-repo update-repo proof-releases test-package cargo-deb generated

cargo-deb:
	@if [ "$$($(CARGO) deb --version 2>/dev/null)" != "cargo-deb $(CARGO_DEB_VERSION)" ]; then \
	  $(CARGO) install cargo-deb --version $(CARGO_DEB_VERSION) --locked; fi

# Man pages and shell completions, generated from the clap definitions by the host's build.
generated:
	$(CARGO) build --bin mcp-raspi --bin mcp-fleet
	rm -rf target/generated
	target/debug/mcp-raspi man --out target/generated/man
	target/debug/mcp-raspi completions --out target/generated/completions
	target/debug/mcp-fleet man --out target/generated/fleet/man
	target/debug/mcp-fleet completions --out target/generated/fleet/completions

deb: cargo-deb generated
	@packaging/need.sh xz-utils
	$(CARGO) deb --output $(DEB_DIR)/
	packaging/deb-recompress.py $(DEB_DIR)/mcp-raspi_$(PKG_VERSION)_$$(dpkg --print-architecture).deb

deb-arm64: cargo-deb generated
	@packaging/need.sh gcc-aarch64-linux-gnu libc6-dev-arm64-cross xz-utils
	rustup target add aarch64-unknown-linux-gnu
	$(CARGO) deb --target aarch64-unknown-linux-gnu --output $(DEB_DIR)/
	packaging/deb-recompress.py $(DEB_DIR)/mcp-raspi_$(PKG_VERSION)_arm64.deb

deb-armhf: cargo-deb generated
	@packaging/need.sh gcc-arm-linux-gnueabihf libc6-dev-armhf-cross xz-utils
	rustup target add armv7-unknown-linux-gnueabihf
	$(CARGO) deb --target armv7-unknown-linux-gnueabihf --output $(DEB_DIR)/
	packaging/deb-recompress.py $(DEB_DIR)/mcp-raspi_$(PKG_VERSION)_armhf.deb

# mcp-fleet alone, for an operator's workstation of this machine's architecture.
deb-fleet: cargo-deb generated
	$(CARGO) deb --variant fleet --output $(DEB_DIR)/

# The three packages from one cargo invocation: one job server keeps both cores busy across
# the three graphs (each ends in long single-threaded LTO links), and the host's build
# scripts and proc macros are compiled once.
packages: cargo-deb generated
	@packaging/need.sh $(CROSS_TOOLS) xz-utils
	rustup target add aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf
	$(CARGO) build --release --bins $(foreach t,$(TRIPLES),--target $(t))
	$(foreach t,$(TRIPLES),$(CARGO) deb --no-build --target $(t) --output $(DEB_DIR)/ &&) true
	$(foreach t,$(TRIPLES),$(CARGO) deb --no-build --variant fleet --target $(t) --output $(DEB_DIR)/ &&) true
	packaging/deb-recompress.py $(DEBS)

lintian: packages
	@packaging/need.sh lintian
	lintian --fail-on error,warning --display-info $(DEBS) $(FLEET_DEBS)

apt-repo: packages
	@packaging/need.sh apt-utils gnupg
	rm -rf $(APT_REPO)
	packaging/apt-repo.sh $(APT_REPO) $(DEBS) $(FLEET_DEBS)

# The self-update repository (packaging/update-repo.sh): the three packages and a signed
# manifest per channel, for any static HTTP server; devices point updates.server_url at it.
update-repo: packages
	$(CARGO) build --bin mcp-raspi
	rm -rf $(UPDATE_REPO)
	packaging/update-repo.sh target/debug/mcp-raspi $(UPDATE_REPO) $(DEBS)

# The releases the package proof updates to (v2, v3 that fails its health check, v4): amd64
# packages of the working tree with the version raised, built with the development profile
# so that they reuse the dependencies the tests compiled (see tests/package/prove.py).
proof-releases: cargo-deb generated
	$(PYTHON) tests/package/prove.py releases --version $(PKG_VERSION)

# The chroots are made while the packages and the proof's releases build, in parallel: the
# chroots wait on the network, and the two cargo builds use different profiles, so they do
# not wait for each other's locks.
test-package:
	@packaging/need.sh debootstrap systemd-container qemu-user-static binutils lintian apt-utils gnupg python3-yaml $(CROSS_TOOLS)
	rustup target add aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf
	@mkdir -p target/package-test
	@set -e; start=$$(date +%s); \
	$(PYTHON) tests/package/prove.py chroots >target/package-test/chroots.log 2>&1 & chroots=$$!; \
	$(MAKE) --no-print-directory -j2 apt-repo proof-releases || { wait $$chroots; exit 1; }; \
	built=$$(date +%s); \
	wait $$chroots || { cat target/package-test/chroots.log; exit 1; }; \
	cat target/package-test/chroots.log; \
	$(PYTHON) tests/package/prove.py run --version $(PKG_VERSION) --repo $(APT_REPO) $(DEBS) $(FLEET_DEBS); \
	echo "test-package: $$(( $$(date +%s) - start )) s ($$(( built - start )) s building the packages and releases)"
