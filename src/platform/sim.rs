//! The simulated backend: in-memory state standing in for the hardware and services of
//! a Raspberry Pi, so that every tool works on a laptop and in tests.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{PlatformError, Services, UnitName, UnitState};

/// Fake systemd units with states held in memory.
pub struct SimServices {
    units: Mutex<BTreeMap<String, (String, String, String)>>,
}

impl SimServices {
    pub fn new() -> Self {
        let units = [
            ("mcp-raspi-server.service", "active", "running", "MCP Raspberry Pi server"),
            ("raspi-ops-agent.service", "active", "running", "MCP Raspberry Pi privileged ops agent"),
            ("ssh.service", "active", "running", "OpenBSD Secure Shell server"),
            ("bluetooth.service", "inactive", "dead", "Bluetooth service"),
        ]
        .into_iter()
        .map(|(u, a, s, d)| (u.to_string(), (a.to_string(), s.to_string(), d.to_string())))
        .collect();
        SimServices { units: Mutex::new(units) }
    }
}

impl Default for SimServices {
    fn default() -> Self {
        Self::new()
    }
}

impl Services for SimServices {
    fn status(&self, unit: &UnitName) -> Result<UnitState, PlatformError> {
        let units = self.units.lock().map_err(|_| PlatformError::Failed("simulated units are unavailable".into()))?;
        Ok(match units.get(unit.as_str()) {
            Some((active, sub, desc)) => UnitState {
                unit: unit.to_string(),
                load_state: "loaded".into(),
                active_state: active.clone(),
                sub_state: sub.clone(),
                description: Some(desc.clone()),
            },
            None => UnitState {
                unit: unit.to_string(),
                load_state: "not-found".into(),
                active_state: "inactive".into(),
                sub_state: "dead".into(),
                description: None,
            },
        })
    }
}
