#!/usr/bin/env python3
"""Measures delta updates (the experimental feature updates.delta) and writes the "Delta
updates" section of the Markdown report.

    python3 bench/delta.py --cli target/release/mcp-raspi \
        --from OLD.deb --to NEW.deb --out BENCHMARKS.md

OLD.deb and NEW.deb are packages of two releases for this machine's architecture, NEW
newer (the delta of a release to itself says nothing). What is measured, on 127.0.0.1:
  * the publisher: `mcp-raspi release delta --from OLD.deb --to NEW.deb`, its time, its
    peak RSS and the delta's size beside the package's;
  * the device: RUNS updates from release OLD (its payload installed and current, as the
    postinst leaves it) into NEW through `mcp-raspi update server --no-wait` of --cli, from
    a signed repository (packaging/update-repo.sh with UPDATE_DELTA_FROM) served by this
    script, with updates.delta on and, alternating, off: the time until the command exits
    (resolve, download, verify, rebuild or extract, install, switch), its peak RSS and the
    bytes the repository sent. Each run checks which file was downloaded and that
    version.json records the update to NEW.

--cli must be a build that has delta updates; the releases' programs are only data here.
Exit status: 0 when every figure was measured, 2 when the benchmark could not run.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the update scenario's helpers)

RUNS = 3
SECTION = "## Delta updates"
DELTA_FEATURE = """experimental_features:
  enabled: true
  features:
    - { name: updates.delta, enabled: true, acknowledged_risks: true }
"""


def field(deb, name):
    return subprocess.run(["dpkg-deb", "--field", str(deb), name], capture_output=True, text=True,
                          check=True).stdout.strip()


class Scratch:
    """What run_measured needs of a working directory, for the publisher's command."""

    def __init__(self, path):
        self.path = path
        self.drop = False
        self.env = {}


def publisher(cli, old, new, base):
    """Times `release delta`; returns its figures and the delta's path."""
    out_dir = base / "publisher"
    out_dir.mkdir()
    t0 = time.perf_counter()
    code, out, err, rss = run.run_measured([cli, "release", "delta", "--from", str(old), "--to", str(new),
                                            "--out-dir", str(out_dir)], Scratch(base), "delta", timeout=600)
    seconds = time.perf_counter() - t0
    if code != 0:
        raise run.BenchError(f"mcp-raspi release delta failed ({code}): {err}")
    delta = Path(out.split(": ")[0])
    return {"seconds": seconds, "rss_kb": rss, "size": delta.stat().st_size}, delta


def device_run(cli, base, repo, keys_dir, old, old_version, new_version, mode, n):
    """One update through the CLI with updates.delta on (`delta`) or off (`package`)."""
    w = run.UpdateWorkdir(base / f"{mode}-{n}", repo.url, keys_dir, "unused")
    if mode == "delta":
        w.config.write_text(w.config.read_text() + DELTA_FEATURE)
    payload = base / "old-payload"
    w.run_cli(cli, "release", "install", "--payload", str(payload / "usr/lib/mcp-raspi"), "--root", str(w.root),
              "--version", old_version)
    w.run_cli(cli, "release", "activate", "--root", str(w.root), "--version", old_version, "--state-dir",
              str(w.state))
    repo.served.clear()
    t0 = time.perf_counter()
    code, out, err, rss = run.run_measured([cli, "update", "server", "--no-wait", "--config", str(w.config)], w,
                                           "update")
    seconds = time.perf_counter() - t0
    if code != 0:
        raise run.BenchError(f"mcp-raspi update server ({mode}) failed ({code}): {out} {err}")
    last = w.version_state().get("last_update") or {}
    if (last.get("status"), last.get("to")) != ("in_progress", new_version):
        raise run.BenchError(f"after the {mode} update, version.json's last_update is {last}")
    fetched = [path for path, status in repo.served if status == 200 and path.startswith("/pool/")]
    wanted = ".delta" if mode == "delta" else ".deb"
    if len(fetched) != 1 or not fetched[0].endswith(wanted):
        raise run.BenchError(f"the {mode} update downloaded {fetched} from the pool, not one {wanted} file"
                             f" ({err.strip()})")
    downloaded = (repo.root / fetched[0].lstrip("/")).stat().st_size
    shutil.rmtree(w.path, ignore_errors=True)
    return {"seconds": seconds, "rss_kb": rss, "downloaded": downloaded}


def bench(cli, old, new):
    arch = run.deb_architecture()
    for deb in (old, new):
        if field(deb, "Architecture") != arch:
            raise run.BenchError(f"{deb} is not a package for {arch}, this machine's architecture")
    old_version, new_version = field(old, "Version"), field(new, "Version")
    d = {"machine": run.machine(), "old": old.name, "new": new.name, "old_version": old_version,
         "new_version": new_version, "package": new.stat().st_size, "runs": {"delta": [], "package": []}}
    base = Path(tempfile.mkdtemp(prefix="mcp-raspi-bench-delta-"))
    reaper = run.Subreaper()
    repo = None
    try:
        reaper.set(True)
        run.log(f"publisher: the delta from {old_version} to {new_version}")
        d["publisher"], _ = publisher(cli, old, new, base)
        repo_dir = base / "repo"
        env = dict(os.environ, UPDATE_KEY_DIR=str(base / "signing-key"), UPDATE_DELTA_FROM=str(old),
                   UPDATE_CHANNELS="stable")
        r = subprocess.run([str(run.UPDATE_REPO_SCRIPT), cli, str(repo_dir), str(new)], capture_output=True,
                           text=True, env=env, timeout=600)
        if r.returncode != 0:
            raise run.BenchError(f"packaging/update-repo.sh failed ({r.returncode}):\n{r.stderr.strip()}")
        if not (repo_dir / "stable" / "deltas.json").is_file():
            raise run.BenchError(f"no delta was published (not smaller than the package?):\n{r.stderr.strip()}")
        subprocess.run(["dpkg-deb", "-x", str(old), str(base / "old-payload")], check=True)
        if os.geteuid() == 0:
            for p in [base, *base.rglob("*")]:
                os.chown(p, run.UNPRIVILEGED, run.UNPRIVILEGED, follow_symlinks=False)
        repo = run.RepoServer(repo_dir)
        repo.root = repo_dir
        for n in range(1, RUNS + 1):
            for mode in ("delta", "package"):
                run.log(f"update {old_version} -> {new_version} with the {mode}, run {n} of {RUNS}")
                fig = device_run(cli, base, repo, repo_dir / "keys", old, old_version, new_version, mode, n)
                run.log(f"  {fig['seconds']:.2f} s, {fig['downloaded']} bytes downloaded, "
                        f"peak RSS {run.mb(fig['rss_kb']):.1f} MB")
                d["runs"][mode].append(fig)
    finally:
        if repo:
            repo.close()
        reaper.set(False)
        shutil.rmtree(base, ignore_errors=True)
    return d


def render(d):
    m, p = d["machine"], d["publisher"]
    med = {mode: {k: statistics.median(r[k] for r in runs) for k in ("seconds", "rss_kb", "downloaded")}
           for mode, runs in d["runs"].items()}
    delta, package = med["delta"], med["package"]
    share = 100.0 * p["size"] / d["package"]
    lines = [
        SECTION,
        "",
        f"`bench/delta.py` publishes the delta from `{d['old']}` to `{d['new']}`",
        f"and updates a device from {d['old_version']} to {d['new_version']} with it, and without it, through",
        f"`mcp-raspi update server --no-wait`. Measured {m['date']} on {m['cpu']}, {m['nproc']} CPUs, {m['arch']}.",
        "",
        "| Measure | With the delta | With the package |",
        "|---|---|---|",
        f"| Downloaded | {delta['downloaded']:,} bytes ({share:.0f}%) | {package['downloaded']:,} bytes |",
        f"| Update until the command exits, median of {RUNS} | {delta['seconds']:.2f} s | {package['seconds']:.2f} s |",
        f"| Peak RSS of `mcp-raspi update server`, median of {RUNS} | {run.mb(delta['rss_kb']):.1f} MB | "
        f"{run.mb(package['rss_kb']):.1f} MB |",
        "",
        f"The publisher's `mcp-raspi release delta`: {p['seconds']:.1f} s, peak RSS {run.mb(p['rss_kb']):.0f} MB.",
        "",
        "- The releases: two packages of this machine's architecture, built from two commits, with",
        "  their versions; what a delta saves depends on how much of the programs changed between",
        "  them (link-time optimisation moves much of a program for a small change).",
        "- The repository: `packaging/update-repo.sh` with `UPDATE_DELTA_FROM` set to the old package,",
        "  served on 127.0.0.1 by the script. The device: the old package's payload installed and",
        "  current (`mcp-raspi release install`, `release activate --state-dir`), a fresh one per run.",
        "- The update: `mcp-raspi update server --no-wait` of this build (the ops agent's install code,",
        "  in one process), the clock from its start to its exit; with the delta it writes the",
        "  installed release's canonical tar and the rebuilt one to the staging directory and patches",
        "  block by block. Each run checks what the repository sent (the delta, or the package) and",
        f"  that `version.json` records the update to {d['new_version']}. {RUNS} runs of each, alternating.",
        "- Peak RSS: `ru_maxrss` from `wait4`, the program started by a shell and waited for by the",
        "  script as a subreaper (see the update scenario). MB are 10^6 bytes.",
        "",
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cli", required=True, help="the mcp-raspi program of a build with delta updates")
    parser.add_argument("--from", dest="old", required=True, help="the package of the older release")
    parser.add_argument("--to", dest="new", required=True, help="the package of the newer release")
    parser.add_argument("--out", default="BENCHMARKS.md", help="Markdown report to update")
    args = parser.parse_args()
    try:
        cli = run.executable(args.cli, "mcp-raspi program")
        d = bench(cli, Path(args.old).resolve(), Path(args.new).resolve())
    except (run.BenchError, OSError, subprocess.SubprocessError) as e:
        print(f"bench: FAILED: {e}", file=sys.stderr)
        return 2
    section = render(d)
    out = Path(args.out)
    existing = out.read_text() if out.exists() else "# Benchmarks\n"
    out.write_text(run.merge_section(existing, section))
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
