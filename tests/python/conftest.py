"""Fixtures that run mcp-raspi-server for the tests driven by the official MCP Python SDK.

The server binary is not built here: `make pytest` builds it and passes its path in
MCP_RASPI_SERVER_BIN (default: target/debug/mcp-raspi-server of this repository).

The server refuses to run as root. When the tests run as root (containers, CI), it is
started as the unprivileged user 65534 ("nobody"), and every directory it writes to is
handed to that user.
"""

from __future__ import annotations

import os
import re
import secrets
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVER_BIN = Path(os.environ.get("MCP_RASPI_SERVER_BIN", REPO / "target" / "debug" / "mcp-raspi-server"))
AGENT_BIN = SERVER_BIN.with_name("raspi-ops-agent")
UNPRIVILEGED_ID = 65534
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
LISTENING = re.compile(r"^listening on (http://127\.0\.0\.1:(\d+)/mcp)$")

# Identity -> (role, environment variable holding its token).
IDENTITIES = {
    "admin": ("admin", "MCP_RASPI_ADMIN_TOKEN"),
    "viewer": ("viewer", "MCP_RASPI_VIEWER_TOKEN"),
}


class ServerPaths(NamedTuple):
    root: Path
    config: Path | None
    app_log: Path
    audit_log: Path
    state_dir: Path


class RunningServer(NamedTuple):
    url: str
    tokens: dict[str, str]  # identity -> bearer token; empty when authentication is off
    paths: ServerPaths
    pid: int


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _as_root() -> bool:
    return os.geteuid() == 0


def _private_dir(prefix: str) -> Path:
    """A fresh directory the server may write to.

    Made with tempfile rather than pytest's tmp_path: pytest's base directory is private
    to the user running the tests, and the server may run as another user.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if _as_root():
        os.chown(path, UNPRIVILEGED_ID, UNPRIVILEGED_ID)
    return path


def _child_environment(root: Path, extra: dict[str, str]) -> dict[str, str]:
    # No MCP_RASPI_* variable from the caller's environment may override the test config.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_RASPI_")}
    env.update(HOME=str(root), XDG_STATE_HOME=str(root), NO_COLOR="1")
    env.update(extra)
    return env


def _start(args: list[str], env: dict[str, str], root: Path) -> tuple[subprocess.Popen[str], str]:
    """Starts the server and returns it with the URL from its one line on stdout."""
    if not SERVER_BIN.is_file():
        pytest.fail(f"no server binary at {SERVER_BIN}; build it with `cargo build --bins` or `make build`")
    stderr = open(root / "server.stderr", "w")  # noqa: SIM115 - closed when the server stops
    drop_privileges = {}
    if _as_root():
        drop_privileges = dict(user=UNPRIVILEGED_ID, group=UNPRIVILEGED_ID, extra_groups=[])
    proc = subprocess.Popen(
        [str(SERVER_BIN), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        cwd=root,
        env=env,
        **drop_privileges,
    )
    stderr.close()
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                _stop(proc)
                pytest.fail(f"the server printed no address within {START_TIMEOUT_S} s:\n{_stderr_of(root)}")
            line = proc.stdout.readline()
            if not line:
                proc.wait(timeout=STOP_TIMEOUT_S)
                pytest.fail(f"the server exited with {proc.returncode} before listening:\n{_stderr_of(root)}")
            match = LISTENING.match(line.strip())
            if match:
                return proc, match.group(1)
            _stop(proc)
            pytest.fail(f"unexpected first line on the server's stdout: {line!r}")


def _stop(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


def _stderr_of(root: Path) -> str:
    try:
        return (root / "server.stderr").read_text(errors="replace")[-4000:]
    except OSError:
        return "(no stderr captured)"


def _finish(proc: subprocess.Popen[str], root: Path) -> None:
    code = _stop(proc)
    log = _stderr_of(root)
    shutil.rmtree(root, ignore_errors=True)
    assert code == 0, f"the server exited with {code} on SIGTERM instead of 0:\n{log}"


def _write_config(root: Path, security: str, listen: str = "127.0.0.1:0") -> ServerPaths:
    """Writes `root`/config.yml: simulated hardware, files under `root`, the `security`
    section given (YAML indented by two spaces, rate limiting off is added), and makes the
    directories the server writes to."""
    paths = ServerPaths(
        root=root,
        config=root / "config.yml",
        app_log=root / "log" / "app.log",
        audit_log=root / "log" / "audit.log",
        state_dir=root / "state",
    )
    paths.config.write_text(
        f"""\
config_version: "1.2"
server:
  listen: "{listen}"
security:
{security}
  secrets_file: null
  rate_limit:
    # The suite sends a few hundred requests within seconds; limiting is not under test.
    requests_per_minute: 0
logging:
  level: debug
  app_path: "{paths.app_log}"
  audit_path: "{paths.audit_log}"
  journald: off
platform:
  backend: simulated
paths:
  state_dir: "{paths.state_dir}"
  install_dir: "{root / 'opt'}"
"""
    )
    for directory in (paths.app_log.parent, paths.state_dir):
        directory.mkdir()
        if _as_root():
            os.chown(directory, UNPRIVILEGED_ID, UNPRIVILEGED_ID)
    return paths


def _token_config(root: Path) -> ServerPaths:
    tokens = "\n".join(
        f"    - identity: {identity}\n      role: {role}\n      env: {var}" for identity, (role, var) in IDENTITIES.items()
    )
    return _write_config(root, f"  auth_mode: token\n  tokens:\n{tokens}")


@pytest.fixture(scope="session")
def server() -> Iterator[RunningServer]:
    """mcp-raspi-server with token authentication (identities admin and viewer) and the
    simulated hardware backend, on a free loopback port."""
    root = _private_dir("mcp-raspi-test-")
    paths = _token_config(root)
    tokens = {identity: "tok-" + secrets.token_hex(16) for identity in IDENTITIES}
    env = _child_environment(root, {var: tokens[identity] for identity, (_, var) in IDENTITIES.items()})
    proc, url = _start(["--config", str(paths.config)], env, root)
    try:
        yield RunningServer(url=url, tokens=tokens, paths=paths, pid=proc.pid)
    finally:
        _finish(proc, root)


def _dev_paths(root: Path) -> ServerPaths:
    """Where a --dev server keeps its files when XDG_STATE_HOME is `root`."""
    home = root / "mcp-raspi"
    return ServerPaths(
        root=root,
        config=None,
        app_log=home / "log" / "app.log",
        audit_log=home / "log" / "audit.log",
        state_dir=home / "state",
    )


@pytest.fixture(scope="session")
def dev_server() -> Iterator[RunningServer]:
    """mcp-raspi-server --dev: no authentication, simulated hardware, state under a
    temporary XDG_STATE_HOME."""
    root = _private_dir("mcp-raspi-dev-")
    env = _child_environment(root, {})
    proc, url = _start(["--dev", "--listen", "127.0.0.1:0"], env, root)
    paths = _dev_paths(root)
    try:
        yield RunningServer(url=url, tokens={}, paths=paths, pid=proc.pid)
    finally:
        _finish(proc, root)


def _start_agent(env: dict[str, str], root: Path) -> subprocess.Popen[str]:
    """Starts raspi-ops-agent --dev and waits until it listens."""
    if not AGENT_BIN.is_file():
        pytest.fail(f"no agent binary at {AGENT_BIN}; build it with `cargo build --bins`")
    drop_privileges = {}
    if _as_root():
        drop_privileges = dict(user=UNPRIVILEGED_ID, group=UNPRIVILEGED_ID, extra_groups=[])
    proc = subprocess.Popen(
        [str(AGENT_BIN), "--dev"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=root,
        env=env,
        **drop_privileges,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        _stop(proc)
        pytest.fail(f"the agent did not start: {line!r}")
    return proc


@pytest.fixture(scope="session")
def dev_stack() -> Iterator[RunningServer]:
    """The development setup of `make run`: raspi-ops-agent --dev and mcp-raspi-server --dev
    sharing one temporary XDG_STATE_HOME, so the privileged tools work on the simulated
    hardware."""
    yield from _dev_stack()


@pytest.fixture
def fresh_dev_stack() -> Iterator[RunningServer]:
    """[dev_stack] of the test's own, for a test that changes the hardware's state."""
    yield from _dev_stack()


def _dev_stack() -> Iterator[RunningServer]:
    root = _private_dir("mcp-raspi-stack-")
    env = _child_environment(root, {})
    agent = _start_agent(env, root)
    try:
        proc, url = _start(["--dev", "--listen", "127.0.0.1:0"], env, root)
    except BaseException:
        _stop(agent)
        raise
    paths = _dev_paths(root)
    try:
        yield RunningServer(url=url, tokens={}, paths=paths, pid=proc.pid)
    finally:
        _stop(agent)
        _finish(proc, root)
