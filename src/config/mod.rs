//! Configuration: the YAML file, environment overrides and secrets.
//!
//! The file is parsed straight into typed, validated structs (`deny_unknown_fields`,
//! newtypes that check their value while deserializing) so that every mistake is reported
//! with the key, the line and what is allowed, before the server does anything else.

pub mod deploy;
mod devices;
mod features;
mod identity;
mod metrics;
pub mod migrate;
mod policy;
mod pwm;
mod validate;
mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::base::hex;
pub use crate::base::{Backend, LogLevel, Tristate};
pub use devices::{
    AutoUpdateConfig, CameraConfig, ConfigUpdatesConfig, GpioConfig, I2cBusRule, I2cConfig, OpsAgentConfig,
    OsUpdatesConfig, PinRule, PowerConfig, ServicesConfig, SpiConfig, SpiDeviceRule, UartConfig, UartPortRule,
    UpdatesConfig, Window, CHANNELS,
};
pub use features::{
    feature_names, ExperimentalConfig, ExperimentalReport, Feature, FeatureFlag, FeatureStatus, FlagStatus, FlagTarget,
    FEATURES,
};
pub use identity::{
    is_trusted_url, AuthMode, AuthModes, CloudflareAccessConfig, JwtAlgorithm, OidcConfig, RoleMapping,
};
pub use metrics::{CollectionConfig, MetricsConfig, PrometheusConfig, RetentionConfig};
pub use policy::{DenialKind, Denied};
pub use pwm::{PwmConfig, HARDWARE_MAX_FREQUENCY_HZ};
pub use values::{ListenAddr, Role};

/// The configuration schema this build reads and writes.
pub const CONFIG_VERSION: &str = "1.2";

/// The development configuration used by `--dev` (`make run`): loopback, no auth,
/// simulated hardware, state under a per-user directory.
pub const DEV_CONFIG: &str = include_str!("dev.yml");

/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "MCP_RASPI_";

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Version of the configuration schema; migrations move a file between versions.
    pub config_version: String,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub security: SecurityConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    #[serde(default)]
    pub platform: PlatformConfig,
    #[serde(default)]
    pub paths: PathsConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub ops_agent: OpsAgentConfig,
    #[serde(default)]
    pub experimental_features: ExperimentalConfig,
    #[serde(default)]
    pub gpio: GpioConfig,
    #[serde(default)]
    pub i2c: I2cConfig,
    #[serde(default)]
    pub spi: SpiConfig,
    #[serde(default)]
    pub uart: UartConfig,
    #[serde(default)]
    pub camera: CameraConfig,
    #[serde(default)]
    pub services: ServicesConfig,
    #[serde(default)]
    pub power: PowerConfig,
    #[serde(default)]
    pub updates: UpdatesConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: ListenAddr,
    /// Host header values accepted besides the listen address, `localhost` and loopback.
    pub allowed_hosts: Vec<String>,
    pub max_request_bytes: u64,
    pub session_idle_timeout_seconds: u64,
    pub max_sessions: usize,
    /// Most sessions one identity may hold; its least recently used one makes room.
    pub max_sessions_per_identity: usize,
    /// Most TCP connections served at once (each is a file descriptor).
    pub max_connections: usize,
    /// A connection must send a request's headers within this time.
    pub header_read_timeout_seconds: u64,
    /// A connection idle between requests is closed after this time.
    pub keep_alive_timeout_seconds: u64,
    /// Tools per `tools/list` page.
    pub page_size: usize,
    pub cors: CorsConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: ListenAddr::default(),
            allowed_hosts: Vec::new(),
            max_request_bytes: 1024 * 1024,
            session_idle_timeout_seconds: 3600,
            max_sessions: 256,
            max_sessions_per_identity: 64,
            max_connections: 512,
            header_read_timeout_seconds: 10,
            keep_alive_timeout_seconds: 60,
            page_size: 50,
            cors: CorsConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    pub enabled: bool,
    /// Browser origins (`https://host[:port]`) allowed to call the server.
    pub allowed_origins: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    pub auth_mode: AuthModes,
    pub tokens: Vec<TokenConfig>,
    pub cloudflare_access: CloudflareAccessConfig,
    pub oidc: OidcConfig,
    /// Roles of `cloudflare_access` and `oidc` callers, from their token's claims.
    pub role_mappings: Vec<RoleMapping>,
    /// Role of the local user of `--stdio` (the process already runs as that user).
    pub stdio_role: Role,
    /// Role given to every caller when `auth_mode` is `none`.
    pub anonymous_role: Role,
    /// Optional KEY=VALUE file read for secrets not already in the environment.
    pub secrets_file: Option<PathBuf>,
    pub rate_limit: RateLimitConfig,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            auth_mode: AuthModes::one(AuthMode::Token),
            tokens: vec![TokenConfig {
                identity: "admin".into(),
                role: Role::Admin,
                env: "MCP_RASPI_ADMIN_TOKEN".into(),
            }],
            cloudflare_access: CloudflareAccessConfig::default(),
            oidc: OidcConfig::default(),
            role_mappings: Vec::new(),
            stdio_role: Role::Operator,
            anonymous_role: Role::Admin,
            secrets_file: Some(PathBuf::from("/etc/mcp-raspi/secrets.env")),
            rate_limit: RateLimitConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Name written to the audit log for calls made with this token.
    pub identity: String,
    pub role: Role,
    /// Environment variable (or secrets file key) holding the token.
    pub env: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Requests per minute for one identity; 0 turns limiting off.
    pub requests_per_minute: u32,
    /// Requests an identity may make at once above the steady rate.
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig { requests_per_minute: 600, burst: 60 }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    pub level: LogLevel,
    pub app_path: PathBuf,
    pub audit_path: PathBuf,
    /// Milliseconds the audit record of a successful read-only call may wait, so that a
    /// burst of calls is written with one system call; 0 writes each record before its
    /// call answers.
    #[serde(deserialize_with = "values::audit_write_delay_ms")]
    pub audit_write_delay_ms: u64,
    /// Megabytes of full audit records each identity may write per hour (0: no limit);
    /// past it, see [`crate::audit`]'s budget.
    pub audit_budget_mb_per_hour: u64,
    pub file: LogFileConfig,
    /// Also log to journald: `auto` does when started by systemd.
    pub journald: Tristate,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            level: LogLevel::Info,
            app_path: PathBuf::from("/var/log/mcp-raspi/app.log"),
            audit_path: PathBuf::from("/var/log/mcp-raspi/audit.log"),
            audit_write_delay_ms: 10,
            audit_budget_mb_per_hour: 16,
            file: LogFileConfig::default(),
            journald: Tristate::Auto,
        }
    }
}

impl LoggingConfig {
    /// The application log's settings, as the logger takes them.
    pub fn app_log(&self) -> crate::logs::AppLogSettings<'_> {
        crate::logs::AppLogSettings {
            path: &self.app_path,
            max_bytes: self.file.max_size_mb.saturating_mul(1024 * 1024),
            backup_count: self.file.backup_count,
            level: self.level,
            journald: self.journald,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogFileConfig {
    pub max_size_mb: u64,
    pub backup_count: u32,
}

impl Default for LogFileConfig {
    fn default() -> Self {
        LogFileConfig { max_size_mb: 50, backup_count: 5 }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlatformConfig {
    pub backend: Backend,
    pub proc_root: PathBuf,
    pub sys_root: PathBuf,
    pub etc_root: PathBuf,
    pub fs_root: PathBuf,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        PlatformConfig {
            backend: Backend::Auto,
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
            etc_root: PathBuf::from("/etc"),
            fs_root: PathBuf::from("/"),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathsConfig {
    pub state_dir: PathBuf,
    pub install_dir: PathBuf,
}

impl Default for PathsConfig {
    fn default() -> Self {
        PathsConfig { state_dir: PathBuf::from("/var/lib/mcp-raspi"), install_dir: PathBuf::from("/opt/mcp-raspi") }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    pub cpu_percent: Threshold,
    pub memory_percent: Threshold,
    pub disk_percent: Threshold,
    pub temperature_celsius: Threshold,
    /// systemd units whose state the health snapshot reports.
    pub services: Vec<String>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            cpu_percent: Threshold { warning: 80.0, critical: 95.0 },
            memory_percent: Threshold { warning: 80.0, critical: 90.0 },
            disk_percent: Threshold { warning: 80.0, critical: 90.0 },
            temperature_celsius: Threshold { warning: 70.0, critical: 80.0 },
            services: vec!["mcp-raspi-server.service".into(), "raspi-ops-agent.service".into()],
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    pub warning: f64,
    pub critical: f64,
}

/// A configuration that could not be used, with what to do about it.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read { path: PathBuf, source: std::io::Error },
    /// The YAML is malformed, has an unknown key, or a value of the wrong type or range.
    Parse { origin: String, message: String },
    /// An environment override names no key or holds a bad value.
    Env { var: String, message: String },
    /// Values that are each fine but do not work together.
    Invalid { key: String, message: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => write!(f, "cannot read configuration {}: {source}", path.display()),
            ConfigError::Parse { origin, message } => write!(f, "invalid configuration in {origin}: {message}"),
            ConfigError::Env { var, message } => write!(f, "invalid environment override {var}: {message}"),
            ConfigError::Invalid { key, message } => write!(f, "invalid configuration: {key}: {message}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A loaded configuration with where it came from.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    /// The file it was read from, or `<embedded development config>`.
    pub origin: String,
    /// SHA-256 of the file's bytes, to detect drift across a fleet.
    pub sha256: String,
}

/// Highest `server.max_connections`: the units' `LimitNOFILE` (8192) less room for the
/// agent socket, logs, the database and the files tools read.
pub const MAX_CONNECTIONS: usize = 7168;

/// What a parse error containing the first text means, for keys an operator may take from
/// the specification's examples that this build spells another way.
const HINTS: [(&str, &str); 1] = [(
    "unknown field `delta_updates`",
    "delta updates are the experimental feature updates.delta: list \
     `{ name: updates.delta, enabled: true, acknowledged_risks: true }` under experimental_features.features \
     (with experimental_features.enabled: true) and remove updates.delta_updates",
)];

/// [`Loaded::origin`] of the embedded development configuration.
pub const DEV_ORIGIN: &str = "<embedded development config>";

impl Loaded {
    /// Whether this is the embedded development configuration (`--dev`).
    pub fn is_dev(&self) -> bool {
        self.origin == DEV_ORIGIN
    }
}

impl Config {
    /// Parses YAML text; `origin` names the text in error messages.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let parse_error = |e: serde_saphyr::Error| {
            let mut message = e.to_string();
            if let Some((_, hint)) = HINTS.iter().find(|(found, _)| message.contains(found)) {
                message = format!("{message}\nhint: {hint}");
            }
            ConfigError::Parse { origin: origin.to_string(), message }
        };
        // The version alone first: an older file's renamed keys would otherwise be reported
        // as unknown, when what it needs is a migration. A file this read fails on gets the
        // full parse's message below.
        if let Ok(declared) = serde_saphyr::from_str::<migrate::Declared>(text) {
            migrate::check_declared(declared, origin)?;
        }
        serde_saphyr::from_str(text).map_err(parse_error)
    }

    /// What is worth a warning in a configuration that loads: entries that turn nothing on.
    /// `tools` are the names of all tools.
    pub fn warnings(&self, tools: &[&str]) -> Vec<String> {
        let mut warnings = self.experimental_features.warnings(tools);
        let modes = &self.security.auth_mode;
        if !modes.is_none() && !modes.contains(AuthMode::Token) {
            warnings.push(format!(
                "security.auth_mode is {modes}: the command line on this machine (mcp-raspi, mcp-raspi-healthcheck) \
                 has no token to call the server with; add token to the list, e.g. [token, {modes}]"
            ));
        }
        warnings
    }

    /// Reads, overrides from the environment and validates a configuration file.
    pub fn load(path: &Path, env: &BTreeMap<String, String>) -> Result<Loaded, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let text = String::from_utf8(bytes.clone()).map_err(|_| ConfigError::Parse {
            origin: path.display().to_string(),
            message: "the file is not UTF-8 text".into(),
        })?;
        let origin = path.display().to_string();
        let config = Config::from_yaml(&text, &origin)?.with_env_overrides(env)?;
        config.validate()?;
        Ok(Loaded { config, origin, sha256: hex(&Sha256::digest(&bytes)) })
    }

    /// The embedded development configuration, with state under `state_home`.
    pub fn dev(state_home: &Path, env: &BTreeMap<String, String>) -> Result<Loaded, ConfigError> {
        let origin = DEV_ORIGIN;
        let mut config = Config::from_yaml(DEV_CONFIG, origin)?;
        config.paths.state_dir = state_home.join("state");
        config.paths.install_dir = state_home.join("opt");
        config.logging.app_path = state_home.join("log/app.log");
        config.logging.audit_path = state_home.join("log/audit.log");
        config.camera.media_dir = state_home.join("media");
        // Only this user may reach the development agent, through a socket of its own.
        config.ops_agent.socket_path = state_home.join("ops-agent.sock");
        config.ops_agent.allowed_users = vec![nix::unistd::getuid().to_string()];
        config.ops_agent.socket_group = nix::unistd::getgid().to_string();
        let config = config.with_env_overrides(env)?;
        config.validate()?;
        Ok(Loaded { config, origin: origin.into(), sha256: hex(&Sha256::digest(DEV_CONFIG.as_bytes())) })
    }

    /// Applies `MCP_RASPI_<SECTION>__<KEY>[__<KEY>...]` variables. Values are YAML scalars
    /// or flow collections (`[a, b]`), checked exactly as the file's values are.
    pub fn with_env_overrides(self, env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
        let overrides: Vec<(&String, &String)> =
            env.iter().filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__")).collect();
        if overrides.is_empty() {
            return Ok(self);
        }
        let mut tree = serde_json::to_value(&self)
            .map_err(|e| ConfigError::Invalid { key: "(all)".into(), message: e.to_string() })?;
        for (var, raw) in overrides {
            let path: Vec<String> = var[ENV_PREFIX.len()..].split("__").map(|s| s.to_ascii_lowercase()).collect();
            let value: serde_json::Value = serde_saphyr::from_str(raw)
                .map_err(|e| ConfigError::Env { var: var.clone(), message: e.to_string() })?;
            let mut node = &mut tree;
            for (i, key) in path.iter().enumerate() {
                match node.as_object_mut().and_then(|o| o.get_mut(key)) {
                    Some(child) => node = child,
                    None => {
                        return Err(ConfigError::Env {
                            var: var.clone(),
                            message: format!("`{}` is not a configuration key", path[..=i].join(".")),
                        })
                    }
                }
            }
            *node = value;
        }
        let mut track = serde_path_to_error::Track::new();
        let de = serde_path_to_error::Deserializer::new(&tree, &mut track);
        Config::deserialize(de).map_err(|e| {
            let key = track.path().to_string();
            let var = format!("{ENV_PREFIX}{}", key.replace('.', "__").to_ascii_uppercase());
            // Values whose check names its key already say it once.
            let message = e.to_string();
            let message = if message.starts_with(&format!("{key}: ")) { message } else { format!("{key}: {message}") };
            ConfigError::Env { var, message }
        })
    }

    /// The address the HTTP server binds.
    pub fn listen_addr(&self) -> SocketAddr {
        self.server.listen.addr()
    }
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// Parses a `KEY=VALUE` secrets file (systemd `EnvironmentFile=` syntax: comments, blank
/// lines, optional quotes). Values are never logged.
pub fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests;
