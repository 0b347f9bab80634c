"""The OS package upgrade in the booted system, for prove.py: os.check_updates and
os.apply_updates over MCP from the host, through the agent, its polkit rule and the shipped
root one-shot unit mcp-raspi-os-upgrade.service, upgrading a test package from 1.0 to 1.1
from a local flat APT repository; a second upgrade with nothing to do; and the unit's
program refusing once updates.os.apply_enabled is false, when started with systemctl and
when the agent (still running with the old configuration) starts it.

prove.py calls `prove(p, box, port, token)` with itself as `p`, once the packaged
configuration has been changed for the test (real backends, test port), and uses its
report, Box and MCP helpers. The test package and its repository are removed at the end,
so that the purge check later finds nothing of them.
"""

import json
import re
import shutil
import subprocess
import time

UNIT = "mcp-raspi-os-upgrade.service"
# The exposure systemd-analyze gives the unit. It runs apt and maintainer scripts as root,
# which tolerate little sandboxing (see the unit's comments): this keeps what it has.
EXPOSURE_LIMIT = 8.0
PACKAGE = "mcp-raspi-ostest"
OLD, NEW = "1.0", "1.1"
REPO_IN_BOX = "/srv/mcp-raspi-ostest-repo"
SOURCE = "/etc/apt/sources.list.d/mcp-raspi-ostest.list"
PIN = "/etc/apt/preferences.d/mcp-raspi-ostest"
CONFFILE = f"/etc/{PACKAGE}.conf"
MARKER = f"/var/lib/{PACKAGE}/postinst"
RECORD = "/var/lib/mcp-raspi/os-upgrade.json"
CONFIG = "/etc/mcp-raspi/config.yml"
APPLY_TIMEOUT = 300

# Versions from the Debian archive are never candidates to replace an installed one (a
# priority below 100), so that the upgrade under test touches only the test package however
# old the cached system is; installing new packages from Debian still works.
PIN_TEXT = """# The mcp-raspi package test upgrades only its own test package.
Package: *
Pin: release o=Debian
Pin-Priority: 1
"""

POSTINST = """#!/bin/sh
set -e
if [ "$1" = configure ]; then
    mkdir -p /var/lib/mcp-raspi-ostest
    echo "configured {version} after ${{2:-nothing}}" >/var/lib/mcp-raspi-ostest/postinst
fi
"""

POSTRM = """#!/bin/sh
set -e
if [ "$1" = purge ]; then
    rm -rf /var/lib/mcp-raspi-ostest
fi
"""


def output(p, cmd, cwd):
    """The standard output of `cmd` run in `cwd`; a failure ends the proof."""
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise p.Fatal(f"{' '.join(map(str, cmd))} in {cwd} exited with {done.returncode}:\n{done.stderr}")
    return done.stdout


def build_package(p, version):
    """mcp-raspi-ostest VERSION, architecture all: a conffile, a data file, and a postinst
    that records which version it configured after which."""
    work = p.WORK
    root = work / f"{PACKAGE}-{version}"
    shutil.rmtree(root, ignore_errors=True)
    debian = root / "DEBIAN"
    debian.mkdir(parents=True)
    (debian / "control").write_text(
        f"Package: {PACKAGE}\nVersion: {version}\nArchitecture: all\nSection: misc\nPriority: optional\n"
        "Maintainer: mcp-raspi maintainers <maintainers@example.invalid>\n"
        "Description: package that the mcp-raspi package test upgrades\n"
        " It holds a configuration file and its own version, and nothing else.\n"
    )
    (debian / "conffiles").write_text(f"{CONFFILE}\n")
    for name, text in (("postinst", POSTINST.format(version=version)), ("postrm", POSTRM)):
        (debian / name).write_text(text)
        (debian / name).chmod(0o755)
    (root / "etc").mkdir()
    (root / CONFFILE.lstrip("/")).write_text(f"setting = {version}\n")
    share = root / "usr/share" / PACKAGE
    share.mkdir(parents=True)
    (share / "version").write_text(f"{version}\n")
    deb = work / f"{PACKAGE}_{version}_all.deb"
    output(p, ["dpkg-deb", "--root-owner-group", "--build", root, deb], work)
    shutil.rmtree(root)
    return deb


def flat_repository(p, box, new_deb):
    """The repository in the box's /srv, with only the new version: Packages and Release
    generated on the host with apt-ftparchive, readable by apt's unprivileged _apt; its
    source line, and the pin that keeps Debian's packages as they are."""
    repo = box.rootfs / REPO_IN_BOX.lstrip("/")
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    repo.chmod(0o755)
    shutil.copyfile(new_deb, repo / new_deb.name)
    (repo / "Packages").write_text(output(p, ["apt-ftparchive", "packages", "."], repo))
    (repo / "Release").write_text(output(p, ["apt-ftparchive", "release", "."], repo))
    for f in repo.iterdir():
        f.chmod(0o644)
    (box.rootfs / SOURCE.lstrip("/")).write_text(f"deb [trusted=yes] file:{REPO_IN_BOX} ./\n")
    (box.rootfs / PIN.lstrip("/")).write_text(PIN_TEXT)


def set_apply_enabled(p, box, enabled):
    """Changes updates.os.apply_enabled in the box's configuration file (and nothing else)."""
    text = box.out(f"cat {CONFIG}")
    off, on = "    apply_enabled: false", "    apply_enabled: true"
    changed = text.replace(off, on, 1) if enabled else text.replace(on, off, 1)
    if changed == text:
        raise p.Fatal(f"{CONFIG} has no `apply_enabled` line to change: update tests/package/os_upgrade.py")
    box.sh(f"cat > {CONFIG}", input=changed)


def reconfigure(p, box, port, label):
    code, out, err = box.sh("dpkg-reconfigure mcp-raspi", check=False)
    p.report.check(f"{label}: dpkg-reconfigure regenerates the polkit rule and restarts the services", code == 0,
                   out + err)
    p.report.require(f"{label}: the server is back", p.wait_healthy(port))
    return box.out("cat /etc/polkit-1/rules.d/50-mcp-raspi.rules", check=False)


def record(box):
    """The upgrade's record in the box, or {}."""
    try:
        return json.loads(box.out(f"cat {RECORD}", check=False))
    except ValueError:
        return {}


def check_unit(p, box):
    """The shipped unit, as prove.py checks each one-shot, and that it can start again and
    cannot be stopped half-way."""
    p.check_oneshot_unit(box, UNIT, EXPOSURE_LIMIT, "os-upgrade")
    props = box.out(f"systemctl show -p Type -p RemainAfterExit -p RefuseManualStop -p User {UNIT}").split()
    p.report.check(f"{UNIT} is a one-shot that can start again and cannot be stopped half-way",
                   sorted(props) == ["RefuseManualStop=yes", "RemainAfterExit=no", "Type=oneshot", "User="],
                   str(props))


class Applied:
    """One os.apply_updates call that waited for the end."""

    def __init__(self, p, port, token):
        started = time.time()
        self.status, self.result = p.call_tool(port, token, "os.apply_updates",
                                               {"confirm": True, "wait_seconds": APPLY_TIMEOUT},
                                               timeout=APPLY_TIMEOUT + 60)
        self.seconds = time.time() - started
        self.ok = p.tool_ok(self.result)
        self.answer = p.structured(self.result)
        self.upgrade = self.answer.get("status") or {}
        self.state = self.upgrade.get("state")
        self.outcome = self.upgrade.get("outcome") or {}
        self.text = f"{self.status} {p.tool_text(self.result)[:3000]}"

    def ends_with(self, lines):
        """Whether the program's last lines in the log tail are `lines`; systemd's messages
        about the unit (that it finished) may follow them."""
        tail = [line for line in self.upgrade.get("log_tail") or [] if UNIT not in line]
        return tail[-len(lines):] == lines


def unit_journal(box, wanted, timeout=10):
    """The unit's last journal lines, once they contain `wanted` (journald writes what a
    program printed a moment after it has exited) or the timeout has passed."""
    deadline = time.time() + timeout
    while True:
        text = box.out(f"journalctl -b --no-pager -o cat -n 20 -u {UNIT}", check=False)
        if wanted in text or time.time() > deadline:
            return text
        time.sleep(0.5)


def install_test_package(p, box, port, token):
    """1.0 installed with its configuration file changed by the operator, 1.1 offered by the
    flat repository, and os.check_updates seeing both."""
    report = p.report
    old_deb, new_deb = build_package(p, OLD), build_package(p, NEW)
    # Not /tmp, which is a tmpfs inside the booted system.
    shutil.copyfile(old_deb, box.rootfs / "root" / old_deb.name)
    code, out, err = box.sh(f"apt-get install -y -q /root/{old_deb.name}", check=False, timeout=300)
    report.require(f"{PACKAGE} {OLD} installs in the box", code == 0, out + err)
    box.sh(f"rm -f /root/{old_deb.name}; echo 'setting = the operator' > {CONFFILE}")
    flat_repository(p, box, new_deb)
    code, out, err = box.sh("apt-get update -q", check=False, timeout=600)
    report.require(f"apt reads the flat repository serving {PACKAGE} {NEW}", code == 0, out + err)
    status, result = p.call_tool(port, token, "os.check_updates", {})
    listed = [u for u in p.structured(result).get("packages", []) if u.get("name") == PACKAGE]
    report.check(f"os.check_updates lists {PACKAGE} from {OLD} to {NEW}",
                 p.tool_ok(result) and len(listed) == 1 and listed[0].get("installed_version") == OLD
                 and listed[0].get("candidate_version") == NEW, f"{status} {p.tool_text(result)[:1500]}")


def check_upgrade(p, box, port, token):
    """os.apply_updates upgrades the test package; returns the run's invocation id."""
    report = p.report
    run = Applied(p, port, token)
    p.timings[f"os.apply_updates of {PACKAGE} {OLD} to {NEW}, until the call returned"] = run.seconds
    journal = box.out(f"journalctl -b --no-pager -n 60 -u {UNIT}", check=False)
    report.check(f"os.apply_updates ends succeeded within {APPLY_TIMEOUT} s ({run.seconds:.0f} s)",
                 run.ok and run.answer.get("finished") is True and run.state == "succeeded"
                 and run.outcome.get("result") == "succeeded", f"{run.text}\n{journal}")
    outcome = run.outcome
    report.check(f"its outcome names {PACKAGE} {OLD} -> {NEW}, and nothing installed or removed",
                 outcome.get("upgraded") == [{"name": PACKAGE, "from": OLD, "to": NEW}]
                 and outcome.get("installed") == [] and outcome.get("removed") == []
                 and outcome.get("error") is None and outcome.get("mode") == "with_new_packages"
                 and outcome.get("refresh_lists") is True
                 and re.fullmatch(r"[0-9a-f]{32}", outcome.get("invocation_id") or "") is not None,
                 json.dumps(outcome))
    summary = [f"upgraded {PACKAGE} {OLD} -> {NEW}", "succeeded: 1 upgraded, 0 newly installed, 0 removed"]
    report.check("its log tail ends with the package and the summary, before systemd's own lines",
                 run.ends_with(summary), json.dumps(run.upgrade.get("log_tail")))
    installed = box.out(f"dpkg-query -W {PACKAGE}", check=False)
    report.check(f"dpkg-query -W {PACKAGE} says {NEW}", installed == f"{PACKAGE}\t{NEW}", installed)
    report.check("the operator's change to the package's configuration file is kept without a question, "
                 "the package's version beside it",
                 box.out(f"cat {CONFFILE}", check=False) == "setting = the operator"
                 and box.out(f"cat {CONFFILE}.dpkg-dist", check=False) == f"setting = {NEW}",
                 box.out(f"head {CONFFILE}*", check=False))
    marker = box.out(f"cat {MARKER}", check=False)
    report.check("the package's postinst ran inside the unit's sandbox", marker == f"configured {NEW} after {OLD}",
                 marker)
    stat = box.out(f"stat -c '%U %G %a' {RECORD}", check=False)
    saved = record(box)
    report.check(f"{RECORD} is root's, 0644, and says the same", stat == "root root 644"
                 and saved.get("upgraded") == outcome.get("upgraded") and saved.get("result") == "succeeded",
                 f"{stat} {json.dumps(saved)}")
    state = box.out(f"systemctl is-active {UNIT}", check=False)
    report.check(f"{UNIT} is inactive again, not failed", state == "inactive", state)
    return outcome.get("invocation_id")


def check_nothing_to_upgrade(p, port, token, first):
    run = Applied(p, port, token)
    p.timings["os.apply_updates with nothing to upgrade, until the call returned"] = run.seconds
    p.report.check(f"a second os.apply_updates succeeds and says nothing was upgraded ({run.seconds:.0f} s)",
                   run.ok and run.state == "succeeded" and run.outcome.get("result") == "succeeded"
                   and run.outcome.get("upgraded") == [] and run.outcome.get("invocation_id") not in (None, first)
                   and run.ends_with(["succeeded: nothing to upgrade"]), run.text)


def check_refusals(p, box, port, token):
    """With apply_enabled false in the file, while the agent and server still run with it
    true: the program refuses whoever starts the unit."""
    report = p.report
    set_apply_enabled(p, box, False)
    code, out, err = box.sh(f"systemctl start {UNIT}", check=False, timeout=120)
    refusal = "nothing was upgraded: applying OS updates is turned off"
    logged = unit_journal(box, refusal)
    failed = box.out(f"systemctl is-failed {UNIT}", check=False)
    report.check("with apply_enabled false the unit's program refuses when started with systemctl",
                 code != 0 and refusal in logged and "updates.os.apply_enabled" in logged and failed == "failed",
                 f"exit {code} {out}{err}\n{logged}")
    saved = record(box)
    report.check("the refusal is recorded as failed, with its reason",
                 saved.get("result") == "failed" and "updates.os.apply_enabled" in (saved.get("error") or "")
                 and saved.get("upgraded") == [], json.dumps(saved))
    run = Applied(p, port, token)
    report.check("started by the agent, which still allows it, the program refuses too and os.apply_updates "
                 "says why", run.ok and run.state == "failed" and run.outcome.get("result") == "failed"
                 and "updates.os.apply_enabled" in (run.outcome.get("error") or ""), run.text)
    box.sh(f"systemctl reset-failed {UNIT}", check=False)
    rule = reconfigure(p, box, port, "with updates.os.apply_enabled false again")
    report.check(f"the regenerated polkit rule no longer admits {UNIT}",
                 f'"{UNIT}"' not in rule and '"mcp-ops"' in rule, rule[:600])


def prove(p, box, port, token):
    p.log(f"OS package upgrade over MCP through {UNIT}: {PACKAGE} {OLD} to {NEW}")
    check_unit(p, box)
    install_test_package(p, box, port, token)
    set_apply_enabled(p, box, True)
    rule = reconfigure(p, box, port, "with updates.os.apply_enabled true")
    p.report.check(f"the regenerated polkit rule admits {UNIT} for mcp-ops", f'"{UNIT}"' in rule, rule[:600])
    first = check_upgrade(p, box, port, token)
    check_nothing_to_upgrade(p, port, token, first)
    check_refusals(p, box, port, token)
    code, out, err = box.sh(f"apt-get purge -y -q {PACKAGE} && rm -rf {REPO_IN_BOX} {SOURCE} {PIN}", check=False)
    p.report.check(f"{PACKAGE}, its repository and the pin are removed again", code == 0, out + err)
