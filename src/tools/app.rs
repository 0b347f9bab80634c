//! The server's shared state, built once at start from the configuration: what every
//! tool handler and transport reaches through [`App`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::{Catalogue, StaticInfo, ToolError};
use crate::audit::AuditLog;
use crate::auth::{Authenticator, RateLimiter};
use crate::config::{Config, Loaded};
use crate::host::cpu::CpuTimes;
use crate::host::{LiveAttr, Roots};
use crate::platform::Platform;

/// Everything a request handler needs, shared by all connections.
pub struct App {
    /// The privileged ops agent, reached over its Unix socket.
    pub agent: crate::agent_client::AgentClient,
    pub config: Config,
    /// Where the configuration came from, and the SHA-256 of its bytes.
    pub config_origin: String,
    pub config_sha256: String,
    pub roots: Roots,
    pub platform: Platform,
    pub auth: Authenticator,
    pub rate_limiter: RateLimiter,
    pub audit: AuditLog,
    pub catalogue: Catalogue,
    /// The metrics sampler and its history.
    pub metrics: crate::metrics::History,
    /// The server's own counters, exported with the host's figures at `GET /metrics`.
    pub telemetry: crate::telemetry::Telemetry,
    pub started: Instant,
    pub started_at: SystemTime,
    /// CPU times at the previous snapshot, so a snapshot can report usage since then
    /// without sleeping.
    pub last_cpu: Mutex<Option<(Instant, CpuTimes)>>,
    /// CPU 0's current frequency, kept open: `system.get_info` reads it on every call.
    pub cpu_freq: LiveAttr,
    static_info: Mutex<Option<(Instant, Arc<StaticInfo>)>>,
}

impl App {
    /// Builds the state: resolves secrets, opens the audit log, picks the backend.
    pub fn new(loaded: Loaded, secrets: &BTreeMap<String, String>) -> Result<Arc<App>, String> {
        // How to start the agent when privileged tools find it down.
        let start_agent = if loaded.is_dev() {
            "start it with `raspi-ops-agent --dev` (`make run` starts both)"
        } else {
            "start it with `sudo systemctl start raspi-ops-agent`"
        };
        let config = loaded.config;
        let auth = Authenticator::new(&config, secrets)?;
        let max_bytes = config.logging.file.max_size_mb.saturating_mul(1024 * 1024);
        let audit = AuditLog::open(
            &config.logging.audit_path,
            max_bytes,
            config.logging.file.backup_count,
            Duration::from_millis(config.logging.audit_write_delay_ms),
        )
        .map(|log| log.with_budget(config.logging.audit_budget_mb_per_hour.saturating_mul(1024 * 1024)))
        .map_err(|e| format!("cannot open the audit log {}: {e}", config.logging.audit_path.display()))?;
        let roots = Roots {
            proc: config.platform.proc_root.clone(),
            sys: config.platform.sys_root.clone(),
            etc: config.platform.etc_root.clone(),
            fs: config.platform.fs_root.clone(),
        };
        let platform = Platform::select(config.platform.backend, &roots);
        let metrics = crate::metrics::History::start(&config, roots.clone())?;
        let cpu_freq = LiveAttr::new(crate::host::cpu::cpu_freq_path(&roots));
        Ok(Arc::new(App {
            agent: crate::agent_client::AgentClient::new(&config.ops_agent, start_agent),
            rate_limiter: RateLimiter::new(&config.security.rate_limit),
            catalogue: Catalogue::new(),
            metrics,
            telemetry: crate::telemetry::Telemetry::new(crate::mcp::METHODS, super::tool_names()),
            config,
            config_origin: loaded.origin,
            config_sha256: loaded.sha256,
            roots,
            platform,
            auth,
            audit,
            started: Instant::now(),
            started_at: SystemTime::now(),
            last_cpu: Mutex::new(None),
            cpu_freq,
            static_info: Mutex::new(None),
        }))
    }

    /// Whether a tool is offered: experimental tools only when the operator turned them on.
    pub fn tool_enabled(&self, spec: &super::ToolSpec) -> bool {
        spec.maturity != super::Maturity::Experimental || self.config.experimental_features.allows(spec.name)
    }

    /// Board, OS and CPU identity, re-read at most once a minute.
    pub fn static_info(&self) -> Result<Arc<StaticInfo>, ToolError> {
        const MAX_AGE: Duration = Duration::from_secs(60);
        let mut cached =
            self.static_info.lock().map_err(|_| ToolError::internal("system information cache poisoned"))?;
        if let Some((at, info)) = cached.as_ref() {
            if at.elapsed() < MAX_AGE {
                return Ok(info.clone());
            }
        }
        let info = Arc::new(StaticInfo::read(&self.roots)?);
        *cached = Some((Instant::now(), info.clone()));
        Ok(info)
    }
}
