"""The operator's runbook in the booted system: every command of the deployment and
operations specification that mcp-raspi implements, run as the specification writes it, and
the recovery it promises: backup, `apt purge`, reinstall, restore, healthy again with the
same version, configuration, token and audit history, timed.

Called by prove.py with itself as `p` (its report, MCP helpers and timings).
"""

import json
import time

BACKUPS = "/var/backups/mcp-raspi"
# What the recovery must keep: the service's configuration and state, hashed.
TREES = "/etc/mcp-raspi /var/lib/mcp-raspi"


def tree_hash(box):
    """One hash of every file's path, mode, owner and contents under the configuration and
    state directories (the metrics database and downloads change on their own)."""
    return box.out(
        f"find {TREES} -type f ! -name 'metrics.db*' ! -path '*/downloads/*' -printf '%p %m %u %g\\n' "
        f"-exec sha256sum {{}} \\; | sort | sha256sum",
        check=False,
    )


def cli(box, command, timeout=120):
    code, out, err = box.sh(command, check=False, timeout=timeout)
    print("\n".join(f"    $ {command}" if i == 0 else f"      {line}"
                    for i, line in enumerate([""] + (out + err).splitlines()[:12])))
    return code, out, err


def check_runbook_commands(p, box, port, token):
    """The tool-backed commands as root, who reads the admin token from secrets.env."""
    report = p.report
    code, out, err = cli(box, "mcp-raspi-cli system get-info")
    report.check("`mcp-raspi-cli system get-info` prints the system (real backend)",
                 code == 0 and "hostname:" in out and "raspberry_pi" in out, out + err)
    code, out, err = cli(box, "mcp-raspi-cli system get-health")
    report.check("`mcp-raspi-cli system get-health` prints the health verdict", code == 0 and "verdict:" in out,
                 out + err)
    code, out, err = cli(box, "mcp-raspi-cli metrics get-snapshot --json")
    try:
        snapshot = json.loads(out)
    except ValueError:
        snapshot = None
    report.check("`mcp-raspi-cli metrics get-snapshot --json` prints JSON", code == 0 and isinstance(snapshot, dict),
                 out + err)
    code, out, err = cli(box, f"mcp-raspi call service.get_status --args '{{\"unit\": \"{p.TEST_UNIT}\"}}' --json")
    report.check("`mcp-raspi call TOOL --args JSON` calls any tool",
                 code == 0 and '"active_state"' in out, out + err)
    code, out, err = cli(box, "setpriv --reuid=nobody --regid=nogroup --clear-groups mcp-raspi-cli system get-info")
    report.check("an unprivileged user without a token is told to use sudo or pass one (exit 77)",
                 code == 77 and "MCP_RASPI_TOKEN" in err and "sudo" in err, f"{code} {out} {err}")
    code, out, err = cli(box, f"MCP_RASPI_TOKEN={token} MCP_RASPI_URL=http://127.0.0.1:{port}/mcp "
                              f"setpriv --reuid=nobody --regid=nogroup --clear-groups mcp-raspi-cli system get-info")
    report.check("an unprivileged user with MCP_RASPI_TOKEN (and MCP_RASPI_URL) is served",
                 code == 0 and "hostname:" in out, out + err)

    # A deprecated tool called twice, then counted in the audit log.
    for _ in range(2):
        p.call_tool(port, token, "service.force_restart", {"unit": p.TEST_UNIT})
    time.sleep(1.5)
    code, out, err = cli(box, "mcp-raspi-cli audit deprecated-usage --since 30d")
    report.check("`mcp-raspi-cli audit deprecated-usage --since 30d` counts the deprecated calls",
                 code == 0 and "service.force_restart: 2 calls" in out, out + err)

    code, out, err = cli(box, "mcp-raspi-config migrate plan --to-version 1.2.0")
    report.check("`mcp-raspi-config migrate plan --to-version 1.2.0` on the installed file: nothing to migrate",
                 code == 0 and "nothing to migrate" in out, out + err)
    old = ('config_version: "1.1"\n# the listener\nserver:\n  listen: "127.0.0.1:8000"\n  enable_cors: true\n'
           '  cors_origins: ["https://example.com"]\nsecurity:\n  auth_mode: token\n  jwt_secret: "old"\n')
    box.sh("mkdir -p /root/migrate && cat > /root/migrate/config.yml", input=old)
    code, out, err = cli(box, "mcp-raspi-config migrate plan --to-version 1.2.0 --config /root/migrate/config.yml")
    report.check("`mcp-raspi-config migrate plan` shows the 1.1 to 1.2 changes and changes nothing",
                 code == 0 and "cors" in out and box.out("cat /root/migrate/config.yml") == old.strip(), out + err)
    code, out, err = cli(box, "mcp-raspi-config migrate apply --to-version 1.2.0 --config /root/migrate/config.yml")
    migrated = box.out("cat /root/migrate/config.yml")
    report.check("`mcp-raspi-config migrate apply` writes a 1.2 file that validates, keeping comments and a .bak",
                 code == 0 and 'config_version: "1.2"' in migrated and "# the listener" in migrated
                 and "jwt_secret" not in migrated and box.sh("test -f /root/migrate/config.yml.bak",
                                                              check=False)[0] == 0, out + err + migrated)
    code, out, err = cli(box, "mcp-raspi-config validate /root/migrate/config.yml")
    report.check("`mcp-raspi-config validate` accepts the migrated file", code == 0, out + err)
    code, out, err = cli(box, "mcp-raspi-config validate")
    report.check("`mcp-raspi-config validate` accepts the installed configuration", code == 0, out + err)
    box.sh("rm -rf /root/migrate")

    code, out, err = cli(box, "mcp-raspi storage-check")
    report.check("`mcp-raspi storage-check` reports the file system and the product's directories",
                 code in (0, 1) and "/var/log/mcp-raspi" in out, out + err)


def check_healthcheck(p, box):
    report = p.report
    code, out, err = cli(box, "mcp-raspi-healthcheck")
    first = out.splitlines()[0] if out else ""
    report.check(f"`mcp-raspi-healthcheck` is OK (exit 0) with performance data: {first}",
                 code == 0 and "OK" in first and "|" in first, out + err)
    code, out, err = cli(box, "mcp-raspi-healthcheck --disk-warning 1 --disk-critical 100")
    report.check("a lowered disk threshold is a WARNING (exit 1)", code == 1 and "WARNING" in out, out + err)
    box.sh("systemctl stop raspi-ops-agent.service")
    code, out, err = cli(box, "mcp-raspi-healthcheck")
    report.check("with the agent stopped it is CRITICAL (exit 2), one status line, no traceback",
                 code == 2 and "CRITICAL" in out and "agent" in out.lower() and "panicked" not in err, out + err)
    box.sh("systemctl start raspi-ops-agent.service")
    box.sh("systemctl stop mcp-raspi-server.service")
    code, out, err = cli(box, "mcp-raspi-healthcheck")
    report.check("with the server stopped it is CRITICAL (exit 2)", code == 2 and "CRITICAL" in out, out + err)
    box.sh("systemctl start mcp-raspi-server.service")


def check_debug_start(p, box, port):
    """Recovery scenario 1: the service is down and the operator starts the server by hand."""
    report = p.report
    box.sh("systemctl stop mcp-raspi-server.service")
    code, out, err = box.sh(
        "timeout --preserve-status -s INT 4 /opt/mcp-raspi/current/bin/mcp-raspi-server --config /etc/mcp-raspi/config.yml "
        "--log-level DEBUG", check=False, timeout=30)
    report.check("`sudo mcp-raspi-server --config … --log-level DEBUG` serves and logs at debug level on the "
                 "terminal", code == 0 and "listening on" in out and "debug settings:" in err
                 and "log level debug (--log-level)" in err, (out + err)[-1500:])
    box.sh("systemctl start mcp-raspi-server.service")
    report.require("the service is back after the debug run", p.wait_healthy(port))


def check_backup_and_restore(p, box, port, token, version):
    report = p.report
    timers = box.out("systemctl list-timers --all --no-pager mcp-raspi-backup.timer", check=False)
    report.check("the backup timer is listed by `systemctl list-timers`", "mcp-raspi-backup.timer" in timers, timers)
    code, out, err = box.sh("systemctl start mcp-raspi-backup.service", check=False, timeout=300)
    archives = box.out(f"ls {BACKUPS}", check=False).split()
    report.check("mcp-raspi-backup.service writes an archive into /var/backups/mcp-raspi",
                 code == 0 and any(a.endswith(".tar.gz") for a in archives),
                 out + err + box.out("journalctl -u mcp-raspi-backup.service --no-pager -n 20", check=False))
    mode = box.out(f"stat -c '%a %U' {BACKUPS}/mcp-raspi-*.tar.gz | head -1", check=False)
    report.check(f"the archive is readable by root only ({mode})", mode == "600 root", mode)
    # The hardened backup unit reads the live metrics history through SQLite's online backup.
    unit_files = box.out(f"tar tzf $(ls -t {BACKUPS}/mcp-raspi-*.tar.gz | head -1)", check=False)
    report.check("the backup unit's archive holds the metrics database, without its write-ahead log",
                 "/state/metrics.db\n" in unit_files + "\n" and "metrics.db-wal" not in unit_files,
                 unit_files[-1500:])

    code, out, err = cli(box, "mcp-raspi-backup --dest /root/backups --json", timeout=300)
    try:
        written = json.loads(out)
    except ValueError:
        written = {}
    archive = written.get("archive", "")
    report.require("`mcp-raspi-backup --dest DIR` writes a verified archive", code == 0 and archive, out + err)
    files = box.out(f"tar tzf {archive}")
    report.check("it holds the configuration, secrets, version.json, audit log, units and a manifest",
                 all(f in files for f in ("/config/config.yml", "/config/secrets.env", "/state/version.json",
                                          "/logs/audit.log", "/systemd/mcp-raspi-server.service.d/",
                                          "/MANIFEST.json", "/checksums.sha256", "/system-info.txt")), files)
    code, out, err = box.sh(f"cd /root && rm -rf x && mkdir x && tar xzf {archive} -C x && cd x/* && "
                            f"sha256sum -c --quiet checksums.sha256 && echo verified", check=False)
    report.check("its checksums.sha256 verifies with sha256sum -c", code == 0 and "verified" in out, out + err)
    box.sh("rm -rf /root/x")

    # A damaged copy is refused and changes nothing.
    before = tree_hash(box)
    box.sh(f"cp {archive} /root/corrupt.tar.gz && size=$(stat -c %s /root/corrupt.tar.gz) && "
           f"printf 'XXXX' | dd of=/root/corrupt.tar.gz bs=1 seek=$((size / 2)) conv=notrunc status=none")
    code, out, err = cli(box, "mcp-raspi-restore /root/corrupt.tar.gz")
    report.check("a corrupted backup is refused, saying why", code != 0 and "nothing was changed" in err, out + err)
    report.check("the refused restore changed nothing and left the services running",
                 tree_hash(box) == before and p.wait_healthy(port, 5), before)
    box.sh("rm -f /root/corrupt.tar.gz")
    code, out, err = cli(box, f"mcp-raspi-restore --dry-run {archive}")
    report.check("`mcp-raspi-restore --dry-run` lists and changes nothing",
                 code == 0 and out.startswith("would restore") and tree_hash(box) == before, out + err)

    # The recovery: purge, reinstall, restore.
    config = box.out("sha256sum /etc/mcp-raspi/config.yml")
    audit_lines = box.out("wc -l < /var/log/mcp-raspi/audit.log")
    audit_head = box.out("head -n 5 /var/log/mcp-raspi/audit.log | sha256sum")
    box.sh("mcp-raspi-backup --dest /root/backups >/dev/null")
    # The runbook restores the newest backup by its link.
    latest = "/root/backups/latest.tar.gz"
    started = time.time()
    code, out, err = box.sh("apt-get purge -y -q mcp-raspi", check=False, timeout=600)
    report.require("apt purge before the restore succeeds", code == 0, out + err)
    report.check("purge keeps the operator's backups in /var/backups/mcp-raspi",
                 box.sh(f"ls {BACKUPS}/*.tar.gz", check=False)[0] == 0)
    code, output = p.apt_install(box, "mcp-raspi")
    report.require("reinstalling the same version succeeds", code == 0, output[-2000:])
    new_token = box.out("sed -n 's/^MCP_RASPI_ADMIN_TOKEN=//p' /etc/mcp-raspi/secrets.env")
    report.check("the reinstall generated a new token (the old one is in the backup)", new_token != token)
    restore_started = time.time()
    code, out, err = cli(box, f"mcp-raspi-restore {latest}", timeout=300)
    restore_seconds = time.time() - restore_started
    healthy = p.wait_healthy(port, 30)
    cycle_seconds = time.time() - started
    p.timings["restore: `mcp-raspi-restore FILE` until it returned healthy"] = restore_seconds
    p.timings["recovery: apt purge, apt install, mcp-raspi-restore, healthy"] = cycle_seconds
    report.check(f"`mcp-raspi-restore FILE` restores and the server is healthy ({restore_seconds:.1f} s; "
                 f"target < 30 s)", code == 0 and healthy and "the server is healthy" in out
                 and restore_seconds < 30, out + err + p.journal(box))
    report.check("the restored system runs the same version",
                 box.out("readlink /opt/mcp-raspi/current") == f"releases/{version}"
                 and p.version_state(box).get("current_version") == version, json.dumps(p.version_state(box)))
    report.check("the restored configuration is the one backed up",
                 box.out("sha256sum /etc/mcp-raspi/config.yml") == config)
    report.check("the restored token is the one backed up, and it works",
                 box.out("sed -n 's/^MCP_RASPI_ADMIN_TOKEN=//p' /etc/mcp-raspi/secrets.env") == token
                 and p.tool_ok(p.call_tool(port, token, "system.get_info", {})[1]))
    report.check("the old token no longer works after the restore",
                 p.call_tool(port, new_token, "system.get_info", {})[0] == 401)
    modes = box.out("stat -c '%n %U %G %a' /etc/mcp-raspi /etc/mcp-raspi/config.yml /etc/mcp-raspi/secrets.env "
                    "/var/lib/mcp-raspi/version.json /var/log/mcp-raspi/audit.log")
    report.check("owners and modes are restored",
                 "/etc/mcp-raspi root mcp 750" in modes and "/etc/mcp-raspi/config.yml root mcp 640" in modes
                 and "/etc/mcp-raspi/secrets.env root root 600" in modes and "audit.log mcp mcp" in modes, modes)
    report.check("the audit history is back",
                 int(box.out("wc -l < /var/log/mcp-raspi/audit.log")) >= int(audit_lines)
                 and box.out("head -n 5 /var/log/mcp-raspi/audit.log | sha256sum") == audit_head)
    rule = box.out("cat /etc/polkit-1/rules.d/50-mcp-raspi.rules", check=False)
    report.check("the polkit rule follows the restored allowlist", f'"{p.TEST_UNIT}"' in rule, rule[:300])
    status, result = p.call_tool(port, token, "service.restart", {"unit": p.TEST_UNIT})
    report.check("privileged tools work after the restore (agent, polkit)", p.tool_ok(result), p.tool_text(result))
    box.sh("rm -rf /root/backups")


def check_operations(p, box, port, token, version):
    p.log("the runbook's commands")
    check_runbook_commands(p, box, port, token)
    p.log("mcp-raspi-healthcheck exit codes")
    check_healthcheck(p, box)
    report_ok = p.wait_healthy(port)
    p.report.require("the services are back after the health checks", report_ok)
    p.log("starting the server by hand at debug level")
    check_debug_start(p, box, port)
    p.log("backup, purge, reinstall, restore")
    check_backup_and_restore(p, box, port, token, version)
