//! One device's part of a rolling update, through its own signed self-update: ask for the
//! version (`manage.update_server` with `target_version`), follow `manage.get_server_status`
//! across the restart until the device commits the release or rolls it back, then read its
//! health verdict. And the way back when its batch halts: `manage.rollback` to the release
//! it ran before.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::plan::Outcome;
use crate::fleet::device::{Caller, DeviceError, Target};

/// How long one device may take, and how often it is asked how far it got.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// From the request to the committed release and its health verdict.
    pub deadline: Duration,
    pub poll: Duration,
}

/// What a device says of its release and its last update.
#[derive(Debug, Default)]
struct Status {
    release: Option<String>,
    pid: Option<u64>,
    last_status: Option<String>,
    last_to: Option<String>,
    last_reason: Option<String>,
    last_started: Option<String>,
}

impl Status {
    fn of(value: &Value) -> Status {
        let text = |v: &Value| v.as_str().map(str::to_string);
        let update = &value["last_update"];
        Status {
            // The release `current` names is what the device runs; a build without one
            // (installed by dpkg, never updated) runs its own version.
            release: text(&value["current_release"]).or_else(|| text(&value["version"])),
            pid: value["pid"].as_u64(),
            last_status: text(&update["status"]),
            last_to: text(&update["to"]),
            last_reason: text(&update["reason"]),
            last_started: text(&update["started_at"]),
        }
    }

    /// What tells one update record from another (its times are to the second).
    fn record(&self) -> (Option<&str>, Option<&str>, Option<&str>) {
        (self.last_to.as_deref(), self.last_started.as_deref(), self.last_status.as_deref())
    }

    fn in_progress(&self) -> bool {
        self.last_status.as_deref() == Some("in_progress")
    }
}

async fn status(caller: &Caller, target: &Target) -> Result<Status, DeviceError> {
    caller.call(target, "manage.get_server_status", json!({})).await.map(|v| Status::of(&v))
}

/// Updates `target` to `version`.
pub async fn update(caller: &Caller, target: &Target, version: &str, pace: Pace) -> Outcome {
    let started = Instant::now();
    let before = match status(caller, target).await {
        Ok(s) => s,
        Err(e) => return Outcome::NotUpdated { reason: format!("could not ask for its status: {e}") },
    };
    let Some(from) = before.release.clone() else {
        return Outcome::NotUpdated { reason: "it does not say which release it runs".into() };
    };
    if before.in_progress() && before.last_to.as_deref() != Some(version) {
        let other = before.last_to.as_deref().unwrap_or("another version");
        return Outcome::NotUpdated { reason: format!("an update to {other} is under way there; wait for its end") };
    }
    if from == version && !before.in_progress() {
        return Outcome::AlreadyCurrent;
    }
    if !before.in_progress() {
        let asked =
            caller.call_within(target, "manage.update_server", json!({"target_version": version}), pace.deadline).await;
        match asked {
            Ok(answer) => match answer["status"].as_str() {
                Some("in_progress") => {}
                Some("up_to_date") => return Outcome::AlreadyCurrent,
                other => {
                    return Outcome::NotUpdated {
                        reason: format!("manage.update_server answered status {}", other.unwrap_or("(none)")),
                    }
                }
            },
            // The device answered, and changed nothing.
            Err(e @ (DeviceError::Failed(_) | DeviceError::Refused(_) | DeviceError::Credential(_))) => {
                return Outcome::NotUpdated { reason: e.to_string() }
            }
            // The answer was lost, perhaps in the restart: what the device says next tells.
            Err(DeviceError::Unreachable(_)) => {}
        }
    }
    // An update that was under way already is followed; otherwise the record of an earlier
    // attempt (which started before) is not this one's.
    let earlier = if before.in_progress() { None } else { Some(&before) };
    follow(caller, target, version, &from, earlier, started, pace).await
}

/// Asks `target` how its update to `version` went until it ended, then for its health.
async fn follow(
    caller: &Caller,
    target: &Target,
    version: &str,
    from: &str,
    earlier: Option<&Status>,
    started: Instant,
    pace: Pace,
) -> Outcome {
    let mut last_seen = String::from("no answer yet");
    let mut committed = false;
    while started.elapsed() < pace.deadline {
        tokio::time::sleep(pace.poll).await;
        if !committed {
            let now = match status(caller, target).await {
                Ok(s) => s,
                Err(e) => {
                    last_seen = e.to_string();
                    continue;
                }
            };
            if now.last_to.as_deref() != Some(version)
                || now.in_progress()
                || earlier.is_some_and(|e| e.record() == now.record())
            {
                last_seen = format!("update {}", now.last_status.as_deref().unwrap_or("not started"));
                continue;
            }
            let reason = now.last_reason.unwrap_or_else(|| "no reason given".into());
            match now.last_status.as_deref() {
                Some("succeeded") if now.release.as_deref() == Some(version) => committed = true,
                Some("rolled_back") => return Outcome::RolledBack { reason },
                Some("failed") => return Outcome::NotUpdated { reason },
                other => {
                    last_seen = format!("update {} on release {:?}", other.unwrap_or("?"), now.release);
                    continue;
                }
            }
        }
        match caller.call(target, "system.get_health_snapshot", json!({})).await {
            Ok(health) => return verdict(&health, from),
            Err(e) => last_seen = format!("updated, but no health snapshot: {e}"),
        }
    }
    let seconds = pace.deadline.as_secs();
    if committed {
        Outcome::Unhealthy {
            from: from.to_string(),
            reason: format!("no health verdict within {seconds} s: {last_seen}"),
        }
    } else {
        Outcome::Lost { reason: format!("no end of the update within {seconds} s ({last_seen})") }
    }
}

/// The outcome of a committed update, by the device's health verdict.
fn verdict(health: &Value, from: &str) -> Outcome {
    match health["verdict"].as_str() {
        Some("critical") => {
            let reasons: Vec<&str> =
                health["reasons"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            Outcome::Unhealthy {
                from: from.to_string(),
                reason: format!("health verdict critical: {}", reasons.join("; ")),
            }
        }
        Some(_) => Outcome::Updated { from: from.to_string() },
        None => Outcome::Unhealthy { from: from.to_string(), reason: "the health snapshot has no verdict".into() },
    }
}

/// Puts `target` back on release `to` (`manage.rollback`), and waits until it runs it again:
/// a server started after the rollback says so.
pub async fn revert(caller: &Caller, target: &Target, to: &str, pace: Pace) -> Result<(), String> {
    let started = Instant::now();
    let before = status(caller, target).await.map_err(|e| e.to_string())?;
    caller
        .call(target, "manage.rollback", json!({"to_version": to, "confirm": true}))
        .await
        .map_err(|e| format!("manage.rollback: {e}"))?;
    let mut last_seen = String::from("no answer yet");
    while started.elapsed() < pace.deadline {
        tokio::time::sleep(pace.poll).await;
        match status(caller, target).await {
            Ok(now) if now.release.as_deref() == Some(to) && now.pid != before.pid => return Ok(()),
            Ok(now) => last_seen = format!("runs {:?}", now.release),
            Err(e) => last_seen = e.to_string(),
        }
    }
    Err(format!("not back on {to} within {} s ({last_seen})", pace.deadline.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_critical_verdict_fails_the_device_with_its_reasons() {
        let critical = json!({"verdict": "critical", "reasons": ["disk / 97 % full", "throttled"]});
        assert_eq!(
            verdict(&critical, "0.1.0"),
            Outcome::Unhealthy {
                from: "0.1.0".into(),
                reason: "health verdict critical: disk / 97 % full; throttled".into()
            }
        );
        assert_eq!(verdict(&json!({"verdict": "warning"}), "0.1.0"), Outcome::Updated { from: "0.1.0".into() });
        assert!(verdict(&json!({}), "0.1.0").failed());
    }

    #[test]
    fn the_status_names_the_release_current_names_before_the_programs_version() {
        let s = Status::of(&json!({"version": "0.2.0", "current_release": "0.1.0", "pid": 7,
            "last_update": {"status": "rolled_back", "to": "0.2.0", "reason": "did not report"}}));
        assert_eq!(s.release.as_deref(), Some("0.1.0"));
        assert_eq!(
            (s.pid, s.last_to.as_deref(), s.last_reason.as_deref()),
            (Some(7), Some("0.2.0"), Some("did not report"))
        );
        assert_eq!(Status::of(&json!({"version": "0.2.0", "current_release": null})).release.as_deref(), Some("0.2.0"));
    }
}
