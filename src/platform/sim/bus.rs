//! Simulated I2C, SPI and UART with a few well-known devices attached, so that an MCP
//! client can be tested end to end against replies it can check.
//!
//! - I2C bus 1: a TMP102 temperature sensor at 0x48 reading 21.5 °C, and a 24C02 256-byte
//!   EEPROM at 0x50, both behaving as their datasheets describe.
//! - SPI bus 0: a wire from MOSI to MISO on chip select 0, an MCP3008 ADC on chip select 1
//!   whose channel N reads N × 100 + 42.
//! - UART `serial0`: TX wired to RX, so that what is written is read back.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::platform::real::bus::{
    check_baud, check_i2c_address, check_i2c_length, check_port_name, check_spi_settings, deadline_after,
    MAX_SPI_TRANSFER,
};
use crate::platform::{I2c, PlatformError, Spi, SpiSettings, Uart};

/// The only simulated I2C bus, the one on header pins 3 and 5.
const I2C_BUS: u8 = 1;
const TMP102_ADDRESS: u8 = 0x48;
const EEPROM_ADDRESS: u8 = 0x50;

/// The temperature the TMP102 reports, in sixteenths of a degree (21.5 °C).
const TMP102_TEMPERATURE: i16 = 344;

/// A TMP102: a pointer register selects one of four 16-bit registers, sent MSB first.
struct Tmp102 {
    pointer: u8,
    /// Configuration, T_LOW and T_HIGH, with their power-on values.
    registers: [u16; 3],
}

impl Tmp102 {
    fn new() -> Self {
        Tmp102 { pointer: 0, registers: [0x60A0, 0x4B00, 0x5000] }
    }

    /// The temperature register: 12 bits left-aligned, or 13 bits with bit 0 set in
    /// extended mode (EM, bit 4 of the configuration register).
    fn temperature(&self) -> u16 {
        let raw = TMP102_TEMPERATURE as u16;
        if self.registers[0] & 0x0010 != 0 {
            (raw << 3) | 1
        } else {
            raw << 4
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), PlatformError> {
        let Some((&pointer, data)) = bytes.split_first() else {
            return Ok(());
        };
        if pointer > 3 {
            return Err(PlatformError::Failed(format!(
                "the TMP102 at 0x{TMP102_ADDRESS:02x} has registers 0x00 to 0x03, not 0x{pointer:02x}"
            )));
        }
        self.pointer = pointer;
        // The temperature register is read-only; the others take two bytes, MSB first.
        if let (1..=3, [msb, lsb, ..]) = (pointer, data) {
            self.registers[usize::from(pointer - 1)] = u16::from_be_bytes([*msb, *lsb]);
        }
        Ok(())
    }

    /// Reads repeat the selected register's two bytes, as the chip does.
    fn read(&self, length: usize) -> Vec<u8> {
        let value = match self.pointer {
            0 => self.temperature(),
            p => self.registers[usize::from(p - 1)],
        };
        value.to_be_bytes().iter().copied().cycle().take(length).collect()
    }
}

/// A 24C02: 256 bytes behind an address counter, written in 8-byte pages.
struct Eeprom {
    memory: [u8; 256],
    address: u8,
}

impl Eeprom {
    const PAGE: u8 = 8;

    fn new() -> Self {
        // Erased cells read as 0xFF.
        Eeprom { memory: [0xFF; 256], address: 0 }
    }

    /// The first byte sets the address; the rest are stored from there, wrapping within the
    /// 8-byte page, so a ninth byte overwrites the page's first.
    fn write(&mut self, bytes: &[u8]) {
        let Some((&address, data)) = bytes.split_first() else {
            return;
        };
        self.address = address;
        let page = address & !(Self::PAGE - 1);
        let mut offset = address & (Self::PAGE - 1);
        for &byte in data {
            self.memory[usize::from(page | offset)] = byte;
            offset = (offset + 1) % Self::PAGE;
        }
        if !data.is_empty() {
            self.address = page | offset;
        }
    }

    /// Sequential reads run on from the address counter and wrap at the end of memory.
    fn read(&mut self, length: usize) -> Vec<u8> {
        (0..length)
            .map(|_| {
                let byte = self.memory[usize::from(self.address)];
                self.address = self.address.wrapping_add(1);
                byte
            })
            .collect()
    }
}

struct Devices {
    tmp102: Tmp102,
    eeprom: Eeprom,
}

/// The simulated I2C buses.
pub struct SimI2c {
    devices: Mutex<Devices>,
}

impl SimI2c {
    pub fn new() -> Self {
        SimI2c { devices: Mutex::new(Devices { tmp102: Tmp102::new(), eeprom: Eeprom::new() }) }
    }

    fn lock(&self) -> MutexGuard<'_, Devices> {
        // Device state changes only in small steps that leave it valid.
        self.devices.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for SimI2c {
    fn default() -> Self {
        Self::new()
    }
}

fn check_bus(bus: u8) -> Result<(), PlatformError> {
    if bus == I2C_BUS {
        Ok(())
    } else {
        Err(PlatformError::Unavailable(format!("no I2C bus {bus} (/dev/i2c-{bus})")))
    }
}

fn no_ack(bus: u8, address: u8) -> PlatformError {
    PlatformError::Failed(format!("no device acknowledged at 0x{address:02x} on bus {bus}"))
}

impl I2c for SimI2c {
    fn scan(&self, bus: u8) -> Result<Vec<u8>, PlatformError> {
        check_bus(bus)?;
        Ok(vec![TMP102_ADDRESS, EEPROM_ADDRESS])
    }

    fn read(&self, bus: u8, address: u8, register: Option<u8>, length: usize) -> Result<Vec<u8>, PlatformError> {
        check_bus(bus)?;
        check_i2c_address(address)?;
        check_i2c_length(length)?;
        let mut devices = self.lock();
        match address {
            TMP102_ADDRESS => {
                if let Some(register) = register {
                    devices.tmp102.write(&[register])?;
                }
                Ok(devices.tmp102.read(length))
            }
            EEPROM_ADDRESS => {
                // A register is the EEPROM's "random read": a dummy write of the address.
                if let Some(register) = register {
                    devices.eeprom.write(&[register]);
                }
                Ok(devices.eeprom.read(length))
            }
            _ => Err(no_ack(bus, address)),
        }
    }

    fn write(&self, bus: u8, address: u8, register: Option<u8>, data: &[u8]) -> Result<(), PlatformError> {
        check_bus(bus)?;
        check_i2c_address(address)?;
        let message: Vec<u8> = register.into_iter().chain(data.iter().copied()).collect();
        check_i2c_length(message.len())?;
        let mut devices = self.lock();
        match address {
            TMP102_ADDRESS => devices.tmp102.write(&message),
            EEPROM_ADDRESS => {
                devices.eeprom.write(&message);
                Ok(())
            }
            _ => Err(no_ack(bus, address)),
        }
    }
}

/// The value the simulated MCP3008 converts on `channel` (single-ended).
fn mcp3008_channel(channel: u8) -> u16 {
    u16::from(channel) * 100 + 42
}

/// An MCP3008 simulated bit by bit, so that any framing of the request works as on the chip.
///
/// After the start bit (the first 1 on MOSI) come SGL/DIFF and D2..D0; the chip samples for
/// one clock, sends a null bit, then the 10-bit result MSB first, then again LSB first from
/// bit 1, then zeros. MISO is undriven until the null bit; it reads as 0 here.
fn mcp3008(mosi: &[u8]) -> Vec<u8> {
    let mut miso = vec![0u8; mosi.len()];
    let mut clock_of_start = None;
    let mut control = 0u8;
    let mut value = 0u16;
    for clock in 0..mosi.len() * 8 {
        let mosi_bit = (mosi[clock / 8] >> (7 - clock % 8)) & 1;
        let out = match clock_of_start {
            None => {
                if mosi_bit == 1 {
                    clock_of_start = Some(clock);
                }
                0
            }
            Some(start) => match clock - start {
                // SGL/DIFF, D2, D1, D0.
                n @ 1..=4 => {
                    control = (control << 1) | mosi_bit;
                    if n == 4 {
                        value = mcp3008_conversion(control);
                    }
                    0
                }
                // Sample, then the null bit.
                5 | 6 => 0,
                // B9 .. B0.
                n @ 7..=16 => ((value >> (16 - n)) & 1) as u8,
                // B1 .. B9.
                n @ 17..=25 => ((value >> (n - 16)) & 1) as u8,
                _ => 0,
            },
        };
        miso[clock / 8] |= out << (7 - clock % 8);
    }
    miso
}

/// The result for a 4-bit control word: SGL/DIFF then the channel (or pair) number.
fn mcp3008_conversion(control: u8) -> u16 {
    let channel = control & 0b111;
    if control & 0b1000 != 0 {
        mcp3008_channel(channel)
    } else {
        // Differential: the pair (0,1), (2,3), ... with the low bit choosing which is IN+.
        let (plus, minus) = if channel & 1 == 0 { (channel, channel + 1) } else { (channel, channel - 1) };
        mcp3008_channel(plus).saturating_sub(mcp3008_channel(minus))
    }
}

/// The simulated SPI devices.
pub struct SimSpi;

impl SimSpi {
    pub fn new() -> Self {
        SimSpi
    }
}

impl Default for SimSpi {
    fn default() -> Self {
        Self::new()
    }
}

impl Spi for SimSpi {
    fn transfer(&self, settings: SpiSettings, data: &[u8]) -> Result<Vec<u8>, PlatformError> {
        check_spi_settings(settings, data.len(), MAX_SPI_TRANSFER)?;
        match (settings.bus, settings.chip_select) {
            (0, 0) => Ok(data.to_vec()),
            (0, 1) => Ok(mcp3008(data)),
            (bus, cs) => Err(PlatformError::Unavailable(format!("no SPI device /dev/spidev{bus}.{cs}"))),
        }
    }
}

/// The simulated serial port's name.
const LOOPBACK_PORT: &str = "serial0";

/// The tty input queue's size: bytes beyond it are lost, as on Linux.
const RX_QUEUE: usize = 4096;

/// A serial port with TX wired to RX.
pub struct SimUart {
    received: Mutex<VecDeque<u8>>,
    arrived: Condvar,
}

impl SimUart {
    pub fn new() -> Self {
        SimUart { received: Mutex::new(VecDeque::new()), arrived: Condvar::new() }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<u8>> {
        self.received.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for SimUart {
    fn default() -> Self {
        Self::new()
    }
}

fn check_port(port: &str, baud: u32) -> Result<(), PlatformError> {
    check_port_name(port)?;
    if port != LOOPBACK_PORT {
        return Err(PlatformError::Unavailable(format!("no serial port /dev/{port}")));
    }
    check_baud(baud)
}

impl Uart for SimUart {
    fn read(&self, port: &str, baud: u32, max_bytes: usize, timeout_ms: u64) -> Result<Vec<u8>, PlatformError> {
        check_port(port, baud)?;
        let mut received = self.lock();
        let deadline = deadline_after(Duration::from_millis(timeout_ms));
        // Returns at once when bytes are waiting, else at the first byte or the deadline.
        while received.is_empty() && max_bytes > 0 {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            received = self.arrived.wait_timeout(received, remaining).unwrap_or_else(PoisonError::into_inner).0;
        }
        let n = max_bytes.min(received.len());
        Ok(received.drain(..n).collect())
    }

    fn write(&self, port: &str, baud: u32, data: &[u8]) -> Result<usize, PlatformError> {
        check_port(port, baud)?;
        let mut received = self.lock();
        let room = RX_QUEUE.saturating_sub(received.len());
        received.extend(data.iter().take(room));
        self.arrived.notify_all();
        // Every byte went out on TX, even those the full input queue dropped.
        Ok(data.len())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::thread;

    use super::*;

    #[test]
    fn the_scan_finds_the_sensor_and_the_eeprom_on_bus_1_only() {
        let i2c = SimI2c::new();
        assert_eq!(i2c.scan(1).unwrap(), vec![0x48, 0x50]);
        assert_eq!(i2c.scan(0), Err(PlatformError::Unavailable("no I2C bus 0 (/dev/i2c-0)".into())));
        assert_eq!(i2c.read(3, 0x48, None, 2), Err(PlatformError::Unavailable("no I2C bus 3 (/dev/i2c-3)".into())));
    }

    #[test]
    fn an_address_without_a_device_fails_like_a_missing_acknowledge() {
        let i2c = SimI2c::new();
        assert_eq!(
            i2c.read(1, 0x49, None, 1),
            Err(PlatformError::Failed("no device acknowledged at 0x49 on bus 1".into()))
        );
        assert_eq!(
            i2c.write(1, 0x77, Some(0), &[1]),
            Err(PlatformError::Failed("no device acknowledged at 0x77 on bus 1".into()))
        );
        assert!(matches!(i2c.read(1, 0x7f, None, 1), Err(PlatformError::Invalid(_))));
    }

    #[test]
    fn the_tmp102_reports_21_5_degrees_in_its_12_bit_format() {
        let i2c = SimI2c::new();
        let bytes = i2c.read(1, 0x48, Some(0x00), 2).unwrap();
        assert_eq!(bytes, vec![0x15, 0x80]);
        // Decoded as the datasheet says: 12 bits, left-aligned, two's complement, 0.0625 °C.
        let celsius = f64::from(i16::from_be_bytes([bytes[0], bytes[1]]) >> 4) * 0.0625;
        assert_eq!(celsius, 21.5);
        // Without a register, the pointer set last is read again.
        assert_eq!(i2c.read(1, 0x48, None, 2).unwrap(), vec![0x15, 0x80]);
    }

    #[test]
    fn the_tmp102_keeps_its_configuration_and_limit_registers() {
        let i2c = SimI2c::new();
        assert_eq!(i2c.read(1, 0x48, Some(0x01), 2).unwrap(), vec![0x60, 0xA0]);
        i2c.write(1, 0x48, Some(0x03), &[0x1E, 0x00]).unwrap();
        assert_eq!(i2c.read(1, 0x48, Some(0x03), 2).unwrap(), vec![0x1E, 0x00]);
        // The temperature register ignores writes.
        i2c.write(1, 0x48, Some(0x00), &[0x7F, 0xF0]).unwrap();
        assert_eq!(i2c.read(1, 0x48, Some(0x00), 2).unwrap(), vec![0x15, 0x80]);
        // Extended mode switches to 13 bits with the flag in bit 0.
        i2c.write(1, 0x48, Some(0x01), &[0x60, 0xB0]).unwrap();
        let bytes = i2c.read(1, 0x48, Some(0x00), 2).unwrap();
        assert_eq!(bytes[1] & 1, 1);
        assert_eq!(f64::from(i16::from_be_bytes([bytes[0], bytes[1]]) >> 3) * 0.0625, 21.5);
        assert!(matches!(i2c.read(1, 0x48, Some(0x04), 2), Err(PlatformError::Failed(_))));
    }

    #[test]
    fn the_eeprom_reads_back_a_page_write() {
        let i2c = SimI2c::new();
        i2c.write(1, 0x50, Some(0x10), b"hello").unwrap();
        assert_eq!(i2c.read(1, 0x50, Some(0x10), 5).unwrap(), b"hello");
        // The first byte of the data is the word address when no register is given.
        i2c.write(1, 0x50, None, &[0x20, 1, 2, 3]).unwrap();
        assert_eq!(i2c.read(1, 0x50, Some(0x20), 4).unwrap(), vec![1, 2, 3, 0xFF]);
        // A current-address read continues after the last byte read.
        assert_eq!(i2c.read(1, 0x50, None, 1).unwrap(), vec![0xFF]);
    }

    #[test]
    fn an_eeprom_write_wraps_within_its_8_byte_page() {
        let i2c = SimI2c::new();
        i2c.write(1, 0x50, Some(0x06), &[0xA, 0xB, 0xC, 0xD]).unwrap();
        // 0x06 and 0x07 end the page; 0xC and 0xD wrap to 0x00 and 0x01, not 0x08.
        assert_eq!(i2c.read(1, 0x50, Some(0x00), 9).unwrap(), vec![0xC, 0xD, 0xFF, 0xFF, 0xFF, 0xFF, 0xA, 0xB, 0xFF]);
    }

    #[test]
    fn sequential_eeprom_reads_wrap_at_the_end_of_memory() {
        let i2c = SimI2c::new();
        i2c.write(1, 0x50, Some(0x00), &[0x42]).unwrap();
        i2c.write(1, 0x50, Some(0xFF), &[0x24]).unwrap();
        assert_eq!(i2c.read(1, 0x50, Some(0xFF), 2).unwrap(), vec![0x24, 0x42]);
        assert_eq!(i2c.read(1, 0x50, Some(0x00), 256).unwrap().len(), 256);
    }

    const LOOPBACK: SpiSettings = SpiSettings { bus: 0, chip_select: 0, mode: 0, speed_hz: 1_000_000 };
    const ADC: SpiSettings = SpiSettings { bus: 0, chip_select: 1, mode: 0, speed_hz: 1_000_000 };

    #[test]
    fn spi_chip_select_0_returns_the_bytes_sent() {
        let spi = SimSpi::new();
        assert_eq!(spi.transfer(LOOPBACK, &[0xDE, 0xAD, 0xBE, 0xEF]).unwrap(), vec![0xDE, 0xAD, 0xBE, 0xEF]);
        assert_eq!(spi.transfer(LOOPBACK, &[]).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn the_mcp3008_answers_each_channel_with_a_10_bit_value() {
        let spi = SimSpi::new();
        for channel in 0..8u8 {
            let reply = spi.transfer(ADC, &[0x01, 0x80 | (channel << 4), 0x00]).unwrap();
            let value = (u16::from(reply[1] & 0x03) << 8) | u16::from(reply[2]);
            assert_eq!(value, u16::from(channel) * 100 + 42, "channel {channel}");
        }
    }

    #[test]
    fn the_mcp3008_follows_its_bit_protocol_for_other_framings() {
        let spi = SimSpi::new();
        // Start bit on clock 3, then SGL and D2..D0 for channel 3, all in the first byte.
        let reply = spi.transfer(ADC, &[0b0001_1011, 0x00, 0x00, 0x00]).unwrap();
        // Sample on clock 8, null bit on clock 9, B9..B0 on clocks 10 to 19, then B1..B9 again.
        let bits = u32::from_be_bytes([reply[0], reply[1], reply[2], reply[3]]);
        assert_eq!((bits >> (31 - 19)) & 0x3FF, 342);
        assert_eq!((bits >> (31 - 28)) & 0x1FF, u32::from(342u16.reverse_bits() >> 6) & 0x1FF);
        // Differential CH1+ CH0- reads the difference.
        let reply = spi.transfer(ADC, &[0x01, 0b0001_0000, 0x00]).unwrap();
        assert_eq!((u16::from(reply[1] & 0x03) << 8) | u16::from(reply[2]), 100);
    }

    #[test]
    fn other_spi_devices_are_unavailable_and_bad_settings_invalid() {
        let spi = SimSpi::new();
        let other = SpiSettings { bus: 1, chip_select: 0, ..LOOPBACK };
        assert_eq!(spi.transfer(other, &[1]), Err(PlatformError::Unavailable("no SPI device /dev/spidev1.0".into())));
        assert!(matches!(spi.transfer(SpiSettings { mode: 4, ..LOOPBACK }, &[1]), Err(PlatformError::Invalid(_))));
        assert!(matches!(spi.transfer(SpiSettings { speed_hz: 0, ..LOOPBACK }, &[1]), Err(PlatformError::Invalid(_))));
        assert!(matches!(spi.transfer(LOOPBACK, &[0; 4097]), Err(PlatformError::Invalid(_))));
    }

    #[test]
    fn bytes_written_to_serial0_are_read_back_in_order() {
        let uart = SimUart::new();
        assert_eq!(uart.write("serial0", 115_200, b"AT\r\n").unwrap(), 4);
        assert_eq!(uart.read("serial0", 115_200, 2, 1000).unwrap(), b"AT");
        assert_eq!(uart.read("serial0", 115_200, 10, 1000).unwrap(), b"\r\n");
        // Any timeout is accepted, down to none and up to the largest a request can carry.
        uart.write("serial0", 115_200, b"ok").unwrap();
        assert_eq!(uart.read("serial0", 115_200, 10, u64::MAX).unwrap(), b"ok");
    }

    #[test]
    fn a_read_with_nothing_waiting_returns_empty_after_the_timeout() {
        let uart = SimUart::new();
        let started = Instant::now();
        assert_eq!(uart.read("serial0", 9600, 10, 50).unwrap(), Vec::<u8>::new());
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(50) && waited < Duration::from_secs(2), "{waited:?}");
        assert_eq!(uart.read("serial0", 9600, 10, 0).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn a_waiting_read_returns_as_soon_as_a_byte_arrives() {
        let uart = Arc::new(SimUart::new());
        let writer = Arc::clone(&uart);
        let started = Instant::now();
        let handle = thread::spawn(move || {
            thread::sleep(Duration::from_millis(30));
            writer.write("serial0", 9600, b"!").unwrap();
        });
        assert_eq!(uart.read("serial0", 9600, 10, 10_000).unwrap(), b"!");
        assert!(started.elapsed() < Duration::from_secs(5));
        handle.join().unwrap();
    }

    #[test]
    fn other_ports_are_unavailable_and_odd_baud_rates_invalid() {
        let uart = SimUart::new();
        assert_eq!(
            uart.write("ttyUSB0", 9600, b"x"),
            Err(PlatformError::Unavailable("no serial port /dev/ttyUSB0".into()))
        );
        assert!(matches!(uart.write("../tty", 9600, b"x"), Err(PlatformError::Invalid(_))));
        assert!(matches!(uart.read("serial0", 12_345, 1, 0), Err(PlatformError::Invalid(_))));
    }

    #[test]
    fn the_input_queue_drops_what_does_not_fit() {
        let uart = SimUart::new();
        assert_eq!(uart.write("serial0", 9600, &[7; 5000]).unwrap(), 5000);
        assert_eq!(uart.read("serial0", 9600, 10_000, 0).unwrap().len(), 4096);
    }
}
