#!/usr/bin/env python3
"""Proof that the mcp-raspi Debian packages install, run, update themselves, roll back,
upgrade, reinstall, remove and purge cleanly, on a real (booted) Debian system rather than by
reading the scripts.

    prove.py chroots                 create the cached bookworm chroots (amd64, arm64)
    prove.py releases --version V    build the newer releases the self-update goes to
    prove.py run --version V --repo DIR AMD64.deb ARM64.deb ARMHF.deb

`releases` builds, from a copy of the working tree with a higher crate version, the amd64
packages of three newer releases (with the development profile, which reuses the
dependencies the tests compiled): v2 (V with patch+1), v3 (patch+2, built with the
proof-unhealthy feature: its /healthz answers 503) and v4 (patch+3).

`run` checks the three packages (size, lintian, glibc symbols), the units' exposure scores,
then boots a bookworm amd64 chroot with `systemd-nspawn -b` and installs the package with apt
from the signed repository built by `make apt-repo` (dependencies from Debian), and checks the
running system: services, owners and modes, capabilities, MCP over loopback with and without
the generated token, the real systemd backends through the agent and the polkit rule. Then
the self-update, from a signed update repository served over HTTP on the host's loopback:
v1 (the package under test) to v2 over MCP (manage.update_server), v2 to v3 rolled back
automatically, an apt upgrade to v2's package, `mcp-raspi manage rollback` to v1 with the
services stopped, `mcp-raspi-update server --channel stable` to v4 and `mcp-raspi-cli manage
rollback`; then a reinstall, remove and purge. In parallel it installs the arm64 package into
an arm64 chroot under qemu-user-static and runs its programs. Every check is printed as PASS
or FAIL; any failure makes the exit status non-zero.

Needs root. Uses only the standard library. The chroots are cached under
target/package-test/cache; delete that directory to start from scratch.
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from functools import partial
from http.client import HTTPException
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import config_deploy
import operations
import os_upgrade

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "target" / "package-test"
CACHE = WORK / "cache"
SUITE = "bookworm"
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
# What a Raspberry Pi OS system always runs: systemd as init and the system bus (installing
# dbus does not start it on a running system). Everything else must come from the package's
# Depends.
BASE_INCLUDE = "systemd-sysv,dbus"
ARCHES = ("amd64", "arm64")
MAX_DEB_BYTES = 5 * 1024 * 1024
# Highest glibc symbol version the programs may need: the package's `libc6 (>= 2.34)`.
MAX_GLIBC = (2, 34)
EXPOSURE_LIMITS = {"mcp-raspi-server.service": 1.5, "raspi-ops-agent.service": 3.5, "mcp-raspi-backup.service": 1.5}
TEST_UNIT = "mcp-raspi-pkgtest.service"
OTHER_UNIT = "systemd-journald.service"
REPO_IN_BOX = "/srv/mcp-raspi-repo"
KEYRING_IN_BOX = "/etc/apt/keyrings/mcp-raspi.gpg"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Fatal(Exception):
    """A failure after which the remaining checks cannot run."""


class Report:
    """PASS/FAIL lines, thread-safe, with a summary at the end."""

    def __init__(self):
        self.lock = threading.Lock()
        self.passed = []
        self.failed = []

    def check(self, name, ok, detail=""):
        with self.lock:
            if ok:
                self.passed.append(name)
                print(f"PASS {name}", flush=True)
            else:
                self.failed.append(name)
                print(f"FAIL {name}" + (f": {detail}" if detail else ""), flush=True)
        return ok

    def require(self, name, ok, detail=""):
        if not self.check(name, ok, detail):
            raise Fatal(name)


report = Report()


def log(message):
    print(f"--- {message}", flush=True)


def run(cmd, check=True, input=None, timeout=1800, env=None):
    """Runs a command, returning (returncode, stdout, stderr) as text."""
    p = subprocess.run(
        [str(c) for c in cmd],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if check and p.returncode != 0:
        raise Fatal(f"{' '.join(map(str, cmd))} exited with {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p.returncode, p.stdout, p.stderr


# --- chroots -------------------------------------------------------------------------------


def register_binfmt():
    """Lets the host run arm64 programs through qemu-user-static (with the F flag, which
    also works inside chroots)."""
    misc = Path("/proc/sys/fs/binfmt_misc")
    if not (misc / "register").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(misc)])
    for name in ("qemu-aarch64", "qemu-arm"):
        if not (misc / name).exists():
            conf = Path("/usr/lib/binfmt.d") / f"{name}.conf"
            if not conf.exists():
                raise Fatal(f"{conf} is missing: install qemu-user-static")
            (misc / "register").write_text(conf.read_text().strip())


def base_tarball(arch):
    return CACHE / f"{SUITE}-{arch}-minbase+{BASE_INCLUDE.replace(',', '+')}.tar"


def make_chroot(arch):
    tarball = base_tarball(arch)
    if tarball.exists():
        print(f"{arch}: cached {tarball}", flush=True)
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    build = CACHE / f"{SUITE}-{arch}.build"
    shutil.rmtree(build, ignore_errors=True)
    started = time.time()
    cmd = ["debootstrap", "--variant=minbase", f"--include={BASE_INCLUDE}", f"--arch={arch}", SUITE, build, MIRROR]
    run(cmd, timeout=1800)
    # Nothing of the build host leaks into the image.
    (build / "etc/hostname").write_text("mcp-raspi-pkgtest\n")
    partial = tarball.with_suffix(".partial")
    run(["tar", "-C", build, "--numeric-owner", "-cf", partial, "."])
    partial.rename(tarball)
    shutil.rmtree(build, ignore_errors=True)
    print(f"{arch}: debootstrap took {time.time() - started:.0f} s", flush=True)


def chroots():
    register_binfmt()
    errors = []

    def one(arch):
        try:
            make_chroot(arch)
        except Exception as e:  # reported below, for both architectures
            errors.append(f"{arch}: {e}")

    threads = [threading.Thread(target=one, args=(a,)) for a in ARCHES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 1
    return 0


def fresh_rootfs(arch):
    rootfs = WORK / f"rootfs-{arch}"
    if rootfs.exists():
        run(["rm", "-rf", "--one-file-system", rootfs])
    rootfs.mkdir(parents=True)
    run(["tar", "-C", rootfs, "--numeric-owner", "-xpf", base_tarball(arch)])
    return rootfs


def add_repo_source(rootfs, repo):
    """The repository as a fleet would add it: its key in a keyring named by `signed-by`."""
    keyring = rootfs / KEYRING_IN_BOX.lstrip("/")
    keyring.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(repo / "mcp-raspi-archive-keyring.gpg", keyring)
    keyring.chmod(0o644)
    source = f"deb [signed-by={KEYRING_IN_BOX}] file:{REPO_IN_BOX} stable main\n"
    (rootfs / "etc/apt/sources.list.d/mcp-raspi.list").write_text(source)


# --- newer releases, for the self-update -------------------------------------------------

RELEASES = WORK / "releases"
RELEASES_INDEX = RELEASES / "releases.json"
# What each release built from the working tree is for: the version's patch number above the
# package under test, and the Cargo features it is built with.
RELEASE_ROLES = (
    ("v2", 1, ""),  # the update that must succeed
    ("v3", 2, "proof-unhealthy"),  # answers /healthz with 503: rolled back
    ("v4", 3, ""),  # what `mcp-raspi-update server` brings
    ("v5", 4, ""),  # brought over MCP by the delta from v4
)


def bump(version, by):
    """The version with its patch number raised by `by` (pre-release and build dropped)."""
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)(?:[-+].*)?", version)
    if not match:
        raise Fatal(f"{version!r} is not a semantic version")
    major, minor, patch = (int(g) for g in match.groups())
    return f"{major}.{minor}.{patch + by}"


def copy_source(dest):
    """The working tree as git sees it (tracked and new files, nothing ignored: no target/)."""
    _, out, _ = run(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"])
    if dest.exists():
        shutil.rmtree(dest)
    for name in sorted(set(filter(None, out.split("\0")))):
        source = ROOT / name
        if source.is_symlink() or not source.is_file():  # deleted in the working tree
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def set_crate_version(src, version):
    manifest = src / "Cargo.toml"
    text, n = re.subn(r'(?m)^version = "[^"]*"$', f'version = "{version}"', manifest.read_text(), count=1)
    if n != 1:
        raise Fatal("Cargo.toml has no version line")
    manifest.write_text(text)
    lock = src / "Cargo.lock"
    text, n = re.subn(r'(name = "mcp-raspi"\nversion = )"[^"]*"', rf'\1"{version}"', lock.read_text(), count=1)
    if n != 1:
        raise Fatal('Cargo.lock has no entry for "mcp-raspi"')
    lock.write_text(text)


def build_releases(version):
    """Builds the amd64 packages of the releases that the package under test updates to
    (RELEASE_ROLES), from a copy of the working tree whose crate version is raised, so that
    the programs report the new version. They are built with the development profile, whose
    dependencies the tests have already compiled: their final artefacts have their own target
    directory, while the intermediate ones share the worktree's (build-dir), so only the
    crate itself is compiled for each release, without the release profile's LTO. The
    update mechanism sees what it would see of any release: a signed package of a newer
    version (the binaries are stripped, and the package compressed quickly). Writes
    RELEASES_INDEX."""
    started = time.time()
    RELEASES.mkdir(parents=True, exist_ok=True)
    RELEASES_INDEX.unlink(missing_ok=True)
    src = RELEASES / "src"
    copy_source(src)
    env = {
        **os.environ,
        "CARGO_TARGET_DIR": str(RELEASES / "target"),
        "CARGO_BUILD_BUILD_DIR": os.environ.get("CARGO_TARGET_DIR") or str(ROOT / "target"),
    }
    index = {"base": version, "releases": {}}
    for role, by, features in RELEASE_ROLES:
        release = bump(version, by)
        one = time.time()
        set_crate_version(src, release)
        feature_args = ["--features", features] if features else []
        cmd = ["cargo", "build", "--bins", *feature_args]
        with open(RELEASES / f"build-{role}.log", "w") as build_log:
            code = subprocess.run(cmd, cwd=src, env=env, stdout=build_log, stderr=subprocess.STDOUT,
                                  timeout=3600).returncode
        if code != 0:
            tail = (RELEASES / f"build-{role}.log").read_text()[-3000:]
            raise Fatal(f"building {role} ({release}) failed: {' '.join(cmd)} in {src}:\n{tail}")
        cli = RELEASES / "target/debug/mcp-raspi"
        generated = src / "target/generated"
        shutil.rmtree(generated, ignore_errors=True)
        run([cli, "man", "--out", generated / "man"])
        run([cli, "completions", "--out", generated / "completions"])
        # Its own directory: cargo-deb deletes the other versions of a package in its output.
        out_dir = RELEASES / "debs" / release
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        deb_cmd = ["cargo", "deb", "--no-build", "--profile", "dev", "--strip", "--fast", "--output", f"{out_dir}/"]
        p = subprocess.run(deb_cmd, cwd=src, env=env, capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            raise Fatal(f"cargo deb for {role} ({release}) failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
        deb = next(out_dir.glob("*.deb"))
        index["releases"][role] = {"version": release, "deb": str(deb), "features": features}
        size = deb.stat().st_size / 1e6
        print(f"{role}: {deb.name} ({size:.1f} MB){' with ' + features if features else ''} in {time.time() - one:.0f} s",
              flush=True)
    RELEASES_INDEX.write_text(json.dumps(index, indent=2) + "\n")
    print(f"releases built in {time.time() - started:.0f} s", flush=True)


# --- the booted container -----------------------------------------------------------------


def descendants(pid):
    children = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class Box:
    """A bookworm system booted with systemd-nspawn; commands run in it with nsenter."""

    def __init__(self, rootfs, binds, log_path):
        self.rootfs = rootfs
        cmd = ["systemd-nspawn", "--quiet", "-D", str(rootfs), "-b", "--register=no", "--keep-unit",
               "--machine=mcp-raspi-pkgtest"]
        for host, inside, read_only in binds:
            cmd.append(f"--bind{'-ro' if read_only else ''}={host}:{inside}")
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.leader = self._leader()

    def _leader(self):
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise Fatal(f"systemd-nspawn exited with {self.proc.returncode}; see {self.log.name}")
            for pid in descendants(self.proc.pid):
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                nspid = re.search(r"^NSpid:\s+(.*)$", status, re.M)
                if nspid and len(nspid.group(1).split()) > 1 and nspid.group(1).split()[-1] == "1":
                    return pid
            time.sleep(0.2)
        raise Fatal("the container's init did not appear within 60 s")

    def sh(self, script, check=True, input=None, timeout=600):
        env = ["/usr/bin/env", "-i", f"PATH={PATH}", "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive", "HOME=/root"]
        cmd = ["nsenter", "-t", str(self.leader), "-a", "--", *env, "/bin/sh", "-c", script]
        return run(cmd, check=check, input=input, timeout=timeout)

    def wait_booted(self, timeout=180):
        """The system state once booting has finished. Right after init starts, systemctl
        cannot connect yet: that is retried."""
        deadline = time.time() + timeout
        state, detail = "", ""
        while time.time() < deadline:
            _, out, err = self.sh("systemctl is-system-running --wait", check=False, timeout=timeout)
            state, detail = out.strip(), f"{out.strip()} {err.strip()}"
            if state in ("running", "degraded", "maintenance", "stopping"):
                break
            time.sleep(1)
        return state, detail

    def out(self, script, **kw):
        return self.sh(script, **kw)[1].strip()

    def stop(self):
        if self.proc.poll() is None:
            self.sh("systemctl --no-block poweroff", check=False, timeout=30)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        self.log.close()


# --- MCP over loopback --------------------------------------------------------------------


def http(port, method, path, body=None, headers=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    req.add_header("Content-Type", "application/json")
    req.add_header("Accept", "application/json, text/event-stream")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def initialize(port, token):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    body = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "prove", "version": "1"},
        },
    }
    status, h, _ = http(port, "POST", "/mcp", body, headers)
    session = {k.lower(): v for k, v in h.items()}.get("mcp-session-id")
    return status, session


def call_tool(port, token, name, arguments, timeout=60):
    """A tools/call in a fresh session; returns (http status, CallToolResult or error)."""
    status, session = initialize(port, token)
    if status != 200 or not session:
        return status, None
    headers = {
        "Authorization": f"Bearer {token}",
        "Mcp-Session-Id": session,
        "MCP-Protocol-Version": "2025-11-25",
    }
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    status, _, data = http(port, "POST", "/mcp", body, headers, timeout=timeout)
    try:
        message = json.loads(data)
    except ValueError:
        return status, {"unparsed": data.decode(errors="replace")}
    return status, message.get("result", message)


def tool_ok(result):
    return isinstance(result, dict) and result.get("isError") is False and "structuredContent" in result


def structured(result):
    return (result.get("structuredContent") or {}) if isinstance(result, dict) else {}


def tool_text(result):
    if not isinstance(result, dict):
        return str(result)
    return " ".join(c.get("text", "") for c in result.get("content", []) if isinstance(c, dict)) or json.dumps(result)


def wait_healthy(port, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            status, _, _ = http(port, "GET", "/healthz", timeout=2)
            if status == 200:
                return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- checks on the .deb files --------------------------------------------------------------


def elf_files(root):
    """The programs under `root` (regular files that start with the ELF magic)."""
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as f:
                if f.read(4) == b"\x7fELF":
                    found.append(path)
    return found


def glibc_needed(deb, scratch):
    """The highest GLIBC_x.y symbol version the package's programs need."""
    shutil.rmtree(scratch, ignore_errors=True)
    run(["dpkg-deb", "-x", deb, scratch])
    highest = (0, 0)
    for program in elf_files(scratch):
        _, out, _ = run(["readelf", "-W", "--dyn-syms", program])
        for major, minor in re.findall(r"GLIBC_(\d+)\.(\d+)", out):
            highest = max(highest, (int(major), int(minor)))
    shutil.rmtree(scratch, ignore_errors=True)
    return highest


def check_debs(debs):
    for deb in debs:
        size = deb.stat().st_size
        report.check(f"{deb.name} is at most 5 MB ({size} bytes)", size <= MAX_DEB_BYTES)
        glibc = glibc_needed(deb, WORK / "extract")
        report.check(
            f"{deb.name} needs glibc {glibc[0]}.{glibc[1]}, within its Depends (>= 2.34)",
            glibc <= MAX_GLIBC and glibc > (0, 0),
        )
    code, out, err = run(["lintian", "--fail-on", "error,warning", "--display-info", *debs], check=False)
    lines = [line for line in (out + err).splitlines() if line and "running with root privileges" not in line]
    problems = [line for line in lines if line[:2] in ("E:", "W:")]
    for line in lines:
        print(f"    lintian: {line}")
    report.check(f"lintian reports no error and no warning on the {len(debs)} packages", code == 0 and not problems,
                 "\n".join(problems))


def check_units():
    for unit, limit in EXPOSURE_LIMITS.items():
        path = ROOT / "systemd" / unit
        threshold = str(int(round(limit * 10)))
        code, out, err = run(
            ["systemd-analyze", "security", "--offline=true", f"--threshold={threshold}", "--no-pager", path],
            check=False,
        )
        score = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out + err)
        value = float(score.group(1)) if score else 99.0
        report.check(f"{unit} exposure {value} is at most {limit}", code == 0 and value <= limit, (out + err)[-2000:])


# --- the booted amd64 system ---------------------------------------------------------------


def stat_table(box, paths):
    out = box.out("stat -c '%n|%U|%G|%a|%F' " + " ".join(paths), check=False)
    table = {}
    for line in out.splitlines():
        name, user, group, mode, kind = line.split("|")
        table[name] = (user, group, mode, kind)
    return table


def expect_modes(box, expected, label):
    table = stat_table(box, list(expected))
    for path, want in expected.items():
        got = table.get(path)
        report.check(f"{label}: {path} is {' '.join(want)}", got == want, f"found {got}")


def proc_status(box, unit):
    pid = box.out(f"systemctl show -p MainPID --value {unit}")
    text = box.out(f"cat /proc/{pid}/status", check=False)
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return pid, {k: v.strip() for k, v in fields.items()}


def apt_install(box, what, extra=""):
    code, out, err = box.sh(f"apt-get install -y -q {extra} {what}", check=False, timeout=900)
    return code, out + err


def check_install(box, version, port):
    code, output = apt_install(box, "mcp-raspi")
    print("\n".join("    apt: " + line for line in output.splitlines()[-15:]))
    report.require("apt installs mcp-raspi from the signed repository with its dependencies", code == 0, output[-3000:])
    report.check(
        "the first install tells where the generated admin token is",
        "generated an admin bearer token in /etc/mcp-raspi/secrets.env" in output,
    )
    for unit in ("raspi-ops-agent.service", "mcp-raspi-server.service"):
        state = box.out(f"systemctl is-active {unit}", check=False)
        report.check(f"{unit} is active after the install", state == "active", box.out(
            f"systemctl status --no-pager {unit}; journalctl -b --no-pager -n 40 -u {unit}", check=False))
        enabled = box.out(f"systemctl is-enabled {unit}", check=False)
        report.check(f"{unit} is enabled", enabled == "enabled", enabled)
    report.require("the server answers /healthz on loopback", wait_healthy(port))
    release = f"/opt/mcp-raspi/releases/{version}"
    expect_modes(box, {
        "/etc/mcp-raspi": ("root", "mcp", "750", "directory"),
        "/etc/mcp-raspi/config.yml": ("root", "mcp", "640", "regular file"),
        "/etc/mcp-raspi/secrets.env": ("root", "root", "600", "regular file"),
        "/etc/mcp-raspi/keys": ("root", "root", "755", "directory"),
        "/etc/mcp-raspi/config-keys": ("root", "root", "755", "directory"),
        "/var/lib/mcp-raspi": ("root", "mcp", "1770", "directory"),
        "/var/lib/mcp-raspi/downloads": ("mcp", "mcp", "750", "directory"),
        "/var/lib/mcp-raspi/staging": ("mcp-ops", "mcp-ops", "700", "directory"),
        STATE_IN_BOX: ("mcp-ops", "mcp-ops", "644", "regular file"),
        "/var/lib/mcp-raspi/.update.lock": ("mcp-ops", "mcp-ops", "644", "regular empty file"),
        "/var/log/mcp-raspi": ("mcp", "mcp", "750", "directory"),
        "/opt/mcp-raspi": ("mcp-ops", "mcp-ops", "755", "directory"),
        "/opt/mcp-raspi/releases": ("mcp-ops", "mcp-ops", "755", "directory"),
        release: ("mcp-ops", "mcp-ops", "755", "directory"),
        f"{release}/bin": ("mcp-ops", "mcp-ops", "755", "directory"),
        f"{release}/bin/mcp-raspi-server": ("root", "root", "755", "regular file"),
        "/opt/mcp-raspi/current": ("mcp-ops", "mcp-ops", "777", "symbolic link"),
        "/run/mcp-raspi": ("mcp-ops", "mcp-ops", "755", "directory"),
        "/run/mcp-raspi/ops-agent.sock": ("mcp-ops", "mcp", "660", "socket"),
        "/etc/polkit-1/rules.d/50-mcp-raspi.rules": ("root", "root", "644", "regular file"),
        "/usr/lib/mcp-raspi/bin/mcp-raspi": ("root", "root", "755", "regular file"),
    }, "after install")
    overrides = box.out("dpkg-statoverride --list", check=False).splitlines()
    report.check("dpkg keeps the modes of /etc/mcp-raspi and config.yml as statoverrides",
                 "root mcp 750 /etc/mcp-raspi" in overrides and "root mcp 640 /etc/mcp-raspi/config.yml" in overrides,
                 str(overrides))
    report.check("current points at the installed release",
                 box.out("readlink /opt/mcp-raspi/current") == f"releases/{version}")
    state = version_state(box)
    update = state.get("last_update") or {}
    report.check(f"version.json records the package install of {version} as current",
                 state.get("current_version") == version and state.get("highest_installed") == version
                 and update.get("source") == "package" and update.get("status") == "succeeded"
                 and update.get("to") == version and not update.get("from"), json.dumps(state))
    inodes = box.out(f"stat -c %i /usr/lib/mcp-raspi/bin/mcp-raspi-server {release}/bin/mcp-raspi-server").split()
    report.check("the release's files are hard links of the dpkg-owned payload", len(set(inodes)) == 1, str(inodes))
    links = {
        "/usr/bin/mcp-raspi-server": "/opt/mcp-raspi/current/bin/mcp-raspi-server",
        "/usr/bin/raspi-ops-agent": "/opt/mcp-raspi/current/bin/raspi-ops-agent",
        "/usr/bin/mcp-raspi": "../lib/mcp-raspi/bin/mcp-raspi",
        # The runbook's names of the operator CLI, each the dpkg-owned program.
        "/usr/bin/mcp-raspi-update": "../lib/mcp-raspi/bin/mcp-raspi",
        "/usr/bin/mcp-raspi-cli": "../lib/mcp-raspi/bin/mcp-raspi",
        "/usr/bin/mcp-raspi-config": "../lib/mcp-raspi/bin/mcp-raspi",
        "/usr/bin/mcp-raspi-backup": "../lib/mcp-raspi/bin/mcp-raspi",
        "/usr/bin/mcp-raspi-restore": "../lib/mcp-raspi/bin/mcp-raspi",
        "/usr/bin/mcp-raspi-healthcheck": "../lib/mcp-raspi/bin/mcp-raspi",
    }
    for link, target in links.items():
        report.check(f"{link} links to {target}", box.out(f"readlink {link}") == target)
    for page in ("mcp-raspi-server", "raspi-ops-agent", "mcp-raspi", "mcp-raspi-update", "mcp-raspi-cli",
                 "mcp-raspi-update-server", "mcp-raspi-manage-rollback", "mcp-raspi-backup", "mcp-raspi-restore",
                 "mcp-raspi-healthcheck", "mcp-raspi-config", "mcp-raspi-config-migrate-plan",
                 "mcp-raspi-system-get-info", "mcp-raspi-audit-deprecated-usage"):
        page = f"/usr/share/man/man1/{page}.1.gz"
        report.check(f"the man page {page} is installed", box.sh(f"test -s {page}", check=False)[0] == 0)
    for program in ("mcp-raspi-server", "raspi-ops-agent", "mcp-raspi"):
        out = box.out(f"{program} --version", check=False)
        report.check(f"{program} --version prints {version}", out == f"{program} {version}", out)
    code, out, err = box.sh("mcp-raspi-config validate", check=False)
    report.check("`mcp-raspi-config validate` as root accepts the installed configuration and its secrets",
                 code == 0 and out.startswith("configuration OK: /etc/mcp-raspi/config.yml"), out + err)
    for unit in ("raspi-ops-agent.service", "mcp-raspi-server.service"):
        exec_start = box.out(f"systemctl show -p ExecStart --value {unit}")
        report.check(f"{unit} runs through /opt/mcp-raspi/current", "path=/opt/mcp-raspi/current/bin/" in exec_start,
                     exec_start)
    pre = box.out("systemctl show -p ExecStartPre --value raspi-ops-agent.service")
    report.check("the agent's ExecStartPre is the dpkg-owned `mcp-raspi update pre-start`",
                 "path=/usr/lib/mcp-raspi/bin/mcp-raspi" in pre and "argv[]=/usr/lib/mcp-raspi/bin/mcp-raspi update "
                 "pre-start --config /etc/mcp-raspi/config.yml" in pre, pre)
    # cgroup v1 hosts cannot enforce these; systemd still reports what the unit asks for.
    memory = box.out("systemctl show -p MemoryHigh -p MemoryMax mcp-raspi-server.service").split()
    report.check("the server's memory budget is MemoryHigh=200M, MemoryMax=250M",
                 sorted(memory) == ["MemoryHigh=209715200", "MemoryMax=262144000"], str(memory))
    for user in ("mcp", "mcp-ops"):
        entry = box.out(f"getent passwd {user}", check=False).split(":")
        ok = len(entry) == 7 and entry[6] == "/usr/sbin/nologin" and box.sh(f"test -e {entry[5]}", check=False)[0] != 0
        report.check(f"user {user} exists with nologin and no home directory", ok, ":".join(entry))
    code, out, err = box.sh(
        "apt-get install -y -q --no-install-recommends logrotate >/dev/null "
        "&& logrotate -f /etc/logrotate.d/mcp-raspi && ls /var/log/mcp-raspi", check=False)
    rotated = [f for f in out.split() if re.fullmatch(r"app\.log-\d{8}", f)]
    report.check("the shipped logrotate file rotates the server's log", code == 0 and bool(rotated), out + err)
    code, out, err = box.sh(
        # --man=no: the minimal system has no man(1) to look the Documentation= pages up with.
        "systemd-analyze verify --man=no /usr/lib/systemd/system/mcp-raspi-server.service "
        "/usr/lib/systemd/system/raspi-ops-agent.service", check=False)
    report.check("systemd-analyze verify passes for both units", code == 0 and "mcp-raspi" not in out + err,
                 out + err)
    check_privileges(box)


def check_privileges(box):
    ids = {}
    for name in ("mcp", "mcp-ops", "gpio", "i2c", "spi", "video", "dialout", "systemd-journal"):
        ids[name] = box.out(f"getent group {name} | cut -d: -f3", check=False)
    uid_ops = box.out("id -u mcp-ops")
    uid_mcp = box.out("id -u mcp")
    zero = "0000000000000000"
    for unit, uid in (("raspi-ops-agent.service", uid_ops), ("mcp-raspi-server.service", uid_mcp)):
        pid, status = proc_status(box, unit)
        caps = {k: status.get(k) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
        report.check(f"{unit} (pid {pid}) holds no capability and has an empty bounding set",
                     all(v == zero for v in caps.values()), str(caps))
        report.check(f"{unit} runs with no_new_privs", status.get("NoNewPrivs") == "1", status.get("NoNewPrivs"))
        report.check(f"{unit} runs as its own user (uid {uid})", status.get("Uid", "").split()[:1] == [uid],
                     status.get("Uid"))
        if unit.startswith("raspi-ops-agent"):
            groups = set(status.get("Groups", "").split())
            wanted = {ids[g] for g in ("mcp", "gpio", "i2c", "spi", "video", "dialout", "systemd-journal")}
            # initgroups() also lists the primary group.
            report.check("the agent's supplementary groups are exactly mcp and the device groups",
                         groups - {ids["mcp-ops"]} == wanted, f"{groups} != {wanted}")


def check_mcp(box, port):
    token = box.out("sed -n 's/^MCP_RASPI_ADMIN_TOKEN=//p' /etc/mcp-raspi/secrets.env")
    report.require("secrets.env holds a generated 64-character admin token",
                   re.fullmatch(r"[0-9a-f]{64}", token) is not None, f"{len(token)} characters")
    status, result = call_tool(port, token, "system.get_info", {})
    report.check("tools/call system.get_info with the generated token succeeds", status == 200 and tool_ok(result),
                 f"{status} {tool_text(result)[:500]}")
    status, result = call_tool(port, token, "system.get_capabilities", {})
    agent = (result.get("structuredContent") or {}).get("agent", {}) if isinstance(result, dict) else {}
    sets = agent.get("capabilities") or {}
    declared = all(sets.get(k) == [] for k in ("effective", "permitted", "inheritable", "ambient", "bounding"))
    report.check("the agent reports the declared capability sets (all empty) and no_new_privs",
                 tool_ok(result) and declared and sets.get("no_new_privs") is True, json.dumps(agent)[:600])
    # The sampler records under the hardened unit: its first round comes at start.
    sampled = {}
    for _ in range(50):
        status, result = call_tool(port, token, "metrics.get_status", {}, timeout=10)
        sampled = (result.get("structuredContent") or {}) if isinstance(result, dict) else {}
        if sampled.get("samples", 0) > 0:
            break
        time.sleep(0.2)
    report.check("the metrics sampler records into /var/lib/mcp-raspi/metrics.db under the server's unit",
                 sampled.get("state") == "sampling" and sampled.get("samples", 0) > 0
                 and sampled.get("database") == "/var/lib/mcp-raspi/metrics.db" and not sampled.get("last_error"),
                 json.dumps(sampled)[:800])
    owner = box.out("stat -c %U /var/lib/mcp-raspi/metrics.db")
    report.check("metrics.db belongs to the server's user", owner == "mcp", owner)
    status, _ = initialize(port, None)
    report.check("a request without a token is refused with 401", status == 401, str(status))
    status, _ = initialize(port, "0" * 64)
    report.check("a request with a wrong token is refused with 401", status == 401, str(status))
    return token


TEST_UNIT_TEXT = f"""[Unit]
Description=Unit that the mcp-raspi package test controls

[Service]
ExecStart=/bin/sh -c 'echo "{TEST_UNIT} started"; exec sleep infinity'
"""

DROP_IN = """[Service]
# The package test moves the MCP endpoint off 8000, which the host may be using (the
# container shares the host's loopback).
Environment=MCP_RASPI_SERVER__LISTEN=127.0.0.1:{port}
"""


def check_oneshot_unit(box, unit, exposure_limit, command):
    """A root one-shot unit the package ships for the agent to start: its exposure, systemd's
    verdict, that it runs the dpkg-owned `mcp-raspi COMMAND` on the configuration (nothing
    under /opt), and that the package neither enables nor starts it."""
    path = ROOT / "systemd" / unit
    code, out, err = run(["systemd-analyze", "security", "--offline=true", "--no-pager", path], check=False)
    score = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out + err)
    value = float(score.group(1)) if score else 99.0
    report.check(f"{unit} exposure {value} is at most {exposure_limit}", value <= exposure_limit,
                 (out + err)[-2000:])
    code, out, err = box.sh(f"systemd-analyze verify --man=no /usr/lib/systemd/system/{unit}", check=False)
    report.check(f"systemd-analyze verify passes for {unit}", code == 0 and "mcp-raspi" not in out + err, out + err)
    exec_start = box.out(f"systemctl show -p ExecStart --value {unit}")
    report.check(f"{unit} runs the dpkg-owned `mcp-raspi {command}`, nothing under /opt",
                 "path=/usr/lib/mcp-raspi/bin/mcp-raspi " in exec_start and "/opt/" not in exec_start
                 and f"{command} --config /etc/mcp-raspi/config.yml" in exec_start, exec_start)
    state = box.out(f"systemctl is-enabled {unit}; systemctl is-active {unit}", check=False).split()
    report.check(f"the package installs {unit} static and does not start it", state == ["static", "inactive"],
                 str(state))


def test_config(box, port, update_url):
    """The packaged configuration with the test's changes: the port, the real backends (the
    device tree of this container names no Raspberry Pi), the test unit on the allowlist and
    the update repository."""
    text = box.out("cat /etc/mcp-raspi/config.yml")
    changes = [
        ('listen: "127.0.0.1:8000"', f'listen: "127.0.0.1:{port}"'),
        ("  backend: auto", "  backend: raspberry_pi"),
        ("  allowed_units: []", f"  allowed_units: [{TEST_UNIT}]"),
        ('  server_url: ""', f'  server_url: "{update_url}"'),
        # The releases it updates to are development builds (build_releases): about 16 MB, and
        # about 78 MB unpacked (a package may unpack to four times the download limit).
        ("  max_download_mb: 20", "  max_download_mb: 128"),
    ]
    for old, new in changes:
        if old not in text:
            raise Fatal(f"etc/config.example.yml no longer contains {old!r}: update tests/package/prove.py")
        text = text.replace(old, new, 1)
    return text


def check_real_backends(box, port, token, update_url):
    box.sh("cat > /etc/mcp-raspi/config.yml", input=test_config(box, port, update_url))
    code, out, err = box.sh("dpkg-reconfigure mcp-raspi", check=False)
    report.check("dpkg-reconfigure runs the postinst again without error", code == 0, out + err)
    rule = box.out("cat /etc/polkit-1/rules.d/50-mcp-raspi.rules", check=False)
    report.check("the regenerated polkit rule admits the allowlisted test unit for mcp-ops",
                 f'"{TEST_UNIT}"' in rule and '"mcp-ops"' in rule, rule[:400])
    report.require("the server is back after the reconfigure", wait_healthy(port))
    box.sh(f"systemctl start {TEST_UNIT}")
    status, info = call_tool(port, token, "system.get_info", {})
    report.check("system.get_info names the real raspberry_pi backend", "raspberry_pi" in json.dumps(info),
                 tool_text(info)[:300])
    status, result = call_tool(port, token, "service.get_status", {"unit": TEST_UNIT})
    sc = result.get("structuredContent", {}) if isinstance(result, dict) else {}
    report.check("service.get_status of a real unit answers from systemd",
                 tool_ok(result) and sc.get("active_state") == "active" and sc.get("load_state") == "loaded",
                 f"{status} {tool_text(result)[:500]}")
    before = box.out(f"systemctl show -p InvocationID --value {TEST_UNIT}")
    status, result = call_tool(port, token, "service.restart", {"unit": TEST_UNIT})
    after = box.out(f"systemctl show -p InvocationID --value {TEST_UNIT}")
    report.check("service.restart of the allowlisted unit is authorised by the shipped polkit rule",
                 tool_ok(result) and before != after and after != "", f"{status} {tool_text(result)[:500]}")
    time.sleep(1)
    status, result = call_tool(port, token, "logs.query_journal", {"unit": TEST_UNIT, "lines": 50})
    entries = (result.get("structuredContent") or {}).get("entries", []) if isinstance(result, dict) else []
    started = [e for e in entries if f"{TEST_UNIT} started" in json.dumps(e)]
    report.check("logs.query_journal reads the unit's journal (both starts)", tool_ok(result) and len(started) >= 2,
                 f"{status} {tool_text(result)[:500]}")
    before = box.out(f"systemctl show -p InvocationID --value {OTHER_UNIT}")
    status, result = call_tool(port, token, "service.restart", {"unit": OTHER_UNIT})
    after = box.out(f"systemctl show -p InvocationID --value {OTHER_UNIT}")
    refused = isinstance(result, dict) and result.get("isError") is True and "allowed_units" in tool_text(result)
    report.check("service.restart of a unit not on the allowlist is refused", refused and before == after,
                 f"{status} {tool_text(result)[:500]}")
    # The rule itself, without the server's and the agent's allowlist checks in front of it.
    as_ops = "setpriv --reuid=mcp-ops --regid=mcp-ops --init-groups systemctl --no-ask-password"
    code, _, _ = box.sh(f"{as_ops} restart {TEST_UNIT}", check=False)
    report.check("polkit lets mcp-ops restart the allowlisted unit", code == 0)
    code, _, err = box.sh(f"{as_ops} restart {OTHER_UNIT}", check=False)
    report.check("polkit refuses mcp-ops a unit that is not allowlisted", code != 0, err)
    code, _, err = box.sh(
        f"setpriv --reuid=mcp --regid=mcp --init-groups systemctl --no-ask-password restart {TEST_UNIT}", check=False)
    report.check("polkit refuses the server's user mcp even the allowlisted unit", code != 0, err)


# --- self-update ---------------------------------------------------------------------------

STATE_IN_BOX = "/var/lib/mcp-raspi/version.json"
PROGRAMS = {"mcp-raspi-server.service": "mcp-raspi-server", "raspi-ops-agent.service": "raspi-ops-agent"}
# From the call to the new release answering: download, install, restart, health check.
UPDATE_TIMEOUT = 240
timings = {}


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


class UpdateRepo:
    """The signed update repository as `packaging/update-repo.sh` builds it, published again
    for each release, served by a static HTTP server on the host's loopback (which the
    container shares). It remembers the paths asked for."""

    def __init__(self, cli):
        self.cli = cli
        self.dir = WORK / "update-repo"
        self.key_dir = WORK / "update-keys"
        for d in (self.dir, self.key_dir):
            shutil.rmtree(d, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.requests = []
        repo = self

        class Handler(QuietHandler):
            def do_GET(self):
                repo.requests.append(self.path)
                super().do_GET()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(self.dir)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, deb, version, delta_from=None):
        """Makes `deb` the release of both channels (and versions/<version>), with the delta
        from the package `delta_from` when given."""
        env = {k: v for k, v in os.environ.items() if k not in ("UPDATE_KEY", "UPDATE_DELTA_FROM")}
        env["UPDATE_KEY_DIR"] = str(self.key_dir)
        if delta_from:
            env["UPDATE_DELTA_FROM"] = str(delta_from)
        code, out, err = run([ROOT / "packaging/update-repo.sh", self.cli, self.dir, deb], env=env, check=False)
        try:
            offered = json.loads((self.dir / "stable/manifest.json").read_text()).get("version")
        except (OSError, ValueError):
            offered = None
        report.require(f"update-repo.sh publishes {version} signed on the stable channel",
                       code == 0 and offered == version and (self.dir / f"versions/{version}/manifest.json.sig").exists(),
                       out + err)

    def public_key(self):
        return sorted((self.dir / "keys").glob("*.pub"))[0]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def host_cli(deb):
    """The package's own `mcp-raspi`, run on the build host to sign the update repository."""
    dest = WORK / "cli"
    shutil.rmtree(dest, ignore_errors=True)
    run(["dpkg-deb", "-x", deb, dest])
    return dest / "usr/lib/mcp-raspi/bin/mcp-raspi"


def version_state(box):
    text = box.out(f"cat {STATE_IN_BOX}", check=False)
    try:
        return json.loads(text)
    except ValueError:
        return {"unreadable": text}


def healthz_version(port):
    try:
        status, _, body = http(port, "GET", "/healthz", timeout=5)
        return json.loads(body).get("version") if status == 200 else f"HTTP {status}"
    except (OSError, HTTPException, ValueError) as e:
        return repr(e)


def unit_exes(box):
    exes = {}
    for unit in PROGRAMS:
        pid = box.out(f"systemctl show -p MainPID --value {unit}", check=False)
        exes[unit] = box.out(f"readlink -f /proc/{pid}/exe", check=False) if pid not in ("", "0") else "not running"
    return exes


def runs_release(box, version):
    exes = unit_exes(box)
    return all(exes[u] == f"/opt/mcp-raspi/releases/{version}/bin/{p}" for u, p in PROGRAMS.items()), exes


def server_status(port, token):
    """manage.get_server_status, or None while the server does not answer."""
    try:
        status, result = call_tool(port, token, "manage.get_server_status", {}, timeout=10)
    except (OSError, HTTPException):
        return None
    return structured(result) if status == 200 and tool_ok(result) else None


def wait_update_end(port, token, to, version, since, timeout=UPDATE_TIMEOUT):
    """Polls manage.get_server_status until the update to `to` has ended and the server that
    answers is `version` with a healthy /healthz; returns (the status, or the last one seen,
    and the seconds since `since`, or None on timeout)."""
    last = None
    while time.time() - since < timeout:
        state = server_status(port, token)
        if state is not None:
            last = state
            update = state.get("last_update") or {}
            if (update.get("to") == to and update.get("status") != "in_progress" and state.get("version") == version
                    and healthz_version(port) == version):
                return state, time.time() - since
        time.sleep(0.5)
    return last, None


def wait_version(port, version, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline and healthz_version(port) != version:
        time.sleep(0.5)


def journal(box, lines=60):
    return box.out(f"journalctl -b --no-pager -n {lines} -u raspi-ops-agent -u mcp-raspi-server", check=False)


def check_release_state(box, port, token, label, version, previous_good):
    """The running system tells one story: /healthz, the units, `current`, version.json and
    manage.list_versions all name `version`, with `previous_good` as where a rollback goes."""
    report.check(f"{label}: /healthz reports {version}", healthz_version(port) == version, healthz_version(port))
    ok, exes = runs_release(box, version)
    report.check(f"{label}: both units run releases/{version}", ok, str(exes))
    current = box.out("readlink /opt/mcp-raspi/current", check=False)
    report.check(f"{label}: current names releases/{version}", current == f"releases/{version}", current)
    state = version_state(box)
    report.check(f"{label}: version.json has current_version {version}, previous_good_version {previous_good}",
                 state.get("current_version") == version and state.get("previous_good_version") == previous_good,
                 json.dumps(state))
    status, result = call_tool(port, token, "manage.list_versions", {})
    listed = structured(result)
    report.check(f"{label}: manage.list_versions agrees",
                 tool_ok(result) and listed.get("current_version") == version
                 and listed.get("previous_good_version") == previous_good
                 and any(r.get("version") == version and r.get("current") for r in listed.get("releases", [])),
                 tool_text(result)[:800])
    return state


def start_update_over_mcp(port, token, repo, version, current):
    """manage.update_server on the stable channel; returns when the call was made."""
    asked = len(repo.requests)
    started = time.time()
    status, result = call_tool(port, token, "manage.update_server", {"channel": "stable"}, timeout=300)
    answer = structured(result)
    report.require(f"tools/call manage.update_server answers in_progress from {current} to {version}",
                   tool_ok(result) and answer.get("status") == "in_progress" and answer.get("target_version") == version
                   and answer.get("current_version") == current, f"{status} {tool_text(result)[:1500]}")
    fetched = repo.requests[asked:]
    report.check(f"the server fetched the stable manifest, its signature and the package of {version} over HTTP",
                 "/stable/manifest.json" in fetched and "/stable/manifest.json.sig" in fetched
                 and any(p.endswith(f"/mcp-raspi_{version}_amd64.deb") for p in fetched), str(fetched))
    return started


def check_update_over_mcp(box, port, token, repo, v1, v2, v2_deb):
    repo.publish(v2_deb, v2)
    key = repo.public_key()
    box.sh(f"cat > /etc/mcp-raspi/keys/{key.name} && chmod 0644 /etc/mcp-raspi/keys/{key.name}",
           input=key.read_text())
    status, result = call_tool(port, token, "manage.update_server", {"channel": "stable", "dry_run": True})
    answer = structured(result)
    report.check(f"manage.update_server dry_run finds {v2} on stable, signed by the trusted key, and downloads nothing",
                 tool_ok(result) and answer.get("status") == "available" and answer.get("target_version") == v2
                 and not any(p.endswith(".deb") for p in repo.requests), f"{status} {tool_text(result)[:800]}")
    started = start_update_over_mcp(port, token, repo, v2, v1)
    state, elapsed = wait_update_end(port, token, v2, v2, started)
    update = (state or {}).get("last_update") or {}
    report.require(f"the update to {v2} ends succeeded with {v2} answering (manage.get_server_status)",
                   elapsed is not None and update.get("status") == "succeeded",
                   json.dumps(state)[:1500] + "\n" + journal(box))
    timings[f"{v1} to {v2} over MCP, from the call to {v2} healthy"] = elapsed
    report.check(f"{v1} to {v2} over MCP took {elapsed:.0f} s from the call to {v2} healthy (at most 180 s)",
                 elapsed <= 180)
    report.check(f"last_update: from {v1} to {v2}, source mcp, status succeeded",
                 update.get("from") == v1 and update.get("source") == "mcp" and update.get("finished_at"),
                 json.dumps(update))
    check_release_state(box, port, token, f"after the update to {v2}", v2, v1)
    out = box.out("mcp-raspi-server --version; raspi-ops-agent --version; mcp-raspi --version", check=False)
    report.check(f"the programs under current report {v2}; the dpkg-owned CLI stays {v1}",
                 out.splitlines() == [f"mcp-raspi-server {v2}", f"raspi-ops-agent {v2}", f"mcp-raspi {v1}"], out)
    counted = box.out("journalctl -b --no-pager -o cat -u raspi-ops-agent", check=False)
    report.check(f"the agent's ExecStartPre counted its first start of {v2} before the health check",
                 f"start 1 of at most 3 of the ops agent of {v2} before it proves healthy" in counted, counted[-1500:])
    per_entry = counted.count("update: Extracting")
    report.check("the agent logs the install step by step, not each archive entry", per_entry == 0,
                 f"{per_entry} lines")
    report.check(f"the self-update leaves dpkg's record at {v1}",
                 box.out("dpkg-query -W -f '${Version}' mcp-raspi") == v1)
    release = f"/opt/mcp-raspi/releases/{v2}"
    expect_modes(box, {
        release: ("mcp-ops", "mcp-ops", "755", "directory"),
        f"{release}/bin/mcp-raspi-server": ("mcp-ops", "mcp-ops", "755", "regular file"),
        f"{release}/bin/raspi-ops-agent": ("mcp-ops", "mcp-ops", "755", "regular file"),
    }, f"after the update to {v2}")
    for directory in ("staging", "downloads"):
        left = box.out(f"ls -A /var/lib/mcp-raspi/{directory}", check=False)
        report.check(f"nothing is left in {directory}/ once the agent installed the package", left == "", left)


def check_unhealthy_rolled_back(box, port, token, repo, v1, v2, v3, v3_deb):
    repo.publish(v3_deb, v3)
    started = start_update_over_mcp(port, token, repo, v3, v2)
    state, elapsed = wait_update_end(port, token, v3, v2, started)
    update = (state or {}).get("last_update") or {}
    report.require(f"the update to {v3} (its /healthz answers 503) ends rolled_back with {v2} answering again",
                   elapsed is not None and update.get("status") == "rolled_back",
                   json.dumps(state)[:1500] + "\n" + journal(box))
    timings[f"{v2} to {v3} rolled back, from the call to {v2} healthy again"] = elapsed
    report.check(f"the automatic rollback from {v3} took {elapsed:.0f} s from the call (at most 180 s)", elapsed <= 180)
    reason = update.get("reason") or ""
    report.check(f"last_update gives the reason: {reason}",
                 update.get("from") == v2 and update.get("source") == "mcp" and "503" in reason, json.dumps(update))
    state = check_release_state(box, port, token, f"after the rollback from {v3}", v2, v1)
    report.check(f"{v3} stays the highest version installed, so it is never offered again",
                 state.get("highest_installed") == v3, json.dumps(state))


def check_manual_rollback(box, port, token, v1, v2):
    box.sh("systemctl stop mcp-raspi-server.service raspi-ops-agent.service")
    code, out, err = box.sh("mcp-raspi manage rollback", check=False)
    report.check(f"`mcp-raspi manage rollback` as root with the services stopped succeeds: {out.strip()}",
                 code == 0 and "the services are stopped" in out, out + err)
    current = box.out("readlink /opt/mcp-raspi/current", check=False)
    report.check(f"the rollback points current at releases/{v1}", current == f"releases/{v1}", current)
    state = version_state(box)
    update = state.get("last_update") or {}
    report.check(f"version.json records the rollback from {v2} to {v1} by the CLI",
                 state.get("current_version") == v1 and update.get("status") == "rolled_back"
                 and update.get("source") == "cli" and update.get("from") == v2 and update.get("to") == v1,
                 json.dumps(state))
    states = [box.out(f"systemctl is-active {u}", check=False) for u in PROGRAMS]
    report.check("the rollback leaves the stopped services stopped", all(s != "active" for s in states), str(states))
    box.sh("systemctl start raspi-ops-agent.service mcp-raspi-server.service")
    report.require("the services start after the rollback", wait_healthy(port), journal(box))
    report.check(f"/healthz reports {v1} after the start", healthz_version(port) == v1, healthz_version(port))
    ok, exes = runs_release(box, v1)
    report.check(f"both units run releases/{v1}", ok, str(exes))
    state = server_status(port, token) or {}
    report.check(f"manage.get_server_status reports {v1}", state.get("version") == v1, json.dumps(state)[:800])


def check_update_with_cli(box, port, token, repo, v1, v4, v4_deb):
    repo.publish(v4_deb, v4)
    asked = len(repo.requests)
    started = time.time()
    code, out, err = box.sh("mcp-raspi-update server --channel stable", check=False, timeout=600)
    elapsed = time.time() - started
    print("\n".join("    mcp-raspi-update: " + line for line in (out + err).splitlines()))
    report.check(f"`mcp-raspi-update server --channel stable` as root updates {v1} to {v4} and waits until it is "
                 f"healthy ({elapsed:.0f} s)", code == 0 and f"{v4} is running and healthy" in out,
                 out + err + "\n" + journal(box))
    timings[f"{v1} to {v4} with mcp-raspi-update, until the command returned"] = elapsed
    fetched = repo.requests[asked:]
    report.check(f"the CLI fetched the package of {v4} over HTTP",
                 any(p.endswith(f"/mcp-raspi_{v4}_amd64.deb") for p in fetched), str(fetched))
    wait_version(port, v4, 30)
    update = check_release_state(box, port, token, f"after `mcp-raspi-update server` to {v4}", v4, v1).get(
        "last_update") or {}
    report.check(f"last_update: from {v1} to {v4}, source cli, status succeeded",
                 update.get("from") == v1 and update.get("to") == v4 and update.get("source") == "cli"
                 and update.get("status") == "succeeded", json.dumps(update))
    code, out, err = box.sh("mcp-raspi-cli manage rollback", check=False)
    report.check(f"`mcp-raspi-cli manage rollback` as root with the services running succeeds: {out.strip()}",
                 code == 0 and f"current: {v1}" in out, out + err)
    wait_version(port, v1, 60)
    state = check_release_state(box, port, token, f"after `mcp-raspi-cli manage rollback` from {v4}", v1, None)
    update = state.get("last_update") or {}
    report.check(f"version.json records the rollback from {v4} to {v1}",
                 update.get("status") == "rolled_back" and update.get("from") == v4 and update.get("to") == v1,
                 json.dumps(update))


def check_delta_update(box, port, token, repo, v1, v4, v4_deb, v5, v5_deb):
    """With updates.delta on, from v4 (back from v1 by a rollback) to v5 over MCP: the server
    downloads the delta from v4, the agent rebuilds v5 from releases/v4 under its unit's
    sandbox, and v5 proves healthy."""
    code, out, err = box.sh(f"mcp-raspi manage rollback --to {v4}", check=False)
    report.require(f"`mcp-raspi manage rollback --to {v4}` goes to {v4}", code == 0 and f"current: {v4}" in out,
                   out + err)
    config = box.out("cat /etc/mcp-raspi/config.yml")
    old = "experimental_features:\n  enabled: false\n  features: []\n"
    report.require("the installed configuration lists no experimental features", old in config, config[-2000:])
    new = ("experimental_features:\n  enabled: true\n  features:\n"
           "    - { name: updates.delta, enabled: true, acknowledged_risks: true }\n")
    box.sh("cat > /etc/mcp-raspi/config.yml", input=config.replace(old, new, 1) + "\n")
    box.sh("systemctl restart raspi-ops-agent.service mcp-raspi-server.service")
    wait_version(port, v4, 60)
    repo.publish(v5_deb, v5, delta_from=v4_deb)
    deltas = sorted((repo.dir / "pool").glob(f"mcp-raspi_{v4}_to_{v5}_amd64.delta"))
    report.require(f"update-repo.sh publishes the delta from {v4} to {v5} in a signed deltas.json",
                   len(deltas) == 1 and (repo.dir / "stable/deltas.json.sig").exists(),
                   str(sorted(p.name for p in (repo.dir / "pool").iterdir())))
    delta_size, package_size = deltas[0].stat().st_size, v5_deb.stat().st_size
    asked = len(repo.requests)
    started = time.time()
    status, result = call_tool(port, token, "manage.update_server", {"channel": "stable"}, timeout=300)
    answer = structured(result)
    report.require(f"tools/call manage.update_server answers in_progress from {v4} to {v5}",
                   tool_ok(result) and answer.get("status") == "in_progress" and answer.get("target_version") == v5,
                   f"{status} {tool_text(result)[:1500]}\n{journal(box)}")
    fetched = repo.requests[asked:]
    report.check(f"the server downloaded the {delta_size}-byte delta instead of the {package_size}-byte package",
                 answer.get("download_bytes") == delta_size and deltas[0].name in " ".join(fetched)
                 and not any(p.endswith(".deb") for p in fetched), f"{answer} {fetched}")
    state, elapsed = wait_update_end(port, token, v5, v5, started)
    update = (state or {}).get("last_update") or {}
    report.require(f"the delta update to {v5} ends succeeded with {v5} answering",
                   elapsed is not None and update.get("status") == "succeeded",
                   json.dumps(state)[:1500] + "\n" + journal(box))
    timings[f"{v4} to {v5} over MCP with the delta, from the call to {v5} healthy"] = elapsed
    check_release_state(box, port, token, f"after the delta update to {v5}", v5, v4)
    agent_log = box.out("journalctl -b --no-pager -o cat -u raspi-ops-agent", check=False)
    report.check("the agent rebuilt the release from the delta (update: Patched)", "update: Patched" in agent_log,
                 agent_log[-1500:])
    # staging/root-downloads/ is where `mcp-raspi update server` (root) downloads; it stays,
    # empty, after the CLI's update earlier.
    for directory in ("staging", "staging/root-downloads", "downloads"):
        left = box.out(f"ls -A /var/lib/mcp-raspi/{directory} | grep -vx root-downloads || true", check=False)
        report.check(f"nothing is left in {directory}/ once the agent installed the delta", left == "", left)


def check_upgrade(box, version, upgrade_version, repo, upgrade_deb, port, token):
    run([ROOT / "packaging/apt-repo.sh", repo, upgrade_deb], env={**os.environ, "APT_REPO_GNUPGHOME": str(gnupghome())})
    box.sh("apt-get update -q")
    server_pid = box.out("systemctl show -p MainPID --value mcp-raspi-server.service")
    agent_pid = box.out("systemctl show -p MainPID --value raspi-ops-agent.service")
    code, output = apt_install(box, "mcp-raspi")
    report.require(f"apt upgrades mcp-raspi {version} to {upgrade_version}", code == 0, output[-3000:])
    installed = box.out("dpkg-query -W -f '${Version}' mcp-raspi")
    report.check("the upgraded version is installed", installed == upgrade_version, installed)
    current = box.out("readlink /opt/mcp-raspi/current")
    report.check("current names the upgraded release", current == f"releases/{upgrade_version}", current)
    state = version_state(box)
    report.check(f"after a self-update, apt leaves dpkg, current and version.json all at {upgrade_version}",
                 installed == upgrade_version and current == f"releases/{upgrade_version}"
                 and state.get("current_version") == upgrade_version, json.dumps(state))
    kept = box.sh(f"test -x /opt/mcp-raspi/releases/{version}/bin/mcp-raspi-server", check=False)[0] == 0
    report.check("the previous release is kept", kept)
    report.check("the upgrade did not print a new token", "generated an admin bearer token" not in output)
    report.check("the token survived the upgrade",
                 box.out("sed -n 's/^MCP_RASPI_ADMIN_TOKEN=//p' /etc/mcp-raspi/secrets.env") == token)
    report.check("the changed configuration survived the upgrade",
                 TEST_UNIT in box.out("cat /etc/mcp-raspi/config.yml"))
    report.require("the server answers after the upgrade", wait_healthy(port))
    for unit, program, old_pid in (("mcp-raspi-server.service", "mcp-raspi-server", server_pid),
                                   ("raspi-ops-agent.service", "raspi-ops-agent", agent_pid)):
        new_pid = box.out(f"systemctl show -p MainPID --value {unit}")
        exe = box.out(f"readlink -f /proc/{new_pid}/exe", check=False)
        report.check(f"{unit} was restarted on the new release",
                     new_pid != old_pid and exe == f"/opt/mcp-raspi/releases/{upgrade_version}/bin/{program}", exe)
    status, result = call_tool(port, token, "system.get_info", {})
    report.check("MCP works after the upgrade", status == 200 and tool_ok(result), tool_text(result)[:300])
    code, output = apt_install(box, "mcp-raspi")
    report.check("installing it twice is a no-op that succeeds", code == 0 and "already the newest" in output,
                 output[-1000:])
    code, output = apt_install(box, "mcp-raspi", "--reinstall")
    report.check("apt reinstall succeeds", code == 0, output[-2000:])
    report.check("current is unchanged by the reinstall",
                 box.out("readlink /opt/mcp-raspi/current") == f"releases/{upgrade_version}")
    report.check("version.json is unchanged by the reinstall", version_state(box) == state, json.dumps(state))
    report.check("the server answers after the reinstall", wait_healthy(port))


KEPT_ON_REMOVE = [
    "/etc/mcp-raspi/config.yml",
    "/etc/mcp-raspi/secrets.env",
    "/etc/mcp-raspi/keys",
    "/var/lib/mcp-raspi",
    STATE_IN_BOX,
    "/var/log/mcp-raspi/app.log",
    "/opt/mcp-raspi/current",
]

GONE_ON_PURGE = [
    "/etc/mcp-raspi",
    "/var/lib/mcp-raspi",
    "/var/log/mcp-raspi",
    "/opt/mcp-raspi",
    "/usr/lib/mcp-raspi",
    "/usr/bin/mcp-raspi",
    "/usr/bin/mcp-raspi-update",
    "/usr/bin/mcp-raspi-cli",
    "/usr/bin/mcp-raspi-config",
    "/usr/share/man/man1/mcp-raspi-update.1.gz",
    "/usr/bin/mcp-raspi-server",
    "/usr/bin/raspi-ops-agent",
    "/usr/lib/systemd/system/mcp-raspi-server.service",
    "/usr/lib/systemd/system/raspi-ops-agent.service",
    "/usr/lib/systemd/system/mcp-raspi-config-apply.service",
    "/etc/systemd/system/multi-user.target.wants/mcp-raspi-server.service",
    "/etc/systemd/system/multi-user.target.wants/raspi-ops-agent.service",
    "/etc/polkit-1/rules.d/50-mcp-raspi.rules",
    "/etc/logrotate.d/mcp-raspi",
    "/run/mcp-raspi",
]


def check_remove_and_purge(box, releases, port, token):
    code, out, err = box.sh("apt-get remove -y -q mcp-raspi", check=False)
    report.require("apt remove succeeds", code == 0, out + err)
    for unit in ("raspi-ops-agent.service", "mcp-raspi-server.service"):
        report.check(f"{unit} is stopped after remove",
                     box.out(f"systemctl is-active {unit}", check=False) in ("inactive", "unknown", "failed"))
    for path in KEPT_ON_REMOVE:
        report.check(f"remove keeps {path}", box.sh(f"test -e {path}", check=False)[0] == 0)
    for release in releases:
        report.check(f"remove keeps release {release}",
                     box.sh(f"test -d /opt/mcp-raspi/releases/{release}", check=False)[0] == 0)
    for path in ("/usr/lib/mcp-raspi", "/usr/bin/mcp-raspi-server", "/usr/bin/mcp-raspi-update",
                 "/etc/polkit-1/rules.d/50-mcp-raspi.rules"):
        report.check(f"remove deletes {path}", box.sh(f"test -e {path} || test -L {path}", check=False)[0] != 0)
    report.check("the package is left in state config-files",
                 box.out("dpkg-query -W -f '${Status}' mcp-raspi", check=False) == "deinstall ok config-files")

    code, output = apt_install(box, "mcp-raspi")
    report.check("installing again after remove succeeds", code == 0, output[-2000:])
    report.check("the token is kept across remove and install",
                 box.out("sed -n 's/^MCP_RASPI_ADMIN_TOKEN=//p' /etc/mcp-raspi/secrets.env") == token)
    report.check("the server answers after installing again", wait_healthy(port))

    groups_before = box.out("getent group gpio i2c spi | cut -d: -f1", check=False).split()
    code, out, err = box.sh("apt-get purge -y -q mcp-raspi", check=False)
    report.require("apt purge succeeds", code == 0, out + err)
    for path in GONE_ON_PURGE:
        report.check(f"purge leaves no {path}", box.sh(f"test -e {path} || test -L {path}", check=False)[0] != 0)
    report.check("purge removes the users mcp and mcp-ops",
                 box.sh("getent passwd mcp || getent passwd mcp-ops", check=False)[0] != 0)
    report.check("purge removes the groups mcp and mcp-ops",
                 box.sh("getent group mcp || getent group mcp-ops", check=False)[0] != 0)
    report.check("purge removes the device groups the package created (Debian lacks gpio, i2c, spi)",
                 groups_before == ["gpio", "i2c", "spi"] and box.out("getent group gpio i2c spi", check=False) == "",
                 str(groups_before))
    report.check("purge removes the dpkg-statoverride entries",
                 "mcp-raspi" not in box.out("dpkg-statoverride --list", check=False))
    report.check("dpkg no longer knows the package",
                 box.sh("dpkg-query -W -f '${Status}' mcp-raspi", check=False)[1] in ("", "unknown ok not-installed"))
    leftovers = box.out(
        "find / -xdev \\( -path /proc -o -path /sys -o -path /srv -o -path /var/lib/apt/lists -o -path /var/cache/apt "
        # The operator's backups outlive the package, as they must for a restore after a purge.
        "-o -path /var/backups "
        f"-o -path /etc/apt \\) -prune -o \\( -nouser -o -nogroup -o -name '*mcp-raspi*' -o -name '*ops-agent*' \\) "
        f"-print | grep -v -e {TEST_UNIT} -e 'mcp-raspi-server.service.d' || true")
    report.check("nothing of the package is left on the file system", leftovers == "", leftovers)
    helper_state = box.out("ls /var/lib/systemd/deb-systemd-helper-enabled/ 2>/dev/null | grep -e mcp-raspi "
                           "-e ops-agent || true")
    report.check("no systemd enable state of the units is left", helper_state == "", helper_state)


def check_fleet_package(box, version):
    """mcp-fleet, the operator's package, on a machine without mcp-raspi (purged just before):
    it installs alone, creates no user or unit, runs, and leaves nothing when purged."""
    units_before = box.out("systemctl list-unit-files --no-legend --plain", check=False)
    users_before = box.out("getent passwd | cut -d: -f1", check=False)
    code, output = apt_install(box, "mcp-fleet")
    report.require("apt installs mcp-fleet from the fleet's repository", code == 0, output[-2000:])
    report.check("mcp-fleet brings no mcp-raspi with it",
                 box.sh("dpkg-query -W -f '${Status}' mcp-raspi", check=False)[1] in ("", "unknown ok not-installed"))
    report.check("mcp-fleet prints its version", box.out("mcp-fleet --version", check=False) == f"mcp-fleet {version}")
    listed = box.out("mcp-fleet --file /usr/share/doc/mcp-fleet/examples/fleet-config.yml list --json", check=False)
    try:
        devices = [d["id"] for d in json.loads(listed)["devices"]]
    except (ValueError, KeyError, TypeError):
        devices = []
    report.check("mcp-fleet reads the example fleet file it ships", devices == ["pi-living-room", "pi-garage"],
                 listed)
    refused = box.sh("mcp-fleet --file /usr/share/doc/mcp-fleet/examples/fleet-config.yml exec --all 'rm -rf /'",
                     check=False)
    report.check("mcp-fleet refuses a shell command with exit status 2", refused[0] == 2 and
                 "never a shell" in refused[2], refused[2])
    report.check("mcp-fleet's man page is installed", box.sh("test -f /usr/share/man/man1/mcp-fleet.1.gz", check=False)[0] == 0)
    report.check("mcp-fleet creates no user and no unit",
                 box.out("getent passwd | cut -d: -f1", check=False) == users_before
                 and box.out("systemctl list-unit-files --no-legend --plain", check=False) == units_before)
    code, out, err = box.sh("apt-get purge -y -q mcp-fleet", check=False)
    report.check("apt purges mcp-fleet", code == 0, out + err)
    leftovers = box.out("find / -xdev \\( -path /proc -o -path /sys -o -path /srv -o -path /var/lib/apt/lists "
                        "-o -path /var/cache/apt -o -path /etc/apt \\) -prune -o -name '*mcp-fleet*' -print || true")
    report.check("nothing of mcp-fleet is left on the file system", leftovers == "", leftovers)


def gnupghome():
    return Path(os.environ.get("APT_REPO_GNUPGHOME", ROOT / "target/apt-repo-gnupg")).resolve()


def gpg_agents_of(home):
    """Pids of the gpg-agents serving the key home `home`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"gpg-agent") and str(home).encode() in argv:
            pids.append(int(proc.name))
    return pids


def prove_amd64(version, releases, repo, update_repo):
    """`releases`: role (v2, v3, v4) to (version, .deb)."""
    (v2, v2_deb), (v3, v3_deb), (v4, v4_deb) = releases["v2"], releases["v3"], releases["v4"]
    v5, v5_deb = releases["v5"]
    rootfs = fresh_rootfs("amd64")
    port = free_port()
    add_repo_source(rootfs, repo)
    drop_in = rootfs / "etc/systemd/system/mcp-raspi-server.service.d"
    drop_in.mkdir(parents=True)
    (drop_in / "10-pkgtest.conf").write_text(DROP_IN.format(port=port))
    (rootfs / "etc/systemd/system" / TEST_UNIT).write_text(TEST_UNIT_TEXT)
    apt_cache = CACHE / "apt-archives-amd64"
    (apt_cache / "partial").mkdir(parents=True, exist_ok=True)
    binds = [(repo, REPO_IN_BOX, True), (apt_cache, "/var/cache/apt/archives", False)]
    log(f"booting bookworm amd64 with systemd-nspawn (MCP on 127.0.0.1:{port}, updates from {update_repo.url})")
    box = Box(rootfs, binds, WORK / "amd64-console.log")
    try:
        state, detail = box.wait_booted()
        report.require("the container boots to running or degraded", state in ("running", "degraded"), detail)
        if state == "degraded":
            print("    failed units: " + box.out("systemctl --failed --no-legend --plain", check=False))
        box.sh("apt-get update -q", timeout=600)
        check_install(box, version, port)
        token = check_mcp(box, port)
        check_real_backends(box, port, token, update_repo.url)
        os_upgrade.prove(sys.modules[__name__], box, port, token)
        log("configuration deployment: mcp-fleet config deploy from the host")
        config_deploy.prove(sys.modules[__name__], box, port, token, repo)
        operations.check_operations(sys.modules[__name__], box, port, token, version)
        log(f"self-update over MCP: {version} to {v2}")
        check_update_over_mcp(box, port, token, update_repo, version, v2, v2_deb)
        log(f"self-update over MCP to {v3}, which fails its health check")
        check_unhealthy_rolled_back(box, port, token, update_repo, version, v2, v3, v3_deb)
        log(f"apt upgrade to {v2}'s package after the self-update")
        check_upgrade(box, version, v2, repo, v2_deb, port, token)
        log(f"mcp-raspi manage rollback to {version} with the services stopped")
        check_manual_rollback(box, port, token, version, v2)
        log(f"mcp-raspi-update server --channel stable to {v4}, mcp-raspi-cli manage rollback")
        check_update_with_cli(box, port, token, update_repo, version, v4, v4_deb)
        log(f"delta update over MCP from {v4} to {v5}")
        check_delta_update(box, port, token, update_repo, version, v4, v4_deb, v5, Path(v5_deb))
        log("remove and purge")
        # Pruning keeps updates.keep_versions releases: the ones left are the ones remove keeps.
        kept = box.out("ls /opt/mcp-raspi/releases", check=False).split()
        check_remove_and_purge(box, kept, port, token)
        log("mcp-fleet alone: install, run, purge")
        check_fleet_package(box, version)
    finally:
        # For the reader of a failure: what the two programs logged.
        (WORK / "amd64-journal.log").write_text(box.out(
            "journalctl -b --no-pager -u raspi-ops-agent -u mcp-raspi-server -u polkit", check=False))
        box.stop()


def prove_arm64(version, repo):
    rootfs = fresh_rootfs("arm64")
    add_repo_source(rootfs, repo)
    apt_cache = CACHE / "apt-archives-arm64"
    (apt_cache / "partial").mkdir(parents=True, exist_ok=True)
    script = (
        "set -e; export DEBIAN_FRONTEND=noninteractive; apt-get update -q >/dev/null; "
        "apt-get install -y -q mcp-raspi >/tmp/apt.log 2>&1 || { tail -n 40 /tmp/apt.log; exit 1; }; "
        "echo arch=$(dpkg --print-architecture) machine=$(uname -m); "
        "mcp-raspi-server --version; raspi-ops-agent --version; mcp-raspi --version; "
        "echo current=$(readlink /opt/mcp-raspi/current)"
    )
    cmd = [
        "systemd-nspawn", "--quiet", "-D", rootfs, "--register=no", "--keep-unit", "--machine=mcp-raspi-pkgtest-arm64",
        f"--bind-ro={repo}:{REPO_IN_BOX}", f"--bind={apt_cache}:/var/cache/apt/archives",
        "/bin/sh", "-c", script,
    ]
    code, out, err = run(cmd, check=False, timeout=1800)
    lines = out.splitlines()
    print("\n".join("    arm64: " + line for line in lines))
    report.require("apt installs the arm64 package into an arm64 chroot under qemu-user-static", code == 0,
                   out[-2000:] + err[-2000:])
    report.check("the arm64 chroot runs arm64 programs", "arch=arm64 machine=aarch64" in lines, out)
    for program in ("mcp-raspi-server", "raspi-ops-agent", "mcp-raspi"):
        report.check(f"arm64 {program} prints its version", f"{program} {version}" in lines, out)
    report.check("arm64 postinst activated the release", f"current=releases/{version}" in lines, out)


def load_releases(version):
    """The releases `prove.py releases` built for the package under test: role to (version, .deb)."""
    try:
        index = json.loads(RELEASES_INDEX.read_text())
    except (OSError, ValueError) as e:
        raise Fatal(f"{RELEASES_INDEX} is missing or unreadable ({e}): run prove.py releases --version {version}")
    if index.get("base") != version:
        raise Fatal(f"{RELEASES_INDEX} holds releases above {index.get('base')}, not {version}: build them again")
    releases = {}
    for role, by, _ in RELEASE_ROLES:
        entry = index["releases"].get(role) or {}
        deb = Path(entry.get("deb", "/nonexistent"))
        if entry.get("version") != bump(version, by) or not deb.exists():
            raise Fatal(f"{RELEASES_INDEX} lacks {role} ({bump(version, by)}): build the releases again")
        releases[role] = (entry["version"], deb)
    return releases


def prove(args):
    version = args.version
    repo_src = Path(args.repo).resolve()
    debs = [Path(d).resolve() for d in args.debs]
    for deb in debs:
        if not deb.exists():
            raise Fatal(f"{deb} is missing: run make deb deb-arm64 deb-armhf")
    log("the units")
    check_units()
    log("the packages")
    check_debs(debs)
    releases = load_releases(version)
    repo = WORK / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(repo_src, repo, symlinks=True)
    report.require("the APT repository holds amd64, arm64 and armhf", all(
        (repo / f"dists/stable/main/binary-{a}/Packages").read_text().count("Package: mcp-raspi\n") == 1
        for a in ("amd64", "arm64", "armhf")))
    report.check("the APT repository holds mcp-fleet for amd64, arm64 and armhf", all(
        (repo / f"dists/stable/main/binary-{a}/Packages").read_text().count("Package: mcp-fleet\n") == 1
        for a in ("amd64", "arm64", "armhf")))
    code, _, err = run(["gpgv", "--keyring", repo / "mcp-raspi-archive-keyring.gpg", repo / "dists/stable/InRelease"],
                       check=False)
    report.check("the repository's InRelease verifies with its exported key", code == 0, err)

    arm64_error = []

    # The amd64 proof adds the upgrade to its repository; the arm64 one gets its own copy.
    repo_arm64 = WORK / "repo-arm64"
    shutil.rmtree(repo_arm64, ignore_errors=True)
    shutil.copytree(repo_src, repo_arm64, symlinks=True)

    def arm64():
        try:
            prove_arm64(version, repo_arm64)
        except Fatal as e:
            arm64_error.append(str(e))
        except Exception as e:  # any crash of the thread is a failure of the proof
            report.check(f"arm64 proof ran to the end ({e!r})", False)
            arm64_error.append(repr(e))

    arm64_thread = threading.Thread(target=arm64)
    arm64_thread.start()
    update_repo = UpdateRepo(host_cli(next(d for d in debs if re.match(r"mcp-raspi_.*_amd64\.deb$", d.name))))
    try:
        prove_amd64(version, releases, repo, update_repo)
    finally:
        update_repo.close()
        arm64_thread.join()
        agents = gpg_agents_of(gnupghome())
        report.check("no gpg-agent of the APT repository's key home outlives packaging/apt-repo.sh", not agents,
                     f"still running: pids {agents}")
        for what, seconds in timings.items():
            print(f"    time: {what}: " + (f"{seconds:.1f} s" if seconds is not None else "did not end"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("chroots", help="create the cached chroots")
    p = sub.add_parser("releases", help="build the newer releases the self-update goes to")
    p.add_argument("--version", required=True, help="the version of the package under test")
    p = sub.add_parser("run", help="prove the packages")
    p.add_argument("--version", required=True)
    p.add_argument("--repo", required=True)
    p.add_argument("debs", nargs="+", metavar="DEB",
                   help="mcp-raspi's three packages, and mcp-fleet's (checked with them and installed alone)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("prove.py needs root (debootstrap, systemd-nspawn)", file=sys.stderr)
        return 2
    WORK.mkdir(parents=True, exist_ok=True)
    if args.command == "chroots":
        return chroots()
    if args.command == "releases":
        try:
            build_releases(args.version)
        except Fatal as e:
            print(e, file=sys.stderr)
            return 1
        return 0
    started = time.time()
    try:
        register_binfmt()
        prove(args)
    except Fatal as e:
        report.check("the proof ran to the end", False, str(e))
    print(f"\n{len(report.passed)} checks passed, {len(report.failed)} failed in {time.time() - started:.0f} s")
    for name in report.failed:
        print(f"  FAILED: {name}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
