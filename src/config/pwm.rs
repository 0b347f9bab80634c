//! `gpio.pwm`: the limits an administrator puts on pulse-width modulation (spec §3.4),
//! checked by the PWM tools and again by the ops agent.
//!
//! The defaults are what the hardware allows, so a file without the section behaves as
//! before it existed.

use serde::{Deserialize, Serialize};

use super::policy::Denied;

/// The fastest the Pi's PWM clock can produce, in Hz.
pub const HARDWARE_MAX_FREQUENCY_HZ: f64 = 125e6;

/// Comparisons of duty cycles allow this much rounding: a share of 0.9 is 90%, although
/// 0.9 * 100 is not exactly 90 in binary floating point.
const EPSILON: f64 = 1e-9;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PwmConfig {
    /// Highest frequency gpio.pwm_enable may set, in Hz (above 0, at most 125000000).
    pub max_frequency_hz: f64,
    /// Lowest duty cycle allowed, in percent (0 to 100).
    pub min_duty_cycle: f64,
    /// Highest duty cycle allowed, in percent (0 to 100, at least min_duty_cycle).
    pub max_duty_cycle: f64,
}

impl Default for PwmConfig {
    fn default() -> Self {
        PwmConfig { max_frequency_hz: HARDWARE_MAX_FREQUENCY_HZ, min_duty_cycle: 0.0, max_duty_cycle: 100.0 }
    }
}

/// A number as a person would write it: no float noise (`95`, not `95.00000000000001`).
fn number(x: f64) -> String {
    let rounded = (x * 1e6).round() / 1e6;
    format!("{rounded}")
}

impl PwmConfig {
    /// Checks the section's values: the key at fault and what is wrong.
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        let f = self.max_frequency_hz;
        if !(f.is_finite() && f > 0.0 && f <= HARDWARE_MAX_FREQUENCY_HZ) {
            return Err((
                "gpio.pwm.max_frequency_hz",
                format!("{f} is not above 0 and at most 125000000 (Hz, the fastest the PWM clock runs)"),
            ));
        }
        for (key, value) in
            [("gpio.pwm.min_duty_cycle", self.min_duty_cycle), ("gpio.pwm.max_duty_cycle", self.max_duty_cycle)]
        {
            if !(0.0..=100.0).contains(&value) {
                return Err((key, format!("{value} is outside 0 to 100 (a percentage)")));
            }
        }
        if self.min_duty_cycle > self.max_duty_cycle {
            return Err((
                "gpio.pwm.min_duty_cycle",
                format!("{} is above gpio.pwm.max_duty_cycle ({})", self.min_duty_cycle, self.max_duty_cycle),
            ));
        }
        Ok(())
    }

    /// Checks a PWM frequency against `gpio.pwm.max_frequency_hz`.
    pub fn check_frequency(&self, frequency_hz: f64) -> Result<(), Denied> {
        let max = number(self.max_frequency_hz);
        if !(frequency_hz.is_finite() && frequency_hz > 0.0) {
            return Err(Denied::invalid(format!(
                "{frequency_hz} Hz is not a frequency; use more than 0 and at most {max} Hz \
                 (gpio.pwm.max_frequency_hz on this server)"
            )));
        }
        if frequency_hz > self.max_frequency_hz {
            return Err(Denied::invalid(format!(
                "{} Hz is above the {max} Hz that gpio.pwm.max_frequency_hz allows on this server",
                number(frequency_hz)
            )));
        }
        Ok(())
    }

    /// Checks a duty cycle given as a share of the period (0.0 to 1.0) against
    /// `gpio.pwm.min_duty_cycle` and `gpio.pwm.max_duty_cycle` (percentages).
    pub fn check_duty_cycle(&self, share: f64) -> Result<(), Denied> {
        let (min, max) = (number(self.min_duty_cycle), number(self.max_duty_cycle));
        if !share.is_finite() {
            return Err(Denied::invalid(format!(
                "{share} is not a duty cycle; use {min}% to {max}% (gpio.pwm.min_duty_cycle and \
                 gpio.pwm.max_duty_cycle on this server)"
            )));
        }
        let percent = share * 100.0;
        if percent < self.min_duty_cycle - EPSILON {
            return Err(Denied::invalid(format!(
                "a duty cycle of {}% is below the {min}% that gpio.pwm.min_duty_cycle allows on this server",
                number(percent)
            )));
        }
        if percent > self.max_duty_cycle + EPSILON {
            return Err(Denied::invalid(format!(
                "a duty cycle of {}% is above the {max}% that gpio.pwm.max_duty_cycle allows on this server",
                number(percent)
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::DenialKind;

    fn limits(max_frequency_hz: f64, min_duty_cycle: f64, max_duty_cycle: f64) -> PwmConfig {
        PwmConfig { max_frequency_hz, min_duty_cycle, max_duty_cycle }
    }

    fn invalid(result: Result<(), Denied>) -> String {
        let denied = result.unwrap_err();
        assert_eq!(denied.kind, DenialKind::Invalid, "{}", denied.message);
        denied.message
    }

    #[test]
    fn the_defaults_allow_what_the_hardware_does() {
        let pwm = PwmConfig::default();
        pwm.validate().unwrap();
        for f in [0.001, 50.0, 125e6] {
            assert!(pwm.check_frequency(f).is_ok(), "{f}");
        }
        for d in [0.0, 0.075, 1.0] {
            assert!(pwm.check_duty_cycle(d).is_ok(), "{d}");
        }
        assert!(invalid(pwm.check_frequency(200e6)).contains("125000000 Hz that gpio.pwm.max_frequency_hz"));
        assert!(invalid(pwm.check_duty_cycle(1.01)).contains("101%"));
    }

    #[test]
    fn a_frequency_above_the_configured_maximum_names_the_limit_and_the_key() {
        let pwm = limits(10_000.0, 0.0, 100.0);
        assert!(pwm.check_frequency(10_000.0).is_ok());
        assert_eq!(
            invalid(pwm.check_frequency(10_000.5)),
            "10000.5 Hz is above the 10000 Hz that gpio.pwm.max_frequency_hz allows on this server"
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(invalid(pwm.check_frequency(bad)).contains("at most 10000 Hz (gpio.pwm.max_frequency_hz"), "{bad}");
        }
    }

    #[test]
    fn a_duty_cycle_outside_the_configured_range_names_the_limit_and_the_key() {
        let pwm = limits(1000.0, 10.0, 90.0);
        for ok in [0.1, 0.5, 0.9] {
            assert!(pwm.check_duty_cycle(ok).is_ok(), "{ok} is within 10% to 90%");
        }
        assert_eq!(
            invalid(pwm.check_duty_cycle(0.95)),
            "a duty cycle of 95% is above the 90% that gpio.pwm.max_duty_cycle allows on this server"
        );
        assert_eq!(
            invalid(pwm.check_duty_cycle(0.05)),
            "a duty cycle of 5% is below the 10% that gpio.pwm.min_duty_cycle allows on this server"
        );
        assert!(invalid(pwm.check_duty_cycle(f64::NAN)).contains("10% to 90%"));
    }

    #[test]
    fn limits_out_of_range_or_crossed_are_refused_naming_the_key() {
        let key = |pwm: PwmConfig| pwm.validate().unwrap_err().0;
        assert_eq!(key(limits(0.0, 0.0, 100.0)), "gpio.pwm.max_frequency_hz");
        assert_eq!(key(limits(126e6, 0.0, 100.0)), "gpio.pwm.max_frequency_hz");
        assert_eq!(key(limits(f64::NAN, 0.0, 100.0)), "gpio.pwm.max_frequency_hz");
        assert_eq!(key(limits(1000.0, -1.0, 100.0)), "gpio.pwm.min_duty_cycle");
        assert_eq!(key(limits(1000.0, 0.0, 100.5)), "gpio.pwm.max_duty_cycle");
        let (k, message) = limits(1000.0, 60.0, 40.0).validate().unwrap_err();
        assert_eq!(k, "gpio.pwm.min_duty_cycle");
        assert!(message.contains("above gpio.pwm.max_duty_cycle (40)"), "{message}");
        limits(1000.0, 50.0, 50.0).validate().unwrap();
    }
}
