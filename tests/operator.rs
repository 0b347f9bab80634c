//! The operator's command line against a real server: the runbook's tool-backed commands
//! (`mcp-raspi-cli system get-info`, `mcp-raspi call TOOL --args JSON`), their exit statuses
//! when the server is down or refuses the token, and their output for people and scripts.

use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{Server, ADMIN_TOKEN, VIEWER_TOKEN};

pub fn cli() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mcp-raspi"));
    cmd.env_remove("MCP_RASPI_TOKEN").env_remove("MCP_RASPI_URL");
    cmd
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_runbooks_system_commands_call_the_servers_tools_with_the_configured_token() {
    let server = Server::with_agent();
    // The server listens on a port of its choosing: written into its configuration as an
    // operator's file names it.
    let config = server.config_path();
    let yaml = std::fs::read_to_string(&config).unwrap().replace("127.0.0.1:0", &server.addr);
    std::fs::write(&config, yaml).unwrap();
    // The token of the configuration's strongest identity, found in the environment as the
    // server finds it (root would read it from the secrets file).
    let out = cli()
        .args(["system", "get-info", "--config"])
        .arg(&config)
        .env("TEST_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("TEST_VIEWER_TOKEN", VIEWER_TOKEN)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("hostname: ") && stdout.contains("backend:\n  name: simulated"), "{stdout}");

    let out = cli()
        .args(["system", "get-health", "--json", "--config"])
        .arg(&config)
        .env("TEST_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let health: Value = serde_json::from_str(&stdout).unwrap();
    assert!(health["verdict"].is_string(), "{health}");

    let out = cli()
        .args(["metrics", "get-snapshot", "--config"])
        .arg(&config)
        .env("MCP_RASPI_TOKEN", VIEWER_TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);

    // Every call is audited under the token's identity (a read's record may wait a moment
    // to be written with others).
    let audited = |audit: &str| audit.contains("\"tool\":\"metrics.get_snapshot\"");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut audit = String::new();
    while !audited(&audit) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        audit = std::fs::read_to_string(server.log_dir().join("audit.log")).unwrap_or_default();
    }
    for (tool, identity) in
        [("system.get_info", "admin"), ("system.get_health_snapshot", "admin"), ("metrics.get_snapshot", "watcher")]
    {
        assert!(
            audit
                .lines()
                .any(|l| l.contains(&format!("\"tool\":\"{tool}\""))
                    && l.contains(&format!("\"identity\":\"{identity}\""))),
            "{tool} by {identity} not audited: {audit}"
        );
    }
}

#[test]
fn call_runs_any_tool_and_its_errors_are_the_commands() {
    let server = Server::with_agent();
    let url = format!("http://{}/mcp", server.addr);
    let call = |args: &[&str]| {
        cli().arg("call").args(args).args(["--url", &url]).env("MCP_RASPI_TOKEN", ADMIN_TOKEN).output().unwrap()
    };

    let out = call(&["gpio.set_mode", "--args", r#"{"pin": 17, "mode": "output"}"#, "--json"]);
    assert!(out.status.success(), "{}", text(&out).1);
    let out = call(&["gpio.write_pin", "--args", r#"{"pin": 17, "level": 1}"#, "--json"]);
    assert!(out.status.success(), "{}", text(&out).1);
    let out = call(&["gpio.read_pin", "--args", r#"{"pin": 17}"#, "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let pin: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(pin["level"], "high", "{pin}");

    // A pin off the allowlist: the tool's error, exit status 1.
    let out = call(&["gpio.read_pin", "--args", r#"{"pin": 4}"#]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("gpio.read_pin") && stderr.contains("GPIO 4"), "{stderr}");

    let out = call(&["no.such_tool"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("no.such_tool"), "{}", text(&out).1);

    for bad in ["{pin: 17}", "[17]"] {
        let out = call(&["gpio.read_pin", "--args", bad]);
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out).1.contains("--args"), "{}", text(&out).1);
    }
}

#[test]
fn a_server_that_is_down_or_refuses_the_token_has_an_exit_status_of_its_own() {
    let server = Server::start();
    let url = format!("http://{}/mcp", server.addr);
    let out = cli().args(["system", "get-info", "--url", &url, "--token", "not-a-valid-token-0000"]).output().unwrap();
    assert_eq!(out.status.code(), Some(77), "{:?}", text(&out));
    assert!(text(&out).1.contains("refused the credentials"), "{}", text(&out).1);
    drop(server);

    // Nothing listens there any more.
    let out = cli().args(["system", "get-info", "--url", &url, "--token", ADMIN_TOKEN]).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("cannot reach the mcp-raspi server") && stderr.contains(&url), "{stderr}");

    // No token anywhere: said before anything is sent.
    let dir = crate::support::temp_dir();
    let config = dir.path().join("config.yml");
    std::fs::write(&config, crate::support::config_yaml(dir.path(), None, "")).unwrap();
    let out = cli().args(["system", "get-info", "--config"]).arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(77));
    assert!(text(&out).1.contains("MCP_RASPI_TOKEN"), "{}", text(&out).1);
}

#[test]
fn a_user_who_may_not_read_the_configuration_brings_the_token_and_the_address() {
    if !crate::support::is_root() {
        eprintln!("skipped: needs root to make the configuration unreadable to another user");
        return;
    }
    use std::os::unix::process::CommandExt;
    let server = Server::start();
    let config = server.config_path();
    std::os::unix::fs::chown(&config, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let as_user = || {
        let mut cmd = cli();
        cmd.uid(crate::support::UNPRIVILEGED).gid(crate::support::UNPRIVILEGED);
        cmd.args(["system", "get-info", "--config"]).arg(&config);
        cmd
    };
    let out = as_user().output().unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert!(stderr.contains("sudo") && stderr.contains("MCP_RASPI_TOKEN") && stderr.contains("--url"), "{stderr}");
    let url = format!("http://{}/mcp", server.addr);
    let out = as_user().env("MCP_RASPI_TOKEN", VIEWER_TOKEN).env("MCP_RASPI_URL", &url).output().unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(text(&out).0.contains("hostname: "), "{}", text(&out).0);
}
