//! The agent's privileges: which Linux capabilities its operations need (none, as built:
//! every operation is authorised by a device group or by polkit), dropping everything
//! else at start, and refusing to run when that fails or when started as root.
//!
//! | operation | privilege used |
//! |---|---|
//! | GPIO, PWM | group `gpio` (/dev/gpiochip*, /dev/gpiomem, /sys/class/pwm) |
//! | I2C | group `i2c` (/dev/i2c-*) |
//! | SPI | group `spi` (/dev/spidev*) |
//! | UART | group `dialout` (/dev/serial0, /dev/ttyAMA*) |
//! | camera | group `video` (/dev/video*, /dev/media*) |
//! | unit start/stop/restart | systemd over D-Bus, authorised by the polkit rule for the agent's user, limited to allowlisted units |
//! | journal of a unit | group `systemd-journal` |
//! | reboot, shutdown | logind over D-Bus (ScheduleShutdown), authorised by the polkit rule |
//! | OS upgrade | starting the root one-shot unit `mcp-raspi-os-upgrade.service` (polkit), whose program the agent cannot change |

use std::collections::HashSet;

use caps::{CapSet, Capability, CapsHashSet};

use crate::config::Config;
use crate::ipc::AgentCapabilities;

/// Capabilities the enabled operations need. Every operation above is authorised
/// without one, so the set is empty: a capability found at start is dropped.
pub fn required(_config: &Config) -> CapsHashSet {
    HashSet::new()
}

fn names(set: &CapsHashSet) -> Vec<String> {
    let mut v: Vec<String> = set.iter().map(|c| c.to_string()).collect();
    v.sort();
    v
}

/// The process's identity and capability sets now.
pub fn report() -> AgentCapabilities {
    let read = |set| caps::read(None, set).map(|s| names(&s)).unwrap_or_default();
    let groups = nix::unistd::getgroups()
        .unwrap_or_default()
        .into_iter()
        .map(|g| match nix::unistd::Group::from_gid(g) {
            Ok(Some(group)) => group.name,
            _ => g.to_string(),
        })
        .collect();
    AgentCapabilities {
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        groups,
        effective: read(CapSet::Effective),
        permitted: read(CapSet::Permitted),
        inheritable: read(CapSet::Inheritable),
        ambient: read(CapSet::Ambient),
        bounding: read(CapSet::Bounding),
        no_new_privs: nix::sys::prctl::get_no_new_privs().unwrap_or(false),
        backend: String::new(),
        backend_reason: String::new(),
    }
}

/// Refuses root, drops every capability outside `allowed`, sets no-new-privs, and checks
/// the result. Returns the final report.
pub fn enforce(allowed: &CapsHashSet) -> Result<AgentCapabilities, String> {
    if nix::unistd::getuid().is_root() || nix::unistd::geteuid().is_root() {
        return Err("refusing to run as root: the agent runs as its own unprivileged user (the package's \
                    `mcp-ops`) with device groups and polkit authorisation"
            .into());
    }
    let err = |what: &str, e: caps::errors::CapsError| format!("cannot {what}: {e}");
    // The bounding set can only shrink while CAP_SETPCAP is held, so it goes first.
    let effective = caps::read(None, CapSet::Effective).map_err(|e| err("read capabilities", e))?;
    if effective.contains(&Capability::CAP_SETPCAP) {
        let bounding = caps::read(None, CapSet::Bounding).map_err(|e| err("read the bounding set", e))?;
        for cap in bounding.difference(allowed) {
            caps::drop(None, CapSet::Bounding, *cap)
                .map_err(|e| err(&format!("drop {cap} from the bounding set"), e))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| err("clear the ambient set", e))?;
    for set in [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        let current = caps::read(None, set).map_err(|e| err("read capabilities", e))?;
        let keep: CapsHashSet = current.intersection(allowed).copied().collect();
        if keep != current {
            caps::set(None, set, &keep).map_err(|e| err(&format!("drop capabilities from {set:?}"), e))?;
        }
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("cannot set no-new-privs: {e}"))?;
    let report = report();
    let extra: Vec<&String> = report
        .effective
        .iter()
        .chain(&report.permitted)
        .chain(&report.inheritable)
        .chain(&report.ambient)
        .filter(|name| !allowed.iter().any(|c| &c.to_string() == *name))
        .collect();
    if !extra.is_empty() {
        return Err(format!("refusing to run with capabilities beyond those needed: {extra:?} remain after dropping"));
    }
    Ok(report)
}
