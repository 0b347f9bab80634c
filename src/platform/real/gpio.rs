//! GPIO pins and PWM on a Raspberry Pi, through rppal.
//!
//! rppal reads and writes the GPIO registers through `/dev/gpiomem` and drives the hardware
//! PWM channels through the kernel's sysfs PWM interface. Pins configured here stay claimed
//! between requests with rppal's reset-on-drop turned off, so that an output keeps its level
//! after the request that set it, and after the agent restarts. The hardware facts both
//! backends check (which pins have PWM, the frequency range) live here as well.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rppal::gpio::{self as hw, Gpio as GpioPeripheral, InputPin, OutputPin};
use rppal::pwm::{self, Pwm};
use rppal::system::{DeviceInfo, SoC};

use crate::platform::{Gpio, Level, PinMode, PinNumber, PinState, PlatformError, Pull, PwmState};

/// BCM GPIOs of the 40-pin header that a hardware PWM channel can drive, on every model.
pub(in crate::platform) const HARDWARE_PWM_PINS: [u8; 4] = [12, 13, 18, 19];

/// The highest PWM frequency accepted, in Hz.
///
/// A PWM period takes at least two ticks of the PWM block's clock (the kernel driver's
/// minimum), so the ceiling is half that clock. 125 MHz is half of 250 MHz, more than any Pi
/// clocks its PWM block at: it only turns away requests no board can meet. Slower clocks make
/// the kernel refuse lower frequencies, which the real backend reports as well.
pub(in crate::platform) const MAX_PWM_FREQUENCY_HZ: f64 = 125_000_000.0;

/// The highest frequency run as software PWM, when the hardware channel is not enabled.
///
/// rppal's software PWM toggles the pin from a thread and busy-waits for pulses shorter than
/// 250 µs, so it costs CPU and jitters by microseconds: fine for servos (50 Hz) and dimming
/// LEDs, useless for anything faster.
const MAX_SOFTWARE_PWM_HZ: f64 = 1_000.0;

/// Rejects PWM settings that no Raspberry Pi can produce.
pub(in crate::platform) fn check_pwm(pin: PinNumber, pwm: PwmState) -> Result<(), PlatformError> {
    if !HARDWARE_PWM_PINS.contains(&pin.get()) {
        return Err(PlatformError::Invalid(format!(
            "{pin} has no hardware PWM: PWM is available on GPIO12, GPIO13, GPIO18 and GPIO19"
        )));
    }
    if !(pwm.frequency_hz.is_finite() && pwm.frequency_hz > 0.0 && pwm.frequency_hz <= MAX_PWM_FREQUENCY_HZ) {
        return Err(PlatformError::Invalid(format!(
            "PWM frequency must be above 0 and at most 125 MHz, not {} Hz",
            pwm.frequency_hz
        )));
    }
    if !(0.0..=1.0).contains(&pwm.duty_cycle) {
        return Err(PlatformError::Invalid(format!(
            "PWM duty cycle must be between 0.0 and 1.0, not {}",
            pwm.duty_cycle
        )));
    }
    Ok(())
}

/// The error for a write to a pin that is not an output.
pub(in crate::platform) fn input_not_writable(pin: PinNumber) -> PlatformError {
    PlatformError::Invalid(format!("{pin} is an input; set it to output first"))
}

/// The error for a write to a pin that runs PWM.
pub(in crate::platform) fn pwm_running(pin: PinNumber) -> PlatformError {
    PlatformError::Invalid(format!("{pin} is running PWM; stop it with gpio.pwm_disable first"))
}

/// The error for stopping PWM on a pin that runs none.
pub(in crate::platform) fn pwm_not_running(pin: PinNumber) -> PlatformError {
    PlatformError::Invalid(format!("{pin} is not running PWM"))
}

/// Checks a mode change requested through `set_mode`.
pub(in crate::platform) fn check_set_mode(mode: PinMode, pull: Pull) -> Result<(), PlatformError> {
    match (mode, pull) {
        (PinMode::Pwm, _) => Err(PlatformError::Invalid("start PWM with gpio.pwm_enable, not set_mode".into())),
        (PinMode::Output, Pull::Up | Pull::Down) => Err(PlatformError::Invalid(
            "pull resistors only matter for inputs: use pull \"none\" with an output".into(),
        )),
        _ => Ok(()),
    }
}

/// Where the PWM channels are, which differs between the Broadcom SoCs (Pi 4 and older) and
/// the RP1 chip of the Pi 5.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// One PWM block with two channels: GPIO12 and GPIO18 share channel 0, GPIO13 and GPIO19
    /// share channel 1, so two pins of a pair carry the same signal when both are routed.
    Broadcom,
    /// The RP1's PWM0 block, whose four channels each have a pin: GPIO12, 13, 18 and 19 are
    /// channels 0 to 3. rppal numbers them the same way and finds them on pwmchip2.
    Rp1,
}

impl Layout {
    fn of(soc: SoC) -> Layout {
        if soc == SoC::Bcm2712 {
            Layout::Rp1
        } else {
            Layout::Broadcom
        }
    }

    /// The sysfs channel driving `pin`, and the alternate function that routes it there.
    fn pwm_route(self, pin: u8) -> Option<(u8, hw::Mode)> {
        match (self, pin) {
            (Layout::Broadcom, 12) => Some((0, hw::Mode::Alt0)),
            (Layout::Broadcom, 13) => Some((1, hw::Mode::Alt0)),
            (Layout::Broadcom, 18) => Some((0, hw::Mode::Alt5)),
            (Layout::Broadcom, 19) => Some((1, hw::Mode::Alt5)),
            (Layout::Rp1, 12) => Some((0, hw::Mode::Alt0)),
            (Layout::Rp1, 13) => Some((1, hw::Mode::Alt0)),
            (Layout::Rp1, 18) => Some((2, hw::Mode::Alt3)),
            (Layout::Rp1, 19) => Some((3, hw::Mode::Alt3)),
            _ => None,
        }
    }

    /// The other header pin wired to the same channel.
    fn channel_sibling(self, pin: u8) -> Option<u8> {
        match (self, pin) {
            (Layout::Broadcom, 12) => Some(18),
            (Layout::Broadcom, 18) => Some(12),
            (Layout::Broadcom, 13) => Some(19),
            (Layout::Broadcom, 19) => Some(13),
            _ => None,
        }
    }

    /// The sysfs PWM chip, chosen as rppal's `Pwm::new` chooses it, so that reading the
    /// state back looks where writing it went.
    fn pwm_chip(self) -> u8 {
        match self {
            Layout::Broadcom => 0,
            Layout::Rp1 => 2,
        }
    }

    /// What the kernel says a channel is doing: `None` unless it is exported and enabled.
    fn running_pwm(self, channel: u8) -> Option<PwmState> {
        let dir = format!("/sys/class/pwm/pwmchip{}/pwm{channel}", self.pwm_chip());
        let read = |name: &str| fs::read_to_string(format!("{dir}/{name}")).ok()?.trim().parse::<u64>().ok();
        if read("enable")? != 1 {
            return None;
        }
        let period = read("period")?;
        let duty = read("duty_cycle")?;
        if period == 0 {
            return None;
        }
        Some(PwmState { frequency_hz: 1e9 / period as f64, duty_cycle: (duty as f64 / period as f64).min(1.0) })
    }
}

/// A pin this agent configured, kept so that its configuration outlives the request.
enum Claimed {
    Input {
        pin: InputPin,
        pull: Pull,
    },
    /// An output, possibly toggled by rppal's software PWM thread.
    Output {
        pin: OutputPin,
        soft_pwm: Option<PwmState>,
    },
}

struct State {
    /// Opened on first use, so that a host without GPIO access still starts the agent.
    peripheral: Option<(GpioPeripheral, Layout)>,
    claimed: HashMap<u8, Claimed>,
}

/// GPIO and PWM through rppal.
pub struct RppalGpio {
    state: Mutex<State>,
}

impl RppalGpio {
    pub fn new() -> Self {
        RppalGpio { state: Mutex::new(State { peripheral: None, claimed: HashMap::new() }) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves pins in a state the hardware still reports
        // truthfully, so carrying on is safe.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for RppalGpio {
    fn default() -> Self {
        Self::new()
    }
}

/// Opens the GPIO peripheral the first time; a failure is not remembered, so fixing the
/// permissions needs no restart.
fn open(state: &mut State) -> Result<(GpioPeripheral, Layout), PlatformError> {
    if let Some((gpio, layout)) = &state.peripheral {
        return Ok((gpio.clone(), *layout));
    }
    let gpio = GpioPeripheral::new().map_err(open_error)?;
    let soc = DeviceInfo::new()
        .map_err(|e| PlatformError::Unavailable(format!("cannot identify the Raspberry Pi model: {e}")))?
        .soc();
    let layout = Layout::of(soc);
    state.peripheral = Some((gpio.clone(), layout));
    Ok((gpio, layout))
}

fn open_error(e: hw::Error) -> PlatformError {
    PlatformError::Unavailable(match e {
        hw::Error::UnknownModel => "rppal does not recognise this machine as a Raspberry Pi".to_string(),
        hw::Error::PermissionDenied(path) => format!("{path} not accessible: is the agent in group gpio?"),
        hw::Error::Io(e) => format!("cannot open the GPIO peripheral (/dev/gpiomem): {e}"),
        other => format!("cannot open the GPIO peripheral: {other}"),
    })
}

fn pin_error(e: hw::Error) -> PlatformError {
    match e {
        hw::Error::PinNotAvailable(n) => PlatformError::Invalid(format!("GPIO{n} does not exist on this board")),
        hw::Error::PinUsed(n) => PlatformError::Failed(format!("GPIO{n} is in use elsewhere in the agent")),
        other => PlatformError::Failed(format!("GPIO error: {other}")),
    }
}

fn pwm_error(e: pwm::Error, channel: u8) -> PlatformError {
    match e {
        pwm::Error::Io(e) if e.kind() == io::ErrorKind::PermissionDenied => PlatformError::Unavailable(format!(
            "PWM channel {channel} in /sys/class/pwm not writable: is the agent in group gpio?"
        )),
        pwm::Error::Io(e) if e.kind() == io::ErrorKind::InvalidInput => PlatformError::Invalid(format!(
            "the PWM controller refused these settings ({e}): its clock limits the frequency range"
        )),
        other => PlatformError::Failed(format!("PWM channel {channel}: {other}")),
    }
}

/// Whether opening a channel failed because the kernel has no such channel, which is what
/// happens when no PWM overlay is loaded.
fn channel_missing(e: &pwm::Error) -> bool {
    match e {
        pwm::Error::InvalidChannel => true,
        pwm::Error::Io(e) => {
            e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(nix::errno::Errno::ENODEV as i32)
        }
        _ => false,
    }
}

fn to_level(level: hw::Level) -> Level {
    match level {
        hw::Level::Low => Level::Low,
        hw::Level::High => Level::High,
    }
}

fn from_level(level: Level) -> hw::Level {
    match level {
        Level::Low => hw::Level::Low,
        Level::High => hw::Level::High,
    }
}

/// Forgets the agent's claim on a pin, stopping software PWM; the pin keeps its mode.
fn release(state: &mut State, pin: u8) {
    if let Some(Claimed::Output { pin: mut output, soft_pwm: Some(_) }) = state.claimed.remove(&pin) {
        // The thread stops at the end of its current period; an error means it already died.
        let _ = output.clear_pwm();
    }
}

/// Stops a hardware channel and hands it back to the kernel.
fn stop_channel(layout: Layout, channel: u8) -> Result<(), PlatformError> {
    match Pwm::with_pwmchip(layout.pwm_chip(), channel) {
        // Opening disables the channel; dropping it with reset-on-drop left on unexports it.
        Ok(pwm) => {
            drop(pwm);
            Ok(())
        }
        Err(e) if channel_missing(&e) => Ok(()),
        Err(e) => Err(pwm_error(e, channel)),
    }
}

fn pin_state(
    gpio: &GpioPeripheral,
    layout: Layout,
    claimed: &HashMap<u8, Claimed>,
    pin: PinNumber,
) -> Result<PinState, PlatformError> {
    let n = pin.get();
    let state = |mode, pull, level, pwm| PinState { pin, mode, pull, level, pwm };
    match claimed.get(&n) {
        Some(Claimed::Input { pin: input, pull }) => Ok(state(PinMode::Input, *pull, to_level(input.read()), None)),
        Some(Claimed::Output { pin: output, soft_pwm }) => {
            let level = if output.is_set_high() { Level::High } else { Level::Low };
            let mode = if soft_pwm.is_some() { PinMode::Pwm } else { PinMode::Output };
            Ok(state(mode, Pull::None, level, *soft_pwm))
        }
        None => {
            // Not configured by this agent: ask the hardware. The bias resistor setting cannot
            // be read back through rppal, so it is reported as none.
            let unclaimed = gpio.get(n).map_err(pin_error)?;
            let level = to_level(unclaimed.read());
            match unclaimed.mode() {
                hw::Mode::Input => Ok(state(PinMode::Input, Pull::None, level, None)),
                hw::Mode::Output => Ok(state(PinMode::Output, Pull::None, level, None)),
                mode => match layout.pwm_route(n) {
                    Some((channel, alt)) if alt == mode => {
                        Ok(state(PinMode::Pwm, Pull::None, level, layout.running_pwm(channel)))
                    }
                    _ => Err(PlatformError::Invalid(format!(
                        "{pin} is switched to alternate function {mode} (used by a peripheral such as I2C, SPI \
                         or UART), not to GPIO"
                    ))),
                },
            }
        }
    }
}

impl Gpio for RppalGpio {
    fn read(&self, pin: PinNumber) -> Result<PinState, PlatformError> {
        let mut state = self.lock();
        let (gpio, layout) = open(&mut state)?;
        pin_state(&gpio, layout, &state.claimed, pin)
    }

    fn set_mode(&self, pin: PinNumber, mode: PinMode, pull: Pull) -> Result<PinState, PlatformError> {
        check_set_mode(mode, pull)?;
        let n = pin.get();
        let mut state = self.lock();
        let (gpio, layout) = open(&mut state)?;
        release(&mut state, n);
        let unclaimed = gpio.get(n).map_err(pin_error)?;
        if let Some((channel, alt)) = layout.pwm_route(n) {
            if unclaimed.mode() == alt {
                // The pin leaves PWM: stop the channel rather than leave it running unseen.
                stop_channel(layout, channel)?;
            }
        }
        let claimed = if mode == PinMode::Output {
            let mut output = unclaimed.into_output_low();
            output.set_reset_on_drop(false);
            Claimed::Output { pin: output, soft_pwm: None }
        } else {
            let mut input = match pull {
                Pull::None => unclaimed.into_input(),
                Pull::Up => unclaimed.into_input_pullup(),
                Pull::Down => unclaimed.into_input_pulldown(),
            };
            input.set_reset_on_drop(false);
            Claimed::Input { pin: input, pull }
        };
        state.claimed.insert(n, claimed);
        pin_state(&gpio, layout, &state.claimed, pin)
    }

    fn write(&self, pin: PinNumber, level: Level) -> Result<PinState, PlatformError> {
        let n = pin.get();
        let mut state = self.lock();
        let (gpio, layout) = open(&mut state)?;
        match state.claimed.get_mut(&n) {
            Some(Claimed::Output { pin: output, soft_pwm: None }) => output.write(from_level(level)),
            Some(Claimed::Output { soft_pwm: Some(_), .. }) => return Err(pwm_running(pin)),
            Some(Claimed::Input { .. }) => return Err(input_not_writable(pin)),
            None => {
                let unclaimed = gpio.get(n).map_err(pin_error)?;
                match unclaimed.mode() {
                    // An output configured earlier (by a previous run of the agent, say):
                    // take it over without changing its level first.
                    hw::Mode::Output => {
                        let mut output = unclaimed.into_output();
                        output.set_reset_on_drop(false);
                        output.write(from_level(level));
                        state.claimed.insert(n, Claimed::Output { pin: output, soft_pwm: None });
                    }
                    hw::Mode::Input => return Err(input_not_writable(pin)),
                    mode if layout.pwm_route(n).map(|(_, alt)| alt) == Some(mode) => return Err(pwm_running(pin)),
                    mode => {
                        return Err(PlatformError::Invalid(format!(
                            "{pin} is switched to alternate function {mode}; set it to output first"
                        )))
                    }
                }
            }
        }
        pin_state(&gpio, layout, &state.claimed, pin)
    }

    fn pwm_enable(&self, pin: PinNumber, pwm: PwmState) -> Result<PinState, PlatformError> {
        check_pwm(pin, pwm)?;
        let n = pin.get();
        let mut state = self.lock();
        let (gpio, layout) = open(&mut state)?;
        let Some((channel, alt)) = layout.pwm_route(n) else {
            return Err(PlatformError::Invalid(format!("{pin} has no hardware PWM on this board")));
        };
        // Checked before the channel is opened, because opening it pauses whatever it runs.
        if let Some(sibling) = layout.channel_sibling(n) {
            if !state.claimed.contains_key(&sibling) {
                let other = gpio.get(sibling).map_err(pin_error)?;
                if layout.pwm_route(sibling).map(|(_, a)| a) == Some(other.mode()) {
                    return Err(PlatformError::Invalid(format!(
                        "GPIO{sibling} is routed to PWM channel {channel} too and would carry the same signal; stop \
                         it with gpio.pwm_disable first"
                    )));
                }
            }
        }
        // Opening the channel disables it until `enable` below: a running channel being
        // reconfigured pauses for a few microseconds.
        match Pwm::with_pwmchip(layout.pwm_chip(), channel) {
            Ok(mut hardware) => {
                release(&mut state, n);
                let unclaimed = gpio.get(n).map_err(pin_error)?;
                if unclaimed.mode() != alt {
                    // Route the channel to the pin, and leave it routed when the handle goes.
                    let mut routed = unclaimed.into_io(alt);
                    routed.set_reset_on_drop(false);
                }
                let started = hardware
                    .set_frequency(pwm.frequency_hz, pwm.duty_cycle)
                    .and_then(|()| hardware.enable())
                    .map_err(|e| pwm_error(e, channel));
                if let Err(e) = started {
                    // Dropping the handle stops the channel; the pin goes back to a low output
                    // instead of staying routed to nothing.
                    drop(hardware);
                    let mut output = gpio.get(n).map_err(pin_error)?.into_output_low();
                    output.set_reset_on_drop(false);
                    state.claimed.insert(n, Claimed::Output { pin: output, soft_pwm: None });
                    return Err(e);
                }
                // The channel keeps running after this handle is gone; the kernel holds it.
                hardware.set_reset_on_drop(false);
            }
            Err(e) if channel_missing(&e) => {
                // Without a PWM overlay (dtoverlay=pwm-2chan) the kernel has no channel, and
                // loading one needs a reboot the agent does not do on its own. Software PWM
                // covers the common slow uses (servos, LED dimming) on the same pin meanwhile.
                if pwm.frequency_hz > MAX_SOFTWARE_PWM_HZ {
                    return Err(PlatformError::Unavailable(format!(
                        "hardware PWM channel {channel} is not enabled (add dtoverlay=pwm-2chan to config.txt and \
                         reboot); software PWM, used until then, goes up to 1 kHz"
                    )));
                }
                let mut output = match state.claimed.remove(&n) {
                    Some(Claimed::Output { pin: output, .. }) => output,
                    _ => {
                        let mut output = gpio.get(n).map_err(pin_error)?.into_output_low();
                        output.set_reset_on_drop(false);
                        output
                    }
                };
                let started = output.set_pwm_frequency(pwm.frequency_hz, pwm.duty_cycle).map_err(pin_error);
                let soft_pwm = started.is_ok().then_some(pwm);
                state.claimed.insert(n, Claimed::Output { pin: output, soft_pwm });
                started?;
            }
            Err(e) => return Err(pwm_error(e, channel)),
        }
        pin_state(&gpio, layout, &state.claimed, pin)
    }

    fn pwm_disable(&self, pin: PinNumber) -> Result<PinState, PlatformError> {
        let n = pin.get();
        let mut state = self.lock();
        let (gpio, layout) = open(&mut state)?;
        match state.claimed.get_mut(&n) {
            Some(Claimed::Output { pin: output, soft_pwm: soft @ Some(_) }) => {
                output.clear_pwm().map_err(pin_error)?;
                output.set_low();
                *soft = None;
            }
            Some(_) => return Err(pwm_not_running(pin)),
            None => {
                let routed = layout.pwm_route(n);
                let unclaimed = gpio.get(n).map_err(pin_error)?;
                match routed {
                    Some((channel, alt)) if unclaimed.mode() == alt => {
                        stop_channel(layout, channel)?;
                        let mut output = unclaimed.into_output_low();
                        output.set_reset_on_drop(false);
                        state.claimed.insert(n, Claimed::Output { pin: output, soft_pwm: None });
                    }
                    _ => return Err(pwm_not_running(pin)),
                }
            }
        }
        pin_state(&gpio, layout, &state.claimed, pin)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn on_a_raspberry_pi() -> bool {
        fs::read_to_string("/proc/device-tree/model").is_ok_and(|m| m.contains("Raspberry Pi"))
    }

    #[test]
    fn off_a_raspberry_pi_every_call_reports_unavailable_instead_of_panicking() {
        if on_a_raspberry_pi() {
            return;
        }
        let gpio = RppalGpio::new();
        let pin = PinNumber::new(17).unwrap();
        assert!(matches!(gpio.read(pin), Err(PlatformError::Unavailable(_))));
        assert!(matches!(gpio.set_mode(pin, PinMode::Output, Pull::None), Err(PlatformError::Unavailable(_))));
        assert!(matches!(gpio.write(pin, Level::High), Err(PlatformError::Unavailable(_))));
        let pwm_pin = PinNumber::new(18).unwrap();
        let pwm = PwmState { frequency_hz: 50.0, duty_cycle: 0.5 };
        assert!(matches!(gpio.pwm_enable(pwm_pin, pwm), Err(PlatformError::Unavailable(_))));
        assert!(matches!(gpio.pwm_disable(pwm_pin), Err(PlatformError::Unavailable(_))));
    }

    #[test]
    fn pwm_settings_are_checked_before_the_hardware_is_touched() {
        let gpio = RppalGpio::new();
        let ok = PwmState { frequency_hz: 50.0, duty_cycle: 0.5 };
        let err = gpio.pwm_enable(PinNumber::new(17).unwrap(), ok).unwrap_err();
        assert!(matches!(&err, PlatformError::Invalid(m) if m.contains("GPIO12")), "{err:?}");
        let too_fast = PwmState { frequency_hz: 200e6, duty_cycle: 0.5 };
        assert!(matches!(gpio.pwm_enable(PinNumber::new(18).unwrap(), too_fast), Err(PlatformError::Invalid(_))));
    }

    #[test]
    fn each_header_pwm_pin_maps_to_its_channel_and_alternate_function() {
        assert_eq!(Layout::Broadcom.pwm_route(12), Some((0, hw::Mode::Alt0)));
        assert_eq!(Layout::Broadcom.pwm_route(18), Some((0, hw::Mode::Alt5)));
        assert_eq!(Layout::Broadcom.pwm_route(19), Some((1, hw::Mode::Alt5)));
        assert_eq!(Layout::Rp1.pwm_route(18), Some((2, hw::Mode::Alt3)));
        assert_eq!(Layout::Rp1.pwm_route(19), Some((3, hw::Mode::Alt3)));
        assert_eq!(Layout::Rp1.pwm_route(17), None);
        assert_eq!(Layout::Broadcom.channel_sibling(12), Some(18));
        assert_eq!(Layout::Rp1.channel_sibling(12), None);
        for pin in HARDWARE_PWM_PINS {
            assert!(Layout::Broadcom.pwm_route(pin).is_some() && Layout::Rp1.pwm_route(pin).is_some());
        }
    }
}
