//! OS packages through apt: listing what can be upgraded, and upgrading by starting a root
//! one-shot unit.
//!
//! The agent is not root and cannot run `apt upgrade` itself. The package ships a one-shot
//! unit (by default `mcp-raspi-os-upgrade.service`) whose command the agent cannot alter;
//! polkit lets the agent start that unit. How the upgrade is doing is read from systemd
//! (the unit's state), the journal (its last lines) and the record its program
//! (`mcp-raspi os-upgrade`) keeps in the state directory: which packages changed, or why it
//! failed. The record also outlives systemd's memory of the run: a one-shot unit that ended
//! well is unloaded soon after, and is then reported as if it had never run. Listing needs
//! no privilege: `apt list --upgradable` reads the package lists as the last `apt update`
//! (apt-daily.timer) left them.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::system::{read_journal, require_systemd, run, systemctl_failure, systemctl_show};
use crate::platform::{
    Packages, PlatformError, UnitName, Upgradable, UpgradeOutcome, UpgradeResult, UpgradeStatus, UPGRADE_OUTCOME_FILE,
};

/// The upgrade unit the package ships.
pub(crate) const DEFAULT_UPGRADE_UNIT: &str = "mcp-raspi-os-upgrade.service";

/// The state directory the package creates.
const DEFAULT_STATE_DIR: &str = "/var/lib/mcp-raspi";

/// How many journal lines of the upgrade unit `upgrade_status` returns.
const LOG_TAIL_LINES: usize = 20;

/// The largest upgrade record read: a full upgrade of a desktop image changes a few
/// thousand packages, at about a hundred bytes each.
const MAX_RECORD_BYTES: u64 = 4 * 1024 * 1024;

/// apt for listing, and the upgrade unit for upgrading.
pub struct AptPackages {
    /// The unit `start_upgrade` starts; an error only when the built-in default name failed
    /// validation, reported by each call instead of a panic at start-up.
    upgrade_unit: Result<UnitName, String>,
    /// Where the unit's program records how the upgrade went.
    record: PathBuf,
    /// Whose the record must be: root's, since only root runs the program. The state
    /// directory is shared with the server's user, which could otherwise leave a record of
    /// its own making there before the first upgrade.
    record_owner: u32,
}

impl AptPackages {
    /// Upgrades through `upgrade_unit` (`updates.os.upgrade_unit`), whose program records
    /// its outcome in `record`.
    pub fn new(upgrade_unit: UnitName, record: PathBuf) -> Self {
        AptPackages { upgrade_unit: Ok(upgrade_unit), record, record_owner: 0 }
    }

    /// Upgrades through [`DEFAULT_UPGRADE_UNIT`] with the record in the default state
    /// directory, for callers without the configuration.
    pub fn with_default_unit() -> Self {
        let record = Path::new(DEFAULT_STATE_DIR).join(UPGRADE_OUTCOME_FILE);
        match UnitName::parse(DEFAULT_UPGRADE_UNIT) {
            Ok(unit) => Self::new(unit, record),
            Err(e) => AptPackages { upgrade_unit: Err(e), record, record_owner: 0 },
        }
    }

    fn unit(&self) -> Result<&UnitName, PlatformError> {
        self.upgrade_unit.as_ref().map_err(|e| PlatformError::Unavailable(format!("no upgrade unit: {e}")))
    }
}

impl Packages for AptPackages {
    fn list_upgradable(&self) -> Result<Vec<Upgradable>, PlatformError> {
        // Not needed by apt itself, but this backend is for the systemd host it can upgrade.
        require_systemd()?;
        let output = run("apt", &["list", "--upgradable"])?;
        if !output.status.success() {
            return Err(PlatformError::Failed(format!(
                "apt list --upgradable failed: {}",
                without_cli_warning(&String::from_utf8_lossy(&output.stderr))
            )));
        }
        Ok(parse_apt_upgradable(&String::from_utf8_lossy(&output.stdout)))
    }

    fn start_upgrade(&self) -> Result<UpgradeStatus, PlatformError> {
        require_systemd()?;
        let unit = self.unit()?;
        // --no-block: the upgrade can take many minutes; upgrade_status follows it.
        let output = run("systemctl", &["--no-ask-password", "start", "--no-block", "--", unit.as_str()])?;
        if !output.status.success() {
            return Err(systemctl_failure("start", unit, &output));
        }
        let status = self.upgrade_status()?;
        // With --no-block the job may not have begun when systemd is asked, but it has been
        // queued: report it as running rather than as the previous run's result.
        Ok(if status.state == "running" {
            status
        } else {
            UpgradeStatus { state: "running".into(), outcome: None, ..status }
        })
    }

    fn upgrade_status(&self) -> Result<UpgradeStatus, PlatformError> {
        let unit = self.unit()?;
        let properties =
            systemctl_show(unit, "LoadState,ActiveState,SubState,Result,InactiveExitTimestampMonotonic,InvocationID")?;
        // The state is what was asked for; an unreadable journal or record only loses detail.
        let mut log_tail: Vec<String> = match read_journal(unit, LOG_TAIL_LINES, None) {
            Ok(entries) => entries.into_iter().map(|e| e.message).collect(),
            Err(e) => vec![format!("(the upgrade log is unavailable: {e})")],
        };
        let record = read_record(&self.record, self.record_owner).unwrap_or_else(|e| {
            log_tail.push(format!("(the upgrade's record is unusable: {e})"));
            None
        });
        let (state, outcome) =
            upgrade_state(unit, |key| properties.get(key).map(String::as_str).unwrap_or(""), record)?;
        Ok(UpgradeStatus { state: state.into(), log_tail, outcome })
    }
}

/// The record the upgrade's program left at `path`, if there is one: a regular file of
/// `owner`, not followed through a symlink, nor waited on if it is a pipe.
fn read_record(path: &Path, owner: u32) -> Result<Option<UpgradeOutcome>, String> {
    let file = match File::options().read(true).custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
    };
    let meta = file.metadata().map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() || meta.uid() != owner {
        return Err(format!("{} is not a file of uid {owner}, who alone runs the upgrade", path.display()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_RECORD_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_RECORD_BYTES {
        return Err(format!("{} is larger than {MAX_RECORD_BYTES} bytes", path.display()));
    }
    serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("{} is not an upgrade record: {e}", path.display()))
}

/// `idle`, `running`, `succeeded` or `failed` from the upgrade unit's properties and the
/// record its program left, with the record when it is this run's.
fn upgrade_state<'a>(
    unit: &UnitName,
    get: impl Fn(&str) -> &'a str,
    record: Option<UpgradeOutcome>,
) -> Result<(&'static str, Option<UpgradeOutcome>), PlatformError> {
    if get("LoadState") != "loaded" {
        return Err(PlatformError::Unavailable(format!(
            "the upgrade unit {unit} is not installed (LoadState={}): set updates.os.upgrade_unit to the unit \
             that runs the upgrade",
            get("LoadState")
        )));
    }
    // While systemd remembers the run, a record naming another invocation is an earlier
    // run's (this one failed before it wrote, or has not written yet). Once it forgot (the
    // one-shot ended and was unloaded, or the host rebooted), the record is the latest news.
    let invocation = get("InvocationID");
    let mut record = record.filter(|r| invocation.is_empty() || r.invocation_id.as_deref() == Some(invocation));
    let state = match (get("ActiveState"), get("SubState")) {
        ("failed", _) => "failed",
        // A one-shot with RemainAfterExit=yes stays active once its command has exited.
        ("active", "exited") => "succeeded",
        ("activating" | "active" | "reloading" | "deactivating", _) => "running",
        _ if get("Result") != "success" => "failed",
        _ => match record.as_ref().map(|r| r.result) {
            Some(UpgradeResult::Succeeded) => "succeeded",
            Some(UpgradeResult::Failed | UpgradeResult::Running) => "failed",
            // Leaving the inactive state stamps this; 0 means it has not run since boot.
            None if matches!(get("InactiveExitTimestampMonotonic"), "" | "0") => "idle",
            // A unit of the administrator's that keeps no record.
            None => "succeeded",
        },
    };
    if let Some(r) = record.as_mut().filter(|r| state != "running" && r.result == UpgradeResult::Running) {
        r.result = UpgradeResult::Failed;
        r.error = Some(format!(
            "the upgrade ended without recording how it went: it was stopped or killed while it ran (a timeout, \
             a reboot, a power loss); `journalctl -u {unit}` tells more, and `sudo dpkg --configure -a` finishes \
             what dpkg left half-done"
        ));
    }
    Ok((state, record))
}

/// Drops apt's warning that its command line interface is not stable.
fn without_cli_warning(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with("WARNING: apt does not have a stable CLI") && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Lines of `apt list --upgradable` such as
/// `libssl3/bookworm-security 3.0.15-1~deb12u1 arm64 [upgradable from: 3.0.14-1~deb12u2]`;
/// the `Listing...` header, warnings and anything else are skipped.
fn parse_apt_upgradable(text: &str) -> Vec<Upgradable> {
    text.lines().filter_map(parse_apt_line).collect()
}

fn parse_apt_line(line: &str) -> Option<Upgradable> {
    let (package, rest) = line.trim().split_once(' ')?;
    let (name, archives) = package.split_once('/')?;
    let installed = rest.split_once("[upgradable from: ")?.1.strip_suffix(']')?;
    let candidate = rest.split_whitespace().next()?;
    if name.is_empty() || installed.is_empty() {
        return None;
    }
    // A candidate in several archives lists them all (`stable,stable-security`).
    let archives: Vec<&str> = archives.split(',').filter(|a| !a.is_empty()).collect();
    let security = archives.iter().find(|a| a.ends_with("-security"));
    Some(Upgradable {
        name: name.to_string(),
        installed_version: installed.to_string(),
        candidate_version: candidate.to_string(),
        origin: security.or(archives.first()).map(|a| a.to_string()),
        security: security.is_some(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use super::*;

    const APT_LIST: &str = "\nWARNING: apt does not have a stable CLI interface. Use with caution in scripts.\n\n\
        Listing...\n\
        libssl3/bookworm-security 3.0.15-1~deb12u1 arm64 [upgradable from: 3.0.14-1~deb12u2]\n\
        rpi-eeprom/stable 28.2-1 arm64 [upgradable from: 28.1-1]\n\
        tzdata/stable-updates,stable-security 2025b-0+deb12u1 all [upgradable from: 2024b-0+deb12u1]\n\
        N: There is 1 additional version. Please use the '-a' switch to see it\n";

    #[test]
    fn apt_list_upgradable_lines_become_packages_and_the_header_and_warning_are_skipped() {
        let packages = parse_apt_upgradable(APT_LIST);
        assert_eq!(packages.len(), 3);
        assert_eq!(
            packages[0],
            Upgradable {
                name: "libssl3".into(),
                installed_version: "3.0.14-1~deb12u2".into(),
                candidate_version: "3.0.15-1~deb12u1".into(),
                origin: Some("bookworm-security".into()),
                security: true,
            }
        );
        assert_eq!((packages[1].origin.as_deref(), packages[1].security), (Some("stable"), false));
    }

    #[test]
    fn a_candidate_in_several_archives_is_a_security_update_if_any_of_them_is() {
        let tzdata = &parse_apt_upgradable(APT_LIST)[2];
        assert_eq!(tzdata.origin.as_deref(), Some("stable-security"));
        assert!(tzdata.security);
        assert_eq!(tzdata.candidate_version, "2025b-0+deb12u1");
    }

    #[test]
    fn nothing_to_upgrade_is_an_empty_list() {
        assert_eq!(parse_apt_upgradable("Listing... Done\n"), Vec::new());
        assert_eq!(without_cli_warning(APT_LIST.lines().take(3).collect::<Vec<_>>().join("\n").as_str()), "");
    }

    fn state_with(
        text: &str,
        record: Option<UpgradeOutcome>,
    ) -> Result<(&'static str, Option<UpgradeOutcome>), PlatformError> {
        let properties: BTreeMap<String, String> = super::super::system::parse_properties(text);
        let unit = UnitName::parse(DEFAULT_UPGRADE_UNIT).unwrap();
        upgrade_state(&unit, |k| properties.get(k).map(String::as_str).unwrap_or(""), record)
    }

    fn state(text: &str) -> Result<&'static str, PlatformError> {
        state_with(text, None).map(|(state, _)| state)
    }

    #[test]
    fn the_upgrade_units_properties_map_to_idle_running_succeeded_and_failed() {
        let loaded = "LoadState=loaded\n";
        let with = |rest: &str| state(&format!("{loaded}{rest}"));
        assert_eq!(
            with("ActiveState=inactive\nSubState=dead\nResult=success\nInactiveExitTimestampMonotonic=0\n"),
            Ok("idle")
        );
        assert_eq!(with("ActiveState=activating\nSubState=start\nResult=success\n"), Ok("running"));
        assert_eq!(
            with("ActiveState=inactive\nSubState=dead\nResult=success\nInactiveExitTimestampMonotonic=81234567\n"),
            Ok("succeeded")
        );
        assert_eq!(with("ActiveState=active\nSubState=exited\nResult=success\n"), Ok("succeeded"));
        assert_eq!(with("ActiveState=failed\nSubState=failed\nResult=exit-code\n"), Ok("failed"));
        assert_eq!(
            with("ActiveState=inactive\nSubState=dead\nResult=timeout\nInactiveExitTimestampMonotonic=5\n"),
            Ok("failed")
        );
    }

    const THIS_RUN: &str = "0123456789abcdef0123456789abcdef";
    const EARLIER_RUN: &str = "fedcba9876543210fedcba9876543210";

    fn record(result: UpgradeResult, invocation: &str) -> UpgradeOutcome {
        UpgradeOutcome {
            result,
            started_at: "2026-01-01T03:00:00Z".into(),
            finished_at: (result != UpgradeResult::Running).then(|| "2026-01-01T03:05:00Z".into()),
            mode: crate::platform::UpgradeMode::WithNewPackages,
            refresh_lists: true,
            upgraded: vec![crate::platform::PackageChange { name: "tzdata".into(), from: "1".into(), to: "2".into() }],
            installed: Vec::new(),
            removed: Vec::new(),
            error: None,
            invocation_id: Some(invocation.into()),
        }
    }

    #[test]
    fn once_systemd_has_unloaded_the_finished_unit_its_record_tells_how_the_run_went() {
        // What `systemctl show` says of a one-shot unloaded after it ended (or after a reboot).
        let forgotten = "LoadState=loaded\nActiveState=inactive\nSubState=dead\nResult=success\n\
                         InactiveExitTimestampMonotonic=0\nInvocationID=\n";
        let (state, outcome) = state_with(forgotten, Some(record(UpgradeResult::Succeeded, THIS_RUN))).unwrap();
        assert_eq!(state, "succeeded");
        assert_eq!(outcome.unwrap().upgraded[0].to, "2");
        let (state, outcome) = state_with(forgotten, Some(record(UpgradeResult::Failed, THIS_RUN))).unwrap();
        assert_eq!((state, outcome.map(|o| o.result)), ("failed", Some(UpgradeResult::Failed)));
    }

    #[test]
    fn while_systemd_remembers_the_run_only_its_own_record_is_returned() {
        let running = format!("LoadState=loaded\nActiveState=activating\nSubState=start\nInvocationID={THIS_RUN}\n");
        let (state, outcome) = state_with(&running, Some(record(UpgradeResult::Running, THIS_RUN))).unwrap();
        assert_eq!((state, outcome.map(|o| o.result)), ("running", Some(UpgradeResult::Running)));
        let (state, outcome) = state_with(&running, Some(record(UpgradeResult::Succeeded, EARLIER_RUN))).unwrap();
        assert_eq!((state, outcome), ("running", None));
        // Failed before its program wrote anything (a configuration that does not load).
        let failed = format!(
            "LoadState=loaded\nActiveState=failed\nSubState=failed\nResult=exit-code\nInvocationID={THIS_RUN}\n"
        );
        assert_eq!(state_with(&failed, Some(record(UpgradeResult::Succeeded, EARLIER_RUN))).unwrap(), ("failed", None));
    }

    #[test]
    fn a_run_that_ended_without_recording_its_end_failed_and_says_what_to_do() {
        let forgotten = "LoadState=loaded\nActiveState=inactive\nSubState=dead\nResult=success\nInvocationID=\n";
        let (state, outcome) = state_with(forgotten, Some(record(UpgradeResult::Running, THIS_RUN))).unwrap();
        let outcome = outcome.unwrap();
        assert_eq!((state, outcome.result), ("failed", UpgradeResult::Failed));
        assert!(outcome.error.unwrap().contains("dpkg --configure -a"));
        let timed_out =
            format!("LoadState=loaded\nActiveState=failed\nSubState=failed\nResult=timeout\nInvocationID={THIS_RUN}\n");
        let (_, outcome) = state_with(&timed_out, Some(record(UpgradeResult::Running, THIS_RUN))).unwrap();
        assert_eq!(outcome.unwrap().result, UpgradeResult::Failed);
    }

    #[test]
    fn a_missing_upgrade_unit_is_unavailable_and_named() {
        let err = state("LoadState=not-found\nActiveState=inactive\n").unwrap_err();
        assert!(matches!(err, PlatformError::Unavailable(m) if m.contains(DEFAULT_UPGRADE_UNIT)));
    }

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    #[test]
    fn the_record_is_read_back_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(UPGRADE_OUTCOME_FILE);
        assert_eq!(read_record(&path, me()), Ok(None));
        let written = record(UpgradeResult::Succeeded, THIS_RUN);
        std::fs::write(&path, serde_json::to_vec_pretty(&written).unwrap()).unwrap();
        assert_eq!(read_record(&path, me()), Ok(Some(written)));
    }

    #[test]
    fn a_record_from_an_older_or_newer_program_is_read_with_what_both_know() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(UPGRADE_OUTCOME_FILE);
        std::fs::write(&path, r#"{"result": "succeeded", "started_at": "2026-01-01T03:00:00Z", "new_field": 1}"#)
            .unwrap();
        let read = read_record(&path, me()).unwrap().unwrap();
        assert_eq!((read.result, read.upgraded.len(), read.invocation_id), (UpgradeResult::Succeeded, 0, None));
    }

    #[test]
    fn a_record_of_another_owner_a_symlink_a_pipe_or_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(UPGRADE_OUTCOME_FILE);
        std::fs::write(&path, serde_json::to_vec(&record(UpgradeResult::Succeeded, THIS_RUN)).unwrap()).unwrap();
        assert!(read_record(&path, me().wrapping_add(1)).unwrap_err().contains("not a file of uid"));
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(read_record(&link, me()).is_err());
        let pipe = dir.path().join("pipe.json");
        nix::unistd::mkfifo(&pipe, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(read_record(&pipe, me()).unwrap_err().contains("not a file"));
        std::fs::write(&path, "{not json").unwrap();
        assert!(read_record(&path, me()).unwrap_err().contains("not an upgrade record"));
        std::fs::write(&path, vec![b' '; MAX_RECORD_BYTES as usize + 1]).unwrap();
        assert!(read_record(&path, me()).unwrap_err().contains("larger than"));
    }

    #[test]
    fn without_systemd_listing_and_upgrading_are_unavailable() {
        if std::path::Path::new("/run/systemd/system").is_dir() {
            eprintln!("skipped: systemd runs this host, and this test must not upgrade it");
            return;
        }
        let apt = AptPackages::with_default_unit();
        let unavailable = PlatformError::Unavailable("systemd is not the init system of this host".into());
        assert_eq!(apt.list_upgradable(), Err(unavailable.clone()));
        assert_eq!(apt.start_upgrade(), Err(unavailable.clone()));
        assert_eq!(apt.upgrade_status(), Err(unavailable));
    }
}
