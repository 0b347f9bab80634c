//! I2C, SPI and UART on a Raspberry Pi, through rppal and the kernel's character devices
//! (`/dev/i2c-N`, `/dev/spidevB.C`, `/dev/ttyX`).
//!
//! I2C buses and SPI devices are opened per request: opening costs a system call or two and
//! holds nothing a later request needs. Serial ports stay open, because opening one flushes
//! its input queue and would throw away a reply that arrived between a write and a read. The
//! hardware facts both backends check (address range, standard baud rates, port names,
//! transfer sizes) live here as well.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use rppal::i2c::{self, I2c as I2cBus};
use rppal::spi::{self, Bus, Mode, SlaveSelect, Spi as SpiDevice};
use rppal::uart::{self, Parity, Uart as SerialPort};

use crate::platform::{I2c, PlatformError, Spi, SpiSettings, Uart};

/// The line speeds the Linux serial drivers accept, in baud.
pub(in crate::platform) const STANDARD_BAUD_RATES: [u32; 30] = [
    50, 75, 110, 134, 150, 200, 300, 600, 1_200, 1_800, 2_400, 4_800, 9_600, 19_200, 38_400, 57_600, 115_200, 230_400,
    460_800, 500_000, 576_000, 921_600, 1_000_000, 1_152_000, 1_500_000, 2_000_000, 2_500_000, 3_000_000, 3_500_000,
    4_000_000,
];

/// The largest I2C message i2c-dev passes to the adapter, in bytes.
pub(in crate::platform) const MAX_I2C_TRANSFER: usize = 8192;

/// spidev's default buffer size, the largest single transfer it takes, in bytes, unless
/// the module was loaded with another `bufsiz`.
pub(in crate::platform) const MAX_SPI_TRANSFER: usize = 4096;

/// The largest transfer the loaded spidev module takes.
fn spidev_bufsiz() -> usize {
    std::fs::read_to_string("/sys/module/spidev/parameters/bufsiz")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(MAX_SPI_TRANSFER)
}

/// The error for a 7-bit address outside the range devices may use.
pub(in crate::platform) fn check_i2c_address(address: u8) -> Result<(), PlatformError> {
    // 0x00-0x02 and 0x78-0x7f are reserved by the I2C specification (general call, CBUS,
    // 10-bit addressing prefixes and so on).
    if (0x03..=0x77).contains(&address) {
        Ok(())
    } else {
        Err(PlatformError::Invalid(format!("0x{address:02x} is not an I2C device address: use 0x03 to 0x77")))
    }
}

pub(in crate::platform) fn check_i2c_length(length: usize) -> Result<(), PlatformError> {
    if (1..=MAX_I2C_TRANSFER).contains(&length) {
        Ok(())
    } else {
        Err(PlatformError::Invalid(format!("an I2C transfer moves 1 to {MAX_I2C_TRANSFER} bytes, not {length}")))
    }
}

pub(in crate::platform) fn check_baud(baud: u32) -> Result<(), PlatformError> {
    if STANDARD_BAUD_RATES.contains(&baud) {
        Ok(())
    } else {
        Err(PlatformError::Invalid(format!(
            "{baud} is not a standard baud rate; common ones are 9600, 19200, 38400, 57600, 115200 and 230400"
        )))
    }
}

/// Accepts device names like `serial0`, `ttyAMA0` or `ttyUSB0`, and nothing that could
/// leave /dev (`/`, `..`) or be mistaken for anything but a name.
pub(in crate::platform) fn check_port_name(port: &str) -> Result<(), PlatformError> {
    if !port.is_empty() && port.len() <= 32 && port.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(PlatformError::Invalid(format!(
            "{port:?} is not a serial port name: use a name under /dev made of letters and digits, like serial0 or \
             ttyUSB0"
        )))
    }
}

pub(in crate::platform) fn check_spi_settings(
    settings: SpiSettings,
    length: usize,
    max_length: usize,
) -> Result<(), PlatformError> {
    if settings.mode > 3 {
        return Err(PlatformError::Invalid(format!("SPI mode is 0 to 3, not {}", settings.mode)));
    }
    if settings.speed_hz == 0 {
        return Err(PlatformError::Invalid("SPI clock speed must be above 0 Hz".into()));
    }
    if length > max_length {
        return Err(PlatformError::Invalid(format!(
            "an SPI transfer moves at most {max_length} bytes (spidev's buffer), not {length}"
        )));
    }
    Ok(())
}

fn errno(e: &io::Error) -> Option<Errno> {
    e.raw_os_error().map(Errno::from_raw)
}

/// I2C through `/dev/i2c-N`.
pub struct RppalI2c;

impl RppalI2c {
    pub fn new() -> Self {
        RppalI2c
    }
}

impl Default for RppalI2c {
    fn default() -> Self {
        Self::new()
    }
}

fn open_i2c(bus: u8) -> Result<I2cBus, PlatformError> {
    I2cBus::with_bus(bus).map_err(|e| match e {
        i2c::Error::Io(e) if e.kind() == io::ErrorKind::NotFound => {
            PlatformError::Unavailable(format!("no I2C bus {bus} (/dev/i2c-{bus})"))
        }
        i2c::Error::Io(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            PlatformError::Unavailable(format!("/dev/i2c-{bus} not accessible: is the agent in group i2c?"))
        }
        other => PlatformError::Failed(format!("cannot open /dev/i2c-{bus}: {other}")),
    })
}

fn i2c_error(e: i2c::Error, bus: u8, address: u8) -> PlatformError {
    match e {
        i2c::Error::Io(e) => match errno(&e) {
            // Which of these a missing acknowledge produces depends on the adapter driver.
            Some(Errno::ENXIO | Errno::EREMOTEIO) => {
                PlatformError::Failed(format!("no device acknowledged at 0x{address:02x} on bus {bus}"))
            }
            Some(Errno::EBUSY) => PlatformError::Failed(format!(
                "0x{address:02x} on bus {bus} is claimed by a kernel driver (i2cdetect shows it as UU)"
            )),
            Some(Errno::ETIMEDOUT) => {
                PlatformError::Failed(format!("I2C bus {bus} timed out: is SDA or SCL held low?"))
            }
            _ => PlatformError::Failed(format!("I2C transfer with 0x{address:02x} on bus {bus} failed: {e}")),
        },
        i2c::Error::InvalidSlaveAddress(_) => {
            PlatformError::Invalid(format!("0x{address:02x} is not an I2C device address: use 0x03 to 0x77"))
        }
        other => PlatformError::Failed(format!("I2C transfer with 0x{address:02x} on bus {bus} failed: {other}")),
    }
}

fn open_device(bus: u8, address: u8) -> Result<I2cBus, PlatformError> {
    let mut i2c = open_i2c(bus)?;
    i2c.set_slave_address(u16::from(address)).map_err(|e| i2c_error(e, bus, address))?;
    Ok(i2c)
}

/// Whether something answers at the address `i2c` is set to.
///
/// Like i2cdetect, this probes with a one-byte read in the ranges where EEPROMs (0x50-0x5f)
/// and some write-sensitive chips (0x30-0x37) live, since a quick write can start a write
/// cycle or flip a write-protect bit there, and with an SMBus quick write elsewhere, since a
/// read can pop a FIFO or clear a status register and a few write-only chips hang the bus
/// on a read. Adapters that cannot do quick writes get reads everywhere.
fn probe(i2c: &mut I2cBus, address: u8) -> bool {
    let read_first = (0x30..=0x37).contains(&address) || (0x50..=0x5f).contains(&address);
    if read_first || !i2c.capabilities().smbus_quick_command() {
        let mut byte = [0u8; 1];
        i2c.read(&mut byte).is_ok_and(|n| n == 1)
    } else {
        i2c.smbus_quick_command(false).is_ok()
    }
}

impl I2c for RppalI2c {
    fn scan(&self, bus: u8) -> Result<Vec<u8>, PlatformError> {
        let mut i2c = open_i2c(bus)?;
        let mut found = Vec::new();
        for address in 0x03..=0x77u8 {
            match i2c.set_slave_address(u16::from(address)) {
                Ok(()) => {
                    if probe(&mut i2c, address) {
                        found.push(address);
                    }
                }
                // A kernel driver owns the address, so the device tree says a device is there.
                Err(i2c::Error::Io(e)) if errno(&e) == Some(Errno::EBUSY) => found.push(address),
                Err(e) => return Err(i2c_error(e, bus, address)),
            }
        }
        Ok(found)
    }

    fn read(&self, bus: u8, address: u8, register: Option<u8>, length: usize) -> Result<Vec<u8>, PlatformError> {
        check_i2c_address(address)?;
        check_i2c_length(length)?;
        let mut i2c = open_device(bus, address)?;
        let mut buffer = vec![0u8; length];
        match register {
            // Repeated start between the register and the data, as register reads expect.
            Some(register) => i2c.write_read(&[register], &mut buffer).map_err(|e| i2c_error(e, bus, address))?,
            None => {
                let n = i2c.read(&mut buffer).map_err(|e| i2c_error(e, bus, address))?;
                buffer.truncate(n);
            }
        }
        Ok(buffer)
    }

    fn write(&self, bus: u8, address: u8, register: Option<u8>, data: &[u8]) -> Result<(), PlatformError> {
        check_i2c_address(address)?;
        let message: Vec<u8> = register.into_iter().chain(data.iter().copied()).collect();
        check_i2c_length(message.len())?;
        let mut i2c = open_device(bus, address)?;
        // One message, register first, so that devices see a single write transaction.
        let written = i2c.write(&message).map_err(|e| i2c_error(e, bus, address))?;
        if written != message.len() {
            return Err(PlatformError::Failed(format!(
                "0x{address:02x} on bus {bus} took {written} of {} bytes",
                message.len()
            )));
        }
        Ok(())
    }
}

/// SPI through `/dev/spidevB.C`.
pub struct RppalSpi;

impl RppalSpi {
    pub fn new() -> Self {
        RppalSpi
    }
}

impl Default for RppalSpi {
    fn default() -> Self {
        Self::new()
    }
}

fn spi_bus(bus: u8) -> Option<Bus> {
    Some(match bus {
        0 => Bus::Spi0,
        1 => Bus::Spi1,
        2 => Bus::Spi2,
        3 => Bus::Spi3,
        4 => Bus::Spi4,
        5 => Bus::Spi5,
        6 => Bus::Spi6,
        _ => return None,
    })
}

fn slave_select(chip_select: u8) -> Option<SlaveSelect> {
    Some(match chip_select {
        0 => SlaveSelect::Ss0,
        1 => SlaveSelect::Ss1,
        2 => SlaveSelect::Ss2,
        3 => SlaveSelect::Ss3,
        4 => SlaveSelect::Ss4,
        5 => SlaveSelect::Ss5,
        6 => SlaveSelect::Ss6,
        7 => SlaveSelect::Ss7,
        8 => SlaveSelect::Ss8,
        9 => SlaveSelect::Ss9,
        10 => SlaveSelect::Ss10,
        11 => SlaveSelect::Ss11,
        12 => SlaveSelect::Ss12,
        13 => SlaveSelect::Ss13,
        14 => SlaveSelect::Ss14,
        15 => SlaveSelect::Ss15,
        _ => return None,
    })
}

fn spi_mode(mode: u8) -> Option<Mode> {
    Some(match mode {
        0 => Mode::Mode0,
        1 => Mode::Mode1,
        2 => Mode::Mode2,
        3 => Mode::Mode3,
        _ => return None,
    })
}

fn spi_error(e: spi::Error, device: &str) -> PlatformError {
    match e {
        spi::Error::Io(e) if e.kind() == io::ErrorKind::NotFound => PlatformError::Unavailable(format!(
            "no SPI device {device}: enable SPI with dtparam=spi=on (or an spiN overlay) in config.txt"
        )),
        spi::Error::Io(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            PlatformError::Unavailable(format!("{device} not accessible: is the agent in group spi?"))
        }
        spi::Error::Io(e) if errno(&e) == Some(Errno::EMSGSIZE) => {
            PlatformError::Invalid(format!("the transfer is larger than {device}'s buffer (spidev bufsiz)"))
        }
        spi::Error::ModeNotSupported(mode) => PlatformError::Invalid(format!("{device} does not support {mode}")),
        spi::Error::ClockSpeedNotSupported(hz) => {
            PlatformError::Invalid(format!("{device} does not support a {hz} Hz clock"))
        }
        other => PlatformError::Failed(format!("SPI transfer on {device} failed: {other}")),
    }
}

impl Spi for RppalSpi {
    fn transfer(&self, settings: SpiSettings, data: &[u8]) -> Result<Vec<u8>, PlatformError> {
        check_spi_settings(settings, data.len(), spidev_bufsiz())?;
        let device = format!("/dev/spidev{}.{}", settings.bus, settings.chip_select);
        let (Some(bus), Some(ss), Some(mode)) =
            (spi_bus(settings.bus), slave_select(settings.chip_select), spi_mode(settings.mode))
        else {
            return Err(PlatformError::Unavailable(format!("no SPI device {device}")));
        };
        let spi = SpiDevice::new(bus, ss, settings.speed_hz, mode).map_err(|e| spi_error(e, &device))?;
        if data.is_empty() {
            return Ok(Vec::new());
        }
        let mut received = vec![0u8; data.len()];
        spi.transfer(&mut received, data).map_err(|e| spi_error(e, &device))?;
        Ok(received)
    }
}

/// Serial ports through their tty devices, kept open between requests.
pub struct RppalUart {
    ports: Mutex<HashMap<String, SerialPort>>,
}

impl RppalUart {
    pub fn new() -> Self {
        RppalUart { ports: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, SerialPort>> {
        // Each port is reconfigured on every use, so a panic elsewhere leaves nothing stale.
        self.ports.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for RppalUart {
    fn default() -> Self {
        Self::new()
    }
}

fn uart_error(e: uart::Error, path: &str) -> PlatformError {
    match e {
        uart::Error::Io(e) if e.kind() == io::ErrorKind::NotFound => {
            PlatformError::Unavailable(format!("no serial port {path}"))
        }
        uart::Error::Io(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            PlatformError::Unavailable(format!("{path} not accessible: is the agent in group dialout?"))
        }
        uart::Error::InvalidValue => PlatformError::Invalid(format!("{path} does not accept these line settings")),
        other => PlatformError::Failed(format!("serial port {path}: {other}")),
    }
}

/// Runs `f` on the open port, opening it (8N1, no flow control) or changing its speed first;
/// a port that fails is closed, so that the next request starts afresh (after a USB adapter
/// was replugged, say).
fn with_port<T>(
    ports: &mut HashMap<String, SerialPort>,
    port: &str,
    baud: u32,
    f: impl FnOnce(&mut SerialPort, &str) -> Result<T, PlatformError>,
) -> Result<T, PlatformError> {
    check_port_name(port)?;
    check_baud(baud)?;
    let path = format!("/dev/{port}");
    if !ports.contains_key(port) {
        if !Path::new(&path).exists() {
            return Err(PlatformError::Unavailable(format!("no serial port {path}")));
        }
        let opened = SerialPort::with_path(&path, baud, Parity::None, 8, 1).map_err(|e| uart_error(e, &path))?;
        ports.insert(port.to_string(), opened);
    }
    let Some(serial) = ports.get_mut(port) else {
        return Err(PlatformError::Failed(format!("serial port {path} vanished")));
    };
    let result = if serial.baud_rate() == baud {
        f(serial, &path)
    } else {
        serial.set_baud_rate(baud).map_err(|e| uart_error(e, &path)).and_then(|()| f(serial, &path))
    };
    if result.is_err() {
        ports.remove(port);
    }
    result
}

/// VTIME counts tenths of a second up to 25.5 s.
const VTIME_STEP: Duration = Duration::from_millis(100);
const VTIME_MAX: Duration = Duration::from_millis(25_500);
/// How often to look for input when less than one VTIME step of the timeout is left.
const POLL_STEP: Duration = Duration::from_millis(5);

/// The instant `timeout` from now, or a day from now for timeouts too large to represent.
pub(in crate::platform) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout).or_else(|| now.checked_add(Duration::from_secs(86_400))).unwrap_or(now)
}

fn read_port(
    serial: &mut SerialPort,
    path: &str,
    max_bytes: usize,
    timeout: Duration,
) -> Result<Vec<u8>, PlatformError> {
    let mut buffer = vec![0u8; max_bytes];
    let deadline = deadline_after(timeout);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        // Let the kernel block for whole tenths of a second (it wakes at the first byte),
        // and poll for the remainder, so that the wait never exceeds the timeout.
        let block = if remaining >= VTIME_STEP {
            let tenths = remaining.min(VTIME_MAX).as_millis() / VTIME_STEP.as_millis();
            VTIME_STEP * u32::try_from(tenths).unwrap_or(255)
        } else {
            Duration::ZERO
        };
        serial.set_read_mode(0, block).map_err(|e| uart_error(e, path))?;
        let n = serial.read(&mut buffer).map_err(|e| uart_error(e, path))?;
        if n > 0 {
            buffer.truncate(n);
            return Ok(buffer);
        }
        if remaining.is_zero() {
            return Ok(Vec::new());
        }
        if block.is_zero() {
            thread::sleep(POLL_STEP.min(remaining));
        }
    }
}

impl Uart for RppalUart {
    fn read(&self, port: &str, baud: u32, max_bytes: usize, timeout_ms: u64) -> Result<Vec<u8>, PlatformError> {
        let mut ports = self.lock();
        with_port(&mut ports, port, baud, |serial, path| {
            if max_bytes == 0 {
                return Ok(Vec::new());
            }
            read_port(serial, path, max_bytes, Duration::from_millis(timeout_ms))
        })
    }

    fn write(&self, port: &str, baud: u32, data: &[u8]) -> Result<usize, PlatformError> {
        let mut ports = self.lock();
        with_port(&mut ports, port, baud, |serial, path| {
            // Blocking writes queue every byte; draining returns once they are on the wire,
            // so that a following read sees the reply and not our own transmission time.
            serial.set_write_mode(true).map_err(|e| uart_error(e, path))?;
            let written = serial.write(data).map_err(|e| uart_error(e, path))?;
            serial.drain().map_err(|e| uart_error(e, path))?;
            Ok(written)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn port_names_are_plain_device_names_under_dev() {
        for good in ["serial0", "ttyAMA0", "ttyS0", "ttyUSB0", "ttyACM1"] {
            assert_eq!(check_port_name(good), Ok(()), "{good}");
        }
        for bad in
            ["", "../etc/passwd", "tty/USB0", "..", "serial0 ", "-serial0", "tty.usb", "ttyÜSB0", &"a".repeat(33)]
        {
            assert!(matches!(check_port_name(bad), Err(PlatformError::Invalid(_))), "{bad:?}");
        }
    }

    #[test]
    fn a_bad_port_name_is_refused_before_any_device_is_opened() {
        let uart = RppalUart::new();
        let err = uart.write("../../etc/shadow", 9600, b"x").unwrap_err();
        assert!(matches!(err, PlatformError::Invalid(_)), "{err:?}");
        assert!(uart.lock().is_empty());
    }

    #[test]
    fn a_missing_port_is_unavailable_and_names_its_device() {
        let uart = RppalUart::new();
        let err = uart.read("ttyMCPRASPINONE0", 115_200, 10, 0).unwrap_err();
        assert_eq!(err, PlatformError::Unavailable("no serial port /dev/ttyMCPRASPINONE0".into()));
    }

    #[test]
    fn only_standard_baud_rates_are_accepted() {
        assert_eq!(check_baud(115_200), Ok(()));
        assert_eq!(check_baud(9_600), Ok(()));
        assert!(matches!(check_baud(12_345), Err(PlatformError::Invalid(_))));
        assert!(matches!(check_baud(0), Err(PlatformError::Invalid(_))));
    }

    #[test]
    fn reserved_i2c_addresses_are_refused() {
        assert_eq!(check_i2c_address(0x48), Ok(()));
        assert!(check_i2c_address(0x02).is_err());
        assert!(check_i2c_address(0x78).is_err());
    }

    #[test]
    fn a_missing_i2c_bus_is_unavailable_and_names_its_device() {
        let err = RppalI2c::new().scan(250).unwrap_err();
        assert_eq!(err, PlatformError::Unavailable("no I2C bus 250 (/dev/i2c-250)".into()));
    }

    #[test]
    fn an_spi_device_that_does_not_exist_is_unavailable() {
        let settings = SpiSettings { bus: 6, chip_select: 15, mode: 0, speed_hz: 1_000_000 };
        let err = RppalSpi::new().transfer(settings, &[1, 2, 3]).unwrap_err();
        assert!(matches!(&err, PlatformError::Unavailable(m) if m.contains("/dev/spidev6.15")), "{err:?}");
        let bad_mode = SpiSettings { mode: 4, ..settings };
        assert!(matches!(RppalSpi::new().transfer(bad_mode, &[1]), Err(PlatformError::Invalid(_))));
    }
}
