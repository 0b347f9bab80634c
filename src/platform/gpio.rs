//! GPIO pins and PWM: the types and the trait both backends implement.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::PlatformError;

/// A BCM GPIO number of the 40-pin header (0 to 27), validated at the boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct PinNumber(u8);

impl PinNumber {
    pub const MAX: u8 = 27;

    pub fn new(n: u64) -> Result<PinNumber, String> {
        if n <= u64::from(Self::MAX) {
            Ok(PinNumber(n as u8))
        } else {
            Err(format!("GPIO {n} does not exist: the header has BCM GPIO 0 to {}", Self::MAX))
        }
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

impl fmt::Display for PinNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GPIO{}", self.0)
    }
}

impl<'de> Deserialize<'de> for PinNumber {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        PinNumber::new(u64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// What a pin is used as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PinMode {
    Input,
    Output,
    /// Pulse-width modulation (hardware PWM channel or software PWM).
    Pwm,
}

/// The pin's internal bias resistor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Pull {
    #[default]
    None,
    Up,
    Down,
}

/// A logic level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Low,
    High,
}

/// PWM settings of a pin.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PwmState {
    pub frequency_hz: f64,
    /// Share of each period the pin is high, 0.0 to 1.0.
    pub duty_cycle: f64,
}

/// What a pin is doing now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PinState {
    pub pin: PinNumber,
    pub mode: PinMode,
    pub pull: Pull,
    /// The level read from the pin (for an output, the level driven).
    pub level: Level,
    /// Set while PWM runs on the pin.
    pub pwm: Option<PwmState>,
}

/// GPIO access. Implementations check nothing about allowlists: callers do, on both sides
/// of the agent socket.
pub trait Gpio: Send + Sync {
    /// Reads a pin without changing its mode.
    fn read(&self, pin: PinNumber) -> Result<PinState, PlatformError>;
    /// Makes a pin an input (with `pull`) or an output (driven low until written).
    fn set_mode(&self, pin: PinNumber, mode: PinMode, pull: Pull) -> Result<PinState, PlatformError>;
    /// Drives an output pin; an error when the pin is not an output.
    fn write(&self, pin: PinNumber, level: Level) -> Result<PinState, PlatformError>;
    /// Starts PWM on a pin (frequency in Hz, duty cycle 0.0 to 1.0).
    fn pwm_enable(&self, pin: PinNumber, pwm: PwmState) -> Result<PinState, PlatformError>;
    /// Stops PWM; the pin is left an output driven low.
    fn pwm_disable(&self, pin: PinNumber) -> Result<PinState, PlatformError>;
}
