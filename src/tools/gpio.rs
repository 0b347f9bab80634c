//! `gpio.*`: reading and driving the header's pins, and PWM on them.
//!
//! The server may not touch GPIO itself, so every operation goes to the ops agent. The
//! pin allowlist (`gpio.pins`) is checked here first as well: a refused pin is then
//! explained with the configuration key to change, even while the agent is down.

use std::borrow::Cow;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Unexpected, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::system::read_only_spec;
use super::{Cx, Deprecation, Maturity, NoArguments, Tool, ToolError, ToolSpec};
use crate::agent_client::AgentError;
use crate::config::{Denied, PwmConfig, Role};
use crate::ipc::{Request, Response};
use crate::platform::{Level, PinMode, PinNumber, PinState, Pull, PwmState};

fn unexpected(op: &str, response: &Response) -> ToolError {
    ToolError::internal(format!("unexpected answer from the ops agent to {op}: {}", response.kind()))
}

/// Sends a GPIO request and returns the pin's state from the answer.
async fn pin_request(cx: &Cx, request: Request) -> Result<PinState, ToolError> {
    let op = request.name();
    match cx.app.agent.call(request).await? {
        Response::Pin { state } => Ok(state),
        other => Err(unexpected(op, &other)),
    }
}

/// Checks a PWM frequency and duty cycle (a share, 0.0 to 1.0) against the limits of
/// `gpio.pwm` before they reach the agent (which checks them again). `names` are the tool's
/// names of the two arguments.
fn check_pwm(limits: &PwmConfig, frequency_hz: f64, duty_cycle: f64, names: [&str; 2]) -> Result<PwmState, ToolError> {
    let [frequency, duty] = names;
    if !(0.0..=1.0).contains(&duty_cycle) {
        return Err(ToolError::invalid_argument(format!(
            "argument `{duty}`: {duty_cycle} is outside 0.0 to 1.0 (the share of each period the pin is high)"
        )));
    }
    let argument = |name: &str, denied: Denied| ToolError::invalid_argument(format!("argument `{name}`: {denied}"));
    limits.check_frequency(frequency_hz).map_err(|d| argument(frequency, d))?;
    limits.check_duty_cycle(duty_cycle).map_err(|d| argument(duty, d))?;
    Ok(PwmState { frequency_hz, duty_cycle })
}

/// Starts PWM on `pin` once the settings and the pin are allowed.
async fn enable_pwm(
    cx: Cx,
    pin: PinNumber,
    frequency_hz: f64,
    duty_cycle: f64,
    names: [&str; 2],
) -> Result<PinState, ToolError> {
    let pwm = check_pwm(&cx.app.config.gpio.pwm, frequency_hz, duty_cycle, names)?;
    cx.app.config.gpio.check_mode(pin, PinMode::Pwm)?;
    pin_request(&cx, Request::GpioPwmEnable { pin, pwm }).await
}

/// The duty cycle of `gpio.pwm_start`, a percentage, as the share `gpio.pwm_enable` takes.
fn percent_to_fraction(percent: f64) -> Result<f64, ToolError> {
    if (0.0..=100.0).contains(&percent) {
        Ok(percent / 100.0)
    } else {
        Err(ToolError::invalid_argument(format!(
            "argument `duty_cycle`: {percent} is outside 0 to 100 (gpio.pwm_start takes a percentage)"
        )))
    }
}

/// One configured pin and what it is doing.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PinInfo {
    /// BCM GPIO number.
    pub pin: PinNumber,
    /// The name gpio.pins gives the pin, such as `relay-1`.
    pub label: Option<String>,
    /// What the pin may be used as: `input`, `output`, `pwm`.
    pub allowed_modes: Vec<PinMode>,
    /// The pin's mode, bias, level and PWM settings; null when it could not be read.
    pub state: Option<PinState>,
    /// Why the state could not be read.
    pub error: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PinList {
    /// The pins on gpio.pins, in the configuration's order.
    pub pins: Vec<PinInfo>,
}

pub struct ListPins;

impl Tool for ListPins {
    type Input = NoArguments;
    type Output = PinList;
    const SPEC: ToolSpec = ToolSpec { blocking: false, ..read_only_spec(
        "gpio.list_pins",
        "List GPIO pins",
        "The GPIO pins this server may use (the gpio.pins allowlist), each with its label, the modes it allows, and its current mode, bias, level and PWM settings read through the ops agent.",
    ) };

    async fn call(cx: Cx, _: NoArguments) -> Result<PinList, ToolError> {
        let rules = &cx.app.config.gpio.pins;
        // The agent answers requests on one connection concurrently, so the pins are read at once.
        let reads = rules.iter().map(|rule| cx.app.agent.call(Request::GpioRead { pin: rule.pin }));
        let answers = futures_util::future::join_all(reads).await;
        let mut pins = Vec::with_capacity(rules.len());
        for (rule, answer) in rules.iter().zip(answers) {
            let (state, error) = match answer {
                Ok(Response::Pin { state }) => (Some(state), None),
                Ok(other) => return Err(unexpected("gpio_read", &other)),
                // The agent refused or failed this pin only: the others are still worth showing.
                Err(AgentError::Remote { message, .. }) => (None, Some(message)),
                // The agent is down, too old or too slow: no pin can be read.
                Err(e) => return Err(e.into()),
            };
            pins.push(PinInfo {
                pin: rule.pin,
                label: rule.label.clone(),
                allowed_modes: rule.modes.clone(),
                state,
                error,
            });
        }
        Ok(PinList { pins })
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PinArguments {
    /// BCM GPIO number (0 to 27), one of those gpio.list_pins shows.
    #[schemars(with = "u8", range(max = 27))]
    pub pin: PinNumber,
}

pub struct ReadPin;

impl Tool for ReadPin {
    type Input = PinArguments;
    type Output = PinState;
    const SPEC: ToolSpec = ToolSpec { blocking: false, ..read_only_spec(
        "gpio.read_pin",
        "Read a GPIO pin",
        "One pin's mode, bias, level (for an output, the level driven) and PWM settings. The pin must be on gpio.pins.",
    ) };

    async fn call(cx: Cx, args: PinArguments) -> Result<PinState, ToolError> {
        cx.app.config.gpio.check_pin(args.pin)?;
        pin_request(&cx, Request::GpioRead { pin: args.pin }).await
    }
}

/// The modes gpio.set_mode sets; PWM has its own tool because it needs a frequency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DigitalMode {
    Input,
    Output,
}

impl From<DigitalMode> for PinMode {
    fn from(m: DigitalMode) -> PinMode {
        match m {
            DigitalMode::Input => PinMode::Input,
            DigitalMode::Output => PinMode::Output,
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetModeArguments {
    /// BCM GPIO number (0 to 27), one of those gpio.list_pins shows.
    #[schemars(with = "u8", range(max = 27))]
    pub pin: PinNumber,
    /// `input` or `output` (an output starts driven low). PWM is started with gpio.pwm_enable.
    pub mode: DigitalMode,
    /// The bias resistor of an input: `none` (default), `up` or `down`. Outputs take none.
    #[serde(default)]
    pub pull: Option<Pull>,
}

/// The pull to request, or why it does not fit the mode.
fn pull_for(mode: DigitalMode, pull: Option<Pull>) -> Result<Pull, ToolError> {
    match (mode, pull.unwrap_or_default()) {
        (DigitalMode::Output, Pull::Up | Pull::Down) => Err(ToolError::invalid_argument(
            "argument `pull`: a bias resistor applies to inputs only; leave it out for an output",
        )),
        (_, pull) => Ok(pull),
    }
}

pub struct SetMode;

impl Tool for SetMode {
    type Input = SetModeArguments;
    type Output = PinState;
    const SPEC: ToolSpec = ToolSpec {
        blocking: false,
        min_role: Role::Operator,
        read_only: false,
        ..read_only_spec(
            "gpio.set_mode",
            "Set a GPIO pin's mode",
            "Makes a pin an input (with an optional pull-up or pull-down) or an output driven low. The pin must be on gpio.pins with that mode allowed. Returns the pin's state afterwards.",
        )
    };

    async fn call(cx: Cx, args: SetModeArguments) -> Result<PinState, ToolError> {
        let pull = pull_for(args.mode, args.pull)?;
        let mode = PinMode::from(args.mode);
        cx.app.config.gpio.check_mode(args.pin, mode)?;
        pin_request(&cx, Request::GpioSetMode { pin: args.pin, mode, pull }).await
    }
}

/// A logic level written as `low`/`high` or `0`/`1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LevelArgument(pub Level);

impl<'de> Deserialize<'de> for LevelArgument {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct LevelVisitor;

        impl Visitor<'_> for LevelVisitor {
            type Value = LevelArgument;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"low\", \"high\", 0 or 1")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<LevelArgument, E> {
                match s {
                    "low" => Ok(LevelArgument(Level::Low)),
                    "high" => Ok(LevelArgument(Level::High)),
                    _ => Err(E::invalid_value(Unexpected::Str(s), &self)),
                }
            }

            fn visit_u64<E: de::Error>(self, n: u64) -> Result<LevelArgument, E> {
                match n {
                    0 => Ok(LevelArgument(Level::Low)),
                    1 => Ok(LevelArgument(Level::High)),
                    _ => Err(E::invalid_value(Unexpected::Unsigned(n), &self)),
                }
            }

            fn visit_i64<E: de::Error>(self, n: i64) -> Result<LevelArgument, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::invalid_value(Unexpected::Signed(n), &self)),
                }
            }
        }

        d.deserialize_any(LevelVisitor)
    }
}

impl JsonSchema for LevelArgument {
    fn schema_name() -> Cow<'static, str> {
        "LevelArgument".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "enum": ["low", "high", 0, 1] })
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WritePinArguments {
    /// BCM GPIO number (0 to 27), one of those gpio.list_pins shows.
    #[schemars(with = "u8", range(max = 27))]
    pub pin: PinNumber,
    /// `low` or `high`; `0` and `1` mean the same.
    pub level: LevelArgument,
}

pub struct WritePin;

impl Tool for WritePin {
    type Input = WritePinArguments;
    type Output = PinState;
    const SPEC: ToolSpec = ToolSpec {
        blocking: false,
        min_role: Role::Operator,
        read_only: false,
        ..read_only_spec(
            "gpio.write_pin",
            "Drive a GPIO output",
            "Drives an output pin low or high. The pin must be on gpio.pins with output allowed and already be an output (gpio.set_mode). Returns the pin's state afterwards.",
        )
    };

    async fn call(cx: Cx, args: WritePinArguments) -> Result<PinState, ToolError> {
        cx.app.config.gpio.check_mode(args.pin, PinMode::Output)?;
        pin_request(&cx, Request::GpioWrite { pin: args.pin, level: args.level.0 }).await
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PwmEnableArguments {
    /// BCM GPIO number (0 to 27), one of those gpio.list_pins shows.
    #[schemars(with = "u8", range(max = 27))]
    pub pin: PinNumber,
    /// Frequency in Hz, above 0 and at most 125000000 (e.g. 50 for a hobby servo); the
    /// server may allow less (gpio.pwm.max_frequency_hz).
    #[schemars(range(max = 125000000))]
    pub frequency_hz: f64,
    /// The share of each period the pin is high, 0.0 to 1.0 (0.5 is a square wave); the
    /// server may allow a narrower range (gpio.pwm.min_duty_cycle and max_duty_cycle, in percent).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub duty_cycle: f64,
}

const PWM_ENABLE_SPEC: ToolSpec = ToolSpec {
    blocking: false,
    min_role: Role::Operator,
    maturity: Maturity::Experimental,
    read_only: false,
    ..read_only_spec(
        "gpio.pwm_enable",
        "Start PWM on a GPIO pin",
        "Starts (or retunes) pulse-width modulation on a pin: hardware PWM where the pin has a channel, software PWM otherwise. The pin must be on gpio.pins with pwm allowed, and the frequency and duty cycle within the server's gpio.pwm limits. Returns the pin's state afterwards.",
    )
};

pub struct PwmEnable;

impl Tool for PwmEnable {
    type Input = PwmEnableArguments;
    type Output = PinState;
    const SPEC: ToolSpec = PWM_ENABLE_SPEC;

    async fn call(cx: Cx, args: PwmEnableArguments) -> Result<PinState, ToolError> {
        enable_pwm(cx, args.pin, args.frequency_hz, args.duty_cycle, ["frequency_hz", "duty_cycle"]).await
    }
}

pub struct PwmDisable;

impl Tool for PwmDisable {
    type Input = PinArguments;
    type Output = PinState;
    const SPEC: ToolSpec = ToolSpec {
        blocking: false,
        min_role: Role::Operator,
        maturity: Maturity::Experimental,
        read_only: false,
        ..read_only_spec(
            "gpio.pwm_disable",
            "Stop PWM on a GPIO pin",
            "Stops PWM on a pin and leaves it an output driven low. The pin must be on gpio.pins with pwm allowed. Returns the pin's state afterwards.",
        )
    };

    async fn call(cx: Cx, args: PinArguments) -> Result<PinState, ToolError> {
        cx.app.config.gpio.check_mode(args.pin, PinMode::Pwm)?;
        pin_request(&cx, Request::GpioPwmDisable { pin: args.pin }).await
    }
}

/// The arguments gpio.pwm_start has always taken; its duty cycle is a percentage.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PwmStartArguments {
    /// BCM GPIO number (0 to 27), one of those gpio.list_pins shows.
    #[schemars(with = "u8", range(max = 27))]
    pub pin: PinNumber,
    /// Frequency in Hz, above 0 and at most 125000000.
    #[schemars(range(max = 125000000))]
    pub frequency: f64,
    /// Duty cycle as a PERCENTAGE, 0 to 100 (gpio.pwm_enable takes a share, 0.0 to 1.0).
    #[schemars(range(min = 0.0, max = 100.0))]
    pub duty_cycle: f64,
}

pub struct PwmStart;

impl Tool for PwmStart {
    type Input = PwmStartArguments;
    type Output = PinState;
    const SPEC: ToolSpec = ToolSpec {
        blocking: false,
        deprecation: Some(Deprecation { replacement: "gpio.pwm_enable", since: "0.1.0", removal: "1.0.0" }),
        ..ToolSpec {
            name: "gpio.pwm_start",
            title: "Start PWM (old interface)",
            description: "gpio.pwm_enable under its old name and argument names: `frequency` is frequency_hz, and `duty_cycle` is a percentage (0 to 100) rather than a share. Returns the pin's state afterwards.",
            ..PWM_ENABLE_SPEC
        }
    };

    async fn call(cx: Cx, args: PwmStartArguments) -> Result<PinState, ToolError> {
        let duty_cycle = percent_to_fraction(args.duty_cycle)?;
        enable_pwm(cx, args.pin, args.frequency, duty_cycle, ["frequency", "duty_cycle"]).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_level_is_accepted_as_a_word_or_as_zero_and_one() {
        let parse = |v: serde_json::Value| serde_json::from_value::<LevelArgument>(v).map(|l| l.0);
        assert_eq!(parse(serde_json::json!("low")).unwrap(), Level::Low);
        assert_eq!(parse(serde_json::json!("high")).unwrap(), Level::High);
        assert_eq!(parse(serde_json::json!(0)).unwrap(), Level::Low);
        assert_eq!(parse(serde_json::json!(1)).unwrap(), Level::High);
        for bad in [serde_json::json!(2), serde_json::json!(-1), serde_json::json!("on"), serde_json::json!(true)] {
            let e = parse(bad.clone()).unwrap_err().to_string();
            assert!(e.contains("\"low\", \"high\", 0 or 1"), "{bad}: {e}");
        }
    }

    const ENABLE: [&str; 2] = ["frequency_hz", "duty_cycle"];

    #[test]
    fn pwm_settings_outside_what_the_hardware_does_are_refused() {
        let limits = PwmConfig::default();
        assert!(check_pwm(&limits, 50.0, 0.075, ENABLE).is_ok());
        assert!(check_pwm(&limits, 125e6, 1.0, ENABLE).is_ok());
        assert!(check_pwm(&limits, 0.001, 0.0, ENABLE).is_ok());
        for (f, d) in [(0.0, 0.5), (-1.0, 0.5), (f64::NAN, 0.5), (f64::INFINITY, 0.5), (200e6, 0.5), (50.0, 1.01)] {
            assert_eq!(check_pwm(&limits, f, d, ENABLE).unwrap_err().code, "invalid_argument", "{f} Hz, {d}");
        }
        let e = check_pwm(&limits, 50.0, -0.1, ENABLE).unwrap_err().message;
        assert!(e.starts_with("argument `duty_cycle`: -0.1 is outside 0.0 to 1.0"), "{e}");
    }

    #[test]
    fn pwm_settings_outside_gpio_pwm_are_refused_naming_the_argument_the_limit_and_the_key() {
        let limits = PwmConfig { max_frequency_hz: 1000.0, min_duty_cycle: 10.0, max_duty_cycle: 90.0 };
        assert!(check_pwm(&limits, 1000.0, 0.9, ENABLE).is_ok());
        let e = check_pwm(&limits, 2000.0, 0.5, ["frequency", "duty_cycle"]).unwrap_err();
        assert_eq!(e.code, "invalid_argument");
        assert_eq!(
            e.message,
            "argument `frequency`: 2000 Hz is above the 1000 Hz that gpio.pwm.max_frequency_hz allows on this server"
        );
        let e = check_pwm(&limits, 50.0, 0.95, ENABLE).unwrap_err();
        assert_eq!(
            e.message,
            "argument `duty_cycle`: a duty cycle of 95% is above the 90% that gpio.pwm.max_duty_cycle allows on this server"
        );
        let e = check_pwm(&limits, 50.0, 0.0, ENABLE).unwrap_err();
        assert!(e.message.contains("below the 10% that gpio.pwm.min_duty_cycle allows"), "{}", e.message);
    }

    #[test]
    fn pwm_start_takes_its_duty_cycle_as_a_percentage() {
        assert_eq!(percent_to_fraction(0.0).unwrap(), 0.0);
        assert_eq!(percent_to_fraction(7.5).unwrap(), 0.075);
        assert_eq!(percent_to_fraction(100.0).unwrap(), 1.0);
        for bad in [-0.5, 100.5, f64::NAN] {
            let e = percent_to_fraction(bad).unwrap_err();
            assert!(e.message.contains("percentage"), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn pull_up_or_down_is_refused_for_an_output() {
        assert_eq!(pull_for(DigitalMode::Input, Some(Pull::Up)).unwrap(), Pull::Up);
        assert_eq!(pull_for(DigitalMode::Input, None).unwrap(), Pull::None);
        assert_eq!(pull_for(DigitalMode::Output, Some(Pull::None)).unwrap(), Pull::None);
        assert!(pull_for(DigitalMode::Output, Some(Pull::Down)).is_err());
    }

    #[test]
    fn pwm_start_is_the_experimental_pwm_enable_under_a_deprecated_name() {
        let spec = &PwmStart::SPEC;
        assert_eq!(spec.name, "gpio.pwm_start");
        assert_eq!(spec.maturity, Maturity::Experimental);
        assert_eq!(spec.min_role, Role::Operator);
        assert!(!spec.read_only);
        let d = spec.deprecation.unwrap();
        assert_eq!((d.replacement, d.since, d.removal), ("gpio.pwm_enable", "0.1.0", "1.0.0"));
    }
}
