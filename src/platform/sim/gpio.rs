//! Simulated GPIO: the 28 header pins held in memory, with the checks a real Pi makes.
//!
//! Nothing is wired to the pins, so an input reads what its bias resistor pulls it to (high
//! with a pull-up, low otherwise), as a floating pin on a real board mostly does. PWM is
//! accepted on the same pins and within the same limits as on the real backend.

use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::platform::real::gpio::{check_pwm, check_set_mode, input_not_writable, pwm_not_running, pwm_running};
use crate::platform::{Gpio, Level, PinMode, PinNumber, PinState, PlatformError, Pull, PwmState};

#[derive(Clone, Copy)]
struct Pin {
    mode: PinMode,
    pull: Pull,
    /// The level driven while an output.
    driven: Level,
    pwm: Option<PwmState>,
}

impl Pin {
    const RESET: Pin = Pin { mode: PinMode::Input, pull: Pull::None, driven: Level::Low, pwm: None };

    fn level(&self) -> Level {
        match (self.mode, self.pull, self.pwm) {
            (PinMode::Output, _, _) => self.driven,
            // What a sampling input would see most of the time.
            (PinMode::Pwm, _, Some(pwm)) if pwm.duty_cycle >= 0.5 => Level::High,
            (PinMode::Pwm, _, _) => Level::Low,
            (PinMode::Input, Pull::Up, _) => Level::High,
            (PinMode::Input, _, _) => Level::Low,
        }
    }
}

/// The simulated GPIO header.
pub struct SimGpio {
    pins: Mutex<[Pin; PinNumber::MAX as usize + 1]>,
}

impl SimGpio {
    pub fn new() -> Self {
        SimGpio { pins: Mutex::new([Pin::RESET; PinNumber::MAX as usize + 1]) }
    }

    fn lock(&self) -> MutexGuard<'_, [Pin; PinNumber::MAX as usize + 1]> {
        // Every update below is a single assignment, so a poisoned lock still guards
        // consistent pins.
        self.pins.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `change` to a pin and returns its new state.
    fn update(
        &self,
        pin: PinNumber,
        change: impl FnOnce(&mut Pin) -> Result<(), PlatformError>,
    ) -> Result<PinState, PlatformError> {
        let mut pins = self.lock();
        let slot = pins.get_mut(usize::from(pin.get())).ok_or_else(|| no_such_pin(pin))?;
        let mut next = *slot;
        change(&mut next)?;
        *slot = next;
        Ok(state(pin, &next))
    }
}

impl Default for SimGpio {
    fn default() -> Self {
        Self::new()
    }
}

fn no_such_pin(pin: PinNumber) -> PlatformError {
    PlatformError::Invalid(format!("{pin} does not exist on the header"))
}

fn state(pin: PinNumber, p: &Pin) -> PinState {
    PinState { pin, mode: p.mode, pull: p.pull, level: p.level(), pwm: p.pwm }
}

impl Gpio for SimGpio {
    fn read(&self, pin: PinNumber) -> Result<PinState, PlatformError> {
        let pins = self.lock();
        pins.get(usize::from(pin.get())).map(|p| state(pin, p)).ok_or_else(|| no_such_pin(pin))
    }

    fn set_mode(&self, pin: PinNumber, mode: PinMode, pull: Pull) -> Result<PinState, PlatformError> {
        check_set_mode(mode, pull)?;
        self.update(pin, |p| {
            *p = Pin { mode, pull, driven: Level::Low, pwm: None };
            Ok(())
        })
    }

    fn write(&self, pin: PinNumber, level: Level) -> Result<PinState, PlatformError> {
        self.update(pin, |p| match p.mode {
            PinMode::Output => {
                p.driven = level;
                Ok(())
            }
            PinMode::Input => Err(input_not_writable(pin)),
            PinMode::Pwm => Err(pwm_running(pin)),
        })
    }

    fn pwm_enable(&self, pin: PinNumber, pwm: PwmState) -> Result<PinState, PlatformError> {
        check_pwm(pin, pwm)?;
        self.update(pin, |p| {
            *p = Pin { mode: PinMode::Pwm, pull: Pull::None, driven: Level::Low, pwm: Some(pwm) };
            Ok(())
        })
    }

    fn pwm_disable(&self, pin: PinNumber) -> Result<PinState, PlatformError> {
        self.update(pin, |p| {
            if p.pwm.is_none() {
                return Err(pwm_not_running(pin));
            }
            *p = Pin { mode: PinMode::Output, pull: Pull::None, driven: Level::Low, pwm: None };
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn pin(n: u64) -> PinNumber {
        PinNumber::new(n).unwrap()
    }

    const SERVO: PwmState = PwmState { frequency_hz: 50.0, duty_cycle: 0.075 };

    #[test]
    fn every_pin_starts_as_a_floating_input_reading_low() {
        let gpio = SimGpio::new();
        for n in 0..=27 {
            let s = gpio.read(pin(n)).unwrap();
            assert_eq!((s.mode, s.pull, s.level, s.pwm), (PinMode::Input, Pull::None, Level::Low, None));
        }
    }

    #[test]
    fn a_pull_up_makes_an_input_read_high_and_a_pull_down_low() {
        let gpio = SimGpio::new();
        assert_eq!(gpio.set_mode(pin(4), PinMode::Input, Pull::Up).unwrap().level, Level::High);
        assert_eq!(gpio.read(pin(4)).unwrap().pull, Pull::Up);
        assert_eq!(gpio.set_mode(pin(4), PinMode::Input, Pull::Down).unwrap().level, Level::Low);
    }

    #[test]
    fn an_output_starts_low_and_reads_back_what_was_written() {
        let gpio = SimGpio::new();
        assert_eq!(gpio.set_mode(pin(17), PinMode::Output, Pull::None).unwrap().level, Level::Low);
        assert_eq!(gpio.write(pin(17), Level::High).unwrap().level, Level::High);
        let s = gpio.read(pin(17)).unwrap();
        assert_eq!((s.mode, s.level), (PinMode::Output, Level::High));
        // Switching back and forth drops the old level.
        gpio.set_mode(pin(17), PinMode::Input, Pull::None).unwrap();
        assert_eq!(gpio.set_mode(pin(17), PinMode::Output, Pull::None).unwrap().level, Level::Low);
    }

    #[test]
    fn writing_an_input_is_refused_with_advice() {
        let gpio = SimGpio::new();
        let err = gpio.write(pin(17), Level::High).unwrap_err();
        assert_eq!(err, PlatformError::Invalid("GPIO17 is an input; set it to output first".into()));
        assert_eq!(gpio.read(pin(17)).unwrap().level, Level::Low);
    }

    #[test]
    fn set_mode_does_not_start_pwm_or_pull_an_output() {
        let gpio = SimGpio::new();
        assert!(matches!(gpio.set_mode(pin(18), PinMode::Pwm, Pull::None), Err(PlatformError::Invalid(_))));
        assert!(matches!(gpio.set_mode(pin(17), PinMode::Output, Pull::Up), Err(PlatformError::Invalid(_))));
        assert_eq!(gpio.read(pin(17)).unwrap().mode, PinMode::Input);
    }

    #[test]
    fn pwm_runs_only_on_the_hardware_pwm_pins() {
        let gpio = SimGpio::new();
        for n in [12, 13, 18, 19] {
            let s = gpio.pwm_enable(pin(n), SERVO).unwrap();
            assert_eq!((s.mode, s.pwm), (PinMode::Pwm, Some(SERVO)));
        }
        let err = gpio.pwm_enable(pin(17), SERVO).unwrap_err();
        assert!(
            matches!(&err, PlatformError::Invalid(m) if ["GPIO12", "GPIO13", "GPIO18", "GPIO19"].iter().all(|p| m.contains(p))),
            "{err:?}"
        );
        assert_eq!(gpio.read(pin(17)).unwrap().pwm, None);
    }

    #[test]
    fn pwm_frequency_and_duty_cycle_must_be_possible() {
        let gpio = SimGpio::new();
        for (frequency_hz, duty_cycle) in [
            (0.0, 0.5),
            (-1.0, 0.5),
            (f64::NAN, 0.5),
            (f64::INFINITY, 0.5),
            (126e6, 0.5),
            (50.0, 1.01),
            (50.0, -0.1),
            (50.0, f64::NAN),
        ] {
            let result = gpio.pwm_enable(pin(18), PwmState { frequency_hz, duty_cycle });
            assert!(matches!(result, Err(PlatformError::Invalid(_))), "{frequency_hz} Hz, duty {duty_cycle}");
        }
        for (frequency_hz, duty_cycle) in [(0.001, 0.0), (125e6, 1.0), (1000.0, 0.5)] {
            assert!(gpio.pwm_enable(pin(18), PwmState { frequency_hz, duty_cycle }).is_ok());
        }
    }

    #[test]
    fn a_pwm_pin_refuses_writes_and_stops_as_a_low_output() {
        let gpio = SimGpio::new();
        gpio.pwm_enable(pin(18), PwmState { frequency_hz: 1000.0, duty_cycle: 0.75 }).unwrap();
        assert_eq!(gpio.read(pin(18)).unwrap().level, Level::High);
        assert!(matches!(gpio.write(pin(18), Level::Low), Err(PlatformError::Invalid(m)) if m.contains("PWM")));
        let s = gpio.pwm_disable(pin(18)).unwrap();
        assert_eq!((s.mode, s.level, s.pwm), (PinMode::Output, Level::Low, None));
    }

    #[test]
    fn stopping_pwm_where_none_runs_is_refused() {
        let gpio = SimGpio::new();
        assert_eq!(gpio.pwm_disable(pin(18)), Err(PlatformError::Invalid("GPIO18 is not running PWM".into())));
        assert!(gpio.pwm_disable(pin(17)).is_err());
    }
}
