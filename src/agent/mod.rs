//! `raspi-ops-agent`: the privileged half of mcp-raspi. It runs as its own unprivileged
//! user with device groups and polkit authorisation, drops every Linux capability it does
//! not need, and answers typed requests from the server over a Unix socket whose peers it
//! checks with SO_PEERCRED.

mod config_deploy;
mod dispatch;
pub mod privileges;
mod serve;
pub mod update;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::net::{UnixListener, UnixStream};

use crate::base::VERSION;
use crate::config::Config;

pub use dispatch::AgentState;
pub use serve::serve;

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
    let platform = crate::platform::Platform::select(config.platform.backend, &roots)
        .with_os_upgrades(&config.updates.os.upgrade_unit, &config.paths.state_dir);
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
    let config_path = (!args.dev).then(|| args.config.clone());
    let state = Arc::new(AgentState { config, config_path, platform, capabilities, updates });
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let result = runtime.block_on(async move {
        let listener = bind(&socket, group).await?;
        let shutdown = crate::server::shutdown_signal();
        println!("listening on {}", socket.display());
        let _ = std::io::stdout().flush();
        tokio::spawn(update::check_after_start(state.clone()));
        serve(state, listener, allowed_uids, shutdown).await;
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
