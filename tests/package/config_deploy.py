"""The configuration deployment in the booted system, for prove.py: `mcp-fleet config deploy`
from the host (the packaged mcp-fleet, extracted from the fleet's repository) to the box's
server, through manage.deploy_config, the agent, its polkit rule and the shipped root
one-shot unit mcp-raspi-config-apply.service; the file swapped with its owner and mode, the
services restarted on it; a deployment signed with another key refused; and a file whose
server cannot listen put back by the unit.

prove.py calls `prove(p, box, port, token, repo)` with itself as `p`, once the packaged
configuration has been changed for the test (real backends, test port). The box's
configuration file is as it was at the end, so that the checks after this one find it.
"""

import json
import shutil
import socket
import subprocess

import yaml

UNIT = "mcp-raspi-config-apply.service"
# The unit reads and writes little (see its comments): it is sandboxed to match.
EXPOSURE_LIMIT = 2.5
CONFIG = "/etc/mcp-raspi/config.yml"
PREVIOUS = "/etc/mcp-raspi/config.yml.previous"
KEYS_IN_BOX = "/etc/mcp-raspi/config-keys"
RECORD = "/var/lib/mcp-raspi/config-apply.json"
HEALTH_TIMEOUT = 10
TOKEN_ENV = "BOX_FLEET_TOKEN"



def packaged_fleet(p, repo):
    """mcp-fleet from the fleet's repository, extracted on the host."""
    debs = sorted(repo.rglob("mcp-fleet_*_amd64.deb"))
    if not debs:
        raise p.Fatal(f"no mcp-fleet package for amd64 in {repo}")
    dest = p.WORK / "config-deploy-fleet"
    shutil.rmtree(dest, ignore_errors=True)
    p.run(["dpkg-deb", "-x", debs[-1], dest])
    return dest / "usr/bin/mcp-fleet"


class Fleet:
    """A fleet file on the host naming the box, whose template is the box's file with
    `changes` applied."""

    def __init__(self, p, program, port, token, secret):
        self.p, self.program, self.token = p, program, token
        self.port, self.secret = port, secret
        self.file = p.WORK / "config-deploy-fleet.yml"

    def write(self, template):
        fleet = {"fleet": {
            "id": "box", "config_key_file": str(self.secret),
            "connection": {"url": "http://{hostname}/mcp", "credential": {"token_env": TOKEN_ENV},
                           "timeout_seconds": 10},
            "config_template": template,
            "devices": [{"id": "pi", "hostname": f"127.0.0.1:{self.port}"}],
        }}
        self.file.write_text(json.dumps(fleet, indent=1) + "\n")

    def json(self, *args):
        done = subprocess.run([str(self.program), "--file", str(self.file), *args, "--json"], capture_output=True,
                              text=True, timeout=600, env={"PATH": "/usr/bin:/bin", TOKEN_ENV: self.token})
        try:
            return done.returncode, json.loads(done.stdout)
        except ValueError:
            return done.returncode, {"stdout": done.stdout[-2000:], "stderr": done.stderr[-2000:]}


def box_file(box, path):
    """A file of the box exactly as it is (Box.out strips it)."""
    return box.sh(f"cat {path}", check=False)[1]


def prove(p, box, port, token, repo):
    report = p.report
    p.check_oneshot_unit(box, UNIT, EXPOSURE_LIMIT, "config-apply")
    original = box_file(box, CONFIG)
    program = packaged_fleet(p, repo)
    keys = p.WORK / "config-deploy-keys"
    shutil.rmtree(keys, ignore_errors=True)
    keys.mkdir()
    code, out, err = p.run([program, "config", "keygen", "--out", keys, "--json"], check=False)
    report.require("mcp-fleet config keygen writes the fleet's configuration key", code == 0, out + err)
    made = json.loads(out)
    box.sh(f"install -m 644 /dev/stdin {KEYS_IN_BOX}/{made['key_id']}.pub", input=open(made["public"]).read())

    # Deployments turned on, with a short health timeout for the failing case below.
    enabled = original.replace("  config:\n    enabled: false", "  config:\n    enabled: true", 1) \
        .replace("    health_timeout_seconds: 60", f"    health_timeout_seconds: {HEALTH_TIMEOUT}", 1)
    if enabled == original:
        raise p.Fatal(f"{CONFIG} has no `updates.config.enabled: false` to change: update tests/package/config_deploy.py")
    box.sh(f"cat > {CONFIG}", input=enabled)
    code, out, err = box.sh("dpkg-reconfigure mcp-raspi", check=False)
    report.require("dpkg-reconfigure with updates.config.enabled restarts the services", code == 0 and
                   p.wait_healthy(port), out + err)
    rule = box_file(box, "/etc/polkit-1/rules.d/50-mcp-raspi.rules")
    report.check(f"the polkit rule lets the agent start {UNIT} once deployments are on", UNIT in rule, rule[-1500:])

    fleet = Fleet(p, program, port, token, made["secret"])
    template = yaml.safe_load(enabled)
    template["logging"]["level"] = "warning"
    fleet.write(template)
    code, dry = fleet.json("config", "deploy", "--dry-run")
    result = (dry.get("results") or [{}])[0]
    report.check("config deploy --dry-run: the device accepts the file and shows the diff, nothing changes",
                 code == 0 and result.get("outcome") == "would_change" and "+  level: warning" in result.get("diff", "")
                 and box_file(box, CONFIG) == enabled, json.dumps(dry)[:3000])

    pid_before = box.out("systemctl show -p MainPID --value mcp-raspi-server.service")
    code, deployed = fleet.json("config", "deploy")
    result = (deployed.get("results") or [{}])[0]
    journal = box.out(f"journalctl -b --no-pager -o cat -n 30 -u {UNIT}", check=False)
    report.check(f"config deploy: {UNIT} swaps the file in and the restarted server runs it",
                 code == 0 and result.get("outcome") == "applied", json.dumps(deployed)[:3000] + "\n" + journal)
    now = box_file(box, CONFIG)
    report.check("the new file is the rendered one, and the old one is kept beside it",
                 "level: warning" in now and box_file(box, PREVIOUS) == enabled, now[:500])
    modes = box.out(f"stat -c '%U %G %a' {CONFIG} {PREVIOUS} {RECORD}", check=False).splitlines()
    report.check("both files keep root:mcp 0640, and the record is root's 0644",
                 modes == ["root mcp 640", "root mcp 640", "root root 644"], str(modes))
    record = json.loads(box_file(box, RECORD) or "{}")
    report.check(f"{RECORD} says applied, with the new file's SHA-256",
                 record.get("status") == "applied" and record.get("sha256") == result.get("sha256"), json.dumps(record))
    report.check("the server restarted", box.out("systemctl show -p MainPID --value mcp-raspi-server.service")
                 not in ("", "0", pid_before))
    code, drift = fleet.json("drift")
    report.check("drift finds the device running the fleet file's configuration",
                 code == 0 and drift.get("drifted") == 0, json.dumps(drift)[:2000])

    # Signed with a key the device does not trust: the agent refuses, nothing changes.
    other = p.WORK / "config-deploy-other-key"
    shutil.rmtree(other, ignore_errors=True)
    other.mkdir()
    code, out, err = p.run([program, "config", "keygen", "--out", other, "--json"], check=False)
    fleet.secret = json.loads(out)["secret"]
    template["logging"]["level"] = "error"
    fleet.write(template)
    code, refused = fleet.json("config", "deploy")
    result = (refused.get("results") or [{}])[0]
    report.check("a deployment signed with a key the device does not trust is refused, the file unchanged",
                 code == 1 and result.get("outcome") == "refused" and "signature" in result.get("reason", "")
                 and box_file(box, CONFIG) == now, json.dumps(refused)[:2000])

    # A file whose server cannot listen (its port is taken): the unit puts the old one back.
    fleet.secret = made["secret"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        template["logging"]["level"] = "warning"
        template["server"]["listen"] = f"127.0.0.1:{taken.getsockname()[1]}"
        fleet.write(template)
        code, back = fleet.json("config", "deploy")
    result = (back.get("results") or [{}])[0]
    journal = box.out(f"journalctl -b --no-pager -o cat -n 30 -u {UNIT}", check=False)
    report.check(f"a file whose server does not answer within {HEALTH_TIMEOUT} s is put back by {UNIT}",
                 code == 1 and result.get("outcome") == "rolled_back" and "old file is back" in result.get("reason", "")
                 and box_file(box, CONFIG) == now, json.dumps(back)[:2000] + "\n" + journal)
    report.require("the server answers on the old file again", p.wait_healthy(port))

    # As it was, for the checks that follow.
    box.sh(f"cat > {CONFIG}", input=original)
    box.sh(f"rm -f {PREVIOUS} {RECORD} {KEYS_IN_BOX}/*.pub")
    code, out, err = box.sh("dpkg-reconfigure mcp-raspi", check=False)
    report.require("the original configuration is back", code == 0 and p.wait_healthy(port), out + err)
