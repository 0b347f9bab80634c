//! Simulated OS packages: three upgradable packages of a Raspberry Pi OS (bookworm) host,
//! and an upgrade that takes about a second, so the update tools show every state. Its
//! outcome is what the real upgrade's program records: running, then succeeded with each
//! package from and to its version.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::platform::{
    PackageChange, Packages, PlatformError, Upgradable, UpgradeMode, UpgradeOutcome, UpgradeResult, UpgradeStatus,
};
use crate::update::state::now;

/// How long a simulated upgrade runs.
const UPGRADE_TIME: Duration = Duration::from_secs(1);

/// At most this many log lines are returned, as on a real host.
const LOG_TAIL_LINES: usize = 20;

enum Run {
    Idle,
    Running { since: Instant, started_at: String, packages: Vec<Upgradable> },
    Finished { log: Vec<String>, outcome: UpgradeOutcome },
}

struct State {
    pending: Vec<Upgradable>,
    run: Run,
}

/// Upgradable packages and an upgrade, in memory.
pub struct SimPackages {
    state: Mutex<State>,
    upgrade_time: Duration,
}

impl SimPackages {
    pub fn new() -> Self {
        Self::with_upgrade_time(UPGRADE_TIME)
    }

    /// An upgrade that takes `upgrade_time`.
    pub fn with_upgrade_time(upgrade_time: Duration) -> Self {
        let package = |name: &str, installed: &str, candidate: &str, origin: &str| Upgradable {
            name: name.into(),
            installed_version: installed.into(),
            candidate_version: candidate.into(),
            origin: Some(origin.into()),
            security: origin.ends_with("-security"),
        };
        let pending = vec![
            package("libssl3", "3.0.14-1~deb12u2", "3.0.15-1~deb12u1", "bookworm-security"),
            package("rpi-eeprom", "28.1-1", "28.2-1", "bookworm"),
            package("tzdata", "2024b-0+deb12u1", "2025b-0+deb12u1", "bookworm-updates"),
        ];
        SimPackages { state: Mutex::new(State { pending, run: Run::Idle }), upgrade_time }
    }

    /// The state, with a running upgrade finished once its time has passed.
    fn lock(&self) -> Result<MutexGuard<'_, State>, PlatformError> {
        let mut state = self.state.lock().map_err(|_| PlatformError::Failed("simulated apt is unavailable".into()))?;
        if let Run::Running { since, started_at, packages } = &state.run {
            if since.elapsed() >= self.upgrade_time {
                let log = apt_log(packages, true);
                let outcome = outcome(started_at, packages, true);
                state.pending.clear();
                state.run = Run::Finished { log, outcome };
            }
        }
        Ok(state)
    }
}

impl Default for SimPackages {
    fn default() -> Self {
        Self::new()
    }
}

/// What `apt-get -y upgrade` prints for `packages`: the start, or all of it.
fn apt_log(packages: &[Upgradable], finished: bool) -> Vec<String> {
    let names: Vec<&str> = packages.iter().map(|p| p.name.as_str()).collect();
    let mut log = vec![
        "Reading package lists...".to_string(),
        "Building dependency tree...".into(),
        "Reading state information...".into(),
        "Calculating upgrade...".into(),
    ];
    if !packages.is_empty() {
        log.push("The following packages will be upgraded:".into());
        log.push(format!("  {}", names.join(" ")));
    }
    log.push(format!("{} upgraded, 0 newly installed, 0 to remove and 0 not upgraded.", packages.len()));
    if !finished || packages.is_empty() {
        return log;
    }
    log.push(format!("Need to get {} kB of archives.", 1_234 * packages.len()));
    for (i, p) in packages.iter().enumerate() {
        let origin = p.origin.as_deref().unwrap_or("bookworm");
        let mirror = if p.security {
            "http://deb.debian.org/debian-security"
        } else if p.name.starts_with("rpi-") {
            "http://archive.raspberrypi.com/debian"
        } else {
            "http://deb.debian.org/debian"
        };
        log.push(format!("Get:{} {mirror} {origin}/main arm64 {} arm64 {}", i + 1, p.name, p.candidate_version));
    }
    for p in packages {
        log.push(format!("Preparing to unpack .../{}_{}_arm64.deb ...", p.name, p.candidate_version));
        log.push(format!("Unpacking {} ({}) over ({}) ...", p.name, p.candidate_version, p.installed_version));
    }
    for p in packages {
        log.push(format!("Setting up {} ({}) ...", p.name, p.candidate_version));
    }
    log.push("Processing triggers for libc-bin (2.36-9+rpt2+deb12u9) ...".into());
    log
}

/// The record of an upgrade of `packages` that started at `started_at`, running or done.
fn outcome(started_at: &str, packages: &[Upgradable], finished: bool) -> UpgradeOutcome {
    let upgraded = packages.iter().map(|p| PackageChange {
        name: p.name.clone(),
        from: p.installed_version.clone(),
        to: p.candidate_version.clone(),
    });
    UpgradeOutcome {
        result: if finished { UpgradeResult::Succeeded } else { UpgradeResult::Running },
        started_at: started_at.to_string(),
        finished_at: finished.then(now),
        mode: UpgradeMode::default(),
        refresh_lists: true,
        upgraded: if finished { upgraded.collect() } else { Vec::new() },
        installed: Vec::new(),
        removed: Vec::new(),
        error: None,
        invocation_id: None,
    }
}

fn tail(lines: &[String]) -> Vec<String> {
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].to_vec()
}

impl Packages for SimPackages {
    fn list_upgradable(&self) -> Result<Vec<Upgradable>, PlatformError> {
        Ok(self.lock()?.pending.clone())
    }

    fn start_upgrade(&self) -> Result<UpgradeStatus, PlatformError> {
        {
            let mut state = self.lock()?;
            // Starting a running upgrade joins it, as `systemctl start` does.
            if !matches!(state.run, Run::Running { .. }) {
                let packages = state.pending.clone();
                state.run = Run::Running { since: Instant::now(), started_at: now(), packages };
            }
        }
        self.upgrade_status()
    }

    fn upgrade_status(&self) -> Result<UpgradeStatus, PlatformError> {
        let state = self.lock()?;
        Ok(match &state.run {
            Run::Idle => UpgradeStatus { state: "idle".into(), log_tail: Vec::new(), outcome: None },
            Run::Running { packages, started_at, .. } => UpgradeStatus {
                state: "running".into(),
                log_tail: tail(&apt_log(packages, false)),
                outcome: Some(outcome(started_at, packages, false)),
            },
            Run::Finished { log, outcome } => {
                UpgradeStatus { state: "succeeded".into(), log_tail: tail(log), outcome: Some(outcome.clone()) }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn three_packages_can_be_upgraded_and_one_is_a_security_update() {
        let packages = SimPackages::new().list_upgradable().unwrap();
        assert_eq!(packages.len(), 3);
        let security: Vec<&str> = packages.iter().filter(|p| p.security).map(|p| p.name.as_str()).collect();
        assert_eq!(security, ["libssl3"]);
        assert_eq!(packages[0].origin.as_deref(), Some("bookworm-security"));
    }

    #[test]
    fn nothing_runs_before_an_upgrade_is_started() {
        let status = SimPackages::new().upgrade_status().unwrap();
        assert_eq!(status, UpgradeStatus { state: "idle".into(), log_tail: Vec::new(), outcome: None });
    }

    #[test]
    fn an_upgrade_runs_then_succeeds_with_an_apt_log_and_leaves_nothing_to_upgrade() {
        let apt = SimPackages::with_upgrade_time(Duration::from_millis(200));
        let started = apt.start_upgrade().unwrap();
        assert_eq!(started.state, "running");
        let running = started.outcome.as_ref().unwrap();
        assert_eq!((running.result, running.finished_at.as_deref()), (UpgradeResult::Running, None));
        assert!(started.log_tail.contains(&"3 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.".into()));
        assert_eq!(apt.list_upgradable().unwrap().len(), 3);
        // Starting again while it runs joins the same upgrade.
        assert_eq!(apt.start_upgrade().unwrap().state, "running");
        std::thread::sleep(Duration::from_millis(300));
        let done = apt.upgrade_status().unwrap();
        assert_eq!(done.state, "succeeded");
        assert!(done.log_tail.len() <= LOG_TAIL_LINES);
        assert!(done.log_tail.contains(&"Setting up libssl3 (3.0.15-1~deb12u1) ...".into()), "{:?}", done.log_tail);
        let outcome = done.outcome.unwrap();
        assert_eq!(outcome.result, UpgradeResult::Succeeded);
        assert_eq!(outcome.started_at, running.started_at);
        assert_eq!(
            outcome.upgraded[0],
            PackageChange { name: "libssl3".into(), from: "3.0.14-1~deb12u2".into(), to: "3.0.15-1~deb12u1".into() }
        );
        assert_eq!(outcome.upgraded.len(), 3);
        assert!(apt.list_upgradable().unwrap().is_empty());
    }

    #[test]
    fn the_default_upgrade_takes_about_a_second() {
        let apt = SimPackages::new();
        apt.start_upgrade().unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(apt.upgrade_status().unwrap().state, "succeeded");
    }

    #[test]
    fn upgrading_again_with_nothing_pending_upgrades_nothing() {
        let apt = SimPackages::with_upgrade_time(Duration::ZERO);
        apt.start_upgrade().unwrap();
        assert_eq!(apt.upgrade_status().unwrap().state, "succeeded");
        apt.start_upgrade().unwrap();
        let again = apt.upgrade_status().unwrap();
        assert_eq!(again.state, "succeeded");
        assert_eq!(
            again.log_tail.last().map(String::as_str),
            Some("0 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.")
        );
        let outcome = again.outcome.unwrap();
        assert_eq!((outcome.result, outcome.upgraded.len()), (UpgradeResult::Succeeded, 0));
    }
}
