//! The real backend: systemd through `systemctl` with argument vectors (never a shell).

use std::path::Path;
use std::process::Command;

use super::{PlatformError, Services, UnitName, UnitState};

/// Reads unit states from the running systemd.
pub struct SystemdServices {
    _private: (),
}

impl SystemdServices {
    pub fn new() -> Self {
        SystemdServices { _private: () }
    }
}

impl Default for SystemdServices {
    fn default() -> Self {
        Self::new()
    }
}

impl Services for SystemdServices {
    fn status(&self, unit: &UnitName) -> Result<UnitState, PlatformError> {
        // systemd creates this directory at boot; without it systemctl can only fail slowly.
        if !Path::new("/run/systemd/system").is_dir() {
            return Err(PlatformError::Unavailable("systemd is not the init system of this host".into()));
        }
        let output = Command::new("systemctl")
            .args(["show", "--no-pager", "--property=LoadState,ActiveState,SubState,Description", "--", unit.as_str()])
            .output()
            .map_err(|e| PlatformError::Unavailable(format!("cannot run systemctl: {e}")))?;
        if !output.status.success() {
            return Err(PlatformError::Failed(format!(
                "systemctl show {unit} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(parse_show(unit, &String::from_utf8_lossy(&output.stdout)))
    }
}

fn parse_show(unit: &UnitName, text: &str) -> UnitState {
    let mut state = UnitState {
        unit: unit.to_string(),
        load_state: "unknown".into(),
        active_state: "unknown".into(),
        sub_state: "unknown".into(),
        description: None,
    };
    for line in text.lines() {
        match line.split_once('=') {
            Some(("LoadState", v)) => state.load_state = v.to_string(),
            Some(("ActiveState", v)) => state.active_state = v.to_string(),
            Some(("SubState", v)) => state.sub_state = v.to_string(),
            Some(("Description", v)) if !v.is_empty() => state.description = Some(v.to_string()),
            _ => {}
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemctl_show_output_becomes_a_unit_state() {
        let unit = UnitName::parse("ssh").unwrap_or_else(|e| unreachable!("{e}"));
        let s = parse_show(&unit, "LoadState=loaded\nActiveState=active\nSubState=running\nDescription=OpenSSH\n");
        assert_eq!(
            (s.load_state.as_str(), s.active_state.as_str(), s.sub_state.as_str()),
            ("loaded", "active", "running")
        );
        assert_eq!(s.description.as_deref(), Some("OpenSSH"));
    }
}
