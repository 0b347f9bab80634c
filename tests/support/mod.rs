//! Starts the real `mcp-raspi-server` binary on a free loopback port and speaks HTTP to it
//! with a deliberately small client, so tests can send exactly the bytes they mean
//! (malformed ones included).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

pub mod deb;
pub mod file_server;
pub mod fleet_lab;
pub mod issuer;
pub mod update_repo;

pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
pub const VIEWER_TOKEN: &str = "viewer-token-0123456789abcdef";
/// The server refuses root, so tests running as root start it as this user.
pub const UNPRIVILEGED: u32 = 65534;

pub fn server_bin() -> &'static str {
    env!("CARGO_BIN_EXE_mcp-raspi-server")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A command for the server binary, dropped to an unprivileged user when tests run as root.
pub fn server_command() -> Command {
    program_command(Path::new(server_bin()))
}

/// A command for `program` (a daemon of this build, or a release's copy of one), dropped
/// to an unprivileged user when tests run as root.
pub fn program_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    if is_root() {
        cmd.uid(UNPRIVILEGED).gid(UNPRIVILEGED);
    }
    cmd.env_remove("INVOCATION_ID").env_remove("JOURNAL_STREAM");
    cmd
}

/// A temporary directory the server (possibly unprivileged) can write.
pub fn temp_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    if is_root() {
        std::os::unix::fs::chown(dir.path(), Some(UNPRIVILEGED), Some(UNPRIVILEGED)).unwrap();
    }
    dir
}

/// The uid (and gid) the server and agent run as in tests.
pub fn service_uid() -> u32 {
    if is_root() {
        UNPRIVILEGED
    } else {
        nix::unistd::getuid().as_raw()
    }
}

/// Allowlists of the simulated hardware, as the development config has them.
pub const DEVICES_YAML: &str = "experimental_features:
  enabled: true
  features:
    - { name: gpio, enabled: true, acknowledged_risks: true }
    - { name: spi, enabled: true, acknowledged_risks: true }
    - { name: uart, enabled: true, acknowledged_risks: true }
    - { name: camera.record_video, enabled: true, acknowledged_risks: true }
gpio:
  pins:
    - { pin: 17, modes: [input, output], label: led }
    - { pin: 18, modes: [input, output, pwm], label: fan }
    - { pin: 27, modes: [input], label: button }
i2c:
  buses:
    - { bus: 1, addresses: [0x48, 0x50] }
spi:
  devices:
    - { bus: 0, chip_select: 0, max_speed_hz: 1000000 }
uart:
  ports:
    - { port: serial0, baud_rates: [9600, 115200] }
services:
  allowed_units: [ssh.service, nginx.service]
power:
  reboot_enabled: true
  shutdown_enabled: false
  max_delay_seconds: 600
updates:
  os:
    check_enabled: true
    apply_enabled: true
";

/// The `logging` section of the test configuration, with `keys` (indented lines) added.
pub fn logging_yaml(dir: &Path, keys: &str) -> String {
    format!(
        "logging:\n  level: debug\n  journald: off\n  app_path: {0}/log/app.log\n  audit_path: {0}/log/audit.log\n{keys}",
        dir.display()
    )
}

/// The configuration tests start from: token auth with an admin and a viewer token,
/// simulated hardware, everything under `dir`. `extra` is appended YAML (top-level
/// sections it names replace these).
pub fn config_yaml(dir: &Path, roots: Option<&Path>, extra: &str) -> String {
    let mut sections = vec![
        ("server", "server:\n  listen: \"127.0.0.1:0\"\n".to_string()),
        (
            "security",
            "security:\n  auth_mode: token\n  secrets_file: null\n  rate_limit:\n    requests_per_minute: 0\n  tokens:\n    - { identity: admin, role: admin, env: TEST_ADMIN_TOKEN }\n    - { identity: watcher, role: viewer, env: TEST_VIEWER_TOKEN }\n".to_string(),
        ),
        ("logging", logging_yaml(dir, "")),
        ("paths", format!("paths:\n  state_dir: {0}/state\n  install_dir: {0}/opt\n", dir.display())),
        (
            "ops_agent",
            format!(
                "ops_agent:\n  socket_path: {}/ops-agent.sock\n  allowed_users: [\"{}\"]\n  socket_group: \"{}\"\n  request_timeout_ms: 3000\n",
                dir.display(),
                service_uid(),
                service_uid()
            ),
        ),
        ("experimental_features", DEVICES_YAML.to_string()),
        ("camera", format!("camera:\n  media_dir: {}/media\n  max_files: 3\n", dir.display())),
    ];
    let platform = match roots {
        Some(r) => format!(
            "platform:\n  backend: simulated\n  proc_root: {0}/proc\n  sys_root: {0}/sys\n  etc_root: {0}/etc\n  fs_root: {0}/fs\n",
            r.display()
        ),
        None => "platform:\n  backend: simulated\n".to_string(),
    };
    sections.push(("platform", platform));
    let mut out = String::from("config_version: \"1.2\"\n");
    for (name, text) in sections {
        if !extra.lines().any(|l| l.starts_with(&format!("{name}:"))) {
            out.push_str(&text);
        }
    }
    out.push_str(extra);
    out
}

/// A running server, stopped on drop.
pub struct Server {
    child: Child,
    pub addr: String,
    pub dir: tempfile::TempDir,
    agent: Option<Child>,
}

impl Server {
    /// The standard test server.
    pub fn start() -> Server {
        Server::with_config(None, "")
    }

    /// A server reading `roots` (a fixture tree) with extra YAML appended to its config.
    pub fn with_config(roots: Option<&Path>, extra: &str) -> Server {
        let dir = temp_dir();
        let config = dir.path().join("config.yml");
        std::fs::write(&config, config_yaml(dir.path(), roots, extra)).unwrap();
        Server::spawn(dir, None)
    }

    /// The standard test server, with the audit records of successful read-only calls
    /// waiting up to `ms` to be written.
    pub fn with_audit_write_delay(ms: u64) -> Server {
        let dir = temp_dir();
        let logging = logging_yaml(dir.path(), &format!("  audit_write_delay_ms: {ms}\n"));
        std::fs::write(dir.path().join("config.yml"), config_yaml(dir.path(), None, &logging)).unwrap();
        Server::spawn(dir, None)
    }

    /// The standard test server with its application log at `level` (not debug).
    pub fn with_log_level(level: &str) -> Server {
        let dir = temp_dir();
        let logging = logging_yaml(dir.path(), "").replace("level: debug", &format!("level: {level}"));
        std::fs::write(dir.path().join("config.yml"), config_yaml(dir.path(), None, &logging)).unwrap();
        Server::spawn(dir, None)
    }

    /// The standard test server with its ops agent (simulated hardware) running.
    pub fn with_agent() -> Server {
        let dir = temp_dir();
        let config = dir.path().join("config.yml");
        std::fs::write(&config, config_yaml(dir.path(), None, "")).unwrap();
        let agent = start_agent(&config);
        Server::spawn(dir, Some(agent))
    }

    /// [`Server::with_agent`] with extra YAML appended to the configuration.
    pub fn with_agent_and_config(extra: &str) -> Server {
        let dir = temp_dir();
        let config = dir.path().join("config.yml");
        std::fs::write(&config, config_yaml(dir.path(), None, extra)).unwrap();
        let agent = start_agent(&config);
        Server::spawn(dir, Some(agent))
    }

    /// The server and its agent as a release installed under an install root runs them:
    /// from `bin` (e.g. `<root>/current/bin`), on the configuration file `config`.
    pub fn from_release(bin: &Path, config: &Path) -> Server {
        let agent = start_agent_program(&bin.join("raspi-ops-agent"), config);
        Server::spawn_program(&bin.join("mcp-raspi-server"), config, temp_dir(), Some(agent))
    }

    /// [`Server::from_release`] without the agent.
    pub fn from_release_alone(bin: &Path, config: &Path) -> Server {
        Server::spawn_program(&bin.join("mcp-raspi-server"), config, temp_dir(), None)
    }

    fn spawn(dir: tempfile::TempDir, agent: Option<Child>) -> Server {
        let config = dir.path().join("config.yml");
        Server::spawn_program(Path::new(server_bin()), &config, dir, agent)
    }

    fn spawn_program(program: &Path, config: &Path, dir: tempfile::TempDir, agent: Option<Child>) -> Server {
        let mut cmd = program_command(program);
        cmd.arg("--config").arg(config);
        Server::from_command(cmd, dir, agent)
    }

    /// The server `cmd` starts (with the test tokens in its environment), once it listens.
    pub fn from_command(cmd: Command, dir: tempfile::TempDir, agent: Option<Child>) -> Server {
        Server::try_from_command(cmd, dir, agent).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Server::from_release_alone`], or why the server did not start (it exited).
    pub fn try_from_release_alone(bin: &Path, config: &Path) -> Result<Server, String> {
        let mut cmd = program_command(&bin.join("mcp-raspi-server"));
        cmd.arg("--config").arg(config);
        Server::try_from_command(cmd, temp_dir(), None)
    }

    /// [`Server::from_command`], or why the server did not start.
    pub fn try_from_command(mut cmd: Command, dir: tempfile::TempDir, agent: Option<Child>) -> Result<Server, String> {
        let mut child = cmd
            .env("TEST_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("TEST_VIEWER_TOKEN", VIEWER_TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let Some(url) = line.trim().strip_prefix("listening on http://") else {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            let _ = child.wait();
            return Err(format!("server did not start: {line:?} {err}"));
        };
        let addr = url.trim_end_matches("/mcp").to_string();
        // What the server writes to standard error (its log at debug level) is read and
        // dropped: a pipe nobody reads fills up and stops a server that logs a lot.
        if let Some(mut stderr) = child.stderr.take() {
            std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        }
        Ok(Server { child, addr, dir, agent })
    }

    /// Stops this server and starts the server binary again on the same directory and
    /// configuration, as a service restart does.
    pub fn restart(mut self) -> Server {
        assert!(self.terminate().is_some(), "the server did not stop");
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Server::spawn(dir, self.agent.take())
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }

    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    /// Kills the agent (SIGKILL), as a crash would.
    pub fn kill_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }

    /// Starts the agent again after `kill_agent`.
    pub fn start_agent(&mut self) {
        self.agent = Some(start_agent(&self.config_path()));
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// Sends one raw HTTP/1.1 request.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        self.request_on(TcpStream::connect(&self.addr).unwrap(), method, path, headers, body)
    }

    /// [`Server::request`] from the loopback address `source` (127.0.0.2, …): each source is
    /// a peer of its own for the server's per-address throttling of failed authentication.
    pub fn request_from(
        &self,
        source: std::net::Ipv4Addr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
        let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
        bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(std::net::SocketAddrV4::new(source, 0))).unwrap();
        let target: std::net::SocketAddrV4 = self.addr.parse().unwrap();
        connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(target)).unwrap();
        self.request_on(TcpStream::from(fd), method, path, headers, body)
    }

    fn request_on(
        &self,
        mut stream: TcpStream,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req.push_str(&format!("Host: {}\r\n", self.addr));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).unwrap();
        // A server may answer (413) before reading a large body and close.
        let _ = stream.write_all(body);
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        Response::parse(&raw)
    }

    /// POSTs a JSON body to /mcp as an admin with the usual MCP headers plus `headers`.
    pub fn post(&self, body: &Value, headers: &[(&str, &str)]) -> Response {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let mut all = vec![
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
            ("Authorization", auth.as_str()),
        ];
        all.extend_from_slice(headers);
        self.request("POST", "/mcp", &all, body.to_string().as_bytes())
    }

    /// Opens a session at `version` and returns its id.
    pub fn initialize(&self, version: &str) -> String {
        self.initialize_as(version, ADMIN_TOKEN)
    }

    pub fn initialize_as(&self, version: &str, token: &str) -> String {
        self.initialize_with(version, &[("Authorization", &format!("Bearer {token}"))])
    }

    /// Opens a session at `version` with these credential headers and returns its id.
    pub fn initialize_with(&self, version: &str, credentials: &[(&str, &str)]) -> String {
        let body = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "tests", "version": "1"}}});
        let mut headers = vec![("Content-Type", "application/json")];
        headers.extend_from_slice(credentials);
        let r = self.request("POST", "/mcp", &headers, body.to_string().as_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
        r.header("mcp-session-id").expect("a session id").to_string()
    }

    /// A request within a session; returns the JSON-RPC message.
    pub fn rpc(&self, session: &str, version: &str, method: &str, params: Value) -> Value {
        let r = self.rpc_response(session, version, method, params);
        assert_eq!(r.status, 200, "{method}: {}", r.text());
        r.json()
    }

    pub fn rpc_response(&self, session: &str, version: &str, method: &str, params: Value) -> Response {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        self.post(&body, &[("Mcp-Session-Id", session), ("MCP-Protocol-Version", version)])
    }

    /// Calls a tool in a fresh 2025-11-25 session; returns the CallToolResult.
    pub fn call_tool(&self, name: &str, arguments: Value) -> Value {
        let s = self.initialize("2025-11-25");
        let msg = self.rpc(&s, "2025-11-25", "tools/call", json!({"name": name, "arguments": arguments}));
        msg.get("result").cloned().unwrap_or_else(|| panic!("no result: {msg}"))
    }

    /// Calls a tool in a fresh 2025-11-25 session of the caller with `token`.
    pub fn call_tool_as(&self, token: &str, name: &str, arguments: Value) -> Value {
        let session = self.initialize_as("2025-11-25", token);
        let auth = format!("Bearer {token}");
        let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}});
        let headers = [
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
            ("Authorization", auth.as_str()),
            ("Mcp-Session-Id", session.as_str()),
            ("MCP-Protocol-Version", "2025-11-25"),
        ];
        let msg = self.request("POST", "/mcp", &headers, call.to_string().as_bytes()).json();
        msg.get("result").cloned().unwrap_or_else(|| panic!("no result: {msg}"))
    }

    /// A stateless (2026-07-28) request.
    pub fn stateless(&self, method: &str, params: Value, extra_headers: &[(&str, &str)]) -> Response {
        let mut params = params;
        params["_meta"] = json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        });
        let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
        let mut headers = vec![("MCP-Protocol-Version", "2026-07-28"), ("Mcp-Method", method)];
        headers.extend_from_slice(extra_headers);
        self.post(&body, &headers)
    }

    /// Stops the server with SIGTERM, as systemd does; its exit status, or `None` when it
    /// is still running five seconds later.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::SIGTERM);
        for _ in 0..250 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Audit records written so far.
    pub fn audit_records(&self) -> Vec<Value> {
        std::fs::read_to_string(self.log_dir().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Checks the server still answers.
    pub fn assert_alive(&self) {
        let r = self.request("GET", "/healthz", &[], b"");
        assert_eq!(r.status, 200);
        let result = self.call_tool("system.get_info", json!({}));
        assert_eq!(result["isError"], false, "{result}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill_agent();
        if self.terminate().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_raspi-ops-agent")
}

/// A command for the agent binary, dropped to the unprivileged test user when root.
pub fn agent_command() -> Command {
    program_command(Path::new(agent_bin()))
}

/// Starts the agent on `config` and waits until it listens.
pub fn start_agent(config: &Path) -> Child {
    start_agent_program(Path::new(agent_bin()), config)
}

/// Starts the agent `program` on `config` and waits until it listens.
pub fn start_agent_program(program: &Path, config: &Path) -> Child {
    let mut child = program_command(program)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("listening on"), "agent did not start: {line:?}");
    child
}

/// An HTTP response.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn parse(raw: &[u8]) -> Response {
        let split =
            raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no HTTP response: {raw:?}"));
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut body = raw[split + 4..].to_vec();
        if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")) {
            body = dechunk(&body);
        }
        Response { status, headers, body }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The JSON-RPC error code of the body.
    pub fn error_code(&self) -> i64 {
        self.json()["error"]["code"].as_i64().unwrap_or_else(|| panic!("no error: {}", self.text()))
    }

    /// The `data:` payloads of a server-sent event stream.
    pub fn events(&self) -> Vec<Value> {
        self.text()
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| serde_json::from_str(d.trim()).unwrap())
            .collect()
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = body.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&body[..nl]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = nl + 2;
        out.extend_from_slice(&body[start..start + size]);
        body = &body[start + size + 2..];
    }
    out
}
