//! The commands an OS upgrade runs: apt-get and dpkg-query, started with argument vectors
//! (never a shell) from their dpkg-owned paths, and what dpkg-query prints turned into the
//! installed packages, so that the upgrade can say what it changed.
//!
//! The upgrade's steps only see [`PackageTool`], which the tests replace with a fake.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use crate::platform::{PackageChange, PackageVersion, UpgradeMode};

/// apt-get and dpkg-query as Debian installs them; root never looks them up in a `PATH`.
const APT_GET: &str = "/usr/bin/apt-get";
const DPKG_QUERY: &str = "/usr/bin/dpkg-query";

/// How long apt-get waits for another apt or dpkg to release the lock (the system's daily
/// unattended upgrade, an administrator's apt) before it gives up.
const LOCK_TIMEOUT_SECONDS: u32 = 600;

/// What apt-get runs with, so that nothing can stop to ask a question: debconf, apt-listchanges
/// and ucf (which some packages use for configuration files dpkg does not manage) each have
/// their own switch. ucf keeps the administrator's file, as dpkg's options below do.
const APT_ENVIRONMENT: [(&str, &str); 3] =
    [("DEBIAN_FRONTEND", "noninteractive"), ("APT_LISTCHANGES_FRONTEND", "none"), ("UCF_FORCE_CONFFOLD", "1")];

/// One package name, version and dpkg status per line; dpkg-query expands the escapes.
const DPKG_QUERY_FORMAT: &str = "${binary:Package}\\t${Version}\\t${db:Status-Status}\\n";

/// How many of apt-get's error lines a failure quotes.
const ERROR_LINES: usize = 3;
/// The longest line quoted from apt-get.
const MAX_LINE_CHARS: usize = 500;

/// Installed packages (`name` or `name:arch`) and their versions.
pub type Installed = BTreeMap<String, String>;

/// One apt-get invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AptStep {
    /// What the step is called in messages, e.g. `apt-get upgrade --with-new-pkgs`.
    pub label: String,
    /// apt-get's arguments.
    pub args: Vec<String>,
}

/// `apt-get update`: the package lists from the configured sources.
pub fn refresh_step() -> AptStep {
    AptStep { label: "apt-get update".into(), args: vec!["-q".into(), "update".into()] }
}

/// The upgrade itself, as far as `mode` allows, without a question: `-y` answers yes;
/// dpkg keeps every configuration file the administrator changed (`--force-confold`) and
/// takes the package's own where nothing was changed (`--force-confdef`); held packages
/// stay held, since nothing here overrides a hold.
pub fn upgrade_step(mode: UpgradeMode) -> AptStep {
    let command = mode.apt_command();
    let lock_timeout = format!("DPkg::Lock::Timeout={LOCK_TIMEOUT_SECONDS}");
    let options = ["-q", "-y", "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold", "-o"];
    let args = options.iter().copied().chain([lock_timeout.as_str()]).chain(command.iter().copied());
    AptStep { label: format!("apt-get {}", command.join(" ")), args: args.map(String::from).collect() }
}

/// What an upgrade runs, so that its steps can be tested without apt.
pub trait PackageTool {
    /// The installed packages.
    fn installed(&mut self) -> Result<Installed, String>;
    /// Runs one apt-get step, its output going to the journal; `Err` says why it failed.
    fn apt_get(&mut self, step: &AptStep) -> Result<(), String>;
}

/// The host's apt-get and dpkg-query.
pub struct System;

impl PackageTool for System {
    fn installed(&mut self) -> Result<Installed, String> {
        let output = Command::new(DPKG_QUERY)
            .args(["-W", &format!("--showformat={DPKG_QUERY_FORMAT}")])
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {DPKG_QUERY}: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "dpkg-query -W failed ({}): {}",
                output.status,
                clip(String::from_utf8_lossy(&output.stderr).trim())
            ));
        }
        Ok(parse_installed(&String::from_utf8_lossy(&output.stdout)))
    }

    fn apt_get(&mut self, step: &AptStep) -> Result<(), String> {
        // apt-get's progress goes straight to this program's standard output (the journal);
        // its standard error is passed on too, and its last error lines are kept for the record.
        let mut child = Command::new(APT_GET)
            .args(&step.args)
            .envs(APT_ENVIRONMENT)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {APT_GET}: {e}"))?;
        let mut errors = ErrorLines::default();
        if let Some(stderr) = child.stderr.take() {
            let mut echo = std::io::stderr();
            for line in BufReader::new(stderr).split(b'\n') {
                let Ok(line) = line else { break };
                let _ = echo.write_all(&line);
                let _ = echo.write_all(b"\n");
                errors.push(&String::from_utf8_lossy(&line));
            }
        }
        let status = child.wait().map_err(|e| format!("{} did not end normally: {e}", step.label))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{} failed ({status}){}", step.label, errors.quoted()))
        }
    }
}

/// The last error lines apt-get wrote: its `E:` lines when there are any (its warnings
/// come first and say less), else its last lines.
#[derive(Default)]
struct ErrorLines {
    errors: VecDeque<String>,
    others: VecDeque<String>,
}

impl ErrorLines {
    fn push(&mut self, line: &str) {
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        let list = if line.starts_with("E:") { &mut self.errors } else { &mut self.others };
        if list.len() == ERROR_LINES {
            list.pop_front();
        }
        list.push_back(clip(line));
    }

    /// `: line; line` or nothing.
    fn quoted(&self) -> String {
        let lines = if self.errors.is_empty() { &self.others } else { &self.errors };
        if lines.is_empty() {
            return String::new();
        }
        format!(": {}", lines.iter().map(String::as_str).collect::<Vec<_>>().join("; "))
    }
}

fn clip(line: &str) -> String {
    match line.char_indices().nth(MAX_LINE_CHARS) {
        Some((end, _)) => format!("{}...", &line[..end]),
        None => line.to_string(),
    }
}

/// The packages dpkg-query's lines (`name TAB version TAB status`) name as installed. A
/// package removed with its configuration files kept (`config-files`) or only known
/// (`not-installed`) is not installed; one half-way through an install or upgrade is, at
/// the version dpkg has for it. Lines that do not have three fields are skipped.
pub fn parse_installed(text: &str) -> Installed {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let (name, version, status) = (fields.next()?, fields.next()?, fields.next()?);
            let gone = matches!(status, "not-installed" | "config-files");
            (!gone && !name.is_empty() && !version.is_empty()).then(|| (name.to_string(), version.to_string()))
        })
        .collect()
}

/// What an upgrade changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub upgraded: Vec<PackageChange>,
    pub installed: Vec<PackageVersion>,
    pub removed: Vec<PackageVersion>,
}

/// The packages whose version changed, appeared or went away between `before` and `after`,
/// by name. A changed version is an upgrade: apt-get never downgrades without being told to.
pub fn diff(before: &Installed, after: &Installed) -> Changes {
    let mut changes = Changes::default();
    for (name, version) in after {
        match before.get(name) {
            Some(old) if old != version => {
                changes.upgraded.push(PackageChange { name: name.clone(), from: old.clone(), to: version.clone() })
            }
            Some(_) => {}
            None => changes.installed.push(PackageVersion { name: name.clone(), version: version.clone() }),
        }
    }
    for (name, version) in before {
        if !after.contains_key(name) {
            changes.removed.push(PackageVersion { name: name.clone(), version: version.clone() });
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_upgrade_is_non_interactive_keeps_changed_configuration_files_and_waits_for_the_lock() {
        let step = upgrade_step(UpgradeMode::WithNewPackages);
        assert_eq!(step.label, "apt-get upgrade --with-new-pkgs");
        assert_eq!(
            step.args,
            [
                "-q",
                "-y",
                "-o",
                "Dpkg::Options::=--force-confdef",
                "-o",
                "Dpkg::Options::=--force-confold",
                "-o",
                "DPkg::Lock::Timeout=600",
                "upgrade",
                "--with-new-pkgs"
            ]
        );
        assert!(APT_ENVIRONMENT.contains(&("DEBIAN_FRONTEND", "noninteractive")));
    }

    #[test]
    fn each_mode_names_its_apt_get_command_and_none_overrides_holds_or_essential_packages() {
        assert_eq!(upgrade_step(UpgradeMode::Upgrade).args.last().map(String::as_str), Some("upgrade"));
        let full = upgrade_step(UpgradeMode::FullUpgrade);
        assert_eq!(
            (full.label.as_str(), full.args.last().map(String::as_str)),
            ("apt-get full-upgrade", Some("full-upgrade"))
        );
        for mode in [UpgradeMode::Upgrade, UpgradeMode::WithNewPackages, UpgradeMode::FullUpgrade] {
            let args = upgrade_step(mode).args.join(" ");
            assert!(!args.contains("allow"), "{args}");
            assert!(!args.contains("--force-yes"), "{args}");
        }
        assert_eq!(refresh_step().args, ["-q", "update"]);
    }

    #[test]
    fn dpkg_query_lines_become_the_installed_packages() {
        let text = "base-files\t12.4+deb12u9\tinstalled\n\
                    libc6:armhf\t2.36-9+rpt2+deb12u9\tinstalled\n\
                    oldkernel\t6.1.0\tconfig-files\n\
                    ghost\t\tnot-installed\n\
                    halfway\t1.1\thalf-configured\n\
                    garbage line\n";
        let installed = parse_installed(text);
        let names: Vec<&str> = installed.keys().map(String::as_str).collect();
        assert_eq!(names, ["base-files", "halfway", "libc6:armhf"]);
        assert_eq!(installed["libc6:armhf"], "2.36-9+rpt2+deb12u9");
        assert_eq!(parse_installed(""), Installed::new());
    }

    #[test]
    fn the_difference_names_each_package_upgraded_installed_and_removed_with_its_versions() {
        let before = parse_installed("a\t1.0\tinstalled\nb\t2.0\tinstalled\nc\t3.0\tinstalled\n");
        let after = parse_installed("a\t1.1\tinstalled\nb\t2.0\tinstalled\nd\t4.0\tinstalled\nc\t3.0\tconfig-files\n");
        let changes = diff(&before, &after);
        assert_eq!(changes.upgraded, [PackageChange { name: "a".into(), from: "1.0".into(), to: "1.1".into() }]);
        assert_eq!(changes.installed, [PackageVersion { name: "d".into(), version: "4.0".into() }]);
        assert_eq!(changes.removed, [PackageVersion { name: "c".into(), version: "3.0".into() }]);
        assert_eq!(diff(&after, &after), Changes::default());
    }

    #[test]
    fn a_failure_quotes_apt_gets_error_lines_rather_than_its_warnings() {
        let mut lines = ErrorLines::default();
        lines.push("W: Some index files failed to download.");
        assert_eq!(lines.quoted(), ": W: Some index files failed to download.");
        for i in 0..5 {
            lines.push(&format!("E: error {i}"));
        }
        lines.push("   ");
        assert_eq!(lines.quoted(), ": E: error 2; E: error 3; E: error 4");
        assert_eq!(ErrorLines::default().quoted(), "");
        let long = "é".repeat(MAX_LINE_CHARS + 10);
        assert_eq!(clip(&long).chars().count(), MAX_LINE_CHARS + 3);
    }
}
