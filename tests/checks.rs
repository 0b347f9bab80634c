//! The operator's checks against a real server and agent: `mcp-raspi healthcheck` as a
//! monitoring plugin, `storage-check`, and `audit deprecated-usage` over calls the server
//! audited.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{json, Value};

use crate::support::{config_yaml, program_command, repo, temp_dir, Server, VIEWER_TOKEN};

fn cli() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_mcp-raspi"))
}

/// Runs `program` with `args` as the user the services run as (the agent accepts only it).
fn run(program: &Path, args: &[&str]) -> Output {
    program_command(program).args(args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A configuration for the check next to `server`'s: its listen address and socket, and
/// the Raspberry Pi 4 fixture as /proc and /sys (48.686 °C, 15.6 % memory in use). The
/// fixture's file systems are this machine's, so their use is whatever it is here.
fn check_config(server: &Server) -> PathBuf {
    let dir = server.dir.path();
    let listen = format!("server:\n  listen: \"{}\"\n", server.addr);
    let path = dir.join("check.yml");
    std::fs::write(&path, config_yaml(dir, Some(&repo().join("tests/fixtures/pi4")), &listen)).unwrap();
    path
}

/// `mcp-raspi healthcheck` on `config`, without asking systemd; disk thresholds that this
/// machine's disk cannot pass unless `extra` names others.
fn healthcheck(config: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["healthcheck", "--config", config.to_str().unwrap(), "--no-units"];
    if !extra.iter().any(|a| a.starts_with("--disk")) {
        args.extend(["--disk-warning", "100", "--disk-critical", "100"]);
    }
    args.extend(extra);
    let out = run(cli(), &args);
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code(), stdout(&out))
}

#[test]
fn healthcheck_is_ok_with_the_server_and_agent_running_and_warns_past_a_lowered_threshold() {
    let server = Server::with_agent();
    let config = check_config(&server);
    let (code, text) = healthcheck(&config, &[]);
    assert_eq!(code, Some(0), "{text}");
    let line = text.lines().next().unwrap();
    assert!(line.starts_with("MCP-RASPI OK - all checks passed (temp 48.7°C, disk "), "{text}");
    assert!(line.contains(", memory 15.6%) | temp=48.7;75;85 disk="), "{text}");
    assert!(line.ends_with(";100;100;0;100 memory=15.6%;85;95;0;100"), "{text}");
    let healthz = format!("server: /healthz on {} answered 200 (version {})", server.addr, env!("CARGO_PKG_VERSION"));
    assert!(text.lines().any(|l| l == healthz), "{text}");
    assert!(text.lines().any(|l| l.starts_with("ops agent: listening on ")), "{text}");

    let (code, text) = healthcheck(&config, &["--temp-warning", "40", "--temp-critical", "90"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.starts_with("MCP-RASPI WARNING - temperature 48.7°C > 40°C (temp 48.7°C"), "{text}");
    assert!(text.contains("| temp=48.7;40;90 "), "{text}");
}

#[test]
fn healthcheck_is_critical_when_the_agent_stops_and_names_the_server_too_when_it_stops() {
    let mut server = Server::with_agent();
    let config = check_config(&server);
    // Killed, the agent leaves its socket behind: nobody listens on it.
    server.kill_agent();
    let (code, text) = healthcheck(&config, &[]);
    assert_eq!(code, Some(2), "{text}");
    let socket = server.dir.path().join("ops-agent.sock");
    let expected = format!("MCP-RASPI CRITICAL - ops agent not listening on {} (temp 48.7°C", socket.display());
    assert!(text.starts_with(&expected), "{text}");

    let address = server.addr.clone();
    assert!(server.terminate().is_some_and(|s| s.success()));
    let (code, text) = healthcheck(&config, &[]);
    assert_eq!(code, Some(2), "{text}");
    let line = text.lines().next().unwrap();
    assert!(line.starts_with(&format!("MCP-RASPI CRITICAL - server not answering on {address}: connection refused; ")));
    assert!(line.contains("; ops agent not listening on "), "{text}");
}

#[test]
fn healthcheck_under_its_installed_name_reports_usage_errors_and_a_missing_configuration_as_a_plugin() {
    let dir = temp_dir();
    let plugin = dir.path().join("mcp-raspi-healthcheck");
    std::os::unix::fs::symlink(cli(), &plugin).unwrap();
    for args in [&["--temp-warning", "hot"][..], &["--disk-warning", "99", "--disk-critical", "90"], &["--bogus"]] {
        let out = run(&plugin, args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stdout(&out));
        assert!(stdout(&out).starts_with("MCP-RASPI UNKNOWN - usage: "), "{args:?}: {}", stdout(&out));
        assert_eq!(stdout(&out).lines().count(), 1);
    }
    let socket = dir.path().join("ops-agent.sock");
    let missing = dir.path().join("missing.yml");
    let args =
        ["--config", missing.to_str().unwrap(), "--address", "127.0.0.1:1", "--socket", socket.to_str().unwrap()];
    let out = run(&plugin, &[&args[..], &["--no-units", "--disk-critical", "100", "--disk-warning", "100"]].concat());
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.starts_with("MCP-RASPI CRITICAL - server not answering on 127.0.0.1:1: connection refused; "));
    assert!(text.lines().next().unwrap().contains("; defaults used, configuration not readable) | "), "{text}");
    assert!(text.contains("configuration: defaults used (cannot read configuration"), "{text}");
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn deprecated_usage_counts_the_deprecated_calls_the_server_audited() {
    let server = Server::with_agent();
    for _ in 0..2 {
        let r = server.call_tool("gpio.pwm_start", json!({"pin": 18, "frequency": 500.0, "duty_cycle": 25.0}));
        assert_eq!(r["isError"], false, "{r}");
    }
    assert_eq!(server.call_tool("service.force_restart", json!({"unit": "nginx.service"}))["isError"], false);
    assert_eq!(
        server.call_tool("gpio.pwm_enable", json!({"pin": 18, "frequency_hz": 50.0, "duty_cycle": 0.5}))["isError"],
        false
    );
    // A viewer may not call it: denied, and still a call of a deprecated tool.
    let session = server.initialize_as("2025-11-25", VIEWER_TOKEN);
    let auth = format!("Bearer {VIEWER_TOKEN}");
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "gpio.pwm_start", "arguments": {"pin": 18, "frequency": 5.0, "duty_cycle": 1.0}}});
    let headers =
        [("Content-Type", "application/json"), ("Authorization", auth.as_str()), ("Mcp-Session-Id", &session)];
    let r = server.request("POST", "/mcp", &headers, call.to_string().as_bytes()).json();
    assert_eq!(r["result"]["isError"], true, "{r}");

    let config = server.config_path();
    let out = run(cli(), &["audit", "deprecated-usage", "--since", "30d", "--config", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        stdout(&out),
        "Deprecated tool usage (last 30 days):\n\
         \x20 gpio.pwm_start: 3 calls (by admin: 2, watcher: 1)\n\
         \x20 service.force_restart: 1 call (by admin)\n\
         \n\
         Migration recommended before v1.0.0 upgrade:\n\
         \x20 gpio.pwm_start: use gpio.pwm_enable instead (deprecated since 0.1.0, removed in 1.0.0)\n\
         \x20 service.force_restart: use service.restart instead (deprecated since 0.1.0, removed in 1.0.0)\n"
    );
    let out = run(cli(), &["audit", "deprecated-usage", "--json", "--config", config.to_str().unwrap()]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["tools"][0]["calls"], 3, "{report}");
    assert_eq!(report["unreadable_lines"], 0);
    let out = run(
        cli(),
        &["audit", "deprecated-usage", "--since", "2099-01-01T00:00:00Z", "--config", config.to_str().unwrap()],
    );
    assert_eq!(stdout(&out), "Deprecated tool usage (since 2099-01-01T00:00:00Z):\n  no calls of deprecated tools\n");
}

#[test]
fn deprecated_usage_without_an_audit_log_names_the_path() {
    let dir = temp_dir();
    let config = dir.path().join("config.yml");
    std::fs::write(&config, config_yaml(dir.path(), None, "")).unwrap();
    let out = run(cli(), &["audit", "deprecated-usage", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("no audit log at {}", dir.path().join("log/audit.log").display())), "{err}");
}

#[test]
fn storage_check_measures_the_servers_logs_and_says_so_in_its_exit_status() {
    let server = Server::start();
    server.call_tool("system.get_info", json!({}));
    let config = server.config_path();
    let out = run(cli(), &["storage-check", "--json", "--config", config.to_str().unwrap()]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    // This machine's root file system decides between 0 and 1; the report says which.
    assert_eq!(out.status.code().map(i64::from), report["exit_status"].as_i64(), "{report}");
    let items = report["items"].as_array().unwrap();
    let app = items.iter().find(|i| i["name"] == "app log").unwrap();
    assert!(app["count"].as_u64().unwrap() >= 1 && app["bytes"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(app["limit"]["value"], 50 * 1024 * 1024 * 6);
    assert_eq!(app["over"], false);
    // The server's metrics database, against metrics.retention.max_size_mb (100 by default)
    // and the 4 MiB its write-ahead log may take.
    let metrics = items.iter().find(|i| i["name"] == "metrics database").unwrap();
    assert_eq!(metrics["limit"]["value"], 104 * 1024 * 1024, "{report}");
    assert_eq!(metrics["over"], false);
    let damaged = items.iter().find(|i| i["name"] == "metrics database, damaged copies").unwrap();
    assert_eq!(damaged["count"], 0, "{report}");
    let out = run(cli(), &["storage-check", "--config", config.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(text.starts_with("Root file system ("), "{text}");
    assert!(text.lines().any(|l| l.starts_with("audit log ")), "{text}");
    let out = run(cli(), &["storage-check", "--config", "/nonexistent/config.yml"]);
    assert_eq!(out.status.code(), Some(2));
}
