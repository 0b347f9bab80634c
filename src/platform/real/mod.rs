//! The real backend: rppal for GPIO and buses, the camera programs, systemd and apt.

pub(super) mod bus;
pub(super) mod camera;
pub(super) mod gpio;
mod packages;
// The rule generator serves installation, not the running server, so nothing here calls it.
pub mod polkit;
mod power;
pub(super) mod system;

use std::path::PathBuf;
use std::sync::Arc;

use super::{Packages, Platform, UnitName};

pub use system::SystemdServices;

/// The name of this backend in [`Platform::backend`].
pub const BACKEND: &str = "raspberry_pi";

/// OS upgrades through `unit`, whose program records how they went in `record`.
pub fn packages(unit: UnitName, record: PathBuf) -> Arc<dyn Packages> {
    Arc::new(packages::AptPackages::new(unit, record))
}

/// Every real implementation.
pub fn platform(reason: String) -> Platform {
    Platform {
        backend: BACKEND,
        reason: reason.into(),
        gpio: Arc::new(gpio::RppalGpio::new()),
        i2c: Arc::new(bus::RppalI2c::new()),
        spi: Arc::new(bus::RppalSpi::new()),
        uart: Arc::new(bus::RppalUart::new()),
        camera: Arc::new(camera::CliCamera::new()),
        services: Arc::new(SystemdServices::new()),
        power: Arc::new(power::LogindPower::new()),
        // Built without the configuration, so with the upgrade unit the package ships and the
        // default state directory; `Platform::with_os_upgrades` sets the configured ones.
        packages: Arc::new(packages::AptPackages::with_default_unit()),
    }
}
