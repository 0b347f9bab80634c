//! The seam between tools and the machine's hardware and OS services.
//!
//! Every operation that touches hardware or system services goes through a trait here,
//! with a real implementation for a Raspberry Pi (`real/`) and a simulated one that keeps
//! its state in memory (`sim/`), chosen by `platform.backend`. Plain /proc and /sys
//! reading lives in [`crate::host`], which needs no seam: tests point it at fixture trees.

pub mod bus;
pub mod camera;
pub mod gpio;
mod real;
mod sim;
pub mod system;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use crate::base::Backend;
use crate::host::Roots;

pub use bus::{I2c, Spi, SpiSettings, Uart};
pub use camera::{Camera, Capture, CaptureRequest};
pub use gpio::{Gpio, Level, PinMode, PinNumber, PinState, Pull, PwmState};
pub use real::polkit::{polkit_rules, PRODUCT_UNITS};
pub use system::{
    JournalEntry, PackageChange, PackageVersion, Packages, Power, PowerAction, PowerReceipt, Services, UnitAction,
    UnitName, UnitState, Upgradable, UpgradeMode, UpgradeOutcome, UpgradeResult, UpgradeStatus, UPGRADE_OUTCOME_FILE,
};

/// Why a platform operation failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PlatformError {
    /// The host cannot do this at all (no systemd, not a Pi, program or device missing).
    Unavailable(String),
    /// The request does not fit the hardware (an input pin written, a pin without PWM).
    Invalid(String),
    /// The operation ran and failed.
    Failed(String),
}

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlatformError::Unavailable(m) => write!(f, "not available on this host: {m}"),
            PlatformError::Invalid(m) | PlatformError::Failed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for PlatformError {}

/// The backend chosen at start: one implementation of each trait.
#[derive(Clone)]
pub struct Platform {
    /// Which backend is in use: `raspberry_pi` or `simulated`.
    pub backend: &'static str,
    /// Why that backend was chosen, shown by `system.get_info`.
    pub reason: Arc<str>,
    pub gpio: Arc<dyn Gpio>,
    pub i2c: Arc<dyn I2c>,
    pub spi: Arc<dyn Spi>,
    pub uart: Arc<dyn Uart>,
    pub camera: Arc<dyn Camera>,
    pub services: Arc<dyn Services>,
    pub power: Arc<dyn Power>,
    pub packages: Arc<dyn Packages>,
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
            real::platform(reason)
        } else {
            sim::platform(reason)
        }
    }

    /// OS upgrades through `unit`, whose program records how each went in `state_dir`: the
    /// configuration's `updates.os.upgrade_unit` and `paths.state_dir`. The simulated
    /// backend keeps its upgrades in memory and needs neither.
    pub fn with_os_upgrades(mut self, unit: &UnitName, state_dir: &Path) -> Platform {
        if self.backend == real::BACKEND {
            self.packages = real::packages(unit.clone(), state_dir.join(UPGRADE_OUTCOME_FILE));
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_get_a_service_suffix_and_reject_options_and_shell_characters() {
        assert_eq!(UnitName::parse("ssh").map(|u| u.as_str().to_string()), Ok("ssh.service".to_string()));
        assert!(UnitName::parse("getty@tty1.service").is_ok());
        assert!(UnitName::parse("-H.service").is_err());
        assert!(UnitName::parse("a;rm -rf.service").is_err());
        assert!(UnitName::parse("x.exe").is_err());
    }

    #[test]
    fn pin_numbers_stop_at_the_header() {
        assert!(PinNumber::new(27).is_ok());
        assert!(PinNumber::new(28).unwrap_err().contains("0 to 27"));
    }
}
