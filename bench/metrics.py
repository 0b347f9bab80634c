#!/usr/bin/env python3
"""Figures of the metrics history, written to the "Metrics history" section of BENCHMARKS.md.

    python3 bench/metrics.py --example target/release/examples/metrics_bench \
        --server target/release/mcp-raspi-server --out BENCHMARKS.md

* The example program (examples/metrics_bench.rs) writes 30 simulated days of the capacity
  plan's 15 metrics at 60 s through the sampler's store and retention, then measures the
  bytes per sample on disk, the issue's two queries, retention at the size limit, and the
  CPU time of a real sampler round on this machine.
* This script then starts the release server with the sampler recording every second and
  reads its memory after SAMPLER_SECONDS, beside a server with the sampler switched off,
  in one run.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the server process and report helpers)

SECTION = "## Metrics history"
SAMPLER_SECONDS = 30
TARGET_IDLE_RSS_MB = 10.0


class SamplerWorkdir(run.Workdir):
    def __init__(self, enabled):
        self.enabled = enabled
        super().__init__()

    def config_text(self):
        return super().config_text() + f"""metrics:
  collection:
    enabled: {"true" if self.enabled else "false"}
    interval_seconds: 1
"""


def server_memory(binary, enabled):
    """VmRSS and VmHWM (kB) of a server after SAMPLER_SECONDS, and the rounds it took."""
    workdir = SamplerWorkdir(enabled)
    server = run.Server(binary, workdir, "127.0.0.1:0", capture_stdout=True)
    try:
        server.listening_port()
        time.sleep(SAMPLER_SECONDS)
        memory = server.memory()
        for line in Path(f"/proc/{server.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                memory[key] = int(value.split()[0])
        cpu = server.cpu_seconds()
    finally:
        server.stop()
        workdir.remove()
    return memory, cpu


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--example", required=True)
    p.add_argument("--server", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    m = run.machine()
    table = subprocess.run([a.example], check=True, capture_output=True, text=True).stdout.strip()
    server = str(Path(a.server).resolve())
    try:
        on, on_cpu = server_memory(server, True)
        off, off_cpu = server_memory(server, False)
    except run.BenchError as e:
        print(f"bench/metrics.py: {e}", file=sys.stderr)
        return 2
    rss = run.mb(on["VmRSS"])
    table += "\n" + "\n".join([
        f"| Server memory after {SAMPLER_SECONDS} s sampling every second, VmRSS / VmHWM | "
        f"{rss:.1f} / {run.mb(on['VmHWM']):.1f} MB | ≤ {TARGET_IDLE_RSS_MB:.0f} MB (x86_64) | "
        f"{'yes' if rss <= TARGET_IDLE_RSS_MB else '**NO**'} |",
        f"| The same, of which anonymous / mapped from files (the program's code, shared with the page cache) | "
        f"{run.mb(on['RssAnon']):.1f} / {run.mb(on['RssFile']):.1f} MB | – | – |",
        f"| The same server with the sampler off, VmRSS / VmHWM | "
        f"{run.mb(off['VmRSS']):.1f} / {run.mb(off['VmHWM']):.1f} MB | – | – |",
        f"| The same, of which anonymous / mapped from files | "
        f"{run.mb(off['RssAnon']):.1f} / {run.mb(off['RssFile']):.1f} MB | – | – |",
        f"| Server CPU time in those {SAMPLER_SECONDS} s, sampler on / off | {on_cpu:.2f} / {off_cpu:.2f} s | – | – |",
    ])
    section = "\n".join([
        SECTION,
        "",
        f"`bench/metrics.py` (`make bench`), measured {m['date']} on {m['cpu']}, {m['nproc']} CPUs, {m['arch']}.",
        "The first rows come from `examples/metrics_bench.rs`: 30 simulated days of the capacity",
        "plan's 15 metrics (4 cores, memory used and cached, 2 disks' use, disk read and write,",
        "eth0 and wlan0 both ways, the SoC's temperature) at 60 s, written round by round",
        "through the sampler's store with its retention; bytes per sample are the database file",
        "(after a checkpoint) over the samples it holds. The capacity plan estimates 72 B per",
        "sample with SQLite's overhead. The last rows start the release server sampling every",
        "second, beside one with sampling off.",
        "",
        table,
        "",
    ])
    out = Path(a.out)
    existing = out.read_text() if out.exists() else ""
    out.write_text(run.merge_section(existing, section))
    run.log(f"wrote the {SECTION[3:]} section of {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
