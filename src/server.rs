//! `mcp-raspi-server`: start-up, configuration, and the choice of transport.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::base::VERSION;
use crate::config::{parse_env_file, Config, ListenAddr, Loaded};
use crate::tools::App;

/// MCP server for inspecting and safely controlling a Raspberry Pi.
#[derive(Debug, Parser)]
#[command(name = "mcp-raspi-server", version = VERSION)]
pub struct Args {
    /// Configuration file.
    #[arg(long, value_name = "FILE", default_value = "/etc/mcp-raspi/config.yml")]
    pub config: PathBuf,
    /// Use the embedded development configuration: loopback, no authentication,
    /// simulated hardware, state under the user's state directory.
    #[arg(long, conflicts_with = "config")]
    pub dev: bool,
    /// Listen on this address instead of server.listen (e.g. 127.0.0.1:8000).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Speak MCP on stdin/stdout instead of HTTP.
    #[arg(long)]
    pub stdio: bool,
    /// Check the configuration and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Log at this level for this run instead of logging.level: trace, debug, info, warn or
    /// error, in any case (`--log-level DEBUG` while finding out why the service fails).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<crate::base::LogLevel>,
    /// Started by root (an operator running the server by hand while the service is down):
    /// read the configuration and secrets, then run as this user, the service's.
    #[arg(long, value_name = "USER", default_value = "mcp")]
    pub user: String,
}

/// Per-user state directory of the development configuration.
pub fn dev_home() -> PathBuf {
    let home = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")));
    match home {
        Some(h) => h.join("mcp-raspi"),
        None => std::env::temp_dir().join(format!("mcp-raspi-{}", nix::unistd::getuid())),
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "mcp-raspi-server: {message}");
    ExitCode::from(2)
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let args = Args::parse();
    // Checking a configuration needs no privilege either, but refuses nothing: an operator
    // validates /etc/mcp-raspi/config.yml with sudo after editing it. Serving as root never
    // happens: root reads what only root may (the secrets) and then becomes the service user.
    let as_root = nix::unistd::geteuid().is_root() && !args.check_config;
    if as_root && args.dev {
        return fail(
            "refusing to run as root: the server needs no privilege (privileged work is the ops agent's). \
             Run the development server as your own user; --check-config may run as root.",
        );
    }
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let loaded = if args.dev { Config::dev(&dev_home(), &env) } else { Config::load(&args.config, &env) };
    let mut loaded = match loaded {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    if let Some(level) = args.log_level {
        loaded.config.logging.level = level;
    }
    if let Some(listen) = &args.listen {
        match listen.parse::<ListenAddr>() {
            Ok(addr) => loaded.config.server.listen = addr,
            Err(e) => return fail(format!("--listen: {e}")),
        }
        if let Err(e) = loaded.config.validate() {
            return fail(e);
        }
    }
    let secrets = Secrets::read(&loaded.config, &env);
    if args.check_config {
        let warnings = match check_config(&loaded, &secrets) {
            Ok(warnings) => warnings,
            Err(e) => return fail(e),
        };
        println!("configuration OK: {} (sha256 {})", loaded.origin, loaded.sha256);
        for warning in warnings {
            let _ = writeln!(std::io::stderr(), "mcp-raspi-server: warning: {warning}");
        }
        return ExitCode::SUCCESS;
    }
    if as_root {
        if let Err(e) = become_user(&args.user) {
            return fail(format!(
                "refusing to run as root: the server needs no privilege, and it cannot become the user {:?}: {e}. \
                 Name the service's user with --user USER, or run the server as that user.",
                args.user
            ));
        }
    }
    if let Err(e) = crate::logs::init(loaded.config.logging.app_log()) {
        return fail(e);
    }
    for warning in loaded.config.warnings(&crate::tools::tool_names()) {
        log::warn!("configuration: {warning}");
    }
    let secrets = secrets.values;
    let app = match App::new(loaded, &secrets) {
        Ok(app) => app,
        Err(e) => {
            log::error!("{e}");
            return fail(e);
        }
    };
    drop(secrets);
    if app.config.security.auth_mode.is_none() {
        log::warn!(
            "AUTHENTICATION IS OFF (security.auth_mode: none): every local caller is {}. Development only.",
            app.config.security.anonymous_role
        );
    }
    log::info!("authentication: {}", app.auth.describe());
    log::debug!(
        "settings: listen {}, auth_mode {}, agent socket {}, state {}, log level {} ({})",
        app.config.server.listen.addr(),
        app.config.security.auth_mode,
        app.config.ops_agent.socket_path.display(),
        app.config.paths.state_dir.display(),
        app.config.logging.level.as_str(),
        if args.log_level.is_some() { "--log-level" } else { "logging.level" },
    );
    log::info!(
        "mcp-raspi-server {VERSION} starting: config {}, backend {} ({})",
        app.config_origin,
        app.platform.backend,
        app.platform.reason
    );
    // Tools that read /proc and files run on the blocking pool. Eight threads serve more
    // concurrent reads than a Pi has cores, and bound the memory a crowd of clients can make
    // the server use (each thread keeps its stack); further calls wait their turn. Nothing
    // that runs there waits for another blocking job (see ToolSpec::blocking), so a full
    // pool always drains.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    // Outlives the runtime, to write the audit records still waiting once it has stopped.
    let app_at_exit = app.clone();
    let result = runtime.block_on(async move {
        if args.stdio {
            // A stdio client stops its server by closing stdin, or with SIGTERM after a
            // while: either way the server stops as it does over HTTP.
            let shutdown = shutdown_signal();
            return tokio::select! {
                served = crate::mcp::stdio::serve(app) => served.map_err(|e| format!("stdio: {e}")),
                () = shutdown => Ok(()),
            };
        }
        let listener = crate::mcp::http::bind(app.config.listen_addr()).await?;
        app.auth.prefetch();
        let shutdown = shutdown_signal();
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        log::info!("listening on http://{addr}/mcp");
        // Supervisors and tests read the bound address (the port may have been 0) here.
        println!("listening on http://{addr}/mcp");
        let _ = std::io::stdout().flush();
        if crate::selfcheck::due(&app) {
            tokio::spawn(crate::selfcheck::run(app.clone(), addr));
        }
        if app.config.updates.auto.enabled {
            tokio::spawn(crate::auto_update::run(app.clone()));
        }
        crate::mcp::http::serve(app, listener, shutdown).await;
        log::info!("stopped");
        Ok(())
    });
    // Calls still running (their client gone) get a moment to finish; the read of stdin,
    // which cannot be cancelled, must not hold the exit.
    runtime.shutdown_timeout(Duration::from_millis(250));
    // Audit records waiting for a grouped write reach the file before the process ends.
    app_at_exit.audit.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            fail(e)
        }
    }
}

/// Leaves root for good: the groups, then the group and user of `name` (a user name or a
/// number). Capabilities go with the user id, as the process does not ask to keep them.
fn become_user(name: &str) -> Result<(), String> {
    use nix::unistd::{initgroups, setgid, setgroups, setuid, Uid, User};
    let user = match name.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(name),
    }
    .map_err(|e| format!("cannot look it up: {e}"))?
    .ok_or("no such user on this system")?;
    if user.uid.is_root() {
        return Err("it is root".into());
    }
    let groups = std::ffi::CString::new(user.name.clone()).map_err(|_| "its name holds a NUL byte".to_string());
    match groups {
        Ok(c_name) => initgroups(&c_name, user.gid).map_err(|e| format!("cannot take its groups: {e}"))?,
        Err(_) => setgroups(&[user.gid]).map_err(|e| format!("cannot take its group: {e}"))?,
    }
    setgid(user.gid).map_err(|e| format!("cannot take its group: {e}"))?;
    setuid(user.uid).map_err(|e| format!("cannot take its user id: {e}"))?;
    if setuid(Uid::from_raw(0)).is_ok() {
        return Err("root could be regained after switching".into());
    }
    Ok(())
}

/// The secrets the server sees: its environment, then `security.secrets_file` for the
/// names the environment does not set.
pub struct Secrets {
    pub values: BTreeMap<String, String>,
    /// Why the secrets file could not be read, when it exists but could not be.
    pub unreadable: Option<String>,
}

impl Secrets {
    pub fn read(config: &Config, env: &BTreeMap<String, String>) -> Secrets {
        let mut values = env.clone();
        let mut unreadable = None;
        if let Some(file) = &config.security.secrets_file {
            match std::fs::read_to_string(file) {
                Ok(text) => {
                    for (k, v) in parse_env_file(&text) {
                        values.entry(k).or_insert(v);
                    }
                }
                // No file: the secrets come from the environment (systemd's EnvironmentFile=).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => unreadable = Some(format!("security.secrets_file {} could not be read: {e}", file.display())),
            }
        }
        Secrets { values, unreadable }
    }
}

/// What `--check-config` and `mcp-raspi config validate` check of a loaded configuration
/// beyond the file itself: that every token's secret is set (and long enough). Returns the
/// configuration's warnings.
pub fn check_config(loaded: &Loaded, secrets: &Secrets) -> Result<Vec<String>, String> {
    crate::auth::Authenticator::new(&loaded.config, &secrets.values).map_err(|e| match &secrets.unreadable {
        Some(why) => format!("{e} ({why}; run the check as root, e.g. with sudo)"),
        None => e,
    })?;
    Ok(loaded.config.warnings(&crate::tools::tool_names()))
}

/// Completes on SIGTERM or SIGINT: the daemons' graceful stop. The handlers are installed
/// when this is called (in the runtime), not when the future is first polled, so that a
/// signal that comes right after a daemon says it is listening still stops it gracefully.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let streams = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        let (Ok(mut term), Ok(mut int)) = streams else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => log::info!("SIGTERM: shutting down"),
            _ = int.recv() => log::info!("SIGINT: shutting down"),
        }
    }
}
