//! `manage.check_config` and `manage.deploy_config`: the device's side of `mcp-fleet config
//! deploy`. The server checks a configuration file's text against its own rules and shows
//! what would change; it never writes the file. A deployment signed with the fleet's key is
//! relayed to the ops agent, which stages it for the root unit that installs it
//! (`config::deploy`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::system::read_only_spec;
use super::{Cx, Tool, ToolError, ToolSpec};
use crate::config::deploy::{check_text, sha256, Deployment, MAX_CONFIG_BYTES};
use crate::config::Role;
use crate::ipc::{Request, Response};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckArguments {
    /// The whole configuration file (YAML).
    pub text: String,
}

/// A configuration file checked against this device, and what it would change.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CheckResult {
    /// Whether the text loads as this server's configuration (environment overrides apart).
    pub valid: bool,
    /// Why it does not, naming the key and line.
    pub error: Option<String>,
    /// SHA-256 of the text.
    pub sha256: String,
    /// SHA-256 of the configuration file as it is now (a deployment names it as the file it
    /// replaces).
    pub current_sha256: String,
    /// SHA-256 of the file this server started with (the same unless the file was changed since).
    pub running_sha256: String,
    /// Whether the text is the file as it is.
    pub unchanged: bool,
    /// The change from the file to the text, as a unified diff.
    pub diff: String,
    /// Whether manage.deploy_config may be used here (updates.config.enabled).
    pub deployments_enabled: bool,
}

pub struct CheckConfig;

impl Tool for CheckConfig {
    type Input = CheckArguments;
    type Output = CheckResult;
    const SPEC: ToolSpec = ToolSpec {
        min_role: Role::Admin,
        ..read_only_spec(
            "manage.check_config",
            "Check a configuration file",
            "Checks a whole configuration file (YAML text) against this device's rules, as the server would load it, and returns the unified diff from the file in use, with both SHA-256 digests. Changes nothing: mcp-fleet config deploy --dry-run shows this for each device.",
        )
    };

    async fn call(cx: Cx, args: CheckArguments) -> Result<CheckResult, ToolError> {
        let app = &cx.app;
        if args.text.len() > MAX_CONFIG_BYTES {
            return Err(ToolError::invalid_argument(format!(
                "argument `text`: {} bytes, more than a configuration file may have ({MAX_CONFIG_BYTES})",
                args.text.len()
            )));
        }
        if app.config_origin == crate::config::DEV_ORIGIN {
            return Err(ToolError::unavailable(
                "this server runs the built-in development configuration (--dev): there is no file to compare with",
            ));
        }
        let current = std::fs::read_to_string(&app.config_origin).map_err(|e| {
            ToolError::unavailable(format!("cannot read the configuration file {}: {e}", app.config_origin))
        })?;
        let checked = check_text(&args.text, "the new file");
        let diff = similar::TextDiff::from_lines(current.as_str(), args.text.as_str())
            .unified_diff()
            .context_radius(3)
            .header(&format!("{} (now)", app.config_origin), &format!("{} (new)", app.config_origin))
            .to_string();
        let sha = sha256(args.text.as_bytes());
        let current_sha256 = sha256(current.as_bytes());
        Ok(CheckResult {
            valid: checked.is_ok(),
            error: checked.err().map(|e| e.to_string()),
            unchanged: sha == current_sha256,
            sha256: sha,
            current_sha256,
            running_sha256: app.config_sha256.clone(),
            diff,
            deployments_enabled: app.config.updates.config.enabled,
        })
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployArguments {
    /// The deployment mcp-fleet made (JSON: the file's text and the SHA-256 of the file it
    /// replaces), exactly as signed.
    pub deployment: String,
    /// Its signature by a key of updates.config.keys_dir (the content of the .sig file).
    pub signature: String,
    /// Must be true: the configuration file is replaced and the services restart.
    #[serde(default)]
    pub confirm: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DeployResult {
    /// `applying`: the root unit installs it now, and the services restart.
    pub status: String,
    /// SHA-256 of the new file.
    pub sha256: String,
    pub message: String,
}

pub struct DeployConfig;

impl Tool for DeployConfig {
    type Input = DeployArguments;
    type Output = DeployResult;
    const SPEC: ToolSpec = ToolSpec {
        blocking: false,
        name: "manage.deploy_config",
        title: "Deploy a configuration file",
        description: "Replaces this device's configuration file with one signed by the fleet's configuration key (updates.config.keys_dir), as mcp-fleet config deploy makes it; needs confirm: true and updates.config.enabled. The server cannot write the file: the ops agent checks the signature and the text, and a root one-shot unit checks them again, swaps the file atomically, restarts the services, and puts the old file back unless the new server answers within updates.config.health_timeout_seconds. The call answers before the restart: poll manage.get_server_status until config_deploy says applied, refused or rolled_back.",
        min_role: Role::Admin,
        read_only: false,
        destructive: true,
        idempotent: false,
        ..read_only_spec("", "", "")
    };

    async fn call(cx: Cx, args: DeployArguments) -> Result<DeployResult, ToolError> {
        if !cx.app.config.updates.config.enabled {
            return Err(ToolError::forbidden(
                "configuration deployments are off on this device (updates.config.enabled: false); an administrator \
                 turns them on and puts the fleet's configuration key in updates.config.keys_dir",
            ));
        }
        if !args.confirm {
            return Err(ToolError::invalid_argument(
                "nothing was done: to replace the configuration file and restart the services, call again with \
                 confirm: true",
            ));
        }
        // Read here only to answer clearly; the agent and the root unit believe none of it
        // before the signature verifies.
        let unverified: Deployment = serde_json::from_str(&args.deployment).map_err(|e| {
            ToolError::invalid_argument(format!("argument `deployment` is not a deployment mcp-fleet makes: {e}"))
        })?;
        if let Err(e) = check_text(&unverified.text, "the deployed file") {
            return Err(ToolError::invalid_argument(format!("nothing was changed: the new file does not load: {e}")));
        }
        let request = Request::ConfigDeploy { deployment: args.deployment, signature: args.signature };
        match cx.app.agent.call(request).await? {
            Response::Done => Ok(DeployResult {
                status: "applying".into(),
                message: format!(
                    "{} installs the file and restarts the services; the old file comes back unless the new server \
                     answers within {} s",
                    cx.app.config.updates.config.apply_unit, cx.app.config.updates.config.health_timeout_seconds
                ),
                sha256: unverified.sha256,
            }),
            other => Err(ToolError::internal(format!(
                "unexpected answer from the ops agent to config_deploy: {}",
                other.kind()
            ))),
        }
    }
}
