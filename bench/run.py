#!/usr/bin/env python3
"""Measures mcp-raspi-server and raspi-ops-agent and writes the figures to a Markdown report.

    python3 bench/run.py --server target/release/mcp-raspi-server \
        --agent target/release/raspi-ops-agent --cli target/release/mcp-raspi \
        --packages target/packages --out BENCHMARKS.md [--only update]

What is measured, all on 127.0.0.1:
  * self-update, first (UPDATE_RUNS runs through manage.update_server, as many through
    `mcp-raspi update server`): a device on release OLD_RELEASE is updated into the package
    of this build (make deb) from a signed repository served on 127.0.0.1, the script
    restarting the services as systemd would; the time from the request to the new release
    committed, the peak RSS of every process taking part, and the sizes of the packages.
    `--only update` runs this alone and replaces its section of the existing report;
  * process start to first answer: the server is spawned (without an agent) and
    GET /healthz is polled until it answers 200 (START_RUNS runs);
  * then the agent is started, and the server with it (same configuration);
  * resident memory (VmRSS, VmHWM) of the server right after start, of both after
    IDLE_SECONDS idle, and of both after the load runs;
  * throughput and latency with wrk (WRK_CONNECTIONS connections, WRK_SECONDS each) of
    GET /healthz, then of tools/call system.get_info in a 2025-11-25 session, then of
    the same call in stateless 2026-07-28 form, all against one server;
  * then, with AGENT_WRK_CONNECTIONS connections, tools/call gpio.read_pin in stateless
    form: a round trip from the client through the server and the agent's Unix socket
    to the simulated GPIO backend and back;
  * every load run three times: with wrk under SCHED_BATCH, so that its wake-ups do not
    preempt the server it shares the CPUs with; with default scheduling; and with the CPUs
    split, the server and the agent on one half and wrk on the other (machines with two
    CPUs or more). The server CPU time per request (from /proc/PID/stat) is reported
    beside each run;
  * the load runs in ROUNDS rounds of WRK_SECONDS each: every figure is the median over
    the rounds, and a call's share of /healthz is the median of its share in each round,
    against the /healthz run of the same round, so that one disturbed run does not decide
    a target.

Exit status: 0 when every figure was measured (whether or not it meets its target),
1 when a load run saw errors (the report is still written and says so), 2 when the
benchmark could not run (server or agent failed, wrk missing, bad arguments, the package
missing, an update that did not commit).

Standard library only (Python 3.11), Linux. Needs wrk (as root it is installed with apt-get)
and, for the update scenario, the package of this machine's architecture under --packages.
"""

import argparse
import ctypes
import datetime
import functools
import http.client
import http.server
import json
import os
import platform
import re
import secrets
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
POST_LUA = HERE / "post.lua"

START_RUNS = 20
START_TIMEOUT = 10.0  # seconds for one start before giving up
IDLE_SECONDS = 5
WRK_THREADS = 2
WRK_CONNECTIONS = 50
WRK_SECONDS = 5
ROUNDS = 3
AGENT_WRK_CONNECTIONS = 10  # the gpio.read_pin run through the agent

# The server and the agent refuse to run as root; as root they are started as this user
# and group.
UNPRIVILEGED = 65534

TARGET_IDLE_RSS_MB = 10.0  # x86_64
TARGET_CALL_SHARE = 0.5  # tools/call throughput / GET /healthz throughput
TARGET_CALL_P99_MS = 5.0
TARGET_START_MS = 100.0
TARGET_AGENT_IDLE_RSS_MB = 5.0
TARGET_AGENT_CALL_P99_MS = 2.0  # at AGENT_WRK_CONNECTIONS concurrent clients

# The tool called through the agent, and the pin allowed for it in the configuration.
AGENT_TOOL = "gpio.read_pin"
AGENT_PIN = 17
AGENT_ARGUMENTS = {"pin": AGENT_PIN}

SESSION_VERSION = "2025-11-25"
STATELESS_VERSION = "2026-07-28"


class BenchError(Exception):
    """The benchmark cannot run or cannot go on."""


def log(message):
    print(f"bench: {message}", flush=True)


# ---------------------------------------------------------------- environment


def ensure_wrk():
    """Path of wrk, installed from the distribution when missing and running as root."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise BenchError("wrk is not installed: install it (Debian/Ubuntu: sudo apt-get install wrk) and retry")
    log("wrk is missing; installing it with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-qq", "wrk"]
    if subprocess.run(install, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
        if subprocess.run(install, env=env).returncode != 0:
            raise BenchError("apt-get could not install wrk")
    found = shutil.which("wrk")
    if not found:
        raise BenchError("wrk is still not on PATH after apt-get install")
    return found


def machine():
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                cpu = value.strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "nproc": len(os.sched_getaffinity(0)),
        "arch": platform.machine(),
        "kernel": f"{platform.system()} {platform.release()}",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def command_output(argv):
    """First line a command prints (wrk -v prints to stderr), or "" when it cannot run."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = (r.stdout + r.stderr).strip().splitlines()
    return lines[0] if lines else ""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the server and the agent


# The audit record that counts the successful read-only calls of an identity over its
# budget (logging.audit_budget_mb_per_hour) per tool instead of writing them, and the
# outcome under which `Workdir.audit_records` sums, per tool, the calls those records count.
SUPPRESSED = "audit.suppressed"
COUNTED = "ok, counted over the audit budget"


class Workdir:
    """Temporary directory holding the configuration, logs and state of the server and agent."""

    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix="mcp-raspi-bench-"))
        self.drop = os.geteuid() == 0
        # The user and group both processes run as: the agent admits this uid and gives
        # its socket to this group.
        self.uid, self.gid = (UNPRIVILEGED, UNPRIVILEGED) if self.drop else (os.getuid(), os.getgid())
        for sub in ("log", "state", "opt", "run", "media"):
            (self.path / sub).mkdir()
        self.config = self.path / "config.yml"
        self.socket = self.path / "run" / "ops-agent.sock"
        self.env = {}  # added to the environment of the processes
        self.config.write_text(self.config_text())
        self.config.chmod(0o644)
        if self.drop:
            for p in [self.path, *self.path.rglob("*")]:
                os.chown(p, UNPRIVILEGED, UNPRIVILEGED)

    def config_text(self):
        d = self.path
        # The development settings (no authentication on loopback, simulated hardware)
        # without the rate limit, which would throttle the load runs; one GPIO pin for the
        # calls through the agent.
        return f"""config_version: "1.2"
server:
  listen: "127.0.0.1:0"
security:
  auth_mode: none
  anonymous_role: admin
  tokens: []
  secrets_file: null
  rate_limit:
    requests_per_minute: 0
logging:
  level: warn
  journald: off
  app_path: "{d}/log/app.log"
  audit_path: "{d}/log/audit.log"
  # Large enough that no record of the load runs is rotated away: every answer wrk
  # counted is looked for in the audit log.
  file:
    max_size_mb: 4096
    backup_count: 1
platform:
  backend: simulated
paths:
  state_dir: "{d}/state"
  install_dir: "{d}/opt"
ops_agent:
  socket_path: "{self.socket}"
  allowed_users: ["{self.uid}"]
  socket_group: "{self.gid}"
gpio:
  pins:
    - {{ pin: {AGENT_PIN}, modes: [input, output] }}
camera:
  media_dir: "{d}/media"
"""

    def audit_records(self):
        """Count of audit records per (tool, outcome), over the log and its rotated copies."""
        counts = {}
        for f in sorted((self.path / "log").glob("audit.log*")):
            with open(f, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    try:
                        record = json.loads(line)
                        outcome = str(record.get("outcome", "?"))
                        if outcome != "ok" and record.get("error_code"):
                            outcome += f" ({record['error_code']})"
                        key = (str(record.get("tool", "?")), outcome)
                        if key == (SUPPRESSED, "ok"):
                            # Calls over the identity's audit budget, counted per tool in one record.
                            for tool, calls in record["arguments"]["calls"].items():
                                counted = (str(tool), COUNTED)
                                counts[counted] = counts.get(counted, 0) + int(calls)
                    except (ValueError, AttributeError, KeyError, TypeError):
                        key = ("?", "unreadable")
                    counts[key] = counts.get(key, 0) + 1
        return counts

    def remove(self):
        shutil.rmtree(self.path, ignore_errors=True)


class Process:
    """A server or agent process, started as the unprivileged user when running as root."""

    name = "process"

    def __init__(self, argv, workdir, capture_stdout):
        self.workdir = workdir
        self.stderr_path = workdir.path / f"{self.name}.stderr"
        env = dict(os.environ, XDG_STATE_HOME=str(workdir.path / "state"), HOME=str(workdir.path), **workdir.env)
        drop = {"user": UNPRIVILEGED, "group": UNPRIVILEGED, "extra_groups": []} if workdir.drop else {}
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture_stdout else subprocess.DEVNULL,
                stderr=err,
                env=env,
                cwd=workdir.path,
                **drop,
            )

    @property
    def pid(self):
        return self.proc.pid

    def stderr_lines(self):
        try:
            return self.stderr_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return []

    def died(self, what):
        tail = self.stderr_lines()[-15:]
        return BenchError(f"{what}; the {self.name} exited with status {self.proc.returncode}. Its stderr ends with:\n  "
                          + "\n  ".join(tail or ["(empty)"]))

    def read_listen_line(self, pattern, timeout=START_TIMEOUT):
        """The match of `pattern` against the process's first stdout line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                line = self.proc.stdout.readline().decode(errors="replace").strip()
                m = re.fullmatch(pattern, line)
                if m:
                    return m
                if line:
                    raise BenchError(f"unexpected first stdout line of the {self.name}: {line!r}")
            if self.proc.poll() is not None:
                raise self.died(f"the {self.name} stopped before listening")
        raise BenchError(f"the {self.name} printed no `listening on` line within {timeout:.0f} s")

    def memory(self):
        """VmRSS and VmHWM, in kB."""
        if self.proc.poll() is not None:
            raise self.died(f"the {self.name} is no longer running")
        fields = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
        return fields

    def cpu_seconds(self):
        """User plus system CPU time the process has used so far, in seconds."""
        if self.proc.poll() is not None:
            raise self.died(f"the {self.name} is no longer running")
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        # Fields after the command name (which may hold spaces) start at field 3, "state".
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


class Server(Process):
    name = "server"

    def __init__(self, binary, workdir, listen, capture_stdout):
        super().__init__([binary, "--config", str(workdir.config), "--listen", listen], workdir, capture_stdout)

    def listening_port(self):
        """The port from the server's stdout line `listening on http://ADDR/mcp`."""
        return int(self.read_listen_line(r"listening on http://127\.0\.0\.1:(\d+)/mcp").group(1))


class Agent(Process):
    name = "agent"

    def __init__(self, binary, workdir):
        super().__init__([binary, "--config", str(workdir.config)], workdir, capture_stdout=True)

    def wait_listening(self):
        """Waits for the agent's stdout line `listening on PATH` naming the configured socket."""
        self.read_listen_line(r"listening on " + re.escape(str(self.workdir.socket)))

    def refusals(self):
        """The agent's log lines about connections it refused."""
        return [line for line in self.stderr_lines() if "refused a connection" in line]


# ---------------------------------------------------------------- measurements


def healthz_ok(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/healthz")
        r = conn.getresponse()
        r.read()
        return r.status == 200
    finally:
        conn.close()


def measure_start(binary, workdir):
    """Milliseconds from spawning the server to its first 200 from GET /healthz."""
    times = []
    for _ in range(START_RUNS):
        port = free_port()
        t0 = time.perf_counter()
        server = Server(binary, workdir, f"127.0.0.1:{port}", capture_stdout=False)
        try:
            while True:
                try:
                    if healthz_ok(port):
                        break
                except (ConnectionRefusedError, ConnectionResetError):
                    pass
                if server.proc.poll() is not None:
                    raise server.died("the server stopped during start-up")
                if time.perf_counter() - t0 > START_TIMEOUT:
                    raise BenchError(f"GET /healthz did not answer 200 within {START_TIMEOUT:.0f} s of start")
                time.sleep(0.0005)
            times.append((time.perf_counter() - t0) * 1000)
        finally:
            server.stop()
    return times


def post(port, body, headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", "/mcp", body=json.dumps(body),
                     headers={"Content-Type": "application/json",
                              "Accept": "application/json, text/event-stream", **headers})
        r = conn.getresponse()
        data = r.read()
        return r.status, r.getheader("Mcp-Session-Id"), data
    finally:
        conn.close()


def check_call(status, data, form):
    """Fails unless a tools/call answer is a successful result; returns the result."""
    try:
        reply = json.loads(data)
    except ValueError:
        raise BenchError(f"tools/call ({form}) answered HTTP {status} with a body that is not JSON: {data[:200]!r}")
    result = reply.get("result")
    if status != 200 or not isinstance(result, dict) or result.get("isError"):
        raise BenchError(f"tools/call ({form}) failed: HTTP {status}, {json.dumps(reply)[:300]}")
    return result


def open_session(port):
    """Initializes a 2025-11-25 session, checks one call in it, returns its id."""
    status, sid, data = post(port, {
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": SESSION_VERSION, "capabilities": {},
                   "clientInfo": {"name": "bench", "version": "1"}},
    }, {})
    if status != 200 or not sid:
        raise BenchError(f"initialize failed: HTTP {status}, session id {sid!r}, body {data[:300]!r}")
    headers = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": SESSION_VERSION}
    status, _, data = post(port, {"jsonrpc": "2.0", "method": "notifications/initialized"}, headers)
    if status != 202:
        raise BenchError(f"notifications/initialized answered HTTP {status}: {data[:300]!r}")
    status, _, data = post(port, {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                                  "params": {"name": "system.get_info", "arguments": {}}}, headers)
    check_call(status, data, f"session {SESSION_VERSION}")
    return sid


def call_stateless(port, tool, arguments):
    """One stateless tools/call, as bench/post.lua sends it; returns the checked result."""
    status, _, data = post(port, {
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments,
                   "_meta": {"io.modelcontextprotocol/protocolVersion": STATELESS_VERSION,
                             "io.modelcontextprotocol/clientCapabilities": {}}},
    }, {"MCP-Protocol-Version": STATELESS_VERSION, "Mcp-Method": "tools/call", "Mcp-Name": tool})
    return check_call(status, data, f"{tool}, stateless {STATELESS_VERSION}")


def check_stateless(port):
    call_stateless(port, "system.get_info", {})


def check_agent_call(port):
    """Fails unless gpio.read_pin, answered by the agent, returns the pin's state."""
    result = call_stateless(port, AGENT_TOOL, AGENT_ARGUMENTS)
    state = result.get("structuredContent")
    if (result.get("isError") is not False or not isinstance(state, dict) or state.get("pin") != AGENT_PIN
            or "mode" not in state or "level" not in state):
        raise BenchError(f"{AGENT_TOOL} did not return the state of pin {AGENT_PIN} with isError false: "
                         f"{json.dumps(result)[:300]}")
    return state


UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def batch_scheduling():
    """In the child before exec: SCHED_BATCH (allowed without privileges)."""
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def cpu_halves():
    """The CPUs this script may use, split in two: (the server's, the load generator's)."""
    cpus = sorted(os.sched_getaffinity(0))
    return set(cpus[:len(cpus) // 2]), set(cpus[len(cpus) // 2:])


def pin(pid, cpus):
    """Puts every thread of process `pid` on `cpus` (threads it starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:
            pass  # a thread that has just ended


def load_generator_setup(schedule):
    """What to do in wrk's process before exec, for `schedule`."""
    if schedule == "batch":
        return batch_scheduling
    if schedule == "split":
        load_cpus = cpu_halves()[1]
        return lambda: os.sched_setaffinity(0, load_cpus)
    return None


def run_wrk(wrk, url, script_args=None, connections=WRK_CONNECTIONS, schedule="default"):
    """Runs wrk and returns requests/s, p50/p99 in ms, request and error counts."""
    argv = [wrk, f"-t{WRK_THREADS}", f"-c{connections}", f"-d{WRK_SECONDS}s", "--latency"]
    if script_args is not None:
        argv += ["-s", str(POST_LUA)]
    argv.append(url)
    if script_args:
        argv += ["--", *script_args]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=WRK_SECONDS + 30,
                       preexec_fn=load_generator_setup(schedule))
    out = r.stdout
    if r.returncode != 0 or "Requests/sec" not in out:
        raise BenchError(f"wrk failed (status {r.returncode}):\n{out}\n{r.stderr}")
    pct = {int(p): float(v) * UNIT_MS[u]
           for p, v, u in re.findall(r"^\s*(\d+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", out, re.M)}
    if 50 not in pct or 99 not in pct:
        raise BenchError(f"no latency distribution in the wrk output:\n{out}")
    total = re.search(r"(\d+) requests in ", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": pct[50],
        "p99": pct[99],
        "requests": int(total.group(1)) if total else 0,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in sock.groups()) if sock else 0,
        "connections": connections,
        "output": out,
    }


def combine(rounds, healthz_rounds=None):
    """One run's figures over its rounds: median throughput and latencies, counts summed;
    with `healthz_rounds`, the median share of /healthz, round by round."""
    w = {
        "rps": statistics.median(x["rps"] for x in rounds),
        "p50": statistics.median(x["p50"] for x in rounds),
        "p99": statistics.median(x["p99"] for x in rounds),
        "requests": sum(x["requests"] for x in rounds),
        "non2xx": sum(x["non2xx"] for x in rounds),
        "socket_errors": sum(x["socket_errors"] for x in rounds),
        "server_cpu_s": sum(x["server_cpu_s"] for x in rounds),
        "connections": rounds[0]["connections"],
    }
    if healthz_rounds:
        w["shares"] = [x["rps"] / h["rps"] if h["rps"] else 0.0 for x, h in zip(rounds, healthz_rounds)]
        w["share"] = statistics.median(w["shares"])
    return w


# ---------------------------------------------------------------- the self-update scenario

UPDATE_RUNS = 3  # of each update path
UPDATE_WAIT = 60.0  # seconds any one wait of the scenario may take before it fails
OLD_RELEASE = "0.0.1"  # the label of the release the update starts from
TARGET_UPDATE_S = 10.0
TARGET_UPDATE_RSS_MB = 20.0  # peak RSS of each process taking part
TARGET_DEB_MB = 5.0
DEB_ARCHITECTURES = ("amd64", "arm64", "armhf")
# The Debian architecture of the package this machine installs.
DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "armhf", "armv6l": "armhf"}
ADMIN_TOKEN_ENV = "MCP_RASPI_BENCH_ADMIN_TOKEN"
UPDATE_TOOL = "manage.update_server"
PR_SET_CHILD_SUBREAPER = 36  # prctl(2)
UPDATE_REPO_SCRIPT = HERE.parent / "packaging" / "update-repo.sh"

# The processes whose peak RSS is reported: key, label.
UPDATE_PROCESSES = (
    ("old_server", "old `mcp-raspi-server` (serves the call: resolves, downloads, verifies)"),
    ("old_agent", "old `raspi-ops-agent` (verifies again, extracts, installs, switches)"),
    ("new_server", "new `mcp-raspi-server` (checks itself, reports)"),
    ("new_agent", "new `raspi-ops-agent` (waits for the report, commits)"),
    ("cli", "`mcp-raspi update server --no-wait` (the whole update in one process)"),
    ("pre_start", "`mcp-raspi update pre-start` (before the new agent starts)"),
)


def deb_architecture():
    arch = DEB_ARCH.get(platform.machine())
    if not arch:
        raise BenchError(f"no Debian architecture is known for {platform.machine()}: the update scenario cannot run")
    return arch


def package_path(packages, version, arch):
    return Path(packages) / f"mcp-raspi_{version}_{arch}.deb"


class Subreaper:
    """While active, processes orphaned below this one are re-parented to it, so that it can
    wait for a grandchild itself (see run_measured)."""

    def __init__(self):
        self.libc = ctypes.CDLL(None, use_errno=True)

    def set(self, on):
        if self.libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
            raise BenchError(f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(ctypes.get_errno())}")


def run_measured(argv, workdir, name, timeout=UPDATE_WAIT):
    """Runs a program to its end, as the unprivileged user when root, and returns its exit
    code, stdout, stderr and peak RSS in kB (ru_maxrss from wait4).

    A process started from this script starts as a copy of it, and the kernel counts what
    that copy had resident in the program's ru_maxrss: every child of this script would
    report at least this script's own size. So a shell starts the program in the
    background, prints its pid and exits; the program, a copy of the small shell, is
    re-parented to this script (a subreaper) and waited for here."""
    out, err = workdir.path / f"{name}.stdout", workdir.path / f"{name}.stderr"
    script = 'out=$1; err=$2; shift 2; "$@" </dev/null >"$out" 2>"$err" & echo $!'
    drop = {"user": workdir.uid, "group": workdir.gid, "extra_groups": []} if workdir.drop else {}
    env = dict(os.environ, XDG_STATE_HOME=str(workdir.path / "state"), HOME=str(workdir.path), **workdir.env)
    shell = subprocess.run(["sh", "-c", script, "sh", str(out), str(err), *argv], capture_output=True, text=True,
                           env=env, cwd=workdir.path, timeout=10, **drop)
    try:
        pid = int(shell.stdout.strip())
    except ValueError:
        raise BenchError(f"could not start {argv[0]}: {shell.stdout!r} {shell.stderr!r}") from None
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, status, usage = os.wait4(pid, os.WNOHANG)
        except ChildProcessError:
            raise BenchError(f"{argv[0]} (pid {pid}) was not re-parented to this script; its peak RSS "
                             "cannot be read") from None
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.wait4(pid, 0)
            raise BenchError(f"`{' '.join(map(str, argv))}` did not end within {timeout:.0f} s")
        time.sleep(0.002)
    text = [p.read_text(errors="replace").strip() for p in (out, err)]
    return os.waitstatus_to_exitcode(status), text[0], text[1], usage.ru_maxrss


class RepoServer:
    """The update repository, served over HTTP on 127.0.0.1 from a thread of this script;
    it remembers the paths it served."""

    def __init__(self, directory):
        served = self.served = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_request(self, code="-", size="-"):
                served.append((self.path, code if isinstance(code, int) else 0))

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                     functools.partial(Handler, directory=str(directory)))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class UpdateWorkdir:
    """One run of the update: a device's configuration, state directory and install root
    (`opt/`, whose `current` names the old release), and the logs of its processes."""

    def __init__(self, path, repo_url, keys_dir, token):
        self.path = path
        self.path.mkdir()
        self.drop = os.geteuid() == 0
        self.uid, self.gid = (UNPRIVILEGED, UNPRIVILEGED) if self.drop else (os.getuid(), os.getgid())
        for sub in ("log", "state", "opt", "run"):
            (self.path / sub).mkdir()
        self.state = self.path / "state"
        self.root = self.path / "opt"
        self.socket = self.path / "run" / "ops-agent.sock"
        self.config = self.path / "config.yml"
        self.env = {ADMIN_TOKEN_ENV: token}
        d = self.path
        self.config.write_text(f"""config_version: "1.2"
server:
  listen: "127.0.0.1:0"
security:
  auth_mode: token
  secrets_file: null
  rate_limit:
    requests_per_minute: 0
  tokens:
    - {{ identity: admin, role: admin, env: {ADMIN_TOKEN_ENV} }}
logging:
  level: info
  journald: off
  app_path: "{d}/log/app.log"
  audit_path: "{d}/log/audit.log"
platform:
  backend: simulated
paths:
  state_dir: "{self.state}"
  install_dir: "{self.root}"
ops_agent:
  socket_path: "{self.socket}"
  allowed_users: ["{self.uid}"]
  socket_group: "{self.gid}"
updates:
  server_url: "{repo_url}"
  keys_dir: "{keys_dir}"
  max_download_mb: 100
  health_timeout_seconds: {int(UPDATE_WAIT)}
""")
        self.config.chmod(0o644)
        if self.drop:
            for p in [self.path, *self.path.rglob("*")]:
                os.chown(p, self.uid, self.gid)

    def program(self, name):
        """A program of the release `current` names, as the units start it."""
        return str(self.root / "current" / "bin" / name)

    def version_state(self):
        try:
            return json.loads((self.state / "version.json").read_text())
        except FileNotFoundError:
            return {}

    def run_cli(self, cli, *args):
        """Runs the CLI as the services' user and fails unless it succeeds; returns stdout."""
        drop = {"user": self.uid, "group": self.gid, "extra_groups": []} if self.drop else {}
        r = subprocess.run([cli, *args], capture_output=True, text=True, timeout=UPDATE_WAIT, cwd=self.path, **drop)
        if r.returncode != 0:
            raise BenchError(f"`mcp-raspi {' '.join(args)}` failed ({r.returncode}): {r.stderr.strip()}")
        return r.stdout


def healthz_version(port):
    """The version GET /healthz reports, or None when it does not answer 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/healthz")
        r = conn.getresponse()
        body = r.read()
        return json.loads(body).get("version") if r.status == 200 else None
    except (OSError, ValueError):
        return None
    finally:
        conn.close()


def rpc(port, headers, body, timeout):
    """POSTs one JSON-RPC message to /mcp; returns the HTTP status, the session id header
    and the JSON-RPC answer (from a JSON body or the last answer of an event stream)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/mcp", body=json.dumps(body),
                     headers={"Content-Type": "application/json",
                              "Accept": "application/json, text/event-stream", **headers})
        r = conn.getresponse()
        data = r.read().decode(errors="replace")
        sid, ctype = r.getheader("Mcp-Session-Id"), r.getheader("Content-Type") or ""
    except OSError as e:
        raise BenchError(f"{body.get('method')} to 127.0.0.1:{port}: {e}") from None
    finally:
        conn.close()
    if not data.strip():
        return r.status, sid, None
    try:
        if ctype.startswith("text/event-stream"):
            messages = [json.loads(line[5:]) for line in data.splitlines()
                        if line.startswith("data:") and line[5:].strip()]
            answers = [m for m in messages if "result" in m or "error" in m]
            return r.status, sid, answers[-1] if answers else None
        return r.status, sid, json.loads(data)
    except ValueError:
        raise BenchError(f"{body.get('method')} answered HTTP {r.status} with a body that is not JSON: "
                         f"{data[:300]!r}") from None


def admin_session(port, token):
    """Opens a session as the admin; returns the headers of requests within it."""
    headers = {"Authorization": f"Bearer {token}"}
    status, sid, _ = rpc(port, headers, {
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": SESSION_VERSION, "capabilities": {},
                   "clientInfo": {"name": "bench", "version": "1"}},
    }, 10)
    if status != 200 or not sid:
        raise BenchError(f"initialize as admin failed: HTTP {status}, session id {sid!r}")
    headers.update({"Mcp-Session-Id": sid, "MCP-Protocol-Version": SESSION_VERSION})
    status, _, _ = rpc(port, headers, {"jsonrpc": "2.0", "method": "notifications/initialized"}, 10)
    if status != 202:
        raise BenchError(f"notifications/initialized answered HTTP {status}")
    return headers


def exe_of(pid):
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return "?"


class UpdateScenario:
    """Updates a device from OLD_RELEASE into the packaged release, on loopback, acting as
    systemd: see render_update for the steps."""

    def __init__(self, cli, packages):
        self.publisher_cli = cli
        # `mcp-raspi 0.1.0`: the version the package's programs report.
        self.version = (command_output([cli, "--version"]).split() or [""])[-1]
        self.arch = deb_architecture()
        self.deb = package_path(packages, self.version, self.arch)
        if not self.deb.is_file():
            raise BenchError(f"{self.deb} is missing: build the package first (make deb)")
        self.packages = packages
        self.token = secrets.token_hex(24)

    def prepare(self, base):
        """The payload of the old release (the build's programs) and the signed repository."""
        self.base = base
        bin_dir = base / "payload" / "bin"
        bin_dir.mkdir(parents=True)
        release_dir = Path(self.publisher_cli).parent
        for name in ("mcp-raspi-server", "raspi-ops-agent", "mcp-raspi"):
            if not os.access(release_dir / name, os.X_OK):
                raise BenchError(f"{release_dir / name} is missing: cargo build --release --bins")
            shutil.copy2(release_dir / name, bin_dir / name)
        # The dpkg-owned CLI of a device, which ExecStartPre and the operator run.
        self.cli = str(bin_dir / "mcp-raspi")
        repo = base / "repo"
        env = dict(os.environ, UPDATE_KEY_DIR=str(base / "signing-key"))
        r = subprocess.run([str(UPDATE_REPO_SCRIPT), self.publisher_cli, str(repo), str(self.deb)],
                           capture_output=True, text=True, env=env, timeout=UPDATE_WAIT)
        if r.returncode != 0:
            raise BenchError(f"packaging/update-repo.sh failed ({r.returncode}):\n{r.stderr.strip()}")
        self.keys_dir = repo / "keys"
        if os.geteuid() == 0:
            for p in [base, *(base / "payload").rglob("*"), base / "payload", repo, *repo.rglob("*")]:
                os.chown(p, UNPRIVILEGED, UNPRIVILEGED)
        self.repo = RepoServer(repo)

    def device(self, name):
        """A device whose `current` is OLD_RELEASE, recorded in version.json as a package
        install would (the postinst)."""
        w = UpdateWorkdir(self.base / name, self.repo.url, self.keys_dir, self.token)
        w.run_cli(self.cli, "release", "install", "--payload", str(self.base / "payload"), "--root", str(w.root),
                  "--version", OLD_RELEASE)
        w.run_cli(self.cli, "release", "activate", "--root", str(w.root), "--version", OLD_RELEASE,
                  "--state-dir", str(w.state))
        return w

    def start(self, w):
        """The agent, then the server, from current/bin, as their units start them."""
        agent = Agent(w.program("raspi-ops-agent"), w)
        agent.wait_listening()
        server = Server(w.program("mcp-raspi-server"), w, "127.0.0.1:0", capture_stdout=True)
        port = server.listening_port()
        return agent, server, port

    def run(self, path, n):
        """One update through `path` (`mcp` or `cli`); returns its figures."""
        w = self.device(f"{path}-{n}")
        agent = server = None
        fig = {}
        try:
            agent, server, port = self.start(w)
            before = w.version_state()
            if before.get("current_version") != OLD_RELEASE or healthz_version(port) != self.version:
                raise BenchError(f"the device did not start on {OLD_RELEASE}: version.json {before}")
            headers = admin_session(port, self.token) if path == "mcp" else None
            self.repo.served.clear()

            t0 = time.perf_counter()
            if path == "mcp":
                status, _, reply = rpc(port, headers, {
                    "jsonrpc": "2.0", "id": 2, "method": "tools/call",
                    "params": {"name": UPDATE_TOOL, "arguments": {}}}, UPDATE_WAIT)
                t1 = time.perf_counter()
                result = (reply or {}).get("result") or {}
                answer = result.get("structuredContent") or {}
                if status != 200 or result.get("isError") or answer.get("status") != "in_progress":
                    raise BenchError(f"{UPDATE_TOOL} did not answer in_progress: HTTP {status}, "
                                     f"{json.dumps(reply)[:600]}")
            else:
                code, out, err, fig["cli"] = run_measured(
                    [self.cli, "update", "server", "--no-wait", "--json", "--config", str(w.config)], w, "update")
                t1 = time.perf_counter()
                try:
                    answer = json.loads(out.splitlines()[-1])
                except (ValueError, IndexError):
                    answer = {}
                if code != 0 or answer.get("status") != "in_progress":
                    raise BenchError(f"mcp-raspi update server did not end in_progress (exit {code}): {out} {err}")
            state = (w.version_state().get("last_update") or {})
            if (state.get("status"), state.get("phase"), state.get("to")) != ("in_progress", "restarting",
                                                                                 self.version):
                raise BenchError(f"after the install, version.json's last_update is {state}")
            package = f"/pool/{self.deb.name}"
            if (package, 200) not in self.repo.served:
                raise BenchError(f"the update did not download {package}: the repository served {self.repo.served}")

            # What systemd does when the agent restarts the units: stop both, run the agent's
            # ExecStartPre, start the agent, then the server, from current/bin.
            fig["old_server"], fig["old_agent"] = server.memory()["VmHWM"], agent.memory()["VmHWM"]
            server.stop()
            agent.stop()
            server = agent = None
            code, out, err, fig["pre_start"] = run_measured(
                [self.cli, "update", "pre-start", "--config", str(w.config)], w, "pre-start")
            if code != 0:
                raise BenchError(f"mcp-raspi update pre-start failed ({code}): {out} {err}")
            agent, server, port = self.start(w)
            deadline = time.monotonic() + UPDATE_WAIT
            while True:
                last = w.version_state().get("last_update") or {}
                if last.get("status") == "succeeded" and healthz_version(port) == self.version:
                    break
                if last.get("status") in ("rolled_back", "failed"):
                    raise BenchError(f"the update was {last['status']}: {last.get('reason')}")
                for p in (agent, server):
                    if p.proc.poll() is not None:
                        raise p.died("the update did not commit")
                if time.monotonic() > deadline:
                    raise BenchError(f"within {UPDATE_WAIT:.0f} s of the restart, the update was not committed "
                                     f"with /healthz answering {self.version}: last_update {last}, /healthz "
                                     f"version {healthz_version(port)}")
                time.sleep(0.005)
            t2 = time.perf_counter()

            fig["new_server"], fig["new_agent"] = server.memory()["VmHWM"], agent.memory()["VmHWM"]
            release = str(w.root / "releases" / self.version) + "/"
            for p in (agent, server):
                if not exe_of(p.pid).startswith(release):
                    raise BenchError(f"the new {p.name} runs {exe_of(p.pid)}, not a program of {release}")
            fig.update(install_s=t1 - t0, restart_s=t2 - t1, total_s=t2 - t0)
            return fig
        finally:
            for p in (server, agent):
                if p:
                    p.stop()

    def close(self):
        if getattr(self, "repo", None):
            self.repo.close()


def bench_update(cli, packages):
    """The update scenario, UPDATE_RUNS times through MCP and as many through the CLI."""
    scenario = UpdateScenario(cli, packages)
    u = {"machine": machine(), "version": scenario.version, "arch": scenario.arch, "from": OLD_RELEASE,
         "deb": scenario.deb.name, "runs": {"mcp": [], "cli": []},
         "debs": {a: (package_path(packages, scenario.version, a).stat().st_size
                      if package_path(packages, scenario.version, a).is_file() else None)
                  for a in DEB_ARCHITECTURES}}
    base = Path(tempfile.mkdtemp(prefix="mcp-raspi-bench-update-"))
    reaper = Subreaper()
    try:
        reaper.set(True)
        scenario.prepare(base)
        for n in range(1, UPDATE_RUNS + 1):
            for path in ("mcp", "cli"):
                log(f"update {OLD_RELEASE} -> {scenario.version} through {path}, run {n} of {UPDATE_RUNS}")
                fig = scenario.run(path, n)
                log(f"  {fig['total_s']:.2f} s: {fig['install_s']:.2f} s until installed, "
                    f"{fig['restart_s']:.2f} s to commit")
                u["runs"][path].append(fig)
    finally:
        scenario.close()
        reaper.set(False)
        shutil.rmtree(base, ignore_errors=True)
    return u


def update_rows(u):
    """(measure, value, target, met) rows of the update scenario."""
    rows = []
    for path, what in (("mcp", f"`tools/call {UPDATE_TOOL}`"), ("cli", "`mcp-raspi update server --no-wait`")):
        runs = u["runs"][path]
        total = [r["total_s"] for r in runs]
        listed = ", ".join(f"{x:.2f}" for x in total)
        rows.append((f"Update end to end through {what}, median of {len(runs)}",
                     f"{statistics.median(total):.2f} s (runs {listed} s)",
                     f"≤ {TARGET_UPDATE_S:.0f} s", statistics.median(total) <= TARGET_UPDATE_S))
        until = "until the call answers" if path == "mcp" else "until the command exits"
        rows.append((f"… resolve, download, verify, install and switch ({until})",
                     f"{statistics.median(r['install_s'] for r in runs):.2f} s", "", None))
        rows.append(("… restart, health check and commit",
                     f"{statistics.median(r['restart_s'] for r in runs):.2f} s", "", None))
    for key, label in UPDATE_PROCESSES:
        values = [r[key] for runs in u["runs"].values() for r in runs if key in r]
        if key in ("old_server", "old_agent", "new_server", "new_agent"):
            values = [r[key] for r in u["runs"]["mcp"]]  # the daemons of the MCP runs
        peak = statistics.median(values)
        rows.append((f"Peak RSS, {label}, median of {len(values)}",
                     f"{mb(peak):.1f} MB (max {mb(max(values)):.1f} MB)",
                     f"≤ {TARGET_UPDATE_RSS_MB:.0f} MB", mb(peak) <= TARGET_UPDATE_RSS_MB))
    for arch, size in u["debs"].items():
        name = f"mcp-raspi_{u['version']}_{arch}.deb"
        if size is None:
            make = "make deb" if arch == u["arch"] else f"make deb-{arch}"
            rows.append((f"Package size, `{name}`", f"not built here (`{make}`)", f"≤ {TARGET_DEB_MB:.0f} MB", None))
        else:
            rows.append((f"Package size, `{name}`", f"{size / 1e6:.2f} MB ({size:,} bytes)",
                         f"≤ {TARGET_DEB_MB:.0f} MB", size / 1e6 <= TARGET_DEB_MB))
    return rows


def render_update(u, rows):
    """The `## Self-update` section of the report."""
    m = u["machine"]
    lines = [
        "## Self-update",
        "",
        f"`bench/run.py` also updates a device from release {u['from']} into the release just packaged",
        f"(`{u['deb']}`, version {u['version']}), from a signed update repository on 127.0.0.1, acting",
        "as systemd for the restart; simulated hardware. Measured "
        f"{m['date']} on {m['cpu']}, {m['nproc']} CPUs, {m['arch']}.",
        "",
        "| Measure | Value | Target | Met |",
        "|---|---|---|---|",
    ]
    lines += result_rows(rows, "of the update ")
    lines += [
        "",
        "### Method of the update scenario",
        "",
        f"- The repository: `packaging/update-repo.sh` publishes the package `make deb` built for this",
        "  machine, signed with a key generated for the run, and Python's `http.server` serves it on a",
        "  free port of 127.0.0.1. The device trusts that key (`updates.keys_dir`) and reads",
        "  `updates.server_url` from it.",
        f"- The device: a fresh state directory and install root per run. The release programs of the",
        f"  build are installed as release {u['from']} (`mcp-raspi release install`) and made current",
        "  with `mcp-raspi release activate --state-dir`, as the package's postinst records an",
        f"  install in `version.json`. Release {u['from']} and the package hold the same programs, which",
        f"  report version {u['version']}; what is installed is the release `current` names. Token",
        f"  authentication, simulated hardware, the agent's Unix socket in the scratch directory.",
        "  As root, the programs run as uid/gid " f"{UNPRIVILEGED}, as in the load runs.",
        "- Acting as systemd: the agent, then the server, are started from `current/bin/`. Through",
        f"  MCP, an admin session is opened (`initialize`), the clock starts, and `tools/call {UPDATE_TOOL}`",
        "  (channel stable) is sent: the server resolves and verifies the signed manifest, downloads",
        "  and checks the package, and the agent verifies it again, extracts it, installs it as",
        f"  `releases/{u['version']}` and switches `current`. The call answers `in_progress`; the agent",
        "  would ask systemd to restart both units a second later (with the simulated backend that",
        "  request is only recorded), so the script restarts them at the answer: both stopped",
        "  (SIGTERM), `mcp-raspi update pre-start` run (the agent unit's `ExecStartPre`), the agent",
        "  then the server started again from `current/bin/`, now the new release. The new server",
        "  checks its `/healthz` and a `tools/call` and reports to the new agent, which commits. The",
        "  clock stops when `version.json` says `last_update.status: succeeded` and `/healthz` answers",
        f"  version {u['version']} (polled every 5 ms). A device adds the agent's one-second restart",
        "  delay and systemd's own work to these figures.",
        "- Through the CLI: the same, with `mcp-raspi update server --no-wait` doing the resolve,",
        "  download, verification, install and switch in one process while the old services run;",
        "  the clock starts when it is started and the restart begins when it exits.",
        "- Each run checks that the package was downloaded from the repository during the timed",
        "  part, that `version.json` says `restarting` before the restart, and that the new",
        f"  processes run programs of `releases/{u['version']}`. Every wait fails the run after "
        f"{UPDATE_WAIT:.0f} s.",
        f"- {UPDATE_RUNS} runs of each path, alternating; medians are reported.",
        "- Peak RSS: for the servers and agents `VmHWM` from `/proc/PID/status`, of the old ones just",
        "  before they are stopped (after the install), of the new ones after the commit, in the",
        "  MCP runs. For the CLI programs `ru_maxrss` from `wait4`. Each is started by a shell in",
        "  the background and waited for by the script as a subreaper: a program started directly",
        "  by the script would count the script's own pages in its `ru_maxrss`. MB are 10^6 bytes.",
        "- Package sizes: the files under `target/packages/` (`make deb`, `make deb-arm64`,",
        "  `make deb-armhf`).",
        "",
    ]
    return "\n".join(lines)


def merge_update_section(existing, section):
    """`existing` with its `## Self-update` section replaced by `section`."""
    return merge_section(existing, section)


def merge_section(existing, section):
    """`existing` with the section named by `section`'s first line (`## ...`) replaced by
    `section`, or `section` put before `## Reproduce` (or at the end)."""
    heading = section.split("\n", 1)[0]
    lines = existing.splitlines()
    start = next((i for i, line in enumerate(lines) if line == heading), None)
    if start is not None:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    else:
        start = end = next((i for i, line in enumerate(lines) if line == "## Reproduce"), len(lines))
    return "\n".join(lines[:start] + section.rstrip("\n").split("\n") + [""] + lines[end:]).rstrip("\n") + "\n"



# ---------------------------------------------------------------- the report


def keep_other_sections(existing, rendered):
    """`rendered` with the `## ` sections of `existing` that it does not have (those other
    scripts write: hostile load, delta updates, recovery) put back before `## Reproduce`."""
    def sections(text):
        lines, found, name = text.splitlines(), {}, None
        for line in lines:
            if line.startswith("## "):
                name = line
                found[name] = []
            if name:
                found[name].append(line)
        return found
    have = sections(rendered)
    kept = [lines for name, lines in sections(existing).items() if name not in have]
    if not kept:
        return rendered
    lines = rendered.splitlines()
    at = next((i for i, line in enumerate(lines) if line == "## Reproduce"), len(lines))
    extra = [line for block in kept for line in block]
    return "\n".join(lines[:at] + extra + lines[at:]).rstrip("\n") + "\n"


def mb(kb):
    return kb * 1024 / 1e6


def result_rows(rows, which):
    """Table rows (measure, value, target, met) and the verdict line under them; `which`
    names the targets in that line ("of the update ")."""
    lines = [f"| {measure} | {value} | {target or '–'} | {'–' if met is None else verdict(met)} |"
             for measure, value, target, met in rows]
    missed = [row[0] for row in rows if row[3] is False]
    lines.append("")
    if missed:
        lines += [f"**{len(missed)} target(s) {which}missed:**", ""] + [f"- {m}" for m in missed]
    else:
        lines.append(f"Every target {which}is met.")
    return lines


def verdict(ok):
    return "yes" if ok else "**NO**"


AGENT_FORM = f"stateless {STATELESS_VERSION}, {AGENT_WRK_CONNECTIONS} connections"

RUN_LABELS = {
    "healthz": "GET /healthz",
    "session": f"tools/call system.get_info, session {SESSION_VERSION}",
    "stateless": f"tools/call system.get_info, stateless {STATELESS_VERSION}",
    "agent": f"tools/call {AGENT_TOOL} through the agent, {AGENT_FORM}",
}

# The tool each load run calls (its audit records are checked against wrk's count).
RUN_TOOLS = {"session": "system.get_info", "stateless": "system.get_info", "agent": AGENT_TOOL}

# How wrk is scheduled, in the order the runs are made. Under SCHED_BATCH the kernel does
# not let wrk preempt a running task when it wakes (it still gets its fair share of CPU);
# the default policy shows what sharing the CPUs with the load generator costs; with the
# CPUs split, wrk can neither preempt the server nor take its CPU time, so a run is
# bounded by the server's own time per request: the nearest this machine comes to clients
# on other machines. The split needs two CPUs.
SCHEDULES = {
    "batch": "wrk SCHED_BATCH",
    "default": "wrk default scheduling",
    "split": "CPUs split between server and wrk",
}
if len(os.sched_getaffinity(0)) < 2:
    del SCHEDULES["split"]


def run_key(schedule, key):
    return f"{schedule}/{key}"


def run_label(run):
    schedule, key = run.split("/")
    return f"{RUN_LABELS[key]}, {SCHEDULES[schedule]}"


def cpu_per_request(w):
    """The server's CPU time (user + system) over a load run, per request wrk counted."""
    if not w["requests"]:
        return "–"
    return f"{w['server_cpu_s'] / w['requests'] * 1e6:.1f} µs ({w['server_cpu_s']:.1f} CPU-s)"


def build_rows(r):
    """(measure, value, target, met) rows; met is True, False or None (no target)."""
    rows = []
    start = r["start_ms"]
    rows.append((f"Process start to first answer, median of {len(start)}", f"{statistics.median(start):.1f} ms",
                 f"≤ {TARGET_START_MS:.0f} ms", statistics.median(start) <= TARGET_START_MS))
    rows.append((f"Process start to first answer, slowest of {len(start)}", f"{max(start):.1f} ms", "", None))
    m0, m5, mload = r["mem_start"], r["mem_idle"], r["mem_load"]
    rows.append(("Server memory right after start, VmRSS / VmHWM",
                 f"{mb(m0['VmRSS']):.1f} / {mb(m0['VmHWM']):.1f} MB", "", None))
    x86 = r["machine"]["arch"] in ("x86_64", "AMD64")
    rows.append((f"Server idle memory after {IDLE_SECONDS} s, VmRSS", f"{mb(m5['VmRSS']):.1f} MB",
                 f"≤ {TARGET_IDLE_RSS_MB:.0f} MB (x86_64)" + ("" if x86 else ", not checked here"),
                 mb(m5["VmRSS"]) <= TARGET_IDLE_RSS_MB if x86 else None))
    rows.append((f"Server idle memory after {IDLE_SECONDS} s, VmHWM", f"{mb(m5['VmHWM']):.1f} MB", "", None))

    for schedule in SCHEDULES:
        health = r["wrk"][run_key(schedule, "healthz")]
        label = run_label(run_key(schedule, "healthz"))
        rows.append((f"{label}, throughput", f"{health['rps']:,.0f} req/s", "", None))
        rows.append((f"{label}, latency p50 / p99", f"{health['p50']:.2f} / {health['p99']:.2f} ms", "", None))
        rows.append((f"{label}, server CPU time per request", cpu_per_request(health), "", None))
        for key in ("session", "stateless"):
            label, w = run_label(run_key(schedule, key)), r["wrk"][run_key(schedule, key)]
            share = w["share"]
            rounds = ", ".join(f"{x:.1%}" for x in w["shares"])
            rows.append((f"{label}, throughput",
                         f"{w['rps']:,.0f} req/s ({share:.1%} of /healthz; rounds {rounds})",
                         f"≥ {TARGET_CALL_SHARE:.0%} of /healthz", share >= TARGET_CALL_SHARE))
            rows.append((f"{label}, latency p50", f"{w['p50']:.2f} ms", "", None))
            rows.append((f"{label}, latency p99", f"{w['p99']:.2f} ms", f"≤ {TARGET_CALL_P99_MS:.0f} ms",
                         w["p99"] <= TARGET_CALL_P99_MS))
            rows.append((f"{label}, server CPU time per request", cpu_per_request(w), "", None))
    rows.append(("Server memory after the load runs, VmRSS / VmHWM",
                 f"{mb(mload['VmRSS']):.1f} / {mb(mload['VmHWM']):.1f} MB", "", None))

    a0, a5, aload = r["agent_mem_start"], r["agent_mem_idle"], r["agent_mem_load"]
    rows.append(("Agent memory right after start, VmRSS / VmHWM",
                 f"{mb(a0['VmRSS']):.1f} / {mb(a0['VmHWM']):.1f} MB", "", None))
    rows.append((f"Agent idle memory after {IDLE_SECONDS} s, VmRSS", f"{mb(a5['VmRSS']):.1f} MB",
                 f"≤ {TARGET_AGENT_IDLE_RSS_MB:.0f} MB", mb(a5["VmRSS"]) <= TARGET_AGENT_IDLE_RSS_MB))
    rows.append((f"Agent idle memory after {IDLE_SECONDS} s, VmHWM", f"{mb(a5['VmHWM']):.1f} MB", "", None))
    for schedule in SCHEDULES:
        label, w = run_label(run_key(schedule, "agent")), r["wrk"][run_key(schedule, "agent")]
        rows.append((f"{label}, throughput", f"{w['rps']:,.0f} req/s", "", None))
        rows.append((f"{label}, latency p50", f"{w['p50']:.2f} ms", "", None))
        rows.append((f"{label}, latency p99", f"{w['p99']:.2f} ms",
                     f"≤ {TARGET_AGENT_CALL_P99_MS:.0f} ms at {AGENT_WRK_CONNECTIONS} connections",
                     w["p99"] <= TARGET_AGENT_CALL_P99_MS))
    rows.append(("Agent memory after the load runs, VmRSS / VmHWM",
                 f"{mb(aload['VmRSS']):.1f} / {mb(aload['VmHWM']):.1f} MB", "", None))
    return rows


def load_problems(r):
    """Errors seen during the load runs; each makes the figures of its run unreliable."""
    problems = []
    for run, w in r["wrk"].items():
        if w["non2xx"]:
            problems.append(f"{run}: wrk counted {w['non2xx']} non-2xx/3xx responses out of {w['requests']}")
        if w["socket_errors"]:
            problems.append(f"{run}: wrk counted {w['socket_errors']} socket errors (connect/read/write/timeout)")
    bad = {f"{tool} {outcome}": n for (tool, outcome), n in r["audit"].items() if outcome not in ("ok", COUNTED)}
    if bad:
        problems.append(f"audit log: tool calls that did not end ok: {bad}")
    # Every answer wrk counted must be a call the server made and audited as ok (the
    # record is written, or handed to the thread that is writing, before the answer is
    # sent; past the identity's audit budget, counted in an audit.suppressed record); the
    # checks before the runs add more.
    for tool in sorted(set(RUN_TOOLS.values())):
        answered = sum(w["requests"] for run, w in r["wrk"].items() if RUN_TOOLS.get(run.split("/")[1]) == tool)
        written, counted = r["audit"].get((tool, "ok"), 0), r["audit"].get((tool, COUNTED), 0)
        if written + counted < answered:
            problems.append(f"audit log: {written:,} ok records of {tool} and {counted:,} counted over the audit "
                            f"budget, fewer than the {answered:,} answers wrk counted for it")
    if r["agent_refusals"]:
        problems.append(f"the agent refused {len(r['agent_refusals'])} connection(s): {r['agent_refusals'][0]}")
    return problems


def audit_summary(audit):
    """`tool: N ok, M error (code)` for each tool, in the order of first appearance."""
    tools = {}
    for (tool, outcome), n in audit.items():
        tools.setdefault(tool, []).append((outcome, n))
    return "; ".join(f"`{tool}`: " + ", ".join(f"{n:,} {o}" for o, n in sorted(outcomes))
                     for tool, outcomes in sorted(tools.items())) or "none"


def render(r, rows, problems):
    m = r["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Figures of `mcp-raspi-server` and `raspi-ops-agent` written by `bench/run.py` (`make bench`).",
        "Both run with simulated hardware and the same configuration: no authentication, no rate",
        "limit and the server's audit log on as in production (every tool call writes one audit",
        "line; with the default `logging.audit_write_delay_ms` of 10 ms, the records of successful",
        "read-only calls are written in groups). All HTTP traffic is on 127.0.0.1, the server",
        "reaches the agent through its Unix socket, and the load generator shares the machine",
        "with both (see Method for how it is scheduled).",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| Date | {m['date']} |",
        f"| CPU | {m['cpu']} |",
        f"| CPUs available (nproc) | {m['nproc']} |",
        f"| Architecture | {m['arch']} |",
        f"| Kernel | {m['kernel']} |",
        f"| Server | {r['version'] or 'mcp-raspi-server'}, release build |",
        f"| Server binary size | {r['binary_size'] / 1e6:.1f} MB ({r['binary_size']:,} bytes) |",
        f"| Agent | {r['agent_version'] or 'raspi-ops-agent'}, release build |",
        f"| Agent binary size | {r['agent_binary_size'] / 1e6:.1f} MB ({r['agent_binary_size']:,} bytes) |",
        f"| Load generator | {r['wrk_version'] or 'wrk'}: {WRK_THREADS} threads, {WRK_CONNECTIONS} connections "
        f"({AGENT_WRK_CONNECTIONS} for `{AGENT_TOOL}`), {ROUNDS} rounds of {WRK_SECONDS} s per run, each run made "
        f"{len(SCHEDULES)} ways: " + "; ".join(SCHEDULES.values()) + " |",
        "",
        "## Results",
        "",
        "| Measure | Value | Target | Met |",
        "|---|---|---|---|",
    ]
    lines += result_rows(rows, "")
    lines.append("")
    if problems:
        lines += ["**The load runs reported errors; their figures are not reliable:**", ""]
        lines += [f"- {p}" for p in problems]
        lines.append("")
    lines += [
        "Load runs as counted by wrk:",
        "",
        "| Run | Connections | Requests | Non-2xx/3xx responses | Socket errors |",
        "|---|---|---|---|---|",
    ]
    for run, w in r["wrk"].items():
        lines.append(f"| {run_label(run)} | {w['connections']} | {w['requests']:,} | {w['non2xx']:,} "
                     f"| {w['socket_errors']:,} |")
    lines += [
        "",
        "Audit records written by the server during the whole run (including the checks and the",
        f"requests still in flight when wrk stopped): {audit_summary(r['audit'])}.",
        "",
        f"Pin state returned by the `{AGENT_TOOL}` check before its load run: "
        f"`{json.dumps(r['pin_state'], separators=(',', ':'))}`.",
        "",
        "## Method",
        "",
        f"- Start to first answer: the time from spawning the server to its first `200` from",
        f"  `GET /healthz`, polled every 0.5 ms; {START_RUNS} starts, each server stopped before the next.",
        "  No agent runs during these starts (the server connects to it only when a tool needs it).",
        "- For the memory and load figures the agent is started first and waited for (its",
        "  `listening on` line), then one server with the same configuration.",
        f"- Memory: `VmRSS` (resident now) and `VmHWM` (resident peak) from `/proc/PID/status`, read",
        f"  as soon as each process prints its `listening on` line, after {IDLE_SECONDS} s without requests,",
        "  and after all the load runs. MB are 10^6 bytes.",
        f"- Load: `wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{WRK_SECONDS}s --latency`, runs one after the other",
        "  against the same server, in rounds: `GET /healthz`; `tools/call system.get_info` in a session opened",
        f"  with `initialize` (protocol {SESSION_VERSION}, `Mcp-Session-Id` header); the same call in",
        f"  stateless form (protocol {STATELESS_VERSION}, version and capabilities in `_meta`).",
        f"- Through the agent: `wrk -t{WRK_THREADS} -c{AGENT_WRK_CONNECTIONS} -d{WRK_SECONDS}s --latency` of",
        f"  `tools/call {AGENT_TOOL}` with arguments `{json.dumps(AGENT_ARGUMENTS, separators=(',', ':'))}` in "
        f"stateless form (`Mcp-Name: {AGENT_TOOL}`),",
        "  after the three runs above. Each call goes from the server over the agent's Unix socket to",
        f"  the simulated GPIO backend and back; pin {AGENT_PIN} is the one pin on `gpio.pins`.",
        "- The requests come from `bench/post.lua`; every request of a run is identical. Before the",
        "  runs one call of each form is checked to return a result (and the agent's call to return",
        "  `isError: false` with the pin's state as structured content); after them wrk's non-2xx and",
        "  socket error counts are checked, the audit log is checked for calls that did not end ok and",
        "  for at least one ok record per answer wrk counted, and the agent's log for refused",
        "  connections. Latencies are wrk's percentiles.",
        f"- Rounds: the four runs are made {ROUNDS} times in turn, {WRK_SECONDS} s each. Throughput and latency",
        "  are the medians over the rounds and the request counts their sums. A call's share of",
        "  `/healthz` is taken round by round, against the `/healthz` run of the same round, and the",
        "  median of those shares is judged; every round's share is listed. On a machine this size",
        "  one run now and then loses a tenth of its throughput to something else, and a single",
        "  pair of runs then reads several points too high or too low.",
        "- Scheduling of the load generator: the four runs are made three times over. First with wrk",
        "  under `SCHED_BATCH`, then with the default policy, sharing the CPUs with the server; last",
        "  with the CPUs split (on a machine with two or more): the server and the agent on the first",
        "  half, wrk on the other. Under the default policy each wrk thread that wakes for a response",
        "  preempts the server in the middle of its work. The more time an answer takes, the more",
        "  often wrk sleeps and wakes, so this cost grows with the answer: `GET /healthz` is barely",
        "  affected, `tools/call` loses a quarter to a third of its throughput. `SCHED_BATCH` tells the",
        "  kernel not to preempt on wrk's wake-ups; wrk keeps its fair share of the CPUs, and that",
        "  share is what holds `GET /healthz` back, so a call's share of it reads high. With the CPUs",
        "  split neither happens: each run is bounded by the server's own CPU time per request (wrk",
        "  on its half keeps up with `/healthz` or nearly), the nearest this machine comes to clients",
        "  on other machines, with the server on half the CPUs. Every target is judged on each.",
        "  Under `SCHED_BATCH` a wrk thread that wakes waits for a CPU instead of taking one, and its",
        "  latency percentiles include that wait, so they read worse than the server's own time.",
        "- Server CPU time per request: user plus system time of the server process from",
        "  `/proc/PID/stat` over the run, divided by the requests wrk counted. It includes the",
        "  kernel's work for the server's sockets, and the cost of being preempted by the load",
        "  generator.",
        "",
        "## Reproduce",
        "",
        "```sh",
        "make bench",
        "# which is:",
        "cargo build --release --bins",
        "make deb    # the package the update scenario installs",
        "python3 bench/run.py --server target/release/mcp-raspi-server \\",
        "    --agent target/release/raspi-ops-agent --cli target/release/mcp-raspi \\",
        "    --packages target/packages --out BENCHMARKS.md",
        "# the update scenario alone, replacing its section of BENCHMARKS.md:",
        "python3 bench/run.py --server target/release/mcp-raspi-server \\",
        "    --agent target/release/raspi-ops-agent --only update",
        "# delta updates between two releases' packages for this machine, adding their section:",
        "make bench-delta DELTA_FROM=OLD.deb DELTA_TO=NEW.deb",
        "# hostile load and the soak (about 6 min), adding their section:",
        "python3 bench/hostile.py --server target/release/mcp-raspi-server \\",
        "    --agent target/release/raspi-ops-agent --out BENCHMARKS.md [--only flood|slow|soak]",
        "```",
        "",
        "It needs `wrk` (installed with apt-get when missing and run as root) and Python 3.11.",
        "The server and the agent refuse to run as root; when the script runs as root it starts both",
        f"as uid/gid {UNPRIVILEGED}. The agent admits only that uid and gives its socket to that gid.",
        f"A run takes about {IDLE_SECONDS + 4 * len(SCHEDULES) * ROUNDS * WRK_SECONDS + 10} s, and the update "
        "scenario about 10 s more.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def bench(binary, agent_binary, wrk):
    r = {"machine": machine(), "binary_size": os.path.getsize(binary),
         "version": command_output([binary, "--version"]), "wrk_version": command_output([wrk, "-v"]),
         "agent_binary_size": os.path.getsize(agent_binary),
         "agent_version": command_output([agent_binary, "--version"])}
    r["wrk_version"] = " ".join(r["wrk_version"].split()[:2])
    workdir = Workdir()
    server = agent = None
    try:
        log(f"start to first answer, {START_RUNS} runs")
        r["start_ms"] = measure_start(binary, workdir)

        log("starting the agent, then the server, for the memory and load runs")
        agent = Agent(agent_binary, workdir)
        agent.wait_listening()
        r["agent_mem_start"] = agent.memory()
        server = Server(binary, workdir, "127.0.0.1:0", capture_stdout=True)
        port = server.listening_port()
        r["mem_start"] = server.memory()
        log(f"idle for {IDLE_SECONDS} s")
        time.sleep(IDLE_SECONDS)
        r["mem_idle"] = server.memory()
        r["agent_mem_idle"] = agent.memory()

        sid = open_session(port)
        check_stateless(port)
        r["pin_state"] = check_agent_call(port)
        log(f"{AGENT_TOOL} through the agent answers {json.dumps(r['pin_state'])}")
        base = f"http://127.0.0.1:{port}"
        r["wrk"] = {}
        runs = (("healthz", f"{base}/healthz", None, WRK_CONNECTIONS),
                ("session", f"{base}/mcp", ["session", sid], WRK_CONNECTIONS),
                ("stateless", f"{base}/mcp", ["stateless"], WRK_CONNECTIONS),
                ("agent", f"{base}/mcp", ["stateless", AGENT_TOOL, json.dumps(AGENT_ARGUMENTS)],
                 AGENT_WRK_CONNECTIONS))
        for schedule in SCHEDULES:
            server_cpus = cpu_halves()[0] if schedule == "split" else os.sched_getaffinity(0)
            pin(server.pid, server_cpus)
            pin(agent.pid, server_cpus)
            rounds = {key: [] for key, *_ in runs}
            for n in range(1, ROUNDS + 1):
                for key, url, args, connections in runs:
                    log(f"wrk ({SCHEDULES[schedule]}), round {n} of {ROUNDS}: {key}, {connections} connections, "
                        f"{WRK_SECONDS} s")
                    cpu_before = server.cpu_seconds()
                    w = run_wrk(wrk, url, args, connections, schedule)
                    w["server_cpu_s"] = server.cpu_seconds() - cpu_before
                    rounds[key].append(w)
                    if server.proc.poll() is not None:
                        raise server.died(f"the server stopped during the {key} load run")
                    if agent.proc.poll() is not None:
                        raise agent.died(f"the agent stopped during the {key} load run")
            for key, _, _, _ in runs:
                calls = key in ("session", "stateless")
                r["wrk"][run_key(schedule, key)] = combine(rounds[key], rounds["healthz"] if calls else None)
        r["mem_load"] = server.memory()
        r["agent_mem_load"] = agent.memory()
        if not healthz_ok(port):
            raise BenchError("GET /healthz does not answer 200 after the load runs")
        r["agent_refusals"] = agent.refusals()
        # Stopped first: the server writes the counts of calls over the audit budget when it
        # stops (and when a budget's hour ends).
        server.stop()
        server = None
        r["audit"] = workdir.audit_records()
        return r
    finally:
        if server:
            server.stop()
        if agent:
            agent.stop()
        workdir.remove()


def executable(path, what):
    binary = os.path.abspath(path)
    if not os.access(binary, os.X_OK):
        raise BenchError(f"{path} is not an executable file (build the {what}: cargo build --release --bins)")
    return binary


def print_rows(rows):
    width = max(len(row[0]) for row in rows)
    print()
    for measure, value, target, met in rows:
        mark = "" if met is None else ("  ok" if met else "  MISSED")
        print(f"  {measure:<{width}}  {value}{'  (target ' + target + ')' if target else ''}{mark}")
    return [row[0] for row in rows if row[3] is False]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", required=True, help="the mcp-raspi-server binary (a release build)")
    parser.add_argument("--agent", required=True, help="the raspi-ops-agent binary (a release build)")
    parser.add_argument("--cli", help="the mcp-raspi program of the same build (default: beside --server)")
    parser.add_argument("--packages", default="target/packages",
                        help="directory of the .deb files of the build (make deb), for the update scenario")
    parser.add_argument("--only", choices=["update"],
                        help="run only the update scenario and replace its section of the existing report")
    parser.add_argument("--out", default="BENCHMARKS.md", help="Markdown report to write")
    args = parser.parse_args()
    began = time.monotonic()
    try:
        binary = executable(args.server, "server")
        agent_binary = executable(args.agent, "agent")
        cli = executable(args.cli or os.path.join(os.path.dirname(binary), "mcp-raspi"), "mcp-raspi program")
        wrk = ensure_wrk() if args.only is None else None
        # The update scenario first: it is short, and fails early when the package is missing.
        u = bench_update(cli, args.packages)
        r = bench(binary, agent_binary, wrk) if args.only is None else None
    except (BenchError, OSError, subprocess.SubprocessError) as e:
        print(f"bench: FAILED: {e}", file=sys.stderr)
        return 2

    urows = update_rows(u)
    section = render_update(u, urows)
    out = Path(args.out)
    if r is None:
        existing = out.read_text() if out.exists() else "# Benchmarks\n"
        out.write_text(merge_update_section(existing, section))
        missed, problems, rows = [], [], []
    else:
        rows = build_rows(r)
        problems = load_problems(r)
        existing = out.read_text() if out.exists() else ""
        out.write_text(merge_update_section(keep_other_sections(existing, render(r, rows, problems)), section))
        missed = print_rows(rows)
    missed += print_rows(urows)
    print()
    print(f"bench: {len(missed)} target(s) missed" if missed else "bench: every target met")
    for p in problems:
        print(f"bench: LOAD ERROR: {p}", file=sys.stderr)
    print(f"bench: report written to {args.out} ({time.monotonic() - began:.0f} s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
