//! The command line's MCP client: `mcp-raspi system get-info`, `mcp-raspi call TOOL` and the
//! other tool-backed commands call the local server's tools over loopback, as any MCP client
//! does, so that they are authenticated, role-checked and audited like every other call.
//!
//! Each call is one stateless request (protocol 2026-07-28): no session to open or close.
//! The server is found from the configuration's `server.listen`, and the token the way an
//! operator expects: `--token` or `MCP_RASPI_TOKEN`, else (for root, who may read it) the
//! strongest token of `security.tokens` in the secrets file.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args as ClapArgs;
use serde_json::Value;

use super::call::{self, CallFailure};
pub use super::call::{OnProgress, ToolAnswer};
use super::{CliError, DEFAULT_CONFIG, EXIT_FAILURE, EXIT_NOPERM, EXIT_UNAVAILABLE};
use crate::base::VERSION;
use crate::config::{parse_env_file, AuthMode, Config, Loaded};

/// Where the server is and how to authenticate to it.
#[derive(Debug, Clone, ClapArgs)]
pub struct Connection {
    /// Configuration file: where the server listens and, for root, the token to use.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Talk to the development server (`make run`, the embedded development configuration).
    #[arg(long, conflicts_with = "config")]
    pub dev: bool,
    /// The server's MCP endpoint, instead of the configured listen address
    /// (e.g. http://127.0.0.1:8000/mcp).
    #[arg(long, value_name = "URL", env = "MCP_RASPI_URL")]
    pub url: Option<String>,
    /// Bearer token; prefer the environment variable, which other users cannot see.
    /// Root without one uses the strongest token of the secrets file.
    #[arg(long, value_name = "TOKEN", env = "MCP_RASPI_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Seconds to wait for the answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub timeout: u64,
    /// Print the tool's result as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A server to call, resolved from a [`Connection`].
#[derive(Debug)]
pub struct Endpoint {
    pub url: String,
    token: Option<String>,
    timeout: Duration,
}

fn load_config(connection: &Connection) -> Result<Loaded, CliError> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let loaded = if connection.dev {
        Config::dev(&crate::server::dev_home(), &env)
    } else {
        Config::load(&connection.config, &env)
    };
    loaded.map_err(|e| match e {
        crate::config::ConfigError::Read { .. } => CliError::new(
            EXIT_FAILURE,
            format!("{e}; name the configuration with --config FILE, the server with --url URL, or use --dev"),
        ),
        e => CliError::from(e.to_string()),
    })
}

impl Connection {
    /// The endpoint and token to use.
    pub fn endpoint(&self) -> Result<Endpoint, CliError> {
        let timeout = Duration::from_secs(self.timeout.max(1));
        // An explicit URL and token need no configuration (a workstation has none).
        if let (Some(url), Some(token)) = (&self.url, &self.token) {
            return Ok(Endpoint { url: url.clone(), token: Some(token.clone()), timeout });
        }
        let loaded = match load_config(self) {
            Ok(loaded) => loaded,
            // The packaged configuration is not readable by every user: who may not read it
            // brings the token, and the address unless it is the default one.
            Err(_) if unreadable(&self.config) => {
                let Some(token) = &self.token else {
                    return Err(CliError::new(
                        EXIT_NOPERM,
                        format!(
                            "no bearer token: you may not read {}: run the command with sudo, or pass --token \
                             TOKEN or set MCP_RASPI_TOKEN (and --url URL when the server does not listen on {})",
                            self.config.display(),
                            default_url()
                        ),
                    ));
                };
                let url = self.url.clone().unwrap_or_else(default_url);
                return Ok(Endpoint { url, token: Some(token.clone()), timeout });
            }
            Err(e) => return Err(e),
        };
        let config = &loaded.config;
        let url = match &self.url {
            Some(url) => url.clone(),
            None => format!("http://{}/mcp", crate::selfcheck::loopback_for(config.listen_addr())),
        };
        let modes = &config.security.auth_mode;
        let token = match &self.token {
            Some(token) => Some(token.clone()),
            None if modes.is_none() => None,
            None if !modes.contains(AuthMode::Token) => {
                return Err(CliError::new(
                    EXIT_NOPERM,
                    format!(
                        "the server accepts only tokens of its issuers (security.auth_mode: {modes}): add token to \
                         security.auth_mode for this command line (e.g. [token, cloudflare_access]), or pass --token"
                    ),
                ))
            }
            None => Some(token_from_secrets(config)?),
        };
        Ok(Endpoint { url, token, timeout })
    }
}

/// Whether `path` exists but this user may not read it.
fn unreadable(path: &std::path::Path) -> bool {
    std::fs::File::open(path).is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
}

/// The MCP endpoint of a server listening where the default configuration says.
fn default_url() -> String {
    let listen = crate::config::ServerConfig::default().listen.addr();
    format!("http://{}/mcp", crate::selfcheck::loopback_for(listen))
}

/// The token of the highest role in `security.tokens` whose secret is set, in the
/// environment or the secrets file.
fn token_from_secrets(config: &Config) -> Result<String, CliError> {
    let mut secrets: BTreeMap<String, String> = std::env::vars().collect();
    let mut unreadable = None;
    if let Some(file) = &config.security.secrets_file {
        match std::fs::read_to_string(file) {
            Ok(text) => secrets.extend(parse_env_file(&text)),
            Err(e) => unreadable = Some(format!("{} cannot be read ({e})", file.display())),
        }
    }
    let mut tokens: Vec<_> = config.security.tokens.iter().collect();
    tokens.sort_by_key(|t| std::cmp::Reverse(t.role));
    if let Some(token) = tokens.iter().find_map(|t| secrets.get(&t.env).filter(|v| !v.is_empty())) {
        return Ok(token.clone());
    }
    let why = match unreadable {
        Some(why) if !nix::unistd::geteuid().is_root() => format!("{why}: run the command with sudo, or"),
        Some(why) => format!("{why};"),
        None => "no token of security.tokens is set in the secrets file or the environment;".into(),
    };
    Err(CliError::new(EXIT_NOPERM, format!("no bearer token: {why} pass --token TOKEN or set MCP_RASPI_TOKEN")))
}

impl Endpoint {
    /// An endpoint at `url` with `token`, for callers that know both.
    pub fn new(url: String, token: Option<String>, timeout: Duration) -> Endpoint {
        Endpoint { url, token, timeout }
    }

    /// Calls `tool` with `arguments`. On a terminal, progress the tool reports is shown by
    /// `on_progress` (progress, total, message).
    pub fn call_tool(
        &self,
        tool: &str,
        arguments: Value,
        on_progress: Option<OnProgress<'_>>,
    ) -> Result<ToolAnswer, CliError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::from(format!("cannot start the runtime: {e}")))?;
        runtime.block_on(self.call_tool_async(tool, arguments, on_progress))
    }

    async fn call_tool_async(
        &self,
        tool: &str,
        arguments: Value,
        on_progress: Option<OnProgress<'_>>,
    ) -> Result<ToolAnswer, CliError> {
        let client = crate::update::download::http_client()
            .connect_timeout(Duration::from_secs(5))
            .timeout(self.timeout)
            .build()
            .map_err(|e| CliError::from(format!("cannot set up the HTTP client: {e}")))?;
        let mut request = client.post(&self.url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        call::tool_call(request, "mcp-raspi", tool, arguments, on_progress).await.map_err(|e| match e {
            CallFailure::Unreachable(e) => self.unreachable(&e),
            CallFailure::Answered { status, message } => http_failure(status, &message),
            CallFailure::NoResult => {
                CliError::from(format!("the server at {} ended the answer without a result", self.url))
            }
        })
    }

    /// The error of a request that did not get an answer: the server is down, or slow.
    fn unreachable(&self, e: &reqwest::Error) -> CliError {
        let why = if e.is_timeout() {
            format!("no answer within {} s", self.timeout.as_secs())
        } else if e.is_connect() {
            "connection refused".to_string()
        } else {
            error_chain(e)
        };
        CliError::new(
            EXIT_UNAVAILABLE,
            format!(
                "cannot reach the mcp-raspi server at {}: {why}; is it running? (systemctl status mcp-raspi-server)",
                self.url
            ),
        )
    }
}

/// `GET /healthz` of the server at `addr` (a loopback address) within `timeout`: the HTTP
/// status and the body (`Null` when it is not JSON). The error says why nothing answered:
/// `connection refused`, `no answer within 5 s`.
pub fn get_healthz(addr: std::net::SocketAddr, timeout: Duration) -> Result<(u16, Value), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let failed = |e: reqwest::Error| {
        if e.is_timeout() {
            return format!("no answer within {} s", timeout.as_secs_f64().ceil());
        }
        // The innermost I/O error says it plainly (connection refused, host unreachable).
        let mut source: Option<&dyn std::error::Error> = Some(&e);
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                return io_message(io);
            }
            source = s.source();
        }
        error_chain(&e)
    };
    runtime.block_on(async {
        let client = crate::update::download::http_client()
            .timeout(timeout)
            .user_agent(format!("mcp-raspi/{VERSION}"))
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        let response = client.get(format!("http://{addr}/healthz")).send().await.map_err(failed)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(failed)?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    })
}

/// An I/O error without its `(os error N)` tail, which says nothing to an operator.
pub fn io_message(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_lowercase(),
        None => text,
    }
}

/// The error for an HTTP status or JSON-RPC error the server answered with.
fn http_failure(status: u16, message: &str) -> CliError {
    let message = if message.is_empty() { format!("HTTP status {status}") } else { message.to_string() };
    match status {
        401 | 403 => CliError::new(
            EXIT_NOPERM,
            format!("the server refused the credentials: {message} (pass --token TOKEN or set MCP_RASPI_TOKEN)"),
        ),
        _ => CliError::from(format!("the server answered: {message}")),
    }
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A progress bar on a terminal for a tool's progress notifications; nothing elsewhere.
pub fn progress_bar() -> Option<indicatif::ProgressBar> {
    progress_bar_drawn("{spinner} [{bar:30}] {pos}/{len} {msg}")
}

/// A progress bar drawn by `template` (indicatif's), on a terminal only.
pub fn progress_bar_drawn(template: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template(template)
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn refused_credentials_have_their_own_exit_status() {
        assert_eq!(http_failure(401, "the bearer token is not valid").code, EXIT_NOPERM);
        assert_eq!(http_failure(403, "").code, EXIT_NOPERM);
        let e = http_failure(200, "Unknown tool: x");
        assert_eq!(e.code, EXIT_FAILURE);
        assert!(e.message.contains("Unknown tool: x"), "{e}");
    }

    #[test]
    fn the_strongest_token_of_the_secrets_file_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets.env");
        std::fs::write(&secrets, "VIEW_T=viewer-secret-000000000\nADMIN_T=admin-secret-0000000000\n").unwrap();
        let yaml = format!(
            "config_version: \"1.2\"\nsecurity:\n  secrets_file: {}\n  tokens:\n    - {{ identity: w, role: viewer, env: VIEW_T }}\n    - {{ identity: a, role: admin, env: ADMIN_T }}\n",
            secrets.display()
        );
        let config = Config::from_yaml(&yaml, "t").unwrap();
        assert_eq!(token_from_secrets(&config).unwrap(), "admin-secret-0000000000");
        std::fs::write(&secrets, "OTHER=1\n").unwrap();
        let e = token_from_secrets(&config).unwrap_err();
        assert_eq!(e.code, EXIT_NOPERM);
        assert!(e.message.contains("MCP_RASPI_TOKEN"), "{e}");
    }
}
