//! The command line: version, configuration checks, refusing root, and MCP over stdio.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use serde_json::{json, Value};

use crate::support::{agent_bin, agent_command, config_yaml, is_root, server_bin, server_command, temp_dir};

#[test]
fn version_prints_the_package_version() {
    let out = server_command().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_config_accepts_a_good_file_and_names_the_bad_key_and_line() {
    let dir = temp_dir();
    let good = dir.path().join("good.yml");
    std::fs::write(&good, config_yaml(dir.path(), None, "")).unwrap();
    let out = server_command()
        .args(["--check-config", "--config"])
        .arg(&good)
        .env("TEST_ADMIN_TOKEN", "0123456789abcdef0")
        .env("TEST_VIEWER_TOKEN", "0123456789abcdef1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));

    let bad = dir.path().join("bad.yml");
    std::fs::write(&bad, "config_version: \"1.2\"\nserver:\n  listen: \"127.0.0.1:8000\"\n  max_sesions: 3\n").unwrap();
    let out = server_command().args(["--check-config", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_sesions") && err.contains('4'), "{err}");
}

#[test]
fn a_missing_token_secret_is_named_and_nothing_starts() {
    let dir = temp_dir();
    let cfg = dir.path().join("c.yml");
    std::fs::write(&cfg, config_yaml(dir.path(), None, "")).unwrap();
    let out =
        server_command().arg("--config").arg(&cfg).env("TEST_VIEWER_TOKEN", "0123456789abcdef1").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TEST_ADMIN_TOKEN"));
    assert!(!dir.path().join("log/audit.log").exists(), "nothing was created");
}

#[test]
fn no_authentication_off_loopback_is_refused() {
    let out = server_command()
        .args(["--dev", "--listen", "0.0.0.0:0", "--check-config"])
        .env("XDG_STATE_HOME", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}

#[test]
fn the_server_refuses_to_run_as_root_but_checks_a_configuration_as_root() {
    if !is_root() {
        eprintln!("skipped: needs root to check the refusal");
        return;
    }
    let dir = temp_dir();
    let out = std::process::Command::new(server_bin())
        .args(["--dev", "--listen", "127.0.0.1:0"])
        .env("XDG_STATE_HOME", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to run as root"));
    assert!(!dir.path().join("mcp-raspi/log").exists(), "nothing was created");
    // What an operator types after editing /etc/mcp-raspi/config.yml.
    let example = crate::support::repo().join("etc/config.example.yml");
    let out = std::process::Command::new(server_bin())
        .args(["--check-config", "--config"])
        .arg(&example)
        .env("MCP_RASPI_ADMIN_TOKEN", "0123456789abcdef0123")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out =
        std::process::Command::new(agent_bin()).args(["--check-config", "--config"]).arg(&example).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not checked as root"));
}

#[test]
fn the_agent_checks_the_example_configuration_before_its_users_exist() {
    let example = crate::support::repo().join("etc/config.example.yml");
    let out = agent_command()
        .args(["--check-config", "--config"])
        .arg(&example)
        // Users no system has: a warning each, not a failure.
        .env("MCP_RASPI_OPS_AGENT__ALLOWED_USERS", "[no-such-user-mcp-raspi-test]")
        .env("MCP_RASPI_OPS_AGENT__SOCKET_GROUP", "no-such-group-mcp-raspi-test")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("warning: ops_agent.allowed_users") && err.contains("no-such-user-mcp-raspi-test"), "{err}");
    assert!(err.contains("warning: ops_agent.socket_group"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
}

/// `mcp-raspi-server --dev --stdio` with its state under `state` and `env` set, stdin
/// and stdout piped.
fn stdio_server(state: &std::path::Path, env: &[(&str, &str)]) -> std::process::Child {
    server_command()
        .args(["--dev", "--stdio"])
        .env("XDG_STATE_HOME", state)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn stdio_stops_on_sigterm_and_writes_the_audit_records_still_waiting() {
    let dir = temp_dir();
    let mut child = stdio_server(dir.path(), &[("MCP_RASPI_LOGGING__AUDIT_WRITE_DELAY_MS", "1000")]);
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut send = |v: Value| writeln!(stdin, "{v}").unwrap();
    send(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}),
    );
    lines.next().unwrap().unwrap();
    send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    send(
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "system.get_info", "arguments": {}}}),
    );
    let call: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(call["result"]["isError"], false);
    // stdin stays open: the signal alone stops the server.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGTERM).unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "still running after SIGTERM");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let audit = std::fs::read_to_string(dir.path().join("mcp-raspi/log/audit.log")).unwrap();
    let tools: Vec<String> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["tool"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(tools, ["system.get_info"]);
    drop(stdin);
}

#[test]
fn stdio_speaks_mcp_line_by_line() {
    let dir = temp_dir();
    let mut child = stdio_server(dir.path(), &[]);
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut send = |v: Value| writeln!(stdin, "{v}").unwrap();
    send(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}),
    );
    let init: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(init["result"]["protocolVersion"], "2025-06-18");
    send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    send(
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "system.get_info", "arguments": {}}}),
    );
    let call: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(call["id"], 2);
    assert_eq!(call["result"]["isError"], false);
    send(json!({"jsonrpc": "2.0", "id": 3, "method": "logs.get_recent_audit_logs", "params": {"limit": 1}}));
    let audit: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(audit["result"]["structuredContent"]["entries"][0]["transport"], "stdio");
    // No development agent runs: the advice is the development one.
    send(json!({"jsonrpc": "2.0", "id": 4, "method": "gpio.read_pin", "params": {"pin": 17}}));
    let down: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let text = down["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("raspi-ops-agent --dev") && !text.contains("systemctl"), "{text}");
    writeln!(stdin, "{{not json").unwrap();
    let err: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(err["error"]["code"], -32700);
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

#[test]
fn root_starting_the_server_by_hand_gets_it_as_the_service_user_at_the_level_asked_for() {
    if !is_root() {
        eprintln!("skipped: needs root to start the server as root");
        return;
    }
    // What an operator types while the service does not start (the spec's recovery
    // scenario 1): root reads the configuration and secrets, the server runs as --user.
    let dir = temp_dir();
    let cfg = dir.path().join("c.yml");
    let yaml = config_yaml(dir.path(), None, "").replace("level: debug", "level: warn");
    std::fs::write(&cfg, yaml).unwrap();
    let mut child = std::process::Command::new(server_bin())
        .arg("--config")
        .arg(&cfg)
        .args(["--log-level", "DEBUG", "--user", &crate::support::UNPRIVILEGED.to_string()])
        .env("TEST_ADMIN_TOKEN", "0123456789abcdef0")
        .env("TEST_VIEWER_TOKEN", "0123456789abcdef1")
        .env_remove("INVOCATION_ID")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    // An initialize, which the server logs at debug level.
    let addr = line.trim().trim_start_matches("listening on http://").trim_end_matches("/mcp").to_string();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer 0123456789abcdef0\r\n\
         Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
    assert!(line.starts_with("listening on http://"), "{line:?}");
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let unprivileged = crate::support::UNPRIVILEGED.to_string();
    assert!(uid.split_whitespace().skip(1).all(|u| u == unprivileged), "{uid}");
    let caps = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    assert!(caps.ends_with("0000000000000000"), "{caps}");
    let log = std::fs::read_to_string(dir.path().join("log/app.log")).unwrap();
    assert!(log.contains("\"level\":\"debug\""), "--log-level DEBUG did not override level: warn: {log}");

    let out = std::process::Command::new(server_bin())
        .arg("--config")
        .arg(&cfg)
        .args(["--user", "no-such-user-mcp-raspi-test"])
        .env("TEST_ADMIN_TOKEN", "0123456789abcdef0")
        .env("TEST_VIEWER_TOKEN", "0123456789abcdef1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to run as root") && err.contains("--user"), "{err}");
    let out = server_command().args(["--dev", "--check-config", "--log-level", "loud"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a log level"), "{out:?}");
}
