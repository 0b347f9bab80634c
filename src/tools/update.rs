//! `manage.update_server`, `manage.rollback` and `manage.list_versions`: self-update over MCP.
//!
//! The server resolves the signed manifest, downloads the package into the state
//! directory and hands both to the ops agent, which trusts neither: it verifies them again,
//! installs the release, switches `current` and restarts the services, this server
//! included. The call therefore ends at the restart, with status `in_progress`; the new
//! release's health check then commits the update or rolls it back, which
//! `manage.get_server_status` shows as `last_update`.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::system::read_only_spec;
use super::{App, Cx, NoArguments, Tool, ToolError, ToolSpec};
use crate::agent_client::AgentError;
use crate::base::VERSION;
use crate::config::{Config, Role, CHANNELS};
use crate::ipc::{DeltaIndexFiles, ErrorCode, Request, Response};
use crate::mcp::Progress;
use crate::update::activate::{Installation, InstalledRelease};
use crate::update::download::{FetchSettings, Fetcher, Progress as DownloadProgress};
use crate::update::install;
use crate::update::manifest::{Keyring, Policy};
use crate::update::resolve::{self, Resolution, Target};
use crate::update::state::VersionState;

/// The steps an update goes through, for progress notifications.
const STEPS: [&str; 7] = ["resolve", "download", "verify", "install", "restart", "health check", "commit"];
/// How long the ops agent may take to verify, extract and install a package.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateArguments {
    /// Channel to take the newest release of: `stable` or `beta` (default: updates.channel).
    /// Not together with target_version.
    pub channel: Option<String>,
    /// An exact version to install; it must be newer than every version installed here.
    pub target_version: Option<String>,
    /// Only resolve and check the release (signature, version, architecture, size); nothing
    /// is downloaded or installed.
    #[serde(default)]
    pub dry_run: bool,
}

/// How an update request went.
#[derive(Debug, Serialize, JsonSchema)]
pub struct UpdateStatus {
    /// `up_to_date` (nothing newer), `available` (dry run: it would be installed),
    /// `in_progress` (installed and restarting; poll manage.get_server_status.last_update).
    pub status: &'static str,
    /// The version running now.
    pub current_version: String,
    /// The version offered or being installed.
    pub target_version: Option<String>,
    /// The channel asked for, when one was.
    pub channel: Option<String>,
    /// The step reached (`checked`, `restarting`).
    pub phase: Option<&'static str>,
    /// Bytes of the download: the package's size, or the delta's when the update used one
    /// (experimental feature updates.delta).
    pub download_bytes: Option<u64>,
    /// When the release was published (RFC 3339).
    pub released_at: Option<String>,
    pub message: String,
}

fn require_remote(config: &Config) -> Result<(), ToolError> {
    if config.updates.remote_enabled {
        return Ok(());
    }
    Err(ToolError::forbidden(
        "self-update over MCP is turned off on this server (updates.remote_enabled: false); an administrator can \
         run `sudo mcp-raspi update server` or `sudo mcp-raspi manage rollback` on the device",
    ))
}

/// The installation as the server sees it (it only reads it).
fn installation(config: &Config) -> Installation {
    Installation::new(&config.paths.install_dir, &config.paths.state_dir, None, config.updates.keep_versions)
}

fn target(config: &Config, args: &UpdateArguments) -> Result<Target, ToolError> {
    match (&args.channel, &args.target_version) {
        (Some(_), Some(_)) => Err(ToolError::invalid_argument(
            "give either channel or target_version, not both: a channel resolves to its newest release",
        )),
        (None, Some(v)) => semver::Version::parse(v).map(Target::Version).map_err(|e| {
            ToolError::invalid_argument(format!("argument `target_version`: {v:?} is not a version such as 0.2.0: {e}"))
        }),
        (channel, None) => {
            let channel = channel.clone().unwrap_or_else(|| config.updates.channel.clone());
            if !CHANNELS.contains(&channel.as_str()) {
                return Err(ToolError::invalid_argument(format!(
                    "argument `channel`: {channel:?} is not one of {}",
                    CHANNELS.join(", ")
                )));
            }
            Ok(Target::Channel(channel))
        }
    }
}

/// The policy of this device, as the ops agent applies it again when it installs: the
/// release `current` names, the highest ever installed, this machine's architecture and the
/// download cap.
fn policy(config: &Config) -> Result<Policy, ToolError> {
    let max_bytes = config.updates.max_download_mb.saturating_mul(1024 * 1024);
    install::device_policy(&installation(config), max_bytes).map_err(ToolError::unavailable)
}

fn step(progress: &Progress, index: usize, message: &str) {
    progress.report(index as f64, Some(STEPS.len() as f64), &format!("{}: {message}", STEPS[index]));
}

pub struct UpdateServer;

impl Tool for UpdateServer {
    type Input = UpdateArguments;
    type Output = UpdateStatus;
    const SPEC: ToolSpec = ToolSpec {
        name: "manage.update_server",
        title: "Update mcp-raspi",
        description: "Updates mcp-raspi itself to the newest release of a channel (or to target_version) from the signed update repository (updates.server_url). Checks the manifest's ed25519 signature, version and architecture, downloads and verifies the package (or, with the experimental feature updates.delta, the smaller delta from the installed release when the repository publishes one), has the ops agent install it and restart the services; the new release must then answer /healthz and a tools/call within updates.health_timeout_seconds or it is rolled back automatically. The call ends at the restart with status in_progress: poll manage.get_server_status until last_update.status is succeeded or rolled_back. dry_run only checks what would be installed.",
        min_role: Role::Admin,
        read_only: false,
        destructive: true,
        idempotent: false,
        open_world: true,
        // Its work is asynchronous (the download, the files it writes with tokio::fs, the
        // agent), and tokio::fs itself needs the blocking pool.
        blocking: false,
        ..read_only_spec("", "", "")
    };

    async fn call(cx: Cx, args: UpdateArguments) -> Result<UpdateStatus, ToolError> {
        let target = target(&cx.app.config, &args)?;
        update(&cx.app, &cx.progress, target, args.dry_run).await
    }
}

/// Resolves `target` and, unless `dry_run`, downloads it and has the ops agent install it:
/// the update of `manage.update_server` and of the automatic updates.
pub async fn update(app: &App, progress: &Progress, target: Target, dry_run: bool) -> Result<UpdateStatus, ToolError> {
    let config = &app.config;
    require_remote(config)?;
    if config.updates.server_url.is_empty() {
        return Err(ToolError::unavailable(
            "self-update is not configured on this server: set updates.server_url to the update repository",
        ));
    }
    let channel = match &target {
        Target::Channel(c) => Some(c.clone()),
        Target::Version(_) => None,
    };
    let policy = policy(config)?;
    step(progress, 0, &target.manifest_url(&config.updates.server_url));
    let keyring = Keyring::load(&config.updates.keys_dir).map_err(|e| ToolError::unavailable(e.to_string()))?;
    let fetcher = Fetcher::new(FetchSettings::default());
    let resolution = resolve::resolve(&fetcher, &config.updates.server_url, &target, &keyring, &policy)
        .await
        .map_err(|e| ToolError { code: "failed", message: e.to_string() })?;
    let resolved = match resolution {
        Resolution::UpToDate { offered } => {
            return Ok(UpdateStatus {
                status: "up_to_date",
                current_version: VERSION.into(),
                target_version: Some(offered.to_string()),
                channel,
                phase: None,
                download_bytes: None,
                released_at: None,
                message: format!("{VERSION} is up to date: the newest release offered is {offered}"),
            });
        }
        Resolution::Available(resolved) => resolved,
    };
    let version = resolved.manifest.version.to_string();
    let released_at = Some(humantime::format_rfc3339_seconds(resolved.manifest.released_at).to_string());
    let size = resolved.artifact.size;
    if dry_run {
        return Ok(UpdateStatus {
            status: "available",
            current_version: VERSION.into(),
            target_version: Some(version.clone()),
            channel,
            phase: Some("checked"),
            download_bytes: Some(size),
            released_at,
            message: format!(
                "{version} can be installed ({size} bytes, signature and policy checked); nothing was downloaded"
            ),
        });
    }
    let downloads = config.paths.state_dir.join("downloads");
    let mut from_delta = None;
    if config.experimental_features.feature_enabled("updates.delta") {
        from_delta = install_from_delta(app, progress, &fetcher, &resolved, &keyring, &policy, &downloads).await;
    }
    let (answer, download_bytes) = match from_delta {
        Some(done) => done,
        None => {
            let package =
                resolve::download(&fetcher, &resolved, &downloads, &policy.architecture, &mut reporter(progress))
                    .await
                    .map_err(|e| ToolError { code: "failed", message: e.to_string() })?;
            (install(app, progress, &resolved, None, &package).await, size)
        }
    };
    let (from, restart_in_ms) = match answer? {
        Response::UpdateApplied { from, restart_in_ms, .. } => (from, restart_in_ms),
        other => {
            return Err(ToolError::internal(format!(
                "unexpected answer from the ops agent to update_apply: {}",
                other.kind()
            )))
        }
    };
    step(progress, 4, &format!("{version} is installed and current; the services restart in {restart_in_ms} ms"));
    Ok(UpdateStatus {
        status: "in_progress",
        current_version: from.unwrap_or_else(|| VERSION.into()),
        target_version: Some(version.clone()),
        channel,
        phase: Some("restarting"),
        download_bytes: Some(download_bytes),
        released_at,
        message: format!(
            "{version} is installed and the services are restarting into it; it must prove healthy within {} s \
             or it is rolled back. Poll manage.get_server_status: last_update.status becomes succeeded or \
             rolled_back.",
            config.updates.health_timeout_seconds
        ),
    })
}

/// With updates.delta on: the ops agent's answer to an install from the delta from the
/// installed release, and the delta's size. `None`, after logging why, when there is no
/// delta or it cannot be used: the package is installed instead.
async fn install_from_delta(
    app: &App,
    progress: &Progress,
    fetcher: &Fetcher,
    resolved: &resolve::Resolved,
    keyring: &Keyring,
    policy: &Policy,
    downloads: &std::path::Path,
) -> Option<(Result<Response, AgentError>, u64)> {
    let version = &resolved.manifest.version;
    let found = match resolve::find_delta(fetcher, resolved, keyring, policy).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            log::info!("update to {version}: no delta from {} is published", policy.installed);
            return None;
        }
        Err(e) => {
            log::warn!("update to {version}: the delta index cannot be used ({e}); downloading the package");
            return None;
        }
    };
    let (size, package) = (found.entry.size, resolved.artifact.size);
    step(progress, 1, &format!("the delta from {} ({size} bytes instead of {package})", found.entry.from));
    let file = match resolve::download_delta(fetcher, resolved, &found, downloads, &mut reporter(progress)).await {
        Ok(file) => file,
        Err(e) => {
            log::warn!("update to {version}: the delta's download failed ({e}); downloading the package");
            return None;
        }
    };
    let delta = DeltaIndexFiles {
        index: String::from_utf8_lossy(&found.index_bytes).into_owned(),
        signature: String::from_utf8_lossy(&found.signature_bytes).into_owned(),
    };
    match install(app, progress, resolved, Some(delta), &file).await {
        Err(AgentError::Remote { code: ErrorCode::DeltaUnusable, message }) => {
            log::warn!("update to {version}: {message}; downloading the whole package");
            step(progress, 1, &format!("{message}; downloading the whole package instead"));
            None
        }
        answer => Some((answer, size)),
    }
}

/// Reports a download's progress, a notification per percent at most.
fn reporter(progress: &Progress) -> impl FnMut(DownloadProgress) + Send + '_ {
    let mut last_reported = 0u64;
    move |p| {
        if p.done == p.total || p.done.saturating_sub(last_reported) > p.total / 100 {
            last_reported = p.done;
            let fraction = if p.total == 0 { 1.0 } else { p.done as f64 / p.total as f64 };
            progress.report(
                1.0 + fraction,
                Some(STEPS.len() as f64),
                &format!("download: {} of {} bytes", p.done, p.total),
            );
        }
    }
}

/// Has the ops agent install the release of `resolved` from `file`, the package or (with
/// `delta`) the delta, and removes the file once the agent has its own copy.
async fn install(
    app: &App,
    progress: &Progress,
    resolved: &resolve::Resolved,
    delta: Option<DeltaIndexFiles>,
    file: &std::path::Path,
) -> Result<Response, AgentError> {
    step(progress, 2, "size and SHA-256 match the signed manifest");
    step(progress, 3, "the ops agent verifies the download again and installs it");
    let request = Request::UpdateApply {
        manifest: String::from_utf8_lossy(&resolved.manifest_bytes).into_owned(),
        signature: String::from_utf8_lossy(&resolved.signature_bytes).into_owned(),
        delta,
    };
    let answer = app.agent.call_with_timeout(request, INSTALL_TIMEOUT).await;
    // The agent works on its own copy, made before it answers; without an answer it may
    // still be reading the download.
    if matches!(answer, Ok(_) | Err(AgentError::Remote { .. })) {
        let _ = std::fs::remove_file(file);
    }
    answer
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackArguments {
    /// Must be true: the services restart into the other release.
    #[serde(default)]
    pub confirm: bool,
    /// An installed release to go back to (default: the previous good version).
    pub to_version: Option<String>,
}

/// The version state after a rollback.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RollbackResult {
    pub state: VersionState,
    pub message: String,
}

pub struct Rollback;

impl Tool for Rollback {
    type Input = RollbackArguments;
    type Output = RollbackResult;
    const SPEC: ToolSpec = ToolSpec {
        blocking: false,
        name: "manage.rollback",
        title: "Roll mcp-raspi back",
        description: "Switches mcp-raspi back to the previous good release (or to_version, one of the installed releases listed by manage.list_versions) and restarts the services; needs confirm: true. This server restarts: the call answers first.",
        min_role: Role::Admin,
        read_only: false,
        destructive: true,
        idempotent: false,
        ..read_only_spec("", "", "")
    };

    async fn call(cx: Cx, args: RollbackArguments) -> Result<RollbackResult, ToolError> {
        require_remote(&cx.app.config)?;
        if !args.confirm {
            return Err(ToolError::invalid_argument(
                "nothing was done: to switch releases and restart the services, call again with confirm: true",
            ));
        }
        let reason = format!("rolled back by {} over MCP", cx.identity.name);
        let request = Request::UpdateRollback { to_version: args.to_version, reason };
        match cx.app.agent.call(request).await? {
            Response::VersionState { state } => {
                let current = state.current_version.clone().unwrap_or_default();
                Ok(RollbackResult {
                    message: format!("current is {current}; the services restart into it in a second"),
                    state,
                })
            }
            other => Err(ToolError::internal(format!(
                "unexpected answer from the ops agent to update_rollback: {}",
                other.kind()
            ))),
        }
    }
}

/// The installed releases.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Versions {
    /// Oldest first.
    pub releases: Vec<InstalledRelease>,
    pub current_version: Option<String>,
    pub previous_good_version: Option<String>,
    /// How many releases pruning keeps (updates.keep_versions), besides the protected ones.
    pub keep_versions: usize,
}

pub struct ListVersions;

impl Tool for ListVersions {
    type Input = NoArguments;
    type Output = Versions;
    const SPEC: ToolSpec = read_only_spec(
        "manage.list_versions",
        "Installed releases",
        "The releases installed under /opt/mcp-raspi/releases with their size, which one is current, which is the previous good one (where a rollback goes), and which ones pruning protects.",
    );

    // Runs on the blocking pool (its spec says so): it reads the release tree directly.
    async fn call(cx: Cx, _: NoArguments) -> Result<Versions, ToolError> {
        let config = &cx.app.config;
        let installation = installation(config);
        let releases = installation.list().map_err(|e| ToolError::unavailable(e.to_string()))?;
        let state = installation.state().map_err(|e| ToolError::unavailable(e.to_string()))?;
        Ok(Versions {
            current_version: releases.iter().find(|r| r.current).map(|r| r.version.clone()),
            previous_good_version: state.previous_good_version,
            keep_versions: config.updates.keep_versions,
            releases,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn args(channel: Option<&str>, target_version: Option<&str>) -> UpdateArguments {
        UpdateArguments {
            channel: channel.map(Into::into),
            target_version: target_version.map(Into::into),
            dry_run: false,
        }
    }

    #[test]
    fn a_channel_or_a_version_is_resolved_but_never_both() {
        let config = Config::from_yaml("config_version: \"1.2\"\n", "test").unwrap();
        assert_eq!(target(&config, &args(None, None)).unwrap(), Target::Channel("stable".into()));
        assert_eq!(target(&config, &args(Some("beta"), None)).unwrap(), Target::Channel("beta".into()));
        assert_eq!(
            target(&config, &args(None, Some("0.2.0"))).unwrap(),
            Target::Version(semver::Version::new(0, 2, 0))
        );
        assert!(target(&config, &args(Some("beta"), Some("0.2.0"))).unwrap_err().message.contains("not both"));
        assert!(target(&config, &args(Some("nightly"), None)).unwrap_err().message.contains("stable, beta"));
        assert!(target(&config, &args(None, Some("two"))).unwrap_err().message.contains("target_version"));
    }

    #[test]
    fn the_installed_version_is_the_release_current_names() {
        let dir = tempfile::tempdir().unwrap();
        let payload = dir.path().join("payload");
        std::fs::create_dir_all(payload.join("bin")).unwrap();
        let root = dir.path().join("opt");
        crate::update::release::install_release(&payload, &root, "0.0.1").unwrap();
        crate::update::release::flip_current(&root, "0.0.1").unwrap();
        let yaml = format!(
            "config_version: \"1.2\"\npaths:\n  install_dir: {}\n  state_dir: {}\n",
            root.display(),
            dir.path().join("state").display()
        );
        let config = Config::from_yaml(&yaml, "test").unwrap();
        // What the ops agent checks again: this server's own version does not decide.
        assert_eq!(policy(&config).unwrap().installed, semver::Version::new(0, 0, 1));
    }

    #[test]
    fn remote_updates_can_be_switched_off() {
        let config = Config::from_yaml("config_version: \"1.2\"\nupdates:\n  remote_enabled: false\n", "test").unwrap();
        let e = require_remote(&config).unwrap_err();
        assert_eq!(e.code, "permission_denied");
        assert!(e.message.contains("updates.remote_enabled") && e.message.contains("mcp-raspi manage rollback"));
    }

    #[test]
    fn updating_and_rolling_back_are_destructive_admin_tools() {
        for spec in [&UpdateServer::SPEC, &Rollback::SPEC] {
            assert_eq!(spec.min_role, Role::Admin);
            assert!(spec.destructive && !spec.read_only);
        }
        assert_eq!(ListVersions::SPEC.min_role, Role::Viewer);
    }
}
