//! Simulated systemd units and journal, so that the service tools can be used and tested
//! without systemd.
//!
//! Units change state the way systemctl changes them and each change is logged, with the
//! messages systemd writes, to an in-memory journal that `journal` reads back. `since`
//! takes the same forms as on a real host (see
//! [`parse_since`](crate::platform::real::system::parse_since)): an RFC 3339 time,
//! `YYYY-MM-DD HH:MM:SS` (read as UTC here, there being no host time zone to use), or
//! `-Nh`, `-Nm`, `-Nd` for that long before now.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::platform::real::system::parse_since;
use crate::platform::{JournalEntry, PlatformError, Services, UnitAction, UnitName, UnitState};

/// Oldest entries are dropped beyond this, so a long-running simulation stays small.
const JOURNAL_CAPACITY: usize = 10_000;

/// How long before the simulation started its units were "booted".
const BOOT_AGE: Duration = Duration::from_secs(2 * 3600);

/// One simulated unit.
struct SimUnit {
    description: String,
    active_state: &'static str,
    sub_state: &'static str,
    unit_file_state: &'static str,
    /// A one-shot runs its command and goes back to inactive when started.
    oneshot: bool,
    /// Restarts asked for since the simulation started.
    restarts: u32,
}

struct State {
    units: BTreeMap<String, SimUnit>,
    journal: VecDeque<(SystemTime, JournalEntry)>,
}

impl State {
    /// Appends a message about `unit`, as systemd (priority info) writes it.
    fn log(&mut self, time: SystemTime, unit: &str, message: String) {
        if self.journal.len() >= JOURNAL_CAPACITY {
            self.journal.pop_front();
        }
        let entry = JournalEntry {
            time: crate::logs::timestamp(time),
            priority: Some(6),
            unit: Some(unit.to_string()),
            message,
        };
        self.journal.push_back((time, entry));
    }
}

/// Fake systemd units with states and a journal held in memory.
pub struct SimServices {
    state: Mutex<State>,
}

impl SimServices {
    pub fn new() -> Self {
        let units: BTreeMap<String, SimUnit> = [
            ("mcp-raspi-server.service", "MCP Raspberry Pi server", true, "enabled", false),
            ("raspi-ops-agent.service", "MCP Raspberry Pi privileged ops agent", true, "enabled", false),
            ("ssh.service", "OpenBSD Secure Shell server", true, "enabled", false),
            ("bluetooth.service", "Bluetooth service", false, "disabled", false),
            ("nginx.service", "A high performance web server and a reverse proxy server", true, "enabled", false),
            ("mcp-raspi-os-upgrade.service", "MCP Raspberry Pi OS upgrade", false, "static", true),
        ]
        .into_iter()
        .map(|(name, description, active, unit_file_state, oneshot)| {
            let (active_state, sub_state) = if active { ("active", "running") } else { ("inactive", "dead") };
            let unit = SimUnit {
                description: description.to_string(),
                active_state,
                sub_state,
                unit_file_state,
                oneshot,
                restarts: 0,
            };
            (name.to_string(), unit)
        })
        .collect();
        let mut state = State { units, journal: VecDeque::new() };
        // The start-up messages of the units running since "boot", so the journal is not empty.
        let boot = SystemTime::now().checked_sub(BOOT_AGE).unwrap_or(SystemTime::UNIX_EPOCH);
        let running: Vec<(String, String)> = state
            .units
            .iter()
            .filter(|(_, u)| u.active_state == "active")
            .map(|(name, u)| (name.clone(), u.description.clone()))
            .collect();
        for (name, description) in running {
            state.log(boot, &name, format!("Starting {name} - {description}..."));
            state.log(boot, &name, format!("Started {name} - {description}."));
        }
        SimServices { state: Mutex::new(state) }
    }

    /// How many restarts of `unit` were asked for.
    #[cfg(test)]
    pub fn restarts(&self, unit: &UnitName) -> u32 {
        self.lock().map(|s| s.units.get(unit.as_str()).map_or(0, |u| u.restarts)).unwrap_or(0)
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, PlatformError> {
        self.state.lock().map_err(|_| PlatformError::Failed("simulated units are unavailable".into()))
    }
}

impl Default for SimServices {
    fn default() -> Self {
        Self::new()
    }
}

impl Services for SimServices {
    fn status(&self, unit: &UnitName) -> Result<UnitState, PlatformError> {
        let state = self.lock()?;
        Ok(match state.units.get(unit.as_str()) {
            Some(u) => UnitState {
                unit: unit.to_string(),
                load_state: "loaded".into(),
                active_state: u.active_state.into(),
                sub_state: u.sub_state.into(),
                description: Some(u.description.clone()),
                unit_file_state: Some(u.unit_file_state.into()),
            },
            // What `systemctl show` reports for a name it cannot find.
            None => UnitState {
                unit: unit.to_string(),
                load_state: "not-found".into(),
                active_state: "inactive".into(),
                sub_state: "dead".into(),
                description: None,
                unit_file_state: None,
            },
        })
    }

    fn control(&self, unit: &UnitName, action: UnitAction) -> Result<UnitState, PlatformError> {
        {
            let mut state = self.lock()?;
            let now = SystemTime::now();
            let name = unit.as_str();
            let Some(u) = state.units.get_mut(name) else {
                return Err(PlatformError::Failed(format!("Unit {name} not found.")));
            };
            let description = u.description.clone();
            let was_active = u.active_state == "active";
            let mut messages = Vec::new();
            let stop = |messages: &mut Vec<String>| {
                messages.push(format!("Stopping {name} - {description}..."));
                messages.push(format!("{name}: Deactivated successfully."));
                messages.push(format!("Stopped {name} - {description}."));
            };
            match action {
                UnitAction::Start | UnitAction::Restart => {
                    if action == UnitAction::Restart {
                        u.restarts += 1;
                        if was_active {
                            stop(&mut messages);
                        }
                    }
                    // Starting an active unit does nothing, as with systemctl.
                    if !was_active || action == UnitAction::Restart {
                        messages.push(format!("Starting {name} - {description}..."));
                        if u.oneshot {
                            messages.push(format!("{name}: Deactivated successfully."));
                            messages.push(format!("Finished {name} - {description}."));
                            (u.active_state, u.sub_state) = ("inactive", "dead");
                        } else {
                            messages.push(format!("Started {name} - {description}."));
                            (u.active_state, u.sub_state) = ("active", "running");
                        }
                    }
                }
                UnitAction::Stop => {
                    if was_active {
                        stop(&mut messages);
                    }
                    (u.active_state, u.sub_state) = ("inactive", "dead");
                }
                UnitAction::Enable | UnitAction::Disable => {
                    let wants = format!("/etc/systemd/system/multi-user.target.wants/{name}");
                    match (action, u.unit_file_state) {
                        // A unit without an [Install] section cannot be enabled or disabled.
                        (_, "static") => {
                            messages.push(format!("The unit files have no installation config; {name} stays static."))
                        }
                        (UnitAction::Enable, "enabled") | (UnitAction::Disable, "disabled") => {}
                        (UnitAction::Enable, _) => {
                            u.unit_file_state = "enabled";
                            messages.push(format!("Created symlink {wants} → /lib/systemd/system/{name}."));
                        }
                        _ => {
                            u.unit_file_state = "disabled";
                            messages.push(format!("Removed \"{wants}\"."));
                        }
                    }
                }
            }
            for message in messages {
                state.log(now, name, message);
            }
        }
        self.status(unit)
    }

    fn journal(&self, unit: &UnitName, lines: usize, since: Option<&str>) -> Result<Vec<JournalEntry>, PlatformError> {
        let now = SystemTime::now();
        let since = since.map(parse_since).transpose()?.map(|s| s.instant(now));
        let state = self.lock()?;
        let mut entries: Vec<JournalEntry> = state
            .journal
            .iter()
            .rev()
            .filter(|(time, e)| e.unit.as_deref() == Some(unit.as_str()) && since.is_none_or(|s| *time >= s))
            .take(lines)
            .map(|(_, e)| e.clone())
            .collect();
        entries.reverse();
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn unit(name: &str) -> UnitName {
        UnitName::parse(name).unwrap()
    }

    fn messages(services: &SimServices, name: &str, lines: usize, since: Option<&str>) -> Vec<String> {
        services.journal(&unit(name), lines, since).unwrap().into_iter().map(|e| e.message).collect()
    }

    #[test]
    fn the_simulation_has_the_usual_units_with_their_unit_file_states() {
        let services = SimServices::new();
        let ssh = services.status(&unit("ssh")).unwrap();
        assert_eq!((ssh.active_state.as_str(), ssh.sub_state.as_str()), ("active", "running"));
        assert_eq!(ssh.unit_file_state.as_deref(), Some("enabled"));
        let nginx = services.status(&unit("nginx")).unwrap();
        assert_eq!(nginx.load_state, "loaded");
        let upgrade = services.status(&unit("mcp-raspi-os-upgrade")).unwrap();
        assert_eq!(upgrade.unit_file_state.as_deref(), Some("static"));
        let names = ["mcp-raspi-server", "raspi-ops-agent", "bluetooth"].map(unit);
        assert!(services.list(&names).unwrap().iter().all(|s| s.load_state == "loaded"));
    }

    #[test]
    fn an_unknown_unit_is_not_found_in_status_and_refused_by_control() {
        let services = SimServices::new();
        assert_eq!(services.status(&unit("nope")).unwrap().load_state, "not-found");
        assert_eq!(
            services.control(&unit("nope"), UnitAction::Start),
            Err(PlatformError::Failed("Unit nope.service not found.".into()))
        );
    }

    #[test]
    fn stop_and_start_change_the_state_and_write_systemds_messages() {
        let services = SimServices::new();
        let nginx = unit("nginx");
        let stopped = services.control(&nginx, UnitAction::Stop).unwrap();
        assert_eq!((stopped.active_state.as_str(), stopped.sub_state.as_str()), ("inactive", "dead"));
        let started = services.control(&nginx, UnitAction::Start).unwrap();
        assert_eq!((started.active_state.as_str(), started.sub_state.as_str()), ("active", "running"));
        let log = messages(&services, "nginx", 4, None);
        assert_eq!(log[0], "nginx.service: Deactivated successfully.");
        assert_eq!(log[3], "Started nginx.service - A high performance web server and a reverse proxy server.");
    }

    #[test]
    fn restart_counts_restarts_and_leaves_the_unit_running() {
        let services = SimServices::new();
        let bluetooth = unit("bluetooth");
        services.control(&bluetooth, UnitAction::Restart).unwrap();
        let state = services.control(&bluetooth, UnitAction::Restart).unwrap();
        assert_eq!((state.active_state.as_str(), state.sub_state.as_str()), ("active", "running"));
        assert_eq!(services.restarts(&bluetooth), 2);
        assert_eq!(services.restarts(&unit("ssh")), 0);
        assert_eq!(messages(&services, "bluetooth", 100, None).len(), 2 + 5);
    }

    #[test]
    fn starting_a_running_unit_changes_nothing() {
        let services = SimServices::new();
        let before = messages(&services, "ssh", 100, None);
        services.control(&unit("ssh"), UnitAction::Start).unwrap();
        assert_eq!(messages(&services, "ssh", 100, None), before);
    }

    #[test]
    fn a_oneshot_unit_runs_and_returns_to_inactive() {
        let services = SimServices::new();
        let state = services.control(&unit("mcp-raspi-os-upgrade"), UnitAction::Start).unwrap();
        assert_eq!(state.active_state, "inactive");
        assert!(messages(&services, "mcp-raspi-os-upgrade", 1, None)[0].starts_with("Finished "));
    }

    #[test]
    fn enable_and_disable_change_the_unit_file_state_but_not_a_static_one() {
        let services = SimServices::new();
        let bluetooth = unit("bluetooth");
        let enabled = services.control(&bluetooth, UnitAction::Enable).unwrap();
        assert_eq!(enabled.unit_file_state.as_deref(), Some("enabled"));
        assert_eq!(enabled.active_state, "inactive");
        assert!(messages(&services, "bluetooth", 1, None)[0].starts_with("Created symlink "));
        let disabled = services.control(&bluetooth, UnitAction::Disable).unwrap();
        assert_eq!(disabled.unit_file_state.as_deref(), Some("disabled"));
        let upgrade = services.control(&unit("mcp-raspi-os-upgrade"), UnitAction::Enable).unwrap();
        assert_eq!(upgrade.unit_file_state.as_deref(), Some("static"));
    }

    #[test]
    fn the_journal_returns_the_last_lines_oldest_first_with_rfc3339_times() {
        let services = SimServices::new();
        services.control(&unit("ssh"), UnitAction::Restart).unwrap();
        let entries = services.journal(&unit("ssh"), 3, None).unwrap();
        let texts: Vec<&str> = entries.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            texts,
            [
                "Stopped ssh.service - OpenBSD Secure Shell server.",
                "Starting ssh.service - OpenBSD Secure Shell server...",
                "Started ssh.service - OpenBSD Secure Shell server."
            ]
        );
        assert!(entries
            .iter()
            .all(|e| humantime::parse_rfc3339(&e.time).is_ok() && e.unit.as_deref() == Some("ssh.service")));
        assert!(services.journal(&unit("ssh"), 0, None).unwrap().is_empty());
        assert!(services.journal(&unit("nope"), 10, None).unwrap().is_empty());
    }

    #[test]
    fn since_keeps_only_newer_entries_in_relative_and_absolute_forms() {
        let services = SimServices::new();
        // Start-up messages are two hours old; the restart is new.
        assert_eq!(messages(&services, "ssh", 100, None).len(), 2);
        services.control(&unit("ssh"), UnitAction::Restart).unwrap();
        assert_eq!(messages(&services, "ssh", 100, Some("-1h")).len(), 5);
        assert_eq!(messages(&services, "ssh", 100, Some("-1d")).len(), 7);
        let an_hour_ago = crate::logs::timestamp(SystemTime::now() - Duration::from_secs(3600));
        assert_eq!(messages(&services, "ssh", 100, Some(&an_hour_ago)).len(), 5);
        assert_eq!(messages(&services, "ssh", 100, Some("2000-01-01 00:00:00")).len(), 7);
    }

    #[test]
    fn a_since_that_is_not_a_time_is_refused() {
        let services = SimServices::new();
        for bad in ["; rm -rf /", "--foo", "yesterday"] {
            assert!(matches!(services.journal(&unit("ssh"), 10, Some(bad)), Err(PlatformError::Invalid(_))));
        }
    }
}
