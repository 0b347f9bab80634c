//! `os.*`: which OS packages can be upgraded, and upgrading them.
//!
//! The upgrade runs as a root one-shot unit that the ops agent starts, so it goes on when
//! the caller disconnects (or when this server is itself upgraded and restarted). A caller
//! may wait for it here, with progress notifications, or call again later to see how it went.

use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::system::read_only_spec;
use super::{Cx, NoArguments, Tool, ToolError, ToolSpec};
use crate::config::{OsUpdatesConfig, Role};
use crate::ipc::{Request, Response};
use crate::platform::{Upgradable, UpgradeStatus};

/// The longest wait os.apply_updates offers.
const MAX_WAIT_SECONDS: u64 = 1800;
/// How often a waiting os.apply_updates asks how the upgrade is doing.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

fn unexpected(op: &str, response: &Response) -> ToolError {
    ToolError::internal(format!("unexpected answer from the ops agent to {op}: {}", response.kind()))
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct UpdateList {
    /// How many packages can be upgraded.
    pub total: usize,
    /// How many of those are security updates.
    pub security: usize,
    /// The packages, with installed and candidate versions and origin.
    pub packages: Vec<Upgradable>,
}

pub struct CheckUpdates;

impl Tool for CheckUpdates {
    type Input = NoArguments;
    type Output = UpdateList;
    const SPEC: ToolSpec = ToolSpec {
        blocking: false,
        min_role: Role::Operator,
        ..read_only_spec(
            "os.check_updates",
            "Check for OS updates",
            "The OS packages with a newer version available, as of the package lists' last refresh (the system's daily apt update), with counts of all and of security updates. Refused when updates.os.check_enabled is false.",
        )
    };

    async fn call(cx: Cx, _: NoArguments) -> Result<UpdateList, ToolError> {
        cx.app.config.updates.os.check_listing()?;
        match cx.app.agent.call(Request::OsListUpgradable).await? {
            Response::Upgradable { packages } => Ok(UpdateList {
                total: packages.len(),
                security: packages.iter().filter(|p| p.security).count(),
                packages,
            }),
            other => Err(unexpected("os_list_upgradable", &other)),
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyArguments {
    /// Must be true: the upgrade is started only when asked for explicitly.
    #[serde(default)]
    pub confirm: bool,
    /// How long to wait for the upgrade to end before answering, 0 (default: answer at
    /// once) to 1800 seconds. Progress is reported every second while waiting.
    #[serde(default)]
    #[schemars(range(max = 1800))]
    pub wait_seconds: u64,
}

/// Checks that upgrading is turned on, the wait allowed and the upgrade confirmed.
fn check_apply(updates: &OsUpdatesConfig, args: &ApplyArguments) -> Result<Duration, ToolError> {
    updates.check_upgrading()?;
    if args.wait_seconds > MAX_WAIT_SECONDS {
        return Err(ToolError::invalid_argument(format!(
            "argument `wait_seconds`: {} is more than {MAX_WAIT_SECONDS}",
            args.wait_seconds
        )));
    }
    if !args.confirm {
        return Err(ToolError::invalid_argument(
            "nothing was done: to upgrade the OS packages, call again with confirm: true",
        ));
    }
    Ok(Duration::from_secs(args.wait_seconds))
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ApplyResult {
    /// The upgrade's state (`running`, `succeeded` or `failed`), the last lines of its output,
    /// and the outcome its program recorded: which packages went from which version to which,
    /// or why it failed.
    pub status: UpgradeStatus,
    /// Whether the upgrade has ended; if not, it goes on, and calling os.apply_updates again
    /// while it runs joins it rather than starting another.
    pub finished: bool,
    /// How long this call waited, in seconds.
    pub waited_seconds: f64,
    /// Set when asking how the upgrade was doing failed while waiting (the agent may have
    /// been restarted by the upgrade itself); the status is then the last one known.
    pub poll_error: Option<String>,
}

fn finished(status: &UpgradeStatus) -> bool {
    status.state != "running"
}

pub struct ApplyUpdates;

impl Tool for ApplyUpdates {
    type Input = ApplyArguments;
    type Output = ApplyResult;
    const SPEC: ToolSpec = ToolSpec {
        blocking: false,
        min_role: Role::Admin,
        read_only: false,
        destructive: true,
        idempotent: false,
        open_world: true,
        ..read_only_spec(
            "os.apply_updates",
            "Apply OS updates",
            "Upgrades the OS packages with apt, downloading from the configured package mirrors, in a root one-shot unit; needs confirm: true and updates.os.apply_enabled (updates.os.refresh_lists and upgrade_mode say whether the package lists are refreshed first and whether new packages may be installed or old ones removed). Waits up to wait_seconds for it to end, reporting progress, and returns its state, last output lines and recorded outcome: each package upgraded from and to its version, those installed and removed, or why it failed. Calling again while it runs joins it, so this also tells how a running upgrade is doing.",
        )
    };

    async fn call(cx: Cx, args: ApplyArguments) -> Result<ApplyResult, ToolError> {
        let wait = check_apply(&cx.app.config.updates.os, &args)?;
        let started = Instant::now();
        let mut status = match cx.app.agent.call(Request::OsStartUpgrade).await? {
            Response::Upgrade { status } => status,
            other => return Err(unexpected("os_start_upgrade", &other)),
        };
        let mut poll_error = None;
        while !finished(&status) && started.elapsed() < wait {
            tokio::time::sleep(POLL_INTERVAL.min(wait.saturating_sub(started.elapsed()))).await;
            match cx.app.agent.call(Request::OsUpgradeStatus).await {
                Ok(Response::Upgrade { status: now }) => status = now,
                Ok(other) => return Err(unexpected("os_upgrade_status", &other)),
                Err(e) => {
                    // The upgrade runs on without this server; say what is known so far.
                    poll_error = Some(e.to_string());
                    break;
                }
            }
            cx.progress.report(started.elapsed().as_secs_f64(), Some(wait.as_secs_f64()), "upgrade running");
        }
        Ok(ApplyResult {
            finished: finished(&status),
            status,
            waited_seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            poll_error,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn enabled() -> OsUpdatesConfig {
        OsUpdatesConfig { apply_enabled: true, ..OsUpdatesConfig::default() }
    }

    #[test]
    fn applying_updates_is_off_unless_configured() {
        let e =
            check_apply(&OsUpdatesConfig::default(), &ApplyArguments { confirm: true, wait_seconds: 0 }).unwrap_err();
        assert_eq!(e.code, "permission_denied");
        assert!(e.message.contains("updates.os.apply_enabled"), "{}", e.message);
    }

    #[test]
    fn nothing_is_upgraded_without_confirm_true() {
        let e = check_apply(&enabled(), &ApplyArguments { confirm: false, wait_seconds: 0 }).unwrap_err();
        assert_eq!(e.code, "invalid_argument");
        assert!(e.message.contains("confirm: true"));
    }

    #[test]
    fn the_wait_is_at_most_half_an_hour() {
        let ok = check_apply(&enabled(), &ApplyArguments { confirm: true, wait_seconds: 1800 }).unwrap();
        assert_eq!(ok, Duration::from_secs(1800));
        let e = check_apply(&enabled(), &ApplyArguments { confirm: true, wait_seconds: 1801 }).unwrap_err();
        assert!(e.message.contains("more than 1800"));
    }

    #[test]
    fn only_a_running_upgrade_is_unfinished() {
        let status = |state: &str| UpgradeStatus { state: state.into(), log_tail: Vec::new(), outcome: None };
        assert!(!finished(&status("running")));
        assert!(finished(&status("succeeded")));
        assert!(finished(&status("failed")));
        assert!(finished(&status("idle")));
    }
}
