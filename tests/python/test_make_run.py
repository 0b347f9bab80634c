"""`make run`, as a newcomer uses it: both daemons start, Ctrl-C stops both, and make
reports no error."""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from conftest import REPO, SERVER_BIN, UNPRIVILEGED_ID

START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ctrl_c_stops_make_run_cleanly() -> None:
    if SERVER_BIN != REPO / "target" / "debug" / "mcp-raspi-server":
        pytest.skip("make run runs this checkout's debug build, not MCP_RASPI_SERVER_BIN")
    home = tempfile.mkdtemp(prefix="mcp-raspi-make-run-")
    if os.geteuid() == 0:
        os.chown(home, UNPRIVILEGED_ID, UNPRIVILEGED_ID)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MCP_RASPI_", "MAKE"))}
    env.update(XDG_STATE_HOME=home, TMPDIR=home, HOME=home if os.geteuid() else env.get("HOME", home))
    # Its own process group, as a terminal's foreground job is: Ctrl-C signals the group.
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "run", f"DEV_LISTEN=127.0.0.1:{port}"],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # Unbuffered: a buffered reader could take both daemons' lines at once and leave
        # the selector waiting for a line it already holds.
        bufsize=0,
        start_new_session=True,
    )
    out = ""
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while not re.search(r"^listening on http://127\.0\.0\.1:\d+/mcp$", out, re.M):
                remaining = deadline - time.monotonic()
                assert remaining > 0 and sel.select(remaining), f"make run did not start: {out}"
                line = proc.stdout.readline().decode()
                assert line, f"make run ended before listening: {out}{proc.stderr.read().decode()}"
                out += line
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=20)
        stderr = stderr.decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "Error" not in stderr and "***" not in stderr, stderr
    assert proc.returncode in (0, -signal.SIGINT), (proc.returncode, stderr)
    # Neither daemon is left behind: no process remains in make run's session.
    left = session_members(proc.pid)
    assert not left, f"processes of make run still running: {left}"


def session_members(sid: int) -> list[int]:
    """Pids of the processes in session `sid` (field 6 of /proc/PID/stat)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            members.append(int(entry))
    return members
