//! `manage.*`: the server's own version, update state and health.

use schemars::JsonSchema;
use serde::Serialize;

use super::system::read_only_spec;
use super::{Cx, NoArguments, Tool, ToolError, ToolSpec};
use crate::agent_client::AgentStatus;
use crate::config::deploy::{self, ApplyRecord};
use crate::update::state::{LastUpdate, VersionState, STATE_FILE};

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
    /// The release a rollback goes to (version.json).
    pub previous_good_version: Option<String>,
    /// The last update: status `in_progress`, `succeeded`, `failed` or `rolled_back`, from,
    /// to, when it started and ended, and why it failed.
    pub last_update: Option<LastUpdate>,
    /// Set when version.json exists but could not be read.
    pub version_state_error: Option<String>,
    /// The release `current` names (the one the services start), when it can be read.
    pub current_release: Option<String>,
    /// What the last start found when `current` and version.json disagreed (a restore from
    /// backup, a hand edit), and how it was reconciled.
    pub reconciled: Option<String>,
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
    /// The last configuration deployment (manage.deploy_config): `running`, `applied`,
    /// `refused` or `rolled_back`, the file's SHA-256, when, and why it was refused.
    pub config_deploy: Option<ApplyRecord>,
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
        let path = app.config.paths.state_dir.join(STATE_FILE);
        let (state, error) = match VersionState::load(&path) {
            Ok(state) => (state.unwrap_or_default(), None),
            Err(e) => (VersionState::default(), Some(e.to_string())),
        };
        Ok(ServerStatus {
            version: crate::base::VERSION.into(),
            previous_good_version: state.previous_good_version,
            last_update: state.last_update,
            version_state_error: error,
            current_release: crate::update::release::current_version(&app.config.paths.install_dir).ok().flatten(),
            reconciled: state.reconciled,
            uptime_seconds: app.started.elapsed().as_secs_f64(),
            started_at: crate::logs::timestamp(app.started_at),
            pid: std::process::id(),
            config: ConfigStatus { path: app.config_origin.clone(), sha256: app.config_sha256.clone() },
            agent: app.agent.refresh().await,
            backend: app.platform.backend.into(),
            config_deploy: ApplyRecord::load(&app.config.paths.state_dir.join(deploy::RECORD_FILE)),
        })
    }
}
