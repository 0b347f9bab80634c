//! The decisions of the allowlists and switches that limit what the ops agent does, made in
//! one place for both sides of its socket.
//!
//! The server's tools check a request against the configuration before sending it, and the
//! agent checks it again when it arrives, so that a compromised server gets no further. Both
//! call the methods here: they decide alike and refuse in the same words, each refusal naming
//! the setting and what it allows so that an operator knows what to change where.

use std::fmt;

use super::devices::{
    CameraConfig, GpioConfig, I2cBusRule, I2cConfig, OsUpdatesConfig, PinRule, PowerConfig, ServicesConfig, SpiConfig,
    SpiDeviceRule, UartConfig, UartPortRule,
};
use crate::platform::{PinMode, PinNumber, PowerAction, UnitName};

/// What kind of refusal a [`Denied`] is, which decides the error code each side answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenialKind {
    /// The configuration does not allow it (a pin, bus, port or unit not listed, a mode or
    /// baud rate not allowed, the camera, a power action or OS updates turned off):
    /// `permission_denied` from a tool, `denied` from the agent.
    Forbidden,
    /// A value outside a limit the configuration sets (a frame size, a recording's length,
    /// an SPI clock, a power action's delay): `invalid_argument` from a tool, `invalid` from
    /// the agent.
    Invalid,
}

/// A request the configuration refuses, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    pub kind: DenialKind,
    /// Names the setting and what it allows.
    pub message: String,
}

impl Denied {
    pub(super) fn forbidden(message: String) -> Denied {
        Denied { kind: DenialKind::Forbidden, message }
    }

    pub(super) fn invalid(message: String) -> Denied {
        Denied { kind: DenialKind::Invalid, message }
    }
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Denied {}

fn mode_name(mode: PinMode) -> &'static str {
    match mode {
        PinMode::Input => "input",
        PinMode::Output => "output",
        PinMode::Pwm => "pwm",
    }
}

fn address_text(address: u8) -> String {
    format!("{address:#04x}")
}

impl GpioConfig {
    /// The rule for `pin`, or a refusal naming the pins `gpio.pins` allows.
    pub fn check_pin(&self, pin: PinNumber) -> Result<&PinRule, Denied> {
        self.rule(pin).ok_or_else(|| {
            let allowed: Vec<String> = self.pins.iter().map(|r| r.pin.get().to_string()).collect();
            Denied::forbidden(if allowed.is_empty() {
                format!(
                    "GPIO {} is not on gpio.pins, which lists no pins: an administrator adds the pin there to allow it",
                    pin.get()
                )
            } else {
                format!(
                    "GPIO {} is not on gpio.pins; allowed: {}. An administrator adds the pin there to allow it.",
                    pin.get(),
                    allowed.join(", ")
                )
            })
        })
    }

    /// The rule for `pin` when `gpio.pins` lets it be used as `mode`.
    pub fn check_mode(&self, pin: PinNumber, mode: PinMode) -> Result<&PinRule, Denied> {
        let rule = self.check_pin(pin)?;
        if rule.modes.contains(&mode) {
            return Ok(rule);
        }
        let modes: Vec<&str> = rule.modes.iter().map(|m| mode_name(*m)).collect();
        Err(Denied::forbidden(format!(
            "GPIO {} may not be used as {}: gpio.pins allows only {} for it. An administrator adds {} to its modes.",
            pin.get(),
            mode_name(mode),
            if modes.is_empty() { "nothing".to_string() } else { modes.join(", ") },
            mode_name(mode)
        )))
    }
}

impl I2cConfig {
    /// The rule for `bus`, or a refusal naming the buses `i2c.buses` allows. Any device on
    /// a listed bus may be looked for (scanned).
    pub fn check_bus(&self, bus: u8) -> Result<&I2cBusRule, Denied> {
        self.buses.iter().find(|r| r.bus == bus).ok_or_else(|| {
            let allowed: Vec<String> = self.buses.iter().map(|r| r.bus.to_string()).collect();
            Denied::forbidden(if allowed.is_empty() {
                format!("I2C bus {bus} is not on i2c.buses, which lists no buses: an administrator adds it there")
            } else {
                format!("I2C bus {bus} is not on i2c.buses; allowed: {}", allowed.join(", "))
            })
        })
    }

    /// The rule for `bus` when the device at `address` on it may be read and written.
    pub fn check_device(&self, bus: u8, address: u8) -> Result<&I2cBusRule, Denied> {
        let rule = self.check_bus(bus)?;
        if rule.addresses.contains(&address) {
            return Ok(rule);
        }
        Err(Denied::forbidden(if rule.addresses.is_empty() {
            format!(
                "address {} is not on the addresses of bus {bus} under i2c.buses, which lists none: \
                 an administrator adds it there",
                address_text(address)
            )
        } else {
            let allowed: Vec<String> = rule.addresses.iter().copied().map(address_text).collect();
            format!(
                "address {} is not on the addresses of bus {bus} under i2c.buses; allowed: {}",
                address_text(address),
                allowed.join(", ")
            )
        }))
    }
}

impl SpiConfig {
    /// The rule for SPI device `bus`.`chip_select`, or a refusal naming the devices allowed.
    pub fn check_device(&self, bus: u8, chip_select: u8) -> Result<&SpiDeviceRule, Denied> {
        self.devices.iter().find(|d| d.bus == bus && d.chip_select == chip_select).ok_or_else(|| {
            let allowed: Vec<String> = self.devices.iter().map(|d| format!("{}.{}", d.bus, d.chip_select)).collect();
            Denied::forbidden(if allowed.is_empty() {
                format!(
                    "SPI device {bus}.{chip_select} is not on spi.devices, which lists no devices: \
                     an administrator adds it there"
                )
            } else {
                format!(
                    "SPI device {bus}.{chip_select} is not on spi.devices; allowed (bus.chip_select): {}",
                    allowed.join(", ")
                )
            })
        })
    }
}

impl SpiDeviceRule {
    /// Checks that a clock of `speed_hz` is above 0 and at most the device's `max_speed_hz`.
    pub fn check_speed(&self, speed_hz: u32) -> Result<(), Denied> {
        let device = format!("SPI device {}.{}", self.bus, self.chip_select);
        if speed_hz == 0 {
            return Err(Denied::invalid(format!(
                "0 Hz cannot clock {device}; use 1 to the {} Hz that spi.devices allows for it",
                self.max_speed_hz
            )));
        }
        if speed_hz > self.max_speed_hz {
            return Err(Denied::invalid(format!(
                "{speed_hz} Hz is above the {} Hz that spi.devices allows for {device}",
                self.max_speed_hz
            )));
        }
        Ok(())
    }
}

impl UartConfig {
    /// The rule for serial `port` when it allows `baud`, or a refusal naming what is allowed.
    pub fn check_port(&self, port: &str, baud: u32) -> Result<&UartPortRule, Denied> {
        let Some(rule) = self.ports.iter().find(|p| p.port == port) else {
            let allowed: Vec<&str> = self.ports.iter().map(|p| p.port.as_str()).collect();
            return Err(Denied::forbidden(if allowed.is_empty() {
                format!(
                    "serial port {port:?} is not on uart.ports, which lists no ports: an administrator adds it there"
                )
            } else {
                format!("serial port {port:?} is not on uart.ports; allowed: {}", allowed.join(", "))
            }));
        };
        if rule.baud_rates.contains(&baud) {
            return Ok(rule);
        }
        let rates: Vec<String> = rule.baud_rates.iter().map(u32::to_string).collect();
        Err(Denied::forbidden(format!(
            "{baud} baud is not among the baud_rates uart.ports allows for {port}; allowed: {}",
            if rates.is_empty() { "none".to_string() } else { rates.join(", ") }
        )))
    }
}

impl ServicesConfig {
    /// Checks that `unit` is on `services.allowed_units`.
    pub fn check_unit(&self, unit: &UnitName) -> Result<(), Denied> {
        if self.allowed_units.contains(unit) {
            return Ok(());
        }
        let allowed: Vec<&str> = self.allowed_units.iter().map(UnitName::as_str).collect();
        Err(Denied::forbidden(if allowed.is_empty() {
            format!(
                "{unit} is not on services.allowed_units, which lists no units: an administrator adds it there to \
                 allow it"
            )
        } else {
            format!("{unit} is not on services.allowed_units; allowed: {}", allowed.join(", "))
        }))
    }
}

impl CameraConfig {
    /// Refuses everything while the camera is turned off; `what` names the refused use
    /// (`captures`, `recordings`).
    pub fn check_enabled(&self, what: &str) -> Result<(), Denied> {
        if self.enabled {
            Ok(())
        } else {
            Err(Denied::forbidden(format!(
                "the camera is turned off on this server: an administrator sets camera.enabled to true to allow {what}"
            )))
        }
    }

    /// Checks that a `width` x `height` frame is at least 1x1 and within `camera.max_width`
    /// and `camera.max_height`; the width is checked first.
    pub fn check_size(&self, width: u32, height: u32) -> Result<(), Denied> {
        for (side, value, max, key) in [
            ("width", width, self.max_width, "camera.max_width"),
            ("height", height, self.max_height, "camera.max_height"),
        ] {
            if value == 0 || value > max {
                return Err(Denied::invalid(format!(
                    "a {side} of {value} pixels is outside 1 to {max} ({key} on this server)"
                )));
            }
        }
        Ok(())
    }

    /// Checks that a recording of `seconds` is longer than 0 and at most
    /// `camera.max_video_seconds`.
    pub fn check_video_seconds(&self, seconds: f64) -> Result<(), Denied> {
        let max = self.max_video_seconds;
        if seconds.is_finite() && seconds > 0.0 && seconds <= f64::from(max) {
            Ok(())
        } else {
            Err(Denied::invalid(format!(
                "a recording of {seconds} s is outside 0.001 to {max} s (camera.max_video_seconds on this server)"
            )))
        }
    }
}

impl PowerConfig {
    /// Checks that `action` is turned on under `power`.
    pub fn check_action(&self, action: PowerAction) -> Result<(), Denied> {
        let (enabled, key, verb) = match action {
            PowerAction::Reboot => (self.reboot_enabled, "power.reboot_enabled", "reboot"),
            PowerAction::Shutdown => (self.shutdown_enabled, "power.shutdown_enabled", "shut down"),
        };
        if enabled {
            Ok(())
        } else {
            Err(Denied::forbidden(format!(
                "this server may not {verb} the machine: an administrator sets {key} to true to allow it"
            )))
        }
    }

    /// Checks that a power action may wait `delay_seconds` first.
    pub fn check_delay(&self, delay_seconds: u32) -> Result<(), Denied> {
        if delay_seconds <= self.max_delay_seconds {
            Ok(())
        } else {
            Err(Denied::invalid(format!(
                "a delay of {delay_seconds} s is more than {} (power.max_delay_seconds on this server)",
                self.max_delay_seconds
            )))
        }
    }
}

impl OsUpdatesConfig {
    /// Checks that the upgradable packages may be listed.
    pub fn check_listing(&self) -> Result<(), Denied> {
        if self.check_enabled {
            Ok(())
        } else {
            Err(Denied::forbidden(
                "checking for OS updates is turned off on this server: an administrator sets \
                 updates.os.check_enabled to true to allow it"
                    .into(),
            ))
        }
    }

    /// Checks that an upgrade may be started.
    pub fn check_upgrading(&self) -> Result<(), Denied> {
        if self.apply_enabled {
            Ok(())
        } else {
            Err(Denied::forbidden(
                "applying OS updates is turned off on this server: an administrator sets updates.os.apply_enabled \
                 to true to allow it"
                    .into(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
        serde_saphyr::from_str(text).unwrap()
    }

    fn pin(n: u64) -> PinNumber {
        PinNumber::new(n).unwrap()
    }

    fn unit(s: &str) -> UnitName {
        UnitName::parse(s).unwrap()
    }

    fn forbidden(result: Result<impl fmt::Debug, Denied>) -> String {
        let denied = result.unwrap_err();
        assert_eq!(denied.kind, DenialKind::Forbidden, "{}", denied.message);
        denied.message
    }

    fn invalid(result: Result<impl fmt::Debug, Denied>) -> String {
        let denied = result.unwrap_err();
        assert_eq!(denied.kind, DenialKind::Invalid, "{}", denied.message);
        denied.message
    }

    fn gpio() -> GpioConfig {
        yaml("pins:\n  - {pin: 17, modes: [input, output]}\n  - {pin: 18, modes: [pwm], label: fan}\n  - {pin: 27, modes: [input]}\n  - {pin: 22, modes: []}\n")
    }

    #[test]
    fn a_listed_pin_is_allowed_and_its_rule_returned() {
        assert_eq!(gpio().check_pin(pin(18)).unwrap().label.as_deref(), Some("fan"));
        assert_eq!(gpio().check_pin(pin(22)).unwrap().pin, pin(22));
    }

    #[test]
    fn a_pin_off_gpio_pins_is_forbidden_naming_the_pins_allowed() {
        assert_eq!(
            forbidden(gpio().check_pin(pin(5))),
            "GPIO 5 is not on gpio.pins; allowed: 17, 18, 27, 22. An administrator adds the pin there to allow it."
        );
        assert_eq!(
            forbidden(GpioConfig::default().check_pin(pin(5))),
            "GPIO 5 is not on gpio.pins, which lists no pins: an administrator adds the pin there to allow it"
        );
    }

    #[test]
    fn a_pin_may_be_used_only_in_the_modes_gpio_pins_lists_for_it() {
        let gpio = gpio();
        assert!(gpio.check_mode(pin(17), PinMode::Input).is_ok());
        assert!(gpio.check_mode(pin(17), PinMode::Output).is_ok());
        assert_eq!(gpio.check_mode(pin(18), PinMode::Pwm).unwrap().label.as_deref(), Some("fan"));
        assert_eq!(
            forbidden(gpio.check_mode(pin(17), PinMode::Pwm)),
            "GPIO 17 may not be used as pwm: gpio.pins allows only input, output for it. \
             An administrator adds pwm to its modes."
        );
        assert!(forbidden(gpio.check_mode(pin(22), PinMode::Input)).contains("allows only nothing"));
        assert!(forbidden(gpio.check_mode(pin(5), PinMode::Input)).starts_with("GPIO 5 is not on gpio.pins;"));
    }

    fn i2c() -> I2cConfig {
        yaml("buses:\n  - {bus: 1, addresses: [0x48, 0x76]}\n  - {bus: 3, addresses: []}\n")
    }

    #[test]
    fn a_listed_i2c_bus_may_be_scanned_whatever_its_addresses() {
        assert_eq!(i2c().check_bus(1).unwrap().addresses, [0x48, 0x76]);
        assert!(i2c().check_bus(3).unwrap().addresses.is_empty());
    }

    #[test]
    fn an_i2c_bus_off_i2c_buses_is_forbidden_naming_the_buses_allowed() {
        assert_eq!(forbidden(i2c().check_bus(2)), "I2C bus 2 is not on i2c.buses; allowed: 1, 3");
        assert_eq!(
            forbidden(I2cConfig::default().check_bus(1)),
            "I2C bus 1 is not on i2c.buses, which lists no buses: an administrator adds it there"
        );
        assert_eq!(forbidden(i2c().check_device(2, 0x48)), "I2C bus 2 is not on i2c.buses; allowed: 1, 3");
    }

    #[test]
    fn an_i2c_device_must_be_on_its_bus_addresses() {
        assert_eq!(i2c().check_device(1, 0x76).unwrap().bus, 1);
        assert_eq!(
            forbidden(i2c().check_device(1, 0x50)),
            "address 0x50 is not on the addresses of bus 1 under i2c.buses; allowed: 0x48, 0x76"
        );
        assert_eq!(
            forbidden(i2c().check_device(3, 0x08)),
            "address 0x08 is not on the addresses of bus 3 under i2c.buses, which lists none: \
             an administrator adds it there"
        );
    }

    fn spi() -> SpiConfig {
        yaml("devices:\n  - {bus: 0, chip_select: 0, max_speed_hz: 500000}\n  - {bus: 0, chip_select: 1, max_speed_hz: 8000000}\n")
    }

    #[test]
    fn an_spi_device_off_spi_devices_is_forbidden_naming_the_devices_allowed() {
        assert_eq!(spi().check_device(0, 1).unwrap().max_speed_hz, 8_000_000);
        assert_eq!(
            forbidden(spi().check_device(1, 0)),
            "SPI device 1.0 is not on spi.devices; allowed (bus.chip_select): 0.0, 0.1"
        );
        assert_eq!(
            forbidden(SpiConfig::default().check_device(0, 0)),
            "SPI device 0.0 is not on spi.devices, which lists no devices: an administrator adds it there"
        );
    }

    #[test]
    fn an_spi_clock_is_one_hertz_to_the_device_maximum() {
        let spi = spi();
        let device = spi.check_device(0, 1).unwrap();
        assert!(device.check_speed(1).is_ok());
        assert!(device.check_speed(8_000_000).is_ok());
        assert_eq!(
            invalid(device.check_speed(8_000_001)),
            "8000001 Hz is above the 8000000 Hz that spi.devices allows for SPI device 0.1"
        );
        assert_eq!(
            invalid(device.check_speed(0)),
            "0 Hz cannot clock SPI device 0.1; use 1 to the 8000000 Hz that spi.devices allows for it"
        );
    }

    fn uart() -> UartConfig {
        yaml("ports:\n  - {port: serial0, baud_rates: [9600, 115200]}\n  - {port: ttyAMA1, baud_rates: []}\n")
    }

    #[test]
    fn a_serial_port_is_allowed_at_the_baud_rates_uart_ports_lists_for_it() {
        assert_eq!(uart().check_port("serial0", 115_200).unwrap().port, "serial0");
        assert_eq!(
            forbidden(uart().check_port("serial0", 57_600)),
            "57600 baud is not among the baud_rates uart.ports allows for serial0; allowed: 9600, 115200"
        );
        assert!(forbidden(uart().check_port("ttyAMA1", 9600)).ends_with("allowed: none"));
    }

    #[test]
    fn a_serial_port_off_uart_ports_is_forbidden_naming_the_ports_allowed() {
        assert_eq!(
            forbidden(uart().check_port("ttyUSB0", 9600)),
            "serial port \"ttyUSB0\" is not on uart.ports; allowed: serial0, ttyAMA1"
        );
        assert_eq!(
            forbidden(UartConfig::default().check_port("serial0", 9600)),
            "serial port \"serial0\" is not on uart.ports, which lists no ports: an administrator adds it there"
        );
    }

    #[test]
    fn a_unit_off_services_allowed_units_is_forbidden_naming_the_units_allowed() {
        let services = ServicesConfig { allowed_units: vec![unit("nginx.service"), unit("mosquitto")] };
        assert!(services.check_unit(&unit("nginx")).is_ok());
        assert!(services.check_unit(&unit("mosquitto.service")).is_ok());
        assert_eq!(
            forbidden(services.check_unit(&unit("ssh.service"))),
            "ssh.service is not on services.allowed_units; allowed: nginx.service, mosquitto.service"
        );
        assert_eq!(
            forbidden(ServicesConfig::default().check_unit(&unit("ssh"))),
            "ssh.service is not on services.allowed_units, which lists no units: an administrator adds it there to \
             allow it"
        );
    }

    #[test]
    fn a_camera_turned_off_is_forbidden_naming_the_switch_and_the_use() {
        assert!(CameraConfig::default().check_enabled("captures").is_ok());
        let off = CameraConfig { enabled: false, ..CameraConfig::default() };
        assert_eq!(
            forbidden(off.check_enabled("recordings")),
            "the camera is turned off on this server: an administrator sets camera.enabled to true to allow recordings"
        );
    }

    #[test]
    fn a_frame_is_one_pixel_to_the_configured_maximum_each_way() {
        let camera = CameraConfig { max_width: 640, max_height: 480, ..CameraConfig::default() };
        assert!(camera.check_size(1, 1).is_ok());
        assert!(camera.check_size(640, 480).is_ok());
        assert_eq!(
            invalid(camera.check_size(641, 480)),
            "a width of 641 pixels is outside 1 to 640 (camera.max_width on this server)"
        );
        assert_eq!(
            invalid(camera.check_size(640, 0)),
            "a height of 0 pixels is outside 1 to 480 (camera.max_height on this server)"
        );
        assert!(invalid(camera.check_size(0, 0)).contains("camera.max_width"), "the width is checked first");
    }

    #[test]
    fn a_recording_is_longer_than_nothing_and_at_most_the_configured_maximum() {
        let camera = CameraConfig { max_video_seconds: 3, ..CameraConfig::default() };
        for ok in [0.001, 1.5, 3.0] {
            assert!(camera.check_video_seconds(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            invalid(camera.check_video_seconds(3.001)),
            "a recording of 3.001 s is outside 0.001 to 3 s (camera.max_video_seconds on this server)"
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(invalid(camera.check_video_seconds(bad)).contains("camera.max_video_seconds"), "{bad}");
        }
    }

    #[test]
    fn a_power_action_must_be_turned_on_under_power() {
        let power = PowerConfig { reboot_enabled: false, ..PowerConfig::default() };
        assert!(power.check_action(PowerAction::Shutdown).is_ok());
        assert_eq!(
            forbidden(power.check_action(PowerAction::Reboot)),
            "this server may not reboot the machine: an administrator sets power.reboot_enabled to true to allow it"
        );
        let power = PowerConfig { shutdown_enabled: false, ..PowerConfig::default() };
        assert!(power.check_action(PowerAction::Reboot).is_ok());
        assert!(forbidden(power.check_action(PowerAction::Shutdown)).contains("power.shutdown_enabled"));
    }

    #[test]
    fn a_power_action_waits_at_most_the_configured_delay() {
        let power = PowerConfig { max_delay_seconds: 60, ..PowerConfig::default() };
        assert!(power.check_delay(0).is_ok());
        assert!(power.check_delay(60).is_ok());
        assert_eq!(
            invalid(power.check_delay(61)),
            "a delay of 61 s is more than 60 (power.max_delay_seconds on this server)"
        );
    }

    #[test]
    fn listing_and_applying_os_updates_each_have_their_switch() {
        let updates = OsUpdatesConfig::default();
        assert!(updates.check_listing().is_ok());
        assert!(forbidden(updates.check_upgrading()).contains("updates.os.apply_enabled to true"));
        let updates = OsUpdatesConfig { check_enabled: false, apply_enabled: true, ..updates };
        assert!(updates.check_upgrading().is_ok());
        assert!(forbidden(updates.check_listing()).contains("updates.os.check_enabled to true"));
    }

    #[test]
    fn a_refusal_displays_as_its_message() {
        let denied = i2c().check_bus(2).unwrap_err();
        assert_eq!(denied.to_string(), denied.message);
    }
}
