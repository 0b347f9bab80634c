#!/usr/bin/env python3
"""Hostile load and a soak, measured on 127.0.0.1, written as the "Hostile load and soak"
section of a Markdown report (the other sections are bench/run.py's).

    python3 bench/hostile.py --server target/release/mcp-raspi-server \
        --agent target/release/raspi-ops-agent --out BENCHMARKS.md [--only flood|slow|soak]
        [--soak-seconds 180] [--label LABEL]

Scenarios (each against its own server and agent, started with a file-descriptor limit of
FD_LIMIT, the default a service gets):
  * flood: IDLE_CONNECTIONS connections that send nothing and SLOW_CONNECTIONS that trickle
    request headers are held for FLOOD_SECONDS (any the server closes is opened again),
    while a fresh client calls GET /healthz and tools/call system.get_info on a new
    connection every FRESH_EVERY seconds. Reports the fresh client's failures and latency,
    and the server's RSS idle (after 50 calls and CALM_SECONDS), during the flood and
    CALM_SECONDS after it ends. Targets:
    no failure, p99 <= TARGET_FLOOD_P99_MS, RSS after within 20 % of idle.
  * slow: SLOW_TOOL_CLIENTS clients loop process.list while one client measures
    gpio.read_pin and system.get_info for SLOW_SECONDS, against the same calls without the
    load. Target: p50 <= TARGET_CHEAP_P50_MS under load.
  * soak: SOAK_CLIENTS clients, each with its own session, loop a mix of tools for
    --soak-seconds; reports errors (target 0), latency, the RSS of server and agent after
    warm-up, in the middle and at the end (target: growth under 10 %), and whether the
    audit trail holds one line per successful call.

Standard library only (Python 3.11), Linux. Exit status 0 when every scenario ran, 2 when
one could not.
"""

import argparse
import http.client
import json
import os
import re
import resource
import secrets
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

FD_LIMIT = 1024
IDLE_CONNECTIONS = 2000
SLOW_CONNECTIONS = 500
FLOOD_SECONDS = 60
FRESH_EVERY = 0.05
# Longer than the 10 s a blocking-pool thread of the server stays after its last job.
CALM_SECONDS = 15
SLOW_TOOL_CLIENTS = 8
SLOW_SECONDS = 10
SOAK_CLIENTS = 50
SOAK_WARMUP = 30
TARGET_FLOOD_P99_MS = 50.0
TARGET_CHEAP_P50_MS = 5.0
TARGET_RSS_AFTER = 1.2  # RSS after the flood / idle RSS
TARGET_SOAK_GROWTH = 1.1  # RSS at the end / after warm-up
UNPRIVILEGED = 65534
SOAK_MIX = [
    ("system.get_info", {}),
    ("system.get_health_snapshot", {}),
    ("metrics.get_snapshot", {"sample_ms": 0}),
    ("process.list", {"limit": 5, "sample_ms": 0}),
    ("gpio.read_pin", {"pin": 17}),
    ("logs.get_recent_app_logs", {"limit": 5}),
]


class BenchError(Exception):
    pass


def log(message):
    print(f"[hostile] {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for {pid}")


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Stack:
    """A server and its agent, token authentication, simulated hardware, in a temp dir."""

    # Set by --legacy: keys an older build does not know are left out of the configuration.
    legacy = False

    def __init__(self, server_bin, agent_bin, extra_yaml=""):
        self.dir = Path(tempfile.mkdtemp(prefix="mcp-raspi-hostile-"))
        self.port = free_port()
        self.token = "tok-" + secrets.token_hex(16)
        uid = UNPRIVILEGED if os.geteuid() == 0 else os.getuid()
        self.config = self.dir / "config.yml"
        self.config.write_text(f"""config_version: "1.2"
server:
  listen: "127.0.0.1:{self.port}"
security:
  auth_mode: token
  secrets_file: null
  rate_limit:
    requests_per_minute: 0
  tokens:
    - {{ identity: admin, role: admin, env: BENCH_ADMIN_TOKEN }}
logging:
  level: info
  journald: off
  app_path: {self.dir}/log/app.log
  audit_path: {self.dir}/log/audit.log
{"" if Stack.legacy else "  audit_budget_mb_per_hour: 0"}
paths:
  state_dir: {self.dir}/state
  install_dir: {self.dir}/opt
ops_agent:
  socket_path: {self.dir}/ops-agent.sock
  allowed_users: ["{uid}"]
  socket_group: "{uid}"
platform:
  backend: simulated
experimental_features:
  enabled: true
  features:
    - {{ name: gpio, enabled: true, acknowledged_risks: true }}
gpio:
  pins:
    - {{ pin: 17, modes: [input, output] }}
{extra_yaml}""")
        if os.geteuid() == 0:
            os.chown(self.dir, UNPRIVILEGED, UNPRIVILEGED)
        env = {**os.environ, "BENCH_ADMIN_TOKEN": self.token}
        self.agent = self._spawn([agent_bin, "--config", str(self.config)], env, "listening on")
        self.server = self._spawn([server_bin, "--config", str(self.config)], env, "listening on http")

    def _spawn(self, argv, env, first):
        def limits():
            resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(UNPRIVILEGED)
                os.setuid(UNPRIVILEGED)

        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                preexec_fn=limits, text=True)
        line = proc.stdout.readline()
        if not line.startswith(first):
            proc.kill()
            raise BenchError(f"{argv[0]} did not start: {line!r}")
        return proc

    def headers(self, session=None):
        h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
             "Authorization": f"Bearer {self.token}"}
        if session:
            h["Mcp-Session-Id"] = session
        return h

    def connection(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def open_session(self, conn):
        body = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}}
        conn.request("POST", "/mcp", json.dumps(body), self.headers())
        r = conn.getresponse()
        r.read()
        return r.getheader("mcp-session-id")

    def call(self, conn, session, tool, arguments, id_=1):
        body = {"jsonrpc": "2.0", "id": id_, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
        conn.request("POST", "/mcp", json.dumps(body), self.headers(session))
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            return False
        return json.loads(data).get("result", {}).get("isError") is False

    def stop(self):
        for p in (self.server, self.agent):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def audit_lines(self):
        total = 0
        for f in (self.dir / "log").glob("audit.log*"):
            with open(f, "rb") as fh:
                total += sum(1 for _ in fh)
        return total

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- flood


def flood(server_bin, agent_bin):
    stack = Stack(server_bin, agent_bin)
    try:
        # Idle after some work, as a server is once it has answered: the code of its paths
        # is paged in, and its threads have started.
        warm = stack.connection()
        session = stack.open_session(warm)
        for i in range(50):
            stack.call(warm, session, "system.get_info", {}, i)
        warm.close()
        time.sleep(CALM_SECONDS)
        idle_rss = rss_kb(stack.server.pid)
        stop = threading.Event()
        held = {"open": 0, "reopened": 0}

        def attacker(count, slow):
            socks = []
            while not stop.is_set():
                while len(socks) < count and not stop.is_set():
                    try:
                        s = socket.create_connection(("127.0.0.1", stack.port), timeout=2)
                        s.setblocking(False)
                        if slow:
                            s.send(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                        socks.append(s)
                        held["reopened"] += 1
                    except OSError:
                        time.sleep(0.01)
                time.sleep(1)
                alive = []
                for s in socks:
                    try:
                        if slow:
                            s.send(b"X: y\r\n")
                        elif s.recv(1) == b"":
                            raise OSError("closed")
                        alive.append(s)
                    except BlockingIOError:
                        alive.append(s)
                    except OSError:
                        s.close()
                socks = alive
                held["open"] = len(socks)
            for s in socks:
                s.close()

        threads = [threading.Thread(target=attacker, args=(IDLE_CONNECTIONS, False)),
                   threading.Thread(target=attacker, args=(SLOW_CONNECTIONS, True))]
        for t in threads:
            t.start()
        time.sleep(3)
        latencies, failures, rss_during = [], 0, []
        end = time.monotonic() + FLOOD_SECONDS
        def timed(request):
            """One request on a new connection (connecting included): its latency, or None."""
            started = time.monotonic()
            conn = stack.connection()
            try:
                ok = request(conn)
            except (OSError, http.client.HTTPException):
                ok = False
            finally:
                conn.close()
            return (time.monotonic() - started) * 1000 if ok else None

        def healthz(conn):
            conn.request("GET", "/healthz")
            r = conn.getresponse()
            r.read()
            return r.status == 200

        def tool_call(conn):
            return stack.call(conn, session, "system.get_info", {})

        while time.monotonic() < end:
            for request in (healthz, tool_call):
                latency = timed(request)
                if latency is None:
                    failures += 1
                else:
                    latencies.append(latency)
            rss_during.append(rss_kb(stack.server.pid))
            time.sleep(FRESH_EVERY)
        stop.set()
        for t in threads:
            t.join()
        time.sleep(CALM_SECONDS)
        after_rss = rss_kb(stack.server.pid)
        return {
            "attack_connections_opened": held["reopened"],
            "fresh_calls": len(latencies) + failures,
            "fresh_failures": failures,
            "p50_ms": round(pct(latencies, 0.5), 2),
            "p99_ms": round(pct(latencies, 0.99), 2),
            "idle_rss_mb": round(idle_rss / 1024, 1),
            "peak_rss_mb": round(max(rss_during) / 1024, 1),
            "after_rss_mb": round(after_rss / 1024, 1),
            "ok": failures == 0 and pct(latencies, 0.99) <= TARGET_FLOOD_P99_MS
            and after_rss <= idle_rss * TARGET_RSS_AFTER,
        }
    finally:
        stack.stop()
        stack.remove()


# ---------------------------------------------------------------- slow tools


def cheap_latencies(stack, seconds):
    conn = stack.connection()
    session = stack.open_session(conn)
    out = {"gpio.read_pin": [], "system.get_info": []}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for tool, args in (("gpio.read_pin", {"pin": 17}), ("system.get_info", {})):
            started = time.monotonic()
            if not stack.call(conn, session, tool, args):
                raise BenchError(f"{tool} failed")
            out[tool].append((time.monotonic() - started) * 1000)
    conn.close()
    return out


def slow(server_bin, agent_bin):
    stack = Stack(server_bin, agent_bin)
    try:
        time.sleep(1)
        quiet = cheap_latencies(stack, 3)
        stop = threading.Event()
        scans = [0]

        def scanner():
            conn = stack.connection()
            session = stack.open_session(conn)
            while not stop.is_set():
                stack.call(conn, session, "process.list", {"limit": 100, "sample_ms": 0})
                scans[0] += 1
            conn.close()

        threads = [threading.Thread(target=scanner) for _ in range(SLOW_TOOL_CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(1)
        loaded = cheap_latencies(stack, SLOW_SECONDS)
        stop.set()
        for t in threads:
            t.join()
        result = {"scans": scans[0]}
        for tool in quiet:
            result[tool] = {"quiet_p50_ms": round(pct(quiet[tool], 0.5), 2),
                            "loaded_p50_ms": round(pct(loaded[tool], 0.5), 2),
                            "loaded_p99_ms": round(pct(loaded[tool], 0.99), 2)}
        result["ok"] = all(result[t]["loaded_p50_ms"] <= TARGET_CHEAP_P50_MS for t in quiet)
        return result
    finally:
        stack.stop()
        stack.remove()


# ---------------------------------------------------------------- soak


def soak(server_bin, agent_bin, seconds):
    stack = Stack(server_bin, agent_bin)
    try:
        stop = threading.Event()
        counts = {"ok": 0, "errors": 0}
        latencies = []
        lock = threading.Lock()

        def client(n):
            conn = stack.connection()
            session = stack.open_session(conn)
            i = n
            mine_ok, mine_err, mine_lat = 0, 0, []
            while not stop.is_set():
                tool, args = SOAK_MIX[i % len(SOAK_MIX)]
                i += 1
                started = time.monotonic()
                try:
                    ok = stack.call(conn, session, tool, args, i)
                except (OSError, http.client.HTTPException):
                    ok = False
                    conn = stack.connection()
                if ok:
                    mine_ok += 1
                    mine_lat.append((time.monotonic() - started) * 1000)
                else:
                    mine_err += 1
            with lock:
                counts["ok"] += mine_ok
                counts["errors"] += mine_err
                latencies.extend(mine_lat)
            conn.close()

        threads = [threading.Thread(target=client, args=(n,)) for n in range(SOAK_CLIENTS)]
        for t in threads:
            t.start()
        rss = {}
        time.sleep(SOAK_WARMUP)
        rss["start"] = (rss_kb(stack.server.pid), rss_kb(stack.agent.pid))
        time.sleep(max(0, seconds / 2 - SOAK_WARMUP))
        rss["middle"] = (rss_kb(stack.server.pid), rss_kb(stack.agent.pid))
        time.sleep(seconds / 2)
        rss["end"] = (rss_kb(stack.server.pid), rss_kb(stack.agent.pid))
        stop.set()
        for t in threads:
            t.join()
        stack.stop()
        lines = stack.audit_lines()
        growth = max(rss["end"][i] / rss["start"][i] for i in (0, 1))
        return {
            "seconds": seconds,
            "clients": SOAK_CLIENTS,
            "calls": counts["ok"] + counts["errors"],
            "errors": counts["errors"],
            "p50_ms": round(pct(latencies, 0.5), 2),
            "p99_ms": round(pct(latencies, 0.99), 2),
            "rss_mb": {k: [round(v[0] / 1024, 1), round(v[1] / 1024, 1)] for k, v in rss.items()},
            "audit_lines": lines,
            "successful_calls": counts["ok"],
            "ok": counts["errors"] == 0 and growth < TARGET_SOAK_GROWTH and lines == counts["ok"],
        }
    finally:
        stack.stop()
        stack.remove()


# ---------------------------------------------------------------- report


def render(results, label):
    out = ["## Hostile load and soak", "",
           f"`bench/hostile.py`, {label}: the server and agent started with {FD_LIMIT} file descriptors each, "
           "token authentication (one token for every client, so its rate limit and audit budget are off), "
           "simulated hardware, on 127.0.0.1.", ""]
    f = results.get("flood")
    if f:
        out += ["### Connection flood", "",
                f"{IDLE_CONNECTIONS} idle and {SLOW_CONNECTIONS} slow-header connections held for {FLOOD_SECONDS} s "
                f"(reopened when closed: {f['attack_connections_opened']} opened in all), while a fresh client "
                f"calls /healthz and tools/call system.get_info (in the session it opened before), each on a new "
                f"connection (latency counts the connect).", "",
                "| figure | value | target |", "|---|---|---|",
                f"| fresh client's requests failed | {f['fresh_failures']} of {f['fresh_calls']} | 0 |",
                f"| fresh client's latency p50 / p99 | {f['p50_ms']} / {f['p99_ms']} ms | p99 <= {TARGET_FLOOD_P99_MS:g} ms |",
                f"| server RSS idle / peak / {CALM_SECONDS} s after | {f['idle_rss_mb']} / {f['peak_rss_mb']} / "
                f"{f['after_rss_mb']} MB | after <= idle x {TARGET_RSS_AFTER} |",
                f"| verdict | {'met' if f['ok'] else 'NOT met'} | |", ""]
    s = results.get("slow")
    if s:
        out += ["### A slow tool beside cheap ones", "",
                f"{SLOW_TOOL_CLIENTS} clients loop process.list (limit 100, {s['scans']} scans in all) while one "
                f"client calls the cheap tools for {SLOW_SECONDS} s.", "",
                "| tool | p50 quiet | p50 under load | p99 under load | target |", "|---|---|---|---|---|"]
        for tool in ("gpio.read_pin", "system.get_info"):
            t = s[tool]
            out.append(f"| {tool} | {t['quiet_p50_ms']} ms | {t['loaded_p50_ms']} ms | {t['loaded_p99_ms']} ms | "
                       f"p50 <= {TARGET_CHEAP_P50_MS:g} ms |")
        out += [f"| verdict | | {'met' if s['ok'] else 'NOT met'} | | |", ""]
    k = results.get("soak")
    if k:
        r = k["rss_mb"]
        out += ["### Soak", "",
                f"{k['clients']} clients, one session each, loop {', '.join(t for t, _ in SOAK_MIX)} for "
                f"{k['seconds']} s.", "",
                "| figure | value | target |", "|---|---|---|",
                f"| calls / errors | {k['calls']} / {k['errors']} | 0 errors |",
                f"| latency p50 / p99 | {k['p50_ms']} / {k['p99_ms']} ms | |",
                f"| server RSS after warm-up / middle / end | {r['start'][0]} / {r['middle'][0]} / {r['end'][0]} MB | "
                f"growth < {round((TARGET_SOAK_GROWTH - 1) * 100)} % |",
                f"| agent RSS after warm-up / middle / end | {r['start'][1]} / {r['middle'][1]} / {r['end'][1]} MB | "
                f"growth < {round((TARGET_SOAK_GROWTH - 1) * 100)} % |",
                f"| audit lines / successful calls | {k['audit_lines']} / {k['successful_calls']} | equal |",
                f"| verdict | {'met' if k['ok'] else 'NOT met'} | |", ""]
    return "\n".join(out) + "\n"


def merge(existing, section):
    lines = existing.splitlines()
    title = section.splitlines()[0]
    start = next((i for i, line in enumerate(lines) if line == title), None)
    if start is not None:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    else:
        start = end = next((i for i, line in enumerate(lines) if line == "## Reproduce"), len(lines))
    return "\n".join(lines[:start] + section.rstrip("\n").split("\n") + [""] + lines[end:]).rstrip("\n") + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--agent", required=True)
    parser.add_argument("--out", default="BENCHMARKS.md")
    parser.add_argument("--only", choices=["flood", "slow", "soak"])
    parser.add_argument("--soak-seconds", type=int, default=180)
    parser.add_argument("--label", default="this build")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON and write no report")
    parser.add_argument("--legacy", action="store_true",
                        help="a build from before the audit budget (for figures before and after)")
    args = parser.parse_args()
    Stack.legacy = args.legacy
    # The attack needs more descriptors than the servers get.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = IDLE_CONNECTIONS + SLOW_CONNECTIONS + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard) if hard != resource.RLIM_INFINITY else want, hard))
    results = {}
    try:
        for name in ("flood", "slow", "soak"):
            if args.only and args.only != name:
                continue
            log(f"{name} ...")
            if name == "flood":
                results[name] = flood(args.server, args.agent)
            elif name == "slow":
                results[name] = slow(args.server, args.agent)
            else:
                results[name] = soak(args.server, args.agent, args.soak_seconds)
            log(f"{name}: {json.dumps(results[name])}")
    except BenchError as e:
        log(f"cannot run: {e}")
        return 2
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    out = Path(args.out)
    existing = out.read_text() if out.exists() else "# Benchmarks\n"
    out.write_text(merge(existing, render(results, args.label)))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
