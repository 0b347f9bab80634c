//! `raspi-ops-agent`: the privileged half of mcp-raspi. It runs as its own unprivileged
//! user with device groups and polkit authorisation, drops every Linux capability it does
//! not need, and answers typed requests from the server over a Unix socket whose peers it
//! checks with SO_PEERCRED.

mod dispatch;
pub mod privileges;
pub mod update;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::base::VERSION;
use crate::config::Config;
use crate::ipc::{self, ErrorCode, Request, RequestFrame, Response, ResponseFrame};

pub use dispatch::AgentState;

/// Privileged operations agent of mcp-raspi: the only process that touches hardware and
/// system services, on behalf of mcp-raspi-server.
#[derive(Debug, Parser)]
#[command(name = "raspi-ops-agent", version = VERSION)]
pub struct Args {
    /// Configuration file (shared with the server).
    #[arg(long, value_name = "FILE", default_value = "/etc/mcp-raspi/config.yml")]
    pub config: PathBuf,
    /// Use the embedded development configuration (simulated hardware, socket and state
    /// under the user's state directory, only this user may connect).
    #[arg(long, conflicts_with = "config")]
    pub dev: bool,
    /// Listen on this socket instead of ops_agent.socket_path.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Check the configuration and privileges, then exit.
    #[arg(long)]
    pub check_config: bool,
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "raspi-ops-agent: {message}");
    ExitCode::from(2)
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let loaded =
        if args.dev { Config::dev(&crate::server::dev_home(), &env) } else { Config::load(&args.config, &env) };
    let mut config = match loaded {
        Ok(l) => l.config,
        Err(e) => return fail(e),
    };
    if let Some(socket) = args.socket {
        config.ops_agent.socket_path = socket;
    }
    if args.check_config {
        return check_config(&config);
    }
    let mut capabilities = match privileges::enforce(&privileges::required(&config)) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let allowed_uids = match resolve_users(&config.ops_agent.allowed_users) {
        Ok(u) => u,
        Err(e) => return fail(e),
    };
    let group = match resolve_group(&config.ops_agent.socket_group) {
        Ok(g) => g,
        Err(e) => return fail(e),
    };
    crate::logs::init_console(config.logging.level, config.logging.journald);
    let roots = crate::host::Roots {
        proc: config.platform.proc_root.clone(),
        sys: config.platform.sys_root.clone(),
        etc: config.platform.etc_root.clone(),
        fs: config.platform.fs_root.clone(),
    };
    let platform = crate::platform::Platform::select(config.platform.backend, &roots);
    capabilities.backend = platform.backend.into();
    capabilities.backend_reason = platform.reason.to_string();
    log::info!(
        "raspi-ops-agent {VERSION} starting as uid {} groups {:?}: backend {} ({}); capabilities effective {:?} permitted {:?}; no_new_privs {}",
        capabilities.uid,
        capabilities.groups,
        platform.backend,
        platform.reason,
        capabilities.effective,
        capabilities.permitted,
        capabilities.no_new_privs
    );
    let socket = config.ops_agent.socket_path.clone();
    let updates = update::Updates::new(&config);
    let state = Arc::new(AgentState { config, platform, capabilities, updates });
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let result = runtime.block_on(async move {
        let listener = bind(&socket, group).await?;
        println!("listening on {}", socket.display());
        let _ = std::io::stdout().flush();
        tokio::spawn(update::check_after_start(state.clone()));
        serve(state, listener, allowed_uids, crate::server::shutdown_signal()).await;
        let _ = std::fs::remove_file(&socket);
        log::info!("stopped");
        Ok::<(), String>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            fail(e)
        }
    }
}

/// `--check-config`: the configuration, the users and group it names, and (unless run as
/// root, which an operator checking `/etc/mcp-raspi/config.yml` may be) the privileges the
/// agent would keep. A user or group that does not exist yet (the package creates them) is
/// a warning, not an error: the check is also run before the package is installed.
fn check_config(config: &Config) -> ExitCode {
    let mut warnings = Vec::new();
    for name in &config.ops_agent.allowed_users {
        match lookup_user(name) {
            Ok(Some(_)) => {}
            Ok(None) => warnings.push(format!(
                "ops_agent.allowed_users: no user named {name:?} on this system yet; the agent refuses it until it exists"
            )),
            Err(e) => return fail(format!("ops_agent.allowed_users: {e}")),
        }
    }
    match lookup_group(&config.ops_agent.socket_group) {
        Ok(Some(_)) => {}
        Ok(None) => warnings.push(format!(
            "ops_agent.socket_group: no group named {:?} on this system yet; the agent cannot start until it exists",
            config.ops_agent.socket_group
        )),
        Err(e) => return fail(format!("ops_agent.socket_group: {e}")),
    }
    for warning in &warnings {
        let _ = writeln!(std::io::stderr(), "raspi-ops-agent: warning: {warning}");
    }
    let required = privileges::required(config);
    if nix::unistd::geteuid().is_root() {
        let names: Vec<String> = required.iter().map(|c| c.to_string()).collect();
        println!(
            "configuration OK; capabilities the agent keeps: {names:?} (not checked as root: the service checks them when it starts as its user)"
        );
        return ExitCode::SUCCESS;
    }
    match privileges::enforce(&required) {
        Ok(capabilities) => {
            println!(
                "configuration OK; capabilities after dropping: effective {:?}, permitted {:?}, ambient {:?}",
                capabilities.effective, capabilities.permitted, capabilities.ambient
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// A user by name or number: `Ok(None)` when there is none.
fn lookup_user(name: &str) -> Result<Option<u32>, String> {
    if let Ok(uid) = name.parse::<u32>() {
        return Ok(Some(uid));
    }
    nix::unistd::User::from_name(name)
        .map(|u| u.map(|u| u.uid.as_raw()))
        .map_err(|e| format!("cannot look up user {name:?}: {e}"))
}

/// A group by name or number: `Ok(None)` when there is none.
fn lookup_group(name: &str) -> Result<Option<u32>, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(Some(gid));
    }
    nix::unistd::Group::from_name(name)
        .map(|g| g.map(|g| g.gid.as_raw()))
        .map_err(|e| format!("cannot look up group {name:?}: {e}"))
}

fn resolve_users(names: &[String]) -> Result<Vec<u32>, String> {
    names
        .iter()
        .map(|n| {
            lookup_user(n)
                .map_err(|e| format!("ops_agent.allowed_users: {e}"))?
                .ok_or_else(|| format!("ops_agent.allowed_users: no user named {n:?} on this system"))
        })
        .collect()
}

fn resolve_group(name: &str) -> Result<u32, String> {
    lookup_group(name)
        .map_err(|e| format!("ops_agent.socket_group: {e}"))?
        .ok_or_else(|| format!("ops_agent.socket_group: no group named {name:?} on this system"))
}

/// Creates the socket with mode 0660 and the configured group, replacing a stale one.
async fn bind(path: &Path, group: u32) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).await.is_ok() {
                return Err(format!("another agent is already listening on {}", path.display()));
            }
            std::fs::remove_file(path)
                .map_err(|e| format!("cannot remove the stale socket {}: {e}", path.display()))?;
        }
        Ok(_) => return Err(format!("{} exists and is not a socket; refusing to replace it", path.display())),
        Err(_) => {}
    }
    // The socket is created with the umask's mode: no window in which others could connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o117));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    std::os::unix::fs::chown(path, None, Some(group))
        .map_err(|e| format!("cannot give {} to group {group}: {e}", path.display()))?;
    Ok(listener)
}

/// Accepts connections until `shutdown` completes; each is served concurrently.
pub async fn serve(
    state: Arc<AgentState>,
    listener: UnixListener,
    allowed_uids: Vec<u32>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    continue;
                }
            },
        };
        let peer = match stream.peer_cred() {
            Ok(c) => c,
            Err(e) => {
                log::warn!("refused a connection: cannot read its credentials: {e}");
                continue;
            }
        };
        if !allowed_uids.contains(&peer.uid()) {
            log::warn!(
                "refused a connection from uid {} (pid {:?}): not on ops_agent.allowed_users",
                peer.uid(),
                peer.pid()
            );
            continue;
        }
        log::debug!("connection from uid {} (pid {:?})", peer.uid(), peer.pid());
        tokio::spawn(connection(state.clone(), stream, peer.uid()));
    }
}

async fn connection(state: Arc<AgentState>, stream: UnixStream, uid: u32) {
    let (mut reader, mut writer) = stream.into_split();
    let hello: Option<RequestFrame> = match ipc::read_frame(&mut reader).await {
        Ok(f) => f,
        Err(e) => {
            log::warn!("uid {uid}: bad first frame: {e}");
            return;
        }
    };
    let Some(hello) = hello else { return };
    let answer = match &hello.request {
        Request::Hello { package_version, ipc_version } => {
            match ipc::check_compatible(VERSION, ipc::IPC_VERSION, package_version, ipc_version) {
                Ok(()) => Response::Hello {
                    package_version: VERSION.into(),
                    ipc_version: ipc::IPC_VERSION.into(),
                    capabilities: state.capabilities.clone(),
                },
                Err(message) => {
                    log::warn!("uid {uid}: {message}");
                    Response::Error { code: ErrorCode::VersionMismatch, message }
                }
            }
        }
        other => Response::Error {
            code: ErrorCode::BadRequest,
            message: format!("the first request must be hello, not {}", other.name()),
        },
    };
    let refused = matches!(answer, Response::Error { .. });
    if ipc::write_frame(&mut writer, &ResponseFrame { id: hello.id, response: answer }).await.is_err() || refused {
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<ResponseFrame>();
    let write_task = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if ipc::write_frame(&mut writer, &frame).await.is_err() {
                break;
            }
        }
    });
    loop {
        let frame: RequestFrame = match ipc::read_frame(&mut reader).await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                log::warn!("uid {uid}: closing the connection: {e}");
                break;
            }
        };
        let state = state.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let id = frame.id;
            log::debug!("uid {uid}: request {id}: {}", frame.request.as_safe_string());
            let response = match frame.time_left() {
                None => Response::Error { code: ErrorCode::Timeout, message: "the request's deadline passed".into() },
                Some(left) => {
                    let request = frame.request;
                    let work = tokio::task::spawn_blocking(move || state.execute(request));
                    match tokio::time::timeout(left, work).await {
                        Ok(Ok(r)) => r,
                        Ok(Err(e)) => {
                            Response::Error { code: ErrorCode::Failed, message: format!("the operation failed: {e}") }
                        }
                        Err(_) => Response::Error {
                            code: ErrorCode::Timeout,
                            message: format!("the operation did not finish within {} ms", left.as_millis()),
                        },
                    }
                }
            };
            if let Response::Error { code, message } = &response {
                log::info!("uid {uid}: request {id} refused or failed ({}): {message}", code.as_str());
            }
            let _ = tx.send(ResponseFrame { id, response });
        });
    }
    drop(tx);
    let _ = write_task.await;
}
