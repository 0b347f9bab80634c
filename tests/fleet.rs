//! `mcp-fleet` against real servers on loopback: a small fleet of simulated devices, some
//! of them stopped or hung, spoken to over MCP as a workstation would.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{temp_dir, Server, ADMIN_TOKEN};

fn fleet_bin() -> &'static str {
    env!("CARGO_BIN_EXE_mcp-fleet")
}

/// Devices `dev-00`… on loopback: running servers, plus addresses that refuse connections or
/// accept and never answer.
struct Fleet {
    servers: Vec<Server>,
    file: PathBuf,
    _dir: tempfile::TempDir,
    _hung: Option<TcpListener>,
}

impl Fleet {
    /// `running` servers, then `stopped` devices whose port refuses, then one device that
    /// accepts connections and never answers when `hung`.
    fn start(running: usize, stopped: usize, hung: bool) -> Fleet {
        let dir = temp_dir();
        let mut servers: Vec<Server> = (0..running + stopped).map(|_| Server::start()).collect();
        let mut addrs: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();
        for server in servers.iter_mut().skip(running) {
            server.terminate();
        }
        let hung = hung.then(|| {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            addrs.push(listener.local_addr().unwrap().to_string());
            listener
        });
        let mut yaml = String::from(
            "fleet:\n  id: lab\n  region: loopback\n  connection:\n    url: \"http://{hostname}/mcp\"\n    \
             credential: { token_env: LAB_TOKEN }\n    timeout_seconds: 4\n    concurrency: 4\n  devices:\n",
        );
        for (i, addr) in addrs.iter().enumerate() {
            let parity = if i % 2 == 0 { "even" } else { "odd" };
            yaml.push_str(&format!(
                "    - {{ id: dev-{i:02}, hostname: \"{addr}\", model: pi4, role: sensor, tags: [{parity}] }}\n"
            ));
        }
        let file = dir.path().join("fleet-config.yml");
        std::fs::write(&file, yaml).unwrap();
        Fleet { servers, file, _dir: dir, _hung: hung }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(fleet_bin())
            .arg("--file")
            .arg(&self.file)
            .args(args)
            .env("LAB_TOKEN", ADMIN_TOKEN)
            .output()
            .unwrap()
    }

    fn json(&self, args: &[&str]) -> (i32, Value) {
        let out = self.run(&[args, &["--json"]].concat());
        let text = String::from_utf8_lossy(&out.stdout);
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {text} {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code().unwrap_or(-1), value)
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn health_reports_every_device_and_a_stopped_or_hung_one_costs_only_its_own_timeout() {
    let fleet = Fleet::start(3, 1, true);
    let started = Instant::now();
    let (code, report) = fleet.json(&["health"]);
    let took = started.elapsed();
    // Four seconds a device at most (five with the margin), and they are asked four at a
    // time: the hung device costs its own timeout, not one for each device.
    assert!(took < Duration::from_secs(9), "health took {took:?}");
    assert_eq!(code, 1, "{report}");
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    for device in &results[..3] {
        assert_eq!(device["reachable"], Value::Bool(true), "{device}");
        assert_eq!(device["version"], Value::from(env!("CARGO_PKG_VERSION")), "{device}");
        assert!(device["verdict"].is_string() && device["config_sha256"].as_str().unwrap().len() == 64, "{device}");
    }
    let refused = &results[3];
    assert_eq!(refused["reachable"], Value::Bool(false));
    assert!(refused["error"].as_str().unwrap().contains("connection refused"), "{refused}");
    let hung = &results[4];
    assert_eq!(hung["reachable"], Value::Bool(false));
    assert!(hung["error"].as_str().unwrap().contains("no answer within 4 s"), "{hung}");
    assert_eq!(report["summary"]["unreachable"], Value::from(2));

    // The table says the same.
    let out = fleet.run(&["health"]);
    let text = stdout(&out);
    assert!(text.contains("DEVICE") && text.contains("dev-03  NO") && text.contains("2 unreachable"), "{text}");

    // One device in detail.
    let out = fleet.run(&["status", "dev-01"]);
    let text = stdout(&out);
    assert!(text.contains("reachable: true") && text.contains("config sha256: "), "{text}");
    let out = fleet.run(&["status", "dev-99"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no device \"dev-99\""));
}

#[test]
fn exec_maps_the_runbooks_commands_to_tool_calls_on_each_device_and_never_runs_a_shell() {
    let fleet = Fleet::start(3, 1, false);
    let (code, report) = fleet.json(&["exec", "--all", "mcp-raspi-cli system get-health"]);
    assert_eq!(code, 1, "one device is stopped: {report}");
    assert_eq!(report["tool"], Value::from("system.get_health_snapshot"));
    let results = report["results"].as_array().unwrap();
    assert!(results[..3].iter().all(|r| r["ok"] == Value::Bool(true) && r["result"]["verdict"].is_string()));
    assert_eq!(results[3]["ok"], Value::Bool(false));

    // By tag, and any tool with its arguments; each call is audited on its device.
    let (code, report) = fleet.json(&["exec", "--tag", "even", "--tool", "system.get_info", "--args", "{}"]);
    assert_eq!(code, 0, "{report}");
    let devices: Vec<&str> =
        report["results"].as_array().unwrap().iter().map(|r| r["device"].as_str().unwrap()).collect();
    assert_eq!(devices, ["dev-00", "dev-02"]);
    let audited = |server: &Server| server.audit_records().iter().any(|r| r["tool"] == "system.get_info");
    // Records of read-only calls are written a moment after the answer.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(audited(&fleet.servers[0]) && audited(&fleet.servers[2])) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(audited(&fleet.servers[0]) && audited(&fleet.servers[2]));
    assert!(!audited(&fleet.servers[1]));

    // Text, with a tool's error named per device.
    let out = fleet.run(&["exec", "--device", "dev-01", "--tool", "process.get_info", "--args", "{\"pid\": -1}"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("== dev-01: FAILED"), "{}", stdout(&out));

    // No shell, whatever the string.
    for command in ["rm -rf /", "mcp-raspi-cli system get-health; reboot", "bash -c id"] {
        let out = fleet.run(&["exec", "--all", command]);
        assert_eq!(out.status.code(), Some(2), "{command}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("never a shell"), "{command}");
    }
    let out = fleet.run(&["exec", "--tag", "attic", "system get-info"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("even, odd"));
}

#[test]
fn a_credential_the_device_refuses_or_that_is_missing_is_said_per_device() {
    let fleet = Fleet::start(1, 0, false);
    let out = Command::new(fleet_bin())
        .arg("--file")
        .arg(&fleet.file)
        .args(["exec", "--all", "system get-info"])
        .env("LAB_TOKEN", "not-a-token-of-this-server-000000")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("refused the credential: HTTP 401"), "{}", stdout(&out));
    let out = Command::new(fleet_bin())
        .arg("--file")
        .arg(&fleet.file)
        .args(["exec", "--all", "system get-info"])
        .env_remove("LAB_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("LAB_TOKEN is not set"), "{}", stdout(&out));
}

#[test]
fn list_and_prometheus_targets_come_from_the_fleet_file() {
    let fleet = Fleet::start(2, 0, false);
    let (code, list) = fleet.json(&["list"]);
    assert_eq!(code, 0);
    assert_eq!(list["devices"].as_array().unwrap().len(), 2);
    assert_eq!(list["devices"][1]["tags"], serde_json::json!(["odd"]));

    let targets = fleet._dir.path().join("sd/lab.yml");
    std::fs::create_dir_all(targets.parent().unwrap()).unwrap();
    let out = fleet.run(&["prometheus-targets", "-o", targets.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let groups: Value = serde_json::from_str(&std::fs::read_to_string(&targets).unwrap()).unwrap();
    assert_eq!(groups[0]["targets"][0], Value::from(fleet.servers[0].addr.clone()));
    assert_eq!(groups[0]["labels"]["instance"], Value::from("dev-00"));
    // Each target's /metrics answers the way the groups say to scrape it.
    let path = groups[0]["labels"]["__metrics_path__"].as_str().unwrap();
    let response = fleet.servers[0].request("GET", path, &[], b"");
    assert!(response.status == 200 || response.status == 404, "{}", response.status);
    assert!(promtool_reads(&targets));
}

/// Whether the targets file is one Prometheus reads: promtool checks a configuration that
/// names it (`make unit` installs promtool; Debian: apt-get install prometheus).
fn promtool_reads(targets: &Path) -> bool {
    let config = targets.with_file_name("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "scrape_configs:\n  - job_name: fleet\n    file_sd_configs:\n      - files: [\"{}\"]\n",
            targets.display()
        ),
    )
    .unwrap();
    let out = Command::new("promtool")
        .arg("check")
        .arg("config")
        .arg(&config)
        .output()
        .unwrap_or_else(|e| panic!("promtool is needed to check the targets ({e}); `make unit` installs it"));
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// Devices whose configuration files are the ones the fleet file renders for them.
fn rendered_fleet(count: usize, version: Option<&str>) -> (tempfile::TempDir, PathBuf, Vec<Server>) {
    let home = temp_dir();
    let dirs: Vec<tempfile::TempDir> = (0..count).map(|_| temp_dir()).collect();
    let ports: Vec<u16> =
        (0..count).map(|_| TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
    let mut yaml = String::from("fleet:\n  id: lab\n");
    if let Some(version) = version {
        yaml.push_str(&format!("  version: \"{version}\"\n"));
    }
    yaml.push_str(
        "  connection:\n    url: \"http://{hostname}/mcp\"\n    credential: { token_env: LAB_TOKEN }\n    timeout_seconds: 5\n  \
         config_template:\n    security:\n      auth_mode: token\n      secrets_file: null\n      tokens:\n        \
         - { identity: admin, role: admin, env: TEST_ADMIN_TOKEN }\n    platform: { backend: simulated }\n    \
         metrics: { collection: { interval_seconds: 300 } }\n  devices:\n",
    );
    for (i, (dir, port)) in dirs.iter().zip(&ports).enumerate() {
        let d = dir.path().display();
        yaml.push_str(&format!(
            "    - id: dev-{i:02}\n      hostname: \"127.0.0.1:{port}\"\n      config:\n        \
             server: {{ listen: \"127.0.0.1:{port}\" }}\n        \
             logging: {{ journald: false, app_path: {d}/log/app.log, audit_path: {d}/log/audit.log }}\n        \
             paths: {{ state_dir: {d}/state, install_dir: {d}/opt }}\n        \
             ops_agent: {{ socket_path: {d}/ops-agent.sock }}\n"
        ));
    }
    let file = home.path().join("fleet-config.yml");
    std::fs::write(&file, yaml).unwrap();
    let servers = dirs
        .into_iter()
        .enumerate()
        .map(|(i, dir)| {
            let out = Command::new(fleet_bin())
                .arg("--file")
                .arg(&file)
                .args(["config", "render", &format!("dev-{i:02}")])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let config = dir.path().join("config.yml");
            std::fs::write(&config, &out.stdout).unwrap();
            let mut cmd = crate::support::program_command(Path::new(crate::support::server_bin()));
            cmd.arg("--config").arg(&config);
            Server::from_command(cmd, dir, None)
        })
        .collect();
    (home, file, servers)
}

fn fleet_json(file: &Path, args: &[&str]) -> (i32, Value) {
    let out = Command::new(fleet_bin())
        .arg("--file")
        .arg(file)
        .args(args)
        .arg("--json")
        .env("LAB_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {text} {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), value)
}

#[test]
fn drift_finds_a_configuration_changed_by_hand_and_a_release_other_than_the_fleets() {
    let (_home, file, mut servers) = rendered_fleet(3, None);
    let (code, report) = fleet_json(&file, &["drift"]);
    assert_eq!((code, report["drifted"].clone()), (0, Value::from(0)), "{report}");

    // A hand edit, taken up by a restart: that device, and only it, drifted.
    let edited = servers.remove(1);
    let config = edited.config_path();
    let text = std::fs::read_to_string(&config).unwrap().replace("interval_seconds: 300", "interval_seconds: 60");
    std::fs::write(&config, text).unwrap();
    servers.insert(1, edited.restart());
    let (code, report) = fleet_json(&file, &["drift"]);
    assert_eq!(code, 1, "{report}");
    let drifted: Vec<bool> =
        report["results"].as_array().unwrap().iter().map(|r| r["drifted"] == Value::Bool(true)).collect();
    assert_eq!(drifted, [false, true, false], "{report}");
    assert!(report["results"][1]["drift"]["findings"][0].as_str().unwrap().contains("changed by hand"), "{report}");
    let (_, health) = fleet_json(&file, &["health"]);
    assert_eq!(health["results"][1]["drifted"], Value::Bool(true), "{health}");
    assert_eq!(health["results"][0]["drifted"], Value::Bool(false), "{health}");
    assert_eq!(health["summary"]["drifted"], Value::from(1));

    // A fleet that should run another release: every device drifted.
    let with_version =
        std::fs::read_to_string(&file).unwrap().replace("  id: lab\n", "  id: lab\n  version: \"9.9.9\"\n");
    std::fs::write(&file, with_version).unwrap();
    let (code, report) = fleet_json(&file, &["drift"]);
    assert_eq!((code, report["drifted"].clone()), (1, Value::from(3)), "{report}");
    assert!(
        report["results"][0]["drift"]["findings"][0].as_str().unwrap().contains("the fleet runs 9.9.9"),
        "{report}"
    );
}
