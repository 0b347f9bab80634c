//! The agent's part in self-update: installing a release the server downloaded, rolling
//! back, and, when it starts into a release under update, deciding from the server's health
//! report whether the update is committed or rolled back.
//!
//! The agent is the only process that changes `current` and `version.json` while the
//! services run. It restarts the product's own units after switching, which restarts the
//! agent itself; the new agent finds the update in `version.json` at start and waits for the
//! new server's report (the agent has no network, so the server checks its own HTTP
//! listener and reports over the socket; the report arriving also proves the handshake
//! between the two new programs).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::dispatch::AgentState;
use crate::base::VERSION;
use crate::config::Config;
use crate::ipc::{DeltaIndexFiles, ErrorCode, Response};
use crate::platform::{Platform, UnitName};
use crate::update::activate::Installation;
use crate::update::delta;
use crate::update::install::{self, Download, InstallError, InstallRequest};
use crate::update::manifest::{self, Keyring};
use crate::update::state::{Reconciled, UpdateStatus};

/// How long the agent waits after answering an install before it restarts the units, so
/// that the answer reaches the server (and its client) first.
pub const RESTART_DELAY: Duration = Duration::from_millis(1000);

/// What the server reported after starting into a release under update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthReport {
    pub version: String,
    pub healthy: bool,
    pub detail: String,
}

/// The agent's update state: the installation it manages and the server's latest report.
pub struct Updates {
    pub installation: Installation,
    pub downloads_dir: PathBuf,
    pub staging_dir: PathBuf,
    reports: watch::Sender<Option<HealthReport>>,
}

impl Updates {
    pub fn new(config: &Config) -> Updates {
        let state_dir = &config.paths.state_dir;
        Updates {
            installation: Installation::new(&config.paths.install_dir, state_dir, None, config.updates.keep_versions),
            downloads_dir: state_dir.join("downloads"),
            staging_dir: state_dir.join("staging"),
            reports: watch::channel(None).0,
        }
    }
}

fn failed(message: impl Into<String>) -> Response {
    Response::Error { code: ErrorCode::Failed, message: message.into() }
}

#[allow(clippy::result_large_err)]
fn check_remote_enabled(config: &Config) -> Result<(), Response> {
    if config.updates.remote_enabled {
        Ok(())
    } else {
        Err(Response::Error {
            code: ErrorCode::Denied,
            message: "self-update over MCP is turned off on this device (updates.remote_enabled: false); an \
                      administrator can run `sudo mcp-raspi update server` or `sudo mcp-raspi manage rollback` on it"
                .into(),
        })
    }
}

/// The product's own units, in the order they are restarted.
fn product_units() -> Vec<UnitName> {
    crate::platform::PRODUCT_UNITS.iter().filter_map(|u| UnitName::parse(u).ok()).collect()
}

/// Restarts the server and the agent after `delay`, without waiting for either: the agent
/// is one of them.
pub fn restart_later(platform: &Platform, delay: Duration) {
    let services = platform.services.clone();
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        log::info!("restarting {} into the release current names", crate::platform::PRODUCT_UNITS.join(" and "));
        if let Err(e) = services.restart_without_waiting(&product_units()) {
            log::error!("cannot restart the services: {e}");
        }
    });
}

// The error side of these results is the answer itself, as in `dispatch`.
#[allow(clippy::result_large_err)]
impl AgentState {
    /// Installs the release `manifest` describes from the server's download (the package,
    /// or the delta from the installed release that `delta` indexes), and schedules the
    /// restart. A delta that cannot be used is answered with `delta_unusable`, nothing
    /// changed, so that the server can fetch the package instead.
    pub(super) fn update_apply(
        &self,
        manifest_bytes: &str,
        signature: &str,
        delta: Option<&DeltaIndexFiles>,
    ) -> Result<Response, Response> {
        check_remote_enabled(&self.config)?;
        // The server decides on a delta, but the operator turned the feature on here or not.
        if delta.is_some() && !self.config.experimental_features.feature_enabled("updates.delta") {
            return Err(Response::Error {
                code: ErrorCode::DeltaUnusable,
                message: "delta updates are off on this device (the experimental feature updates.delta)".into(),
            });
        }
        let updates = &self.updates;
        let keys_dir = &self.config.updates.keys_dir;
        let keyring = Keyring::load(keys_dir).map_err(|e| failed(e.to_string()))?;
        // The package's name comes from the verified manifest, never from the request.
        let verified = manifest::verify(manifest_bytes.as_bytes(), signature.as_bytes(), &keyring)
            .map_err(|e| failed(e.to_string()))?;
        let max_bytes = self.config.updates.max_download_mb.saturating_mul(1024 * 1024);
        let mut policy = install::device_policy(&updates.installation, max_bytes).map_err(failed)?;
        // The server picked this version: the newest of a channel, or one an operator named.
        // Here it may be the highest ever installed (a release tried again once what failed is
        // fixed), never lower: the server's own check refuses that again unless named.
        policy.target_version = Some(verified.version.clone());
        let to = verified.version.to_string();
        let package = updates.downloads_dir.join(install::package_file_name(&to, &policy.architecture));
        let delta_file = updates.downloads_dir.join(delta::delta_file_name(
            &policy.installed.to_string(),
            &to,
            &policy.architecture,
        ));
        let download = match delta {
            None => Download::Package(&package),
            Some(files) => Download::Delta {
                index: files.index.as_bytes(),
                signature: files.signature.as_bytes(),
                file: &delta_file,
            },
        };
        let request = InstallRequest {
            manifest: manifest_bytes.as_bytes(),
            signature: signature.as_bytes(),
            download,
            keyring: &keyring,
            policy,
            staging_dir: &updates.staging_dir,
            source: "mcp",
        };
        // One line per step; the extraction reports each archive entry, which is only worth
        // a debug line.
        let installed = install::install(&updates.installation, request, &mut |step| match step {
            install::Step::Extracting { .. } => log::debug!("update: {step:?}"),
            _ => log::info!("update: {step:?}"),
        })
        .map_err(|e| match e {
            InstallError::Delta(_) => {
                log::warn!("{e}");
                Response::Error { code: ErrorCode::DeltaUnusable, message: e.to_string() }
            }
            other => failed(other.to_string()),
        })?;
        log::info!("installed {} (was {:?}); restarting the services", installed.to, installed.from);
        restart_later(&self.platform, RESTART_DELAY);
        Ok(Response::UpdateApplied {
            from: installed.from,
            to: installed.to,
            restart_in_ms: RESTART_DELAY.as_millis() as u32,
        })
    }

    /// Rolls back to `to_version` or the previous good version, then restarts the services.
    pub(super) fn update_rollback(&self, to_version: Option<&str>, reason: &str) -> Result<Response, Response> {
        check_remote_enabled(&self.config)?;
        if let Some(v) = to_version {
            crate::update::release::validate_version(v)
                .map_err(|e| Response::Error { code: ErrorCode::Invalid, message: e.to_string() })?;
        }
        let state =
            self.updates.installation.rollback(to_version, reason, "rollback").map_err(|e| failed(e.to_string()))?;
        restart_later(&self.platform, RESTART_DELAY);
        Ok(Response::VersionState { state })
    }

    /// Takes the server's health report.
    pub(super) fn update_health(&self, report: HealthReport) -> Response {
        log::info!("health report of {}: healthy {} ({})", report.version, report.healthy, report.detail);
        self.updates.reports.send_replace(Some(report));
        Response::Done
    }
}

/// At start: reconciles `current` with `version.json`, and when this start is the first of
/// a release under update, waits for the server's report and commits or rolls back.
pub async fn check_after_start(state: Arc<AgentState>) {
    let installation = state.updates.installation.clone();
    let found = tokio::task::spawn_blocking(move || installation.reconcile()).await;
    let (found, version_state) = match found {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            log::error!("cannot compare current with the version state: {e}");
            return;
        }
        Err(e) => {
            log::error!("the version state check failed: {e}");
            return;
        }
    };
    match found {
        Reconciled::Consistent => return,
        Reconciled::HealthCheckDue => {}
        Reconciled::Corrected(note) => {
            log::warn!("version state: {note}");
            return;
        }
        Reconciled::RepairCurrent(v) => {
            log::warn!("current was missing and now names {v} again");
            return;
        }
        Reconciled::FinishRollback(v) => {
            log::warn!("finished an interrupted rollback to {v}");
            restart_later(&state.platform, RESTART_DELAY);
            return;
        }
    }
    let Some(update) = version_state.in_progress().cloned() else { return };
    let timeout = Duration::from_secs(state.config.updates.health_timeout_seconds);
    let verdict = if update.to != VERSION {
        Err(format!("the ops agent that started is {VERSION}, not {}", update.to))
    } else {
        let installation = state.updates.installation.clone();
        let _ = tokio::task::spawn_blocking(move || installation.checking()).await;
        log::info!("update to {}: waiting up to {} s for the server's health report", update.to, timeout.as_secs());
        wait_for_report(&state.updates.reports, &update.to, timeout).await
    };
    let installation = state.updates.installation.clone();
    let decided = match verdict {
        Ok(detail) => {
            log::info!("update to {} is healthy ({detail}); committing", update.to);
            tokio::task::spawn_blocking(move || installation.commit()).await
        }
        Err(reason) => {
            log::error!("update to {} is not healthy: {reason}; rolling back", update.to);
            let reason = format!("{} did not prove healthy: {reason}", update.to);
            tokio::task::spawn_blocking(move || installation.rollback(None, &reason, "health_check")).await
        }
    };
    match decided {
        Ok(Ok(after)) => {
            let status = after.last_update.as_ref().map(|u| u.status);
            if status == Some(UpdateStatus::RolledBack) {
                restart_later(&state.platform, Duration::ZERO);
            }
        }
        Ok(Err(e)) => log::error!("cannot record the end of the update: {e}"),
        Err(e) => log::error!("the end of the update failed: {e}"),
    }
}

/// The server's report for `version`: `Ok(detail)` when healthy within `timeout`.
async fn wait_for_report(
    reports: &watch::Sender<Option<HealthReport>>,
    version: &str,
    timeout: Duration,
) -> Result<String, String> {
    let mut receiver = reports.subscribe();
    let wait =
        async { receiver.wait_for(|r| r.as_ref().is_some_and(|r| r.version == version)).await.map(|r| r.clone()) };
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(report)) => match report {
            Some(r) if r.healthy => Ok(r.detail),
            Some(r) => Err(r.detail),
            None => Err("no report".into()),
        },
        Ok(Err(_)) => Err("the report channel closed".into()),
        Err(_) => Err(format!(
            "the server did not report a successful /healthz and tools/call within {} s \
             (updates.health_timeout_seconds)",
            timeout.as_secs()
        )),
    }
}
