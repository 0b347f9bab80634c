//! Moving `current` and telling `version.json` about it, as one operation: every path that
//! switches releases (the package's postinst, the self-update, the health check's commit or
//! rollback, an operator's rollback) goes through [`Installation`], so that the link and the
//! state file never tell two stories.
//!
//! The order of writes is what makes a crash at any point recoverable: the state names the
//! step an update is about to take *before* the tree changes, and [`super::state::reconcile`]
//! reads the link and the state together at the next start.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Serialize;

use super::release::{self, Owner, ReleaseError};
use super::state::{self, LastUpdate, Phase, Reconciled, StateError, UpdateStatus, VersionState, STATE_FILE};

/// Why switching releases failed.
#[derive(Debug)]
pub enum SwitchError {
    /// The install tree refused.
    Release(ReleaseError),
    /// `version.json` could not be read or written.
    State(StateError),
    /// The operation does not apply to the installation as it is.
    Refused(String),
}

impl std::fmt::Display for SwitchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SwitchError::Release(e) => e.fmt(f),
            SwitchError::State(e) => e.fmt(f),
            SwitchError::Refused(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for SwitchError {}

impl From<ReleaseError> for SwitchError {
    fn from(e: ReleaseError) -> Self {
        SwitchError::Release(e)
    }
}

impl From<StateError> for SwitchError {
    fn from(e: StateError) -> Self {
        SwitchError::State(e)
    }
}

/// The update lock's file, beside the state file.
const LOCK_FILE: &str = ".update.lock";

/// Held while an update or a rollback changes the tree; released when dropped, or when the
/// process dies.
#[derive(Debug)]
pub struct UpdateLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// An installed release, as `manage.list_versions` shows it.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct InstalledRelease {
    pub version: String,
    /// Bytes its files take.
    pub size_bytes: u64,
    /// `current` names it: the services run it.
    pub current: bool,
    /// The release a rollback goes to.
    pub previous_good: bool,
    /// Pruning never removes it (it is current or previous good).
    pub protected: bool,
}

/// The install root and the state file, and who owns what is written there.
#[derive(Clone, Debug)]
pub struct Installation {
    pub install_root: PathBuf,
    pub state_path: PathBuf,
    /// When root writes (the postinst, `mcp-raspi`), the agent's user is given what is
    /// created, so that the agent can go on managing it.
    pub owner: Option<Owner>,
    pub keep_versions: usize,
}

impl Installation {
    pub fn new(install_root: &Path, state_dir: &Path, owner: Option<Owner>, keep_versions: usize) -> Installation {
        Installation {
            install_root: install_root.to_path_buf(),
            state_path: state_dir.join(STATE_FILE),
            owner,
            keep_versions,
        }
    }

    /// The state, or an empty one when the file does not exist yet.
    pub fn state(&self) -> Result<VersionState, SwitchError> {
        Ok(VersionState::load(&self.state_path)?.unwrap_or_default())
    }

    fn store(&self, state: &VersionState) -> Result<(), SwitchError> {
        Ok(state.store(&self.state_path, self.owner)?)
    }

    /// The version `current` names.
    pub fn current(&self) -> Result<Option<String>, SwitchError> {
        Ok(release::current_version(&self.install_root)?)
    }

    /// Compares the state with the link at start and repairs what can be repaired: see
    /// [`state::reconcile`]. Returns what was found, after storing any correction.
    ///
    /// While another process holds the update lock (an install under way), nothing is
    /// changed: its record is not stale.
    pub fn reconcile(&self) -> Result<(Reconciled, VersionState), SwitchError> {
        match self.lock() {
            Ok(_lock) => self.reconcile_locked(),
            Err(SwitchError::Refused(_)) => Ok((Reconciled::Consistent, self.state()?)),
            Err(e) => Err(e),
        }
    }

    fn reconcile_locked(&self) -> Result<(Reconciled, VersionState), SwitchError> {
        let mut state = self.state()?;
        let before = state.clone();
        let link = self.current()?;
        let installed = release::list_releases(&self.install_root)?;
        let found = state::reconcile(&mut state, link.as_deref(), &installed);
        match &found {
            Reconciled::RepairCurrent(version) => {
                release::flip_current_owned(&self.install_root, version, self.owner)?;
                state.reconciled = Some(format!("{}: current was missing; it names {version} again", state::now()));
            }
            Reconciled::FinishRollback(version) => {
                release::flip_current_owned(&self.install_root, version, self.owner)?;
                state.current_version = Some(version.clone());
                let reason = state.in_progress().and_then(|u| u.reason.clone());
                state.finish(UpdateStatus::RolledBack, reason.or_else(|| Some("rolled back".into())));
            }
            Reconciled::Consistent | Reconciled::Corrected(_) | Reconciled::HealthCheckDue => {}
        }
        if state != before {
            self.store(&state)?;
        }
        Ok((found, state))
    }

    /// Records what the package manager installed: `version` is installed and becomes
    /// current (the postinst, on install and on upgrade). The release that ran before is
    /// the previous good one, since it ran until the package replaced it.
    pub fn record_package_install(&self, version: &str) -> Result<Option<String>, SwitchError> {
        let mut state = self.state()?;
        let previous = release::flip_current_owned(&self.install_root, version, self.owner)?;
        if let Some(update) = state.in_progress().cloned() {
            let reason = format!("the package manager installed {version} during the update to {}", update.to);
            state.finish(UpdateStatus::Failed, Some(reason));
        }
        if previous.as_deref() != Some(version) {
            let started = state::now();
            state.last_update = Some(LastUpdate {
                status: UpdateStatus::Succeeded,
                from: previous.clone(),
                to: version.to_string(),
                source: "package".into(),
                phase: None,
                started_at: started.clone(),
                finished_at: Some(started),
                reason: None,
            });
            if previous.is_some() {
                state.previous_good_version = previous.clone();
            }
            // A package installed is an update that succeeded.
            state.consecutive_failures = 0;
        }
        state.current_version = Some(version.to_string());
        state.saw_installed(version);
        state.failed_starts = 0;
        self.store(&state)?;
        self.prune(&state)?;
        Ok(previous)
    }

    /// Takes the update lock, held by whoever installs or rolls back until `current` has
    /// moved: a record of an update in progress whose lock is free was left by a process
    /// that died, and may be reconciled.
    pub fn lock(&self) -> Result<UpdateLock, SwitchError> {
        use nix::fcntl::{Flock, FlockArg};
        let path = self.state_path.with_file_name(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|source| StateError::Io { action: "open", path: path.clone(), source })?;
        if let Some(o) = self.owner {
            // Root creates it for the agent, which must be able to take it later.
            std::os::unix::fs::fchown(&file, Some(o.uid), Some(o.gid)).map_err(|source| StateError::Io {
                action: "change the owner of",
                path: path.clone(),
                source,
            })?;
        }
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(UpdateLock { _lock: lock }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(SwitchError::Refused(
                "another update or rollback is being installed right now; wait for it to end".into(),
            )),
            Err((_, errno)) => Err(StateError::Io { action: "lock", path, source: errno.into() }.into()),
        }
    }

    /// Records that an update to `to` starts (before anything is written to the tree), and
    /// refuses when another one is under way. The caller holds the update lock.
    pub fn begin(&self, _lock: &UpdateLock, to: &str, source: &str) -> Result<VersionState, SwitchError> {
        let (_, mut state) = self.reconcile_locked()?;
        if let Some(update) = state.in_progress() {
            return Err(SwitchError::Refused(format!(
                "an update to {} is already under way (started {}, {}); wait for it to end, or roll back",
                update.to,
                update.started_at,
                update.phase.map_or("starting", phase_name)
            )));
        }
        state.last_update = Some(LastUpdate {
            status: UpdateStatus::InProgress,
            from: self.current()?,
            to: to.to_string(),
            source: source.to_string(),
            phase: Some(Phase::Installing),
            started_at: state::now(),
            finished_at: None,
            reason: None,
        });
        self.store(&state)?;
        Ok(state)
    }

    /// Ends the update under way as failed, before `current` moved.
    pub fn fail(&self, reason: &str) -> Result<(), SwitchError> {
        let mut state = self.state()?;
        if state.in_progress().is_some() {
            state.finish(UpdateStatus::Failed, Some(reason.to_string()));
            self.store(&state)?;
        }
        Ok(())
    }

    /// Moves `current` to the installed release the update under way goes to. The state
    /// says `switching` before the link moves and `restarting` after.
    pub fn switch(&self) -> Result<VersionState, SwitchError> {
        self.switch_observed(&mut || {})
    }

    /// [`Self::switch`], calling `before_flip` once the state says `switching`, just before
    /// the link moves (a seam for the tests that interrupt an update).
    pub fn switch_observed(&self, before_flip: &mut dyn FnMut()) -> Result<VersionState, SwitchError> {
        let mut state = self.state()?;
        let to = state
            .in_progress()
            .map(|u| u.to.clone())
            .ok_or_else(|| SwitchError::Refused("no update is under way".into()))?;
        set_phase(&mut state, Phase::Switching);
        self.store(&state)?;
        before_flip();
        release::flip_current_owned(&self.install_root, &to, self.owner)?;
        state.current_version = Some(to.clone());
        state.saw_installed(&to);
        state.failed_starts = 0;
        set_phase(&mut state, Phase::Restarting);
        self.store(&state)?;
        Ok(state)
    }

    /// Marks the health check as begun (the new release runs).
    pub fn checking(&self) -> Result<VersionState, SwitchError> {
        let mut state = self.state()?;
        set_phase(&mut state, Phase::HealthCheck);
        self.store(&state)?;
        Ok(state)
    }

    /// Counts one more start of the agent during an update not yet committed; returns the
    /// count (0 when nothing is under way).
    pub fn count_start(&self) -> Result<u32, SwitchError> {
        let mut state = self.state()?;
        if state.in_progress().is_none() {
            return Ok(0);
        }
        state.failed_starts = state.failed_starts.saturating_add(1);
        self.store(&state)?;
        Ok(state.failed_starts)
    }

    /// The new release proved healthy: the release it replaced becomes the previous good
    /// one, and old releases are pruned.
    pub fn commit(&self) -> Result<VersionState, SwitchError> {
        let mut state = self.state()?;
        let update = state
            .in_progress()
            .cloned()
            .ok_or_else(|| SwitchError::Refused("no update is under way to commit".into()))?;
        if update.from.as_deref() != Some(update.to.as_str()) {
            state.previous_good_version = update.from.clone();
        }
        state.current_version = Some(update.to.clone());
        state.finish(UpdateStatus::Succeeded, None);
        self.store(&state)?;
        self.prune(&state)?;
        Ok(state)
    }

    /// Moves `current` back: to `to` when given (an installed release), else to the
    /// previous good version. An update under way ends as rolled back with `reason`; with
    /// none under way, the rollback is recorded as an update of its own (`source`).
    pub fn rollback(&self, to: Option<&str>, reason: &str, source: &str) -> Result<VersionState, SwitchError> {
        let _lock = self.lock()?;
        let (_, mut state) = self.reconcile_locked()?;
        let current = self.current()?;
        let installed = release::list_releases(&self.install_root)?;
        let pending = state.in_progress().cloned();
        let target = match (to, &pending) {
            (Some(v), _) => v.to_string(),
            (None, Some(update)) => update.from.clone().or_else(|| state.previous_good_version.clone()).ok_or_else(
                || SwitchError::Refused(format!("the update to {} records no version to go back to", update.to)),
            )?,
            (None, None) => state.previous_good_version.clone().ok_or_else(|| {
                SwitchError::Refused(format!(
                    "no previous good version is recorded in {}; name one of the installed releases ({}) to roll back to",
                    self.state_path.display(),
                    installed.join(", ")
                ))
            })?,
        };
        if !installed.contains(&target) {
            return Err(SwitchError::Refused(format!(
                "{target} is not installed under {}; installed: {}",
                self.install_root.join(release::RELEASES_DIR).display(),
                installed.join(", ")
            )));
        }
        if current.as_deref() == Some(target.as_str()) && pending.is_none() {
            return Err(SwitchError::Refused(format!("{target} is already the current release")));
        }
        match pending {
            Some(_) => {
                set_phase(&mut state, Phase::RollingBack);
                if let Some(u) = state.last_update.as_mut() {
                    u.reason = Some(reason.to_string());
                }
            }
            None => {
                state.last_update = Some(LastUpdate {
                    status: UpdateStatus::InProgress,
                    from: current.clone(),
                    to: target.clone(),
                    source: source.to_string(),
                    phase: Some(Phase::RollingBack),
                    started_at: state::now(),
                    finished_at: None,
                    reason: Some(reason.to_string()),
                });
            }
        }
        self.store(&state)?;
        release::flip_current_owned(&self.install_root, &target, self.owner)?;
        // The release left behind stays installed; the one rolled back to proved good before.
        if state.previous_good_version.as_deref() == Some(target.as_str()) {
            state.previous_good_version = None;
        }
        state.current_version = Some(target);
        state.finish(UpdateStatus::RolledBack, Some(reason.to_string()));
        self.store(&state)?;
        Ok(state)
    }

    /// The installed releases, oldest first, with what protects them from pruning.
    pub fn list(&self) -> Result<Vec<InstalledRelease>, SwitchError> {
        if !self.install_root.exists() {
            return Ok(Vec::new());
        }
        let state = self.state()?;
        let current = self.current()?;
        let mut out = Vec::new();
        for version in release::list_releases(&self.install_root)? {
            let is_current = current.as_deref() == Some(version.as_str());
            let previous_good = state.previous_good_version.as_deref() == Some(version.as_str());
            out.push(InstalledRelease {
                size_bytes: release::release_size(&self.install_root, &version)?,
                current: is_current,
                previous_good,
                protected: is_current || previous_good,
                version,
            });
        }
        Ok(out)
    }

    fn prune(&self, state: &VersionState) -> Result<Vec<String>, SwitchError> {
        let protect: Vec<&str> = state.previous_good_version.iter().map(String::as_str).collect();
        Ok(release::prune_protecting(&self.install_root, self.keep_versions, &protect)?)
    }
}

fn set_phase(state: &mut VersionState, phase: Phase) {
    if let Some(update) = state.last_update.as_mut() {
        update.phase = Some(phase);
    }
}

/// The phase as written in the state.
pub fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Installing => "installing",
        Phase::Switching => "switching",
        Phase::Restarting => "restarting",
        Phase::HealthCheck => "health_check",
        Phase::RollingBack => "rolling_back",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::fs;

    use super::*;

    fn installation(dir: &Path, versions: &[&str]) -> Installation {
        let root = dir.join("opt");
        for v in versions {
            let payload = dir.join(format!("payload-{v}"));
            fs::create_dir_all(payload.join("bin")).unwrap();
            fs::write(payload.join("bin/mcp-raspi-server"), format!("server {v}")).unwrap();
            release::install_release(&payload, &root, v).unwrap();
        }
        fs::create_dir_all(dir.join("state")).unwrap();
        Installation::new(&root, &dir.join("state"), None, 2)
    }

    #[test]
    fn a_package_install_records_the_version_and_the_previous_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let inst = installation(dir.path(), &["0.1.0", "0.2.0"]);
        assert_eq!(inst.record_package_install("0.1.0").unwrap(), None);
        let state = inst.state().unwrap();
        assert_eq!(state.current_version.as_deref(), Some("0.1.0"));
        assert_eq!(state.previous_good_version, None);
        assert_eq!(inst.record_package_install("0.2.0").unwrap().as_deref(), Some("0.1.0"));
        let state = inst.state().unwrap();
        assert_eq!(state.current_version.as_deref(), Some("0.2.0"));
        assert_eq!(state.previous_good_version.as_deref(), Some("0.1.0"));
        let last = state.last_update.unwrap();
        assert_eq!(
            (last.status, last.source.as_str(), last.from.as_deref()),
            (UpdateStatus::Succeeded, "package", Some("0.1.0"))
        );
        // Configuring the same version again changes nothing.
        inst.record_package_install("0.2.0").unwrap();
        assert_eq!(inst.state().unwrap().previous_good_version.as_deref(), Some("0.1.0"));
    }

    #[test]
    fn an_update_switches_commits_and_keeps_the_old_release_as_previous_good() {
        let dir = tempfile::tempdir().unwrap();
        let inst = installation(dir.path(), &["0.1.0", "0.2.0"]);
        inst.record_package_install("0.1.0").unwrap();
        let lock = inst.lock().unwrap();
        inst.begin(&lock, "0.2.0", "mcp").unwrap();
        assert!(inst.lock().unwrap_err().to_string().contains("being installed right now"));
        let state = inst.switch().unwrap();
        drop(lock);
        let lock = inst.lock().unwrap();
        assert!(inst.begin(&lock, "0.2.0", "mcp").unwrap_err().to_string().contains("already under way"));
        assert_eq!(state.in_progress().unwrap().phase, Some(Phase::Restarting));
        assert_eq!(inst.current().unwrap().as_deref(), Some("0.2.0"));
        assert_eq!(inst.count_start().unwrap(), 1);
        let state = inst.commit().unwrap();
        assert_eq!(state.previous_good_version.as_deref(), Some("0.1.0"));
        assert_eq!(state.last_update.as_ref().unwrap().status, UpdateStatus::Succeeded);
        assert_eq!(state.failed_starts, 0);
        assert_eq!(inst.count_start().unwrap(), 0);
    }

    #[test]
    fn a_rollback_during_an_update_returns_to_the_release_it_left() {
        let dir = tempfile::tempdir().unwrap();
        let inst = installation(dir.path(), &["0.1.0", "0.2.0"]);
        inst.record_package_install("0.1.0").unwrap();
        inst.begin(&inst.lock().unwrap(), "0.2.0", "mcp").unwrap();
        inst.switch().unwrap();
        let state = inst.rollback(None, "the server did not answer /healthz within 90 s", "health").unwrap();
        assert_eq!(inst.current().unwrap().as_deref(), Some("0.1.0"));
        let last = state.last_update.unwrap();
        assert_eq!(last.status, UpdateStatus::RolledBack);
        assert!(last.reason.unwrap().contains("/healthz"));
        assert_eq!(state.current_version.as_deref(), Some("0.1.0"));
        // The failed release stays installed, but the highest version ever installed is kept.
        assert_eq!(state.highest_installed.as_deref(), Some("0.2.0"));
        // Counted in version.json, for monitoring; the next package install clears the failures.
        let stored = inst.state().unwrap();
        assert_eq!((stored.rollbacks, stored.consecutive_failures), (1, 1));
        inst.record_package_install("0.2.0").unwrap();
        let stored = inst.state().unwrap();
        assert_eq!((stored.rollbacks, stored.consecutive_failures), (1, 0));
    }

    #[test]
    fn an_operator_rollback_goes_to_the_previous_good_version_or_a_named_one() {
        let dir = tempfile::tempdir().unwrap();
        let inst = installation(dir.path(), &["0.1.0", "0.2.0", "0.3.0"]);
        inst.record_package_install("0.1.0").unwrap();
        inst.record_package_install("0.2.0").unwrap();
        inst.rollback(None, "operator", "rollback").unwrap();
        assert_eq!(inst.current().unwrap().as_deref(), Some("0.1.0"));
        let err = inst.rollback(None, "operator", "rollback").unwrap_err().to_string();
        assert!(err.contains("no previous good version") && err.contains("0.3.0"), "{err}");
        inst.rollback(Some("0.3.0"), "operator", "rollback").unwrap();
        assert_eq!(inst.current().unwrap().as_deref(), Some("0.3.0"));
        let err = inst.rollback(Some("0.9.0"), "operator", "rollback").unwrap_err().to_string();
        assert!(err.contains("0.9.0 is not installed"), "{err}");
        assert_eq!(inst.current().unwrap().as_deref(), Some("0.3.0"));
    }

    #[test]
    fn listing_marks_current_previous_good_and_protected_releases() {
        let dir = tempfile::tempdir().unwrap();
        let inst = installation(dir.path(), &["0.1.0", "0.2.0"]);
        inst.record_package_install("0.1.0").unwrap();
        inst.record_package_install("0.2.0").unwrap();
        let list = inst.list().unwrap();
        assert_eq!(list.len(), 2);
        assert!(list[0].previous_good && list[0].protected && !list[0].current);
        assert!(list[1].current && list[1].protected);
        assert_eq!(list[1].size_bytes, "server 0.2.0".len() as u64);
    }

    #[test]
    fn pruning_after_a_commit_keeps_the_previous_good_release() {
        let dir = tempfile::tempdir().unwrap();
        let inst = Installation { keep_versions: 1, ..installation(dir.path(), &["0.1.0", "0.2.0", "0.3.0"]) };
        inst.record_package_install("0.1.0").unwrap();
        inst.begin(&inst.lock().unwrap(), "0.3.0", "mcp").unwrap();
        inst.switch().unwrap();
        inst.commit().unwrap();
        assert_eq!(release::list_releases(&inst.install_root).unwrap(), ["0.1.0", "0.3.0"]);
    }

    #[test]
    fn a_missing_current_link_is_rebuilt_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let inst = installation(dir.path(), &["0.1.0"]);
        inst.record_package_install("0.1.0").unwrap();
        fs::remove_file(inst.install_root.join("current")).unwrap();
        let (found, _) = inst.reconcile().unwrap();
        assert_eq!(found, Reconciled::RepairCurrent("0.1.0".into()));
        assert_eq!(inst.current().unwrap().as_deref(), Some("0.1.0"));
    }
}

#[cfg(test)]
mod interrupted {
    #![allow(clippy::unwrap_used)]

    use std::fs;

    use super::*;

    #[test]
    fn an_install_whose_process_died_is_closed_as_failed_when_the_next_one_begins() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("opt");
        for v in ["0.1.0", "0.2.0"] {
            let payload = dir.path().join(v);
            fs::create_dir_all(payload.join("bin")).unwrap();
            release::install_release(&payload, &root, v).unwrap();
        }
        fs::create_dir_all(dir.path().join("state")).unwrap();
        let inst = Installation::new(&root, &dir.path().join("state"), None, 3);
        inst.record_package_install("0.1.0").unwrap();
        {
            let lock = inst.lock().unwrap();
            inst.begin(&lock, "0.2.0", "cli").unwrap();
        }
        // The lock is free again (its holder is gone): the record is stale.
        let lock = inst.lock().unwrap();
        inst.begin(&lock, "0.2.0", "cli").unwrap();
        let state = inst.state().unwrap();
        assert_eq!(state.in_progress().unwrap().source, "cli");
    }
}
