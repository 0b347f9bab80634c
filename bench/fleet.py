#!/usr/bin/env python3
"""Figures of mcp-fleet over many devices, written to the "Fleet" section of BENCHMARKS.md.

    python3 bench/fleet.py --server target/release/mcp-raspi-server \
        --agent target/release/raspi-ops-agent --fleet target/release/mcp-fleet \
        --devices 100 --out BENCHMARKS.md

Starts DEVICES simulated Pis on loopback (each a server and its ops agent, with a state,
logs and configuration of its own, token authentication), writes a fleet file for them and
runs the workstation's commands against them, as `make fleet-proof` does:

* `exec --all "mcp-raspi-cli system get-health"`: wall time, and each device's time from
  the request to its answer (median, p99, slowest);
* `health` over all of them;
* `health` again with STOPPED devices stopped: it must finish within one device's timeout,
  and report exactly those as unreachable;

and, from ROLLOUT (the JSON `tests/fleet_rollout.rs` writes when `make fleet-proof` runs it
over as many devices), the rolling update that halts at the batch of the broken devices and
the `--resume` that finishes it, with the halted run's report; from CONFIG (written by
`tests/fleet_config.rs`), `drift` finding three files edited by hand and the `config deploy`
that brings them back.
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the server and agent processes, and report helpers)

SECTION = "## Fleet"
TOKEN_ENV = "BENCH_FLEET_TOKEN"
TOKEN = "bench-fleet-token-0123456789abcdef"
STOPPED = 5
TIMEOUT_SECONDS = 5
CONCURRENCY = 16


class DeviceWorkdir(run.Workdir):
    """A device's directory: the benchmark configuration with token authentication."""

    def __init__(self):
        super().__init__()
        self.env = {TOKEN_ENV: TOKEN}

    def config_text(self):
        text = super().config_text()
        return text.replace(
            "  auth_mode: none\n  anonymous_role: admin\n  tokens: []\n",
            f"  auth_mode: token\n  tokens:\n    - {{ identity: fleet, role: admin, env: {TOKEN_ENV} }}\n",
        )


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def fleet_command(fleet, fleet_file, args):
    started = time.monotonic()
    done = subprocess.run([fleet, "--file", str(fleet_file), *args, "--json"], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", TOKEN_ENV: TOKEN}, timeout=600)
    wall = time.monotonic() - started
    try:
        report = json.loads(done.stdout)
    except ValueError:
        raise run.BenchError(f"mcp-fleet {' '.join(args)} printed no JSON (exit {done.returncode}): "
                             f"{done.stdout[:300]} {done.stderr[:300]}")
    return done.returncode, report, wall


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", required=True)
    p.add_argument("--agent", required=True)
    p.add_argument("--fleet", required=True)
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--rollout", help="the rolling update's figures (JSON)")
    p.add_argument("--config", help="the drift and config deploy figures (JSON)")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    server_bin, agent_bin, fleet = (str(Path(x).resolve()) for x in (a.server, a.agent, a.fleet))
    m = run.machine()
    devices = []  # (workdir, agent, server, port)
    home = Path(tempfile.mkdtemp(prefix="mcp-fleet-bench-"))
    try:
        started = time.monotonic()
        for i in range(a.devices):
            workdir = DeviceWorkdir()
            agent = run.Agent(agent_bin, workdir)
            devices.append([workdir, agent, None, None])
            agent.wait_listening()
            server = run.Server(server_bin, workdir, "127.0.0.1:0", capture_stdout=True)
            devices[-1][2] = server
            devices[-1][3] = server.listening_port()
        start_seconds = time.monotonic() - started
        run.log(f"{a.devices} devices started in {start_seconds:.1f} s")
        fleet_file = home / "fleet-config.yml"
        lines = ["fleet:", "  id: bench", "  connection:", '    url: "http://{hostname}/mcp"',
                 f"    credential: {{ token_env: {TOKEN_ENV} }}", f"    timeout_seconds: {TIMEOUT_SECONDS}",
                 f"    concurrency: {CONCURRENCY}", "  devices:"]
        for i, (_, _, _, port) in enumerate(devices):
            tag = "even" if i % 2 == 0 else "odd"
            lines.append(f'    - {{ id: dev-{i:03}, hostname: "127.0.0.1:{port}", tags: [{tag}] }}')
        fleet_file.write_text("\n".join(lines) + "\n")

        code, report, exec_wall = fleet_command(fleet, fleet_file, ["exec", "--all", "mcp-raspi-cli system get-health"])
        ms = [r["milliseconds"] for r in report["results"]]
        exec_ok = sum(1 for r in report["results"] if r["ok"])
        if code != 0 or exec_ok != a.devices:
            raise run.BenchError(f"exec failed on {a.devices - exec_ok} devices: "
                                 f"{[r.get('error') for r in report['results'] if not r['ok']][:3]}")
        code, report, health_wall = fleet_command(fleet, fleet_file, ["health"])
        reachable = report["summary"]["devices"] - report["summary"]["unreachable"]
        for workdir, agent, server, _ in devices[-STOPPED:]:
            server.stop()
        code, report, stopped_wall = fleet_command(fleet, fleet_file, ["health"])
        unreachable = [r["device"] for r in report["results"] if not r["reachable"]]
        wanted = [f"dev-{i:03}" for i in range(a.devices - STOPPED, a.devices)]
    except run.BenchError as e:
        print(f"bench/fleet.py: {e}", file=sys.stderr)
        return 2
    finally:
        for workdir, agent, server, _ in devices:
            if server:
                server.stop()
            agent.stop()
            workdir.remove()
        shutil.rmtree(home, ignore_errors=True)

    yes = lambda ok: "yes" if ok else "**NO**"  # noqa: E731
    rows = [
        "| Measure | Value | Target | Met |",
        "|---|---|---|---|",
        f"| Devices (server and ops agent each, simulated hardware, token auth) started | {a.devices} in "
        f"{start_seconds:.1f} s | – | – |",
        f"| `exec --all \"mcp-raspi-cli system get-health\"`, wall time | {exec_wall:.2f} s | – | – |",
        f"| The same, per device from request to answer: median / p99 / slowest | {statistics.median(ms):.0f} / "
        f"{percentile(ms, 0.99):.0f} / {max(ms):.0f} ms | – | – |",
        f"| The same, devices that answered | {exec_ok} of {a.devices} | all | {yes(exec_ok == a.devices)} |",
        f"| `health`, all running, wall time | {health_wall:.2f} s ({reachable} reachable) | – | – |",
        f"| `health` with {STOPPED} devices stopped, wall time | {stopped_wall:.2f} s | ≤ {TIMEOUT_SECONDS} s (one "
        f"device's timeout) | {yes(stopped_wall <= TIMEOUT_SECONDS)} |",
        f"| The same, devices reported unreachable | {', '.join(unreachable) or 'none'} | exactly the stopped ones | "
        f"{yes(unreachable == wanted)} |",
    ]
    rollout = []
    if a.rollout:
        r = json.loads(Path(a.rollout).read_text())
        report = "\n".join(line for line in r["halted_report"].splitlines() if not line.startswith("the record is"))
        rows += [
            f"| Rolling update, {r['devices']} devices in batches of {r['batch_size']}, {', '.join(r['broken'])} "
            f"broken: until it halted | {r['halted_seconds']:.1f} s ({r['batches_before_halt']} batches passed) | – | – |",
            f"| The same, `--resume` once fixed, to the end | {r['resumed_seconds']:.1f} s "
            f"({r['batches_after_resume']} batches) | – | – |",
        ]
        rollout = [
            "The rolling update's report when it halted (`mcp-fleet update --version V --strategy rolling "
            f"--batch-size {r['batch_size']}`):",
            "",
            "```",
            report,
            "```",
            "",
        ]
    if a.config:
        c = json.loads(Path(a.config).read_text())
        rows += [
            f"| `drift`, {c['devices']} devices, {len(c['edited'])} edited by hand ({', '.join(c['edited'])}) | "
            f"{c['drift_seconds']:.2f} s, exactly those drifted | – | – |",
            f"| `config deploy --dry-run` (each device checks its file and answers the diff) | "
            f"{c['dry_run_seconds']:.2f} s | – | – |",
            f"| `config deploy`, until the {len(c['edited'])} devices run their files again | "
            f"{c['deploy_seconds']:.2f} s | – | – |",
        ]
    section = "\n".join([
        SECTION,
        "",
        f"`bench/fleet.py` (`make fleet-proof`), measured {m['date']} on {m['cpu']}, {m['nproc']} CPUs, {m['arch']}.",
        f"{a.devices} simulated Pis on loopback, each a release server and its ops agent with their own",
        "state, logs and configuration; `mcp-fleet` (release build) asks them at most "
        f"{CONCURRENCY} at a time",
        f"(`connection.concurrency`), each within {TIMEOUT_SECONDS} s (`connection.timeout_seconds`). Every process",
        "shares this machine's CPUs, so the times per device include waiting for them.",
        "",
        *rows,
        "",
        *rollout,
    ])
    out = Path(a.out)
    existing = out.read_text() if out.exists() else ""
    out.write_text(run.merge_section(existing, section))
    run.log(f"wrote the {SECTION[3:]} section of {out}")
    ok = exec_ok == a.devices and stopped_wall <= TIMEOUT_SECONDS and unreachable == wanted
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
