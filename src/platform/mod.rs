//! The seam between tools and the machine's hardware and OS services.
//!
//! Every operation that touches hardware or system services goes through a trait here,
//! with a real implementation for a Raspberry Pi and a simulated one that keeps its state
//! in memory, chosen by `platform.backend`. Plain /proc and /sys reading lives in
//! [`crate::host`], which needs no seam: tests point it at fixture trees instead.

mod real;
mod sim;

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::Backend;
use crate::host::Roots;

pub use real::SystemdServices;
pub use sim::SimServices;

/// A systemd unit name, checked before it reaches any command line.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
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
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
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
}

/// Why a platform operation failed.
#[derive(Debug)]
pub enum PlatformError {
    /// The host cannot do this at all (no systemd, not a Pi, program missing).
    Unavailable(String),
    /// The operation ran and failed.
    Failed(String),
}

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlatformError::Unavailable(m) => write!(f, "not available on this host: {m}"),
            PlatformError::Failed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for PlatformError {}

/// Reading systemd unit states (no privilege needed to read).
pub trait Services: Send + Sync {
    fn status(&self, unit: &UnitName) -> Result<UnitState, PlatformError>;
}

/// The platform chosen at start.
#[derive(Clone)]
pub struct Platform {
    /// Which backend is in use: `raspberry_pi` or `simulated`.
    pub backend: &'static str,
    /// Why that backend was chosen, shown by `system.get_info`.
    pub reason: String,
    pub services: Arc<dyn Services>,
}

impl fmt::Debug for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Platform").field("backend", &self.backend).field("reason", &self.reason).finish()
    }
}

impl Platform {
    /// Chooses the backend: `auto` picks the real one only when the device tree names a
    /// Raspberry Pi.
    pub fn select(backend: Backend, roots: &Roots) -> Platform {
        let model =
            crate::host::board::read_board(roots).ok().and_then(|b| if b.is_raspberry_pi { b.model } else { None });
        let (real, reason) = match (backend, model) {
            (Backend::Simulated, _) => (false, "platform.backend is \"simulated\"".to_string()),
            (Backend::RaspberryPi, _) => (true, "platform.backend is \"raspberry_pi\"".to_string()),
            (Backend::Auto, Some(model)) => (true, format!("auto: device tree model is {model:?}")),
            (Backend::Auto, None) => (false, "auto: the device tree names no Raspberry Pi".to_string()),
        };
        if real {
            Platform { backend: "raspberry_pi", reason, services: Arc::new(SystemdServices::new()) }
        } else {
            Platform { backend: "simulated", reason, services: Arc::new(SimServices::new()) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_get_a_service_suffix_and_reject_options_and_shell_characters() {
        assert_eq!(UnitName::parse("ssh").map(|u| u.0), Ok("ssh.service".to_string()));
        assert!(UnitName::parse("getty@tty1.service").is_ok());
        assert!(UnitName::parse("-H.service").is_err());
        assert!(UnitName::parse("a;rm -rf.service").is_err());
        assert!(UnitName::parse("x.exe").is_err());
    }
}
