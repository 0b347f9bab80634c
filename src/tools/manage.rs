//! `manage.*`: the server's own version, update state and health.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::system::read_only_spec;
use super::{Cx, NoArguments, Tool, ToolError, ToolSpec};
use crate::agent_client::AgentStatus;

/// The last update attempt, as recorded in `version.json`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
pub struct LastUpdate {
    /// The version the update went to (or tried to).
    pub version: Option<String>,
    /// `succeeded`, `failed` or `rolled_back`.
    pub status: Option<String>,
    /// When it ended, RFC 3339 UTC.
    pub time: Option<String>,
    /// Why it failed or was rolled back.
    pub reason: Option<String>,
}

/// The update state kept in `version.json`.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
pub struct VersionState {
    pub current_version: Option<String>,
    pub previous_good_version: Option<String>,
    pub last_update: Option<LastUpdate>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ConfigStatus {
    /// The file the configuration was read from.
    pub path: String,
    /// SHA-256 of the configuration file, for drift detection across a fleet.
    pub sha256: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ServerStatus {
    /// Version of the running server.
    pub version: String,
    pub previous_good_version: Option<String>,
    pub last_update: Option<LastUpdate>,
    /// Set when version.json exists but could not be read.
    pub version_state_error: Option<String>,
    pub uptime_seconds: f64,
    /// When the server started (RFC 3339, UTC).
    pub started_at: String,
    pub pid: u32,
    pub config: ConfigStatus,
    /// The privileged ops agent, as found when this call reached for it: whether it is
    /// connected, its version, user, groups and capability sets, or the last connection error.
    pub agent: AgentStatus,
    /// `raspberry_pi` or `simulated`.
    pub backend: String,
}

pub struct GetServerStatus;

impl Tool for GetServerStatus {
    type Input = NoArguments;
    type Output = ServerStatus;
    const SPEC: ToolSpec = read_only_spec(
        "manage.get_server_status",
        "Server status",
        "mcp-raspi's version, previous good version and last update result, uptime, ops agent status, and the configuration file in use with its hash.",
    );

    async fn call(cx: Cx, _: NoArguments) -> Result<ServerStatus, ToolError> {
        let app = &cx.app;
        let path = app.config.paths.state_dir.join("version.json");
        let (state, error) = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<VersionState>(&bytes) {
                Ok(s) => (s, None),
                Err(e) => (VersionState::default(), Some(format!("{} is not valid: {e}", path.display()))),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (VersionState::default(), None),
            Err(e) => (VersionState::default(), Some(format!("cannot read {}: {e}", path.display()))),
        };
        Ok(ServerStatus {
            version: crate::base::VERSION.into(),
            previous_good_version: state.previous_good_version,
            last_update: state.last_update,
            version_state_error: error,
            uptime_seconds: app.started.elapsed().as_secs_f64(),
            started_at: crate::logs::timestamp(app.started_at),
            pid: std::process::id(),
            config: ConfigStatus { path: app.config_origin.clone(), sha256: app.config_sha256.clone() },
            agent: app.agent.refresh().await,
            backend: app.platform.backend.into(),
        })
    }
}
