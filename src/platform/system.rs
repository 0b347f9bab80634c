//! systemd units, the journal, power and OS packages: the types and traits.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::PlatformError;

/// A systemd unit name, checked before it reaches any command line.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct UnitName(String);

impl UnitName {
    const SUFFIXES: [&'static str; 7] = [".service", ".timer", ".socket", ".target", ".mount", ".path", ".slice"];

    /// Letters, digits and `:-_.@\` with a known unit suffix, at most 255 bytes, never
    /// starting with `-` (which a command would read as an option).
    pub fn is_valid(s: &str) -> bool {
        s.len() <= 255
            && !s.starts_with('-')
            && !s.starts_with('.')
            && Self::SUFFIXES.iter().any(|suf| s.len() > suf.len() && s.ends_with(suf))
            && s.chars().all(|c| c.is_ascii_alphanumeric() || ":-_.@\\".contains(c))
    }

    /// Parses a unit name; a name without a suffix is a `.service`.
    pub fn parse(s: &str) -> Result<UnitName, String> {
        let candidate = if s.contains('.') { s.to_string() } else { format!("{s}.service") };
        if Self::is_valid(&candidate) {
            Ok(UnitName(candidate))
        } else {
            Err(format!(
                "{s:?} is not a systemd unit name: use letters, digits and ':-_.@' with a suffix such as .service"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for UnitName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        UnitName::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The state systemd reports for a unit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UnitState {
    /// Unit name, e.g. `mcp-raspi-server.service`.
    pub unit: String,
    /// `loaded`, `not-found`, `masked`, ...
    pub load_state: String,
    /// `active`, `inactive`, `failed`, `activating`, ...
    pub active_state: String,
    /// The unit type's own state, e.g. `running`, `dead`, `exited`.
    pub sub_state: String,
    /// The unit's description, when it has one.
    pub description: Option<String>,
    /// `enabled`, `disabled`, `static`, ... when known.
    #[serde(default)]
    pub unit_file_state: Option<String>,
}

/// What to do to a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnitAction {
    Start,
    Stop,
    Restart,
    Enable,
    Disable,
}

impl UnitAction {
    pub fn as_str(self) -> &'static str {
        match self {
            UnitAction::Start => "start",
            UnitAction::Stop => "stop",
            UnitAction::Restart => "restart",
            UnitAction::Enable => "enable",
            UnitAction::Disable => "disable",
        }
    }
}

/// One journal entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JournalEntry {
    /// RFC 3339 time, UTC.
    pub time: String,
    /// syslog priority 0 (emerg) to 7 (debug).
    pub priority: Option<u8>,
    pub unit: Option<String>,
    pub message: String,
}

/// systemd units and their journal.
pub trait Services: Send + Sync {
    fn status(&self, unit: &UnitName) -> Result<UnitState, PlatformError>;
    /// States of the given units (the allowlist), in order.
    fn list(&self, units: &[UnitName]) -> Result<Vec<UnitState>, PlatformError> {
        units.iter().map(|u| self.status(u)).collect()
    }
    /// Starts, stops, restarts, enables or disables a unit; returns its new state.
    fn control(&self, unit: &UnitName, action: UnitAction) -> Result<UnitState, PlatformError>;
    /// Asks for `units` to be restarted and returns at once, for a caller that is one of
    /// them (the ops agent restarting itself into a new release).
    fn restart_without_waiting(&self, units: &[UnitName]) -> Result<(), PlatformError> {
        units.iter().try_for_each(|u| self.control(u, UnitAction::Restart).map(drop))
    }
    /// Asks for the one-shot `unit` to start and returns at once: its program restarts the
    /// caller (the configuration deployment's unit).
    fn start_without_waiting(&self, unit: &UnitName) -> Result<(), PlatformError> {
        self.control(unit, UnitAction::Start).map(drop)
    }
    /// The newest `lines` journal entries of a unit, oldest first, optionally since a
    /// time (`journalctl --since` syntax, validated by the caller).
    fn journal(&self, unit: &UnitName, lines: usize, since: Option<&str>) -> Result<Vec<JournalEntry>, PlatformError>;
}

/// Reboot or power off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    Reboot,
    Shutdown,
}

/// A scheduled power action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PowerReceipt {
    pub action: PowerAction,
    pub delay_seconds: u32,
    /// When it will happen, RFC 3339 UTC.
    pub scheduled_for: String,
    /// How it was asked for (`logind`, `simulated`).
    pub method: String,
}

/// Machine power.
pub trait Power: Send + Sync {
    /// Schedules a reboot or shutdown after `delay_seconds` (0: now).
    fn schedule(&self, action: PowerAction, delay_seconds: u32) -> Result<PowerReceipt, PlatformError>;
}

/// A package with a newer version available.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Upgradable {
    pub name: String,
    pub installed_version: String,
    pub candidate_version: String,
    /// Archive the candidate comes from, e.g. `bookworm-security`.
    pub origin: Option<String>,
    /// Whether the candidate is a security update.
    pub security: bool,
}

/// State of an OS upgrade run by the root one-shot unit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UpgradeStatus {
    /// `idle`, `running`, `succeeded` or `failed`.
    pub state: String,
    /// Last lines of the upgrade's output.
    pub log_tail: Vec<String>,
    /// What the upgrade's program recorded about this run: when it started and ended, how
    /// it went, and which packages it upgraded, installed or removed. Absent before the
    /// program has recorded anything, and when it failed before it could.
    #[serde(default)]
    pub outcome: Option<UpgradeOutcome>,
}

/// The file, in the state directory, where the upgrade's program records its outcome.
pub const UPGRADE_OUTCOME_FILE: &str = "os-upgrade.json";

/// How far an OS upgrade may go in changing the set of installed packages
/// (`updates.os.upgrade_mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpgradeMode {
    /// `apt-get upgrade`: newer versions of installed packages only; an upgrade that needs
    /// a new package or a removal is held back.
    Upgrade,
    /// `apt-get upgrade --with-new-pkgs`: also installs the new packages upgrades depend on
    /// (a new kernel's, for instance), and still removes nothing.
    #[default]
    WithNewPackages,
    /// `apt-get full-upgrade`: also removes installed packages that block an upgrade.
    FullUpgrade,
}

impl UpgradeMode {
    /// The name used in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            UpgradeMode::Upgrade => "upgrade",
            UpgradeMode::WithNewPackages => "with_new_packages",
            UpgradeMode::FullUpgrade => "full_upgrade",
        }
    }

    /// The apt-get command and its options that upgrade this far.
    pub fn apt_command(self) -> &'static [&'static str] {
        match self {
            UpgradeMode::Upgrade => &["upgrade"],
            UpgradeMode::WithNewPackages => &["upgrade", "--with-new-pkgs"],
            UpgradeMode::FullUpgrade => &["full-upgrade"],
        }
    }
}

impl fmt::Display for UpgradeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an OS upgrade run went, as its program recorded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpgradeResult {
    /// It has not ended yet.
    Running,
    /// apt-get upgraded everything it was asked to.
    Succeeded,
    /// It was refused, or a step failed; `error` says which and why.
    Failed,
}

/// A package whose installed version an upgrade changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PackageChange {
    pub name: String,
    /// The version installed before.
    pub from: String,
    /// The version installed after.
    pub to: String,
}

/// A package an upgrade installed or removed, with that version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PackageVersion {
    pub name: String,
    pub version: String,
}

// The program is the dpkg-owned one, while the agent reading its record may be a newer
// release installed by the self-update: reading ignores fields it does not know and fills in
// the ones it misses.
/// What the upgrade's program (`mcp-raspi os-upgrade`) recorded about its run, in
/// os-upgrade.json in the state directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UpgradeOutcome {
    /// `running` until the program ends, then `succeeded` or `failed`.
    pub result: UpgradeResult,
    /// When the run started, RFC 3339 UTC.
    pub started_at: String,
    /// When it ended, RFC 3339 UTC; null while it runs.
    #[serde(default)]
    pub finished_at: Option<String>,
    /// How far the upgrade may go (`updates.os.upgrade_mode`).
    #[serde(default)]
    pub mode: UpgradeMode,
    /// Whether the package lists are refreshed (`apt-get update`) before upgrading.
    #[serde(default)]
    pub refresh_lists: bool,
    /// Packages whose installed version changed, from which version to which (comparing
    /// `dpkg-query -W` before and after).
    #[serde(default)]
    pub upgraded: Vec<PackageChange>,
    /// Packages installed that were not before.
    #[serde(default)]
    pub installed: Vec<PackageVersion>,
    /// Packages removed.
    #[serde(default)]
    pub removed: Vec<PackageVersion>,
    /// Why the run failed (or was refused); null otherwise.
    #[serde(default)]
    pub error: Option<String>,
    /// systemd's id of the unit run that wrote the record (`$INVOCATION_ID`), which tells
    /// this run's record from an earlier one's; null when run outside systemd.
    #[serde(default)]
    pub invocation_id: Option<String>,
}

/// OS packages (apt).
pub trait Packages: Send + Sync {
    /// Packages with a newer candidate version.
    fn list_upgradable(&self) -> Result<Vec<Upgradable>, PlatformError>;
    /// Starts the upgrade (through the root one-shot unit on a real system).
    fn start_upgrade(&self) -> Result<UpgradeStatus, PlatformError>;
    /// How the upgrade started by `start_upgrade` is doing.
    fn upgrade_status(&self) -> Result<UpgradeStatus, PlatformError>;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_upgrade_status_without_an_outcome_as_older_agents_send_it_still_reads() {
        let status: UpgradeStatus = serde_json::from_str(r#"{"state": "succeeded", "log_tail": []}"#).unwrap();
        assert_eq!((status.state.as_str(), status.outcome), ("succeeded", None));
    }

    #[test]
    fn each_upgrade_mode_is_named_as_in_the_configuration() {
        for mode in [UpgradeMode::Upgrade, UpgradeMode::WithNewPackages, UpgradeMode::FullUpgrade] {
            assert_eq!(serde_json::to_value(mode).unwrap(), serde_json::json!(mode.as_str()));
        }
        assert_eq!(UpgradeMode::default().to_string(), "with_new_packages");
    }
}
