//! The ops agent as a real process: its socket, peer checks, handshake, privileges, and
//! the server driving it end to end.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::support::{agent_bin, config_yaml, is_root, service_uid, start_agent, temp_dir, UNPRIVILEGED};

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// One request frame on a raw socket: a u32 big-endian length and JSON.
fn send(stream: &mut UnixStream, frame: &Value) {
    try_send(stream, frame).unwrap();
}

/// [`send`], to a peer that may already have closed the connection.
fn try_send(stream: &mut UnixStream, frame: &Value) -> std::io::Result<()> {
    let body = frame.to_string();
    stream.write_all(&(body.len() as u32).to_be_bytes())?;
    stream.write_all(body.as_bytes())
}

/// The next response frame, or None when the agent closed the connection.
fn receive(stream: &mut UnixStream) -> Option<Value> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).ok()?;
    Some(serde_json::from_slice(&body).unwrap())
}

fn hello(version: &str) -> Value {
    json!({"id": 0, "deadline_unix_ms": now_ms() + 5000, "request": {"op": "hello", "package_version": version, "ipc_version": mcp_raspi::ipc::IPC_VERSION}})
}

/// An agent whose socket also admits this test process (to speak raw IPC to it).
fn agent_admitting_tests(dir: &Path) -> std::process::Child {
    let me = nix::unistd::getuid().as_raw();
    let extra = format!(
        "ops_agent:\n  socket_path: {}/ops-agent.sock\n  allowed_users: [\"{}\", \"{me}\"]\n  socket_group: \"{}\"\n",
        dir.display(),
        service_uid(),
        service_uid()
    );
    let config = dir.join("config.yml");
    std::fs::write(&config, config_yaml(dir, None, &extra)).unwrap();
    start_agent(&config)
}

fn connect(dir: &Path) -> UnixStream {
    let s = UnixStream::connect(dir.join("ops-agent.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

#[test]
fn the_socket_is_0660_and_answers_the_handshake_with_its_capabilities() {
    let dir = temp_dir();
    let mut agent = agent_admitting_tests(dir.path());
    let meta = std::fs::metadata(dir.path().join("ops-agent.sock")).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), service_uid());
    let mut s = connect(dir.path());
    send(&mut s, &hello(env!("CARGO_PKG_VERSION")));
    let answer = receive(&mut s).unwrap();
    assert_eq!(answer["response"]["kind"], "hello", "{answer}");
    assert_eq!(answer["response"]["capabilities"]["effective"], json!([]));
    assert_eq!(answer["response"]["capabilities"]["no_new_privs"], true);
    send(&mut s, &json!({"id": 5, "deadline_unix_ms": now_ms() + 5000, "request": {"op": "gpio_read", "pin": 17}}));
    let pin = receive(&mut s).unwrap();
    assert_eq!(pin["id"], 5);
    assert_eq!(pin["response"]["state"]["pin"], 17, "{pin}");
    send(&mut s, &json!({"id": 6, "deadline_unix_ms": now_ms() + 5000, "request": {"op": "gpio_read", "pin": 5}}));
    let refused = receive(&mut s).unwrap();
    assert_eq!(refused["response"]["code"], "denied", "{refused}");
    send(
        &mut s,
        &json!({"id": 7, "deadline_unix_ms": now_ms().saturating_sub(10), "request": {"op": "gpio_read", "pin": 17}}),
    );
    assert_eq!(receive(&mut s).unwrap()["response"]["code"], "timeout");
    agent.kill().unwrap();
    agent.wait().unwrap();
}

#[test]
fn a_version_mismatch_is_refused_naming_both_versions() {
    let dir = temp_dir();
    let mut agent = agent_admitting_tests(dir.path());
    let mut s = connect(dir.path());
    send(&mut s, &hello("9.9.0"));
    let answer = receive(&mut s).unwrap();
    assert_eq!(answer["response"]["code"], "version_mismatch", "{answer}");
    let message = answer["response"]["message"].as_str().unwrap();
    assert!(message.contains("9.9.0") && message.contains(env!("CARGO_PKG_VERSION")), "{message}");
    assert!(receive(&mut s).is_none(), "the connection is closed after a refused handshake");
    agent.kill().unwrap();
    agent.wait().unwrap();
}

#[test]
fn a_peer_with_another_uid_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root to connect as a uid the agent does not allow");
        return;
    }
    let dir = temp_dir();
    let config = dir.path().join("config.yml");
    std::fs::write(&config, config_yaml(dir.path(), None, "")).unwrap();
    let mut agent = start_agent(&config);
    // This test runs as root (uid 0), which the agent's allowed_users does not list.
    let mut s = connect(dir.path());
    // The agent may close the connection before the frame is written: that is a refusal too.
    let _ = try_send(&mut s, &hello(env!("CARGO_PKG_VERSION")));
    assert!(receive(&mut s).is_none(), "the agent closes the connection without answering");
    agent.kill().unwrap();
    agent.wait().unwrap();
}

#[test]
fn the_agent_refuses_to_run_as_root() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = temp_dir();
    let config = dir.path().join("config.yml");
    std::fs::write(&config, config_yaml(dir.path(), None, "")).unwrap();
    let out = Command::new(agent_bin()).arg("--config").arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to run as root"));
}

fn status_line(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap()
}

#[test]
fn capabilities_beyond_the_allowed_set_are_dropped_at_start() {
    if !is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: needs root and setpriv to hand the agent capabilities");
        return;
    }
    let grant = |cmd: &mut Command| {
        cmd.args([
            &format!("--reuid={UNPRIVILEGED}"),
            &format!("--regid={UNPRIVILEGED}"),
            "--clear-groups",
            "--inh-caps=+net_admin,+sys_boot",
            "--ambient-caps=+net_admin,+sys_boot",
        ]);
    };
    // Control: the same grant really gives an ordinary program these capabilities.
    let mut control = Command::new("setpriv");
    grant(&mut control);
    let out = control.args(["grep", "^CapEff", "/proc/self/status"]).output().unwrap();
    let control_eff = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!control_eff.contains("0000000000000000"), "the grant works: {control_eff}");

    let dir = temp_dir();
    let config = dir.path().join("config.yml");
    std::fs::write(&config, config_yaml(dir.path(), None, "")).unwrap();
    let mut cmd = Command::new("setpriv");
    grant(&mut cmd);
    let mut agent = cmd.arg(agent_bin()).arg("--config").arg(&config).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = [0u8; 12];
    agent.stdout.as_mut().unwrap().read_exact(&mut line).unwrap();
    assert_eq!(&line, b"listening on");
    let pid = agent.id();
    for key in ["CapEff:", "CapPrm:", "CapInh:", "CapAmb:"] {
        assert_eq!(status_line(pid, key), "0000000000000000", "{key}");
    }
    assert_eq!(status_line(pid, "NoNewPrivs:"), "1");
    agent.kill().unwrap();
    agent.wait().unwrap();
}
