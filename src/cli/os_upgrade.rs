//! `mcp-raspi os-upgrade`: the program of `mcp-raspi-os-upgrade.service`, the root one-shot
//! unit that the ops agent starts (through polkit) for os.apply_updates.
//!
//! The agent is not root and must not upgrade in-process; this program is the dpkg-owned
//! `/usr/lib/mcp-raspi/bin/mcp-raspi`, which the agent's user cannot change, and it takes its
//! policy only from the configuration file root owns (`updates.os.*`, environment overrides
//! ignored, as for the polkit rule): it upgrades only when `apply_enabled` is true, refreshes
//! the package lists first when `refresh_lists` says so, and goes as far as `upgrade_mode`
//! allows. apt-get runs without a shell and without a question; its output and this
//! program's progress go to the journal, ending with what changed.
//!
//! The outcome is recorded in `os-upgrade.json` in the state directory, atomically, when the
//! run starts and when it ends: which packages went from which version to which (from
//! `dpkg-query -W` before and after, so also after a failure half-way), or why it failed.
//! The file is root's, mode 0644; the agent reads it through the state directory's group.

mod apt;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use clap::Args as ClapArgs;

use super::{CliError, DEFAULT_CONFIG, EXIT_FAILURE, EXIT_NOPERM};
use crate::base::VERSION;
use crate::config::{Config, OsUpdatesConfig};
use crate::platform::{UpgradeOutcome, UpgradeResult, UPGRADE_OUTCOME_FILE};
use crate::update::state::now;

use apt::PackageTool;

/// `mcp-raspi os-upgrade`.
#[derive(Debug, ClapArgs)]
pub struct OsUpgradeArgs {
    /// Configuration file (updates.os and paths.state_dir); environment overrides do not
    /// apply to this root program.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
}

/// Upgrades the OS packages as `updates.os` allows, and records how it went.
pub fn run(args: OsUpgradeArgs, out: &mut dyn Write) -> Result<(), CliError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(CliError::new(
            EXIT_NOPERM,
            "os-upgrade upgrades the OS packages and runs only as root: it is the program of \
             mcp-raspi-os-upgrade.service (os.apply_updates starts it)",
        ));
    }
    let config = Config::load(&args.config, &BTreeMap::new())
        .map_err(|e| CliError::new(EXIT_FAILURE, format!("nothing was upgraded: {e}")))?
        .config;
    let record = Record { path: config.paths.state_dir.join(UPGRADE_OUTCOME_FILE) };
    let invocation_id = std::env::var("INVOCATION_ID").ok().filter(|id| is_invocation_id(id));
    upgrade(&config.updates.os, &mut apt::System, &record, invocation_id, out)
}

/// systemd's invocation ids are 128 bits in 32 lowercase hexadecimal digits.
fn is_invocation_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Where the outcome is recorded.
struct Record {
    path: PathBuf,
}

impl Record {
    fn write(&self, outcome: &UpgradeOutcome) -> Result<(), String> {
        let mut bytes = serde_json::to_vec_pretty(outcome).map_err(|e| e.to_string())?;
        bytes.push(b'\n');
        // Written beside and renamed over the old record, which a reader therefore sees
        // whole; the state directory's sticky bit keeps others from replacing root's file.
        crate::update::state::write_atomically(&self.path, &bytes, 0o644, None).map_err(|e| e.to_string())
    }
}

/// Writes one progress line to the journal at once: apt-get's own lines follow it on the
/// same descriptor.
fn say(out: &mut dyn Write, line: &str) {
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The upgrade with `tool` (apt-get and dpkg-query, or a fake in tests) under `policy`,
/// recorded in `record`.
fn upgrade(
    policy: &OsUpdatesConfig,
    tool: &mut dyn PackageTool,
    record: &Record,
    invocation_id: Option<String>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let mut outcome = UpgradeOutcome {
        result: UpgradeResult::Running,
        started_at: now(),
        finished_at: None,
        mode: policy.upgrade_mode,
        refresh_lists: policy.refresh_lists,
        upgraded: Vec::new(),
        installed: Vec::new(),
        removed: Vec::new(),
        error: None,
        invocation_id,
    };
    let result = match policy.check_upgrading() {
        Err(denied) => Err(CliError::new(EXIT_NOPERM, format!("nothing was upgraded: {denied}"))),
        Ok(()) => {
            // Without a record os.apply_updates could not tell how the upgrade went.
            if let Err(e) = record.write(&outcome) {
                return Err(CliError::new(
                    EXIT_FAILURE,
                    format!("nothing was upgraded: cannot record the upgrade in {}: {e}", record.path.display()),
                ));
            }
            run_steps(policy, tool, &mut outcome, out).map_err(CliError::from)
        }
    };
    outcome.finished_at = Some(now());
    outcome.result = if result.is_ok() { UpgradeResult::Succeeded } else { UpgradeResult::Failed };
    outcome.error = result.as_ref().err().map(|e| e.message.clone());
    let recorded = record.write(&outcome);
    for line in summary(&outcome) {
        say(out, &line);
    }
    match (result, recorded) {
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => Err(CliError::from(format!(
            "the upgrade succeeded, but its outcome could not be recorded in {}: {e}",
            record.path.display()
        ))),
        (Ok(()), Ok(())) => Ok(()),
    }
}

/// Refreshes the package lists if asked to, upgrades, and puts what changed in `outcome`.
fn run_steps(
    policy: &OsUpdatesConfig,
    tool: &mut dyn PackageTool,
    outcome: &mut UpgradeOutcome,
    out: &mut dyn Write,
) -> Result<(), String> {
    let step = apt::upgrade_step(policy.upgrade_mode);
    let refresh = if policy.refresh_lists { ", after refreshing the package lists" } else { "" };
    say(
        out,
        &format!("mcp-raspi {VERSION} os-upgrade: {} (upgrade_mode {}){refresh}", step.label, policy.upgrade_mode),
    );
    let before = tool.installed().map_err(|e| format!("nothing was upgraded: {e}"))?;
    if policy.refresh_lists {
        let refresh = apt::refresh_step();
        say(out, &format!("refreshing the package lists: {}", refresh.label));
        tool.apt_get(&refresh)
            .map_err(|e| format!("nothing was upgraded: refreshing the package lists failed: {e}"))?;
    }
    say(out, &format!("upgrading: {}", step.label));
    let upgraded = tool.apt_get(&step);
    // What changed is worth knowing also when apt-get failed half-way.
    match tool.installed() {
        Ok(after) => {
            let changes = apt::diff(&before, &after);
            (outcome.upgraded, outcome.installed, outcome.removed) =
                (changes.upgraded, changes.installed, changes.removed);
            upgraded
        }
        Err(e) => upgraded.and(Err(format!("the upgrade ran, but what it changed is unknown: {e}"))),
    }
}

/// The last lines of the journal: each package changed, then how it ended (a failure's
/// reason follows on standard error).
fn summary(outcome: &UpgradeOutcome) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    lines.extend(outcome.upgraded.iter().map(|p| format!("upgraded {} {} -> {}", p.name, p.from, p.to)));
    lines.extend(outcome.installed.iter().map(|p| format!("installed {} {}", p.name, p.version)));
    lines.extend(outcome.removed.iter().map(|p| format!("removed {} {}", p.name, p.version)));
    let counts = format!(
        "{} upgraded, {} newly installed, {} removed",
        outcome.upgraded.len(),
        outcome.installed.len(),
        outcome.removed.len()
    );
    match outcome.result {
        UpgradeResult::Succeeded if lines.is_empty() => lines.push("succeeded: nothing to upgrade".into()),
        UpgradeResult::Succeeded => lines.push(format!("succeeded: {counts}")),
        UpgradeResult::Failed if !lines.is_empty() => lines.push(format!("failed after these changes: {counts}")),
        UpgradeResult::Failed | UpgradeResult::Running => {}
    }
    lines
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::apt::{AptStep, Installed};
    use super::*;
    use crate::platform::{PackageChange, PackageVersion, UpgradeMode};

    /// apt-get and dpkg-query as a script: the packages before, the packages once the
    /// upgrade step ran, and which step fails.
    struct Fake {
        installed: Installed,
        after_upgrade: Installed,
        fail: Option<&'static str>,
        query_fails: bool,
        steps: Vec<AptStep>,
        /// The record as apt-get found it when it ran.
        record_during_apt: Option<UpgradeOutcome>,
        record: PathBuf,
    }

    fn packages(list: &[(&str, &str)]) -> Installed {
        list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    impl Fake {
        fn new(record: &Path) -> Fake {
            Fake {
                installed: packages(&[("base-files", "12.4"), ("mcp-raspi-ostest", "1.0")]),
                after_upgrade: packages(&[("base-files", "12.4"), ("mcp-raspi-ostest", "1.1")]),
                fail: None,
                query_fails: false,
                steps: Vec::new(),
                record_during_apt: None,
                record: record.to_path_buf(),
            }
        }
    }

    impl PackageTool for Fake {
        fn installed(&mut self) -> Result<Installed, String> {
            if self.query_fails {
                return Err("dpkg-query -W failed (exit status: 2): database locked".into());
            }
            Ok(self.installed.clone())
        }

        fn apt_get(&mut self, step: &AptStep) -> Result<(), String> {
            self.steps.push(step.clone());
            self.record_during_apt = Some(read(&self.record));
            let upgrading = step.args.iter().any(|a| a.contains("upgrade"));
            if upgrading {
                self.installed = self.after_upgrade.clone();
            }
            match self.fail {
                Some(label) if step.label == label => Err(format!("{label} failed (exit status: 100): E: broken")),
                _ => Ok(()),
            }
        }
    }

    fn read(path: &Path) -> UpgradeOutcome {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn enabled() -> OsUpdatesConfig {
        OsUpdatesConfig { apply_enabled: true, ..OsUpdatesConfig::default() }
    }

    struct Run {
        result: Result<(), CliError>,
        output: String,
        fake: Fake,
        path: PathBuf,
        _dir: tempfile::TempDir,
    }

    fn run_with(policy: &OsUpdatesConfig, setup: impl FnOnce(&mut Fake)) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(UPGRADE_OUTCOME_FILE);
        let mut fake = Fake::new(&path);
        setup(&mut fake);
        let mut out = Vec::new();
        let id = Some("0123456789abcdef0123456789abcdef".to_string());
        let result = upgrade(policy, &mut fake, &Record { path: path.clone() }, id, &mut out);
        Run { result, output: String::from_utf8(out).unwrap(), fake, path, _dir: dir }
    }

    fn labels(steps: &[AptStep]) -> Vec<&str> {
        steps.iter().map(|s| s.label.as_str()).collect()
    }

    #[test]
    fn an_upgrade_refreshes_the_lists_upgrades_and_records_each_package_from_and_to_its_version() {
        let run = run_with(&enabled(), |_| {});
        assert_eq!(run.result, Ok(()));
        assert_eq!(labels(&run.fake.steps), ["apt-get update", "apt-get upgrade --with-new-pkgs"]);
        let outcome = read(&run.path);
        assert_eq!(outcome.result, UpgradeResult::Succeeded);
        assert_eq!(
            outcome.upgraded,
            [PackageChange { name: "mcp-raspi-ostest".into(), from: "1.0".into(), to: "1.1".into() }]
        );
        assert!(outcome.installed.is_empty() && outcome.removed.is_empty() && outcome.error.is_none());
        assert_eq!(outcome.invocation_id.as_deref(), Some("0123456789abcdef0123456789abcdef"));
        assert!(humantime::parse_rfc3339(outcome.finished_at.as_deref().unwrap()).is_ok());
        assert!(run
            .output
            .ends_with("upgraded mcp-raspi-ostest 1.0 -> 1.1\nsucceeded: 1 upgraded, 0 newly installed, 0 removed\n"));
        assert!(run.output.starts_with(&format!("mcp-raspi {VERSION} os-upgrade: apt-get upgrade --with-new-pkgs")));
    }

    #[test]
    fn the_record_says_running_while_apt_runs_and_is_replaced_whole_by_the_outcome() {
        let run = run_with(&enabled(), |_| {});
        let during = run.fake.record_during_apt.clone().unwrap();
        assert_eq!((during.result, during.finished_at), (UpgradeResult::Running, None));
        assert_eq!(during.started_at, read(&run.path).started_at);
        let mode = std::fs::metadata(&run.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let names: Vec<String> = std::fs::read_dir(run.path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [UPGRADE_OUTCOME_FILE], "a temporary file was left behind");
    }

    #[test]
    fn with_nothing_to_upgrade_it_succeeds_and_says_so() {
        let run = run_with(&enabled(), |f| f.after_upgrade = f.installed.clone());
        assert_eq!(run.result, Ok(()));
        let outcome = read(&run.path);
        assert_eq!(outcome.result, UpgradeResult::Succeeded);
        assert!(outcome.upgraded.is_empty());
        assert!(run.output.ends_with("\nsucceeded: nothing to upgrade\n"), "{}", run.output);
    }

    #[test]
    fn nothing_runs_unless_applying_updates_is_turned_on_and_the_refusal_is_recorded() {
        let run = run_with(&OsUpdatesConfig::default(), |_| {});
        let err = run.result.unwrap_err();
        assert_eq!(err.code, EXIT_NOPERM);
        assert!(err.message.starts_with("nothing was upgraded: ") && err.message.contains("updates.os.apply_enabled"));
        assert!(run.fake.steps.is_empty());
        let outcome = read(&run.path);
        assert_eq!(outcome.result, UpgradeResult::Failed);
        assert_eq!(outcome.error.as_deref(), Some(err.message.as_str()));
        assert_eq!(run.output, "");
    }

    #[test]
    fn the_policy_chooses_the_refresh_and_how_far_the_upgrade_goes() {
        let policy = OsUpdatesConfig { refresh_lists: false, upgrade_mode: UpgradeMode::FullUpgrade, ..enabled() };
        let run = run_with(&policy, |_| {});
        assert_eq!(labels(&run.fake.steps), ["apt-get full-upgrade"]);
        let outcome = read(&run.path);
        assert_eq!((outcome.mode, outcome.refresh_lists), (UpgradeMode::FullUpgrade, false));
        let policy = OsUpdatesConfig { upgrade_mode: UpgradeMode::Upgrade, ..enabled() };
        assert_eq!(labels(&run_with(&policy, |_| {}).fake.steps), ["apt-get update", "apt-get upgrade"]);
    }

    #[test]
    fn a_failed_refresh_stops_before_the_upgrade() {
        let run = run_with(&enabled(), |f| f.fail = Some("apt-get update"));
        let err = run.result.unwrap_err();
        assert_eq!(err.code, EXIT_FAILURE);
        assert_eq!(
            err.message,
            "nothing was upgraded: refreshing the package lists failed: apt-get update failed (exit status: 100): E: broken"
        );
        assert_eq!(labels(&run.fake.steps), ["apt-get update"]);
        assert_eq!(read(&run.path).result, UpgradeResult::Failed);
    }

    #[test]
    fn an_upgrade_failing_half_way_records_what_it_changed_and_why_it_failed() {
        let run = run_with(&enabled(), |f| {
            f.fail = Some("apt-get upgrade --with-new-pkgs");
            f.after_upgrade = packages(&[("mcp-raspi-ostest", "1.1"), ("newdep", "2.0")]);
        });
        let err = run.result.unwrap_err();
        assert!(err.message.contains("E: broken"), "{}", err.message);
        let outcome = read(&run.path);
        assert_eq!(outcome.result, UpgradeResult::Failed);
        assert_eq!(outcome.error.as_deref(), Some(err.message.as_str()));
        assert_eq!(outcome.upgraded.len(), 1);
        assert_eq!(outcome.installed, [PackageVersion { name: "newdep".into(), version: "2.0".into() }]);
        assert_eq!(outcome.removed, [PackageVersion { name: "base-files".into(), version: "12.4".into() }]);
        assert!(run.output.ends_with("failed after these changes: 1 upgraded, 1 newly installed, 1 removed\n"));
    }

    #[test]
    fn without_the_installed_packages_nothing_is_upgraded() {
        let run = run_with(&enabled(), |f| f.query_fails = true);
        let err = run.result.unwrap_err();
        assert!(err.message.starts_with("nothing was upgraded: dpkg-query -W failed"), "{}", err.message);
        assert!(run.fake.steps.is_empty());
    }

    #[test]
    fn without_a_place_for_the_record_nothing_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let record = Record { path: dir.path().join("missing/os-upgrade.json") };
        let mut fake = Fake::new(&record.path);
        let err = upgrade(&enabled(), &mut fake, &record, None, &mut Vec::new()).unwrap_err();
        assert!(err.message.contains("cannot record the upgrade"), "{}", err.message);
        assert!(fake.steps.is_empty());
    }

    #[test]
    fn only_systemds_invocation_ids_are_recorded() {
        assert!(is_invocation_id("0123456789abcdef0123456789abcdef"));
        assert!(!is_invocation_id("0123456789ABCDEF0123456789ABCDEF"));
        assert!(!is_invocation_id("../../etc/passwd"));
        assert!(!is_invocation_id(""));
    }

    #[test]
    fn the_program_runs_only_as_root_and_only_with_its_configuration() {
        // Safe as root too: without a configuration nothing is upgraded.
        let err = run(OsUpgradeArgs { config: PathBuf::from("/nonexistent/config.yml") }, &mut Vec::new()).unwrap_err();
        if nix::unistd::geteuid().is_root() {
            assert_eq!(err.code, EXIT_FAILURE);
            assert!(err.message.starts_with("nothing was upgraded: ") && err.message.contains("/nonexistent"));
        } else {
            assert_eq!(err.code, EXIT_NOPERM);
            assert!(err.message.contains("only as root"), "{}", err.message);
        }
    }
}
