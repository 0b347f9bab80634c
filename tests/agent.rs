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
    start_agent(&config_admitting_tests(dir))
}

/// The configuration of [`agent_admitting_tests`], written into `dir`.
fn config_admitting_tests(dir: &Path) -> std::path::PathBuf {
    let me = nix::unistd::getuid().as_raw();
    let extra = format!(
        "ops_agent:\n  socket_path: {}/ops-agent.sock\n  allowed_users: [\"{}\", \"{me}\"]\n  socket_group: \"{}\"\n",
        dir.display(),
        service_uid(),
        service_uid()
    );
    let config = dir.join("config.yml");
    std::fs::write(&config, config_yaml(dir, None, &extra)).unwrap();
    config
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

#[test]
fn a_bad_request_is_answered_alone_and_the_connection_goes_on() {
    let dir = temp_dir();
    let mut agent = agent_admitting_tests(dir.path());
    let mut s = connect(dir.path());
    send(&mut s, &hello(env!("CARGO_PKG_VERSION")));
    assert_eq!(receive(&mut s).unwrap()["response"]["kind"], "hello");
    // Valid JSON naming an id, but no request the agent knows.
    send(&mut s, &json!({"id": 7, "deadline_unix_ms": now_ms() + 5000, "request": {"op": "no_such_op"}}));
    let bad = receive(&mut s).unwrap();
    assert_eq!(bad["id"], 7, "{bad}");
    assert_eq!(bad["response"]["code"], "bad_request", "{bad}");
    // Not JSON at all: nothing to answer, and the connection stays in step.
    s.write_all(&5u32.to_be_bytes()).unwrap();
    s.write_all(b"{{{{{").unwrap();
    send(&mut s, &json!({"id": 8, "deadline_unix_ms": now_ms() + 5000, "request": {"op": "gpio_read", "pin": 17}}));
    let pin = receive(&mut s).unwrap();
    assert_eq!(pin["id"], 8, "{pin}");
    assert_eq!(pin["response"]["state"]["pin"], 17, "{pin}");
    agent.kill().unwrap();
    agent.wait().unwrap();
}

#[test]
fn a_peer_that_never_says_hello_is_closed() {
    let dir = temp_dir();
    let mut agent = agent_admitting_tests(dir.path());
    let mut s = connect(dir.path());
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let started = std::time::Instant::now();
    let mut byte = [0u8; 1];
    assert_eq!(s.read(&mut byte).unwrap_or(0), 0, "the agent closes the connection");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(4) && waited < Duration::from_secs(12), "{waited:?}");
    agent.kill().unwrap();
    agent.wait().unwrap();
}

#[test]
fn out_of_file_descriptors_the_agent_backs_off_instead_of_spinning() {
    use std::os::unix::process::CommandExt;
    let dir = temp_dir();
    let config = config_admitting_tests(dir.path());
    let log = dir.path().join("agent.stderr");
    let mut command = crate::support::agent_command();
    command.arg("--config").arg(&config).stdout(Stdio::piped()).stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: setrlimit is async-signal-safe; the closure only calls it.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 32, rlim_max: 32 };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut agent = command.spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(agent.stdout.take().unwrap()), &mut line).unwrap();
    assert!(line.starts_with("listening on"), "{line}");
    let cpu_before = cpu_ticks(agent.id());
    // Connections that say nothing hold the agent's descriptors until it runs out.
    let held: Vec<UnixStream> =
        (0..80).filter_map(|_| UnixStream::connect(dir.path().join("ops-agent.sock")).ok()).collect();
    std::thread::sleep(Duration::from_secs(2));
    let cpu = cpu_ticks(agent.id()) - cpu_before;
    drop(held);
    agent.kill().unwrap();
    agent.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let failures = text.lines().filter(|l| l.contains("accept failed")).count();
    assert!((1..=3).contains(&failures), "accept errors are logged at a bounded rate: {failures} lines\n{text}");
    // Two seconds of a spinning accept loop cost two seconds of CPU; backing off costs little.
    let ticks_per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap().unwrap() as u64;
    assert!(cpu < ticks_per_second / 2, "{cpu} ticks of CPU in 2 s");
}

/// User plus system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn a_delta_install_is_refused_when_this_device_has_delta_updates_off() {
    let dir = temp_dir();
    let mut agent = agent_admitting_tests(dir.path());
    let mut s = connect(dir.path());
    send(&mut s, &hello(env!("CARGO_PKG_VERSION")));
    assert_eq!(receive(&mut s).unwrap()["response"]["kind"], "hello");
    let request = json!({"op": "update_apply", "manifest": "{}", "signature": "{}",
                         "delta": {"index": "{}", "signature": "{}"}});
    send(&mut s, &json!({"id": 3, "deadline_unix_ms": now_ms() + 5000, "request": request}));
    let refused = receive(&mut s).unwrap();
    assert_eq!(refused["response"]["code"], "delta_unusable", "{refused}");
    assert!(refused["response"]["message"].as_str().unwrap().contains("updates.delta"), "{refused}");
    agent.kill().unwrap();
    agent.wait().unwrap();
}
