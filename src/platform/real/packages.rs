//! OS packages through apt: listing what can be upgraded, and upgrading by starting a root
//! one-shot unit.
//!
//! The agent is not root and cannot run `apt upgrade` itself. The package ships a one-shot
//! unit (by default `mcp-raspi-os-upgrade.service`) whose command the agent cannot alter;
//! polkit lets the agent start that unit, and its progress is read back from systemd and
//! the journal. Listing needs no privilege: `apt list --upgradable` reads the package lists
//! as the last `apt update` (apt-daily.timer) left them.

use super::system::{read_journal, require_systemd, run, systemctl_failure, systemctl_show};
use crate::platform::{Packages, PlatformError, UnitName, Upgradable, UpgradeStatus};

/// The upgrade unit the package ships.
pub(crate) const DEFAULT_UPGRADE_UNIT: &str = "mcp-raspi-os-upgrade.service";

/// How many journal lines of the upgrade unit `upgrade_status` returns.
const LOG_TAIL_LINES: usize = 20;

/// apt for listing, and the upgrade unit for upgrading.
pub struct AptPackages {
    /// The unit `start_upgrade` starts; an error only when the built-in default name failed
    /// validation, reported by each call instead of a panic at start-up.
    upgrade_unit: Result<UnitName, String>,
}

impl AptPackages {
    /// Upgrades through `upgrade_unit` (`updates.os.upgrade_unit`).
    pub fn new(upgrade_unit: UnitName) -> Self {
        AptPackages { upgrade_unit: Ok(upgrade_unit) }
    }

    /// Upgrades through [`DEFAULT_UPGRADE_UNIT`], for callers without the configuration.
    pub fn with_default_unit() -> Self {
        match UnitName::parse(DEFAULT_UPGRADE_UNIT) {
            Ok(unit) => Self::new(unit),
            Err(e) => AptPackages { upgrade_unit: Err(e) },
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
        Ok(if status.state == "running" { status } else { UpgradeStatus { state: "running".into(), ..status } })
    }

    fn upgrade_status(&self) -> Result<UpgradeStatus, PlatformError> {
        let unit = self.unit()?;
        let properties = systemctl_show(unit, "LoadState,ActiveState,SubState,Result,InactiveExitTimestampMonotonic")?;
        let state = upgrade_state(unit, |key| properties.get(key).map(String::as_str).unwrap_or(""))?;
        // The state is what was asked for; an unreadable journal only loses the tail.
        let log_tail = match read_journal(unit, LOG_TAIL_LINES, None) {
            Ok(entries) => entries.into_iter().map(|e| e.message).collect(),
            Err(e) => vec![format!("(the upgrade log is unavailable: {e})")],
        };
        Ok(UpgradeStatus { state: state.into(), log_tail })
    }
}

/// `idle`, `running`, `succeeded` or `failed` from the upgrade unit's properties.
fn upgrade_state<'a>(unit: &UnitName, get: impl Fn(&str) -> &'a str) -> Result<&'static str, PlatformError> {
    if get("LoadState") != "loaded" {
        return Err(PlatformError::Unavailable(format!(
            "the upgrade unit {unit} is not installed (LoadState={}): set updates.os.upgrade_unit to the unit \
             that runs the upgrade",
            get("LoadState")
        )));
    }
    Ok(match (get("ActiveState"), get("SubState")) {
        ("failed", _) => "failed",
        // A one-shot with RemainAfterExit=yes stays active once its command has exited.
        ("active", "exited") => "succeeded",
        ("activating" | "active" | "reloading" | "deactivating", _) => "running",
        _ if get("Result") != "success" => "failed",
        // Leaving the inactive state stamps this; 0 means it has not run since boot.
        _ if matches!(get("InactiveExitTimestampMonotonic"), "" | "0") => "idle",
        _ => "succeeded",
    })
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

    fn state(text: &str) -> Result<&'static str, PlatformError> {
        let properties: BTreeMap<String, String> = super::super::system::parse_properties(text);
        let unit = UnitName::parse(DEFAULT_UPGRADE_UNIT).unwrap();
        upgrade_state(&unit, |k| properties.get(k).map(String::as_str).unwrap_or(""))
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

    #[test]
    fn a_missing_upgrade_unit_is_unavailable_and_named() {
        let err = state("LoadState=not-found\nActiveState=inactive\n").unwrap_err();
        assert!(matches!(err, PlatformError::Unavailable(m) if m.contains(DEFAULT_UPGRADE_UNIT)));
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
