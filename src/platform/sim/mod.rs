//! The simulated backend: in-memory state standing in for the hardware and services of a
//! Raspberry Pi, so that every tool works on a laptop and in tests.

mod bus;
mod camera;
mod gpio;
mod packages;
mod power;
mod system;

use std::sync::Arc;

use super::Platform;

pub use system::SimServices;

/// Every simulated implementation.
pub fn platform(reason: String) -> Platform {
    let services = Arc::new(SimServices::new());
    Platform {
        backend: "simulated",
        reason: reason.into(),
        gpio: Arc::new(gpio::SimGpio::new()),
        i2c: Arc::new(bus::SimI2c::new()),
        spi: Arc::new(bus::SimSpi::new()),
        uart: Arc::new(bus::SimUart::new()),
        camera: Arc::new(camera::SimCamera::new()),
        services: services.clone(),
        power: Arc::new(power::SimPower::new()),
        packages: Arc::new(packages::SimPackages::new()),
    }
}
