//! `version.json`: which release runs, which one last proved good, and how the last update
//! went. It lives in the state directory (`/var/lib/mcp-raspi/version.json`) and belongs to
//! the ops agent's user, which is the only one that changes `current`.
//!
//! Every path that moves `current` writes this file: the package's postinst (install and
//! apt upgrade), the self-update, the automatic rollback and `mcp-raspi manage rollback`,
//! so that they tell one story. It is written atomically (temporary file, fsync, rename,
//! fsync of the directory): after a crash a reader finds the old state or the new one.
//!
//! An update that is under way is recorded before each step that changes the install tree
//! (with the step it reached), so that whoever starts next can tell what happened: see
//! [`reconcile`].

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::release::{compare_versions, Owner};

/// The file's name in the state directory.
pub const STATE_FILE: &str = "version.json";
/// A larger file is not ours: refuse it rather than read it.
const MAX_STATE_BYTES: u64 = 64 * 1024;

/// How an update attempt stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpdateStatus {
    /// Started and not yet committed or rolled back.
    InProgress,
    /// The new release proved healthy and is the previous good version's successor.
    Succeeded,
    /// Stopped before `current` moved; the old release still runs.
    Failed,
    /// `current` moved and was moved back, automatically or by an operator.
    RolledBack,
}

impl UpdateStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateStatus::InProgress => "in_progress",
            UpdateStatus::Succeeded => "succeeded",
            UpdateStatus::Failed => "failed",
            UpdateStatus::RolledBack => "rolled_back",
        }
    }
}

/// The step an update in progress has reached. The order is the order of the steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Verifying the package and writing `releases/<version>`; `current` is untouched.
    Installing,
    /// About to move `current` to the new release.
    Switching,
    /// `current` names the new release; the services are being restarted.
    Restarting,
    /// The new release runs and must prove healthy.
    HealthCheck,
    /// Moving `current` back to the previous good release.
    RollingBack,
}

/// The last update attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LastUpdate {
    pub status: UpdateStatus,
    /// The version that ran before.
    pub from: Option<String>,
    /// The version the update went to (or tried to).
    pub to: String,
    /// What started it: `mcp` (manage.update_server), `cli` (mcp-raspi update), `package`
    /// (dpkg or apt), `rollback` (an operator's rollback).
    pub source: String,
    /// The step reached while in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// RFC 3339 UTC.
    pub started_at: String,
    /// RFC 3339 UTC; absent while in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Why it failed or was rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The content of `version.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VersionState {
    /// The release `current` names.
    pub current_version: Option<String>,
    /// The release that ran well before the current one: where a rollback goes.
    pub previous_good_version: Option<String>,
    /// The highest version ever installed here: updates go above it (or name it to retry it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub highest_installed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update: Option<LastUpdate>,
    /// Starts of the ops agent since `current` moved to an update not yet committed; past
    /// the limit the update is rolled back before the agent runs again.
    #[serde(default)]
    pub failed_starts: u32,
    /// What the last start found when `current` and this file disagreed, and what it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconciled: Option<String>,
    // The two counts are left out while 0, so files without them (written before they were
    // counted) read as 0; a release that does not know them drops them when it rewrites
    // the file, and counting starts again from 0.
    /// Rollbacks recorded in this file, automatic ones and operators'.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rollbacks: u64,
    /// Updates in a row that ended failed or rolled back; 0 again once one succeeds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub consecutive_failures: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Why `version.json` could not be read or written.
#[derive(Debug)]
pub enum StateError {
    /// Reading or writing failed.
    Io { action: &'static str, path: PathBuf, source: io::Error },
    /// The file is not a version state.
    Invalid { path: PathBuf, reason: String },
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::Io { action, path, source } => write!(f, "cannot {action} {}: {source}", path.display()),
            StateError::Invalid { path, reason } => write!(
                f,
                "{} is not a valid version state ({reason}); move it away and run `mcp-raspi release activate` \
                 with the version `current` should run",
                path.display()
            ),
        }
    }
}

impl std::error::Error for StateError {}

/// The time as written in the state, RFC 3339 UTC to the second.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl VersionState {
    /// Reads the state; `None` when the file does not exist.
    pub fn load(path: &Path) -> Result<Option<VersionState>, StateError> {
        let io_err = |action| move |source| StateError::Io { action, path: path.to_path_buf(), source };
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read")(e)),
        };
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(file, MAX_STATE_BYTES + 1), &mut bytes).map_err(io_err("read"))?;
        if bytes.len() as u64 > MAX_STATE_BYTES {
            let reason = format!("it is larger than {MAX_STATE_BYTES} bytes");
            return Err(StateError::Invalid { path: path.to_path_buf(), reason });
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateError::Invalid { path: path.to_path_buf(), reason: e.to_string() })
    }

    /// Writes the state atomically, mode 0644, given to `owner` when set (root writing the
    /// file of the agent's user).
    pub fn store(&self, path: &Path, owner: Option<Owner>) -> Result<(), StateError> {
        let mut bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| StateError::Invalid { path: path.to_path_buf(), reason: e.to_string() })?;
        bytes.push(b'\n');
        write_atomically(path, &bytes, 0o644, owner)
    }

    /// Whether an update is under way (started and neither committed nor rolled back).
    pub fn in_progress(&self) -> Option<&LastUpdate> {
        self.last_update.as_ref().filter(|u| u.status == UpdateStatus::InProgress)
    }

    /// Raises the highest installed version to `version` when it is higher.
    pub fn saw_installed(&mut self, version: &str) {
        let higher = match &self.highest_installed {
            Some(h) => compare_versions(version, h).is_gt(),
            None => true,
        };
        if higher {
            self.highest_installed = Some(version.to_string());
        }
    }

    /// Marks the update in progress as ended, and counts how it ended.
    pub fn finish(&mut self, status: UpdateStatus, reason: Option<String>) {
        if let Some(update) = self.last_update.as_mut() {
            // Counted once per update: only the end of one that was under way.
            if update.status == UpdateStatus::InProgress {
                match status {
                    UpdateStatus::Succeeded => self.consecutive_failures = 0,
                    UpdateStatus::Failed => self.consecutive_failures = self.consecutive_failures.saturating_add(1),
                    UpdateStatus::RolledBack => {
                        self.rollbacks = self.rollbacks.saturating_add(1);
                        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                    }
                    UpdateStatus::InProgress => {}
                }
            }
            update.status = status;
            update.phase = None;
            update.finished_at = Some(now());
            update.reason = reason;
        }
        self.failed_starts = 0;
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory: written,
/// synced, renamed over `path`, and the directory synced, so that a reader finds the old
/// file or the new one, whole, even after a power cut.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32, owner: Option<Owner>) -> Result<(), StateError> {
    write_atomically_from(path, bytes, mode, owner)
}

/// [`write_atomically`] of what `data` reads, for contents too large to hold in memory.
pub fn write_atomically_from(
    path: &Path,
    data: impl std::io::Read,
    mode: u32,
    owner: Option<Owner>,
) -> Result<(), StateError> {
    write_atomically_then(path, data, mode, owner, || Ok(()))
}

/// [`write_atomically_from`], running `before_rename` once the new file is written and
/// synced and just before it replaces `path`: to remove files that belong to the old one
/// and would be wrong beside the new one. When it fails, `path` is left as it was.
pub fn write_atomically_then(
    path: &Path,
    mut data: impl std::io::Read,
    mode: u32,
    owner: Option<Owner>,
    before_rename: impl FnOnce() -> Result<(), StateError>,
) -> Result<(), StateError> {
    let io_err = |action| move |source| StateError::Io { action, path: path.to_path_buf(), source };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let _ = fs::remove_file(&tmp);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io_err("create a temporary file beside"))?;
        std::io::copy(&mut data, &mut file).map_err(io_err("write"))?;
        if let Some(o) = owner {
            std::os::unix::fs::fchown(&file, Some(o.uid), Some(o.gid)).map_err(io_err("change the owner of"))?;
        }
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode)).map_err(io_err("set the mode of"))?;
        file.sync_all().map_err(io_err("sync"))?;
        before_rename()?;
        fs::rename(&tmp, path).map_err(io_err("replace"))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("sync the directory of"))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// What a start must do after comparing `version.json` with the `current` link.
#[derive(Debug, PartialEq, Eq)]
pub enum Reconciled {
    /// State and link agree and nothing is under way.
    Consistent,
    /// The state was corrected to match the link, or an interrupted update was closed;
    /// store the new state.
    Corrected(String),
    /// An update switched `current` and the new release must prove healthy (or be rolled
    /// back); the state says which.
    HealthCheckDue,
    /// A rollback was interrupted after it began: `current` must go back to this version.
    FinishRollback(String),
    /// `current` names no release: it must be pointed at this installed version.
    RepairCurrent(String),
}

/// Compares the state with what `current` names (`link`, `None` when there is no link) and
/// the installed releases, fixing the state in place where the answer is certain:
///
/// - an update interrupted before `current` moved failed (the old release runs);
/// - one interrupted after the move goes on to the health check;
/// - an interrupted rollback is finished;
/// - with no update under way, the link is the truth: the release that runs is the one
///   `current` names (after a restore from backup or a hand edit), and the state follows it;
/// - when `current` is missing, it is rebuilt from the state when that release is installed.
pub fn reconcile(state: &mut VersionState, link: Option<&str>, installed: &[String]) -> Reconciled {
    let is_installed = |v: &str| installed.iter().any(|i| i == v);
    if let Some(update) = state.in_progress().cloned() {
        let phase = update.phase.unwrap_or(Phase::Installing);
        let at_new = link == Some(update.to.as_str());
        let at_old = link.is_some() && link == update.from.as_deref();
        match phase {
            Phase::RollingBack if at_new => {
                if let Some(from) = update.from.clone().filter(|f| is_installed(f)) {
                    return Reconciled::FinishRollback(from);
                }
            }
            Phase::RollingBack if at_old => {
                state.current_version = update.from.clone();
                let reason = update.reason.clone().unwrap_or_else(|| "rolled back".into());
                state.finish(UpdateStatus::RolledBack, Some(reason));
                return Reconciled::Corrected(format!("finished the interrupted rollback to {}", link.unwrap_or("")));
            }
            Phase::Installing | Phase::Switching if !at_new => {
                state.finish(
                    UpdateStatus::Failed,
                    Some(format!("interrupted while {} {}; {} still runs", describe(phase), update.to, show(link))),
                );
                return Reconciled::Corrected(format!(
                    "closed the update to {} interrupted before the switch",
                    update.to
                ));
            }
            Phase::Switching | Phase::Restarting | Phase::HealthCheck if at_new => {
                state.current_version = Some(update.to.clone());
                return Reconciled::HealthCheckDue;
            }
            _ => {}
        }
        // The link names neither side of the update: someone else moved it (a package
        // install did, and wrote the state itself, or an operator did by hand).
        state.finish(
            UpdateStatus::Failed,
            Some(format!("current was moved to {} by something else during the update", show(link))),
        );
    }
    match link {
        Some(version) if state.current_version.as_deref() == Some(version) => Reconciled::Consistent,
        Some(version) => {
            let was = state.current_version.replace(version.to_string());
            if state.previous_good_version.as_deref().is_some_and(|p| p == version || !is_installed(p)) {
                state.previous_good_version = None;
            }
            state.saw_installed(version);
            let note = match was {
                Some(was) => {
                    format!("version.json said {was} but current names {version}; the state now follows current")
                }
                None => format!("version.json named no version; current names {version}"),
            };
            state.reconciled = Some(format!("{}: {note}", now()));
            Reconciled::Corrected(note)
        }
        None => match state.current_version.clone().filter(|v| is_installed(v)) {
            Some(version) => Reconciled::RepairCurrent(version),
            None => Reconciled::Consistent,
        },
    }
}

fn describe(phase: Phase) -> &'static str {
    match phase {
        Phase::Installing => "installing",
        Phase::Switching => "switching to",
        Phase::Restarting => "restarting into",
        Phase::HealthCheck => "checking the health of",
        Phase::RollingBack => "rolling back from",
    }
}

fn show(link: Option<&str>) -> String {
    link.map_or_else(|| "no release".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn update(status: UpdateStatus, phase: Option<Phase>) -> LastUpdate {
        LastUpdate {
            status,
            from: Some("0.1.0".into()),
            to: "0.2.0".into(),
            source: "mcp".into(),
            phase,
            started_at: now(),
            finished_at: None,
            reason: None,
        }
    }

    fn pending(phase: Phase) -> VersionState {
        VersionState {
            current_version: Some("0.1.0".into()),
            previous_good_version: None,
            highest_installed: Some("0.2.0".into()),
            last_update: Some(update(UpdateStatus::InProgress, Some(phase))),
            ..VersionState::default()
        }
    }

    fn installed() -> Vec<String> {
        vec!["0.1.0".into(), "0.2.0".into()]
    }

    #[test]
    fn the_state_is_written_atomically_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        assert_eq!(VersionState::load(&path).unwrap(), None);
        let state = pending(Phase::Restarting);
        state.store(&path, None).unwrap();
        assert_eq!(VersionState::load(&path).unwrap(), Some(state));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "a temporary file was left behind");
    }

    #[test]
    fn a_file_that_is_not_a_state_is_reported_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        fs::write(&path, "{\"current_version\": 3}").unwrap();
        let err = VersionState::load(&path).unwrap_err().to_string();
        assert!(err.contains("not a valid version state") && err.contains("move it away"), "{err}");
        fs::write(&path, vec![b' '; 70 * 1024]).unwrap();
        assert!(VersionState::load(&path).unwrap_err().to_string().contains("larger than"));
    }

    #[test]
    fn the_state_file_of_an_earlier_release_is_still_read() {
        let text = r#"{"current_version":"0.1.0","previous_good_version":null}"#;
        let state: VersionState = serde_json::from_str(text).unwrap();
        assert_eq!(state.current_version.as_deref(), Some("0.1.0"));
        assert_eq!(state.failed_starts, 0);
        assert_eq!((state.rollbacks, state.consecutive_failures), (0, 0));
        let written = serde_json::to_string(&state).unwrap();
        assert!(!written.contains("rollbacks") && !written.contains("consecutive_failures"), "{written}");
    }

    #[test]
    fn an_update_interrupted_before_the_switch_is_closed_as_failed() {
        for phase in [Phase::Installing, Phase::Switching] {
            let mut state = pending(phase);
            let action = reconcile(&mut state, Some("0.1.0"), &installed());
            assert!(matches!(action, Reconciled::Corrected(_)), "{phase:?}: {action:?}");
            let last = state.last_update.unwrap();
            assert_eq!(last.status, UpdateStatus::Failed);
            assert!(last.reason.unwrap().contains("0.1.0 still runs"));
            assert_eq!(state.current_version.as_deref(), Some("0.1.0"));
        }
    }

    #[test]
    fn an_update_interrupted_after_the_switch_goes_on_to_the_health_check() {
        for phase in [Phase::Switching, Phase::Restarting, Phase::HealthCheck] {
            let mut state = pending(phase);
            assert_eq!(reconcile(&mut state, Some("0.2.0"), &installed()), Reconciled::HealthCheckDue);
            assert_eq!(state.current_version.as_deref(), Some("0.2.0"));
            assert_eq!(state.in_progress().unwrap().to, "0.2.0");
        }
    }

    #[test]
    fn an_interrupted_rollback_is_finished() {
        let mut state = pending(Phase::RollingBack);
        assert_eq!(reconcile(&mut state, Some("0.2.0"), &installed()), Reconciled::FinishRollback("0.1.0".into()));
        let mut state = pending(Phase::RollingBack);
        assert!(matches!(reconcile(&mut state, Some("0.1.0"), &installed()), Reconciled::Corrected(_)));
        assert_eq!(state.last_update.unwrap().status, UpdateStatus::RolledBack);
    }

    #[test]
    fn with_no_update_under_way_the_state_follows_the_link() {
        let mut state = VersionState {
            current_version: Some("0.1.0".into()),
            previous_good_version: Some("0.0.9".into()),
            ..VersionState::default()
        };
        let action = reconcile(&mut state, Some("0.2.0"), &installed());
        assert!(matches!(action, Reconciled::Corrected(ref n) if n.contains("said 0.1.0")), "{action:?}");
        assert_eq!(state.current_version.as_deref(), Some("0.2.0"));
        // 0.0.9 is not installed any more, so it cannot be rolled back to.
        assert_eq!(state.previous_good_version, None);
        assert_eq!(state.highest_installed.as_deref(), Some("0.2.0"));
        assert!(state.reconciled.is_some());
        assert_eq!(reconcile(&mut state, Some("0.2.0"), &installed()), Reconciled::Consistent);
    }

    #[test]
    fn a_missing_link_is_rebuilt_from_the_state_when_that_release_is_installed() {
        let mut state = VersionState { current_version: Some("0.2.0".into()), ..VersionState::default() };
        assert_eq!(reconcile(&mut state, None, &installed()), Reconciled::RepairCurrent("0.2.0".into()));
        let mut state = VersionState { current_version: Some("0.9.0".into()), ..VersionState::default() };
        assert_eq!(reconcile(&mut state, None, &installed()), Reconciled::Consistent);
    }

    #[test]
    fn a_link_moved_by_something_else_during_an_update_closes_it() {
        let mut state = pending(Phase::Restarting);
        let action = reconcile(&mut state, Some("0.3.0"), &["0.3.0".to_string()]);
        assert!(matches!(action, Reconciled::Corrected(_)), "{action:?}");
        assert_eq!(state.last_update.as_ref().unwrap().status, UpdateStatus::Failed);
        assert_eq!(state.current_version.as_deref(), Some("0.3.0"));
    }

    #[test]
    fn rollbacks_and_failures_in_a_row_are_counted_once_per_update_and_a_success_clears_the_failures() {
        let mut state = pending(Phase::HealthCheck);
        state.finish(UpdateStatus::RolledBack, Some("unhealthy".into()));
        // Finishing again what already ended counts nothing.
        state.finish(UpdateStatus::RolledBack, Some("unhealthy".into()));
        assert_eq!((state.rollbacks, state.consecutive_failures), (1, 1));
        state.last_update = Some(update(UpdateStatus::InProgress, Some(Phase::Installing)));
        state.finish(UpdateStatus::Failed, Some("bad signature".into()));
        assert_eq!((state.rollbacks, state.consecutive_failures), (1, 2));
        state.last_update = Some(update(UpdateStatus::InProgress, Some(Phase::HealthCheck)));
        state.finish(UpdateStatus::Succeeded, None);
        assert_eq!((state.rollbacks, state.consecutive_failures), (1, 0));
        // Both are written when set, and read back.
        let text = serde_json::to_string(&state).unwrap();
        assert!(text.contains("\"rollbacks\":1") && !text.contains("consecutive_failures"), "{text}");
        assert_eq!(serde_json::from_str::<VersionState>(&text).unwrap(), state);
    }

    #[test]
    fn the_highest_installed_version_only_rises() {
        let mut state = VersionState::default();
        state.saw_installed("0.2.0");
        state.saw_installed("0.1.0");
        state.saw_installed("0.10.0");
        assert_eq!(state.highest_installed.as_deref(), Some("0.10.0"));
    }
}
