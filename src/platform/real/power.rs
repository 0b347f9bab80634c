//! Reboot and power-off through logind, which lets an unprivileged agent schedule them when
//! polkit allows it (`org.freedesktop.login1.reboot`, `power-off` and their
//! `-multiple-sessions` variants, granted by the rule from [`super::polkit`]).
//!
//! logind's `ScheduleShutdown` is used rather than `systemctl reboot` so that a delay is
//! kept by logind itself (shown to logged-in users and cancellable with `shutdown -c`),
//! not by the agent, and so that inhibitor locks are respected.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::system::{agent_user, refused_by_polkit, require_systemd, run, POLKIT_RULES_PATH};
use crate::platform::{PlatformError, Power, PowerAction, PowerReceipt};

/// Schedules power actions with systemd-logind over D-Bus (`busctl`).
pub struct LogindPower {
    _private: (),
}

impl LogindPower {
    pub fn new() -> Self {
        LogindPower { _private: () }
    }
}

impl Default for LogindPower {
    fn default() -> Self {
        Self::new()
    }
}

/// logind's name for the action.
fn shutdown_type(action: PowerAction) -> &'static str {
    match action {
        PowerAction::Reboot => "reboot",
        PowerAction::Shutdown => "poweroff",
    }
}

impl Power for LogindPower {
    fn schedule(&self, action: PowerAction, delay_seconds: u32) -> Result<PowerReceipt, PlatformError> {
        require_systemd()?;
        let when = SystemTime::now() + Duration::from_secs(u64::from(delay_seconds));
        // logind takes the time as microseconds of the realtime clock.
        let usec = when
            .duration_since(UNIX_EPOCH)
            .map_err(|_| PlatformError::Failed("the system clock is before 1970".into()))?
            .as_micros()
            .to_string();
        let output = run(
            "busctl",
            &[
                // Nobody can answer a password prompt: polkit must decide from its rules.
                "--allow-interactive-authorization=no",
                "call",
                "org.freedesktop.login1",
                "/org/freedesktop/login1",
                "org.freedesktop.login1.Manager",
                "ScheduleShutdown",
                "st",
                shutdown_type(action),
                &usec,
            ],
        )?;
        if !output.status.success() {
            return Err(busctl_failure(action, &String::from_utf8_lossy(&output.stderr), &agent_user()));
        }
        Ok(PowerReceipt { action, delay_seconds, scheduled_for: crate::logs::timestamp(when), method: "logind".into() })
    }
}

/// Turns busctl's complaint (`Call failed: <D-Bus error message>`) into an error.
fn busctl_failure(action: PowerAction, stderr: &str, user: &str) -> PlatformError {
    let stderr = stderr.trim();
    let message = stderr.strip_prefix("Call failed: ").unwrap_or(stderr);
    let what = shutdown_type(action);
    if refused_by_polkit(message) {
        return PlatformError::Failed(format!(
            "polkit refused to {what} for {user}: is the polkit rule installed ({POLKIT_RULES_PATH}) and \
             generated with power actions allowed? ({message})"
        ));
    }
    if message.is_empty() {
        PlatformError::Failed(format!("logind did not schedule the {what}"))
    } else {
        PlatformError::Failed(format!("logind did not schedule the {what}: {message}"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_polkit_refusal_from_logind_points_at_the_rule_file() {
        let err = busctl_failure(PowerAction::Reboot, "Call failed: Interactive authentication required.\n", "mcp-ops");
        let PlatformError::Failed(m) = err else { panic!("{err:?}") };
        assert!(m.starts_with("polkit refused to reboot for mcp-ops"), "{m}");
        assert!(m.contains(POLKIT_RULES_PATH), "{m}");
    }

    #[test]
    fn other_busctl_errors_keep_loginds_message_without_the_call_failed_prefix() {
        let err = busctl_failure(
            PowerAction::Shutdown,
            "Call failed: Operation denied due to active block inhibitor\n",
            "mcp-ops",
        );
        assert_eq!(
            err,
            PlatformError::Failed(
                "logind did not schedule the poweroff: Operation denied due to active block inhibitor".into()
            )
        );
        let err = busctl_failure(PowerAction::Reboot, "Failed to connect to bus: No such file or directory", "u");
        assert!(
            matches!(err, PlatformError::Failed(m) if m.ends_with("Failed to connect to bus: No such file or directory"))
        );
    }

    #[test]
    fn without_systemd_scheduling_is_unavailable_and_nothing_runs() {
        if std::path::Path::new("/run/systemd/system").is_dir() {
            eprintln!("skipped: systemd runs this host, and this test must not reboot it");
            return;
        }
        let err = LogindPower::new().schedule(PowerAction::Reboot, 60).unwrap_err();
        assert_eq!(err, PlatformError::Unavailable("systemd is not the init system of this host".into()));
    }
}
